"""The control of modality-specific distillation with the full input's targets, for cached generative
teachers: KD of the student's prediction on each modality view ``x_m`` towards the teacher's prediction on the
*full* input, ``KD(T(x), S(x_m))``.

A :class:`~hf_msd.data.VisionLanguageCollator`'s views have the answer tokens of ``x`` (the same ids, in
order), so with the teacher's answer-token outputs cached by
:func:`~hf_msd.teacher_outputs.cache.precompute_teacher_outputs` the control is MSD on a dataset whose view
columns hold the full input's outputs: :func:`with_full_input_targets` makes that dataset.
"""

from __future__ import annotations

from collections.abc import Sequence

import datasets

from ..data.generative import VIEW_NAMES
from .cache import teacher_column


def with_full_input_targets(dataset: datasets.Dataset, views: Sequence[str] = VIEW_NAMES) -> datasets.Dataset:
    """``dataset`` (with cached teacher outputs) whose columns ``teacher_logits_<view>[<suffix>]`` are copies
    of ``teacher_logits[<suffix>]`` (every stored form: whole logits, or top-k logits, indices and rest)."""
    full = teacher_column()
    if not any(column == full or column.startswith(full + "__") for column in dataset.column_names):
        raise ValueError(
            f"The dataset has no cached {full!r} column (it has {dataset.column_names}): pass the result of "
            "precompute_teacher_outputs."
        )
    for view in views:
        prefix = teacher_column(view)
        for column in [c for c in dataset.column_names if c == prefix or c.startswith(prefix + "__")]:
            source = full + column[len(prefix) :]
            dataset = dataset.remove_columns(column).add_column(
                column, dataset[source], feature=dataset.features[source]
            )
    return dataset
