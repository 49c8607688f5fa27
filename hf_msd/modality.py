"""Modalities of a batch and how to take one away.

A :class:`Modality` names the batch keys that carry one input modality (e.g. the text keys
``input_ids``, ``attention_mask``, ``token_type_ids``) and how the modality is *removed* from a batch.
Modality-specific distillation (MSD) feeds the teacher and the student ``x_m``, the batch that keeps
only modality ``m`` (:func:`restrict`); saliency compares the teacher on ``x`` with the teacher on
``x`` without ``m`` (:func:`remove`).

Removal strategies (registry :data:`REMOVAL_STRATEGIES`, ``name -> fn(batch, modality) -> batch``;
add your own by inserting a function there):

- ``"drop"``: the modality's keys are left out of the batch. For models that accept a missing
  modality (``hf_msd``'s multimodal transformer); modality-only passes are then shorter.
- ``"mask"``: for models that always need every input. Keys named ``token_type_ids`` or listed in
  ``mask_keys`` (default: every key whose name ends in ``"mask"``) are set to 0; other integer keys
  (token ids) are set to ``pad_token_id``; floating-point keys (pixels) are set to ``fill_value``
  (default 0).
- ``"fill"``: floating-point keys are replaced by ``fill_value`` (a scalar, or a tensor broadcastable
  to one example, e.g. the dataset's mean image of shape (C, H, W)); integer keys (masks, ids) are
  kept, so the model sees a valid blank / mean input.

Presets (:func:`default_modalities`): ``hf_msd``'s models drop; ViLT masks the text (ids -> pad,
attention mask and token types -> 0) and fills the image with zeros (ViLT cannot take an all-zero
``pixel_mask``: it would leave no image patch, so its pixel mask is kept).
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

RemovalFn = Callable[[dict[str, Any], "Modality"], dict[str, Any]]
REMOVAL_STRATEGIES: dict[str, RemovalFn] = {}


@dataclass
class Modality:
    """One input modality of a batch.

    Args:
        name: short name, used in logs (``modality_<name>``) and cached-teacher keys
            (``teacher_logits_<name>``).
        keys: batch keys that carry the modality; each must be in every batch.
        removal: name of a strategy in :data:`REMOVAL_STRATEGIES` ("drop", "mask" or "fill").
        fill_value: value for floating-point keys under "mask" / "fill" (scalar or tensor broadcastable
            to one example); ``None`` means 0.
        pad_token_id: value for integer non-mask keys (token ids) under "mask".
        mask_keys: keys set to 0 under "mask"; ``None`` means every key whose name ends in "mask".
        optional_keys: keys removed with the modality when present but not required in the batch
            (e.g. ``token_type_ids``, which some tokenizers do not return).
    """

    name: str
    keys: Sequence[str]
    removal: str = "drop"
    fill_value: float | torch.Tensor | None = None
    pad_token_id: int = 0
    mask_keys: Sequence[str] | None = None
    optional_keys: Sequence[str] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        self.keys = tuple(self.keys)
        self.optional_keys = tuple(self.optional_keys)
        if not self.name:
            raise ValueError("Modality.name must be a non-empty string.")
        if not self.keys:
            raise ValueError(f"Modality {self.name!r}: `keys` must name at least one batch key.")
        if self.removal not in REMOVAL_STRATEGIES:
            raise ValueError(
                f"Modality {self.name!r}: removal={self.removal!r} is not a registered strategy; "
                f"choose one of {sorted(REMOVAL_STRATEGIES)}."
            )

    @property
    def all_keys(self) -> tuple[str, ...]:
        """The modality's required and optional keys."""
        return (*self.keys, *self.optional_keys)

    def present_keys(self, batch: Mapping[str, Any]) -> list[str]:
        """The modality's keys (required and optional) that are in ``batch``."""
        return [key for key in self.all_keys if key in batch]

    def is_mask_key(self, key: str) -> bool:
        if self.mask_keys is not None:
            return key in self.mask_keys
        return key.endswith("mask")


