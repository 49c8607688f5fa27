"""Offline `evaluate` metrics shipped with hf_msd, and a `compute_metrics` factory for `Trainer`.

Each metric is a directory holding ``<name>/<name>.py`` (an `evaluate.Metric` script), so it loads
without the Hub: ``load_metric("accuracy")`` or ``evaluate.load(<path of that directory>)``.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path

import evaluate
import numpy as np

METRICS_DIR = Path(__file__).resolve().parent


def available_metrics() -> list[str]:
    """Names of the metrics shipped in this package."""
    return sorted(p.name for p in METRICS_DIR.iterdir() if (p / f"{p.name}.py").is_file())


def load_metric(name: str, config_name: str | None = None, **kwargs) -> evaluate.EvaluationModule:
    """Load one of hf_msd's metrics ("accuracy", "agreement", "multilabel") from the installed package,
    offline. ``config_name="multilabel"`` selects agreement on multi-label 0/1 vectors."""
    if name not in available_metrics():
        raise ValueError(f"Unknown hf_msd metric {name!r}; available: {available_metrics()}.")
    return evaluate.load(str(METRICS_DIR / name), config_name, **kwargs)


def make_compute_metrics(
    problem_type: str = "single_label_classification", label_groups: Mapping[str, Sequence[int]] | None = None
) -> Callable[..., dict]:
    """A ``compute_metrics`` function for `transformers.Trainer`, chosen by the model's ``problem_type``.

    - single-label: ``accuracy`` of the argmax of the logits (B, C) against int labels (B,); with
      ``label_groups`` ({group name: class ids}, e.g. easy-VQA's question types by their answers) also
      ``accuracy_<group>``: the accuracy on the examples whose gold label is in that group.
    - multi-label: ``exact_match`` and ``micro_f1`` of ``logit > 0`` (probability > 0.5) against labels
      >= 0.5 (so soft scores such as VQA answer scores are binarised at 0.5).
    - regression: ``mse`` of the outputs against the labels.
    """
    if problem_type == "single_label_classification":
        accuracy = load_metric("accuracy")

        def compute(eval_pred) -> dict:
            logits, labels = _logits(eval_pred.predictions), np.asarray(eval_pred.label_ids)
            predictions = logits.argmax(-1)
            metrics = accuracy.compute(predictions=predictions, references=labels)
            for group, ids in (label_groups or {}).items():
                members = np.isin(labels, list(ids))
                if members.any():
                    metrics[f"accuracy_{group}"] = float((predictions[members] == labels[members]).mean())
            return metrics

    elif problem_type == "multi_label_classification":
        multilabel = load_metric("multilabel")

        def compute(eval_pred) -> dict:
            logits, labels = _logits(eval_pred.predictions), np.asarray(eval_pred.label_ids)
            return multilabel.compute(
                predictions=(logits > 0).astype(np.int64), references=(labels >= 0.5).astype(np.int64)
            )

    elif problem_type == "regression":

        def compute(eval_pred) -> dict:
            labels = np.asarray(eval_pred.label_ids, dtype=np.float64)
            outputs = _logits(eval_pred.predictions).reshape(labels.shape)
            return {"mse": float(((outputs - labels) ** 2).mean())}

    else:
        raise ValueError(f"problem_type={problem_type!r} is not supported by make_compute_metrics.")
    return compute


def _logits(predictions) -> np.ndarray:
    """The logits array out of Trainer predictions (the first element when the model returned a tuple)."""
    return np.asarray(predictions[0] if isinstance(predictions, tuple) else predictions)


__all__ = ["METRICS_DIR", "available_metrics", "load_metric", "make_compute_metrics"]
