"""The end-to-end distillation workflow behind ``examples/run_msd.py``, callable from Python.

Stages, each in its own module and written to its own folder under ``output_dir``, skipped when its output
already exists *with the same settings* (a ``hf_msd_stage.json`` records them, built in
:mod:`~hf_msd.experiment.settings`; different settings raise an error naming the changed fields unless
``overwrite_output_dir`` is set, so nothing written is silently reused or lost):

0. the data (:mod:`~hf_msd.experiment.data_stage`): train / validation / test splits.
1. ``teacher/`` (:mod:`~hf_msd.experiment.teacher_stage`): load ``teacher_name_or_path``, or train a
   multimodal teacher (text tower initialised from ``text_encoder_name_or_path``, built after
   ``set_seed(--seed)``) on the train split with the ``teacher_*`` settings (own schedule, validation and
   best-checkpoint selection); saved with its processor. With ``compact_vocabulary`` the tokenizer and the
   word embeddings keep only the training texts' tokens.
2. ``saliency/`` (:mod:`~hf_msd.experiment.saliency_stage`): the teacher's modality saliency on the
   validation split (``saliency.json``, ``saliency.png``).
3. ``student/`` (:mod:`~hf_msd.experiment.student_stage`): a student made from the teacher
   (:func:`hf_msd.models.make_student`; multimodal or unimodal) or built from ``student_config``
   (:func:`hf_msd.models.student_from_config`, from scratch), trained with ``method`` = ``none`` (labels
   only), ``kd`` or ``msd`` on the train split, where ``labeled_fraction`` / ``max_labeled_samples`` keep
   only a seeded subset of labels (the rest are distilled without a label); saved with the processor.
4. Evaluation (:mod:`~hf_msd.experiment.evaluation_stage`): teacher and student metrics on the test split
   with both modalities and with each modality alone (easy-VQA: also per question type), then their
   batched inference speed side by side.
5. The report (:mod:`~hf_msd.experiment.report`): ``summary.json`` (and a console table), the student's
   model card (``README.md``) and saliency plot; push to the Hub with ``push_to_hub``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ..trainers import MSDTrainingArguments
from .arguments import DataArguments, ExperimentArguments, ModelArguments, check_student_schedule
from .data_stage import load_data, training_split
from .evaluation_stage import evaluate_models, measure_speed
from .output_lock import output_dir_lock
from .report import check_hub_model_id, format_summary, push_student, write_report
from .run import TRAIN_RESULTS, Run
from .runtime import check_no_deepspeed, for_this_machine
from .saliency_stage import saliency_report
from .student_stage import distill_student, new_student
from .teacher_stage import new_teacher, resolve_path, train_or_load_teacher


def run_experiment(
    model_args: ModelArguments,
    data_args: DataArguments,
    exp_args: ExperimentArguments,
    training_args: MSDTrainingArguments,
) -> dict[str, Any]:
    """Run every stage (see the module docstring) and return the summary written to ``summary.json``.

    A student schedule of no step (:func:`~hf_msd.experiment.arguments.check_student_schedule`) is refused
    first, and so is DeepSpeed (:func:`~hf_msd.experiment.runtime.check_no_deepspeed`). ``output_dir``
    is locked for the run (:mod:`hf_msd.experiment.output_lock`): a second run into the same folder raises
    :class:`~hf_msd.experiment.output_lock.OutputDirLockedError` naming the first."""
    check_student_schedule(training_args)
    check_no_deepspeed(training_args)
    training_args = for_this_machine(training_args)  # decides which process is the main one
    with output_dir_lock(training_args.output_dir, main_process=training_args.process_index == 0):
        return _run_stages(model_args, data_args, exp_args, training_args)


def _run_stages(
    model_args: ModelArguments,
    data_args: DataArguments,
    exp_args: ExperimentArguments,
    training_args: MSDTrainingArguments,
) -> dict[str, Any]:
    if training_args.push_to_hub:
        check_hub_model_id(training_args)  # before any training, not after
    dataset = load_data(data_args, seed=training_args.seed)
    run = Run(model_args, data_args, exp_args, training_args, dataset)
    teacher, processor, teacher_settings = train_or_load_teacher(run)
    plot = saliency_report(run, teacher, processor, teacher_settings)
    student = distill_student(run, teacher, processor, teacher_settings)
    models = {"teacher": teacher, "student": student}
    evaluation = evaluate_models(run, models, processor)
    speed = measure_speed(run, models, processor)
    summary = write_report(run, teacher, student, evaluation, speed, saliency_plot=plot)
    if training_args.push_to_hub:
        push_student(Path(training_args.output_dir) / "student", training_args)
    return summary


__all__ = [
    "TRAIN_RESULTS",
    "Run",
    "distill_student",
    "evaluate_models",
    "format_summary",
    "load_data",
    "measure_speed",
    "new_student",
    "new_teacher",
    "push_student",
    "resolve_path",
    "run_experiment",
    "saliency_report",
    "train_or_load_teacher",
    "training_split",
]
