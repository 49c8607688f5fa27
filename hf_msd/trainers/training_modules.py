"""The modules a distillation trainer trains beside the student (projections, learned loss weights).

:class:`TrainingModules` owns them and the rest of the training-only state (:class:`TrainingState`: the
population saliency, the meta-validation stream): one parameter group in the student's optimizer, their
gradients zeroed at each new accumulation cycle, all-reduced across processes and clipped together with the
student's, and their state saved with every checkpoint, restored on resume and, with
``load_best_model_at_end``, from the best checkpoint. None of it is written by ``save_model``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
from torch import nn

from .training_state import Stateful, TrainingState


class TrainingModules:
    """The training-only modules (``modules[name]``) and state of one trainer.

    Args:
        add_callback: the trainer's ``add_callback``; the state's callback (checkpoint save, best-model
            restore) joins the Trainer's callbacks with the first registered part, so a run without
            training-only state has `Trainer`'s callbacks.
        device: where registered modules are placed.
    """

    def __init__(self, add_callback: Callable[[Any], None], device: torch.device | str) -> None:
        self.modules = nn.ModuleDict()
        self.state = TrainingState()
        self._add_callback, self._device = add_callback, device
        self._grad_step = -1
        self.restored_from: str | None = None  #: the checkpoint the state was last restored from

    def register_state(self, name: str, part: Stateful) -> None:
        """Add ``part`` (``state_dict()`` / ``load_state_dict()``) to the state saved with each checkpoint."""
        if not self.state.parts:
            self._add_callback(self.state)
        self.state.register(name, part)

    def register(self, name: str, module: nn.Module) -> None:
        """Add a module trained with the student but not part of it."""
        if name in self.modules:
            raise ValueError(f"A training module named {name!r} is already registered.")
        if not len(self.modules):
            self.register_state("training_modules", self.modules)
        self.modules[name] = module.to(self._device)

    def parameters(self) -> list[nn.Parameter]:
        """The trainable parameters of the registered modules."""
        return [p for p in self.modules.parameters() if p.requires_grad]

    def add_to(self, optimizer: torch.optim.Optimizer, weight_decay: float) -> None:
        """Add the parameters ``optimizer`` does not hold yet as one parameter group."""
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for p in self.parameters() if id(p) not in in_optimizer]
        if new:
            optimizer.add_param_group({"params": new, "weight_decay": weight_decay})

    def start_micro_batch(self, global_step: int) -> None:
        """Zero the gradients at the first micro-batch of an optimizer step (the Trainer zeroes only the
        student's)."""
        if self._grad_step != global_step:
            for p in self.parameters():
                p.grad = None
            self._grad_step = global_step

    def all_reduce_gradients(self, num_processes: int) -> None:
        """Average the gradients over the processes (they are outside DDP), as DDP averages the student's."""
        if num_processes == 1:
            return
        for p in self.parameters():
            if p.grad is None:
                p.grad = torch.zeros_like(p)
            torch.distributed.all_reduce(p.grad)
            p.grad /= num_processes

    def clip_grad_norm(self, model: nn.Module, accelerator, max_norm: float) -> torch.Tensor:
        """Clip the student's and these modules' gradients together, by their joint norm; returns it."""
        return accelerator.clip_grad_norm_([*model.parameters(), *self.parameters()], max_norm)

    def restore(self, checkpoint: str | None) -> None:
        """Restore every part from ``checkpoint`` (once per checkpoint), then make every process start from
        the main process's values."""
        if checkpoint is not None and checkpoint != self.restored_from:
            self.state.load(checkpoint)
            self.restored_from = checkpoint
        self.state.synchronize()
