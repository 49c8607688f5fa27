"""Model cards for distilled students: one builder for the workflow and for the trainers' own
`create_model_card` / `push_to_hub`.

The card is a `huggingface_hub.ModelCard` rendered from `templates/distilled_student.md`. Its YAML header
follows the Hub's conventions, built with `ModelCardData` / `EvalResult`: `library_name`, `pipeline_tag`,
`tags`, `base_model` (the teacher, when it has a Hub id), `datasets` (when the data has a Hub id), `license`
and a `model-index` whose results are the student's measured metrics per input condition, under the task
type of the student's inputs (:func:`task_type`). The body has the robustness table, size and speed, the
teacher's saliency plot, the method and its settings, the training data and hyper-parameters, usage,
intended use, limitations and the papers' citations.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import EvalResult, ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from ..evaluation.speed import COMPILED_SUFFIX

TEMPLATE_PATH = Path(__file__).parent / "templates" / "distilled_student.md"

METHOD_DESCRIPTIONS = {
    "none": "plain fine-tuning on the labels (no distillation; the baseline)",
    "kd": "knowledge distillation on the full multimodal input (Hinton et al., 2015)",
    "msd": "modality-specific distillation, MSD (Jin et al., EMNLP Findings 2021)",
}

#: The usage code's image (the card's code runs as written); a user opens their own file instead.
IMAGE_LINES = (
    '\nfrom PIL import Image\n\nimage = Image.new("RGB", (64, 64), "red")  # yours: Image.open(path)\n'
)

#: Evaluation entries that are not scores of the model (left out of the card's results).
NOT_SCORES = ("loss", "runtime", "samples_per_second", "steps_per_second", "preparation_time")

#: Hyper-parameters shown in the card, by method (read from the training arguments).
COMMON_HYPERPARAMETERS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "seed",
)
DISTILLATION_HYPERPARAMETERS = (
    "temperature",
    "hard_label_weight",
    "kd_loss_weight",
    "kd_loss_type",
    "hidden_loss_weight",
    "attention_loss_weight",
)
MSD_HYPERPARAMETERS = ("modality_weighting", "modality_loss_weight")


def task_type(student_modalities: Sequence[str], question_answering: bool = False) -> str:
    """The Hub task of a student by its inputs: `text-classification` (text only), `image-classification`
    (images only), `visual-question-answering` (both, when the text is a question about the image, as in
    easy-VQA), else `other` (the Hub has no image+text classification task)."""
    modalities = set(student_modalities)
    if modalities == {"text"}:
        return "text-classification"
    if modalities == {"image"}:
        return "image-classification"
    return "visual-question-answering" if question_answering else "other"


def pipeline_tag(student_modalities: Sequence[str]) -> str | None:
    """The card's ``pipeline_tag``: a task that transformers' ``pipeline()`` serves for the student
    (``text-classification`` / ``image-classification`` for a unimodal one), else None. A text+image
    student has no such task (transformers 5 removed ``visual-question-answering``): it is served by the
    ``multimodal-classification`` pipeline its repository registers (``custom_pipelines``)."""
    modalities = set(student_modalities)
    return {frozenset({"text"}): "text-classification", frozenset({"image"}): "image-classification"}.get(
        frozenset(modalities)
    )


def hub_id(name_or_path: str | None) -> str | None:
    """``name_or_path`` if it reads as a Hub model id (and is not a local path), else None."""
    if not name_or_path or os.path.exists(name_or_path):
        return None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def training_hyperparameters(args: Any, method: str) -> dict[str, Any]:
    """The card's hyper-parameters of a run, read from its training arguments (a `TrainingArguments`, or a
    `DistillationTrainingArguments` / `MSDTrainingArguments` for "kd" / "msd"): the optimisation settings
    (`max_steps` instead of `num_train_epochs` when it is set), then the distillation weights and
    temperature, then MSD's modality weighting."""
    names = list(COMMON_HYPERPARAMETERS)
    if method in ("kd", "msd"):
        names += DISTILLATION_HYPERPARAMETERS
    if method == "msd":
        names += MSD_HYPERPARAMETERS
    steps = getattr(args, "max_steps", -1) or -1
    names.remove("num_train_epochs" if steps > 0 else "max_steps")  # max_steps > 0 overrides the epochs
    values = {"method": method}
    for name in names:
        value = getattr(args, name, None)
        if value is not None:
            values[name] = value
    return values


