"""Distillation losses as pure functions on tensors.

Every function here computes in float32 (whatever the input dtype, so fp16/bf16 autocast cannot
underflow the log-probabilities) and returns a PER-EXAMPLE loss of shape ``(batch,)``. Reducing over
the batch is left to the caller, so examples can be weighted individually and a trainer can divide by
the number of examples in the whole accumulated batch (exact gradient-accumulation equivalence).

Loss kinds live in small registries (:data:`SOFT_TARGET_LOSSES`, :data:`HIDDEN_STATE_LOSSES`,
:data:`ATTENTION_MAP_LOSSES`); add your own with :func:`register_loss`.

Why soft-target KL is multiplied by ``T**2``: the gradient of ``KL(softmax(t/T) || softmax(s/T))`` with
respect to the student logits scales as ``1/T**2``; multiplying by ``T**2`` keeps the soft-target
gradient magnitude independent of the temperature, so ``kd_loss_weight`` means the same thing at every
``T`` (Hinton et al., 2015, "Distilling the Knowledge in a Neural Network"). The same factor multiplies the
reverse KL and generalized JSD that ``beta`` selects (:mod:`hf_msd.distillation.divergences`); TRL's GKD and
DistillationTrainer apply none, so hf_msd's value is ``T**2`` times theirs at the same ``beta`` and ``T``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from ..constants import IGNORE_INDEX, MULTI_LABEL, PROBLEM_TYPES, REGRESSION, SINGLE_LABEL
from ..targets import answer_token_logits as answer_token_logits  # re-exported: read as losses.<name>
from ..targets import resolve_problem_type as resolve_problem_type  # re-exported: read as losses.<name>
from ..targets import token_targets
from .divergences import check_beta, generalized_jsd

LossFn = Callable[..., torch.Tensor]

SOFT_TARGET_LOSSES: dict[str, LossFn] = {}
HIDDEN_STATE_LOSSES: dict[str, LossFn] = {}
ATTENTION_MAP_LOSSES: dict[str, LossFn] = {}
_REGISTRIES = {
    "soft_target": SOFT_TARGET_LOSSES,
    "hidden_state": HIDDEN_STATE_LOSSES,
    "attention_map": ATTENTION_MAP_LOSSES,
}


def register_loss(kind: str, name: str) -> Callable[[LossFn], LossFn]:
    """Decorator adding a loss function to the registry ``kind`` ("soft_target", "hidden_state" or
    "attention_map") under ``name``, so it can be selected by name in the training arguments.

    The function must have the signature of the built-ins of that kind and return a ``(batch,)`` tensor.
    """
    if kind not in _REGISTRIES:
        raise ValueError(f"Unknown loss kind {kind!r}; expected one of {sorted(_REGISTRIES)}.")

    def decorator(fn: LossFn) -> LossFn:
        _REGISTRIES[kind][name] = fn
        return fn

    return decorator


def _check_problem_type(problem_type: str) -> None:
    if problem_type not in PROBLEM_TYPES:
        raise ValueError(f"problem_type={problem_type!r} is not one of {PROBLEM_TYPES}.")


def _per_example_mse(prediction: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean squared error over all but the first dimension: ``(B, ...) -> (B,)``."""
    batch = prediction.shape[0]
    prediction, target = prediction.float().reshape(batch, -1), target.float().reshape(batch, -1)
    return (prediction - target).pow(2).mean(dim=-1)


