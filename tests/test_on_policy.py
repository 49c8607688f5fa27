"""On-policy distillation of generative students (``lmbda``): the arguments, and the trainers against hand
computations on the student's own generated answers."""

from __future__ import annotations

import copy
import subprocess

import datasets
import pytest
import torch
from safetensors.torch import load_file
from transformers import HfArgumentParser

from hf_msd.data import VisionLanguageCollator
from hf_msd.data.generative import view_inputs
from hf_msd.data.on_policy import GOLD_VIEW, on_policy_draw
from hf_msd.teacher_outputs.cache import precompute_teacher_outputs
from hf_msd.trainers import (
    DistillationTrainer,
    DistillationTrainingArguments,
    MSDTrainer,
    MSDTrainingArguments,
)
from hf_msd.trainers.on_policy import generate_answers
from tests.helpers.distillation import make_args
from tests.helpers.distillation import teacher_and_student as bert_pair
from tests.helpers.launch import REPO_ROOT, SCRIPTS, two_process_launch
from tests.helpers.scripts.distributed_vlm_script import NUM_EXAMPLES, parameters, train_one_step
from tests.helpers.scripts.on_policy_vlm_script import CASES as ON_POLICY_CASES
from tests.helpers.vlm import (
    family_processor_and_models,
    msd_args,
    processor,
    raw_examples,
    teacher_and_student,
)

X = -100


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"lmbda": -0.1}, r"lmbda must be in \[0, 1\].*-0.1"),
        ({"lmbda": 1.5}, r"lmbda must be in \[0, 1\].*1.5"),
        ({"lmbda": float("nan")}, r"lmbda must be in \[0, 1\].*nan"),
        ({"max_new_tokens": 0}, r"max_new_tokens must be an integer >= 1, got 0"),
        ({"max_new_tokens": 2.5}, r"max_new_tokens must be an integer >= 1, got 2.5"),
        ({"generation_temperature": 0.0}, r"generation_temperature must be a finite number > 0, got 0.0"),
        ({"generation_temperature": float("inf")}, r"generation_temperature must be .* > 0, got inf"),
    ],
)
def test_on_policy_arguments_out_of_range_are_refused_by_name(tmp_path, overrides, message):
    for cls in (DistillationTrainingArguments, MSDTrainingArguments):
        with pytest.raises(ValueError, match=message):
            cls(output_dir=str(tmp_path), **overrides)


def test_on_policy_arguments_parse_from_the_command_line(tmp_path):
    (args,) = HfArgumentParser(MSDTrainingArguments).parse_args_into_dataclasses(
        [
            "--output_dir",
            str(tmp_path),
            "--lmbda",
            "0.5",
            "--max_new_tokens",
            "4",
            "--generation_do_sample",
            "true",
            "--generation_temperature",
            "0.9",
        ]
    )
    assert (args.lmbda, args.max_new_tokens, args.generation_do_sample, args.generation_temperature) == (
        0.5,
        4,
        True,
        0.9,
    )
    default = DistillationTrainingArguments(output_dir=str(tmp_path))
    assert (default.lmbda, default.max_new_tokens, default.generation_do_sample) == (0.0, 128, False)


# ---- The trainers -----------------------------------------------------------------------------------------

EOS, IMAGE = 3, 4
TEMPERATURE, HARD, KD, MODALITY = 2.0, 0.3, 0.7, 0.5


def processor_and_models(family):
    if family == "llava":
        return (processor(), *teacher_and_student())
    return family_processor_and_models(family)


def reference_answers(student, collator, examples, max_new_tokens):
    """The student's greedy ``generate`` on the collator's prompts (image token suppressed), each answer cut
    after its first ``</s>``: lists of token ids."""
    inputs = collator.generation_inputs(examples)
    with torch.no_grad():
        out = student.eval().generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=[IMAGE]
        )
    answers = []
    for row in out[:, inputs["input_ids"].shape[1] :].tolist():
        answer = []
        for token in row:
            answer.append(token)
            if token == EOS:
                break
        answers.append(answer)
    return answers


