"""DistillationTrainer on tiny BERT models built from configs (CPU, a few seconds each)."""

import json
import os

import pytest
import torch
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification

from hf_msd.trainers import DistillationTrainer, DistillationTrainingArguments
from hf_msd.trainers.training_state import TRAINING_STATE_NAME
from tests.helpers.distillation import NUM_LABELS, make_args, teacher_and_student, tiny_bert, token_dataset


def collate(dataset, n=None):
    rows = dataset[: n or len(dataset)]
    return {k: torch.tensor(v) for k, v in rows.items()}


def snapshot(module):
    return {k: v.detach().clone() for k, v in module.state_dict().items()}


# ---- Arguments -------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"temperature": 0.0}, "temperature must be a finite number > 0"),
        ({"temperature": float("inf")}, "temperature must be a finite number > 0"),
        ({"kd_loss_weight": -1.0}, "kd_loss_weight must be a finite number >= 0"),
        ({"kd_loss_weight": float("nan")}, "kd_loss_weight must be a finite number >= 0, got nan"),
        ({"hard_label_weight": float("inf")}, "hard_label_weight must be a finite number >= 0, got inf"),
        ({"hidden_loss_weight": -0.1}, "hidden_loss_weight must be a finite number >= 0"),
        ({"kd_loss_type": "jsd"}, "kd_loss_type='jsd' is unknown"),
        ({"hidden_loss_type": "l1"}, "hidden_loss_type='l1' is unknown"),
        ({"attention_loss_type": "cos"}, "attention_loss_type='cos' is unknown"),
        ({"attention_head_reduction": "max"}, "attention_head_reduction='max' is unknown"),
        ({"hidden_state_pooling": "cls"}, "hidden_state_pooling='cls' is unknown"),
        ({"hidden_layer_map": {"a": 1}}, "hidden_layer_map must map"),
        ({"attention_layer_map": {0: -1}}, "attention_layer_map indices must be >= 0"),
        ({"hard_label_weight": 0.0, "kd_loss_weight": 0.0}, "All loss weights"),
    ],
)
def test_arguments_validate_and_name_the_field(tmp_path, overrides, message):
    with pytest.raises(ValueError, match=message):
        DistillationTrainingArguments(output_dir=str(tmp_path), report_to=[], **overrides)


def test_layer_map_accepts_json_from_the_command_line(tmp_path):
    args = DistillationTrainingArguments(output_dir=str(tmp_path), report_to=[], hidden_layer_map='{"1": 2}')
    assert args.hidden_layer_map == {1: 2}
    json.loads(args.to_json_string())  # still serialisable


def test_label_space_mismatch_is_refused_before_training(tmp_path):
    teacher = tiny_bert(num_labels=4)
    student = tiny_bert(num_labels=NUM_LABELS)
    with pytest.raises(ValueError, match=r"num_labels=4.*num_labels=3"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path))
    named = {i: name for i, name in enumerate(["cat", "dog", "fish"])}
    teacher = tiny_bert(id2label=named, label2id={v: k for k, v in named.items()})
    swapped = {0: "dog", 1: "cat", 2: "fish"}
    student = tiny_bert(id2label=swapped, label2id={v: k for k, v in swapped.items()})
    with pytest.raises(ValueError, match="id2label differ"):
        DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path))


# ---- Loss ------------------------------------------------------------------------------------------------


def reference_loss(student_logits, teacher_logits, labels, problem_type, temperature, hard, kd):
    """The batch mean of ``hard * task + kd * soft`` per example, written with plain softmax / sigmoid / log:
    single-label: cross-entropy, and T^2 KL(p_t || p_s) between the softmaxes of the logits / T;
    multi-label: binary cross-entropy averaged over the labels, and T^2 times the Bernoulli KL of the
    sigmoids of the logits / T summed over the labels; regression: squared error to the label, and the
    squared difference of the logits (no temperature)."""
    if problem_type == "single_label_classification":
        task = -torch.log(torch.softmax(student_logits, -1)[torch.arange(len(labels)), labels])
        p_t = torch.softmax(teacher_logits / temperature, -1)
        p_s = torch.softmax(student_logits / temperature, -1)
        soft = temperature**2 * (p_t * (p_t.log() - p_s.log())).sum(-1)
    elif problem_type == "multi_label_classification":
        q = torch.sigmoid(student_logits)
        task = -(labels * q.log() + (1 - labels) * (1 - q).log()).mean(-1)
        p, q = torch.sigmoid(teacher_logits / temperature), torch.sigmoid(student_logits / temperature)
        soft = temperature**2 * (p * (p / q).log() + (1 - p) * ((1 - p) / (1 - q)).log()).sum(-1)
    else:
        task = (student_logits.squeeze(-1) - labels) ** 2
        soft = ((student_logits - teacher_logits) ** 2).squeeze(-1)
    return (hard * task + kd * soft).mean()


