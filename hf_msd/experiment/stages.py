"""Stage records: each stage of the workflow writes ``hf_msd_stage.json`` with the settings that produced
its output, so a rerun reuses output made with the same settings and refuses (naming the changed fields)
output made with others."""

from __future__ import annotations

import dataclasses
import json
import math
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch
from accelerate import PartialState
from transformers import TrainingArguments

from ..errors import UserInputError

STAGE_FILE = "hf_msd_stage.json"


class StageMismatchError(UserInputError, RuntimeError):
    """A stage's folder holds output produced with other settings."""


def stage_done(directory: Path, settings: dict, overwrite: bool) -> bool:
    """Whether ``directory`` holds this stage's finished output for ``settings``.

    Raises :class:`StageMismatchError` naming the changed fields when it holds output of other settings
    (unless ``overwrite``, in which case the stage is redone).
    """
    record = directory / STAGE_FILE
    if not record.exists():
        return False
    saved = json.loads(record.read_text())
    if saved == settings:
        return True
    if overwrite:
        return False
    saved, settings = _flatten(saved), _flatten(settings)
    changed = sorted(k for k in saved.keys() | settings.keys() if saved.get(k) != settings.get(k))
    details = ", ".join(f"{k}: {_shown(saved, k)} -> {_shown(settings, k)}" for k in changed)
    raise StageMismatchError(
        f"{directory} was produced with other settings ({details}). Pass --overwrite_output_dir to redo it, "
        "or choose another --output_dir."
    )


def _flatten(settings: dict, prefix: str = "") -> dict:
    """Nested settings as ``{"training.learning_rate": 0.1, ...}``, so a refusal names only changed leaves."""
    flat = {}
    for key, value in settings.items():
        if isinstance(value, dict) and value:
            flat.update(_flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def _shown(settings: dict, key: str) -> str:
    return repr(settings[key]) if key in settings else "unset"


def check_finite(stage: str, model: torch.nn.Module, metrics: Mapping[str, Any]) -> None:
    """Raise a FloatingPointError naming ``stage`` and the first parameter or metric that is NaN or inf, so a
    diverged model is never saved as a finished stage (and reused by later runs)."""
    bad = [
        f"{name}={value}"
        for name, value in metrics.items()
        if isinstance(value, float) and not math.isfinite(value)
    ]
    bad += [f"parameter {name!r}" for name, p in model.named_parameters() if not torch.isfinite(p).all()][:1]
    if bad:
        raise FloatingPointError(
            f"The {stage} stage ended with a NaN or inf {bad[0]}: training diverged. Lower the learning "
            "rate (or check the data); the stage is not marked done."
        )


def mark_done(directory: Path, settings: dict) -> None:
    if PartialState().is_main_process:
        directory.mkdir(parents=True, exist_ok=True)
        (directory / STAGE_FILE).write_text(json.dumps(settings, indent=2, sort_keys=True))
    PartialState().wait_for_everyone()


def jsonable(obj: Any) -> Any:
    return json.loads(json.dumps(dataclasses.asdict(obj), default=str))


#: TrainingArguments fields that change the trained student (the distillation fields are added to these);
#: the rest (logging, saving, hub, output paths, resume) may differ between runs that reuse a stage.
RESULT_FIELDS = (
    "learning_rate",
    "num_train_epochs",
    "max_steps",
    "per_device_train_batch_size",
    "gradient_accumulation_steps",
    "weight_decay",
    "warmup_steps",
    "lr_scheduler_type",
    "optim",
    "max_grad_norm",
    "seed",
    "bf16",
    "fp16",
)


def result_settings(args: TrainingArguments) -> dict[str, Any]:
    base = {f.name for f in dataclasses.fields(TrainingArguments)}
    names = [*RESULT_FIELDS, *(f.name for f in dataclasses.fields(args) if f.name not in base)]
    return json.loads(json.dumps({name: getattr(args, name) for name in names}, default=str))