def labelled_mask(labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """Which examples of a batch carry a label: bool (B,).

    An unlabelled example has the label :data:`IGNORE_INDEX` (-100, transformers' convention): the class id
    -100 (single-label, ``labels`` (B,)), or a row whose every entry is -100 (multi-label / regression,
    ``labels`` (B, C); regression (B,) compares each value). :class:`~hf_msd.data.MultimodalDataCollator`
    writes these markers for examples whose label is ``None``.
    """
    _check_problem_type(problem_type)
    if problem_type == SINGLE_LABEL or labels.dim() == 1:
        return labels != IGNORE_INDEX
    return (labels != IGNORE_INDEX).reshape(labels.shape[0], -1).any(dim=-1)


def task_loss(logits: torch.Tensor, labels: torch.Tensor, problem_type: str) -> torch.Tensor:
    """The student's supervised loss on the gold labels, per example.

    - single-label: cross-entropy; ``logits`` (B, C), ``labels`` int64 (B,).
    - multi-label: binary cross-entropy with logits averaged over labels; ``labels`` float (B, C)
      (hard 0/1 tags or soft scores such as VQA answer scores).
    - regression: squared error averaged over outputs; ``logits`` (B, K), ``labels`` (B,) or (B, K).

    Unlabelled examples (:func:`labelled_mask` is False: label -100) give exactly 0 and no gradient.
    Returns a float32 tensor of shape (B,).
    """
    _check_problem_type(problem_type)
    logits = logits.float()
    if problem_type == SINGLE_LABEL:
        return F.cross_entropy(logits, labels.long(), reduction="none", ignore_index=IGNORE_INDEX)
    mask = labelled_mask(labels, problem_type)
    labels = torch.where(mask.reshape(-1, *[1] * (labels.dim() - 1)), labels, torch.zeros_like(labels))
    if problem_type == MULTI_LABEL:
        loss = F.binary_cross_entropy_with_logits(logits, labels.float(), reduction="none").mean(dim=-1)
    else:
        loss = _per_example_mse(logits, labels)
    return loss * mask


def _bernoulli_log_probs(logits: torch.Tensor) -> torch.Tensor:
    """(..., C) logits of C independent labels -> (..., C, 2) log-probabilities of each label's outcomes."""
    return torch.stack([F.logsigmoid(logits), F.logsigmoid(-logits)], dim=-1)


@register_loss("soft_target", "kl")
def _soft_target_kl(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    problem_type: str,
    temperature: float,
    beta: float = 0.0,
) -> torch.Tensor:
    scale = temperature**2
    student, teacher = student_logits.float() / temperature, teacher_logits.float() / temperature
    if problem_type == SINGLE_LABEL:
        log_p_student = F.log_softmax(student, dim=-1)
        log_p_teacher = F.log_softmax(teacher, dim=-1)
        return scale * generalized_jsd(log_p_student, log_p_teacher, beta)
    if beta:  # multi-label: the divergence of each label's Bernoulli, summed over labels
        divergence = generalized_jsd(_bernoulli_log_probs(student), _bernoulli_log_probs(teacher), beta)
        return scale * divergence.sum(dim=-1)
    # Multi-label: one Bernoulli per label, KL(Bern(sigmoid(t/T)) || Bern(sigmoid(s/T))) in log space.
    p_teacher = torch.sigmoid(teacher)
    positive = p_teacher * (F.logsigmoid(teacher) - F.logsigmoid(student))
    negative = (1 - p_teacher) * (F.logsigmoid(-teacher) - F.logsigmoid(-student))
    return scale * (positive + negative).sum(dim=-1)


@register_loss("soft_target", "mse")
def _soft_target_mse(
    student_logits: torch.Tensor, teacher_logits: torch.Tensor, *, problem_type: str, temperature: float
) -> torch.Tensor:
    return _per_example_mse(student_logits, teacher_logits)


def soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    problem_type: str,
    temperature: float = 1.0,
    loss_type: str = "kl",
    beta: float = 0.0,
) -> torch.Tensor:
    """Knowledge-distillation loss between the student's and the teacher's outputs, per example.

    Args:
        student_logits: (B, C) student outputs.
        teacher_logits: (B, C) teacher outputs (no gradient is taken through them).
        problem_type: "single_label_classification" | "multi_label_classification" | "regression".
        temperature: softening temperature ``T`` (> 0), used by "kl".
        loss_type: a name in :data:`SOFT_TARGET_LOSSES`:
            - "kl" single-label: ``T**2 * KL(softmax(t/T) || softmax(s/T))`` summed over classes;
              multi-label: ``T**2 * sum_c KL(Bernoulli(sigmoid(t_c/T)) || Bernoulli(sigmoid(s_c/T)))``.
              With ``beta > 0`` the KL becomes the generalized JSD of
              :func:`~hf_msd.distillation.divergences.generalized_jsd` (1: reverse KL), still times ``T**2``.
            - "mse": mean over classes of ``(s - t)**2`` on the raw logits (temperature unused).
          For regression the loss is always the mean squared error to the teacher's output, whatever
          ``loss_type`` says (a divergence between distributions has no meaning there).
        beta: in [0, 1], the divergence of "kl" (0, the default, is forward KL); other loss types take none.

    Returns a float32 tensor of shape (B,).
    """
    _check_problem_type(problem_type)
    if temperature <= 0:
        raise ValueError(f"temperature must be > 0, got {temperature}.")
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits "
            f"{tuple(teacher_logits.shape)} differ in shape: teacher and student must share one label space."
        )
    check_beta(beta)
    if problem_type == REGRESSION:
        return _per_example_mse(student_logits, teacher_logits)
    if loss_type not in SOFT_TARGET_LOSSES:
        raise ValueError(f"Unknown kd loss_type {loss_type!r}; registered: {sorted(SOFT_TARGET_LOSSES)}.")
    if beta and loss_type != "kl":
        raise ValueError(
            f"beta={beta} selects a divergence of loss_type 'kl'; loss_type {loss_type!r} takes none."
        )
    divergence = {"beta": beta} if beta else {}  # registered losses without a beta keep their signature
    return SOFT_TARGET_LOSSES[loss_type](
        student_logits,
        teacher_logits.detach(),
        problem_type=problem_type,
        temperature=temperature,
        **divergence,
    )