@pytest.mark.parametrize(
    "problem_type", ["single_label_classification", "multi_label_classification", "regression"]
)
def test_compute_loss_matches_the_formula_for_each_problem_type(tmp_path, problem_type):
    num_labels = 1 if problem_type == "regression" else NUM_LABELS
    teacher = tiny_bert(hidden=32, num_labels=num_labels, seed=1, problem_type=problem_type)
    student = tiny_bert(num_labels=num_labels, seed=2, problem_type=problem_type)
    batch = collate(token_dataset(6, multi_label=problem_type == "multi_label_classification"))
    if problem_type == "regression":
        batch["labels"] = torch.linspace(-1, 1, 6)
    args = make_args(tmp_path, temperature=3.0, hard_label_weight=0.3, kd_loss_weight=0.7)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    loss = trainer.compute_loss(student, dict(batch))
    model_inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        s, t = student(**model_inputs).logits, teacher(**model_inputs).logits
    expected = reference_loss(s, t, batch["labels"], problem_type, 3.0, 0.3, 0.7)
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_hidden_loss_uses_the_projection_and_ignores_padding(tmp_path):
    teacher, student = teacher_and_student()
    args = make_args(tmp_path, hard_label_weight=0.0, kd_loss_weight=0.0, hidden_loss_weight=2.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    assert trainer.pair.hidden_map == {1: 2}  # last student layer -> last teacher layer
    batch = collate(token_dataset(4))
    loss = trainer.compute_loss(student, dict(batch))
    projection = trainer.training_modules["hidden_projections"]["1_to_2"]
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        h_s = student(**inputs, output_hidden_states=True).hidden_states[1]
        h_t = teacher(**inputs, output_hidden_states=True).hidden_states[2]
        per_token = ((h_s @ projection.weight.T + projection.bias - h_t) ** 2).mean(-1)
    mask = batch["attention_mask"].float()
    expected = 2.0 * ((per_token * mask).sum(-1) / mask.sum(-1)).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_attention_loss_switches_to_eager_and_matches_kl_of_head_means(tmp_path):
    teacher, student = teacher_and_student()
    args = make_args(tmp_path, hard_label_weight=0.0, kd_loss_weight=0.0, attention_loss_weight=1.0)
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args)
    assert trainer.pair.attention_map == {0: 1}
    batch = collate(token_dataset(4))
    loss = trainer.compute_loss(student, dict(batch))
    inputs = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        a_s = student(**inputs, output_attentions=True).attentions[0].mean(1)
        a_t = teacher(**inputs, output_attentions=True).attentions[1].mean(1)
    terms = torch.where(a_t > 0, a_t * (a_t.log() - a_s.log()), torch.zeros_like(a_t))  # 0 log 0 = 0
    kl_rows = terms.sum(-1)
    mask = batch["attention_mask"].float()
    expected = ((kl_rows * mask).sum(-1) / mask.sum(-1)).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


class ExplodingTeacher(torch.nn.Module):
    """A teacher that must not be called: cached logits are in the batch."""

    def __init__(self, config):
        super().__init__()
        self.config = config
        self.weight = torch.nn.Parameter(torch.zeros(1))

    def forward(self, **kwargs):
        raise AssertionError("the teacher was run although cached teacher_logits were given")


