"""Tiny models, batches and processors for tests (any engineer may import these).

Everything is built offline from configs (hidden sizes 16-32, 1-2 layers), runs in milliseconds on CPU and is
seeded, so tests stay fast and deterministic.
"""

from pathlib import Path

import datasets
import numpy as np
import torch
from PIL import Image
from transformers import BertTokenizerFast, ViltConfig, ViltForQuestionAnswering, ViltProcessor

from hf_msd.models import (
    MultimodalTransformerConfig,
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerProcessor,
    default_image_processor,
)

TINY_IMAGE_SIZE = 16
TINY_PATCH_SIZE = 8  # -> 4 patches + [CLS] = 5 image tokens
# A tiny ResNet image tower (`vision_config`): 16x16 images -> a 2x2 feature map of width 12 (4 image tokens).
TINY_RESNET = {
    "model_type": "resnet",
    "image_size": TINY_IMAGE_SIZE,
    "embedding_size": 8,
    "hidden_sizes": [8, 12],
    "depths": [1, 1],
    "layer_type": "basic",
    "downsample_in_first_stage": False,
}
# easy-VQA's question words and answers, so the tiny tokenizer covers the real data set's text.
TINY_WORDS = [
    "?",
    "a",
    "black",
    "blue",
    "brown",
    "circle",
    "color",
    "contain",
    "does",
    "gray",
    "green",
    "image",
    "in",
    "is",
    "no",
    "not",
    "of",
    "present",
    "rectangle",
    "red",
    "shape",
    "teal",
    "the",
    "there",
    "triangle",
    "what",
    "yellow",
    "yes",
]
TINY_VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *TINY_WORDS]


def tiny_config(
    modalities: tuple[str, ...] | list[str] = ("text", "image"),
    num_labels: int = 3,
    problem_type: str | None = None,
    layers: int = 2,
    **overrides,
) -> MultimodalTransformerConfig:
    """A tiny MultimodalTransformerConfig: fusion width 32 (4 heads), text tower BERT width 24, image tower
    ViT width 16 (16x16 images, patch 8), each with ``layers`` layers. No dropout, so forward passes are
    deterministic in train mode too."""
    fields = {
        "modalities": list(modalities),
        "hidden_size": 32,
        "num_hidden_layers": layers,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "hidden_dropout_prob": 0.0,
        "attention_probs_dropout_prob": 0.0,
        "num_labels": num_labels,
        "problem_type": problem_type,
    }
    if "text" in modalities:
        fields["text_config"] = {
            "vocab_size": len(TINY_VOCAB),
            "hidden_size": 24,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "intermediate_size": 48,
            "max_position_embeddings": 64,
            "hidden_dropout_prob": 0.0,
            "attention_probs_dropout_prob": 0.0,
        }
    if "image" in modalities:
        fields["vision_config"] = {
            "image_size": TINY_IMAGE_SIZE,
            "patch_size": TINY_PATCH_SIZE,
            "hidden_size": 16,
            "num_hidden_layers": layers,
            "num_attention_heads": 2,
            "intermediate_size": 32,
        }
    fields.update(overrides)
    return MultimodalTransformerConfig(**fields)


def tiny_model(
    modalities: tuple[str, ...] | list[str] = ("text", "image"),
    num_labels: int = 3,
    problem_type: str | None = None,
    seed: int = 0,
    **overrides,
) -> MultimodalTransformerForSequenceClassification:
    """A seeded tiny MultimodalTransformerForSequenceClassification in eval mode: the multimodal teacher with
    the default `modalities`, a unimodal student with `("text",)` or `("image",)`."""
    torch.manual_seed(seed)
    config = tiny_config(modalities, num_labels=num_labels, problem_type=problem_type, **overrides)
    return MultimodalTransformerForSequenceClassification(config).eval()


