"""Students made from a generative vision-language teacher (any family of
:data:`hf_msd.models.vision_language_parts.VLM_LAYOUTS`: LLaVA, Idefics3, Qwen2-VL), as `make_student` makes
them for classifiers: a copy of the teacher with fewer language-model layers (every other one by default,
DistilBERT's choice), keeping its vision tower, projector, embeddings, final norm and LM head, or the same
architecture with a freshly initialised vision tower and projector (a control that must learn to see alone).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

from torch import nn
from transformers import PreTrainedModel

from hf_msd.models.vision_language_parts import part_of, reinitialise_vision, vlm_layout

VISION_TOWERS = ("teacher", "random")


def vision_language_student(
    teacher: PreTrainedModel,
    language_layers_to_keep: Sequence[int] | None = None,
    vision_tower: str = "teacher",
    freeze_vision_tower: bool = True,
    seed: int | None = None,
) -> PreTrainedModel:
    """A smaller model of ``teacher``'s family made from ``teacher``.

    Args:
        teacher: the teacher (left unchanged; the student is trainable even when the teacher is frozen).
        language_layers_to_keep: indices of the teacher's language-model layers the student keeps, in order
            (student layer ``i`` is teacher layer ``language_layers_to_keep[i]``); default every other layer
            (0, 2, ...).
        vision_tower: ``"teacher"``: the teacher's vision tower and projector (copied); ``"random"``: the same
            architecture freshly initialised (seeded by ``seed``).
        freeze_vision_tower: whether the student's vision tower (the family's tower, not its projector) gets
            no gradient (its parameters' ``requires_grad`` is False).
        seed: the seed of the random tower and projector.
    """
    if vision_tower not in VISION_TOWERS:
        raise ValueError(f"vision_tower={vision_tower!r} is unknown; choose one of {list(VISION_TOWERS)}.")
    layout = vlm_layout(teacher)
    num_layers = teacher.config.text_config.num_hidden_layers
    layers = (
        list(range(0, num_layers, 2)) if language_layers_to_keep is None else list(language_layers_to_keep)
    )
    if not layers or len(set(layers)) != len(layers) or any(not 0 <= i < num_layers for i in layers):
        raise ValueError(
            f"language_layers_to_keep must list distinct layer indices in [0, {num_layers}) (the teacher's "
            f"language model has {num_layers} layers), got {layers}."
        )
    student = copy.deepcopy(teacher)
    language_model = student.get_submodule(layout.language_model)
    language_model.layers = nn.ModuleList(language_model.layers[i] for i in layers)
    for index, layer in enumerate(language_model.layers):
        layer.self_attn.layer_idx = index  # the key-value cache is indexed by position in the stack
    text_config = student.config.text_config
    text_config.num_hidden_layers = len(layers)
    if getattr(text_config, "layer_types", None) is not None:
        text_config.layer_types = [text_config.layer_types[i] for i in layers]
    if vision_tower == "random":
        reinitialise_vision(student, seed)
    for name, parameter in student.named_parameters():  # the teacher may be frozen
        parameter.requires_grad_(not (freeze_vision_tower and part_of(layout, name) == "tower"))
    return student