def record_steps(trainer):
    """Replace ``trainer.compute_loss`` by a spy recording (inputs, loss, student in train mode) per call."""
    records, compute = [], trainer.compute_loss

    def spy(model, inputs, *args, **kwargs):
        loss = compute(model, inputs, *args, **kwargs)
        records.append((dict(inputs), loss.detach().clone(), model.training))
        return loss

    trainer.compute_loss = spy
    return records


def logits(model, inputs):
    dropped = ("labels", "distillation_labels")
    with torch.no_grad():
        return model.eval()(**{k: v for k, v in inputs.items() if k not in dropped}).logits


def kd_token_sum(student_logits, teacher_logits, scored, beta=0.0):
    """Sum over the scored tokens (``scored`` (B, T), -100 elsewhere; logits at t predict the token at t + 1)
    of T^2 KL(softmax(t / T) || softmax(s / T)) (``beta`` 0) or of the reverse T^2 KL(softmax(s / T) ||
    softmax(t / T)) (``beta`` 1), written out."""
    t = torch.log_softmax(teacher_logits[:, :-1] / TEMPERATURE, dim=-1)
    s = torch.log_softmax(student_logits[:, :-1] / TEMPERATURE, dim=-1)
    p, q = (t, s) if beta == 0 else (s, t)
    per_token = TEMPERATURE**2 * (p.exp() * (p - q)).sum(-1)
    return (per_token * (scored[:, 1:] != X)).sum()


@pytest.mark.parametrize(
    ("family", "trainer_class", "beta"),
    [
        ("llava", MSDTrainer, 0.0),
        ("llava", DistillationTrainer, 0.0),
        ("idefics3", MSDTrainer, 0.0),
        ("idefics3", DistillationTrainer, 0.0),
        ("llava", MSDTrainer, 1.0),
    ],
)
def test_lmbda_1_distils_on_the_students_greedy_answers(tmp_path, family, trainer_class, beta):
    """With lmbda=1 the distillation tokens of x and of every view are the student's greedy generate output,
    and the step's loss is the hand computation on them (task term on the gold answers; forward KL, or the
    reverse KL with beta=1)."""
    proc, teacher, student = processor_and_models(family)
    msd = trainer_class is MSDTrainer
    examples = raw_examples(8, unlabelled=(1, 2))
    collator = VisionLanguageCollator(proc, views=msd)
    args = msd_args(
        tmp_path,
        lmbda=1.0,
        max_new_tokens=4,
        max_steps=1,
        per_device_train_batch_size=8,
        modality_weighting="uniform",
        modality_loss_weight=MODALITY if msd else 0.0,
        beta=beta,
    )
    initial = copy.deepcopy(student)
    trainer = trainer_class(
        model=student, teacher_model=teacher, args=args, data_collator=collator, train_dataset=examples
    )
    records = record_steps(trainer)
    trainer.train()
    ((batch, loss, training),) = records
    assert training  # generation left the student in train mode

    want = reference_answers(copy.deepcopy(initial), collator, examples, max_new_tokens=4)
    assert any(len(answer) > 1 for answer in want)
    views = [None, "text", "image"] if msd else [None]
    for view in views:
        scored = (
            batch["distillation_labels"] if view is None else view_inputs(batch, view)["distillation_labels"]
        )
        assert [row[row != X].tolist() for row in scored] == want, view
    tokens = sum(len(answer) for answer in want)

    gold = view_inputs(batch, GOLD_VIEW)
    gold_logits, gold_labels = logits(initial, gold)[:, :-1], gold["labels"][:, 1:]
    task = torch.nn.functional.cross_entropy(gold_logits[gold_labels != X], gold_labels[gold_labels != X])
    x = {k: v for k, v in batch.items() if not k.startswith("view_")}
    expected = (
        HARD * task
        + KD * kd_token_sum(logits(initial, x), logits(teacher, x), x["distillation_labels"], beta) / tokens
    )
    for view in views[1:]:
        inputs = view_inputs(batch, view)
        kd = kd_token_sum(
            logits(initial, inputs), logits(teacher, inputs), inputs["distillation_labels"], beta
        )
        expected = expected + MODALITY * kd / tokens
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_lmbda_0_leaves_batches_and_random_state_as_they_were(tmp_path):
    """lmbda=0 never generates: the batches reaching the loss are the collator's, and the weights and the
    global random state after 2 steps equal those of the default arguments (no lmbda given)."""
    runs = []
    for name, overrides in (("default", {}), ("zero", {"lmbda": 0.0, "generation_do_sample": True})):
        teacher, student = teacher_and_student()
        student.generate = None  # any generation would fail
        examples = raw_examples(8, unlabelled=(1, 2, 6))
        collator = VisionLanguageCollator(processor())
        args = msd_args(tmp_path / name, max_steps=2, per_device_train_batch_size=4, **overrides)
        trainer = MSDTrainer(
            model=student, teacher_model=teacher, args=args, data_collator=collator, train_dataset=examples
        )
        records = record_steps(trainer)
        trainer.train()
        for (batch, _, _), start in zip(records, (0, 4)):
            collated = collator(examples[start : start + 4])
            assert set(batch) == set(collated)
            for key, value in collated.items():
                assert torch.equal(batch[key], value), key
        runs.append(
            ({k: v.detach().clone() for k, v in student.named_parameters()}, torch.random.get_rng_state())
        )
    (default, default_rng), (zero, zero_rng) = runs
    assert torch.equal(default_rng, zero_rng)
    for name, value in default.items():
        assert torch.equal(zero[name], value), name


