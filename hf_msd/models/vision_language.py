"""Tiny LLaVA-style vision-language models built from configs (nothing downloads), for examples and tests.

A word-level tokenizer over a fixed vocabulary (built with the `tokenizers` library) with a chat template, a
`LlavaProcessor` around it and a PIL-only CLIP image processor, and `LlavaForConditionalGeneration` models
(a CLIP vision tower, a projector and a Llama language model) of any small size that share that processor, so
a teacher and a smaller student see the same token sequences.
"""

from __future__ import annotations

from collections.abc import Iterable

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    CLIPVisionConfig,
    LlamaConfig,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaProcessor,
    PreTrainedTokenizerFast,
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


def word_level_tokenizer(words: Iterable[str], chat_template: str = CHAT_TEMPLATE) -> PreTrainedTokenizerFast:
    """A tokenizer whose tokens are :data:`SPECIAL_TOKENS` (ids 0-4), :data:`TEMPLATE_WORDS` and ``words``
    (sorted, duplicates removed), split on whitespace and punctuation; unknown words map to ``<unk>``."""
    vocabulary = list(SPECIAL_TOKENS) + list(TEMPLATE_WORDS)
    vocabulary += sorted(set(words) - set(vocabulary))
    tokenizer = Tokenizer(models.WordLevel({word: i for i, word in enumerate(vocabulary)}, unk_token=UNK))
    tokenizer.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(
        tokenizer_object=tokenizer,
        pad_token=PAD,
        unk_token=UNK,
        bos_token=BOS,
        eos_token=EOS,
        extra_special_tokens={"image_token": IMAGE},
        chat_template=chat_template,
    )


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


def tiny_llava(
    processor: LlavaProcessor,
    hidden_size: int = 64,
    num_layers: int = 2,
    vision_hidden_size: int = 64,
    vision_layers: int = 2,
    num_heads: int = 2,
    max_position_embeddings: int = 128,
    seed: int | None = None,
) -> LlavaForConditionalGeneration:
    """A randomly initialised `LlavaForConditionalGeneration` for ``processor``'s tokenizer and image size: a
    CLIP vision tower (``vision_hidden_size`` x ``vision_layers``), a 2-layer projector and a Llama language
    model (``hidden_size`` x ``num_layers``). Models built for one processor share the vocabulary and image
    tokens."""
    tokenizer = processor.tokenizer
    image_size = processor.image_processor.crop_size["height"]
    if seed is not None:
        torch.manual_seed(seed)
    vision_config = CLIPVisionConfig(
        hidden_size=vision_hidden_size,
        intermediate_size=2 * vision_hidden_size,
        num_hidden_layers=vision_layers,
        num_attention_heads=num_heads,
        image_size=image_size,
        patch_size=processor.patch_size,
    )
    text_config = LlamaConfig(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=num_layers,
        num_attention_heads=num_heads,
        num_key_value_heads=num_heads,
        max_position_embeddings=max_position_embeddings,
        pad_token_id=tokenizer.pad_token_id,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
    )
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE),
        vision_feature_select_strategy="default",
        vision_feature_layer=-1,
        pad_token_id=tokenizer.pad_token_id,
    )
    model = LlavaForConditionalGeneration(config)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    return model
