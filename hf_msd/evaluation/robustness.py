"""Robustness evaluation: a model's metrics with both modalities and with each modality alone.

For every input condition ("both", then each modality name) the test set is collated as usual and, for a
single-modality condition, restricted with :func:`hf_msd.modalities.modality.restrict` (the other modalities
removed
by their removal strategy), then scored with ``Trainer.predict`` so that several processes split the work
and the predictions are gathered (``accelerate launch`` works unchanged).

A unimodal model (``config.modalities == ["text"]``, say) is only scored on the conditions it can see:
"both" (where it reads its own modality) and its own modality.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from datasets import Dataset
from transformers import EvalPrediction, PreTrainedModel, Trainer, TrainingArguments

from ..modalities.modality import Modality, restrict
from ..progress_bars import label_progress_bars

BOTH = "both"


class RestrictedCollator:
    """Wrap a collator so every batch keeps only modality ``keep`` (``keep=None``: the batch unchanged)."""

    def __init__(self, collator: Callable[[list[dict]], Mapping[str, Any]], modalities, keep: str | None):
        self.collator = collator
        self.modalities = list(modalities)
        self.keep = keep

    def __call__(self, examples: list[dict]) -> dict[str, Any]:
        batch = dict(self.collator(examples))
        return batch if self.keep is None else restrict(batch, self.modalities, keep=self.keep)


def input_conditions(model: PreTrainedModel, modalities: Sequence[Modality]) -> list[str]:
    """The conditions ``model`` can be scored on: "both" and each modality it takes."""
    own = getattr(getattr(model, "config", None), "modalities", None)
    return [BOTH] + [m.name for m in modalities if own is None or m.name in own]


def evaluate_by_modality(
    model: PreTrainedModel,
    dataset: Dataset,
    data_collator: Callable[[list[dict]], Mapping[str, Any]],
    modalities: Sequence[Modality],
    args: TrainingArguments,
    compute_metrics: Callable[[EvalPrediction], dict[str, float]],
    conditions: Sequence[str] | None = None,
    label: str = "test",
) -> dict[str, dict[str, float]]:
    """Score ``model`` on ``dataset`` under each input condition.

    Args:
        model: the model to score (teacher or student).
        dataset: raw examples (image, text, label columns), collated by ``data_collator``.
        data_collator: turns raw examples into model inputs (e.g.
            :class:`hf_msd.data.MultimodalDataCollator`).
        modalities: the modality descriptions used to remove the other modalities.
        args: evaluation settings (``per_device_eval_batch_size``, ``use_cpu``, ``bf16``...); the
            ``remove_unused_columns`` flag is ignored (raw columns always reach the collator).
        compute_metrics: maps an ``EvalPrediction`` to a dict of metrics (e.g. ``{"accuracy": 0.93}``).
        conditions: which conditions to score; default :func:`input_conditions`.
        label: the progress bars' description, followed by the condition (``"test (text)"``).

    Returns:
        ``{condition: {metric: value}}``, metric names without the ``test_`` prefix.
    """
    conditions = list(input_conditions(model, modalities) if conditions is None else conditions)
    known = {BOTH, *(m.name for m in modalities)}
    unknown = [c for c in conditions if c not in known]
    if unknown:
        raise ValueError(f"conditions {unknown} are not {BOTH!r} or a modality name in {sorted(known)}.")
    args = copy.copy(args)  # the caller's arguments stay as they are
    args.remove_unused_columns = False
    results = {}
    for condition in conditions:
        trainer = Trainer(
            model=model,
            args=args,
            data_collator=RestrictedCollator(
                data_collator, modalities, None if condition == BOTH else condition
            ),
            compute_metrics=compute_metrics,
        )
        label_progress_bars(trainer, f"{label} ({condition})")
        metrics = trainer.predict(dataset, metric_key_prefix="test").metrics
        results[condition] = {
            key.removeprefix("test_"): value
            for key, value in metrics.items()
            if not key.endswith(("_runtime", "_per_second", "_preparation_time"))
        }
    return results
