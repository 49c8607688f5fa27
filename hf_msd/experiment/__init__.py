"""The end-to-end distillation workflow behind ``examples/run_msd.py``, callable from Python: see
:func:`run_experiment` (:mod:`hf_msd.experiment.workflow`; one module per stage: ``data_stage``,
``teacher_stage``, ``saliency_stage``, ``student_stage``, ``evaluation_stage``, ``report``)."""

from .arguments import DataArguments, ExperimentArguments, ModelArguments, parse_arguments
from .output_lock import OutputDirLockedError
from .stages import StageMismatchError
from .workflow import (
    Run,
    distill_student,
    evaluate_models,
    load_data,
    new_teacher,
    run_experiment,
    saliency_report,
    train_or_load_teacher,
)

__all__ = [
    "DataArguments",
    "ExperimentArguments",
    "ModelArguments",
    "OutputDirLockedError",
    "Run",
    "StageMismatchError",
    "distill_student",
    "evaluate_models",
    "load_data",
    "new_teacher",
    "parse_arguments",
    "run_experiment",
    "saliency_report",
    "train_or_load_teacher",
]
