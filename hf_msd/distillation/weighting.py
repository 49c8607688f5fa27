"""Weights ``w_m`` of the modality-specific distillation terms.

The MSD loss adds ``sum_m w_m * KD(T(x_m), S(x_m))`` to the usual distillation loss. A weighting
strategy (registry :data:`WEIGHTINGS`, selected by ``MSDTrainingArguments.modality_weighting``) turns
the teacher's saliency (:mod:`hf_msd.distillation.saliency`) into per-example weights of shape (B, M). With
``lambda = modality_loss_weight`` and ``M`` modalities:

- ``uniform``: ``w_m = lambda``.
- ``population``: ``w_m = lambda * M * S_m / sum_k S_k`` with ``S_m`` the mean saliency of ``m`` over
  the training set, computed once before training. Equal saliencies give ``w_m = lambda``.
- ``instance``: ``w_m(x) = lambda * M * s_m(x) / sum_k s_k(x)`` per example (no gradient).
- ``learned``: ``w_m = lambda * M * softmax(alpha)_m``, ``alpha`` (M,) initialised to 0 (so
  ``w_m = lambda`` at the start), or with ``hidden_size > 0`` ``alpha(x) = MLP(s(x))`` a small network
  over the example's saliencies (last layer initialised to 0). ``alpha`` is trained by
  :meth:`LearnedWeighting.meta_step` (one-step look-ahead, see there), not by the main optimizer.

In ``population`` and ``instance`` negative saliencies are clamped to 0, and when all saliencies of an
example (or of the population) are 0 every weight is ``lambda``.
"""

from __future__ import annotations

import copy
from collections.abc import Callable, Sequence

import torch
from torch import nn


def saliency_weights(saliency: torch.Tensor, modality_loss_weight: float) -> torch.Tensor:
    """``lambda * M * s_m / sum_k s_k`` along the last dimension; (..., M) -> float32 (..., M).

    Negative values count as 0; where all are 0 the weights are ``lambda``.
    """
    saliency = saliency.detach().float().clamp_min(0.0)
    num_modalities = saliency.shape[-1]
    total = saliency.sum(dim=-1, keepdim=True)
    weights = (
        modality_loss_weight * num_modalities * saliency / total.clamp_min(torch.finfo(torch.float32).tiny)
    )
    return torch.where(total > 0, weights, torch.full_like(weights, modality_loss_weight))


class ModalityWeighting(nn.Module):
    """Base class: ``forward(batch_size, saliency=None) -> (batch_size, M)`` weights.

    Attributes:
        needs_instance_saliency: the strategy needs the per-example saliency ``s(x)`` (B, M), so the
            trainer computes it for every batch.
        needs_population_saliency: the trainer must call :meth:`set_population_saliency` before training.
        learned: the strategy has parameters trained by :meth:`LearnedWeighting.meta_step`.
    """

    needs_instance_saliency = False
    needs_population_saliency = False
    learned = False

    def __init__(self, modality_names: Sequence[str], modality_loss_weight: float = 1.0) -> None:
        super().__init__()
        self.modality_names = list(modality_names)
        self.modality_loss_weight = float(modality_loss_weight)

    @property
    def num_modalities(self) -> int:
        return len(self.modality_names)

    def forward(self, batch_size: int, saliency: torch.Tensor | None = None) -> torch.Tensor:
        raise NotImplementedError


class UniformWeighting(ModalityWeighting):
    """``w_m = modality_loss_weight`` for every modality and example."""

    def forward(self, batch_size: int, saliency: torch.Tensor | None = None) -> torch.Tensor:
        return torch.full((batch_size, self.num_modalities), self.modality_loss_weight)


