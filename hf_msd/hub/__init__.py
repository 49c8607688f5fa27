"""Publishing helpers: model cards for distilled students."""

from .model_card import build_model_card

__all__ = ["build_model_card"]
