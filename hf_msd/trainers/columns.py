"""How a batch's columns split between the student, the teacher and the loss (:class:`BatchColumns`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from ..data.generative import DISTILLATION_LABELS, VIEW_PREFIX
from ..data.paired import TEACHER_INPUT_PREFIX
from ..teacher_outputs.cache import TEACHER_LOGITS

#: Batch columns starting with one of these prefixes are not model inputs: cached teacher outputs, a
#: heterogeneous teacher's inputs, the distilled tokens and a generative student's modality views.
EXTRA_COLUMN_PREFIXES = (TEACHER_LOGITS, TEACHER_INPUT_PREFIX, DISTILLATION_LABELS, VIEW_PREFIX)


@dataclass(frozen=True)
class BatchColumns:
    """The views of one batch (a dict of tensors) each model and the loss take.

    Attributes:
        extra_prefixes: columns that are not model inputs (:data:`EXTRA_COLUMN_PREFIXES`).
        label_names: the Trainer's label columns, left out of the models' inputs unless asked for.
        hidden_from_student: the keys of the modalities the student does not take.
    """

    extra_prefixes: tuple[str, ...] = EXTRA_COLUMN_PREFIXES
    label_names: tuple[str, ...] = ("labels",)
    hidden_from_student: frozenset[str] = frozenset()

    def is_extra(self, name: str) -> bool:
        return name.startswith(self.extra_prefixes)

    def model_inputs(self, batch: dict[str, Any], keep_labels: bool = False) -> dict[str, Any]:
        """``batch`` without the extra columns (and without labels unless ``keep_labels``)."""
        dropped = () if keep_labels else ("labels", "return_loss", *self.label_names)
        return {k: v for k, v in batch.items() if not self.is_extra(k) and k not in dropped}

    def teacher(self, batch: dict[str, Any]) -> dict[str, Any]:
        """The teacher's view (every modality, no labels): the ``teacher_<key>`` entries renamed ``<key>``
        when the batch has them (a heterogeneous pair), else the model inputs without labels."""
        own = {
            k[len(TEACHER_INPUT_PREFIX) :]: v
            for k, v in batch.items()
            if k.startswith(TEACHER_INPUT_PREFIX) and not k.startswith(TEACHER_LOGITS)
        }
        return own or self.model_inputs(batch)

    def student(self, batch: dict[str, Any], keep_labels: bool = False) -> dict[str, Any]:
        """The student's view: the model inputs (labels only with ``keep_labels``) without the keys of the
        modalities it does not take (a unimodal student sees only its own modality)."""
        hidden = self.hidden_from_student
        return {k: v for k, v in self.model_inputs(batch, keep_labels).items() if k not in hidden}

    @staticmethod
    def distillation_labels(batch: dict[str, Any]) -> torch.Tensor | None:
        """The tokens a token-level model's distillation terms score: the batch's ``distillation_labels``
        (:class:`~hf_msd.data.VisionLanguageCollator`: the answer tokens of every example, gold or the
        teacher's) when it has them, else its ``labels``."""
        labels = batch.get(DISTILLATION_LABELS)
        return labels if torch.is_tensor(labels) else batch.get("labels")
