"""Trainers: `DistillationTrainer` (knowledge distillation) and `MSDTrainer` (modality-specific
distillation), each with its `TrainingArguments` subclass."""

from .distillation_config import DistillationTrainingArguments
from .distillation_trainer import DistillationTrainer
from .msd_config import MSDTrainingArguments
from .msd_trainer import MSDTrainer

__all__ = ["DistillationTrainer", "DistillationTrainingArguments", "MSDTrainer", "MSDTrainingArguments"]
