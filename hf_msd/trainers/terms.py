"""The weighted per-example terms of :class:`~hf_msd.trainers.DistillationTrainer` from the two models'
outputs: ``task``, ``kd``, ``hidden`` and ``attention`` (the pure losses of :mod:`hf_msd.distillation`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from ..distillation import intermediate_losses, losses, objective
from ..distillation.answer_logits import answer_task_loss
from .columns import BatchColumns
from .distillation_config import DistillationTrainingArguments
from .pair import DistillationPair


@dataclass
class StudentOutput:
    """The student's forward on a batch: its raw ``outputs`` (what `Trainer.prediction_step` reads), its
    ``logits`` and, when the model's own loss is the task term, that loss as `Trainer.compute_loss` returns
    it. ``answer_labels`` (B, T) when ``logits`` are the answer-only rows (N, V) of those labels
    (:func:`~hf_msd.targets.answer_logits`: a causal student on a batch with ``distillation_labels``)."""

    outputs: Any
    logits: torch.Tensor
    task_loss: torch.Tensor | None = None
    answer_labels: torch.Tensor | None = None


def weighted_terms(
    student: StudentOutput,
    full: Any | None,
    batch: dict[str, Any],
    pair: DistillationPair,
    args: DistillationTrainingArguments,
    projections: nn.Module | None = None,
    student_name: str = "The student",
) -> dict[str, torch.Tensor]:
    """The library's weighted per-example terms, ``{"task": (B,), "kd": (B,), ...}``.

    ``student``: the student's forward; ``full``: the teacher's outputs on the whole input (``None`` when
    no teacher term is on); ``projections``: the hidden-state projections (``hidden_loss_weight > 0``);
    ``student_name`` names the student in errors.
    Each value is a float32 ``(B,)`` tensor already multiplied by its weight; terms whose weight is 0 are
    left out, and so is "task" when the batch has no labels or the model's own loss is the task term
    (``student.task_loss``). For a token-level model, "task" and "kd" hold each example's SUM over its
    labelled tokens (:func:`~hf_msd.distillation.objective.reduce_terms` divides them).
    """
    labels = batch.get("labels")
    components: dict[str, torch.Tensor] = {}
    if args.hard_label_weight > 0 and student.task_loss is None and torch.is_tensor(labels):
        if student.answer_labels is not None:
            task = answer_task_loss(student.logits, student.answer_labels, labels)
        elif pair.token_level:
            task = losses.token_task_loss(student.logits, labels, causal=pair.token_level == "causal")
        else:
            task = losses.task_loss(student.logits, labels, pair.problem_type_of(labels))
        components["task"] = args.hard_label_weight * task
    if full is None:
        return components
    if student.logits.shape != full.logits.shape:
        raise ValueError(
            f"Student logits {tuple(student.logits.shape)} and teacher logits "
            f"{tuple(full.logits.shape)} differ in shape: both models must predict the same labels."
        )
    if args.kd_loss_weight > 0:
        if student.logits.dim() == 3 and not pair.token_level:
            raise ValueError(
                f"{student_name} returns token-level logits "
                f"{tuple(student.logits.shape)} but is neither a causal LM nor a token classifier of "
                "transformers' auto classes, so which tokens are targets is unknown: register it with "
                "AutoModelForCausalLM / AutoModelForTokenClassification, or distil a sequence-level head."
            )
        components["kd"] = args.kd_loss_weight * objective.soft_target(
            student.logits,
            full.logits,
            distilled_labels=BatchColumns.distillation_labels(batch),
            attention_mask=batch.get("attention_mask"),
            token_level=pair.token_level,
            problem_type=pair.problem_type_of(labels),
            temperature=args.temperature,
            loss_type=args.kd_loss_type,
            beta=args.beta,
            answer_rows=student.answer_labels is not None,
        )
    mask = batch.get("attention_mask")
    if args.hidden_loss_weight > 0:
        components["hidden"] = args.hidden_loss_weight * intermediate_losses.hidden_states_loss(
            student.outputs,
            full,
            pair.hidden_map,
            projections,
            mask,
            pair.student_span,
            pooling=args.hidden_state_pooling,
            loss_type=args.hidden_loss_type,
        )
    if args.attention_loss_weight > 0:
        components["attention"] = args.attention_loss_weight * intermediate_losses.attention_maps_loss(
            student.outputs,
            full,
            pair.attention_map,
            mask,
            pair.student_span,
            loss_type=args.attention_loss_type,
            head_reduction=args.attention_head_reduction,
        )
    return components
