"""Tiny generative vision-language models built from configs (nothing downloads), for examples and tests.

A word-level tokenizer over a fixed vocabulary (built with the `tokenizers` library) with a chat template, a
processor around it with a PIL-only image processor, and models of any small size that share that processor,
so a teacher and a smaller student see the same token sequences. Three families (:data:`VLM_FAMILIES`), each
built with the same two calls, :func:`vlm_processor` and :func:`tiny_vlm`:

- ``llava``: `LlavaForConditionalGeneration` (a CLIP vision tower, a projector and a Llama language model);
- ``idefics3``: `Idefics3ForConditionalGeneration` (SmolVLM's architecture: a SigLIP tower, a pixel-shuffle
  connector and a Llama language model), one image tile (no splitting);
- ``qwen2_vl``: `Qwen2VLForConditionalGeneration` (a ViT over 2 x 2-merged patches, multimodal RoPE), with
  :class:`Qwen2VLImageTextProcessor` (Qwen2-VL's processor without its video processor, which needs
  torchvision).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from typing import Any

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    AutoConfig,
    AutoModelForImageTextToText,
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    Idefics3Config,
    Idefics3ForConditionalGeneration,
    Idefics3ImageProcessorPil,
    Idefics3Processor,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedModel,
    PreTrainedTokenizerFast,
    ProcessorMixin,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)

PAD, UNK, BOS, EOS, IMAGE = "<pad>", "<unk>", "<s>", "</s>", "<image>"
SPECIAL_TOKENS = (PAD, UNK, BOS, EOS, IMAGE)
#: The words of the chat template itself.
TEMPLATE_WORDS = ("USER", "ASSISTANT", ":")

#: ``<s>USER : <image> question ASSISTANT : answer</s>``; an image part renders ``<image>``, an empty text
#: part renders nothing, and ``add_generation_prompt`` ends the prompt with ``ASSISTANT :``.
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}USER :"
    "{% for part in message['content'] %}{% if part['type'] == 'image' %} <image>"
    "{% elif part['type'] == 'text' and part['text'] %} {{ part['text'] }}{% endif %}{% endfor %}"
    "{% else %} ASSISTANT :{% for part in message['content'] %} {{ part['text'] }}{% endfor %}"
    "{{ eos_token }}{% endif %}{% endfor %}{% if add_generation_prompt %} ASSISTANT :{% endif %}"
)


def word_level_tokenizer(
    words: Iterable[str],
    chat_template: str = CHAT_TEMPLATE,
    extra_special_tokens: Mapping[str, str] | None = None,
) -> PreTrainedTokenizerFast:
    """A tokenizer whose tokens are :data:`SPECIAL_TOKENS` (ids 0-4), :data:`TEMPLATE_WORDS`, ``words``
    (sorted, duplicates removed) and then the values of ``extra_special_tokens`` (a family's own markers,
    e.g. ``{"video_token": "<video>"}``: kept whole, and readable as ``tokenizer.video_token``), split on
    whitespace and punctuation; unknown words map to ``<unk>``."""
    extra = dict(extra_special_tokens or {})
    vocabulary = list(SPECIAL_TOKENS) + list(TEMPLATE_WORDS)
    vocabulary += sorted(set(words) - set(vocabulary) - set(extra.values()))
    vocabulary += [token for token in extra.values() if token not in vocabulary]
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocabulary)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE, **extra},
        chat_template=chat_template,
    )


@dataclass(frozen=True)
class VLMSize:
    """The sizes of a tiny vision-language model: its language model (``hidden_size`` x ``num_layers``, and
    its positions), its vision tower (``vision_hidden_size`` x ``vision_layers``) and the attention heads of
    both. Feed-forward layers are twice as wide as their block."""

    hidden_size: int = 64
    num_layers: int = 2
    vision_hidden_size: int = 64
    vision_layers: int = 2
    num_heads: int = 2
    max_position_embeddings: int = 128


def _text_config(tokenizer: PreTrainedTokenizerFast, size: VLMSize) -> dict[str, Any]:
    """The language model's config fields every family shares: sizes and the tokenizer's special ids."""
    return dict(
        vocab_size=len(tokenizer),
        hidden_size=size.hidden_size,
        intermediate_size=2 * size.hidden_size,
        num_hidden_layers=size.num_layers,
        num_attention_heads=size.num_heads,
        num_key_value_heads=size.num_heads,
        max_position_embeddings=size.max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )


def _patch_grid(image_size: int, patch_size: int, merge: int, family: str) -> int:
    """The number of patches along a side, checked to be a multiple of ``merge`` (the patches merged per
    side into one image token)."""
    if image_size % (patch_size * merge):
        raise ValueError(
            f"image_size={image_size} is not a multiple of patch_size * {merge} = {patch_size * merge}, "
            f"which family={family!r} needs (its image tokens merge {merge} x {merge} patches): pick "
            "another image_size or patch_size."
        )
    return image_size // patch_size


def llava_processor(
    tokenizer: PreTrainedTokenizerFast, image_size: int = 32, patch_size: int = 8
) -> LlavaProcessor:
    """A `LlavaProcessor`: images resized and cropped to ``image_size`` (PIL only), each ``<image>`` expanded
    to ``(image_size / patch_size) ** 2`` image tokens (the CLIP tower's patches without its CLS token)."""
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size}, crop_size={"height": image_size, "width": image_size}
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy="default",
        num_additional_image_tokens=1,
        chat_template=tokenizer.chat_template,
    )


