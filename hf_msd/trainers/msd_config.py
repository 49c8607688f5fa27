"""Training arguments of :class:`~hf_msd.trainers.MSDTrainer` (modality-specific distillation)."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import ClassVar

from ..distillation.weighting import WEIGHTINGS
from .distillation_config import DistillationTrainingArguments

#: Targets of the modality terms: the teacher on ``x_m`` (MSD) or on the full ``x`` (a control).
MODALITY_TARGETS = ("modality", "full")


@dataclass
class MSDTrainingArguments(DistillationTrainingArguments):
    """:class:`DistillationTrainingArguments` plus the modality-specific terms of :class:`MSDTrainer`.

    The loss per example adds ``sum_m w_m * KD(T(x_m), S(x_m))`` to the distillation loss, where ``x_m``
    keeps only modality ``m`` and ``w_m`` comes from ``modality_weighting`` (see
    :mod:`hf_msd.distillation.weighting`).

    Two options exist for ablations (controls that say where MSD's gain comes from):
    ``modality_target="full"`` replaces the target of every modality term by the teacher's prediction on the
    *full* input, ``KD(T(x), S(x_m))`` (the student still sees each ``x_m`` with the same weights, but
    learns nothing of the teacher's per-modality predictions), and ``modality_terms`` keeps the terms of
    the named modalities only (their weights unchanged; the others are dropped).
    """

    loss_weight_names: ClassVar[tuple[str, ...]] = (
        *DistillationTrainingArguments.loss_weight_names,
        "modality_loss_weight",
    )

    modality_weighting: str = field(
        default="uniform",
        metadata={
            "help": "How the modality terms are weighted: 'uniform' (w_m = modality_loss_weight), "
            "'population' (teacher saliency over the training set), 'instance' (per-example teacher "
            "saliency) or 'learned' (meta-learned by a one-step look-ahead on held-out data)."
        },
    )
    modality_loss_weight: float = field(
        default=0.5,
        metadata={
            "help": "lambda (>= 0): the scale of the modality weights; every weighting averages to lambda "
            "per modality (weights sum to lambda * number of modalities)."
        },
    )
    modality_target: str = field(
        default="modality",
        metadata={
            "help": "Target of the modality terms: 'modality' (MSD: the teacher's prediction on x_m, T(x_m)) "
            "or 'full' (a control: the teacher's prediction on the full input, T(x), as S(x_m)'s target)."
        },
    )
    modality_terms: list[str] | None = field(
        default=None,
        metadata={
            "help": "Names of the modalities that get a term (e.g. 'image'); default every modality. The "
            "kept terms' weights are those of the full weighting."
        },
    )
    tower_reuse: bool = field(
        default=True,
        metadata={
            "help": "Run the student's and the online teacher's modality-only passes from the full pass's "
            "tower outputs (only the fusion layers and the head run again) when the architecture qualifies "
            "(hf_msd.architectures.reuses_towers: hf_msd's fusion transformer and dual encoder with their "
            "registered modalities). Same loss and gradients as separate passes; batch-norm running "
            "statistics are updated once per step instead of once per pass. False: separate passes."
        },
    )
    saliency_batch_size: int = field(
        default=32,
        metadata={"help": "Batch size of the teacher pass that computes population saliency (>= 1)."},
    )
    meta_learning_rate: float = field(
        default=1e-2,
        metadata={"help": "'learned' only: Adam learning rate (> 0) of the modality weights' parameters."},
    )
    meta_inner_learning_rate: float | None = field(
        default=None,
        metadata={
            "help": "'learned' only: step size (> 0) of the student's look-ahead update theta' = theta - "
            "lr * grad; default: learning_rate."
        },
    )
    meta_update_interval: int = field(
        default=10,
        metadata={"help": "'learned' only: run one meta step every this many optimizer steps (>= 1)."},
    )
    meta_validation_fraction: float = field(
        default=0.0,
        metadata={
            "help": "'learned' only: fraction in [0, 1) of the training set held out (fixed split, seed) "
            "for the meta step's validation batches; 0 uses the eval_dataset."
        },
    )
    meta_weight_network_hidden_size: int = field(
        default=0,
        metadata={
            "help": "'learned' only: 0 learns one scalar per modality; > 0 learns a small MLP of this "
            "width mapping each example's modality saliencies to its weights."
        },
    )

    def __post_init__(self):
        super().__post_init__()
        if self.modality_weighting not in WEIGHTINGS:
            raise ValueError(
                f"modality_weighting={self.modality_weighting!r} is unknown; "
                f"choose one of {sorted(WEIGHTINGS)}."
            )
        if self.modality_target not in MODALITY_TARGETS:
            raise ValueError(
                f"modality_target={self.modality_target!r} is unknown; "
                f"choose one of {list(MODALITY_TARGETS)}."
            )
        if self.modality_terms is not None and not self.modality_terms:
            raise ValueError("modality_terms is empty: name at least one modality, or leave it unset (all).")
        for name in ("saliency_batch_size", "meta_update_interval"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}.")
        for name in ("meta_learning_rate", "meta_inner_learning_rate"):
            value = getattr(self, name)
            if value is not None and not (value > 0 and math.isfinite(value)):
                raise ValueError(f"{name} must be a finite number > 0, got {value}.")
        if not 0 <= self.meta_validation_fraction < 1:
            raise ValueError(
                f"meta_validation_fraction must be in [0, 1), got {self.meta_validation_fraction}."
            )
        if self.meta_weight_network_hidden_size < 0:
            raise ValueError(
                f"meta_weight_network_hidden_size must be >= 0, got {self.meta_weight_network_hidden_size}."
            )
