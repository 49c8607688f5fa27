import os

import pytest
import torch
import torch.nn.functional as F

from hf_msd.architectures import default_modalities
from hf_msd.modalities.modality import Modality
from hf_msd.trainers.msd_config import MSDTrainingArguments
from hf_msd.trainers.msd_setup import SALIENCY_CACHE_NAME
from hf_msd.trainers.msd_trainer import MSDTrainer
from hf_msd.trainers.training_state import TRAINING_STATE_NAME
from tests.helpers.models import tiny_model, tiny_vilt, tiny_vilt_batch
from tests.helpers.msd import oracle_teacher, stack_collate, text_label_dataset

T = 2.0  # temperature used throughout


def args_for(tmp_path, **overrides):
    fields = {
        "output_dir": str(tmp_path),
        "temperature": T,
        "hard_label_weight": 0.3,
        "kd_loss_weight": 0.7,
        "modality_loss_weight": 0.4,
        "per_device_train_batch_size": 8,
        "learning_rate": 1e-3,
        "report_to": [],
        "save_strategy": "no",
        "use_cpu": True,
        "disable_tqdm": True,
        "logging_steps": 1,
    }
    fields.update(overrides)
    return MSDTrainingArguments(**fields)


def hand_kd_single(student_logits, teacher_logits):
    """T^2 * sum_c p_c (log p_c - log q_c), p = softmax(t/T), q = softmax(s/T); per example."""
    log_p = F.log_softmax(teacher_logits / T, dim=-1)
    log_q = F.log_softmax(student_logits / T, dim=-1)
    return T**2 * (log_p.exp() * (log_p - log_q)).sum(-1)


def hand_kl(full, without):
    log_p, log_q = F.log_softmax(full, -1), F.log_softmax(without, -1)
    return (log_p.exp() * (log_p - log_q)).sum(-1)


def ours_by_hand(model, batch):
    """Logits of our model on x, x_text and x_image, calling it with the keys of each input by hand."""
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        return (
            model(**text, pixel_values=batch["pixel_values"]).logits,
            model(**text).logits,
            model(pixel_values=batch["pixel_values"]).logits,
        )


@pytest.fixture(scope="module")
def task():
    return {
        "teacher": oracle_teacher(),
        "train": text_label_dataset(32, seed=0),
        "eval": text_label_dataset(16, seed=1),
        "batch": stack_collate(text_label_dataset(4, seed=2)),
    }


def make_trainer(tmp_path, task, student=None, **overrides):
    student = student or tiny_model(seed=1)
    return MSDTrainer(
        model=student,
        teacher_model=task["teacher"],
        args=args_for(tmp_path, **overrides),
        modalities=default_modalities(student),
        train_dataset=task["train"],
        eval_dataset=task["eval"],
        data_collator=stack_collate,
    )


def test_uniform_total_loss_matches_hand_computation(tmp_path, task):
    trainer = make_trainer(tmp_path, task)
    batch = task["batch"]
    loss = trainer.compute_loss(trainer.model, dict(batch))
    s_full, s_text, s_image = ours_by_hand(trainer.model, batch)
    t_full, t_text, t_image = ours_by_hand(task["teacher"], batch)
    per_example = (
        0.3 * F.cross_entropy(s_full, batch["labels"], reduction="none")
        + 0.7 * hand_kd_single(s_full, t_full)
        + 0.4 * hand_kd_single(s_text, t_text)
        + 0.4 * hand_kd_single(s_image, t_image)
    )
    torch.testing.assert_close(loss.detach(), per_example.mean(), rtol=1e-5, atol=1e-6)