def tiny_batch(
    config: MultimodalTransformerConfig | None = None,
    batch_size: int = 4,
    seq_len: int = 6,
    modalities: tuple[str, ...] | list[str] | None = None,
    labels: str | None = None,
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Random model inputs for `config` (default `tiny_config()`): `input_ids`, `attention_mask` (the second
    example is padded over its last two tokens), `token_type_ids` and/or `pixel_values` for `modalities`
    (default the config's), plus `labels` when `labels` is "single_label_classification" (int64 (B,)),
    "multi_label_classification" (soft scores in [0, 1], float (B, num_labels)) or "regression" (float (B,)
    when num_labels == 1, else (B, num_labels))."""
    config = config or tiny_config()
    modalities = config.modalities if modalities is None else modalities
    generator = torch.Generator().manual_seed(seed)
    batch = {}
    if "text" in modalities:
        batch["input_ids"] = torch.randint(5, config.vocab_size, (batch_size, seq_len), generator=generator)
        batch["input_ids"][:, 0] = TINY_VOCAB.index("[CLS]")
        batch["attention_mask"] = torch.ones(batch_size, seq_len, dtype=torch.long)
        if batch_size > 1:
            batch["attention_mask"][1, -2:] = 0
            batch["input_ids"][1, -2:] = 0
        batch["token_type_ids"] = torch.zeros(batch_size, seq_len, dtype=torch.long)
    if "image" in modalities:
        size = (batch_size, config.num_channels, config.image_size, config.image_size)
        batch["pixel_values"] = torch.randn(size, generator=generator)
    if labels == "single_label_classification":
        batch["labels"] = torch.randint(0, config.num_labels, (batch_size,), generator=generator)
    elif labels == "multi_label_classification":
        batch["labels"] = torch.rand(batch_size, config.num_labels, generator=generator)
    elif labels == "regression":
        shape = (batch_size,) if config.num_labels == 1 else (batch_size, config.num_labels)
        batch["labels"] = torch.randn(shape, generator=generator)
    elif labels is not None:
        raise ValueError(f"Unknown labels kind {labels!r}.")
    return batch


def tiny_tokenizer() -> BertTokenizerFast:
    """A lower-casing BERT WordPiece tokenizer over TINY_VOCAB, built offline."""
    return BertTokenizerFast(vocab={token: i for i, token in enumerate(TINY_VOCAB)}, do_lower_case=True)


def hand_truncated_ids(words: list[str], length: int) -> torch.Tensor:
    """`input_ids` (1, length) of `[CLS] words [SEP]` cut to `length` tokens, built by hand without a
    tokenizer (each of TINY_WORDS is one token of tiny_tokenizer())."""
    tokens = ["[CLS]", *words[: length - 2], "[SEP]"]
    return torch.tensor([[TINY_VOCAB.index(token) for token in tokens]])


def tiny_processor(folder: str | Path, image_size: int = TINY_IMAGE_SIZE) -> MultimodalTransformerProcessor:
    """A MultimodalTransformerProcessor (tiny tokenizer + ViT image processor resizing to `image_size`), saved
    in `folder` (so `AutoProcessor.from_pretrained(folder)` works) and returned."""
    processor = MultimodalTransformerProcessor(default_image_processor(image_size), tiny_tokenizer())
    processor.save_pretrained(folder)
    return processor


def tiny_images(count: int = 2, size: int = 20, seed: int = 0) -> list[Image.Image]:
    """Random RGB PIL images of `size` x `size`."""
    rng = np.random.default_rng(seed)
    return [Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)) for _ in range(count)]


def tiny_vilt_config(num_labels: int = 4) -> ViltConfig:
    """A tiny ViLT config (width 32, 2 layers, 32x32 images, patch 8) with a multi-label VQA head."""
    return ViltConfig(
        vocab_size=len(TINY_VOCAB),
        hidden_size=32,
        num_hidden_layers=2,
        num_attention_heads=4,
        intermediate_size=64,
        max_position_embeddings=40,
        image_size=32,
        patch_size=8,
        num_labels=num_labels,
        id2label={i: f"answer_{i}" for i in range(num_labels)},
        label2id={f"answer_{i}": i for i in range(num_labels)},
        problem_type="multi_label_classification",
    )


def tiny_vilt(num_labels: int = 4, seed: int = 0) -> ViltForQuestionAnswering:
    """A seeded tiny ViltForQuestionAnswering in eval mode."""
    torch.manual_seed(seed)
    return ViltForQuestionAnswering(tiny_vilt_config(num_labels)).eval()


def tiny_vilt_batch(
    batch_size: int = 2, seq_len: int = 6, num_labels: int = 4, seed: int = 0
) -> dict[str, torch.Tensor]:
    """ViLT inputs: `input_ids`, `attention_mask`, `token_type_ids`, `pixel_values` (B, 3, 32, 32),
    `pixel_mask` (B, 32, 32) and multi-label soft-score `labels` (B, num_labels)."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(5, len(TINY_VOCAB), (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.long),
        "pixel_values": torch.randn(batch_size, 3, 32, 32, generator=generator),
        "pixel_mask": torch.ones(batch_size, 32, 32, dtype=torch.long),
        "labels": torch.rand(batch_size, num_labels, generator=generator),
    }


def tiny_vilt_processor(folder: str | Path) -> ViltProcessor:
    """A ViltProcessor (tiny tokenizer + ViLT image processor at 32x32) saved in `folder` and returned."""
    from transformers import ViltImageProcessor

    image_processor = ViltImageProcessor(size={"shortest_edge": 32}, size_divisor=8, do_pad=True)
    processor = ViltProcessor(image_processor, tiny_tokenizer())
    processor.save_pretrained(folder)
    return processor


QUESTIONS = [
    "what color is the shape ?",
    "is there a red circle in the image ?",
    "does the image contain a triangle ?",
    "what shape is present ?",
    "is there not a blue rectangle ?",
]


def raw_dataset(size: int = 12, seed: int = 0, questions: list[str] | None = None) -> datasets.Dataset:
    """easy-VQA-like raw examples: a 20x20 PIL image, a question and a label in [0, 3)."""
    questions = questions or [QUESTIONS[i % len(QUESTIONS)] for i in range(size)]
    features = datasets.Features(
        {"image": datasets.Image(), "question": datasets.Value("string"), "label": datasets.Value("int64")}
    )
    return datasets.Dataset.from_dict(
        {"image": tiny_images(size, seed=seed), "question": questions, "label": [i % 3 for i in range(size)]},
        features=features,
    )
