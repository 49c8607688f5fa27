"""Answer-only logits (the output layer at the scored positions only) against today's full-logits computation.

The reference is the (B, T, V) logits of the model's plain forward with the token-level losses of
hf_msd.distillation.losses (causal shift, label != -100); the answer-only route must give the same per-example
losses and the same gradient for every student parameter, on tiny LLaVA and Idefics3 models.
"""

from __future__ import annotations

import pytest
import torch

from hf_msd.data import VisionLanguageCollator
from hf_msd.data.generative import DISTILLATION_LABELS, VIEW_PREFIX, view_inputs
from hf_msd.distillation import losses
from hf_msd.distillation.answer_logits import (
    answer_logits,
    answer_soft_target_loss,
    answer_targets,
    answer_task_loss,
)
from tests.helpers.vlm import idefics3_processor_and_models, processor, raw_examples, teacher_and_student


def family(name: str):
    """(collator, teacher, student) of a tiny LLaVA or Idefics3 pair."""
    if name == "llava":
        teacher, student = teacher_and_student()
        return VisionLanguageCollator(processor()), teacher, student
    proc, teacher, student = idefics3_processor_and_models()
    return VisionLanguageCollator(proc), teacher, student


def model_inputs(batch: dict) -> dict:
    """The model inputs of ``x``: no labels, no views."""
    return {
        k: v
        for k, v in batch.items()
        if k not in ("labels", DISTILLATION_LABELS) and not k.startswith(VIEW_PREFIX)
    }


@pytest.mark.parametrize("beta", [0.0, 0.5])
@pytest.mark.parametrize("name", ["llava", "idefics3"])
def test_answer_only_loss_and_gradients_equal_the_full_logits(name, beta):
    collator, teacher, student = family(name)
    student.eval()
    batch = collator(raw_examples(4, unlabelled=(1,)))
    inputs, scored, gold = model_inputs(batch), batch[DISTILLATION_LABELS], batch["labels"]
    params = [p for p in student.parameters() if p.requires_grad]

    def loss_and_grads(kd, task):
        total = 0.7 * kd.sum() + 0.3 * task.sum()
        return kd, task, torch.autograd.grad(total, params, allow_unused=True)

    with torch.no_grad():
        teacher_full = teacher(**inputs).logits
        teacher_rows = answer_logits(teacher, inputs, scored)
    student_full = student(**inputs).logits
    full = loss_and_grads(
        losses.token_soft_target_loss(
            student_full, teacher_full, labels=scored, causal=True, temperature=2.0, beta=beta
        ),
        losses.token_task_loss(student_full, gold, causal=True),
    )
    student_rows = answer_logits(student, inputs, scored)
    rows = loss_and_grads(
        answer_soft_target_loss(student_rows, teacher_rows, scored, temperature=2.0, beta=beta),
        answer_task_loss(student_rows, scored, gold),
    )
    n_scored = int((scored[:, 1:] != -100).sum())
    assert student_rows.shape == (n_scored, student.config.text_config.vocab_size)
    assert full[0].shape == (4,) and bool((full[0] > 0).all()) and full[1][1] == 0  # example 1 has no gold
    torch.testing.assert_close(rows[0], full[0], rtol=0, atol=1e-6)
    torch.testing.assert_close(rows[1], full[1], rtol=0, atol=1e-6)
    compared = 0
    for (param_name, _), got, expected in zip(
        [(n, p) for n, p in student.named_parameters() if p.requires_grad], rows[2], full[2]
    ):
        assert (got is None) == (expected is None), param_name
        if expected is not None:
            torch.testing.assert_close(got, expected, rtol=0, atol=1e-6, msg=param_name)
            compared += 1
    assert compared > 10


@pytest.mark.parametrize("name", ["llava", "idefics3"])
def test_the_output_layer_sees_only_the_scored_rows(name):
    collator, _, student = family(name)
    batch = collator(raw_examples(4))
    scored = batch[DISTILLATION_LABELS]
    seen = []
    hook = student.get_output_embeddings().register_forward_hook(
        lambda module, args, output: seen.append(args[0].shape[:-1].numel())
    )
    try:
        with torch.no_grad():
            answer_logits(student, model_inputs(batch), scored)
            student(**model_inputs(batch))
    finally:
        hook.remove()
    n_scored, batch_size = int((scored[:, 1:] != -100).sum()), scored.shape[0]
    assert seen[0] <= n_scored + batch_size
    assert seen[1] == scored.numel()  # the full forward: every position
    assert seen[0] < seen[1] / 3


def test_the_views_answer_rows_line_up_with_the_full_input():
    """Rows of x and x_text are the same answer tokens in the same order (prompts of different lengths): each
    view's rows are its full logits at the positions predicting its answer tokens, and the targets agree."""
    collator, _, student = family("llava")
    batch = collator(raw_examples(4))
    with torch.no_grad():
        for view in (None, "text", "image"):
            view_batch = batch if view is None else view_inputs(batch, view)
            scored = view_batch[DISTILLATION_LABELS]
            rows = answer_logits(student, model_inputs(view_batch), scored)
            gathered, mask = losses.answer_token_logits(student(**model_inputs(view_batch)).logits, scored)
            torch.testing.assert_close(rows, gathered[mask], rtol=0, atol=1e-6)
            assert answer_targets(scored).tolist() == answer_targets(batch[DISTILLATION_LABELS]).tolist()


def test_labels_in_the_inputs_are_refused():
    collator, _, student = family("llava")
    batch = collator(raw_examples(2))
    inputs = {**model_inputs(batch), "labels": batch["labels"]}
    with pytest.raises(ValueError, match="leave 'labels' out of the inputs"):
        answer_logits(student, inputs, batch[DISTILLATION_LABELS])


def test_a_peft_student_gives_its_full_logits_rows():
    """A LoRA-wrapped student passes logits_to_keep through to its base model."""
    from peft import LoraConfig, get_peft_model

    collator, _, student = family("llava")
    model = get_peft_model(
        student, LoraConfig(target_modules=["q_proj", "v_proj"], r=2, init_lora_weights=False)
    )
    batch = collator(raw_examples(3))
    scored = batch[DISTILLATION_LABELS]
    with torch.no_grad():
        rows = answer_logits(model, model_inputs(batch), scored)
        gathered, mask = losses.answer_token_logits(model(**model_inputs(batch)).logits, scored)
    torch.testing.assert_close(rows, gathered[mask], rtol=0, atol=1e-6)
