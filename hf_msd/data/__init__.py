"""Datasets and collation for multimodal distillation: easy-VQA, the user's local files, the collator
and the paired collator for a teacher and a student with different processors."""

from .collator import MultimodalDataCollator
from .datasets_source import load_datasets_data
from .easy_vqa import easy_vqa_answers, easy_vqa_question_types, load_easy_vqa
from .local import DataValidationError, load_local_dataset
from .paired import TEACHER_INPUT_PREFIX, PairedCollator
from .splits import (
    carve_validation,
    keep_labels_on_subset,
    labelled_rows,
    limit_splits,
    select_subset,
    split_by_group,
)
from .validation import validate_examples

__all__ = [
    "TEACHER_INPUT_PREFIX",
    "DataValidationError",
    "MultimodalDataCollator",
    "PairedCollator",
    "carve_validation",
    "easy_vqa_answers",
    "easy_vqa_question_types",
    "keep_labels_on_subset",
    "labelled_rows",
    "limit_splits",
    "load_datasets_data",
    "load_easy_vqa",
    "load_local_dataset",
    "select_subset",
    "split_by_group",
    "validate_examples",
]