def test_lmbda_between_0_and_1_makes_whole_steps_on_policy_by_the_seeded_draw(tmp_path):
    """With lmbda=0.5 a step is on-policy exactly when on_policy_draw(0.5, seed, step) says so (seed 0: step
    0, not step 1), and then both of its accumulated micro-batches are."""
    teacher, student = teacher_and_student()
    collator = VisionLanguageCollator(processor())
    args = msd_args(
        tmp_path,
        lmbda=0.5,
        max_new_tokens=2,
        max_steps=2,
        per_device_train_batch_size=2,
        gradient_accumulation_steps=2,
        seed=0,
    )
    trainer = MSDTrainer(
        model=student, teacher_model=teacher, args=args, data_collator=collator, train_dataset=raw_examples(8)
    )
    records = record_steps(trainer)
    trainer.train()
    on_policy = [any(key.startswith(f"view_{GOLD_VIEW}__") for key in batch) for batch, _, _ in records]
    draws = [on_policy_draw(0.5, 0, step) for step in range(2)]
    assert draws == [True, False]
    assert on_policy == [draw for draw in draws for _ in range(2)]


def one_step(tmp_path, per_device, accumulation, **overrides):
    teacher, student = teacher_and_student()
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(
            tmp_path,
            modality_weighting="instance",
            per_device_train_batch_size=per_device,
            gradient_accumulation_steps=accumulation,
            max_steps=1,
            **overrides,
        ),
        data_collator=VisionLanguageCollator(processor()),
        train_dataset=raw_examples(8, unlabelled=(1, 2, 6)),
    )
    trainer.train()
    return {name: p.detach().clone() for name, p in student.named_parameters()}


