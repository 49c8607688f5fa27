"""Hidden-state and attention-map distillation between models of different depth, width and modalities.

Pure tensor code, no trainer: which student layer is compared with which teacher layer (layer maps), the
learned projections between widths, the mask of real tokens, pooling, and which of the teacher's fused
tokens belong to a student that takes fewer modalities. The per-layer losses themselves are
:func:`hf_msd.distillation.losses.hidden_state_loss` and
:func:`hf_msd.distillation.losses.attention_map_loss`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
from torch import nn

from . import losses

#: ``span(teacher_length, student_length)``: the teacher's positions compared with the student's.
SpanFn = Callable[[int, int], slice]


def config_width(config: Any) -> int:
    """The hidden width of a model config (``hidden_size``, ``d_model`` or ``dim``)."""
    for name in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(
        f"Cannot read the hidden width of {type(config).__name__} (no hidden_size / d_model / dim) for "
        "hidden-state distillation."
    )


def num_layers(config: Any) -> int:
    """The number of layers of a model config (``num_hidden_layers``, ``num_layers`` or ``n_layers``)."""
    for name in ("num_hidden_layers", "num_layers", "n_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(
        f"Cannot read the number of layers of {type(config).__name__}; set hidden_layer_map / "
        "attention_layer_map explicitly."
    )


def evenly_spaced_layer_map(num_student: int, num_teacher: int, offset: int) -> dict[int, int]:
    """Map each student layer to the teacher layer at the same relative depth, last to last.

    ``offset`` is 1 for ``outputs.hidden_states`` (index 0 is the embeddings, not mapped by default) and 0
    for ``outputs.attentions``. Returns ``{student_index: teacher_index}``.
    """
    return {
        layer - 1 + offset: round(layer * num_teacher / num_student) - 1 + offset
        for layer in range(1, num_student + 1)
    }


def check_layer_map(
    layer_map: dict[int, int], name: str, offset: int, student_layers: int | None, teacher_layers: int | None
) -> None:
    """Raise a ValueError naming ``name`` if an index of ``layer_map`` is past the student's or teacher's
    last layer (``None``: unknown layer count, not checked)."""
    for role, layers, indices in (
        ("student", student_layers, layer_map.keys()),
        ("teacher", teacher_layers, layer_map.values()),
    ):
        if layers is None:
            continue
        last = layers - 1 + offset
        outside = sorted(i for i in indices if i > last)
        if outside:
            what = "hidden_states (0 = embeddings)" if offset else "attentions"
            raise ValueError(
                f"{name}={layer_map}: {role} index {outside} is out of range; the {role}'s "
                f"outputs.{what} has indices 0..{last}."
            )


def build_projections(student_width: int, teacher_width: int, layer_map: dict[int, int]) -> nn.ModuleDict:
    """One ``nn.Linear(student_width, teacher_width)`` per mapped layer pair (``"<s>_to_<t>"``), none when
    the widths agree."""
    projections = nn.ModuleDict()
    if student_width != teacher_width:
        for student_index, teacher_index in layer_map.items():
            projections[f"{student_index}_to_{teacher_index}"] = nn.Linear(student_width, teacher_width)
    return projections


def token_mask(outputs: Any, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The (B, ``length``) mask of real tokens of a model's ``hidden_states`` / ``attentions``.

    A fused multimodal model returns ``outputs.hidden_states_mask`` (text ``attention_mask`` then ones for
    image tokens); a text model's sequence is its input, so the batch's ``attention_mask`` is used when it
    has ``length`` positions. ``None`` (every token counts) when neither fits.
    """
    mask = getattr(outputs, "hidden_states_mask", None)
    if mask is not None and mask.shape[1] == length:
        return mask
    if attention_mask is not None and attention_mask.shape[1] == length:
        return attention_mask
    return None


def pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, L, H) -> (B, H) for pooling "mean" (masked) or "first"; unchanged for "none"."""
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "mean":
        if attention_mask is None or attention_mask.shape[:2] != hidden.shape[:2]:
            return hidden.mean(dim=1)
        mask = attention_mask[..., None].to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return hidden


def student_token_span(
    teacher_length: int, student_length: int, modality_names: Sequence[str], student_names: Sequence[str]
) -> slice:
    """The positions of the teacher's fused sequence that hold the student's modalities.

    A student that takes every modality (or whose sequence is as long as the teacher's) is compared with
    every teacher token. A student that takes fewer modalities (multimodal to unimodal) is compared with
    the teacher's tokens of its own modalities: the fused sequence holds the modalities' tokens in the
    order of ``modality_names`` (text first in our model and in ViLT), so the student's tokens are the
    first ``student_length`` positions when its modalities come first, the last ones when they come last.
    """
    names, kept = list(modality_names), list(student_names)
    if teacher_length == student_length:
        return slice(None)
    if names[: len(kept)] == kept:
        return slice(0, student_length)
    if names[-len(kept) :] == kept:
        return slice(teacher_length - student_length, teacher_length)
    raise ValueError(
        f"Cannot locate the student's modalities {kept} in the teacher's sequence (modalities {names}): "
        "they must be the first or the last ones."
    )


def hidden_states_loss(
    student_outputs: Any,
    teacher_outputs: Any,
    layer_map: dict[int, int],
    projections: nn.ModuleDict,
    attention_mask: torch.Tensor | None,
    span: SpanFn,
    pooling: str = "none",
    loss_type: str = "mse",
) -> torch.Tensor:
    """Mean over the mapped layers of the hidden-state loss, (B,).

    For each ``student_index -> teacher_index`` of ``layer_map``: the student's states (B, L_s, H_s),
    projected to the teacher's width where ``projections`` has ``"<s>_to_<t>"``, against the teacher's states
    on ``span`` (the teacher's tokens of the student's modalities), padding left out (:func:`token_mask`),
    token by token (``pooling="none"``, equal lengths needed) or pooled (``"mean"``, ``"first"``).
    """
    per_layer = []
    for student_index, teacher_index in layer_map.items():
        student_hidden = student_outputs.hidden_states[student_index]
        teacher_hidden = teacher_outputs.hidden_states[teacher_index]
        student_mask = token_mask(student_outputs, attention_mask, student_hidden.shape[1])
        teacher_mask = token_mask(teacher_outputs, attention_mask, teacher_hidden.shape[1])
        positions = span(teacher_hidden.shape[1], student_hidden.shape[1])
        teacher_hidden = teacher_hidden[:, positions]
        teacher_mask = None if teacher_mask is None else teacher_mask[:, positions]
        if pooling == "none" and student_hidden.shape[1] != teacher_hidden.shape[1]:
            raise ValueError(
                f"Student hidden states ({student_hidden.shape[1]} positions) and teacher hidden "
                f"states ({teacher_hidden.shape[1]}) differ in length: set hidden_state_pooling='mean' "
                "or 'first'."
            )
        key = f"{student_index}_to_{teacher_index}"
        if key in projections:
            student_hidden = projections[key](student_hidden.to(projections[key].weight.dtype))
        per_layer.append(
            losses.hidden_state_loss(
                pool(student_hidden, student_mask, pooling),
                pool(teacher_hidden, teacher_mask, pooling),
                attention_mask=student_mask,
                loss_type=loss_type,
            )
        )
    return torch.stack(per_layer).mean(dim=0)


def attention_maps_loss(
    student_outputs: Any,
    teacher_outputs: Any,
    layer_map: dict[int, int],
    attention_mask: torch.Tensor | None,
    span: SpanFn,
    loss_type: str = "kl",
    head_reduction: str = "mean",
) -> torch.Tensor:
    """Mean over the mapped layers of the attention-map loss, (B,): each student map (B, heads, L_s, L_s)
    against the teacher's map restricted to ``span`` (rows and columns, rows renormalised to sum to 1),
    padded query rows left out."""
    for outputs, role in ((student_outputs, "student"), (teacher_outputs, "teacher")):
        if not getattr(outputs, "attentions", None):
            raise ValueError(
                f"The {role} returned no attention maps for attention_loss_weight > 0; load it with "
                "attn_implementation='eager' (fused kernels cannot return attention probabilities)."
            )
    per_layer = []
    for student_index, teacher_index in layer_map.items():
        student_attn = student_outputs.attentions[student_index]
        teacher_attn = teacher_outputs.attentions[teacher_index]
        positions = span(teacher_attn.shape[-1], student_attn.shape[-1])
        if positions != slice(None):
            teacher_attn = teacher_attn[..., positions, positions].float()
            teacher_attn = teacher_attn / teacher_attn.sum(-1, keepdim=True).clamp_min(1e-12)
        per_layer.append(
            losses.attention_map_loss(
                student_attn,
                teacher_attn,
                loss_type=loss_type,
                head_reduction=head_reduction,
                attention_mask=token_mask(student_outputs, attention_mask, student_attn.shape[-1]),
            )
        )
    return torch.stack(per_layer).mean(dim=0)
