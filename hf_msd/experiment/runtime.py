"""Training-argument values the workflow picks for the machine and for its models, where transformers'
defaults would run the wrong way or print warnings a user can do nothing about."""

from __future__ import annotations

import dataclasses
import os
from typing import TypeVar

import torch
from transformers import TrainingArguments

Args = TypeVar("Args", bound=TrainingArguments)


def for_this_machine(args: Args) -> Args:
    """``args`` for a machine without an accelerator (no GPU / MPS / XPU...): ``use_cpu``, so that
    ``accelerate launch`` on CPU processes trains them as one distributed (gloo) run instead of independent
    copies, and no pinned memory (torch ignores it there, with a warning). DeepSpeed and FSDP runs keep their
    settings (their CPU back ends need ``use_cpu=False``); with an accelerator ``args`` is returned as is."""
    if torch.accelerator.is_available():
        return args
    plugin = (
        args.deepspeed
        or args.fsdp
        or any(
            os.environ.get(f"ACCELERATE_USE_{name}", "false").lower() in ("1", "true")
            for name in ("DEEPSPEED", "FSDP")
        )
    )
    return dataclasses.replace(args, use_cpu=args.use_cpu or not plugin, dataloader_pin_memory=False)


def find_unused_parameters(args: TrainingArguments, batches_may_lack_a_modality: bool = False) -> bool:
    """``ddp_find_unused_parameters`` for a stage: the user's value when set, else whether a batch can leave
    a tower unused. The workflow's models use every trainable parameter on a batch with all their
    modalities; modality dropout removes one modality from whole batches, and DDP must then look for the
    parameters that got no gradient (an extra pass over the graph each step, and a warning when none)."""
    if args.ddp_find_unused_parameters is not None:
        return args.ddp_find_unused_parameters
    return batches_may_lack_a_modality