def test_cached_teacher_logits_reach_the_trainer_and_replace_the_teacher(tmp_path):
    student = tiny_bert(seed=2)
    dataset = token_dataset(16)
    cached = torch.randn(16, NUM_LABELS, generator=torch.Generator().manual_seed(3))
    dataset = dataset.add_column("teacher_logits", cached.tolist())
    dataset = dataset.add_column("teacher_logits_text", cached.tolist())
    dataset = dataset.add_column("unused", list(range(16)))
    args = make_args(tmp_path, max_steps=2, hard_label_weight=0.0, kd_loss_weight=1.0, temperature=1.0)
    trainer = DistillationTrainer(
        model=student, teacher_model=ExplodingTeacher(student.config), args=args, train_dataset=dataset
    )
    batch = next(iter(trainer.get_train_dataloader()))
    assert {"teacher_logits", "teacher_logits_text"} <= set(batch)  # remove_unused_columns=False by default
    loss = trainer.compute_loss(student, dict(batch))
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    p_t = torch.softmax(batch["teacher_logits"], -1)
    expected = (p_t * (p_t.log() - torch.log_softmax(s, -1))).sum(-1).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)
    trainer.train()  # the student never receives the cached columns, the teacher never runs
    # remove_unused_columns=True would drop the cached columns silently: refused before training, by name.
    args = make_args(tmp_path, max_steps=2, kd_loss_weight=1.0, remove_unused_columns=True)
    trainer = DistillationTrainer(
        model=student, teacher_model=ExplodingTeacher(student.config), args=args, train_dataset=dataset
    )
    with pytest.raises(ValueError, match=r"teacher_logits.*remove_unused_columns=False"):
        trainer.train()


# ---- Training --------------------------------------------------------------------------------------------


def test_teacher_is_frozen_untouched_and_outside_the_optimizer(tmp_path):
    teacher, student = teacher_and_student()
    teacher.train()  # the trainer must put it in eval mode itself
    before = snapshot(teacher)
    args = make_args(tmp_path, max_steps=3, hidden_loss_weight=1.0, optim="adamw_torch", weight_decay=0.1)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=token_dataset()
    )
    trainer.train()
    assert not teacher.training
    assert all(not p.requires_grad and p.grad is None for p in teacher.parameters())
    for name, value in snapshot(teacher).items():
        assert torch.equal(value, before[name]), name
    optimized = {id(p) for group in trainer.optimizer.param_groups for p in group["params"]}
    assert not optimized & {id(p) for p in teacher.parameters()}
    assert {id(p) for p in trainer.training_modules.parameters()} <= optimized


def one_step(tmp_path, n, batch_size, accumulation):
    teacher, student = teacher_and_student()
    args = make_args(
        tmp_path,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        hidden_loss_weight=1.0,
        learning_rate=0.5,
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=token_dataset(n)
    )
    trainer.train()
    return snapshot(student), snapshot(trainer.training_modules)


@pytest.mark.parametrize(("n", "batch_size"), [(32, 8), (30, 8)])  # 30 = 8 + 8 + 8 + 6: uneven last batch
def test_gradient_accumulation_gives_the_large_batch_update(tmp_path, n, batch_size):
    start = snapshot(tiny_bert(seed=2))
    accumulated = one_step(tmp_path / "ga", n, batch_size, accumulation=4)
    large = one_step(tmp_path / "large", n, n, accumulation=1)
    for got, want in zip(accumulated, large):
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=1e-5, atol=1e-6, msg=name)
    assert any(not torch.equal(start[k], large[0][k]) for k in start)  # a step did happen


def test_component_losses_are_logged_and_add_up_to_the_loss(tmp_path):
    teacher, student = teacher_and_student()
    args = make_args(tmp_path, max_steps=4, logging_strategy="steps", logging_steps=2, hidden_loss_weight=0.5)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=token_dataset()
    )
    trainer.train()
    logs = [log for log in trainer.state.log_history if "loss" in log]
    assert len(logs) == 2
    for log in logs:
        components = [log[f"{name}_loss"] for name in ("task", "kd", "hidden")]
        assert log["loss"] == pytest.approx(sum(components), rel=1e-4)