def register_removal_strategy(name: str) -> Callable[[RemovalFn], RemovalFn]:
    """Decorator adding ``fn(batch, modality) -> new batch`` to :data:`REMOVAL_STRATEGIES`.

    The function must not modify ``batch`` in place; it returns a new dict.
    """

    def decorator(fn: RemovalFn) -> RemovalFn:
        REMOVAL_STRATEGIES[name] = fn
        return fn

    return decorator


def _filled(tensor: torch.Tensor, value: float | torch.Tensor | None) -> torch.Tensor:
    """A tensor like ``tensor`` (B, ...) filled with ``value`` (scalar or broadcastable to one example)."""
    if value is None:
        return torch.zeros_like(tensor)
    if isinstance(value, torch.Tensor):
        return value.to(device=tensor.device, dtype=tensor.dtype).expand_as(tensor).clone()
    return torch.full_like(tensor, value)


@register_removal_strategy("drop")
def _drop(batch: dict[str, Any], modality: Modality) -> dict[str, Any]:
    removed = set(modality.present_keys(batch))
    return {key: value for key, value in batch.items() if key not in removed}


@register_removal_strategy("mask")
def _mask(batch: dict[str, Any], modality: Modality) -> dict[str, Any]:
    out = dict(batch)
    for key in modality.present_keys(batch):
        tensor = batch[key]
        if key == "token_type_ids" or modality.is_mask_key(key):
            out[key] = torch.zeros_like(tensor)
        elif tensor.is_floating_point():
            out[key] = _filled(tensor, modality.fill_value)
        else:
            out[key] = torch.full_like(tensor, modality.pad_token_id)
    return out


@register_removal_strategy("fill")
def _fill(batch: dict[str, Any], modality: Modality) -> dict[str, Any]:
    out = dict(batch)
    for key in modality.present_keys(batch):
        if batch[key].is_floating_point():
            out[key] = _filled(batch[key], modality.fill_value)
    return out


def _by_name(modalities: Sequence[Modality], names: Iterable[str]) -> list[Modality]:
    known = {modality.name: modality for modality in modalities}
    unknown = [name for name in names if name not in known]
    if unknown:
        raise ValueError(f"Unknown modality name(s) {unknown}; known: {sorted(known)}.")
    return [known[name] for name in names]


def remove(batch: Mapping[str, Any], modalities: Sequence[Modality], drop: str | Iterable[str]) -> dict:
    """``batch`` without the modalities named in ``drop``, each removed by its own strategy.

    Keys that belong to no modality (labels, cached teacher outputs, ...) are passed through.
    Returns a new dict; ``batch`` is not modified.
    """
    names = [drop] if isinstance(drop, str) else list(drop)
    out = dict(batch)
    for modality in _by_name(modalities, names):
        out = REMOVAL_STRATEGIES[modality.removal](out, modality)
    return out


def restrict(batch: Mapping[str, Any], modalities: Sequence[Modality], keep: str) -> dict:
    """``x_m``: ``batch`` keeping only modality ``keep``; every other modality is removed."""
    _by_name(modalities, [keep])
    return remove(batch, modalities, [modality.name for modality in modalities if modality.name != keep])


def default_modalities(model) -> list[Modality]:
    """Preset modalities for a model (or its config), by ``config.model_type``.

    - ``"msd_multimodal_transformer"`` (hf_msd): text = ``input_ids`` (+ optional ``attention_mask``,
      ``token_type_ids``), image = ``pixel_values``; both "drop". Only the modalities listed in
      ``config.modalities`` are returned (a unimodal model gets one).
    - ``"vilt"``: text = ``input_ids``, ``attention_mask`` (+ optional ``token_type_ids``) by "mask"
      (ids -> ``config.pad_token_id`` or 0, masks -> 0); image = ``pixel_values`` (+ optional
      ``pixel_mask``, kept) by "fill" with 0.
    """
    config = getattr(model, "config", model)
    model_type = getattr(config, "model_type", None)
    if model_type == "msd_multimodal_transformer":
        presets = {
            "text": Modality(
                "text", keys=["input_ids"], optional_keys=["attention_mask", "token_type_ids"], removal="drop"
            ),
            "image": Modality("image", keys=["pixel_values"], removal="drop"),
        }
        return [presets[name] for name in getattr(config, "modalities", ["text", "image"])]
    if model_type == "vilt":
        pad = getattr(config, "pad_token_id", None) or 0
        return [
            Modality(
                "text",
                keys=["input_ids", "attention_mask"],
                optional_keys=["token_type_ids"],
                removal="mask",
                pad_token_id=pad,
            ),
            Modality(
                "image", keys=["pixel_values"], optional_keys=["pixel_mask"], removal="fill", fill_value=0.0
            ),
        ]
    raise ValueError(
        f"No modality preset for model_type={model_type!r}; pass `modalities=[Modality(...), ...]` "
        "naming each modality's batch keys and removal strategy."
    )


