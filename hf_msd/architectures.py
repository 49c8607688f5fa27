"""How hf_msd reads the multimodal architectures users bring: a registry of adapters keyed by ``model_type``.

An :class:`ArchitectureAdapter` says, for one ``config.model_type``:

- ``modalities(config)``: the :class:`~hf_msd.modalities.modality.Modality` spec (batch keys per modality and
how each
  is removed for the modality-only inputs ``x_m``);
- ``logits_key``: the name of the output field that holds the classification logits (LXMERT names them
  ``question_answering_score``);
- ``num_labels_attr``: the config field that holds the number of classes (LXMERT: ``num_qa_labels``);
- ``reuses_towers``: whether the modality-only passes may reuse the full pass's tower outputs
  (:func:`reuses_towers`).

Built-in adapters (``x_text`` keeps the text, ``x_image`` keeps the image):

- ``msd_multimodal_transformer``, ``msd_dual_encoder`` (hf_msd): text "drop", image "drop" (keys left
  out; only the modalities in ``config.modalities``).
- ``vilt``, ``bridgetower``: text "mask" (ids -> pad, attention mask and token types -> 0); image "fill"
  (pixels -> 0, ``pixel_mask`` kept: an all-zero pixel mask leaves no image patch).
- ``visual_bert``: text "mask_keep_special" (only ``[CLS]`` and ``[SEP]`` stay, the empty question); image
  "drop" (``visual_embeds``, ``visual_attention_mask``, ``visual_token_type_ids`` left out).
- ``lxmert``: text "mask"; image "mask" (``visual_feats``, ``visual_pos`` -> 0, ``visual_attention_mask``
  -> 0); logits in ``question_answering_score``, classes in ``config.num_qa_labels``.

VisualBERT's VQA head reads position ``attention_mask.sum(1) - 2``: an all-zero text mask would index -2,
so its text removal keeps ``[CLS]`` and ``[SEP]`` attended (the empty question) and the head reads ``[CLS]``.
LXMERT needs ``visual_feats`` and ``visual_pos`` in every call, so its image is masked, not dropped.

Tower reuse: hf_msd's fusion transformer and dual encoder run one tower per modality and drop the removed
modality, so on ``x_m`` the kept tower sees exactly its input in ``x`` and the removed one does not run:
the full pass's tower outputs (``forward(..., return_tower_outputs=True)``) give every ``x_m`` with only the
fusion layers and the head (``forward(tower_outputs={m: ...})``). They are marked ``reuses_towers=True``.
The others are not: ViLT and VisualBERT are single-stream (text and image tokens share every layer from the
first); LXMERT and BridgeTower have unimodal layers before their cross-modal ones, but their removal masks
or blanks the removed modality instead of dropping it, so each ``x_m`` still runs that tower on the blank
input, and their forward takes no tower outputs: they keep separate passes.

The registry is a plain dict, :data:`ARCHITECTURES`, filled by :func:`register_architecture` calls (the
built-in ones at the end of this module); :func:`default_modalities` reads a model's modality spec from it and
:func:`get_logits` its logits, for the trainers, saliency and evaluation.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from transformers.modeling_outputs import SequenceClassifierOutput

from .modalities.modality import Modality


@dataclass(frozen=True)
class ArchitectureAdapter:
    """How hf_msd reads one architecture (see the module docstring).

    Args:
        model_type: the ``config.model_type`` it applies to.
        modalities: ``fn(config) -> [Modality, ...]``.
        logits_key: output field holding the logits (B, num_labels).
        num_labels_attr: config field holding the number of classes.
        reuses_towers: the model's forward takes ``return_tower_outputs=True`` (output field
            ``tower_outputs``, a dict keyed by modality name) and ``tower_outputs={name: ...}`` (only what
            depends on the modality combination runs), and with its default modality spec the latter on a
            subset of the tower outputs equals the forward on the modality-only input.
    """

    model_type: str
    modalities: Callable[[Any], list[Modality]]
    logits_key: str = "logits"
    num_labels_attr: str = "num_labels"
    reuses_towers: bool = False


#: ``config.model_type`` -> its adapter; fill it with :func:`register_architecture`.
ARCHITECTURES: dict[str, ArchitectureAdapter] = {}


def register_architecture(adapter: ArchitectureAdapter, exist_ok: bool = False) -> ArchitectureAdapter:
    """Add ``adapter`` to :data:`ARCHITECTURES` (``exist_ok`` replaces an existing one)."""
    if adapter.model_type in ARCHITECTURES and not exist_ok:
        raise ValueError(
            f"An adapter for model_type={adapter.model_type!r} exists; pass exist_ok=True to replace it."
        )
    ARCHITECTURES[adapter.model_type] = adapter
    return adapter


def _config(model) -> Any:
    return getattr(model, "config", model)


def get_architecture(model) -> ArchitectureAdapter | None:
    """The adapter of ``model`` (or of a config) by ``config.model_type``; ``None`` without one."""
    return ARCHITECTURES.get(getattr(_config(model), "model_type", None))


def default_modalities(model) -> list[Modality]:
    """The modality spec of ``model`` (or of its config) from its registered adapter (ViLT, VisualBERT,
    LXMERT, BridgeTower, hf_msd's models; add your own with :func:`register_architecture`). Raises
    ``ValueError`` naming the ``model_type`` without one."""
    config = _config(model)
    adapter = get_architecture(config)
    if adapter is None:
        raise ValueError(
            f"No registered architecture for model_type={getattr(config, 'model_type', None)!r}; pass "
            "`modalities=[Modality(...), ...]` naming each modality's batch keys and removal strategy, or "
            "register one with `hf_msd.architectures.register_architecture`."
        )
    return adapter.modalities(config)


def reuses_towers(model, modalities: Sequence[Modality] | None = None) -> bool:
    """Whether ``model``'s passes on the modality-only inputs under the spec ``modalities`` (default: the
    registered one) may reuse its full pass's tower outputs: its adapter is marked ``reuses_towers`` and the
    spec is the registered one (another removal strategy, e.g. filling the image with its mean, changes what
    the towers see, so it keeps separate passes)."""
    config = _config(model)
    adapter = get_architecture(config)
    if adapter is None or not adapter.reuses_towers:
        return False
    return modalities is None or list(modalities) == adapter.modalities(config)


def get_logits(model, outputs: Any, has_loss: bool = False) -> torch.Tensor:
    """The logits in ``model``'s ``outputs``, in every form a `transformers.Trainer` model may return.

    A bare tensor is the logits. A tuple is ``(loss, logits, ...)`` when the model computed a loss
    (``has_loss``), else ``(logits, ...)``. A ``ModelOutput`` / dict gives the field named by
    ``model.logits_key`` (an attribute a plain module may set), by the model's adapter
    (:class:`ArchitectureAdapter`), else ``logits``; without a ``logits`` field, its first entry that is not
    the loss (the Trainer's convention for predictions).
    """
    if isinstance(outputs, torch.Tensor):
        return outputs
    if isinstance(outputs, tuple) and not isinstance(outputs, Mapping):
        return outputs[1] if has_loss else outputs[0]
    key = getattr(model, "logits_key", None)
    if key is None:
        adapter = get_architecture(model)
        key = adapter.logits_key if adapter is not None else "logits"
    if isinstance(outputs, Mapping):
        value = outputs.get(key)
        if value is None and key == "logits":
            value = next((v for name, v in outputs.items() if name != "loss" and v is not None), None)
    else:
        value = getattr(outputs, key, None)
    if value is None:
        fields = list(outputs.keys()) if isinstance(outputs, Mapping) else sorted(vars(outputs))
        raise ValueError(
            f"{type(model).__name__}'s output ({type(outputs).__name__}) has no {key!r} (fields: {fields}). "
            "Name the field that holds the logits: set `model.logits_key = '<field>'`, or register an "
            "`ArchitectureAdapter(model_type, modalities, logits_key='<field>')` for its config.model_type."
        )
    return value


def classifier_output(model, outputs: Any) -> Any:
    """``outputs`` if its ``logits`` are the model's logits; otherwise a ``SequenceClassifierOutput`` with the
    logits (:func:`get_logits`) and the outputs' ``hidden_states`` / ``attentions``, so that code written for
    ``outputs.logits`` (the distillation losses) reads the right field."""
    logits = get_logits(model, outputs)
    if getattr(outputs, "logits", None) is logits:
        return outputs
    return SequenceClassifierOutput(
        logits=logits,
        hidden_states=getattr(outputs, "hidden_states", None),
        attentions=getattr(outputs, "attentions", None),
    )


def num_labels(model) -> int | None:
    """The number of classes of ``model`` (or a config), read from its adapter's ``num_labels_attr``;
    ``None`` for a model without a config."""
    config = _config(model)
    if config is model and isinstance(model, torch.nn.Module):
        return None
    adapter = get_architecture(config)
    return getattr(config, adapter.num_labels_attr if adapter is not None else "num_labels", None)


# ---- Built-in architectures ----------------------------------------------------------------------------


def _pad_id(config) -> int:
    return getattr(config, "pad_token_id", None) or 0


def _masked_text(config, removal: str = "mask", keys=("input_ids", "attention_mask")) -> Modality:
    return Modality(
        "text",
        keys=list(keys),
        optional_keys=["token_type_ids"],
        removal=removal,
        pad_token_id=_pad_id(config),
    )


def _hf_msd_modalities(config) -> list[Modality]:
    specs = {
        "text": Modality(
            "text", keys=["input_ids"], optional_keys=["attention_mask", "token_type_ids"], removal="drop"
        ),
        "image": Modality("image", keys=["pixel_values"], removal="drop"),
    }
    return [specs[name] for name in getattr(config, "modalities", None) or ["text", "image"]]


def _pixel_image(config) -> Modality:
    return Modality(
        "image", keys=["pixel_values"], optional_keys=["pixel_mask"], removal="fill", fill_value=0.0
    )


def _vilt_modalities(config) -> list[Modality]:
    return [_masked_text(config), _pixel_image(config)]


def _bridgetower_modalities(config) -> list[Modality]:
    return [_masked_text(config.text_config), _pixel_image(config)]


def _visual_bert_modalities(config) -> list[Modality]:
    return [
        _masked_text(config, removal="mask_keep_special"),
        Modality(
            "image",
            keys=["visual_embeds"],
            optional_keys=["visual_attention_mask", "visual_token_type_ids", "image_text_alignment"],
            removal="drop",
        ),
    ]


def _lxmert_modalities(config) -> list[Modality]:
    return [
        _masked_text(config),
        Modality(
            "image",
            keys=["visual_feats", "visual_pos"],
            optional_keys=["visual_attention_mask"],
            removal="mask",
            fill_value=0.0,
        ),
    ]


for _adapter in (
    ArchitectureAdapter("msd_multimodal_transformer", _hf_msd_modalities, reuses_towers=True),
    ArchitectureAdapter("msd_dual_encoder", _hf_msd_modalities, reuses_towers=True),
    ArchitectureAdapter("vilt", _vilt_modalities),
    ArchitectureAdapter("bridgetower", _bridgetower_modalities),
    ArchitectureAdapter("visual_bert", _visual_bert_modalities),
    ArchitectureAdapter(
        "lxmert", _lxmert_modalities, logits_key="question_answering_score", num_labels_attr="num_qa_labels"
    ),
):
    register_architecture(_adapter)
