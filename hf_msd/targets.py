"""What a model's outputs are scored against: the problem type of a classifier and the scored positions of a
token-level model.

Shared by the losses (:mod:`hf_msd.distillation.losses`), the teacher-output cache
(:mod:`hf_msd.teacher_outputs.cache`) and saliency; it imports only :mod:`hf_msd.constants`.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping
from typing import Any

import torch

from .constants import IGNORE_INDEX, MULTI_LABEL, PROBLEM_TYPES, REGRESSION, SINGLE_LABEL


def resolve_problem_type(config, labels: torch.Tensor | None = None) -> str:
    """The problem type of a classification model, as transformers' sequence-classification heads infer it.

    Uses ``config.problem_type`` when set; otherwise ``num_labels == 1`` means regression, integer labels
    mean single-label classification and anything else multi-label classification. Without labels and
    without ``problem_type``, ``num_labels > 1`` is taken as single-label classification.
    """
    problem_type = getattr(config, "problem_type", None)
    if problem_type is not None:
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"config.problem_type={problem_type!r} is not one of {PROBLEM_TYPES}.")
        return problem_type
    if getattr(config, "num_labels", 2) == 1:
        return REGRESSION
    if labels is None or labels.dtype in (torch.long, torch.int):
        return SINGLE_LABEL
    return MULTI_LABEL


def token_targets(labels: torch.Tensor, causal: bool) -> torch.Tensor:
    """The target of each scored position of a token-level model: ``labels`` (B, T), or for a causal LM
    ``labels[:, 1:]`` (the logits at position t predict the token at t + 1), as transformers' causal-LM
    loss."""
    return labels[:, 1:] if causal else labels


def answer_token_logits(
    logits: torch.Tensor, labels: torch.Tensor, causal: bool = True
) -> tuple[torch.Tensor, torch.Tensor]:
    """The logits that predict each scored token (label != -100, after the causal shift), in order and
    left-aligned, so the same answer in two inputs of different prompt lengths lines up token by token.

    ``logits`` (B, T, V) and ``labels`` (B, T) -> ``(answer_logits (B, A, V), mask (B, A))`` with ``A`` the
    largest number of scored tokens of an example; ``mask`` marks the real entries.
    """
    if causal:
        logits = logits[:, :-1]
    scored = token_targets(labels, causal) != IGNORE_INDEX
    counts = scored.sum(dim=-1)
    length = int(counts.max()) if counts.numel() else 0
    order = torch.argsort((~scored).to(torch.int8), dim=-1, stable=True)[:, :length]
    gathered = logits.gather(1, order[..., None].expand(-1, -1, logits.shape[-1]).to(logits.device))
    mask = torch.arange(length, device=counts.device)[None] < counts[:, None]
    return gathered, mask


def answer_positions(labels: torch.Tensor) -> torch.Tensor:
    """The positions whose logits predict a scored token: (B, T) bool, True at ``t - 1`` when ``labels[:, t]``
    (B, T) is not -100 (the causal shift); the last position predicts nothing."""
    positions = torch.zeros_like(labels, dtype=torch.bool)
    positions[:, :-1] = labels[:, 1:] != IGNORE_INDEX
    return positions


def answer_rows(logits: torch.Tensor, labels: torch.Tensor | None) -> torch.Tensor:
    """The rows of full logits (B, T, V) at the positions predicting the scored tokens of ``labels`` (B, T)
    (:func:`answer_positions`): (N, V), in the row order of :func:`answer_outputs`. ``logits`` unchanged when
    ``labels`` is None (no answer tokens)."""
    return logits if labels is None else logits[answer_positions(labels).to(logits.device)]


def answer_targets(labels: torch.Tensor) -> torch.Tensor:
    """The scored tokens of ``labels`` (B, T) in the row order of the answer-only logits: (N,)."""
    targets = labels[:, 1:]
    return targets[targets != IGNORE_INDEX]


def _bare_model(model: torch.nn.Module) -> torch.nn.Module:
    """The transformers model inside a DeepSpeed engine or DDP wrapper (``.module``) and a PEFT model."""
    model = getattr(model, "module", model)
    return model.get_base_model() if hasattr(model, "get_base_model") else model


def accepts_logits_to_keep(model: torch.nn.Module) -> bool:
    """Whether ``model``'s forward (inside its wrappers) takes transformers' ``logits_to_keep``."""
    return "logits_to_keep" in inspect.signature(_bare_model(model).forward).parameters


def answer_outputs(model: torch.nn.Module, inputs: Mapping[str, Any], labels: torch.Tensor) -> Any:
    """``model``'s outputs on ``inputs`` with its output layer applied only at the positions predicting the
    scored tokens of ``labels`` (see :mod:`hf_msd.distillation.answer_logits`): ``outputs.logits`` (N, V), N
    the number of scored tokens (:func:`answer_positions`), example by example and position by position, in
    the model's dtype; gradients flow as through the full forward. Other outputs (hidden states, attentions
    when asked for) are the full forward's.

    Args:
        model: a causal (vision-)language model: a transformers model, or one inside a PEFT model, a
            DeepSpeed engine or a DDP wrapper (called through the wrapper). A model whose forward takes no
            ``logits_to_keep`` runs in full and its rows at those positions are selected (same values, no
            memory saved).
        inputs: its inputs (``input_ids``, ``attention_mask``, image tensors, ...) without ``labels``.
        labels: (B, T) the tokens to score (-100 elsewhere), on the positions of ``inputs["input_ids"]``:
            the batch's ``distillation_labels``.
    """
    if "labels" in inputs:
        raise ValueError(
            "answer_logits computes no model loss (it would need the full (B, T, V) logits): leave 'labels' "
            "out of the inputs and compute the task term with answer_task_loss."
        )
    positions = answer_positions(labels)
    if not accepts_logits_to_keep(model):
        outputs = model(**inputs)
        outputs.logits = answer_rows(outputs.logits, labels)
        return outputs
    outputs = model(**inputs, logits_to_keep=positions)
    bare = _bare_model(model)
    expected = (int(positions.sum()), bare.config.get_text_config().vocab_size)
    if tuple(outputs.logits.shape) != expected:
        raise ValueError(
            f"{type(bare).__name__} returned logits {tuple(outputs.logits.shape)} for a boolean "
            f"`logits_to_keep` mask of {expected[0]} positions (expected {expected}): its forward does not "
            "slice with transformers' slice_logits_to_keep; compute full logits for this model."
        )
    return outputs


def answer_logits(model: torch.nn.Module, inputs: Mapping[str, Any], labels: torch.Tensor) -> torch.Tensor:
    """The logits (N, V) of ``model`` at the positions predicting the scored tokens of ``labels`` only:
    :func:`answer_outputs`' ``logits``."""
    return answer_outputs(model, inputs, labels).logits
