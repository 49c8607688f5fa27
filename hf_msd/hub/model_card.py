"""Model cards for distilled students, filled from a run's summary.

The card is a `huggingface_hub.ModelCard` rendered from `templates/distilled_student.md`: YAML metadata
(library, tags, datasets, metrics with the measured accuracies as `model-index` results) and a
body with the robustness table, parameter counts, usage and the papers' citations.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData

TEMPLATE_PATH = Path(__file__).parent / "templates" / "distilled_student.md"

METHOD_DESCRIPTIONS = {
    "none": "plain fine-tuning on the labels (no distillation; the baseline)",
    "kd": "knowledge distillation on the full multimodal input (Hinton et al., 2015)",
    "msd": "modality-specific distillation, MSD (Jin et al., EMNLP Findings 2021)",
}


def _markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(_format(cell) for cell in row) + " |" for row in rows]
    return "\n".join(lines)


def _format(value: Any) -> str:
    """Scores with 4 decimals, counts with thousands separators, anything else as written."""
    if isinstance(value, bool):
        return str(value)
    if isinstance(value, float):
        return f"{value:.4f}"
    if isinstance(value, int):
        return f"{value:,}"
    return str(value)


def build_model_card(
    *,
    model_name: str,
    method: str,
    dataset_name: str,
    accuracy: Mapping[str, Mapping[str, float]],
    parameters: Mapping[str, int],
    hyperparameters: Mapping[str, Any],
    student_description: str,
    teacher_description: str,
    repo_id: str | None = None,
    eval_split: str = "test",
    num_eval_examples: int | None = None,
    dataset_id: str | None = None,
    license: str = "apache-2.0",
) -> ModelCard:
    """Render the model card of a distilled student.

    Args:
        model_name: display name, e.g. ``"easy-vqa-msd-student"``.
        method: ``"none"``, ``"kd"`` or ``"msd"`` (see ``METHOD_DESCRIPTIONS``).
        dataset_name: human-readable data set name.
        accuracy: ``{"teacher": {"both": 0.97, "text": 0.41, "image": 0.3}, "student": {...}}``: accuracy
            per model and per evaluated input (both modalities, or one modality alone).
        parameters: ``{"teacher": n, "student": n}`` parameter counts.
        hyperparameters: flat mapping shown as a table (e.g. temperature, weights, epochs).
        student_description / teacher_description: one phrase each, e.g. ``"text-only 2-layer transformer"``.
        repo_id: Hub repository id used in the usage snippet (defaults to ``model_name``).
        eval_split: the split the accuracies were measured on.
        num_eval_examples: how many examples of that split were scored (stated in the card when given).
        dataset_id: Hub dataset id for the metadata, if the data lives on the Hub.
        license: SPDX-style license id for the metadata.
    """
    if method not in METHOD_DESCRIPTIONS:
        raise ValueError(f"method={method!r} is not one of {sorted(METHOD_DESCRIPTIONS)}.")
    inputs = sorted({name for scores in accuracy.values() for name in scores}, key=_input_order)
    results_table = _markdown_table(
        ["model", *inputs],
        [[model, *(scores.get(name, "n/a") for name in inputs)] for model, scores in accuracy.items()],
    )
    student_scores = accuracy.get("student", {})
    eval_results = [
        EvalResult(
            task_type="text-classification",
            dataset_type=dataset_id or dataset_name,
            dataset_name=dataset_name,
            dataset_split=eval_split,
            metric_type="accuracy",
            metric_name=f"accuracy ({name})",
            metric_value=float(value),
        )
        for name, value in student_scores.items()
    ]
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        license=license,
        tags=["hf_msd", "knowledge-distillation", "multimodal", method],
        datasets=[dataset_id] if dataset_id else None,
        metrics=["accuracy"],
        eval_results=eval_results or None,
    )
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        student_description=student_description,
        teacher_description=teacher_description,
        method_description=METHOD_DESCRIPTIONS[method],
        eval_split=eval_split,
        eval_size="" if num_eval_examples is None else f" ({num_eval_examples:,} examples)",
        dataset_name=dataset_name,
        results_table=results_table,
        teacher_parameters=_format(int(parameters.get("teacher", 0))),
        student_parameters=_format(int(parameters.get("student", 0))),
        repo_id=repo_id or model_name,
        training_description=(
            f"Student trained with `hf_msd` using {METHOD_DESCRIPTIONS[method]}. "
            "The accuracies above were measured by the run that produced this card."
        ),
        hyperparameters_table=_markdown_table(
            ["name", "value"],
            [[k, f"{v:g}" if isinstance(v, float) else str(v)] for k, v in hyperparameters.items()],
        ),
    )


def _input_order(name: str) -> tuple[int, str]:
    return (0 if name == "both" else 1, name)