def model_inputs(model, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``batch`` that ``model.forward`` takes by name (labels excluded)."""
    parameters = inspect.signature(model.forward).parameters
    return {key: value for key, value in batch.items() if key in parameters and key != "labels"}


def _first_example(batch: Mapping[str, Any]) -> dict[str, Any]:
    return {
        key: value[:1] if isinstance(value, torch.Tensor) and value.dim() > 0 else value
        for key, value in batch.items()
    }


def validate_modalities(
    modalities: Sequence[Modality], batch: Mapping[str, Any], model=None, check_forward: bool = True
) -> None:
    """Check a modality spec against a batch (and a model) before any training work.

    Raises ``ValueError`` naming the offending key when: two modalities share a name or a key; a
    modality's required key is missing from ``batch``; or, with ``model``, a modality-only batch
    ``x_m`` (:func:`restrict`) lacks a required argument of ``model.forward`` or (``check_forward``)
    makes ``model`` fail on one example, e.g. "drop" on ViLT, which always needs ``input_ids``.
    """
    names = [modality.name for modality in modalities]
    if len(set(names)) != len(names):
        raise ValueError(f"Modality names must be unique, got {names}.")
    owner: dict[str, str] = {}
    for modality in modalities:
        for key in (*modality.keys, *modality.optional_keys):
            if key in owner:
                raise ValueError(
                    f"Batch key {key!r} belongs to modalities {owner[key]!r} and {modality.name!r}."
                )
            owner[key] = modality.name
        for key in modality.keys:
            if key not in batch:
                raise ValueError(
                    f"Modality {modality.name!r} expects batch key {key!r}, which is not in the batch "
                    f"(batch keys: {sorted(batch)}). Fix the Modality's `keys` (or move it to "
                    "`optional_keys`) or make the data collator return it."
                )
    if model is None:
        return
    required = [
        name
        for name, parameter in inspect.signature(model.forward).parameters.items()
        if parameter.default is inspect.Parameter.empty
        and parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    ]
    example = _first_example(batch)
    for modality in modalities:
        removed = [m for m in modalities if m.name != modality.name]
        x_m = restrict(example, modalities, keep=modality.name)
        missing = [key for key in required if key not in x_m]
        if missing:
            raise ValueError(_removal_error(model, modality, removed, missing[0], "is a required input"))
        if not check_forward:
            continue
        try:
            with torch.no_grad():
                model(**model_inputs(model, x_m))
        except Exception as error:  # re-raised with the modality and key named
            keys = [key for m in removed for key in m.present_keys(example)]
            culprit = next((key for key in keys if key in str(error)), keys[0] if keys else "?")
            raise ValueError(
                _removal_error(model, modality, removed, culprit, f"could not be removed ({error})")
            ) from error


def _removal_error(model, kept: Modality, removed: list[Modality], key: str, reason: str) -> str:
    strategies = {m.name: m.removal for m in removed}
    return (
        f"Keeping only modality {kept.name!r} removes the other modalities {strategies} from the batch, but "
        f"key {key!r} {reason} for {type(model).__name__}. If the model needs every input, use "
        "removal='mask' or removal='fill' for that modality (or `default_modalities(model)`)."
    )
