"""Publishing helpers: model cards for distilled students (one builder for the workflow and the trainers)."""

from .model_card import (
    build_model_card,
    card_speed,
    hub_id,
    task_type,
    trainer_model_card,
    training_hyperparameters,
)

__all__ = [
    "build_model_card",
    "card_speed",
    "hub_id",
    "task_type",
    "trainer_model_card",
    "training_hyperparameters",
]