def test_saved_student_reloads_alone_and_checkpoints_keep_projections_for_resume(tmp_path):
    def run(output_dir, resume=None):
        teacher, student = teacher_and_student()
        args = make_args(output_dir, max_steps=4, save_strategy="steps", save_steps=2, hidden_loss_weight=1.0)
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=token_dataset()
        )
        trainer.train(resume_from_checkpoint=resume)
        return trainer

    full = run(tmp_path / "full")
    checkpoint = tmp_path / "full" / "checkpoint-2"
    saved = torch.load(checkpoint / TRAINING_STATE_NAME)["training_modules"]
    assert set(saved) == {"hidden_projections.1_to_2.weight", "hidden_projections.1_to_2.bias"}
    student_keys = set(load_file(checkpoint / "model.safetensors"))
    assert not any("projection" in key for key in student_keys)

    resumed = run(tmp_path / "resumed", resume=str(checkpoint))
    for name, value in snapshot(full.training_modules).items():
        torch.testing.assert_close(snapshot(resumed.training_modules)[name], value, rtol=1e-5, atol=1e-6)
    for name, value in snapshot(full.model).items():
        torch.testing.assert_close(snapshot(resumed.model)[name], value, rtol=1e-5, atol=1e-6)

    final = tmp_path / "student"
    full.save_model(str(final))
    assert sorted(os.listdir(final)) == ["config.json", "model.safetensors", "training_args.bin"]
    reloaded = AutoModelForSequenceClassification.from_pretrained(final)
    assert set(load_file(final / "model.safetensors")) <= set(full.model.state_dict())
    batch = collate(token_dataset(4))
    del batch["labels"]
    full.model.eval()
    torch.testing.assert_close(reloaded(**batch).logits, full.model(**batch).logits)


def test_lora_student_trains_and_saves_only_adapters(tmp_path):
    from peft import LoraConfig, get_peft_model

    teacher, base = teacher_and_student()
    base_before = snapshot(base)
    student = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    lora_before = {k: v.clone() for k, v in snapshot(student).items() if "lora_B" in k}
    args = make_args(tmp_path, max_steps=3, learning_rate=0.05)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=token_dataset()
    )
    trainer.train()
    after = snapshot(student)
    assert any(not torch.equal(after[k], v) for k, v in lora_before.items())  # adapters trained
    frozen = [k for k in base_before if "classifier" not in k]  # classifier is a modules_to_save copy
    base_after = snapshot(student.get_base_model())
    for key in frozen:
        assert torch.equal(
            base_before[key],
            base_after[key.replace("query.", "query.base_layer.").replace("value.", "value.base_layer.")],
        ), key
    trainer.save_model(str(tmp_path / "adapter"))
    files = set(os.listdir(tmp_path / "adapter"))
    assert "adapter_model.safetensors" in files and "model.safetensors" not in files
    saved = load_file(tmp_path / "adapter" / "adapter_model.safetensors")
    assert all("lora_" in key or "classifier" in key for key in saved)


def test_teacher_given_as_a_path_is_loaded_with_init_kwargs(tmp_path):
    teacher, student = teacher_and_student()
    teacher.save_pretrained(tmp_path / "teacher")
    args = make_args(tmp_path, teacher_model_init_kwargs={"dtype": torch.float32})
    trainer = DistillationTrainer(model=student, teacher_model=str(tmp_path / "teacher"), args=args)
    loaded = trainer.teacher_model
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    torch.testing.assert_close(loaded.classifier.weight, teacher.classifier.weight)


def test_distillation_raises_agreement_with_the_teacher(tmp_path):
    teacher = tiny_bert(hidden=32, layers=2, heads=4, seed=1, initializer_range=1.0)
    student = tiny_bert(seed=2)
    dataset = token_dataset(64)
    args = make_args(
        tmp_path,
        hard_label_weight=0.0,
        kd_loss_weight=1.0,
        num_train_epochs=6,
        learning_rate=0.01,
        optim="adamw_torch",
    )
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=dataset, eval_dataset=dataset
    )
    before = trainer.evaluate()["eval_teacher_agreement"]
    trainer.train()
    after = trainer.evaluate()
    with torch.no_grad():
        teacher_predictions = teacher(**{k: v for k, v in collate(dataset).items() if k != "labels"}).logits
    majority_share = teacher_predictions.argmax(-1).bincount().max().item() / len(dataset)
    assert after["eval_teacher_agreement"] >= before + 0.3
    assert after["eval_teacher_agreement"] > majority_share  # not just the teacher's most frequent class
    assert "eval_loss" in after


def test_peft_student_whose_base_is_the_teacher_distils_from_the_adapter_free_base(tmp_path):
    from peft import LoraConfig, get_peft_model

    base = tiny_bert(seed=1)
    batch = collate(token_dataset(4))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        base_logits = base(**inputs).logits
    student = get_peft_model(
        base, LoraConfig(r=4, target_modules=["query", "value"], init_lora_weights=False, lora_dropout=0.1)
    )
    args = make_args(tmp_path, max_steps=2, hard_label_weight=0.0, kd_loss_weight=1.0)
    trainer = DistillationTrainer(model=student, teacher_model=base, args=args, train_dataset=token_dataset())
    student.train()
    teacher_logits = trainer.teacher.forward(dict(batch)).logits
    torch.testing.assert_close(teacher_logits, base_logits)  # adapters disabled for the teacher
    assert student.training  # the teacher's eval() did not leave the shared modules in eval mode
    trainer.train()
    lora = [p for n, p in student.named_parameters() if "lora_" in n]
    assert lora and all(p.requires_grad for p in lora)


