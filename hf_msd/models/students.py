"""Students made from a teacher: fewer layers (DistilBERT-style layer selection), unimodal students, and
students built from a config of their own (`student_from_config`, trained from scratch).

`make_student` returns a fresh model of the teacher's class whose config is the teacher's with fewer layers
(and possibly fewer modalities), and whose weights are the teacher's: the kept layers of each tower and of the
fusion stack, the embeddings, projections, poolers and the classification head (labels, `id2label`, `label2id`
and `problem_type` are kept). A unimodal student (`modalities=["text"]` or `["image"]`) takes that tower, the
stream's part of the kept fusion layers (self-attention and feed-forward; there is no cross-attention with one
stream) and the head.
"""

import copy
import re
from collections.abc import Mapping, Sequence
from typing import Any

from torch import nn

from .multimodal_transformer import MultimodalTransformerConfig, MultimodalTransformerPreTrainedModel

_TOWERS = {"text": ("text_encoder", "text_config"), "image": ("image_encoder", "vision_config")}


def _every_other(num_layers: int) -> list[int]:
    return list(range(0, num_layers, 2))


def _check_layers(name: str, layers: Sequence[int], num_layers: int) -> list[int]:
    layers = list(layers)
    if not layers or any(not 0 <= i < num_layers for i in layers) or len(set(layers)) != len(layers):
        raise ValueError(
            f"`{name}` must list distinct layer indices in [0, {num_layers}) (the teacher has {num_layers}), "
            f"got {layers}."
        )
    return layers


def _layer_list_name(tower: nn.Module, num_layers: int) -> str:
    """Dotted name of the tower's `nn.ModuleList` of transformer layers (e.g. `encoder.layer` in BERT/ViT)."""
    for name, module in tower.named_modules():
        if isinstance(module, nn.ModuleList) and len(module) == num_layers:
            return name
    raise ValueError(f"Cannot find the list of {num_layers} layers in {type(tower).__name__}.")


def make_student(
    teacher: MultimodalTransformerPreTrainedModel,
    *,
    fusion_layers_to_keep: Sequence[int] | None = None,
    text_layers_to_keep: Sequence[int] | None = None,
    image_layers_to_keep: Sequence[int] | None = None,
    modalities: Sequence[str] | None = None,
) -> MultimodalTransformerPreTrainedModel:
    """A smaller copy of `teacher` initialised from its weights.

    Args:
        teacher: a [`MultimodalTransformerForSequenceClassification`] (or bare model).
        fusion_layers_to_keep: indices of the teacher's fusion layers to keep, in order; default every other
            layer (0, 2, ...), as DistilBERT does. Student layer `i` is teacher layer
            `fusion_layers_to_keep[i]`.
        text_layers_to_keep / image_layers_to_keep: the same for the text and image towers. A tower without
            a list of transformer layers (a convolutional image tower such as ResNet) is copied whole.
        modalities: the student's modalities, a subset of the teacher's (default: the teacher's).
            `["text"]` or `["image"]` gives a unimodal student built from that tower.

    Returns:
        A new model of the teacher's class (in the teacher's dtype) with a config whose `num_hidden_layers`,
        `num_text_layers` and `num_image_layers` are the numbers of kept layers.
    """
    config: MultimodalTransformerConfig = teacher.config
    modalities = list(config.modalities if modalities is None else modalities)
    missing = [m for m in modalities if m not in config.modalities]
    if missing:
        raise ValueError(f"`modalities` {missing} are not modalities of the teacher ({config.modalities}).")

    fusion_keep = _check_layers(
        "fusion_layers_to_keep",
        _every_other(config.num_hidden_layers) if fusion_layers_to_keep is None else fusion_layers_to_keep,
        config.num_hidden_layers,
    )
    tower_keep = {}
    for modality, requested in (("text", text_layers_to_keep), ("image", image_layers_to_keep)):
        if modality not in modalities:
            if requested is not None:
                raise ValueError(
                    f"`{modality}_layers_to_keep` was given but {modality!r} is not in {modalities}."
                )
            continue
        tower_config = getattr(config, _TOWERS[modality][1])
        num_layers = getattr(tower_config, "num_hidden_layers", None)
        if num_layers is None:  # e.g. a ResNet image tower: no list of transformer layers, copied whole
            if requested is not None:
                raise ValueError(
                    f"`{modality}_layers_to_keep` was given but the teacher's {modality} tower "
                    f"({tower_config.model_type}) has no transformer layers to select; drop it (the tower is "
                    "copied whole) or build a narrower student with `student_from_config`."
                )
            continue
        tower_keep[modality] = _check_layers(
            f"{modality}_layers_to_keep",
            _every_other(num_layers) if requested is None else requested,
            num_layers,
        )

    student_config = copy.deepcopy(config)
    student_config.modalities = [m for m in config.modalities if m in modalities]
    student_config.num_hidden_layers = len(fusion_keep)
    for modality, (_, config_key) in _TOWERS.items():
        if modality in tower_keep:
            getattr(student_config, config_key).num_hidden_layers = len(tower_keep[modality])
        elif modality not in modalities:
            setattr(student_config, config_key, None)
    student_config.name_or_path = ""
    student = type(teacher)(student_config).to(teacher.dtype)

    # Map every student parameter name to the teacher's: shift layer indices, keep everything else.
    base_prefix = f"{teacher.base_model_prefix}." if hasattr(teacher, teacher.base_model_prefix) else ""
    renames = [(re.compile(rf"^({re.escape(base_prefix)}fusion_layers\.)(\d+)\."), fusion_keep)]
    for modality, keep in tower_keep.items():
        tower_name = _TOWERS[modality][0]
        tower = getattr(
            teacher.get_submodule(base_prefix.rstrip(".")) if base_prefix else teacher, tower_name
        )
        list_name = _layer_list_name(tower, getattr(config, _TOWERS[modality][1]).num_hidden_layers)
        renames.append(
            (re.compile(rf"^({re.escape(f'{base_prefix}{tower_name}.{list_name}.')})(\d+)\."), keep)
        )

    teacher_state = teacher.state_dict()
    student_state = {}
    for name in student.state_dict():
        teacher_name = name
        for pattern, keep in renames:
            teacher_name = pattern.sub(
                lambda m, keep=keep: f"{m.group(1)}{keep[int(m.group(2))]}.", teacher_name
            )
        student_state[name] = teacher_state[teacher_name]
    student.load_state_dict(student_state, strict=True)
    return student


