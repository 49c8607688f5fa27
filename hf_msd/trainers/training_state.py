"""The training-only state of the distillation trainers, and which checkpoint a resume starts from.

A distillation run trains more than the student: projection layers for hidden-state distillation, learned
modality weights with their own optimizer, the population saliency and the position of the
meta-validation stream (:mod:`hf_msd.trainers.meta_validation`). None of it belongs in the saved student.
:class:`TrainingState` owns all of it: the trainers register each part once, and it

- saves every part to ``<checkpoint>/hf_msd_training_state.pt`` when the Trainer saves a checkpoint
  (the public ``on_save`` callback; main process only; written to a temporary file and renamed, so a kill
  never leaves half a file);
- restores every part from a checkpoint (:meth:`TrainingState.load`), called by the trainers' ``train()``
  before any training work on every process, so it runs under every backend (``Trainer._load_from_checkpoint``
  is skipped under DeepSpeed);
- makes every process start from the main process's values (:meth:`TrainingState.synchronize`);
- with ``load_best_model_at_end``, restores every part from the best checkpoint at the end of training, as
  the Trainer restores the student (``on_train_end``).

During training the parts stay identical across processes because the trainers all-reduce their
gradients (projections) and hypergradients (learned weights) before each update.

:func:`resolve_checkpoint` turns ``resume_from_checkpoint=True`` into the newest *complete* checkpoint
(a kill while a checkpoint is written leaves an incomplete folder: it is skipped with a warning).
"""

from __future__ import annotations

import json
import os
import re
from typing import Any, Protocol

import torch
from transformers import TrainerCallback
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR
from transformers.utils import logging

logger = logging.get_logger(__name__)

TRAINING_STATE_NAME = "hf_msd_training_state.pt"
#: Written last by `Trainer._save_checkpoint`: its presence means the Trainer's part of a checkpoint is whole.
TRAINER_STATE_NAME = "trainer_state.json"
_CHECKPOINT = re.compile(rf"^{PREFIX_CHECKPOINT_DIR}-(\d+)$")


class Stateful(Protocol):
    def state_dict(self) -> dict[str, Any]: ...

    def load_state_dict(self, state: dict[str, Any]) -> Any: ...


class TrainingState(TrainerCallback):
    """Owner of a trainer's training-only state: named parts with ``state_dict()`` / ``load_state_dict()``
    (modules, or small stateful objects), saved with every checkpoint and restored on resume."""

    def __init__(self) -> None:
        self.parts: dict[str, Stateful] = {}

    def register(self, name: str, part: Stateful) -> None:
        """Add ``part`` under ``name`` (its key in the checkpoint file)."""
        if name in self.parts:
            raise ValueError(f"A training-state part named {name!r} is already registered.")
        self.parts[name] = part

    def state_dict(self) -> dict[str, dict[str, Any]]:
        return {name: part.state_dict() for name, part in self.parts.items()}

    def is_complete(self, checkpoint: str) -> bool:
        """Whether ``checkpoint`` holds a Trainer state that loads and (with parts) this state's file."""
        return _trainer_state_loads(checkpoint) and self.has_state(checkpoint)

    def has_state(self, checkpoint: str) -> bool:
        """Whether ``checkpoint`` holds this state's file (always True when no part is registered; the file
        is written atomically, so it exists whole or not at all)."""
        return not self.parts or os.path.isfile(os.path.join(checkpoint, TRAINING_STATE_NAME))

    def load(self, checkpoint: str) -> None:
        """Restore every part from ``checkpoint``; raise naming the parts if its file is missing."""
        if not self.parts:
            return
        path = os.path.join(checkpoint, TRAINING_STATE_NAME)
        if not os.path.isfile(path):
            raise FileNotFoundError(
                f"{path} is missing: this checkpoint has no training-only state ({', '.join(self.parts)}); "
                "resume from a checkpoint saved by the same trainer setup."
            )
        saved = torch.load(path, map_location="cpu", weights_only=True)
        missing = sorted(set(self.parts) - set(saved))
        if missing:
            raise ValueError(
                f"{path} has no state for {missing} (it holds {sorted(saved)}): it was saved by another "
                "trainer setup (e.g. other loss weights or modality_weighting)."
            )
        for name, part in self.parts.items():
            part.load_state_dict(saved[name])

    def synchronize(self) -> None:
        """Copy the main process's tensors of every module part to the other processes (no-op alone)."""
        if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
            return
        for part in self.parts.values():
            if isinstance(part, torch.nn.Module):
                for tensor in part.state_dict().values():
                    if torch.is_tensor(tensor):
                        torch.distributed.broadcast(tensor, src=0)

    def on_train_end(self, args, state, control, **kwargs):
        """With ``load_best_model_at_end``, the Trainer has restored the student from the best checkpoint:
        restore every part from it too (projections, learned weights...), so the model left for evaluation
        is the best checkpoint's whole."""
        if args.load_best_model_at_end and state.best_model_checkpoint is not None:
            self.load(state.best_model_checkpoint)

    def on_save(self, args, state, control, **kwargs):
        if not (self.parts and args.should_save):
            return
        checkpoint = os.path.join(args.output_dir, f"{PREFIX_CHECKPOINT_DIR}-{state.global_step}")
        if not os.path.isdir(checkpoint):
            return
        path = os.path.join(checkpoint, TRAINING_STATE_NAME)
        torch.save(self.state_dict(), f"{path}.tmp")
        os.replace(f"{path}.tmp", path)


