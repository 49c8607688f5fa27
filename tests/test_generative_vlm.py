"""Distillation of generative vision-language students (LLaVA) against hand-built inputs and hand
computations.

The collator's three views are checked token id by token id; the losses against a reference written out with
``log_softmax``: per answer token ``T^2 * KL(softmax(t / T) || softmax(s / T))`` after the causal shift,
summed over the answer tokens of the batch and divided by their number, in ``x`` and in each view; the
saliency ``KL(p_T(x) || p_T(x without m))`` per answer token, averaged over the example's answer tokens.
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors.torch import load_file

from hf_msd.data import VisionLanguageCollator, check_same_vocabulary
from hf_msd.data.generative import view_inputs
from hf_msd.models.vision_language import tiny_llava, word_level_tokenizer
from hf_msd.trainers import DistillationTrainer, MSDTrainer
from tests.helpers.launch import REPO_ROOT, SCRIPTS, two_process_launch
from tests.helpers.scripts.distributed_vlm_script import CASES, NUM_EXAMPLES, parameters, train_one_step
from tests.helpers.vlm import (
    IDS,
    family_processor_and_models,
    msd_args,
    processor,
    raw_examples,
    teacher_and_student,
)

SCRIPT = str(SCRIPTS / "distributed_vlm_script.py")
PAD, BOS, EOS, IMAGE, USER, ASSISTANT, COLON = 0, 2, 3, 4, 5, 6, 7
X = -100


def test_collator_builds_the_three_views_with_the_same_answer_tokens():
    examples = raw_examples(
        2, unlabelled=(1,)
    )  # row 1: no gold answer, distilled on its teacher_answer "yes"
    batch = VisionLanguageCollator(processor())(examples)
    what, shape, is_, the, q, color = IDS["what"], IDS["shape"], IDS["is"], IDS["the"], IDS["?"], IDS["color"]
    circle, yes = IDS["circle"], IDS["yes"]
    image_tokens = [IMAGE] * 4
    # <s> USER : <image>x4 what shape is the ? ASSISTANT : circle </s>
    full0 = [BOS, USER, COLON, *image_tokens, what, shape, is_, the, q, ASSISTANT, COLON, circle, EOS]
    full1 = [BOS, USER, COLON, *image_tokens, what, color, is_, the, shape, q, ASSISTANT, COLON, yes, EOS]
    assert batch["input_ids"].tolist() == [[*full0, PAD], full1]
    assert batch["attention_mask"].tolist() == [[1] * 16 + [0], [1] * 17]
    assert batch["labels"].tolist() == [[X] * 14 + [circle, EOS, X], [X] * 17]
    assert batch["distillation_labels"].tolist() == [[X] * 14 + [circle, EOS, X], [X] * 15 + [yes, EOS]]
    assert batch["pixel_values"].shape == (2, 3, 16, 16)
    # The question alone: no image tokens, no pixel_values.
    text = view_inputs(batch, "text")
    assert set(text) == {"input_ids", "attention_mask", "distillation_labels"}
    assert text["input_ids"].tolist() == [
        [BOS, USER, COLON, what, shape, is_, the, q, ASSISTANT, COLON, circle, EOS, PAD],
        [BOS, USER, COLON, what, color, is_, the, shape, q, ASSISTANT, COLON, yes, EOS],
    ]
    assert text["distillation_labels"].tolist() == [[X] * 10 + [circle, EOS, X], [X] * 11 + [yes, EOS]]
    assert text["attention_mask"].tolist() == [[1] * 12 + [0], [1] * 13]
    # The image with an empty question.
    image = view_inputs(batch, "image")
    assert image["input_ids"].tolist() == [
        [BOS, USER, COLON, *image_tokens, ASSISTANT, COLON, circle, EOS],
        [BOS, USER, COLON, *image_tokens, ASSISTANT, COLON, yes, EOS],
    ]
    assert image["distillation_labels"].tolist() == [[X] * 9 + [circle, EOS], [X] * 9 + [yes, EOS]]
    torch.testing.assert_close(image["pixel_values"], batch["pixel_values"])
    # Generation prompts: left-padded, no answer.
    prompts = VisionLanguageCollator(processor()).generation_inputs(examples, view="text")
    assert prompts["input_ids"].tolist() == [
        [PAD, BOS, USER, COLON, what, shape, is_, the, q, ASSISTANT, COLON],
        [BOS, USER, COLON, what, color, is_, the, shape, q, ASSISTANT, COLON],
    ]


def test_collator_names_a_missing_answer():
    example = raw_examples(1)[0]
    example["answer"] = example["teacher_answer"] = None
    with pytest.raises(ValueError, match="'answer' nor 'teacher_answer'"):
        VisionLanguageCollator(processor())([example])


def kl_per_token(student_logits, teacher_logits, temperature):
    """T^2 KL(softmax(t/T) || softmax(s/T)) per position, (B, T)."""
    t = torch.log_softmax(teacher_logits / temperature, dim=-1)
    s = torch.log_softmax(student_logits / temperature, dim=-1)
    return temperature**2 * (t.exp() * (t - s)).sum(-1)


def shifted(logits, labels):
    return logits[:, :-1], labels[:, 1:]


def hand_kd_sum(student_logits, teacher_logits, labels, temperature):
    """Per example: the sum over answer tokens of the per-token KD, (B,)."""
    s, scored = shifted(student_logits, labels)
    t, _ = shifted(teacher_logits, labels)
    return (kl_per_token(s, t, temperature) * (scored != X)).sum(-1)


def hand_answer_distributions(logits, labels):
    """log p over the vocabulary of each answer token of each example, in order: list of (A_i, V)."""
    logits, scored = shifted(logits, labels)
    return [torch.log_softmax(row[mask != X], dim=-1) for row, mask in zip(logits, scored)]


def hand_saliency(full, full_labels, without, without_labels):
    """Per example: mean over answer tokens of KL(p(x) || p(x without m))."""
    values = []
    for p, q in zip(
        hand_answer_distributions(full, full_labels), hand_answer_distributions(without, without_labels)
    ):
        values.append((p.exp() * (p - q)).sum(-1).mean())
    return torch.stack(values)


def processor_and_models(family):
    """The LLaVA processor, teacher and student of ``tests/helpers/vlm.py``, or another family's (Qwen2-VL:
    ``mm_token_type_ids`` and multimodal RoPE)."""
    if family == "llava":
        return (processor(), *teacher_and_student())
    return family_processor_and_models(family)


def forward(model, inputs):
    with torch.no_grad():
        return model(**{k: v for k, v in inputs.items() if k not in ("labels", "distillation_labels")}).logits


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
@pytest.mark.parametrize("weighting", ["uniform", "instance"])
def test_msd_loss_matches_the_hand_computation(tmp_path, weighting, family):
    proc, teacher, student = processor_and_models(family)
    collator = VisionLanguageCollator(proc)
    batch = collator(raw_examples(4, unlabelled=(1, 2)))
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path, modality_weighting=weighting),
        data_collator=collator,
    )
    assert trainer.token_level == "causal" and trainer.generative
    student.eval()
    loss = trainer.compute_loss(student, dict(batch))

    temperature, dl, labels = 2.0, batch["distillation_labels"], batch["labels"]
    s_full, t_full = forward(student, batch), forward(teacher, batch)
    # The task term is the model's own loss: mean CE over the gold answer tokens (rows 0 and 3 only).
    logits, targets = shifted(s_full, labels)
    task = torch.nn.functional.cross_entropy(logits[targets != X], targets[targets != X])
    tokens = (dl[:, 1:] != X).sum()  # every row's answer: 2 tokens each
    assert tokens == 8
    expected = 0.3 * task + 0.7 * hand_kd_sum(s_full, t_full, dl, temperature).sum() / tokens
    views = {name: view_inputs(batch, name) for name in ("image", "text")}
    teacher_views = {name: forward(teacher, view) for name, view in views.items()}
    if weighting == "uniform":
        weights = torch.full((4, 2), 0.5)
    else:  # x without image = x_text, x without text = x_image
        saliency = torch.stack(
            [
                hand_saliency(t_full, dl, teacher_views["text"], views["text"]["distillation_labels"]),
                hand_saliency(t_full, dl, teacher_views["image"], views["image"]["distillation_labels"]),
            ],
            dim=1,
        )
        weights = 0.5 * 2 * saliency / saliency.sum(dim=1, keepdim=True)
        assert (saliency > 0).all()
    for index, (name, view) in enumerate(views.items()):
        per_example = hand_kd_sum(
            forward(student, view), teacher_views[name], view["distillation_labels"], 2.0
        )
        expected = expected + (weights[:, index] * per_example).sum() / tokens
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def one_step(tmp_path, per_device, accumulation, weighting="instance", examples=None, family="llava"):
    proc, teacher, student = processor_and_models(family)
    collator = VisionLanguageCollator(proc)
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(
            tmp_path,
            modality_weighting=weighting,
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
        ),
        data_collator=collator,
        train_dataset=examples or raw_examples(8, unlabelled=(1, 2, 6)),
    )
    trainer.train()
    return {name: p.detach().clone() for name, p in student.named_parameters()}


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_msd_gradient_accumulation_4x2_equals_batch_8(tmp_path, family):
    """Micro-batches of 2 with different prompt lengths, padding and gold-answer counts (one micro-batch has
    no gold answer at all) take the step of one batch of 8: every term is normalised over the tokens of the
    whole accumulated batch."""
    large = one_step(tmp_path / "8", 8, 1, family=family)
    small = one_step(tmp_path / "2", 2, 4, family=family)
    start = dict(processor_and_models(family)[2].named_parameters())
    assert max((large[k] - start[k]).abs().max().item() for k in large) > 1e-2
    for name, value in large.items():
        torch.testing.assert_close(small[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_no_gold_answer_in_the_whole_batch_gives_a_finite_step(tmp_path):
    """The model's own loss over 0 gold tokens is 0 (not 0 / 0): only the distillation terms move the
    student."""
    params = one_step(tmp_path, 4, 1, weighting="uniform", examples=raw_examples(4, unlabelled=(0, 1, 2, 3)))
    assert all(torch.isfinite(p).all() for p in params.values())


@pytest.mark.parametrize("weighting", ["population", "learned"])
def test_population_and_learned_weights_train(tmp_path, weighting):
    teacher, student = teacher_and_student()
    collator = VisionLanguageCollator(processor())
    args = msd_args(
        tmp_path,
        modality_weighting=weighting,
        per_device_train_batch_size=4,
        max_steps=2,
        meta_update_interval=1,
        meta_learning_rate=0.5,
        save_strategy="no",
    )
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        data_collator=collator,
        train_dataset=raw_examples(8, unlabelled=(1,)),
        eval_dataset=raw_examples(4),
    )
    trainer.train()
    weights = trainer.weighting(1, None)
    assert torch.isfinite(weights).all()
    if weighting == "population":  # the mean of the per-example answer-token saliency over the training set
        teacher.eval()
        batch = collator(raw_examples(8, unlabelled=(1,)))
        t_full, dl = forward(teacher, batch), batch["distillation_labels"]
        views = {name: view_inputs(batch, name) for name in ("image", "text")}
        population = torch.stack(
            [
                hand_saliency(t_full, dl, forward(teacher, views[o]), views[o]["distillation_labels"]).mean()
                for o in ("text", "image")
            ]
        )
        torch.testing.assert_close(trainer.weighting.population_saliency, population, rtol=1e-4, atol=1e-7)
    else:
        assert trainer.weighting.alpha.abs().max() > 0


@pytest.mark.parametrize("family", ["llava", "qwen2_vl"])
def test_distillation_trainer_detects_llava_as_causal_and_uses_the_answer_tokens(tmp_path, family):
    proc, teacher, student = processor_and_models(family)
    collator = VisionLanguageCollator(proc, views=False)
    batch = collator(raw_examples(4, unlabelled=(0,)))
    args = msd_args(tmp_path, modality_loss_weight=0.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    assert trainer.token_level == "causal"
    student.eval()
    loss = trainer.compute_loss(student, dict(batch))
    s, t, dl, labels = (
        forward(student, batch),
        forward(teacher, batch),
        batch["distillation_labels"],
        batch["labels"],
    )
    logits, targets = shifted(s, labels)
    task = torch.nn.functional.cross_entropy(logits[targets != X], targets[targets != X])
    expected = 0.3 * task + 0.7 * hand_kd_sum(s, t, dl, 2.0).sum() / (dl != X).sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_teacher_with_another_vocabulary_is_refused(tmp_path):
    teacher, _ = teacher_and_student()
    other = tiny_llava(
        processor().__class__(
            image_processor=processor().image_processor,
            tokenizer=word_level_tokenizer(["other", "words"]),
            patch_size=8,
            vision_feature_select_strategy="default",
            num_additional_image_tokens=1,
        ),
        hidden_size=16,
        num_layers=1,
        vision_hidden_size=16,
        vision_layers=1,
    )
    with pytest.raises(ValueError, match=r"vocabulary of 10 tokens.*one of 19.*cross-tokenizer"):
        DistillationTrainer(model=other, teacher_model=teacher, args=msd_args(tmp_path))
    with pytest.raises(ValueError, match=r"tokenizer.*differ"):
        check_same_vocabulary(processor().tokenizer, word_level_tokenizer(["other", "words"]))
    check_same_vocabulary(processor().tokenizer, processor().tokenizer)


def test_msd_without_views_is_refused_by_name(tmp_path):
    teacher, student = teacher_and_student()
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path, max_steps=1),
        data_collator=VisionLanguageCollator(processor(), views=False),
        train_dataset=raw_examples(4),
    )
    with pytest.raises(ValueError, match=r"modality views.*VisionLanguageCollator"):
        trainer.train()


@pytest.mark.multiprocess
def test_two_processes_take_the_one_process_step(tmp_path):
    """Two processes with 4 examples each (and 2 x 2 with accumulation) take the step of one process on all 8:
    the token counts are gathered over the processes and the loss multiplied by the world size."""
    out_dir = tmp_path / "two"
    command, env = two_process_launch(SCRIPT, str(out_dir))
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"launch failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    start = parameters(teacher_and_student()[1])
    for case, (_, _, weighting) in CASES.items():
        _, student = train_one_step(tmp_path / case, NUM_EXAMPLES, 1, weighting)
        want = parameters(student)
        assert max((want[k] - start[k]).abs().max().item() for k in want) > 1e-2
        for rank in (0, 1):
            got = load_file(out_dir / case / f"rank{rank}.safetensors")
            for name in want:
                torch.testing.assert_close(
                    got[name], want[name], rtol=1e-4, atol=1e-6, msg=f"{case} {rank} {name}"
                )


def test_direct_compute_loss_in_train_mode_before_train_matches_the_hand_computation(tmp_path):
    """compute_loss called directly, before train(), on a student in train mode (the model computes its
    own task loss) returns the hand computation, as Trainer.compute_loss does: no accumulation scale."""
    teacher, student = teacher_and_student()
    batch = VisionLanguageCollator(processor())(raw_examples(4, unlabelled=(1,)))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=msd_args(tmp_path))
    student.train()
    loss = trainer.compute_loss(student, dict(batch))
    dl, labels = batch["distillation_labels"], batch["labels"]
    s_full, t_full = forward(student, batch), forward(teacher, batch)
    logits, targets = shifted(s_full, labels)
    task = torch.nn.functional.cross_entropy(logits[targets != X], targets[targets != X])
    tokens = (dl[:, 1:] != X).sum()
    expected = 0.3 * task + 0.7 * hand_kd_sum(s_full, t_full, dl, 2.0).sum() / tokens
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