def test_lmbda_1_gradient_accumulation_4x2_equals_batch_8(tmp_path):
    """Micro-batches of 2 take the step of one batch of 8 (the greedy answers have 3 tokens but one of 4): the
    distillation terms are normalised over the generated tokens of the whole accumulated batch."""
    on_policy = {"lmbda": 1.0, "max_new_tokens": 4}
    large = one_step(tmp_path / "8", 8, 1, **on_policy)
    small = one_step(tmp_path / "2", 2, 4, **on_policy)
    off_policy = one_step(tmp_path / "off", 8, 1)
    assert max((large[k] - off_policy[k]).abs().max().item() for k in large) > 1e-3
    for name, value in large.items():
        torch.testing.assert_close(small[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_generation_cost_is_logged(tmp_path):
    teacher, student = teacher_and_student()
    args = msd_args(
        tmp_path,
        lmbda=1.0,
        max_new_tokens=3,
        max_steps=2,
        per_device_train_batch_size=4,
        logging_strategy="steps",
        logging_steps=1,
    )
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        data_collator=VisionLanguageCollator(processor()),
        train_dataset=raw_examples(8),
    )
    records = record_steps(trainer)
    trainer.train()
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert len(logs) == 2
    for entry, (batch, _, _) in zip(logs, records):
        assert entry["on_policy_steps"] == 1
        assert entry["on_policy_generated_tokens"] == (batch["distillation_labels"] != X).sum().item()
        assert entry["on_policy_generation_seconds"] > 0


def test_lmbda_with_cached_teacher_outputs_or_a_classifier_is_refused_at_construction(tmp_path):
    teacher, student = teacher_and_student()
    collator = VisionLanguageCollator(processor())
    cached = precompute_teacher_outputs(
        teacher, datasets.Dataset.from_list(raw_examples(4)), data_collator=collator, cache_dir=tmp_path / "c"
    )
    args = msd_args(tmp_path, lmbda=0.5)
    with pytest.raises(ValueError, match=r"lmbda=0.5 .*cached teacher outputs.*set lmbda=0.*without"):
        MSDTrainer(
            model=student, teacher_model=teacher, args=args, data_collator=collator, train_dataset=cached
        )
    bert_teacher, bert_student = bert_pair()
    with pytest.raises(ValueError, match=r"lmbda=0.5 .*generative \(causal LM\) students"):
        DistillationTrainer(
            model=bert_student, teacher_model=bert_teacher, args=make_args(tmp_path, lmbda=0.5)
        )


@pytest.mark.multiprocess
def test_lmbda_1_two_processes_take_the_one_process_step(tmp_path):
    """Two processes (2 x 2 with accumulation each, each generating its own examples' answers) take the step
    of one process generating for all 8 examples in one batch."""
    out_dir = tmp_path / "two"
    command, env = two_process_launch(str(SCRIPTS / "on_policy_vlm_script.py"), str(out_dir))
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert result.returncode == 0, f"launch failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    ((case, (_, _, weighting, overrides)),) = ON_POLICY_CASES.items()
    _, student = train_one_step(tmp_path / "one", NUM_EXAMPLES, 1, weighting, **overrides)
    want = parameters(student)
    off_policy = parameters(train_one_step(tmp_path / "off", NUM_EXAMPLES, 1, weighting)[1])
    assert max((want[k] - off_policy[k]).abs().max().item() for k in want) > 1e-3
    for rank in (0, 1):
        got = load_file(out_dir / case / f"rank{rank}.safetensors")
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-4, atol=1e-6, msg=f"{rank} {name}")


def test_sampled_answers_follow_their_seed_and_restore_the_random_state_and_the_mode(tmp_path):
    """generation_do_sample: the answers are generate's samples at generation_temperature (top-k / top-p
    off) from torch.manual_seed(seed); the global random state and the student's train mode are restored."""
    _, student = teacher_and_student()
    collator = VisionLanguageCollator(processor())
    prompts = collator.generation_inputs(raw_examples(8))
    args = msd_args(tmp_path, generation_do_sample=True, generation_temperature=3.0, max_new_tokens=5)
    state = torch.random.get_rng_state()
    answers = generate_answers(student.train(), prompts, args, seed=123)
    assert torch.equal(torch.random.get_rng_state(), state) and student.training
    torch.manual_seed(123)
    with torch.no_grad():
        out = student.eval().generate(
            **prompts,
            do_sample=True,
            temperature=3.0,
            top_k=0,
            top_p=1.0,
            max_new_tokens=5,
            suppress_tokens=[IMAGE],
        )
    want = []
    for row in out[:, prompts["input_ids"].shape[1] :].tolist():
        want.append(row[: row.index(EOS) + 1] if EOS in row else row)
    assert [answer.tolist() for answer in answers] == want
    assert [a.tolist() for a in generate_answers(student, prompts, args, seed=124)] != want
    assert all(IMAGE not in answer for answer in want)
