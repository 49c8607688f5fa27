"""Test helpers for tests/test_data.py: a tiny processor with the MultimodalTransformerProcessor contract."""

from __future__ import annotations

import numpy as np
from PIL import Image
from transformers import BatchFeature, BertTokenizer, ViTImageProcessorPil

WORDS = ["what", "is", "the", "shape", "color", "?", "red", "circle", "a", "cat", "dog"]
IMAGE_SIZE = 16


class TinyProcessor:
    """Mimics `processor(images=None, text=None, return_tensors="pt", padding=True, truncation=True,
    max_length=None)` -> BatchFeature with input_ids / token_type_ids / attention_mask and/or
    pixel_values (B, 3, 16, 16).

    Records the arguments of its last call so tests can check what the collator sent."""

    def __init__(self):
        special = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
        self.tokenizer = BertTokenizer(vocab={token: i for i, token in enumerate(special + WORDS)})
        self.image_processor = ViTImageProcessorPil(size={"height": IMAGE_SIZE, "width": IMAGE_SIZE})
        self.last_call: dict = {}

    def __call__(self, images=None, text=None, return_tensors="pt", **text_kwargs) -> BatchFeature:
        self.last_call = {"images": images, "text": text, **text_kwargs}
        data = {}
        if text is not None:
            data.update(self.tokenizer(text, return_tensors=return_tensors, **text_kwargs))
        if images is not None:
            data.update(self.image_processor(images=images, return_tensors=return_tensors))
        return BatchFeature(data)


def write_png(path, color=(255, 0, 0), size=(8, 8), mode="RGB") -> str:
    """Write a small solid-colour PNG and return its path as str."""
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((size[1], size[0], 3), color, dtype=np.uint8)).convert(mode).save(path)
    return str(path)
