"""Training-argument values the workflow picks for the machine and for its models, where transformers'
defaults would run the wrong way or print warnings a user can do nothing about."""

from __future__ import annotations

import dataclasses
import os
from typing import TypeVar

import torch
from transformers import TrainingArguments

from ..errors import InputValueError

Args = TypeVar("Args", bound=TrainingArguments)


#: The command that runs the workflow on several processes (DDP), named where DeepSpeed is refused.
DDP_COMMAND = "accelerate launch --multi_gpu --num_processes N examples/run_msd.py CONFIG"


def _launched_with(plugin: str) -> bool:
    return os.environ.get(f"ACCELERATE_USE_{plugin}", "false").lower() in ("1", "true")


def uses_deepspeed(args: TrainingArguments) -> bool:
    """Whether ``args`` run under DeepSpeed: a ``deepspeed`` config, ``accelerate launch --use_deepspeed``."""
    return bool(args.deepspeed) or _launched_with("DEEPSPEED")


def check_no_deepspeed(args: TrainingArguments) -> None:
    """Refuse, before any work, the workflow under DeepSpeed. ZeRO-3's ``zero.Init`` partitions every model
    the workflow builds or loads (a teacher built from a config fails in its weight initialisation), while
    its saliency, student-building and evaluation stages run those models outside a DeepSpeed engine; under
    ZeRO-2 the evaluation stage's ``Trainer.predict`` stops ("ZeRO inference only makes sense with ZeRO Stage
    3"). DDP runs the workflow on several processes; the trainers themselves train under ZeRO-2 and ZeRO-3."""
    if uses_deepspeed(args):
        raise InputValueError(
            "examples/run_msd.py does not run under DeepSpeed (--use_deepspeed / --deepspeed): its saliency, "
            "student and evaluation stages run the models outside DeepSpeed, which ZeRO-3 partitions and "
            f"whose ZeRO-2 evaluation stops; run it with DDP ({DDP_COMMAND}, on CPU with "
            "CUDA_VISIBLE_DEVICES=); DistillationTrainer and MSDTrainer train under ZeRO-2/3 "
            "(docs/workflow.md#deepspeed)."
        )


def for_this_machine(args: Args) -> Args:
    """``args`` for a machine without an accelerator (no GPU / MPS / XPU...): ``use_cpu``, so that
    ``accelerate launch`` on CPU processes trains them as one distributed (gloo) run instead of independent
    copies, and no pinned memory (torch ignores it there, with a warning). DeepSpeed and FSDP runs keep their
    settings (their CPU back ends need ``use_cpu=False``); with an accelerator ``args`` is returned as is."""
    if torch.accelerator.is_available():
        return args
    plugin = uses_deepspeed(args) or bool(args.fsdp) or _launched_with("FSDP")
    return dataclasses.replace(args, use_cpu=args.use_cpu or not plugin, dataloader_pin_memory=False)


def find_unused_parameters(args: TrainingArguments, batches_may_lack_a_modality: bool = False) -> bool:
    """``ddp_find_unused_parameters`` for a stage: the user's value when set, else whether a batch can leave
    a tower unused. The workflow's models use every trainable parameter on a batch with all their
    modalities; modality dropout removes one modality from whole batches, and DDP must then look for the
    parameters that got no gradient (an extra pass over the graph each step, and a warning when none)."""
    if args.ddp_find_unused_parameters is not None:
        return args.ddp_find_unused_parameters
    return batches_may_lack_a_modality
