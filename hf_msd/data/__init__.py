"""Datasets and collation for multimodal distillation: easy-VQA, the user's local files, the collator
the paired collator for a teacher and a student with different processors, and the chat-style collator of
generative vision-language models with its modality views."""

from .collator import MultimodalDataCollator
from .datasets_source import load_datasets_data
from .easy_vqa import easy_vqa_answers, easy_vqa_question_types, load_easy_vqa
from .generative import (
    DISTILLATION_LABELS,
    VIEW_NAMES,
    VisionLanguageCollator,
    check_same_vocabulary,
    view_inputs,
)
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
    "DISTILLATION_LABELS",
    "TEACHER_INPUT_PREFIX",
    "VIEW_NAMES",
    "DataValidationError",
    "MultimodalDataCollator",
    "PairedCollator",
    "VisionLanguageCollator",
    "carve_validation",
    "check_same_vocabulary",
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
    "view_inputs",
]
