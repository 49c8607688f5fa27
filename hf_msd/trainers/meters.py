"""What the distillation trainers keep from one call to the next, each as a small named object.

- :class:`StepWindow`: the counts of the accumulated batch of the optimizer step under way, valid inside
  ``training_step`` only (a direct ``compute_loss`` call uses its own batch's counts, as `Trainer` does);
- :class:`TermLog`: the loss terms' sums and counts over a logging window (``<name>_loss`` logs);
- :class:`WeightLog`: the modality weights' sums over a logging window (``modality_weight_<name>`` logs);
- :class:`AgreementMeter`: the per-example teacher agreement of one evaluation loop.

``reduce`` arguments sum a tensor over the processes (``accelerator.reduce(t, reduction="sum")``).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping, Sequence

import torch

from ..distillation import objective

Reduce = Callable[[torch.Tensor], torch.Tensor]


class StepWindow:
    """The optimizer step under way: the counts of its whole accumulated batch and the number of training
    micro-batches run so far (named by error messages)."""

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None
        self.micro_batches = 0
        self.active = False

    @contextlib.contextmanager
    def step(self) -> Iterator[None]:
        """The scope of one ``training_step``: :attr:`current` gives the window's counts inside it."""
        self.active, self.micro_batches = True, self.micro_batches + 1
        try:
            yield
        finally:
            self.active = False

    @property
    def current(self) -> torch.Tensor | None:
        """The accumulated batch's counts inside a training step, else ``None``."""
        return self.counts if self.active else None


class TermLog:
    """Sums of the loss terms and of the counts (:func:`~hf_msd.distillation.objective.count_batch`) over a
    logging window."""

    def __init__(self, device: torch.device | str) -> None:
        self.sums: dict[str, torch.Tensor] = {}
        self.counts = torch.zeros(len(objective.COUNT_NAMES), device=device)

    def add(self, terms: Mapping[str, torch.Tensor], counts: torch.Tensor) -> None:
        for name, value in terms.items():
            value = value.detach().sum()
            self.sums[name] = self.sums.get(name, torch.zeros_like(value)) + value
        self.counts = self.counts + counts.to(self.counts.device)

    def pop_means(self, reduce: Reduce, token_level: str | None) -> dict[str, float]:
        """``{"<name>_loss": mean}`` over the window (every process), by the loss's divisor rule; then
        empty."""
        if not self.sums:
            return {}
        names = sorted(self.sums)
        sums = reduce(torch.cat([torch.stack([self.sums[name] for name in names]), self.counts]))
        count = len(objective.COUNT_NAMES)
        means = objective.term_means(dict(zip(names, sums[:-count])), sums[-count:], token_level)
        self.sums, self.counts = {}, torch.zeros_like(self.counts)
        return {f"{name}_loss": value for name, value in means.items()}


class WeightLog:
    """Sums of the per-example modality weights (B, M) over a logging window."""

    def __init__(self, names: Sequence[str], device: torch.device | str) -> None:
        self.names = list(names)
        self.sums = torch.zeros(len(names), device=device)
        self.count = torch.zeros((), device=device)

    def add(self, weights: torch.Tensor) -> None:
        self.sums = self.sums + weights.detach().sum(dim=0)
        self.count = self.count + weights.shape[0]

    def pop_means(self, reduce: Reduce) -> dict[str, float]:
        """``{"modality_weight_<name>": mean}`` over the window (every process); then empty."""
        if self.count.item() == 0:
            return {}
        sums = reduce(torch.cat([self.sums, self.count[None]]))
        self.sums, self.count = torch.zeros_like(self.sums), torch.zeros_like(self.count)
        return {
            f"modality_weight_{name}": (value / sums[-1]).item() for name, value in zip(self.names, sums[:-1])
        }


class AgreementMeter:
    """The per-example teacher agreement (:func:`~hf_msd.distillation.objective.teacher_agreement`) of one
    evaluation loop; collects only between :meth:`start` and :meth:`stop`."""

    def __init__(self) -> None:
        self.values: list[torch.Tensor] | None = None

    @property
    def collecting(self) -> bool:
        return self.values is not None

    def start(self) -> None:
        self.values = []

    def add(self, agreement: torch.Tensor) -> None:
        self.values.append(agreement.cpu())

    def stop(self) -> float | None:
        """The mean agreement of the loop, ``None`` without any; collection stops."""
        values, self.values = self.values, None
        return torch.cat(values).mean().item() if values else None
