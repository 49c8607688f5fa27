"""The objective of one micro-batch as tensor code: its counts, the divisor of each term, their sum.

A trainer computes each loss term per example (``(B,)``, already weighted; a token-level model's term is each
example's SUM over its scored tokens) and reduces them here. Every term is summed over the batch and divided
by one count of the whole accumulated batch (:func:`divisor_index`, the one rule shared by the loss and the
logs):

- ``task``: the labelled examples (sequence-level), the labelled tokens (token-level);
- ``kd`` and the modality terms ``modality_<name>`` of a token-level model: the distilled tokens (the
  answer tokens of the batch's ``distillation_labels`` when it has them, else its labelled tokens);
- every other term: the examples.

Counts of a batch are ``[examples, labelled examples, labelled tokens, distilled tokens]``
(:func:`count_batch`); summed over the micro-batches (and processes) of an optimizer step they make the
divisors of the large batch, so gradient accumulation gives the large batch's update.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from . import losses
from .answer_logits import answer_soft_target_loss

#: The entries of a batch's counts (:func:`count_batch`), in order.
COUNT_NAMES = ("examples", "labelled", "tokens", "distilled")
EXAMPLES, LABELLED, TOKENS, DISTILLED = range(len(COUNT_NAMES))


def batch_size(batch: Mapping[str, Any]) -> int:
    """The number of examples of ``batch``: the first dimension of its labels, else of its first tensor."""
    if torch.is_tensor(batch.get("labels")):
        return batch["labels"].shape[0]
    return next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0)


def token_shape(batch: Mapping[str, Any]) -> torch.Size:
    """(B, T) of a token-level batch, from its ``input_ids`` (or ``inputs_embeds``)."""
    tokens = batch.get("input_ids")
    return tokens.shape if tokens is not None else batch["inputs_embeds"].shape[:2]


def scored_tokens(batch: Mapping[str, Any], labels: torch.Tensor | None, causal: bool) -> int:
    """The positions of a token-level ``batch`` scored against ``labels`` (B, T) (!= -100 after the causal
    shift; without labels, the real tokens of its ``attention_mask``)."""
    mask = losses.scored_token_mask(labels, batch.get("attention_mask"), token_shape(batch), causal=causal)
    return int(mask.sum())


def count_batch(
    batch: Mapping[str, Any],
    distilled_labels: torch.Tensor | None,
    token_level: str | None,
    problem_type: str | None,
    library_task: bool,
) -> torch.Tensor:
    """``[examples, labelled examples, labelled tokens, distilled tokens]`` of one micro-batch, float32 (4,).

    ``token_level``: ``"causal"``, ``"tokens"`` or ``None`` (sequence-level). Labelled examples are counted
    only for a sequence-level model whose task term the library computes (``library_task``; by
    ``problem_type``'s :func:`~hf_msd.distillation.losses.labelled_mask`), the tokens only for a token-level
    model (0 otherwise): those of the batch's ``labels`` and of ``distilled_labels`` (B, T), the tokens its
    distillation terms score (default the labels).
    """
    labels = batch.get("labels")
    labels = labels if torch.is_tensor(labels) else None
    labelled = tokens = distilled = 0
    if token_level:
        causal = token_level == "causal"
        tokens = scored_tokens(batch, labels, causal)
        distilled = scored_tokens(batch, labels if distilled_labels is None else distilled_labels, causal)
    elif labels is not None and library_task:
        labelled = int(losses.labelled_mask(labels, problem_type).sum())
    return torch.tensor([batch_size(batch), labelled, tokens, distilled], dtype=torch.float32)


def divisor_index(name: str, token_level: str | None) -> int:
    """Which count (:data:`COUNT_NAMES`) divides the term ``name``: the rule of the module docstring."""
    if token_level and (name == "kd" or name.startswith("modality_")):
        return DISTILLED
    if name == "task":
        return TOKENS if token_level else LABELLED
    return EXAMPLES


def reduce_terms(
    terms: Mapping[str, torch.Tensor], counts: torch.Tensor, token_level: str | None
) -> torch.Tensor:
    """The scalar loss: ``sum over terms of sum(term) / max(its count, 1)``; ``terms`` name -> (B,),
    ``counts`` (4,) of the batch (or of the whole accumulated batch)."""
    return torch.stack(
        [value.sum() / counts[divisor_index(name, token_level)].clamp_min(1) for name, value in terms.items()]
    ).sum()


def term_means(
    sums: Mapping[str, torch.Tensor], counts: torch.Tensor, token_level: str | None
) -> dict[str, float]:
    """Each term's mean over a logging window: its summed values over the window divided by the window's
    count of the same rule as the loss (:func:`divisor_index`)."""
    return {
        name: (value / counts[divisor_index(name, token_level)].clamp_min(1)).item()
        for name, value in sums.items()
    }


def soft_target(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    distilled_labels: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    token_level: str | None,
    problem_type: str,
    temperature: float,
    loss_type: str,
    beta: float = 0.0,
    answer_rows: bool = False,
) -> torch.Tensor:
    """The soft-target (KD) term per example, (B,): :func:`~hf_msd.distillation.losses.soft_target_loss` on
    (B, C) logits; for a token-level model (B, T, V) the sum over each example's tokens scored by
    ``distilled_labels`` (B, T) (:func:`~hf_msd.distillation.losses.token_soft_target_loss`); ``beta`` selects
    the divergence (:func:`~hf_msd.distillation.divergences.generalized_jsd`). With ``answer_rows``, the
    logits are the two models' answer-only rows (N, V) of ``distilled_labels``
    (:func:`~hf_msd.targets.answer_logits`), summed per example
    (:func:`~hf_msd.distillation.answer_logits.answer_soft_target_loss`)."""
    if answer_rows:
        return answer_soft_target_loss(
            student_logits,
            teacher_logits,
            distilled_labels,
            temperature=temperature,
            loss_type=loss_type,
            beta=beta,
        )
    if token_level:
        return losses.token_soft_target_loss(
            student_logits,
            teacher_logits,
            labels=distilled_labels,
            attention_mask=attention_mask,
            causal=token_level == "causal",
            temperature=temperature,
            loss_type=loss_type,
            beta=beta,
        )
    return losses.soft_target_loss(
        student_logits,
        teacher_logits,
        problem_type=problem_type,
        temperature=temperature,
        loss_type=loss_type,
        beta=beta,
    )


def teacher_agreement(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, problem_type: str | None
) -> torch.Tensor | None:
    """Per example, (B,): 1 where the student's argmax equals the teacher's (single-label), the fraction of
    labels on which their ``logit > 0`` decisions agree (multi-label); ``None`` for other problem types."""
    if problem_type == losses.SINGLE_LABEL:
        return (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float()
    if problem_type == losses.MULTI_LABEL:
        return ((student_logits > 0) == (teacher_logits > 0)).float().mean(dim=-1)
    return None
