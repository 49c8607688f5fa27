"""Faults a user meets in real runs: non-finite teacher outputs, multimodal-to-unimodal intermediate losses,
padding in fused sequences. Each test compares with a computation written out here."""

import pytest
import torch

from hf_msd.trainers import DistillationTrainer, MSDTrainingArguments
from tests.helpers.distillation import make_args, teacher_and_student, token_dataset
from tests.helpers.models import tiny_batch, tiny_model

# ---- Non-finite teacher outputs and arguments: refused before any update, naming the batch -------------


def test_nan_teacher_weight_stops_training_naming_the_batch_before_any_update(tmp_path):
    teacher, student = teacher_and_student()
    with torch.no_grad():
        teacher.classifier.weight[0, 0] = float("nan")
    before = {k: v.clone() for k, v in student.state_dict().items()}
    args = make_args(tmp_path, max_steps=3)
    trainer = DistillationTrainer(
        model=student, teacher_model=teacher, args=args, train_dataset=token_dataset()
    )
    with pytest.raises(FloatingPointError, match=r"teacher logits contain NaN or inf on training batch 1 \("):
        trainer.train()
    for name, value in student.state_dict().items():
        assert torch.equal(value, before[name]), name


def test_nan_in_a_cached_teacher_column_names_the_cached_logits_and_the_step(tmp_path):
    teacher, student = teacher_and_student()
    dataset = token_dataset(16)
    cached = torch.randn(16, 3, generator=torch.Generator().manual_seed(0))
    cached[12, 1] = float("inf")  # in the fourth batch of 4 (rows 12-15) read in order
    dataset = dataset.add_column("teacher_logits", cached.tolist())
    args = make_args(
        tmp_path, max_steps=4, per_device_train_batch_size=4, train_sampling_strategy="sequential"
    )
    trainer = DistillationTrainer(model=student, teacher_model=teacher, args=args, train_dataset=dataset)
    with pytest.raises(FloatingPointError, match=r"cached teacher logits .* batch 4 \(optimizer step 3"):
        trainer.train()


@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("kd_loss_weight", float("nan")),
        ("modality_loss_weight", float("inf")),
        ("meta_learning_rate", float("nan")),
    ],
)
def test_non_finite_weights_are_rejected_naming_the_field(tmp_path, field, value):
    with pytest.raises(ValueError, match=f"{field} must be a finite number"):
        MSDTrainingArguments(output_dir=str(tmp_path), report_to=[], **{field: value})


# ---- Hidden-state and attention losses on the fused model (items 3 and 4) -------------------------------


def masked_mean(values, mask):
    mask = mask.float()
    return (values * mask).sum(-1) / mask.sum(-1)


def fused_trainer(tmp_path, student, **weights):
    args = make_args(tmp_path, hard_label_weight=0.0, kd_loss_weight=0.0, **weights)
    return DistillationTrainer(model=student, teacher_model=tiny_model(seed=0), args=args)


def test_text_student_hidden_mean_pools_only_the_teachers_text_tokens(tmp_path):
    student = tiny_model(("text",), seed=1)
    trainer = fused_trainer(
        tmp_path, student, hidden_loss_weight=1.0, hidden_state_pooling="mean", hidden_layer_map={2: 2}
    )
    batch = tiny_batch(labels="single_label_classification")
    loss = trainer.compute_loss(student, dict(batch))
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    mask = batch["attention_mask"].float()[..., None]
    with torch.no_grad():
        h_s = student(**text, output_hidden_states=True).hidden_states[2]
        h_t = trainer.teacher_model(**text, pixel_values=batch["pixel_values"], output_hidden_states=True)
        h_t = h_t.hidden_states[2][:, : h_s.shape[1]]  # the text tokens come first in the fused sequence
    pooled_s, pooled_t = (h_s * mask).sum(1) / mask.sum(1), (h_t * mask).sum(1) / mask.sum(1)
    expected = ((pooled_s - pooled_t) ** 2).mean(-1).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_text_student_attention_kd_uses_the_teachers_text_block(tmp_path):
    student = tiny_model(("text",), seed=1)
    trainer = fused_trainer(tmp_path, student, attention_loss_weight=1.0, attention_layer_map={1: 1})
    batch = tiny_batch(labels="single_label_classification")
    loss = trainer.compute_loss(student, dict(batch))
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    with torch.no_grad():
        a_s = student(**text, output_attentions=True).attentions[1].mean(1)
        a_t = trainer.teacher_model(**text, pixel_values=batch["pixel_values"], output_attentions=True)
        length = a_s.shape[-1]
        a_t = a_t.attentions[1][..., :length, :length]
        a_t = (a_t / a_t.sum(-1, keepdim=True)).mean(1)
    terms = torch.where(a_t > 0, a_t * (a_t.log() - a_s.log()), torch.zeros_like(a_t))
    expected = masked_mean(terms.sum(-1), batch["attention_mask"]).mean()
    torch.testing.assert_close(loss.detach(), expected, rtol=1e-5, atol=1e-6)


def test_fused_student_hidden_and_attention_losses_leave_padding_out(tmp_path):
    student = tiny_model(seed=1)
    trainer = fused_trainer(
        tmp_path,
        student,
        hidden_loss_weight=1.0,
        attention_loss_weight=1.0,
        hidden_layer_map={1: 1},
        attention_layer_map={0: 0},
    )
    batch = tiny_batch(labels="single_label_classification")
    components, _ = trainer.loss_components(student, dict(batch))
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    with torch.no_grad():
        s = student(**inputs, output_hidden_states=True, output_attentions=True)
        t = trainer.teacher_model(**inputs, output_hidden_states=True, output_attentions=True)
    image_tokens = s.hidden_states[1].shape[1] - batch["attention_mask"].shape[1]
    mask = torch.cat([batch["attention_mask"], torch.ones(4, image_tokens, dtype=torch.long)], dim=1)
    hidden = masked_mean(((s.hidden_states[1] - t.hidden_states[1]) ** 2).mean(-1), mask)
    a_s, a_t = s.attentions[0].mean(1), t.attentions[0].mean(1)
    kl = torch.where(a_t > 0, a_t * (a_t.log() - a_s.log()), torch.zeros_like(a_t)).sum(-1)
    torch.testing.assert_close(components["hidden"], hidden, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(components["attention"], masked_mean(kl, mask), rtol=1e-5, atol=1e-6)
    assert not torch.allclose(hidden, ((s.hidden_states[1] - t.hidden_states[1]) ** 2).mean((-1, -2)))


# ---- Learning rates ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [float("nan"), float("inf"), -1.0])
def test_non_finite_or_negative_learning_rate_is_rejected(tmp_path, value):
    with pytest.raises(ValueError, match="learning_rate must be a finite number >= 0"):
        MSDTrainingArguments(output_dir=str(tmp_path), report_to=[], learning_rate=value)


@pytest.mark.parametrize(("key", "text"), [("learning_rate", ".nan"), ("teacher_learning_rate", ".inf")])
def test_yaml_non_finite_learning_rates_are_rejected_naming_the_field(tmp_path, key, text):
    from hf_msd.experiment import parse_arguments

    config = tmp_path / "config.yaml"
    config.write_text(f"output_dir: {tmp_path}\nreport_to: none\n{key}: {text}\n")
    with pytest.raises(ValueError, match=f"^{key} must be a finite number"):
        parse_arguments([str(config)])