def student_from_config(
    teacher: MultimodalTransformerPreTrainedModel,
    config_overrides: Mapping[str, Any],
    *,
    modalities: Sequence[str] | None = None,
) -> MultimodalTransformerPreTrainedModel:
    """A new, randomly initialised student of the teacher's class: the teacher's config with
    `config_overrides` applied, typically narrower and shallower (trained from scratch by distillation).

    Args:
        teacher: the teacher whose inputs and outputs the student shares.
        config_overrides: [`MultimodalTransformerConfig`] fields (`hidden_size`, `num_hidden_layers`,
            `num_attention_heads`, `intermediate_size`...), and `text_config` / `vision_config` as dicts of
            tower fields (`hidden_size`, `num_hidden_layers`, `patch_size`...) applied over the teacher's
            towers. Fields not given keep the teacher's values.
        modalities: the student's modalities, a subset of the teacher's (default: the teacher's).

    Kept from the teacher (a differing value in `config_overrides` raises a ValueError): the label fields
    (`num_labels`, `id2label`, `label2id`, `problem_type`), the text vocabulary (`vocab_size`,
    `pad_token_id`: the student reads the teacher's tokenizer) and the image geometry (`image_size`,
    `num_channels`: the teacher's image processor).
    """
    config: MultimodalTransformerConfig = teacher.config
    modalities = list(config.modalities if modalities is None else modalities)
    missing = [m for m in modalities if m not in config.modalities]
    if missing:
        raise ValueError(f"`modalities` {missing} are not modalities of the teacher ({config.modalities}).")
    fixed = {
        "text_config": ("vocab_size", "pad_token_id"),
        "vision_config": ("image_size", "num_channels"),
        None: (
            "num_labels",
            "id2label",
            "label2id",
            "problem_type",
            "vocab_size",
            "image_size",
            "num_channels",
        ),
    }
    student_config = copy.deepcopy(config)
    student_config.modalities = [m for m in config.modalities if m in modalities]
    for name, value in config_overrides.items():
        if name == "modalities":
            raise ValueError("Set the student's modalities with `modalities=` (--student_modalities).")
        if name in ("text_config", "vision_config"):
            tower = getattr(student_config, name)
            for field, tower_value in dict(value or {}).items():
                if tower is not None and field in fixed[name] and getattr(tower, field) != tower_value:
                    raise ValueError(
                        f"student_config {name}.{field}={tower_value} differs from the teacher's "
                        f"{getattr(tower, field)}: the student shares the teacher's processor; drop the "
                        "field."
                    )
                if tower is not None:
                    setattr(tower, field, tower_value)
            continue
        if name in fixed[None]:
            if getattr(config, name) != value:
                raise ValueError(
                    f"student_config {name} must be the teacher's ({getattr(config, name)}); drop it."
                )
            continue
        if not hasattr(config, name):
            raise ValueError(f"student_config field {name!r} is not a MultimodalTransformerConfig field.")
        setattr(student_config, name, value)
    for modality, (_, key) in _TOWERS.items():
        if modality not in modalities:
            setattr(student_config, key, None)
    student_config.name_or_path = ""
    # A round trip through from_dict runs the configuration's checks (widths divisible by heads...).
    student_config = type(config).from_dict(student_config.to_dict())
    return type(teacher)(student_config).to(teacher.dtype)