def test_the_student_base_is_resolved_once_not_at_every_step(tmp_path, monkeypatch):
    """accelerate's is_peft_model reads package metadata (milliseconds) on each call; a step asks for the
    student's base many times, so the trainer resolves it once per student object."""
    from peft import LoraConfig, get_peft_model

    import hf_msd.trainers.distillation_trainer as module

    calls = []
    real = module.is_peft_model
    monkeypatch.setattr(module, "is_peft_model", lambda model: calls.append(model) or real(model))
    teacher, base = teacher_and_student()
    student = get_peft_model(base, LoraConfig(task_type="SEQ_CLS", r=4, target_modules=["query", "value"]))
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=make_args(tmp_path))
    batch = collate(token_dataset(6))
    calls.clear()
    for _ in range(3):
        trainer.compute_loss(trainer.model, dict(batch))
    assert len(calls) == 0
    assert trainer._student_base() is student.get_base_model()
    trainer.model = other = tiny_bert(seed=5)  # a new student object is resolved anew
    assert trainer._student_base() is other and len(calls) == 1


# ---- Self-distillation, best model at the end ----------------------------------------------------------


def test_plain_model_as_its_own_teacher_distils_from_a_frozen_copy_of_its_initial_weights(tmp_path):
    """teacher_model is model (no PEFT): the teacher is a frozen copy of the student made at construction;
    training moves the student, not the teacher, and the KD term compares against the initial weights."""
    student = tiny_bert(seed=2)
    initial = snapshot(student)
    trainer = DistillationTrainer(
        model=student,
        teacher_model=student,
        args=make_args(tmp_path, max_steps=2, hard_label_weight=0.5, kd_loss_weight=1.0),
        train_dataset=token_dataset(16),
    )
    assert trainer.teacher_model is not student
    assert not any(p.requires_grad for p in trainer.teacher_model.parameters())
    trainer.train()
    teacher_state = snapshot(trainer.teacher_model)
    assert all(torch.equal(teacher_state[k], v) for k, v in initial.items())
    assert any(not torch.equal(student.state_dict()[k], v) for k, v in initial.items())
    batch = collate(token_dataset(4, seed=5))
    student.eval()
    loss = trainer.compute_loss(student, dict(batch))
    reference = tiny_bert(seed=2).eval()
    with torch.no_grad():
        s = student(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        t = reference(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    temperature = trainer.args.temperature
    log_p, log_q = torch.log_softmax(t / temperature, -1), torch.log_softmax(s / temperature, -1)
    kd = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(-1)
    expected = 0.5 * torch.nn.functional.cross_entropy(s, batch["labels"]) + kd.mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_load_best_model_at_end_restores_the_projections_of_the_best_checkpoint(tmp_path):
    """With hidden-state projections, load_best_model_at_end restores them with the student: they equal those
    saved in the best checkpoint, and evaluate() gives the best checkpoint's eval loss."""
    teacher, student = teacher_and_student()
    args = make_args(
        tmp_path,
        max_steps=3,
        learning_rate=0.5,
        hidden_loss_weight=1.0,
        eval_strategy="steps",
        eval_steps=1,
        save_strategy="steps",
        save_steps=1,
        load_best_model_at_end=True,
        metric_for_best_model="loss",
        greater_is_better=True,  # the first checkpoint (highest loss) is the best: not the last step's
    )
    trainer = DistillationTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=token_dataset(24),
        eval_dataset=token_dataset(8, seed=3),
    )
    trainer.train()
    best = trainer.state.best_model_checkpoint
    assert best.endswith("checkpoint-1")
    saved = torch.load(os.path.join(best, TRAINING_STATE_NAME), weights_only=True)["training_modules"]
    for key, value in trainer.training_modules.state_dict().items():
        torch.testing.assert_close(value, saved[key], rtol=0, atol=0, msg=key)
    assert trainer.evaluate()["eval_loss"] == pytest.approx(trainer.state.best_metric, rel=1e-6)
