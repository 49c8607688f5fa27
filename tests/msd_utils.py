"""Test helpers for the MSD tests (engineer D): tiny ViLT, batches and a toy three-modality model."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn
from transformers import ViltConfig, ViltForQuestionAnswering

VILT_IMAGE = 32
VILT_VOCAB = 40


def tiny_vilt(num_labels: int = 3, seed: int = 0) -> ViltForQuestionAnswering:
    """A randomly initialised ViLT with hidden size 16 and one layer, in eval mode."""
    torch.manual_seed(seed)
    config = ViltConfig(
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        image_size=VILT_IMAGE,
        patch_size=16,
        max_image_length=-1,
        num_labels=num_labels,
        vocab_size=VILT_VOCAB,
        max_position_embeddings=16,
        hidden_dropout_prob=0.0,
        attention_probs_dropout_prob=0.0,
    )
    return ViltForQuestionAnswering(config).eval()


def vilt_batch(batch_size: int = 4, seq_len: int = 6, seed: int = 1) -> dict[str, torch.Tensor]:
    """A batch with every ViLT input, random ids (no padding id 0) and images."""
    generator = torch.Generator().manual_seed(seed)
    return {
        "input_ids": torch.randint(1, VILT_VOCAB, (batch_size, seq_len), generator=generator),
        "attention_mask": torch.ones(batch_size, seq_len, dtype=torch.long),
        "token_type_ids": torch.zeros(batch_size, seq_len, dtype=torch.long),
        "pixel_values": torch.randn(batch_size, 3, VILT_IMAGE, VILT_IMAGE, generator=generator),
        "pixel_mask": torch.ones(batch_size, VILT_IMAGE, VILT_IMAGE, dtype=torch.long),
    }


class ThreeInputModel(nn.Module):
    """A toy model with three optional inputs ``a``, ``b``, ``c`` (each (B, 4)): logits = sum of the
    linear maps of the inputs that are present (plus a bias)."""

    def __init__(self, num_labels: int = 3, seed: int = 0) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.maps = nn.ModuleDict({key: nn.Linear(4, num_labels, bias=False) for key in "abc"})
        self.bias = nn.Parameter(torch.randn(num_labels))

    def forward(self, a=None, b=None, c=None):
        logits = self.bias.expand(next(x for x in (a, b, c) if x is not None).shape[0], -1)
        for key, value in zip("abc", (a, b, c)):
            if value is not None:
                logits = logits + self.maps[key](value)
        return SimpleNamespace(logits=logits)