class PopulationWeighting(ModalityWeighting):
    """``w_m = lambda * M * S_m / sum_k S_k`` from the population saliency ``S`` (M,).

    ``S`` and whether it was set (``population_saliency_set``) are persistent buffers, so they are saved in
    the state dict (checkpoints) and restored on resume.
    """

    needs_population_saliency = True

    def __init__(self, modality_names: Sequence[str], modality_loss_weight: float = 1.0) -> None:
        super().__init__(modality_names, modality_loss_weight)
        self.register_buffer("population_saliency", torch.zeros(len(self.modality_names)))
        self.register_buffer("population_saliency_set", torch.tensor(False))

    @property
    def has_population_saliency(self) -> bool:
        return bool(self.population_saliency_set)

    def set_population_saliency(self, saliency: torch.Tensor) -> None:
        """Store ``S`` (M,), the mean saliency of each modality over the training set; refuse NaN, inf or a
        negative value (naming the modalities), which would make every weight NaN."""
        saliency = torch.as_tensor(saliency, dtype=torch.float32).reshape(-1)
        if saliency.numel() != self.num_modalities:
            raise ValueError(f"Expected {self.num_modalities} population saliencies, got {saliency.numel()}.")
        if not (torch.isfinite(saliency).all() and (saliency >= 0).all()):
            values = {
                name: float(f"{value:.4g}") for name, value in zip(self.modality_names, saliency.tolist())
            }
            raise FloatingPointError(
                f"The population saliency {values} is not a finite number >= 0 for every modality: the "
                "teacher outputs it is averaged from contain NaN or inf (a NaN teacher, or a NaN in a cached "
                "teacher_logits column). Recompute the teacher outputs or fix the teacher."
            )
        self.population_saliency.copy_(saliency.to(self.population_saliency.device))
        self.population_saliency_set.fill_(True)

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        flag, saliency = prefix + "population_saliency_set", state_dict.get(prefix + "population_saliency")
        if flag not in state_dict and saliency is not None:  # saved when NaN meant "not set"
            state_dict[flag] = torch.isfinite(saliency).all()
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def forward(self, batch_size: int, saliency: torch.Tensor | None = None) -> torch.Tensor:
        if not self.has_population_saliency:
            raise RuntimeError(
                "Population saliency is not set: call set_population_saliency(S) before training."
            )
        weights = saliency_weights(self.population_saliency, self.modality_loss_weight)
        return weights.expand(batch_size, -1)


class InstanceWeighting(ModalityWeighting):
    """``w_m(x) = lambda * M * s_m(x) / sum_k s_k(x)`` from each example's saliency (B, M)."""

    needs_instance_saliency = True

    def forward(self, batch_size: int, saliency: torch.Tensor | None = None) -> torch.Tensor:
        if saliency is None:
            raise ValueError("Instance weighting needs the per-example saliency (B, M).")
        return saliency_weights(saliency, self.modality_loss_weight)


