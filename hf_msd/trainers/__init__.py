"""Trainers: `DistillationTrainer` (classic knowledge distillation) and its arguments."""

from .distillation_config import DistillationTrainingArguments
from .distillation_trainer import DistillationTrainer

__all__ = ["DistillationTrainer", "DistillationTrainingArguments"]
