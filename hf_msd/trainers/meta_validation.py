"""The held-out batches of the ``learned`` weights' meta step, as a resumable, process-split stream."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch


class MetaValidationBatches:
    """An endless, seeded stream of held-out batches, split across processes.

    The stream's examples are the concatenation of random permutations of the dataset (permutation ``e``
    drawn with seed ``seed + e``). Draw ``k`` is the ``k``-th global batch of ``batch_size * num_processes``
    consecutive examples of that stream; process ``r`` collates its ``r``-th slice of ``batch_size``. So
    several processes together see exactly the batch one process with ``batch_size * num_processes`` sees,
    and the whole state is the number of draws: :meth:`state_dict` saves it, so a resumed run continues
    the stream where the checkpoint left it instead of restarting it.
    """

    def __init__(
        self,
        dataset: Sequence,
        collate_fn: Callable[[list], dict[str, Any]],
        batch_size: int,
        seed: int,
        process_index: int = 0,
        num_processes: int = 1,
    ) -> None:
        if len(dataset) == 0:
            raise ValueError("The meta-validation data is empty: pass an eval_dataset with examples.")
        self.dataset, self.collate_fn = dataset, collate_fn
        self.batch_size, self.seed = batch_size, seed
        self.process_index, self.num_processes = process_index, num_processes
        self.draws = 0
        self._order, self._order_epoch = torch.empty(0, dtype=torch.long), -1

    def _example_index(self, position: int) -> int:
        epoch, offset = divmod(position, len(self.dataset))
        if self._order_epoch != epoch:
            generator = torch.Generator().manual_seed(self.seed + epoch)
            self._order, self._order_epoch = torch.randperm(len(self.dataset), generator=generator), epoch
        return int(self._order[offset])

    def next(self) -> dict[str, Any]:
        """This process's part of the next global batch, collated."""
        start = (self.draws * self.num_processes + self.process_index) * self.batch_size
        self.draws += 1
        return self.collate_fn(
            [self.dataset[self._example_index(p)] for p in range(start, start + self.batch_size)]
        )

    def state_dict(self) -> dict[str, int]:
        return {"draws": self.draws}

    def load_state_dict(self, state: dict[str, int]) -> None:
        self.draws = int(state["draws"])