def scored_token_mask(
    labels: torch.Tensor | None, attention_mask: torch.Tensor | None, shape: torch.Size, causal: bool
) -> torch.Tensor:
    """The (B, T') bool mask of the positions a token-level term scores, for logits of ``shape`` (B, T, V);
    T' = T - 1 for a causal LM (its logits at t predict the token at t + 1), else T. Scored are the positions
    with a label (``labels`` (B, T) != -100); without labels the real tokens of ``attention_mask`` (B, T);
    without either, every position."""
    if labels is not None:
        return token_targets(labels, causal) != IGNORE_INDEX
    if attention_mask is not None:
        return token_targets(attention_mask, causal).bool()
    return torch.ones(shape[0], shape[1] - 1 if causal else shape[1], dtype=torch.bool)


def token_soft_target_loss(
    student_logits: torch.Tensor,
    teacher_logits: torch.Tensor,
    *,
    labels: torch.Tensor | None = None,
    attention_mask: torch.Tensor | None = None,
    causal: bool = False,
    temperature: float = 1.0,
    loss_type: str = "kl",
    beta: float = 0.0,
) -> torch.Tensor:
    """Knowledge distillation on token-level logits (causal LM, token classification), per example.

    Each scored position's divergence is :func:`soft_target_loss` (single-label, softmax over the vocabulary
    ``V``) between ``student_logits`` and ``teacher_logits`` (B, T, V); the result is, for each example, the
    SUM over its scored positions (:func:`scored_token_mask`: label != -100, after the causal shift when
    ``causal``). Divide the batch's sum by the number of scored positions for the mean over labelled tokens:
    with ``beta`` that mean is ``T**2`` times TRL's ``generalized_jsd_loss`` (reduction "batchmean").
    Returns float32 (B,).
    """
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(
            f"Student logits {tuple(student_logits.shape)} and teacher logits {tuple(teacher_logits.shape)} "
            "differ in shape: teacher and student must share one vocabulary and tokenisation."
        )
    mask = scored_token_mask(labels, attention_mask, student_logits.shape, causal).to(student_logits.device)
    if causal:
        student_logits, teacher_logits = student_logits[:, :-1], teacher_logits[:, :-1]
    batch, length, vocab = student_logits.shape
    per_token = soft_target_loss(
        student_logits.reshape(-1, vocab),
        teacher_logits.reshape(-1, vocab),
        problem_type=SINGLE_LABEL,
        temperature=temperature,
        loss_type=loss_type,
        beta=beta,
    ).reshape(batch, length)
    return (per_token * mask).sum(dim=-1)


def token_task_loss(logits: torch.Tensor, labels: torch.Tensor, causal: bool = False) -> torch.Tensor:
    """Cross-entropy of token-level ``logits`` (B, T, V) against ``labels`` (B, T), summed per example over
    the labelled positions (-100 ignored; shifted by one for a causal LM). Returns float32 (B,)."""
    if causal:
        logits = logits[:, :-1]
    targets = token_targets(labels, causal)
    per_token = F.cross_entropy(
        logits.float().reshape(-1, logits.shape[-1]),
        targets.reshape(-1).long(),
        reduction="none",
        ignore_index=IGNORE_INDEX,
    )
    return per_token.reshape(targets.shape).sum(dim=-1)


def _masked_mean(values: torch.Tensor, mask: torch.Tensor | None) -> torch.Tensor:
    """Mean of ``values`` (B, L) over positions where ``mask`` (B, L) is nonzero -> (B,)."""
    if mask is None:
        return values.mean(dim=-1)
    mask = mask.to(values.dtype)
    return (values * mask).sum(dim=-1) / mask.sum(dim=-1).clamp_min(1.0)