def test_full_input_target_control_matches_hand_computation(tmp_path, task):
    """modality_target='full': the student still runs on x_text and x_image, but both terms copy T(x)."""
    trainer = make_trainer(tmp_path, task, modality_target="full")
    batch = task["batch"]
    loss = trainer.compute_loss(trainer.model, dict(batch))
    s_full, s_text, s_image = ours_by_hand(trainer.model, batch)
    t_full, _, _ = ours_by_hand(task["teacher"], batch)
    per_example = (
        0.3 * F.cross_entropy(s_full, batch["labels"], reduction="none")
        + 0.7 * hand_kd_single(s_full, t_full)
        + 0.4 * hand_kd_single(s_text, t_full)
        + 0.4 * hand_kd_single(s_image, t_full)
    )
    torch.testing.assert_close(loss.detach(), per_example.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("kept", ["text", "image"])
def test_one_modality_term_matches_hand_computation(tmp_path, task, kept):
    """modality_terms=[m]: only m's term, with its weight unchanged."""
    trainer = make_trainer(tmp_path, task, modality_terms=[kept])
    batch = task["batch"]
    loss = trainer.compute_loss(trainer.model, dict(batch))
    s_full, s_text, s_image = ours_by_hand(trainer.model, batch)
    t_full, t_text, t_image = ours_by_hand(task["teacher"], batch)
    term = hand_kd_single(s_text, t_text) if kept == "text" else hand_kd_single(s_image, t_image)
    per_example = (
        0.3 * F.cross_entropy(s_full, batch["labels"], reduction="none")
        + 0.7 * hand_kd_single(s_full, t_full)
        + 0.4 * term
    )
    torch.testing.assert_close(loss.detach(), per_example.mean(), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
    ("overrides", "inputs"),
    [
        ({}, 3),  # x, x_text, x_image
        ({"modality_terms": ["image"]}, 2),  # x, x_image
        ({"modality_target": "full"}, 1),  # x: both terms copy T(x)
        # Per-example saliency needs T(x without m) for each m: with two modalities, x_image and x_text.
        ({"modality_target": "full", "modality_weighting": "instance"}, 3),
    ],
)
def test_online_teacher_runs_only_the_inputs_the_loss_needs(tmp_path, task, overrides, inputs):
    trainer = make_trainer(tmp_path, task, **overrides)
    batch = task["batch"]
    examples = []
    handle = task["teacher"].register_forward_hook(
        lambda module, args, output: examples.append(len(output.logits))
    )
    try:
        trainer.compute_loss(trainer.model, dict(batch))
    finally:
        handle.remove()
    assert sum(examples) == inputs * len(batch["labels"])


def test_uniform_on_vilt_mask_and_fill_matches_hand_computation(tmp_path):
    teacher, student = tiny_vilt(seed=0), tiny_vilt(seed=1)
    trainer = MSDTrainer(model=student, teacher_model=teacher, args=args_for(tmp_path))
    batch = tiny_vilt_batch(batch_size=3)
    loss = trainer.compute_loss(student, dict(batch))

    def by_hand(model):
        inputs = {k: v for k, v in batch.items() if k != "labels"}
        x_text = {**inputs, "pixel_values": torch.zeros_like(batch["pixel_values"])}
        x_image = {
            **inputs,
            "input_ids": torch.zeros_like(batch["input_ids"]),
            "attention_mask": torch.zeros_like(batch["attention_mask"]),
            "token_type_ids": torch.zeros_like(batch["token_type_ids"]),
        }
        with torch.no_grad():
            return [model(**x).logits for x in (inputs, x_text, x_image)]

    def bernoulli_kd(s, t):  # T^2 * sum_c KL(Bern(sigmoid(t_c/T)) || Bern(sigmoid(s_c/T)))
        p, q = torch.sigmoid(t / T), torch.sigmoid(s / T)
        return T**2 * (p * (p.log() - q.log()) + (1 - p) * ((1 - p).log() - (1 - q).log())).sum(-1)

    (s_full, s_text, s_image), (t_full, t_text, t_image) = by_hand(student), by_hand(teacher)
    bce = F.binary_cross_entropy_with_logits(s_full, batch["labels"], reduction="none").mean(-1)
    per_example = (
        0.3 * bce
        + 0.7 * bernoulli_kd(s_full, t_full)
        + 0.4 * bernoulli_kd(s_text, t_text)
        + 0.4 * bernoulli_kd(s_image, t_image)
    )
    torch.testing.assert_close(loss.detach(), per_example.mean(), rtol=1e-4, atol=1e-6)


def test_population_weights_match_independent_saliency_and_are_cached(tmp_path, task, monkeypatch):
    trainer = make_trainer(tmp_path, task, modality_weighting="population", max_steps=2)
    trainer.train()
    # Independent: S_m = mean over the training set of KL(T(x) || T(x without m)).
    full, text, image = ours_by_hand(task["teacher"], stack_collate(task["train"]))
    s_text, s_image = hand_kl(full, image).mean(), hand_kl(full, text).mean()
    assert s_text > 10 * s_image > 0  # the text carries the label: population saliency ranks it first
    want = 0.4 * 2 * torch.stack([s_text, s_image]) / (s_text + s_image)
    torch.testing.assert_close(trainer.weighting(1)[0], want, rtol=1e-4, atol=1e-6)
    logged = next(h for h in trainer.state.log_history if "modality_weight_text" in h)
    assert logged["modality_weight_text"] == pytest.approx(want[0].item(), rel=1e-4)
    assert logged["modality_weight_image"] == pytest.approx(want[1].item(), rel=1e-4, abs=1e-6)
    assert os.path.isfile(tmp_path / SALIENCY_CACHE_NAME)

    def fail(*args, **kwargs):
        raise AssertionError("population saliency recomputed despite a matching cache")

    monkeypatch.setattr("hf_msd.trainers.msd_setup.compute_saliency", fail)
    again = make_trainer(tmp_path, task, modality_weighting="population", max_steps=1)
    again.train()
    torch.testing.assert_close(again.weighting(1)[0], want, rtol=1e-4, atol=1e-6)
    changed = make_trainer(tmp_path, {**task, "train": task["train"][:16]}, modality_weighting="population")
    with pytest.raises(AssertionError, match="recomputed"):  # another dataset -> fingerprint mismatch
        changed.train()


def test_instance_weights_match_independent_saliency(tmp_path, task):
    trainer = make_trainer(tmp_path, task, modality_weighting="instance")
    batch = task["batch"]
    components, _ = trainer.loss_components(trainer.model, dict(batch))
    _, s_text, s_image = ours_by_hand(trainer.model, batch)
    t_full, t_text, t_image = ours_by_hand(task["teacher"], batch)
    saliency = torch.stack([hand_kl(t_full, t_image), hand_kl(t_full, t_text)], dim=1)
    weights = 0.4 * 2 * saliency / saliency.sum(1, keepdim=True)
    torch.testing.assert_close(components["modality_text"], weights[:, 0] * hand_kd_single(s_text, t_text))
    torch.testing.assert_close(
        components["modality_image"], weights[:, 1] * hand_kd_single(s_image, t_image), rtol=1e-4, atol=1e-7
    )


def test_learned_weights_move_toward_the_informative_modality(tmp_path, task):
    trainer = make_trainer(
        tmp_path,
        task,
        modality_weighting="learned",
        modality_loss_weight=1.0,
        meta_learning_rate=0.1,
        meta_update_interval=1,
        meta_validation_fraction=0.25,
        max_steps=12,
    )
    trainer.train()
    assert len(trainer.train_dataset) == 24  # 8 of 32 examples held out for the meta step
    weights = trainer.weighting(1)[0]
    assert weights[0] > 1.15 and weights[1] < 0.85  # start: 1.0 each; text carries the label
    logged = [h for h in trainer.state.log_history if "meta_validation_loss" in h]
    assert logged and logged[-1]["modality_weight_text"] > logged[0]["modality_weight_text"]


def test_learned_weights_are_checkpointed_and_restored(tmp_path, task):
    common = {
        "modality_weighting": "learned",
        "meta_learning_rate": 0.1,
        "save_strategy": "steps",
        "save_steps": 2,
    }
    trainer = make_trainer(tmp_path, task, max_steps=2, meta_update_interval=1, **common)
    trainer.train()  # meta steps at steps 0 and 1, checkpoint at step 2
    checkpoint = tmp_path / "checkpoint-2"
    saved = torch.load(checkpoint / TRAINING_STATE_NAME)["modality_weighting"]
    torch.testing.assert_close(saved["alpha"], trainer.weighting.alpha.detach())
    assert saved["alpha"].abs().sum() > 0
    # Resume for one more step without a meta step there: the weights and their Adam state are the saved ones.
    resumed = make_trainer(tmp_path, task, max_steps=3, meta_update_interval=100, **common)
    assert resumed.weighting.alpha.abs().sum() == 0
    resumed.train(resume_from_checkpoint=str(checkpoint))
    torch.testing.assert_close(resumed.weighting.alpha.detach(), trainer.weighting.alpha.detach())
    assert int(resumed.weighting.optimizer.state_dict()["state"][0]["step"]) == 2


def test_the_meta_step_runs_the_student_in_training_mode(tmp_path, task):
    """Every student pass that builds a graph, the meta step's included, is in training mode: at the first
    step (the student comes in eval mode) and at the step after each evaluation (which leaves it there)."""
    student = tiny_model(seed=1)
    assert not student.training
    calls = []  # (training mode, gradients enabled) per student forward
    student.register_forward_pre_hook(
        lambda module, args: calls.append((module.training, torch.is_grad_enabled()))
    )
    trainer = make_trainer(
        tmp_path,
        task,
        student=student,
        modality_weighting="learned",
        meta_update_interval=1,
        eval_strategy="steps",
        eval_steps=1,
        max_steps=2,
    )
    trainer.train()
    assert (False, False) in calls  # the evaluations ran, in eval mode
    in_graph = [training for training, grad in calls if grad]
    assert len(in_graph) > 2 and all(in_graph)  # meta steps (a training pass and a look-ahead) and steps


def test_unimodal_student_sees_only_its_modality(tmp_path, task):
    student = tiny_model(modalities=("text",), seed=1)
    trainer = MSDTrainer(
        model=student,
        teacher_model=task["teacher"],
        args=args_for(tmp_path),
        modalities=[
            Modality("text", keys=["input_ids"], optional_keys=["attention_mask", "token_type_ids"]),
            Modality("image", keys=["pixel_values"]),
        ],
        train_dataset=task["train"],
        data_collator=stack_collate,
    )
    batch = task["batch"]
    components, _ = trainer.loss_components(student, dict(batch))
    assert set(components) == {"task", "kd", "modality_text"}
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        s_text = student(**text).logits
    t_full, t_text, _ = ours_by_hand(task["teacher"], batch)
    torch.testing.assert_close(components["kd"], 0.7 * hand_kd_single(s_text, t_full))
    torch.testing.assert_close(components["modality_text"], 0.4 * hand_kd_single(s_text, t_text))


def test_cached_modality_teacher_logits_are_used(tmp_path, task):
    trainer = make_trainer(tmp_path, task)
    batch = dict(task["batch"])
    batch["teacher_logits_text"] = torch.zeros(4, 3)
    components, _ = trainer.loss_components(trainer.model, batch)
    _, s_text, _ = ours_by_hand(trainer.model, batch)
    torch.testing.assert_close(components["modality_text"], 0.4 * hand_kd_single(s_text, torch.zeros(4, 3)))


def test_missing_key_fails_before_training_naming_it(tmp_path, task):
    student = tiny_model(seed=1)
    trainer = MSDTrainer(
        model=student,
        teacher_model=task["teacher"],
        args=args_for(tmp_path, max_steps=1),
        modalities=[Modality("text", keys=["input_ids"]), Modality("image", keys=["image_embeds"])],
        train_dataset=task["train"],
        data_collator=stack_collate,
    )
    with pytest.raises(ValueError, match="'image_embeds'"):
        trainer.train()
    assert trainer.state.global_step == 0


def test_drop_on_vilt_fails_naming_input_ids(tmp_path):
    teacher, student = tiny_vilt(seed=0), tiny_vilt(seed=1)
    data = [{k: v[i] for k, v in tiny_vilt_batch(batch_size=4).items()} for i in range(4)]
    drop = [
        Modality("text", keys=["input_ids", "attention_mask"], optional_keys=["token_type_ids"]),
        Modality("image", keys=["pixel_values"], optional_keys=["pixel_mask"], removal="fill"),
    ]
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=args_for(tmp_path, max_steps=1),
        modalities=drop,
        train_dataset=data,
        data_collator=stack_collate,
    )
    with pytest.raises(ValueError, match=r"'input_ids'.*removal='mask'"):
        trainer.train()


