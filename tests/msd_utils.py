"""Test helpers for the MSD tests (engineer D): a toy three-modality model."""

from __future__ import annotations

from types import SimpleNamespace

import torch
from torch import nn


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