@register_loss("hidden_state", "mse")
def _hidden_mse(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    return (student_hidden - teacher_hidden).pow(2).mean(dim=-1)


@register_loss("hidden_state", "cosine")
def _hidden_cosine(student_hidden: torch.Tensor, teacher_hidden: torch.Tensor) -> torch.Tensor:
    return 1.0 - F.cosine_similarity(student_hidden, teacher_hidden, dim=-1)


def hidden_state_loss(
    student_hidden: torch.Tensor,
    teacher_hidden: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    loss_type: str = "mse",
) -> torch.Tensor:
    """Distance between (already projected) student and teacher hidden states, per example.

    Args:
        student_hidden: (B, L, H) or pooled (B, H) student states, projected to the teacher's width.
        teacher_hidden: same shape as ``student_hidden``.
        attention_mask: optional (B, L), 1 for real tokens; padded positions are left out of the mean.
        loss_type: a name in :data:`HIDDEN_STATE_LOSSES`: "mse" (mean over features of the squared
            difference) or "cosine" (``1 - cosine similarity`` over features); then averaged over tokens.

    Returns a float32 tensor of shape (B,).
    """
    if student_hidden.shape != teacher_hidden.shape:
        raise ValueError(
            f"Hidden states differ in shape: student {tuple(student_hidden.shape)} vs teacher "
            f"{tuple(teacher_hidden.shape)}. Project the student to the teacher's width and pool or "
            "align sequence lengths first."
        )
    if loss_type not in HIDDEN_STATE_LOSSES:
        raise ValueError(
            f"Unknown hidden loss_type {loss_type!r}; registered: {sorted(HIDDEN_STATE_LOSSES)}."
        )
    if student_hidden.dim() == 2:  # pooled states: one "token" per example
        student_hidden, teacher_hidden = student_hidden[:, None], teacher_hidden[:, None]
        attention_mask = None
    per_token = HIDDEN_STATE_LOSSES[loss_type](student_hidden.float(), teacher_hidden.detach().float())
    return _masked_mean(per_token, attention_mask)


@register_loss("attention_map", "kl")
def _attention_kl(student_attn: torch.Tensor, teacher_attn: torch.Tensor) -> torch.Tensor:
    # KL(teacher row || student row) over keys; xlogy gives 0 for teacher zeros (masked keys), and the
    # student's probabilities are floored at the smallest float32 so a zero never yields -inf.
    log_student = student_attn.clamp_min(torch.finfo(torch.float32).tiny).log()
    return (torch.xlogy(teacher_attn, teacher_attn) - teacher_attn * log_student).sum(dim=-1)


@register_loss("attention_map", "mse")
def _attention_mse(student_attn: torch.Tensor, teacher_attn: torch.Tensor) -> torch.Tensor:
    return (student_attn - teacher_attn).pow(2).mean(dim=-1)


def attention_map_loss(
    student_attn: torch.Tensor,
    teacher_attn: torch.Tensor,
    *,
    loss_type: str = "kl",
    head_reduction: str = "mean",
    attention_mask: torch.Tensor | None = None,
) -> torch.Tensor:
    """Distance between student and teacher attention distributions, per example.

    Args:
        student_attn: (B, h_s, L, L) attention probabilities (each query row sums to 1).
        teacher_attn: (B, h_t, L, L).
        loss_type: a name in :data:`ATTENTION_MAP_LOSSES`: "kl" (``KL(teacher row || student row)``
            summed over keys) or "mse" (mean over keys of the squared difference).
        head_reduction: "mean" averages the heads of each model first (any ``h_s``, ``h_t``);
            "match" compares head i with head i (requires ``h_s == h_t``).
        attention_mask: optional (B, L), 1 for real tokens; padded query rows are left out of the mean.

    The per-row values are averaged over heads and (unmasked) query positions. Returns float32 (B,).
    """
    if loss_type not in ATTENTION_MAP_LOSSES:
        raise ValueError(
            f"Unknown attention loss_type {loss_type!r}; registered: {sorted(ATTENTION_MAP_LOSSES)}."
        )
    if head_reduction not in ("mean", "match"):
        raise ValueError(f"head_reduction must be 'mean' or 'match', got {head_reduction!r}.")
    if student_attn.shape[-2:] != teacher_attn.shape[-2:] or student_attn.shape[0] != teacher_attn.shape[0]:
        raise ValueError(
            f"Attention maps differ in batch or sequence length: student {tuple(student_attn.shape)} vs "
            f"teacher {tuple(teacher_attn.shape)}; feed both models the same tokenisation."
        )
    student_attn, teacher_attn = student_attn.float(), teacher_attn.detach().float()
    if head_reduction == "mean":
        student_attn = student_attn.mean(dim=1, keepdim=True)
        teacher_attn = teacher_attn.mean(dim=1, keepdim=True)
    elif student_attn.shape[1] != teacher_attn.shape[1]:
        raise ValueError(
            f"attention head_reduction='match' needs equal head counts, got student {student_attn.shape[1]} "
            f"and teacher {teacher_attn.shape[1]}; use head_reduction='mean'."
        )
    per_row = ATTENTION_MAP_LOSSES[loss_type](student_attn, teacher_attn).mean(dim=1)  # (B, L)
    return _masked_mean(per_row, attention_mask)
