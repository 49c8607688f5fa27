"""What each stage records in its ``hf_msd_stage.json`` (:mod:`hf_msd.experiment.stages`): the settings that
decide its output, so a rerun reuses output made with the same settings and refuses output made with others.
Every stage's record is built here, from the run (:class:`~hf_msd.experiment.run.Run`)."""

from __future__ import annotations

import dataclasses
from typing import Any

from transformers import PreTrainedModel, TrainingArguments

from ..teacher_outputs.fingerprint import dataset_fingerprint, model_fingerprint
from .arguments import ExperimentArguments
from .run import Run
from .stages import jsonable, result_settings

#: Model arguments that shape only the student: a teacher trained with other values is the same teacher.
STUDENT_MODEL_FIELDS = (
    "student_modalities",
    "student_fusion_layers",
    "student_text_layers",
    "student_image_layers",
    "student_config",
)


def loaded_teacher_settings(run: Run, teacher: PreTrainedModel) -> dict[str, Any]:
    """A teacher loaded from ``teacher_name_or_path``: the path and a fingerprint of its weights (the path
    alone would let a teacher whose weights changed reuse the old saliency and student)."""
    settings = {"teacher_name_or_path": run.model_args.teacher_name_or_path}
    if run.model_args.compact_vocabulary:
        settings["compact_vocabulary"] = True
    return {**settings, "weights": model_fingerprint(teacher)}


def teacher_settings(run: Run, args: TrainingArguments) -> dict[str, Any]:
    """A teacher trained by the workflow with ``args``: its model, data and training settings."""
    model_settings = jsonable(run.model_args)
    for key in STUDENT_MODEL_FIELDS:
        model_settings.pop(key)
    return {
        "stage": "teacher",
        "model": model_settings,
        "data": teacher_data_settings(run),
        "training": result_settings(args),
        "teacher_training": teacher_training_settings(run.exp_args),
    }


def saliency_settings(run: Run, teacher: dict[str, Any]) -> dict[str, Any]:
    """The saliency stage: the teacher's settings, the validation data and the number of examples."""
    return {
        "stage": "saliency",
        "teacher": teacher,
        "data": data_settings(run),
        "samples": run.exp_args.saliency_max_samples,
    }


def student_settings(run: Run, teacher: dict[str, Any]) -> dict[str, Any]:
    """The student stage: the teacher's settings, the method, the data and every model and training field."""
    return {
        "stage": "student",
        "teacher": teacher,
        "method": run.exp_args.method,
        "data": data_settings(run),
        "model": jsonable(run.model_args),
        "training": result_settings(run.training_args),
    }


def teacher_training_settings(exp: ExperimentArguments) -> dict[str, Any]:
    """The ``teacher_*`` settings recorded by the teacher stage; ``teacher_modality_dropout`` only when on,
    so teachers recorded before the option existed (trained without it) are still reused."""
    settings = {
        f.name: getattr(exp, f.name) for f in dataclasses.fields(exp) if f.name.startswith("teacher_")
    }
    if settings["teacher_modality_dropout"] == 0:
        settings.pop("teacher_modality_dropout")
    return settings


def _recorded_data_args(run: Run) -> dict[str, Any]:
    """The data arguments as stage records hold them, plus ``validation_split: "held out of train"`` for
    local data without a validation file (its train split is smaller by the held-out part)."""
    settings = jsonable(run.data_args)
    if run.data_args.dataset_name == "local" and not run.data_args.validation_file:
        settings["validation_split"] = "held out of train"
    return settings


def data_settings(run: Run) -> dict[str, Any]:
    """The data settings that decide the train and validation splits (not the test-set size), with the seed
    that splits them."""
    settings = _recorded_data_args(run)
    settings.pop("max_test_samples")
    return {**settings, "seed": run.training_args.seed, "content": _content(run, "train", "validation")}


def _content(run: Run, *splits: str) -> dict[str, str]:
    """A hash of each split's content (rows and the image files they read), so data changed in place under
    the same file names does not reuse a stage
    (:func:`hf_msd.teacher_outputs.fingerprint.dataset_fingerprint`)."""
    return {split: dataset_fingerprint(run.dataset[split]) for split in splits}


def teacher_data_settings(run: Run) -> dict[str, Any]:
    """The data settings that decide the teacher's train split (the test-set size, say, does not; the
    labelled subset only when the teacher trains on it)."""
    settings = _recorded_data_args(run)
    for key in ("max_eval_samples", "max_test_samples"):
        settings.pop(key)
    if run.exp_args.teacher_train_labels == "all":
        for key in ("labeled_fraction", "max_labeled_samples"):
            settings.pop(key)
    evaluate = run.exp_args.teacher_eval_strategy != "no"
    if evaluate:
        settings["max_eval_samples"] = run.data_args.max_eval_samples  # picks the best checkpoint
    settings["content"] = _content(run, "train", *(["validation"] if evaluate else []))
    return settings