def card_speed(inference_speed: Mapping[str, Any] | None) -> dict[str, Any]:
    """``throughput`` / ``throughput_setting`` for :func:`build_model_card` from the workflow summary's
    ``inference_speed`` (:func:`hf_msd.evaluation.speed.compare_inference_speed`); empty without it."""
    if not inference_speed:
        return {}
    models = inference_speed["models"]
    setting = (
        f"{inference_speed['batches']} batches of {inference_speed['batch_size']} test examples, median "
        f"of {inference_speed['rounds']} interleaved rounds after warm-up, on the machine of the run"
    )
    if inference_speed.get("compile_seconds"):
        setting += "; compiled with `torch.compile`, after a one-off compile of " + ", ".join(
            f"{value:.0f} s ({name.removesuffix(COMPILED_SUFFIX)})"
            for name, value in inference_speed["compile_seconds"].items()
        )
    return {
        "throughput": {name: values["examples_per_second"] for name, values in models.items()},
        "throughput_setting": setting,
    }


def build_model_card(
    *,
    model_name: str,
    method: str,
    dataset_name: str,
    evaluation: Mapping[str, Mapping[str, Mapping[str, float]]],
    parameters: Mapping[str, int],
    hyperparameters: Mapping[str, Any],
    student_modalities: Sequence[str],
    teacher_name_or_path: str | None = None,
    teacher_description: str = "multimodal (text+image) teacher",
    repo_id: str | None = None,
    eval_split: str = "test",
    num_eval_examples: int | None = None,
    validation_description: str | None = None,
    dataset_id: str | None = None,
    question_answering: bool = False,
    throughput: Mapping[str, float] | None = None,
    throughput_setting: str | None = None,
    saliency_plot: str | None = None,
    tags: Sequence[str] = (),
    license: str = "apache-2.0",
) -> ModelCard:
    """Render the model card of a distilled student.

    Args:
        model_name: display name, e.g. ``"easy-vqa-msd-student"``.
        method: ``"none"``, ``"kd"`` or ``"msd"`` (see ``METHOD_DESCRIPTIONS``).
        dataset_name: human-readable data set name.
        evaluation: ``{"teacher": {"both": {"accuracy": 0.97}, "text": {...}, "image": {...}}, "student":
            {...}}``: metrics per model and per input condition (both modalities, or one alone), as in the
            workflow's ``summary.json``. Losses and timings are left out. The student's scores become the
            ``model-index`` results.
        parameters: ``{"teacher": n, "student": n}`` parameter counts.
        hyperparameters: flat mapping shown as a table (see :func:`training_hyperparameters`).
        student_modalities: the student's inputs (``["text", "image"]``, ``["text"]``...).
        teacher_name_or_path: the teacher's Hub id or local path; a Hub id becomes ``base_model``.
        teacher_description: one phrase, e.g. ``"multimodal (text+image) fusion transformer"``.
        repo_id: Hub repository id used in the usage snippet (defaults to ``model_name``).
        eval_split: the split the scores were measured on.
        num_eval_examples: how many examples of that split were scored (stated in the card when given).
        validation_description: where the validation split (checkpoint selection, saliency, learned
            modality weights) came from, e.g. ``"0.1 of the train examples held out (seed 42)"``.
        dataset_id: Hub dataset id, for ``datasets`` and the results' dataset type.
        question_answering: the text is a question about the image (VQA data); sets the task type.
        throughput: ``{"teacher": examples/s, "student": examples/s}`` measured side by side; the speed-up
            is their ratio.
        throughput_setting: how the throughput was measured (shown next to it).
        saliency_plot: path of the teacher's saliency plot relative to the card (embedded when given).
        tags: extra tags.
        license: SPDX-style license id.
    """
    if method not in METHOD_DESCRIPTIONS:
        raise ValueError(f"method={method!r} is not one of {sorted(METHOD_DESCRIPTIONS)}.")
    modalities = list(student_modalities)
    task = task_type(modalities, question_answering)
    scores = {model: _scores(conditions) for model, conditions in evaluation.items()}
    metric_names = sorted(
        {metric for conditions in scores.values() for s in conditions.values() for metric in s}
    )
    eval_results = [
        EvalResult(
            task_type=task,
            dataset_type=dataset_id or dataset_name,
            dataset_name=dataset_name,
            dataset_split=eval_split,
            metric_type=metric,
            metric_name=f"{metric} ({condition})",
            metric_value=float(value),
        )
        for condition, values in sorted(
            scores.get("student", {}).items(), key=lambda item: _input_order(item[0])
        )
        for metric, value in values.items()
    ]
    base_model = hub_id(teacher_name_or_path)
    card_data = ModelCardData(
        model_name=model_name,
        library_name="transformers",
        pipeline_tag=pipeline_tag(modalities),
        license=license,
        tags=list(
            dict.fromkeys(["hf_msd", "knowledge-distillation", "multimodal-classification", method, *tags])
        ),
        base_model=base_model,
        datasets=[dataset_id] if dataset_id else None,
        metrics=metric_names or None,
        eval_results=eval_results or None,
    )
    teacher_reference = (
        f"the {teacher_description} [`{base_model}`](https://huggingface.co/{base_model})"
        if base_model
        else f"a {teacher_description}" + (f" (`{teacher_name_or_path}`)" if teacher_name_or_path else "")
    )
    eval_size = "" if num_eval_examples is None else f" ({num_eval_examples:,} examples)"
    return ModelCard.from_template(
        card_data,
        template_path=str(TEMPLATE_PATH),
        model_name=model_name,
        student_description=f"{'+'.join(modalities)} student",
        teacher_reference=teacher_reference,
        method_description=METHOD_DESCRIPTIONS[method],
        metric_names=", ".join(name.replace("_", " ").capitalize() for name in metric_names) or "Scores",
        eval_split=eval_split,
        eval_size=eval_size,
        dataset_name=dataset_name,
        validation_description=(
            f"Validation split (teacher checkpoint selection, saliency, learned modality weights): "
            f"{validation_description}."
            if validation_description
            else ""
        ),
        results_table=_results_table(scores) if metric_names else "No evaluation was recorded.",
        size_table=_size_table(parameters),
        speed_description=_speed_description(throughput, throughput_setting),
        saliency_description=(
            f"![Teacher modality saliency]({saliency_plot})\n\nHow much the teacher's prediction changes "
            "(KL divergence) when each modality is removed, per validation example: the signal MSD's "
            "saliency-based modality weights come from."
            if saliency_plot
            else "No saliency plot was recorded by this run."
        ),
        method_details=_method_details(method, hyperparameters),
        hyperparameters_table=_markdown_table(
            ["name", "value"],
            [[k, f"{v:g}" if isinstance(v, float) else str(v)] for k, v in hyperparameters.items()],
        ),
        repo_id=repo_id or f"your-name/{model_name}",
        example_input=_example_input(modalities),
        image_line=IMAGE_LINES if "image" in modalities else "",
        pipeline_description=(
            f"`pipeline_tag: {pipeline_tag(modalities)}`: the standard pipeline serves this student too."
            if pipeline_tag(modalities)
            else "No `pipeline_tag`: transformers has no text+image classification task (it removed "
            "`visual-question-answering` in version 5), so the repository registers its own "
            "`multimodal-classification` pipeline."
        ),
        processor_call=", ".join(
            {"image": "images=image", "text": 'text="what shape is in the image?"'}[m]
            for m in ("image", "text")
            if m in modalities
        ),
        input_description=" and ".join({"image": "images", "text": "texts"}[m] for m in modalities)
        + (" (questions about the images)" if question_answering else ""),
    )


