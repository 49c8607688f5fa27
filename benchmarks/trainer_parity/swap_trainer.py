"""pytest plugin: transformers' own Trainer tests with ``transformers.Trainer`` swapped for an hf_msd trainer.

With the teacher-dependent terms off (``kd_loss_weight=0``, ``hard_label_weight=1``, and for MSD
``modality_loss_weight=0``) and the teacher a frozen copy of the model, ``DistillationTrainer`` and
``MSDTrainer`` must behave exactly like `transformers.Trainer`: every test that passes with `Trainer` must
pass with the swap. The swap keeps `Trainer`'s signature (positional arguments too); the arguments are
converted with ``from_training_arguments`` (every field kept). Select the trainer with the environment
variable ``HF_MSD_TRAINER`` (``none``, ``distillation`` or ``msd``); see README.md for the command.
"""

from __future__ import annotations

import copy
import inspect
import os
import sys

import transformers

from hf_msd.trainers import DistillationTrainer, MSDTrainer

_TRAINER_PARAMETERS = list(inspect.signature(transformers.Trainer.__init__).parameters)[1:]
_TRAINERS = {"distillation": DistillationTrainer, "msd": MSDTrainer}
_TERMS_OFF = {"distillation": {}, "msd": {"modality_loss_weight": 0.0}}


def _frozen_copy(model):
    teacher = copy.deepcopy(model)
    for parameter in teacher.parameters():
        parameter.requires_grad_(False)
    return teacher.eval()


def swapped_trainer(name: str) -> type:
    """A subclass of the hf_msd trainer ``name`` taking `Trainer`'s arguments, with the distillation off."""
    base = _TRAINERS[name]

    class Swapped(base):
        def __init__(self, *args, **kwargs):
            kwargs.update(zip(_TRAINER_PARAMETERS, args))
            model, model_init = kwargs.get("model"), kwargs.get("model_init")
            teacher = _frozen_copy(model if model is not None else model_init())
            training_args = kwargs.pop("args", None) or transformers.TrainingArguments("trainer_output")
            kwargs["args"] = base.args_class.from_training_arguments(
                training_args, kd_loss_weight=0.0, hard_label_weight=1.0, **_TERMS_OFF[name]
            )
            super().__init__(teacher_model=teacher, **kwargs)

    Swapped.__name__ = Swapped.__qualname__ = "Trainer"
    return Swapped


def pytest_configure(config):
    name = os.environ.get("HF_MSD_TRAINER", "distillation")
    if name == "none":
        return
    swapped = swapped_trainer(name)
    # Importing hf_msd may re-create the lazy ``transformers`` module: patch the one the tests will import.
    for module in {id(m): m for m in (transformers, sys.modules["transformers"])}.values():
        module.Trainer = swapped