def test_argument_validation_names_the_field(tmp_path, task):
    with pytest.raises(ValueError, match="modality_weighting='best'"):
        args_for(tmp_path, modality_weighting="best")
    with pytest.raises(ValueError, match="meta_validation_fraction"):
        args_for(tmp_path, meta_validation_fraction=1.0)
    with pytest.raises(ValueError, match="meta_update_interval"):
        args_for(tmp_path, meta_update_interval=0)
    with pytest.raises(ValueError, match="modality_target='teacher'"):
        args_for(tmp_path, modality_target="teacher")
    with pytest.raises(ValueError, match="modality_terms is empty"):
        args_for(tmp_path, modality_terms=[])
    with pytest.raises(
        ValueError, match=r"modality_terms names \['audio'\].*choose from \['text', 'image'\]"
    ):
        make_trainer(tmp_path, task, modality_terms=["audio"])
    with pytest.raises(ValueError, match="eval_dataset"):
        MSDTrainer(
            model=tiny_model(seed=1),
            teacher_model=task["teacher"],
            args=args_for(tmp_path, modality_weighting="learned"),
            train_dataset=task["train"],
        )


def test_modality_terms_alone_are_accepted_and_train(tmp_path, task):
    """hard_label_weight = kd_loss_weight = 0 with modality_loss_weight > 0: the loss is the modality terms
    alone (hand computation), and training moves the student."""
    trainer = make_trainer(
        tmp_path, task, hard_label_weight=0.0, kd_loss_weight=0.0, modality_loss_weight=1.0
    )
    batch = task["batch"]
    loss = trainer.compute_loss(trainer.model, dict(batch))
    _, s_text, s_image = ours_by_hand(trainer.model, batch)
    _, t_text, t_image = ours_by_hand(task["teacher"], batch)
    expected = (hand_kd_single(s_text, t_text) + hand_kd_single(s_image, t_image)).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    trainer.args.max_steps = 2
    trainer.train()
    assert any(not torch.equal(before[k], v) for k, v in trainer.model.state_dict().items())
    with pytest.raises(ValueError, match=r"All loss weights .*modality_loss_weight"):
        args_for(tmp_path, hard_label_weight=0.0, kd_loss_weight=0.0, modality_loss_weight=0.0)