def _scores(conditions: Mapping[str, Mapping[str, float]]) -> dict[str, dict[str, float]]:
    return {
        condition: {k: v for k, v in values.items() if not k.endswith(NOT_SCORES)}
        for condition, values in conditions.items()
    }


def _results_table(scores: Mapping[str, Mapping[str, Mapping[str, float]]]) -> str:
    """One row per model and input condition it was scored on ("both" first, then "<modality> only"), one
    column per metric (with easy-VQA, ``accuracy`` and one ``accuracy_<question type>`` per type); "n/a"
    where a row lacks the metric."""
    metrics = sorted({m for per_model in scores.values() for values in per_model.values() for m in values})
    rows = [
        [model, _condition_name(condition), *(values.get(m, "n/a") for m in metrics)]
        for model, per_model in scores.items()
        for condition, values in sorted(per_model.items(), key=lambda item: _input_order(item[0]))
    ]
    return _markdown_table(["model", "input", *metrics], rows)


def _condition_name(condition: str) -> str:
    """``both`` as it is, a single modality as ``<modality> only``."""
    return condition if condition == "both" else f"{condition} only"


def _size_table(parameters: Mapping[str, int]) -> str:
    rows = [[name, int(count)] for name, count in parameters.items()]
    table = _markdown_table(["model", "parameters"], rows)
    if parameters.get("teacher") and parameters.get("student"):
        table += f"\n\nThe student has {parameters['teacher'] / parameters['student']:.2f}x fewer parameters."
    return table


