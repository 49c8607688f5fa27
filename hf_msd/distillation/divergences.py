"""The generalized Jensen-Shannon divergence between a student's and a teacher's distributions.

One family covers forward KL, reverse KL and the divergences in between, selected by ``beta`` exactly as
TRL's ``GKDTrainer.generalized_jsd_loss`` and ``DistillationTrainer`` define it (Agarwal et al., 2024,
"On-Policy Distillation of Language Models", Eq. 1), with ``P`` the teacher and ``Q`` the student:

- ``beta = 0``: forward KL, ``KL(P || Q) = sum P log(P / Q)`` (classic knowledge distillation);
- ``beta = 1``: reverse KL, ``KL(Q || P) = sum Q log(Q / P)`` (mode seeking);
- ``0 < beta < 1``: ``beta * KL(P || M) + (1 - beta) * KL(Q || M)`` with the mixture
  ``M = beta * P + (1 - beta) * Q`` (the teacher's side weighted by ``beta``).

As in TRL the two ends are special cases, not limits: the mixture term tends to 0 as ``beta`` tends to 0
or 1 (divided by ``beta``, it tends to forward KL as ``beta -> 0``).

Everything is computed in float32 log space (the mixture with ``logsumexp``), so no probability is
rounded to 0 before its logarithm. Temperature and the ``T**2`` factor are the caller's
(:func:`hf_msd.distillation.losses.soft_target_loss`): TRL divides the logits by ``T`` as well but
applies no ``T**2``, so hf_msd's per-token value is ``T**2`` times TRL's.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F


def check_beta(beta: float, name: str = "beta") -> None:
    """Raise a ValueError naming ``name`` unless ``beta`` is a number in [0, 1]."""
    if not (isinstance(beta, (int, float)) and 0.0 <= beta <= 1.0):
        raise ValueError(
            f"{name} must be in [0, 1] (0 forward KL, 1 reverse KL, in between the generalized JSD), "
            f"got {beta!r}."
        )


def generalized_jsd(
    student_log_probs: torch.Tensor, teacher_log_probs: torch.Tensor, beta: float = 0.0
) -> torch.Tensor:
    """The generalized JSD between two batches of distributions given as log-probabilities.

    Args:
        student_log_probs: (..., K) log-probabilities of the student ``Q`` over ``K`` outcomes (classes,
            vocabulary tokens, or the two outcomes of a Bernoulli).
        teacher_log_probs: (..., K) log-probabilities of the teacher ``P``.
        beta: in [0, 1]; 0 forward ``KL(P || Q)``, 1 reverse ``KL(Q || P)``, else the mixture divergence of
            the module docstring.

    Returns the divergence of each distribution, summed over the last dimension: shape (...), in the dtype
    of the inputs (pass float32).
    """
    check_beta(beta)
    if beta == 0:
        pointwise = F.kl_div(student_log_probs, teacher_log_probs, reduction="none", log_target=True)
    elif beta == 1:
        pointwise = F.kl_div(teacher_log_probs, student_log_probs, reduction="none", log_target=True)
    else:
        mixture = torch.logaddexp(student_log_probs + math.log1p(-beta), teacher_log_probs + math.log(beta))
        to_teacher = F.kl_div(mixture, teacher_log_probs, reduction="none", log_target=True)
        to_student = F.kl_div(mixture, student_log_probs, reduction="none", log_target=True)
        pointwise = beta * to_teacher + (1 - beta) * to_student
    return pointwise.sum(dim=-1)
