"""Batches for a teacher and a student that use different processors (a heterogeneous pair).

Distilling across architectures (say a ViLT teacher into hf_msd's fusion student) needs each model's own
inputs for the same examples: ViLT's tokenizer, 384-pixel images and ``pixel_mask``; the student's
tokenizer and 64-pixel images. :class:`PairedCollator` runs both collators on one list of examples and
returns one batch:

===========================  ====================================================================
key                          content
===========================  ====================================================================
``<key>``                    the student collator's output (``input_ids``, ``pixel_values``, ...)
``labels``                   the labels (both collators must agree on them)
``teacher_<key>``            the teacher collator's output, e.g. ``teacher_input_ids``,
                             ``teacher_pixel_values``, ``teacher_pixel_mask``
``teacher_logits[_<name>]``  cached teacher outputs, if any (passed through by the student collator)
===========================  ====================================================================

:class:`~hf_msd.trainers.DistillationTrainer` and :class:`~hf_msd.trainers.MSDTrainer` hand the teacher
the ``teacher_<key>`` entries (renamed ``<key>``) and the student the unprefixed ones, and make each
model's modality-only inputs with its own :class:`~hf_msd.modalities.modality.Modality` spec
(``teacher_modalities``
and ``modalities``). Use it with ``remove_unused_columns=False``, so the raw columns reach the collator.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

import torch
from transformers import BatchFeature

#: Prefix of the teacher's inputs in a paired batch.
TEACHER_INPUT_PREFIX = "teacher_"
#: Cached teacher outputs (``teacher_logits``, ``teacher_logits_<modality>``) are not teacher inputs.
_CACHED_PREFIX = "teacher_logits"

Collator = Callable[[list[dict[str, Any]]], Mapping[str, Any]]


class PairedCollator:
    """Collate each list of examples with the student's and with the teacher's collator (see the module
    docstring for the batch layout).

    Args:
        student_collator: makes the student's inputs (e.g. a :class:`~hf_msd.data.MultimodalDataCollator`
            with the student's processor); its ``labels`` and cached teacher columns are the batch's.
        teacher_collator: makes the teacher's inputs (e.g. a ``MultimodalDataCollator`` with the teacher's
            processor). Its ``labels``, if any, must equal the student collator's.
    """

    def __init__(self, student_collator: Collator, teacher_collator: Collator):
        self.student_collator = student_collator
        self.teacher_collator = teacher_collator

    def __call__(self, examples: list[dict[str, Any]]) -> BatchFeature:
        batch = dict(self.student_collator(examples))
        teacher = dict(self.teacher_collator(examples))
        clashes = [
            key
            for key in batch
            if key.startswith(TEACHER_INPUT_PREFIX) and not key.startswith(_CACHED_PREFIX)
        ]
        if clashes:
            raise ValueError(
                f"The student collator returns {clashes}: keys starting with {TEACHER_INPUT_PREFIX!r} are "
                "reserved for the teacher's inputs in a paired batch; rename them."
            )
        labels = teacher.pop("labels", None)
        if labels is not None:
            if "labels" not in batch:
                batch["labels"] = labels
            elif not torch.equal(torch.as_tensor(batch["labels"]), torch.as_tensor(labels)):
                raise ValueError(
                    "The student and teacher collators encode the labels differently; give them the same "
                    "label settings (label_column, num_labels)."
                )
        for key, value in teacher.items():
            if not key.startswith(_CACHED_PREFIX):
                batch[f"{TEACHER_INPUT_PREFIX}{key}"] = value
        return BatchFeature(batch)