def _speed_description(throughput: Mapping[str, float] | None, setting: str | None) -> str:
    if not throughput or not throughput.get("teacher") or not throughput.get("student"):
        return "Inference speed was not measured by this run."
    speedup = throughput["student"] / throughput["teacher"]
    text = (
        f"Inference throughput, measured side by side: teacher {throughput['teacher']:.1f} examples/s, "
        f"student {throughput['student']:.1f} examples/s, a **{speedup:.2f}x** speed-up"
    )
    others = [name for name in throughput if name not in ("teacher", "student")]
    if others:
        text += "; " + ", ".join(
            f"{name} {throughput[name]:.1f} examples/s ({throughput[name] / throughput['teacher']:.2f}x the "
            "teacher)"
            for name in others
        )
    return text + (f" ({setting})." if setting else ".")


def _method_details(method: str, hyperparameters: Mapping[str, Any]) -> str:
    """The method as a list: which signals the student learned from and with which weights."""
    if method == "none":
        return "- Labels only, no teacher signal: the baseline for the distilled students."
    h = hyperparameters
    lines = [f"- Method: {METHOD_DESCRIPTIONS[method]}."]
    if h.get("hard_label_weight"):
        lines.append(f"- Labels: weight {h['hard_label_weight']:g}.")
    if h.get("kd_loss_weight"):
        lines.append(
            f"- Logits: soft targets ({h.get('kd_loss_type', 'kl')}) at temperature "
            f"{h.get('temperature', 1):g}, weight {h['kd_loss_weight']:g}."
        )
    if h.get("hidden_loss_weight"):
        lines.append(f"- Hidden states: weight {h['hidden_loss_weight']:g}.")
    if h.get("attention_loss_weight"):
        lines.append(f"- Attention maps: weight {h['attention_loss_weight']:g}.")
    if method == "msd":
        lines.append(
            "- Modality-specific terms: the student matches the teacher's outputs on each modality alone "
            f"(the other removed), weighted by `{h.get('modality_weighting', 'uniform')}` modality weights, "
            f"weight {h.get('modality_loss_weight', 1):g}."
        )
    return "\n".join(lines)


def _example_input(modalities: Sequence[str]) -> str:
    values = {"image": "image", "text": '"what shape is in the image?"'}
    if len(modalities) == 1:
        return values[modalities[0]]
    return "{" + ", ".join(f'"{m}": {values[m]}' for m in ("image", "text") if m in modalities) + "}"


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


def _input_order(name: str) -> tuple[int, str]:
    return (0 if name == "both" else 1, name)


