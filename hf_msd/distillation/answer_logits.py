"""The output layer only where a generative loss reads: logits at the answer tokens, not at every position.

A causal vision-language model's forward applies its output layer (``lm_head``, hidden width ``H`` -> the
vocabulary ``V``) at all ``T`` positions: (B, T, V) logits, the largest activation of a step at real shapes
(SmolVLM: V = 49,280; Qwen2-VL: 151,936), while the distillation terms read the few answer tokens. Here the
output layer runs at the ``N`` positions that predict a scored token only, giving (N, V) logits.

The route is transformers' public ``logits_to_keep`` argument: given a boolean (B, T) mask, the model's
forward keeps the hidden states ``hidden[mask]`` (row-major: example by example, position by position)
before its ``lm_head`` and returns (N, V) logits (``transformers.modeling_utils.slice_logits_to_keep``, used
by LLaVA, Idefics3, SmolVLM, Qwen2-VL and most causal LMs of transformers 5). Any logit post-processing of
the model (scaling, soft-capping) is applied as in its full forward.

Row ``i`` of the answer-only logits is the ``i``-th scored token of the batch in that row-major order: the
order of :func:`hf_msd.distillation.losses.token_soft_target_loss`'s scored positions, and of
:func:`~hf_msd.distillation.losses.answer_token_logits` flattened over its mask. The same answers in two
inputs with different prompts (the MSD views ``x``, ``x_text``, ``x_image``) therefore give row-aligned
logits without any re-alignment.

The model's own task loss needs (B, T, V) logits (its loss function shifts and flattens them), so a batch
passed here carries no ``labels``: :func:`answer_task_loss` computes the same cross-entropy from the answer
rows (the gold answers are a subset of the scored tokens).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..targets import answer_logits as answer_logits  # re-exported: the model side lives in the leaf layer
from ..targets import answer_outputs as answer_outputs
from ..targets import answer_positions as answer_positions
from ..targets import answer_targets as answer_targets
from .losses import IGNORE_INDEX, SINGLE_LABEL, soft_target_loss


def _per_example_sum(values: torch.Tensor, positions: torch.Tensor) -> torch.Tensor:
    """Sum the per-row ``values`` (N,) of the answer-only logits into their examples: (B,)."""
    examples = positions.nonzero()[:, 0].to(values.device)
    return values.new_zeros(positions.shape[0]).index_add(0, examples, values)


def answer_soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    labels: torch.Tensor,
    *,
    temperature: float = 1.0,
    loss_type: str = "kl",
    beta: float = 0.0,
) -> torch.Tensor:
    """Token-level knowledge distillation on answer-only logits, per example.

    ``student_logits`` and ``teacher_logits`` (N, V) are :func:`answer_logits` of ``labels`` (B, T); each
    row's divergence is :func:`~hf_msd.distillation.losses.soft_target_loss` (softmax over ``V``, ``T**2``,
    ``beta``) and each example gets the SUM over its rows: float32 (B,), equal to
    :func:`~hf_msd.distillation.losses.token_soft_target_loss` on the full logits with ``causal=True``.
    """
    per_token = soft_target_loss(
        student_logits,
        teacher_logits,
        problem_type=SINGLE_LABEL,
        temperature=temperature,
        loss_type=loss_type,
        beta=beta,
    )
    return _per_example_sum(per_token, answer_positions(labels))


def answer_task_loss(logits: torch.Tensor, labels: torch.Tensor, task_labels: torch.Tensor) -> torch.Tensor:
    """Cross-entropy of answer-only ``logits`` (N, V) (:func:`answer_logits` of ``labels`` (B, T)) against
    the gold tokens ``task_labels`` (B, T), summed per example: float32 (B,), equal to
    :func:`~hf_msd.distillation.losses.token_task_loss` on the full logits with ``causal=True`` (the model's
    own causal-LM loss before its division by the number of tokens). ``task_labels`` may score only a subset
    of the tokens of ``labels`` (examples without a gold answer are -100)."""
    gold = task_labels[:, 1:] != IGNORE_INDEX
    scored = labels[:, 1:] != IGNORE_INDEX
    if bool((gold & ~scored).any()):
        raise ValueError(
            "task_labels score tokens that labels do not: the answer-only logits exist only at the tokens of "
            "labels; pass the batch's distillation_labels (every answer token) as labels."
        )
    targets = task_labels[:, 1:][scored]
    per_token = F.cross_entropy(logits.float(), targets.long(), reduction="none", ignore_index=IGNORE_INDEX)
    return _per_example_sum(per_token, answer_positions(labels))
