"""What a model's outputs are scored against: the problem type of a classifier and the scored positions of a
token-level model.

Shared by the losses (:mod:`hf_msd.distillation.losses`), the teacher-output cache
(:mod:`hf_msd.teacher_outputs.cache`) and saliency; it imports only :mod:`hf_msd.constants`.
"""

from __future__ import annotations

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
