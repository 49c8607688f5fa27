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
- ``"mask_keep_special"``: text only; as ``"mask"``, except that in each row the first and the last
  attended token (``[CLS]`` and ``[SEP]`` of a BERT tokenizer) keep their ids and stay attended, so the
  model sees the empty question ``[CLS] [SEP]`` (at the original positions). For heads that read a
  position from the mask, such as VisualBERT's VQA head (``attention_mask.sum(1) - 2``).

The specs of known architectures (:func:`hf_msd.architectures.default_modalities`) live in
:mod:`hf_msd.architectures`, which builds on this module.
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


@register_removal_strategy("mask_keep_special")
def _mask_keep_special(batch: dict[str, Any], modality: Modality) -> dict[str, Any]:
    masks = [key for key in modality.present_keys(batch) if modality.is_mask_key(key)]
    if not masks:
        raise ValueError(
            f"Modality {modality.name!r}: removal='mask_keep_special' needs an attention mask among its keys "
            f"(present: {modality.present_keys(batch)})."
        )
    mask = batch[masks[0]]  # (B, L)
    length = mask.shape[1]
    first = (mask != 0).int().argmax(dim=1)
    last = length - 1 - (mask != 0).int().flip(1).argmax(dim=1)
    positions = torch.arange(length, device=mask.device)[None]
    keep = (positions == first[:, None]) | (positions == last[:, None])  # (B, L)
    out = _mask(batch, modality)
    for key in modality.present_keys(batch):
        if modality.is_mask_key(key):
            out[key] = keep.to(batch[key].dtype)
        elif key != "token_type_ids" and not batch[key].is_floating_point():
            out[key] = torch.where(keep, batch[key], out[key])
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


def _named_parameters(forward) -> dict[str, inspect.Parameter]:
    return {
        name: parameter
        for name, parameter in inspect.signature(forward).parameters.items()
        if parameter.kind in (parameter.POSITIONAL_OR_KEYWORD, parameter.KEYWORD_ONLY)
    }


def forward_parameters(model) -> dict[str, inspect.Parameter] | None:
    """The named parameters of ``model.forward``, following wrappers.

    A wrapper whose forward is ``forward(*args, **kwargs)`` names nothing itself: the signature is read from
    the function it wraps (``functools.wraps`` sets ``__wrapped__``), else from its only child module (e.g.
    ``self.model``). Returns ``None`` when no signature can be found (the wrapper then gets every key).
    """
    forward = getattr(model, "forward", model)
    parameters = _named_parameters(forward)  # inspect.signature already follows __wrapped__
    if parameters:
        return parameters
    children = list(model.children()) if isinstance(model, torch.nn.Module) else []
    if len(children) == 1:
        return forward_parameters(children[0])
    return None


def model_inputs(model, batch: Mapping[str, Any]) -> dict[str, Any]:
    """The entries of ``batch`` that ``model.forward`` takes by name (labels excluded); every entry but the
    labels for a wrapper whose signature cannot be followed (:func:`forward_parameters`)."""
    parameters = forward_parameters(model)
    return {
        key: value
        for key, value in batch.items()
        if key != "labels" and (parameters is None or key in parameters)
    }


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
    makes ``model`` fail on one example, e.g. "drop" on ViLT, which always needs ``input_ids``. With
    ``check_forward`` the model first runs on the full example, so a model that fails on its own input is
    reported as such, not as a removal problem.
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
    parameters = forward_parameters(model) or {}
    required = [
        name for name, parameter in parameters.items() if parameter.default is inspect.Parameter.empty
    ]
    example = _first_example(batch)
    if check_forward:
        try:
            with torch.no_grad():
                model(**model_inputs(model, example))
        except Exception as error:  # the model itself fails: not a modality-removal problem
            raise ValueError(
                f"{type(model).__name__} fails on the full batch, before any modality is removed ({error}). "
                f"Check that the data collator gives the inputs this model expects (batch keys: "
                f"{sorted(example)})."
            ) from error
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


#: What to try after a removal strategy failed (the strategies that keep more of the input come first).
_ALTERNATIVES = {
    "drop": ("mask", "fill"),
    "mask": ("fill", "mask_keep_special"),
    "mask_keep_special": ("fill",),
    "fill": ("mask",),
}


def _removal_error(model, kept: Modality, removed: list[Modality], key: str, reason: str) -> str:
    strategies = {m.name: m.removal for m in removed}
    owner = next((m for m in removed if key in m.all_keys), removed[0] if removed else kept)
    untried = [name for name in _ALTERNATIVES.get(owner.removal, ()) if name in REMOVAL_STRATEGIES]
    advice = [f"removal={name!r}" for name in untried]
    hint = f"try {' or '.join(advice)} for modality {owner.name!r}" if advice else ""
    if owner.removal == "mask":
        hint += (
            " ('fill' keeps masks and ids; 'mask_keep_special' keeps [CLS]/[SEP] attended, for heads that "
            "index the attention mask)"
        )
    hint += (
        f"{', or ' if hint else ''}register a removal strategy of your own "
        "(`hf_msd.modalities.modality.register_removal_strategy`); for an architecture hf_msd knows, "
        "`hf_msd.architectures.default_modalities(model)` gives a spec that works"
    )
    return (
        f"Keeping only modality {kept.name!r} removes the other modalities {strategies} from the batch, but "
        f"key {key!r} {reason} for {type(model).__name__}, with removal={owner.removal!r} already tried: "
        f"{hint}."
    )