class _AllReduceSum(torch.autograd.Function):
    """Sum over processes; its backward sums the incoming gradients over processes too."""

    @staticmethod
    def forward(ctx, tensor: torch.Tensor) -> torch.Tensor:
        tensor = tensor.clone()
        torch.distributed.all_reduce(tensor)
        return tensor

    @staticmethod
    def backward(ctx, grad: torch.Tensor) -> torch.Tensor:
        return _AllReduceSum.apply(grad)


def average_across_processes(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Each tensor averaged over the processes (one all-reduce), differentiably: the backward pass sums the
    incoming gradients over the processes. Unchanged on one process."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return tensors
    world_size = torch.distributed.get_world_size()
    if world_size == 1 or not tensors:
        return tensors
    flat = _AllReduceSum.apply(torch.cat([tensor.reshape(-1) for tensor in tensors])) / world_size
    return [part.view_as(tensor) for part, tensor in zip(flat.split([t.numel() for t in tensors]), tensors)]


def resolve_checkpoint(
    resume_from_checkpoint: str | bool | None, output_dir: str, training_state: TrainingState
) -> str | None:
    """The checkpoint to resume from: a given path as is; for ``True`` the newest complete checkpoint in
    ``output_dir`` (incomplete ones, left by a kill while saving, are skipped with a warning). Raises like
    `Trainer.train` when ``True`` finds none."""
    if not (isinstance(resume_from_checkpoint, bool) and resume_from_checkpoint):
        return resume_from_checkpoint or None
    found = []
    if os.path.isdir(output_dir):
        found = [(int(m.group(1)), name) for name in os.listdir(output_dir) if (m := _CHECKPOINT.match(name))]
    without_state = []
    for _, name in sorted(found, reverse=True):
        checkpoint = os.path.join(output_dir, name)
        if not _trainer_state_loads(checkpoint):
            logger.warning(
                f"Skipping the incomplete checkpoint {checkpoint} (its {TRAINER_STATE_NAME} is missing or "
                "does not load: the run was probably killed while saving it); trying an older one."
            )
        elif not training_state.has_state(checkpoint):
            without_state.append(checkpoint)
            logger.warning(
                f"Skipping the incomplete checkpoint {checkpoint}: it has no {TRAINING_STATE_NAME}, so "
                f"none of the training-only state this run needs ({', '.join(training_state.parts)}): "
                "killed while saving it, or saved by a run without that state; trying an older one."
            )
        else:
            return checkpoint
    if found and len(without_state) == len(found):
        raise ValueError(
            f"No checkpoint in {output_dir} holds the training-only state this run needs "
            f"({', '.join(training_state.parts)}, e.g. learned modality weights): they were saved by a run "
            "without it (e.g. modality_weighting='uniform', or other loss weights). Resume with the settings "
            "that saved them, or train without resume_from_checkpoint in a new output_dir."
        )
    raise ValueError(f"No valid checkpoint found in output directory ({output_dir})")


def _trainer_state_loads(checkpoint: str) -> bool:
    """Whether ``checkpoint``'s ``trainer_state.json`` exists and parses (transformers writes it in place,
    so a kill can leave it empty or cut)."""
    try:
        with open(os.path.join(checkpoint, TRAINER_STATE_NAME)) as file:
            json.load(file)
    except (OSError, ValueError):
        return False
    return True