class LearnedWeighting(ModalityWeighting):
    """Weights learned by meta-learning: ``w = lambda * M * softmax(alpha)``.

    ``alpha`` is a parameter (M,) initialised to 0, or, with ``hidden_size > 0``, the output of a
    small MLP ``M -> hidden_size -> M`` (tanh) applied to the example's saliencies ``s(x)`` (its last
    layer initialised to 0, so every start is ``w_m = lambda``). The weights get no gradient from the
    training loss; :meth:`meta_step` updates them with their own Adam optimizer.
    """

    learned = True

    def __init__(
        self,
        modality_names: Sequence[str],
        modality_loss_weight: float = 1.0,
        learning_rate: float = 1e-2,
        hidden_size: int = 0,
    ) -> None:
        super().__init__(modality_names, modality_loss_weight)
        num = len(self.modality_names)
        self.needs_instance_saliency = hidden_size > 0
        if hidden_size > 0:
            self.network = nn.Sequential(nn.Linear(num, hidden_size), nn.Tanh(), nn.Linear(hidden_size, num))
            nn.init.zeros_(self.network[-1].weight)
            nn.init.zeros_(self.network[-1].bias)
        else:
            self.alpha = nn.Parameter(torch.zeros(num))
        self.optimizer = torch.optim.Adam(self.parameters(), lr=learning_rate)

    def forward(self, batch_size: int, saliency: torch.Tensor | None = None) -> torch.Tensor:
        if self.needs_instance_saliency:
            if saliency is None:
                raise ValueError("Learned weighting with a network needs the per-example saliency (B, M).")
            logits = self.network(saliency.detach().float())
        else:
            logits = self.alpha.expand(batch_size, -1)
        return self.modality_loss_weight * self.num_modalities * logits.softmax(dim=-1)

    def meta_step(
        self,
        train_loss_fn: Callable[[], torch.Tensor],
        val_loss_fn: Callable[[dict[str, torch.Tensor]], torch.Tensor],
        params: dict[str, torch.Tensor],
        inner_learning_rate: float,
        average: Callable[[list[torch.Tensor]], list[torch.Tensor]] | None = None,
    ) -> torch.Tensor:
        """One hypergradient step on the weights; returns the held-out loss after the look-ahead.

        With the student's parameters ``theta`` (``params``, e.g. its trainable ones) and the weights'
        parameters ``phi``:

        1. ``L_train(theta, phi) = train_loss_fn()``: the training loss on a batch with the current
           weights (not detached);
        2. look-ahead ``theta'(phi) = theta - inner_learning_rate * dL_train/dtheta`` (graph kept);
        3. ``L_val = val_loss_fn(theta')``: the task loss of the student with ``theta'`` on a
           held-out batch;
        4. ``phi <- Adam(phi, dL_val/dphi)``.

        With several processes, ``average`` (e.g.
        :func:`hf_msd.trainers.training_state.average_across_processes`) averages the training gradient of
        step 2 (differentiably, so every process looks ahead to the same ``theta'``) and the hypergradient of
        step 4 over the processes: each process then takes the step one process takes on the combined
        training and held-out batches (equal per-process batch sizes), and the weights stay identical.

        The student's own ``.grad`` are left untouched.
        """
        names = [name for name, tensor in params.items() if tensor.requires_grad]
        train_loss = train_loss_fn()
        grads = torch.autograd.grad(
            train_loss, [params[name] for name in names], create_graph=True, allow_unused=True
        )
        grads = [torch.zeros_like(params[n]) if g is None else g for n, g in zip(names, grads)]
        average = average or (lambda tensors: tensors)
        lookahead = dict(params)
        for name, grad in zip(names, average(grads)):
            lookahead[name] = params[name] - inner_learning_rate * grad
        val_loss = val_loss_fn(lookahead)
        own = [parameter for parameter in self.parameters() if parameter.requires_grad]
        hypergrads = torch.autograd.grad(val_loss, own, allow_unused=True)
        hypergrads = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(own, hypergrads)]
        self.optimizer.zero_grad(set_to_none=True)
        for parameter, grad in zip(own, average(hypergrads)):
            parameter.grad = grad.detach()
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return val_loss.detach()

    def get_extra_state(self) -> dict:
        """The weight optimizer's state, so ``state_dict()`` (and thus checkpoints) carries it."""
        return {"optimizer": copy.deepcopy(self.optimizer.state_dict())}

    def set_extra_state(self, state: dict) -> None:
        self.optimizer.load_state_dict(state["optimizer"])


WEIGHTINGS: dict[str, type[ModalityWeighting]] = {
    "uniform": UniformWeighting,
    "population": PopulationWeighting,
    "instance": InstanceWeighting,
    "learned": LearnedWeighting,
}


def build_weighting(
    name: str, modality_names: Sequence[str], modality_loss_weight: float = 1.0, **kwargs
) -> ModalityWeighting:
    """Instantiate the strategy ``name`` from :data:`WEIGHTINGS` (``kwargs`` go to learned strategies)."""
    if name not in WEIGHTINGS:
        raise ValueError(f"Unknown modality_weighting {name!r}; choose one of {sorted(WEIGHTINGS)}.")
    cls = WEIGHTINGS[name]
    return cls(modality_names, modality_loss_weight, **(kwargs if cls.learned else {}))