def _llava_model(processor: LlavaProcessor, size: VLMSize) -> LlavaForConditionalGeneration:
    """A CLIP vision tower, a 2-layer projector and a Llama language model."""
    tokenizer = processor.tokenizer
    vision_config = CLIPVisionConfig(
        hidden_size=size.vision_hidden_size,
        intermediate_size=2 * size.vision_hidden_size,
        num_hidden_layers=size.vision_layers,
        num_attention_heads=size.num_heads,
        image_size=processor.image_processor.crop_size["height"],
        patch_size=processor.patch_size,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=LlamaConfig(**_text_config(tokenizer, size)),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    return LlavaForConditionalGeneration(config)


#: Idefics3's connector merges ``scale_factor`` x ``scale_factor`` patches into one image token.
IDEFICS3_SCALE_FACTOR = 2
#: Idefics3's image markers around the image tokens, kept whole by the word-level tokenizer.
IDEFICS3_SPECIAL_TOKENS = {
    "fake_image_token": "<fake_token_around_image>",
    "global_image_token": "<global-img>",
}


def idefics3_processor(
    words: Iterable[str], image_size: int = 32, patch_size: int = 8, chat_template: str = CHAT_TEMPLATE
) -> Idefics3Processor:
    """An `Idefics3Processor` on a word-level vocabulary: one ``image_size`` tile per image (PIL image
    processor, no splitting), each ``<image>`` expanded to ``(image_size / patch_size / 2) ** 2`` image tokens
    between ``<fake_token_around_image><global-img>`` and ``<fake_token_around_image>``."""
    grid = _patch_grid(image_size, patch_size, IDEFICS3_SCALE_FACTOR, "idefics3")
    tokenizer = word_level_tokenizer(words, chat_template, IDEFICS3_SPECIAL_TOKENS)
    image_processor = Idefics3ImageProcessorPil(
        do_image_splitting=False,
        size={"longest_edge": image_size},
        max_image_size={"longest_edge": image_size},
    )
    return Idefics3Processor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        image_seq_len=(grid // IDEFICS3_SCALE_FACTOR) ** 2,
        chat_template=tokenizer.chat_template,
    )


def _idefics3_model(processor: Idefics3Processor, size: VLMSize) -> Idefics3ForConditionalGeneration:
    """A SigLIP tower, the pixel-shuffle connector and a Llama language model."""
    tokenizer = processor.tokenizer
    image_size = processor.image_processor.size["longest_edge"]
    grid = math.isqrt(processor.image_seq_len) * IDEFICS3_SCALE_FACTOR
    vision_config = dict(
        hidden_size=size.vision_hidden_size,
        intermediate_size=2 * size.vision_hidden_size,
        num_attention_heads=size.num_heads,
        num_hidden_layers=size.vision_layers,
        image_size=image_size,
        patch_size=image_size // grid,
    )
    config = Idefics3Config(
        text_config=_text_config(tokenizer, size),
        vision_config=vision_config,
        scale_factor=IDEFICS3_SCALE_FACTOR,
        image_token_id=tokenizer.convert_tokens_to_ids(IMAGE),
        pad_token_id=tokenizer.pad_token_id,
    )
    return Idefics3ForConditionalGeneration(config)


class Qwen2VLImageTextProcessor(Qwen2VLProcessor):
    """`Qwen2VLProcessor` for images and text only: no video processor, which needs torchvision (transformers
    refuses a `Qwen2VLProcessor` built without one when torchvision is not installed). Outputs are
    `Qwen2VLProcessor`'s: ``input_ids``, ``attention_mask``, ``mm_token_type_ids`` (1 on image tokens) and,
    with images, ``pixel_values`` (all images' patches, concatenated) and ``image_grid_thw``."""

    def __init__(self, image_processor=None, tokenizer=None, chat_template=None, **kwargs):
        super().__init__(image_processor, tokenizer, chat_template=chat_template, **kwargs)


#: Qwen2-VL merges ``merge_size`` x ``merge_size`` patches into one image token.
QWEN2_VL_MERGE_SIZE = 2
#: Qwen2-VL's video marker (no video is ever given, but its id must not collide with ``<unk>``).
QWEN2_VL_SPECIAL_TOKENS = {"video_token": "<video>"}


def qwen2_vl_processor(
    words: Iterable[str], image_size: int = 32, patch_size: int = 8, chat_template: str = CHAT_TEMPLATE
) -> Qwen2VLImageTextProcessor:
    """A :class:`Qwen2VLImageTextProcessor` on a word-level vocabulary: images resized to ``image_size`` x
    ``image_size`` (PIL image processor), each ``<image>`` expanded to ``(image_size / patch_size / 2) ** 2``
    image tokens."""
    _patch_grid(image_size, patch_size, QWEN2_VL_MERGE_SIZE, "qwen2_vl")
    tokenizer = word_level_tokenizer(words, chat_template, QWEN2_VL_SPECIAL_TOKENS)
    pixels = image_size * image_size  # the resize keeps the area between min_pixels and max_pixels
    image_processor = Qwen2VLImageProcessorPil(
        patch_size=patch_size,
        merge_size=QWEN2_VL_MERGE_SIZE,
        size={"shortest_edge": pixels, "longest_edge": pixels},
    )
    return Qwen2VLImageTextProcessor(
        image_processor=image_processor, tokenizer=tokenizer, chat_template=tokenizer.chat_template
    )


def _mrope_section(head_dim: int) -> list[int]:
    """Qwen2-VL's split of the rotary frequencies (``head_dim / 2``) between time, height and width, in
    Qwen2-VL's proportions (1/4, 3/8, 3/8: [16, 24, 24] for head_dim 128), at least one each from head_dim 6
    ([2, 1, 1] for head_dim 8; a head_dim of 4 leaves height and width none: [2, 0, 0])."""
    half = head_dim // 2
    spatial = max(half * 3 // 8, min(1, half // 3))
    return [half - 2 * spatial, spatial, spatial]


def _qwen2_vl_model(processor: Qwen2VLProcessor, size: VLMSize) -> Qwen2VLForConditionalGeneration:
    """A ViT whose patch merger outputs the language model's width, and a Qwen2 language model with
    multimodal RoPE."""
    image_processor = processor.image_processor
    vision_config = dict(
        depth=size.vision_layers,
        embed_dim=size.vision_hidden_size,
        hidden_size=size.hidden_size,
        num_heads=size.num_heads,
        mlp_ratio=2,
        patch_size=image_processor.patch_size,
        spatial_merge_size=image_processor.merge_size,
        temporal_patch_size=image_processor.temporal_patch_size,
    )
    text_config = _text_config(processor.tokenizer, size)
    text_config["rope_parameters"] = {
        "rope_type": "default",
        "mrope_section": _mrope_section(size.hidden_size // size.num_heads),
    }
    config = Qwen2VLConfig(
        text_config=text_config,
        vision_config=vision_config,
        image_token_id=processor.image_token_id,
        video_token_id=processor.video_token_id,
        pad_token_id=processor.tokenizer.pad_token_id,
    )
    return Qwen2VLForConditionalGeneration(config)


def _llava_processor_for_words(
    words: Iterable[str], image_size: int = 32, patch_size: int = 8, chat_template: str = CHAT_TEMPLATE
) -> LlavaProcessor:
    return llava_processor(word_level_tokenizer(words, chat_template), image_size, patch_size)


@dataclass(frozen=True)
class VLMFamily:
    """How one family's processor and model are built: ``processor(words, image_size, patch_size,
    chat_template)`` and ``model(processor, size)`` (a :class:`VLMSize`; randomly initialised); a saved
    processor is reloaded with ``processor_class.from_pretrained``."""

    processor: Callable[[Iterable[str], int, int, str], ProcessorMixin]
    model: Callable[[ProcessorMixin, VLMSize], PreTrainedModel]
    processor_class: type[ProcessorMixin]


#: The families :func:`vlm_processor` and :func:`tiny_vlm` build, by name (transformers' ``model_type``).
VLM_FAMILIES: dict[str, VLMFamily] = {
    "llava": VLMFamily(_llava_processor_for_words, _llava_model, LlavaProcessor),
    "idefics3": VLMFamily(idefics3_processor, _idefics3_model, Idefics3Processor),
    "qwen2_vl": VLMFamily(qwen2_vl_processor, _qwen2_vl_model, Qwen2VLImageTextProcessor),
}


def _family(family: str) -> VLMFamily:
    if family not in VLM_FAMILIES:
        raise ValueError(
            f"family={family!r} is not one of the vision-language families {sorted(VLM_FAMILIES)}."
        )
    return VLM_FAMILIES[family]


def vlm_processor(
    family: str,
    words: Iterable[str],
    image_size: int = 32,
    patch_size: int = 8,
    chat_template: str = CHAT_TEMPLATE,
) -> ProcessorMixin:
    """The processor of ``family`` (a key of :data:`VLM_FAMILIES`) on a word-level vocabulary over ``words``
    with ``chat_template`` (:data:`CHAT_TEMPLATE`'s tokens): images of ``image_size`` x ``image_size`` cut
    into ``patch_size`` patches. Pass it to :func:`tiny_vlm` with the same ``family``."""
    return _family(family).processor(words, image_size, patch_size, chat_template)


def tiny_vlm(
    family: str,
    processor: ProcessorMixin,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 128,
    seed: int | None = None,
) -> PreTrainedModel:
    """A randomly initialised image-text-to-text model of ``family`` for ``processor`` (of
    :func:`vlm_processor`), of the sizes of :class:`VLMSize`, initialised from ``seed`` when given. Models
    built for one processor share its vocabulary and image tokens, so a teacher and a smaller student see the
    same sequences; greedy generation stops at ``</s>`` and pads with ``<pad>``."""
    builder = _family(family).model
    size = VLMSize(
        hidden_size, num_layers, vision_hidden_size, vision_layers, num_heads, max_position_embeddings
    )
    if seed is not None:
        torch.manual_seed(seed)
    model = builder(processor, size)
    model.generation_config.pad_token_id = processor.tokenizer.pad_token_id
    model.generation_config.eos_token_id = processor.tokenizer.eos_token_id
    return model


def saved_family(folder: str) -> str:
    """The family (``model_type``) of the model saved in ``folder``."""
    return AutoConfig.from_pretrained(folder).model_type


def load_vlm(folder: str, family: str) -> tuple[PreTrainedModel, ProcessorMixin]:
    """The model of ``family`` saved in ``folder`` (``save_pretrained``) and its processor, reloaded with the
    family's processor class (Qwen2-VL's without a video processor, which `AutoProcessor` would need).
    A model of another family is refused, naming both."""
    found = saved_family(folder)
    if found != family:
        raise ValueError(f"{folder} holds a {found!r} model, not one of family={family!r}.")
    processor = _family(family).processor_class.from_pretrained(folder)
    return AutoModelForImageTextToText.from_pretrained(folder), processor


#: ``tiny_llava(processor, hidden_size=64, ..., seed=None)``: :func:`tiny_vlm` with ``family="llava"``, a
#: `LlavaForConditionalGeneration` (a CLIP vision tower, a 2-layer projector and a Llama language model).
tiny_llava = functools.partial(tiny_vlm, "llava")