def _as_dataset(rows):
    import datasets

    return datasets.Dataset.from_dict({k: [row[k].tolist() for row in rows] for k in rows[0]}).with_format(
        "torch"
    )


def test_iterable_dataset_trains_like_the_map_style_dataset(tmp_path, task):
    """A datasets.IterableDataset trains as the same rows in a map-style Dataset (uniform weights)."""
    rows = task["train"]
    results = []
    for name, dataset in (("map", _as_dataset(rows)), ("stream", _as_dataset(rows).to_iterable_dataset())):
        trainer = make_trainer(tmp_path / name, task, max_steps=3, train_sampling_strategy="sequential")
        trainer.train_dataset = dataset
        trainer.train()
        results.append({k: v.clone() for k, v in trainer.model.state_dict().items()})
    start = tiny_model(seed=1).state_dict()
    assert any(not torch.equal(start[k], v) for k, v in results[0].items())
    for key, value in results[0].items():
        torch.testing.assert_close(results[1][key], value, rtol=0, atol=0, msg=key)


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"modality_weighting": "population"}, r"modality_weighting='population'.*IterableDataset"),
        (
            {"modality_weighting": "learned", "meta_validation_fraction": 0.25},
            r"meta_validation_fraction=0\.25.*IterableDataset",
        ),
    ],
)
def test_iterable_dataset_refuses_what_needs_a_pass_over_the_data(tmp_path, task, overrides, message):
    trainer = make_trainer(tmp_path, task, max_steps=1, **overrides)
    trainer.train_dataset = _as_dataset(task["train"]).to_iterable_dataset()
    with pytest.raises(ValueError, match=message):
        trainer.train()
