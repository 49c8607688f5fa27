"""Where each vision-language family keeps its vision tower, projector and language model, and how its tower
encodes images: the one table (:data:`VLM_LAYOUTS`) the teacher stages and the students read a family from.

- ``llava``: the tower ``model.vision_tower`` (CLIP: a CLS token, then the patches), the projector
  ``model.multi_modal_projector``, the language model ``model.language_model``;
- ``idefics3``: ``model.vision_model`` (SigLIP-like, no CLS token), ``model.connector`` (pixel shuffle and a
  linear map), ``model.text_model``;
- ``qwen2_vl``: ``model.visual`` without its merger (patches only, taking ``image_grid_thw``),
  ``model.visual.merger`` (2 x 2 patches to one token), ``model.language_model``.

A parameter belongs to the projector when its name starts with the projector's path, else to the tower when it
starts with the tower's, else to the language model (its embeddings, decoder, final norm and LM head). A
family is named as transformers' ``model_type`` of its config, so a loaded model tells its own family.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Collection, Mapping, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from transformers import PreTrainedModel

from hf_msd.models.vision_tower_pretraining import VisionTowerClassifier, clip_patch_tokens

#: The parts :func:`set_trainable_parts` and :func:`part_of` name.
PARTS = ("tower", "projector", "language_model")


@dataclass(frozen=True)
class VLMLayout:
    """One family's layout.

    Attributes:
        tower: the path (from the ``...ForConditionalGeneration`` model) of the module that encodes images.
        projector: the path of the module that maps the tower's tokens to the language model's width (it may
            lie inside ``tower``).
        language_model: the path of the decoder (its ``layers``).
        tower_width: the field of the tower's config that is the width of its tokens.
        image_rows: ``(image_processor, images) -> (N, ...)``: the image processor's pixels, one row per
            image.
        patch_tokens: ``(tower, rows) -> (N, P, H)``: the tower's last-layer patch tokens (no CLS token), the
            tokens the projector receives.
    """

    tower: str
    projector: str
    language_model: str
    tower_width: str
    image_rows: Callable[[Callable, Sequence], torch.Tensor]
    patch_tokens: Callable[[nn.Module, torch.Tensor], torch.Tensor]


def _pixel_rows(image_processor, images: Sequence) -> torch.Tensor:
    """``pixel_values`` (N, 3, S, S) of a processor that gives one image per row."""
    return torch.as_tensor(image_processor(list(images), return_tensors="pt")["pixel_values"])


def _idefics3_rows(image_processor, images: Sequence) -> torch.Tensor:
    """``pixel_values`` (N, 3, S, S): each image as a sample of one tile (the processor's (N, 1, 3, S, S))."""
    pixels = image_processor([[image] for image in images], return_tensors="pt")["pixel_values"]
    return torch.as_tensor(pixels)[:, 0]


def _qwen2_vl_rows(image_processor, images: Sequence) -> torch.Tensor:
    """The flattened patches (N, P, C * T * p * p) of ``N`` images of one size (the processor concatenates
    every image's P patches)."""
    pixels = torch.as_tensor(image_processor(list(images), return_tensors="pt")["pixel_values"])
    return pixels.view(len(images), -1, pixels.shape[-1])


def _last_hidden_state(tower: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """A tower without a CLS token: all of its last-layer tokens (N, P, H)."""
    return tower(pixel_values=rows).last_hidden_state


def _qwen2_vl_patch_tokens(visual: nn.Module, rows: torch.Tensor) -> torch.Tensor:
    """Qwen2-VL's vision blocks on square images' patches ``rows`` (N, P, D): (N, P, embed_dim), before the
    merger (one image of ``sqrt(P)`` x ``sqrt(P)`` patches per row, attention within each image)."""
    count, patches, width = rows.shape
    side = math.isqrt(patches)
    if side * side != patches:
        raise ValueError(f"Qwen2-VL tower pretraining takes square images; got {patches} patches per image.")
    grid = torch.tensor([[1, side, side]]).expand(count, 3)
    tokens = visual(rows.reshape(count * patches, width), grid_thw=grid).last_hidden_state
    return tokens.view(count, patches, -1)


#: The layout of every family :func:`hf_msd.models.vision_language.tiny_vlm` builds, by family name.
VLM_LAYOUTS: dict[str, VLMLayout] = {
    "llava": VLMLayout(
        tower="model.vision_tower",
        projector="model.multi_modal_projector",
        language_model="model.language_model",
        tower_width="hidden_size",
        image_rows=_pixel_rows,
        patch_tokens=clip_patch_tokens,
    ),
    "idefics3": VLMLayout(
        tower="model.vision_model",
        projector="model.connector",
        language_model="model.text_model",
        tower_width="hidden_size",
        image_rows=_idefics3_rows,
        patch_tokens=_last_hidden_state,
    ),
    "qwen2_vl": VLMLayout(
        tower="model.visual",
        projector="model.visual.merger",
        language_model="model.language_model",
        tower_width="embed_dim",
        image_rows=_qwen2_vl_rows,
        patch_tokens=_qwen2_vl_patch_tokens,
    ),
}


def vlm_layout(model_or_family: PreTrainedModel | str) -> VLMLayout:
    """The layout of a family, given by name or by a model of it (its config's ``model_type``)."""
    family = model_or_family if isinstance(model_or_family, str) else model_or_family.config.model_type
    if family not in VLM_LAYOUTS:
        raise ValueError(f"family={family!r} has no known layout; the families are {sorted(VLM_LAYOUTS)}.")
    return VLM_LAYOUTS[family]


def _within(name: str, path: str) -> bool:
    return name == path or name.startswith(path + ".")


def part_of(layout: VLMLayout, name: str) -> str:
    """The part (one of :data:`PARTS`) a parameter or module ``name`` of the model belongs to."""
    if _within(name, layout.projector):
        return "projector"
    return "tower" if _within(name, layout.tower) else "language_model"


def set_trainable_parts(model: PreTrainedModel, parts: Collection[str]) -> None:
    """Gradients for the parameters of ``parts`` (of :data:`PARTS`) of ``model`` only."""
    unknown = set(parts) - set(PARTS)
    if unknown:
        raise ValueError(f"Unknown part(s) {sorted(unknown)}; the parts are {list(PARTS)}.")
    layout = vlm_layout(model)
    for name, parameter in model.named_parameters():
        parameter.requires_grad_(part_of(layout, name) in parts)


def tower_classifier(model: PreTrainedModel, num_classes: Mapping[str, int]) -> VisionTowerClassifier:
    """A :class:`VisionTowerClassifier` on ``model``'s vision tower (shared, not copied): one linear head per
    attribute on the mean of its patch tokens."""
    layout = vlm_layout(model)
    tower = model.get_submodule(layout.tower)
    width = getattr(tower.config, layout.tower_width)
    return VisionTowerClassifier(tower, num_classes, patch_tokens=layout.patch_tokens, hidden_size=width)


def image_rows(family: str, image_processor, images: Sequence) -> torch.Tensor:
    """The pixels of ``images`` as ``family``'s image processor gives them, one row per image (the input of
    :class:`VisionTowerClassifier` built by :func:`tower_classifier`)."""
    return vlm_layout(family).image_rows(image_processor, images)


def reinitialise_vision(model: PreTrainedModel, seed: int | None = None) -> None:
    """Replace ``model``'s vision tower and projector by freshly initialised ones of the same architecture
    (seeded by ``seed``): a model of the tower's own config when it is one (``_from_config``), a module of
    the model's config otherwise (LLaVA's projector, Idefics3's connector)."""
    layout = vlm_layout(model)
    if seed is not None:
        torch.manual_seed(seed)
    paths = [layout.tower] + ([] if _within(layout.projector, layout.tower) else [layout.projector])
    for path in paths:
        module = model.get_submodule(path)
        if isinstance(module, PreTrainedModel):
            fresh = type(module)._from_config(module.config)
        else:
            fresh = type(module)(model.config)
        model.set_submodule(path, fresh)
