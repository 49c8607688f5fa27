"""Stage 3, the student: made from the teacher (or built from ``student_config``) and trained with
``method`` = ``none`` (labels only), ``kd`` or ``msd`` on the train split, reading the teacher's cached
outputs; saved with the processor and the pipeline's code in ``output_dir/student``."""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

from transformers import (
    AutoModelForSequenceClassification,
    PreTrainedModel,
    Trainer,
    TrainingArguments,
    set_seed,
)

from ..architectures import default_modalities
from ..metrics import make_compute_metrics
from ..models import make_student, student_from_config
from ..pipelines import add_pipeline_code
from ..progress_bars import label_progress_bars
from ..targets import resolve_problem_type
from ..teacher_outputs.cache import precompute_teacher_outputs
from ..trainers import DistillationTrainer, MSDTrainer, MSDTrainingArguments
from .arguments import ModelArguments, json_object, layer_list
from .data_stage import training_split
from .progress import announce
from .run import TRAIN_RESULTS, Run, base_training_args, make_collator
from .runtime import find_unused_parameters
from .settings import student_settings
from .stages import check_finite, mark_done, stage_done


def distill_student(run: Run, teacher: PreTrainedModel, processor, teacher_settings: dict) -> PreTrainedModel:
    """Stage 3: make a student from the teacher and train it with ``run.exp_args.method``."""
    directory = Path(run.training_args.output_dir) / "student"
    settings = student_settings(run, teacher_settings)
    if stage_done(directory, settings, run.exp_args.overwrite_output_dir):
        announce("student", f"reusing {directory} (trained with the same settings)")
        return AutoModelForSequenceClassification.from_pretrained(str(directory))
    set_seed(run.training_args.seed)  # a student from student_config starts from seeded random weights
    student = new_student(run.model_args, teacher)
    # With a teacher, the batches carry every modality it needs (the trainers give a unimodal student only its
    # own); labels only ('none', a plain Trainer) collates the student's own modalities.
    collator = make_collator(run, student if run.exp_args.method == "none" else teacher, processor)
    args = student_training_args(run.training_args, run.exp_args.method)
    # Teacher outputs first, labels removed after: one cache file serves every seed and labelled fraction.
    train = training_split(run, train=with_teacher_outputs(run, teacher, collator, run.dataset["train"]))
    validation = with_teacher_outputs(run, teacher, collator, run.dataset["validation"])
    common = {
        "model": student,
        "processing_class": processor,
        "args": args,
        "train_dataset": train,
        "eval_dataset": validation,
        "data_collator": collator,
        "compute_metrics": make_compute_metrics(resolve_problem_type(student.config)),
    }
    if run.exp_args.method == "none":
        trainer = Trainer(**common)
    elif run.exp_args.method == "kd":
        trainer = DistillationTrainer(teacher_model=teacher, **common)
    else:
        trainer = MSDTrainer(teacher_model=teacher, modalities=default_modalities(teacher), **common)
    announce("student", f"training with method '{run.exp_args.method}' on {len(train)} examples")
    label_progress_bars(trainer, "student")
    result = trainer.train(resume_from_checkpoint=run.training_args.resume_from_checkpoint)
    check_finite("student", student, result.metrics)
    trainer.save_model(str(directory))
    if trainer.is_world_process_zero():
        add_pipeline_code(directory)  # servable as saved: pipeline(model=directory, trust_remote_code=True)
        (directory / TRAIN_RESULTS).write_text(json.dumps(result.metrics | {"steps": result.global_step}))
    mark_done(directory, settings)
    return student


def new_student(model_args: ModelArguments, teacher: PreTrainedModel) -> PreTrainedModel:
    """The untrained student: built from ``student_config`` (random weights,
    :func:`hf_msd.models.student_from_config`) or made from the teacher's layers
    (:func:`hf_msd.models.make_student`, ``student_*_layers``)."""
    if model_args.student_config is not None:
        overrides = json_object("student_config", model_args.student_config)
        return student_from_config(teacher, overrides, modalities=model_args.modalities())
    return make_student(
        teacher,
        modalities=model_args.modalities(),
        fusion_layers_to_keep=layer_list("student_fusion_layers", model_args.student_fusion_layers),
        text_layers_to_keep=layer_list("student_text_layers", model_args.student_text_layers),
        image_layers_to_keep=layer_list("student_image_layers", model_args.student_image_layers),
    )


def student_training_args(training_args: MSDTrainingArguments, method: str) -> TrainingArguments:
    """The student's training arguments: the run's, checkpointing under ``checkpoints/student`` (plain
    ``TrainingArguments`` for ``method='none'``, which trains with `Trainer`)."""
    checkpoints = str(Path(training_args.output_dir) / "checkpoints" / "student")
    ddp = {"ddp_find_unused_parameters": find_unused_parameters(training_args)}
    if method == "none":
        return base_training_args(training_args, output_dir=checkpoints, **ddp)
    args = dataclasses.replace(training_args, output_dir=checkpoints, **ddp)
    args.remove_unused_columns = False
    args.push_to_hub = False
    return args


def with_teacher_outputs(run: Run, teacher: PreTrainedModel, collator, dataset):
    """``dataset`` (a split of the run) with the teacher's cached logits
    (:func:`hf_msd.precompute_teacher_outputs`) for ``kd`` / ``msd``, unless ``cache_teacher_outputs``
    is off."""
    if run.exp_args.method == "none" or not run.exp_args.cache_teacher_outputs:
        return dataset
    cache_dir = run.exp_args.teacher_cache_dir or str(Path(run.training_args.output_dir) / "teacher_outputs")
    return precompute_teacher_outputs(
        teacher,
        dataset,
        default_modalities(teacher),
        collator,
        batch_size=run.training_args.per_device_eval_batch_size,
        cache_dir=cache_dir,
        device=run.training_args.device,
    )
