"""Modality dropout for a teacher's training: batches that randomly lose one modality.

A teacher trained only on full inputs ``x`` sees its own modality-only inputs ``x_m`` (what MSD distils and
what a unimodal student imitates) out of distribution. Modality dropout trains it on some of them:

- for each *training* batch, draw ``u ~ U[0, 1)``; if ``u < p``, draw one modality uniformly at random among
  the ``M`` modalities and remove it from the whole batch with its own removal strategy
  (:func:`hf_msd.modalities.modality.remove`; with two modalities this is ``restrict(batch, keep=<the
  other>)``);
  otherwise the batch is unchanged;
- the draws come from a ``torch.Generator`` seeded with ``seed`` (the training seed), in this order per
  batch: ``u = torch.rand(1)``, then, only when ``u < p``, ``index = torch.randint(M, (1,))``. The same
  seed and the same sequence of batches give the same removals;
- evaluation batches are never changed: :class:`ModalityDropoutTrainer` uses the dropout collator for its
  training dataloader only.

With ``dataloader_num_workers > 0`` each worker process holds a copy of the generator, so the draws repeat
across workers; keep 0 workers (the default) for the definition above.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch.utils.data import DataLoader
from transformers import Trainer

from .modality import Modality, remove


def check_modality_dropout(name: str, probability: float) -> None:
    """Raise a ValueError naming ``name`` unless ``0 <= probability < 1``."""
    if not (isinstance(probability, (int, float)) and 0 <= probability < 1):
        raise ValueError(
            f"{name} must be a probability in [0, 1) (0 = off), got {probability!r}: with 1 no batch would "
            "keep both modalities."
        )


class ModalityDropoutCollator:
    """Wrap a collator so that each batch loses one random modality with probability ``probability``.

    Args:
        collator: the wrapped collator (examples -> batch dict of tensors).
        modalities: the batch's modalities (e.g. ``default_modalities(teacher)``), each removed by its own
            strategy; at least two.
        probability: ``p`` in [0, 1): the chance that a batch loses a modality (0 = the wrapped collator).
        seed: seed of the generator of the draws (see the module docstring for their order).
    """

    def __init__(
        self,
        collator: Callable[[list[dict[str, Any]]], dict[str, Any]],
        modalities: Sequence[Modality],
        probability: float,
        seed: int = 0,
    ):
        check_modality_dropout("probability", probability)
        if len(modalities) < 2:
            raise ValueError(f"Modality dropout needs at least two modalities, got {len(modalities)}.")
        self.collator = collator
        self.modalities = list(modalities)
        self.probability = probability
        self.generator = torch.Generator().manual_seed(seed)

    def drawn_modality(self) -> str | None:
        """The next draw: the name of the modality to remove, or None to keep the batch unchanged."""
        if torch.rand(1, generator=self.generator).item() >= self.probability:
            return None
        index = int(torch.randint(len(self.modalities), (1,), generator=self.generator).item())
        return self.modalities[index].name

    def __call__(self, examples: list[dict[str, Any]]) -> dict[str, Any]:
        batch = self.collator(examples)
        dropped = self.drawn_modality()
        return batch if dropped is None else remove(batch, self.modalities, dropped)


class ModalityDropoutTrainer(Trainer):
    """A ``Trainer`` whose *training* batches go through ``modality_dropout`` (a
    :class:`ModalityDropoutCollator` wrapping the trainer's ``data_collator``); evaluation and prediction
    batches use the plain ``data_collator``."""

    def __init__(self, *args: Any, modality_dropout: ModalityDropoutCollator, **kwargs: Any):
        super().__init__(*args, **kwargs)
        self.modality_dropout = modality_dropout

    def get_train_dataloader(self) -> DataLoader:
        plain = self.data_collator
        self.data_collator = self.modality_dropout
        try:
            return super().get_train_dataloader()
        finally:
            self.data_collator = plain