def trainer_model_card(
    trainer: Any,
    *,
    model_name: str | None = None,
    license: str | None = None,
    tags: str | Sequence[str] | None = None,
    finetuned_from: str | None = None,
    tasks: str | Sequence[str] | None = None,
    dataset: str | Sequence[str] | None = None,
    dataset_tags: str | Sequence[str] | None = None,
    evaluation: Mapping[str, Mapping[str, Mapping[str, float]]] | None = None,
    throughput: Mapping[str, float] | None = None,
    throughput_setting: str | None = None,
    **unused: Any,
) -> ModelCard:
    """The card of a :class:`~hf_msd.DistillationTrainer` / :class:`~hf_msd.MSDTrainer` run, for its
    ``create_model_card`` (and so ``push_to_hub``), through :func:`build_model_card`.

    Read from the trainer: the method (``trainer.card_method``), the teacher (``finetuned_from`` or its
    ``config._name_or_path``) and both parameter counts, the student's modalities, the hyper-parameters
    (:func:`training_hyperparameters`), the last evaluation in ``trainer.state.log_history`` (the
    validation split, both modalities; pass ``evaluation=`` with per-modality results, e.g. from
    :func:`hf_msd.evaluation.robustness.evaluate_by_modality`, to show the robustness table) and the saliency
    plot:
    ``<output_dir>/saliency.png``, drawn from MSD's cached population saliency when only that exists.
    The arguments of `Trainer.create_model_card` keep their meaning (``dataset`` names the data,
    ``dataset_tags`` gives its Hub id, ``tasks="visual-question-answering"`` marks VQA data); ``language``
    and ``dataset_args`` have no place in this card and are ignored.
    """
    args = trainer.args
    method = trainer.card_method
    student, teacher = trainer.model, trainer.teacher_model
    student_config = getattr(student, "config", None)
    modalities = getattr(student_config, "modalities", None) or trainer.student_modality_names or ["text"]
    teacher_name = finetuned_from or getattr(teacher.config, "_name_or_path", None) or None
    dataset_name = _first(dataset) or _dataset_name(trainer.train_dataset)
    if evaluation is None:
        evaluation, num_eval_examples = _last_evaluation(trainer)
    else:
        num_eval_examples = None
    output_dir = Path(args.output_dir)
    return build_model_card(
        model_name=model_name or args.hub_model_id or output_dir.name,
        method=method,
        dataset_name=dataset_name or "the training data (not named: pass dataset= to push_to_hub)",
        evaluation=evaluation,
        parameters={"teacher": _count(teacher), "student": _count(student)},
        hyperparameters=training_hyperparameters(args, method),
        student_modalities=list(modalities),
        teacher_name_or_path=teacher_name,
        teacher_description="teacher"
        if getattr(teacher.config, "modalities", None) is None
        else (f"{'+'.join(teacher.config.modalities)} teacher"),
        repo_id=args.hub_model_id or model_name or output_dir.name,
        eval_split="validation",
        num_eval_examples=num_eval_examples,
        dataset_id=hub_id(_first(dataset_tags)),
        question_answering="visual-question-answering"
        in ([tasks] if isinstance(tasks, str) else tasks or []),
        throughput=throughput,
        throughput_setting=throughput_setting,
        saliency_plot=_saliency_plot(output_dir),
        tags=[tags] if isinstance(tags, str) else list(tags or []),
        license=license or "apache-2.0",
    )


def _first(value: str | Sequence[str] | None) -> str | None:
    if isinstance(value, str) or value is None:
        return value
    return next(iter(value), None)


def _dataset_name(dataset: Any) -> str | None:
    info = getattr(dataset, "info", None)
    name = getattr(info, "dataset_name", None) or getattr(info, "builder_name", None)
    return None if name in (None, "csv", "json", "parquet", "text", "generator", "imagefolder") else name


def _count(model: Any) -> int:
    return sum(p.numel() for p in model.parameters())


def _last_evaluation(trainer: Any) -> tuple[dict[str, dict[str, dict[str, float]]], int | None]:
    """The student's metrics of the trainer's last evaluation (``eval_*`` log entries), as
    ``{"student": {"both": {metric: value}}}``, and the evaluation set's size."""
    for entry in reversed(trainer.state.log_history):
        metrics = {
            key.removeprefix("eval_"): value
            for key, value in entry.items()
            if key.startswith("eval_") and not key.endswith(NOT_SCORES)
        }
        if metrics:
            size = len(trainer.eval_dataset) if hasattr(trainer.eval_dataset, "__len__") else None
            return {"student": {"both": metrics}}, size
    return {}, None


def _saliency_plot(output_dir: Path) -> str | None:
    """``saliency.png`` in ``output_dir``, drawn from MSD's ``modality_saliency.json`` when only that exists
    (and matplotlib is installed)."""
    plot, report = output_dir / "saliency.png", output_dir / "modality_saliency.json"
    if not plot.is_file() and report.is_file():
        from ..distillation.saliency import SaliencyReport, plot_saliency

        try:
            plot_saliency(SaliencyReport.load_json(report), plot)
        except ImportError:
            return None
    return plot.name if plot.is_file() else None
