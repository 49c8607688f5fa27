"""Test helpers for the MSD tests (engineer D): a toy three-input model, a hand-made teacher and the
constructed task where the text carries the label and the image is noise."""

from __future__ import annotations

from types import SimpleNamespace

import torch
import torch.nn.functional as F
from torch import nn
from transformers import PretrainedConfig, PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput


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


class OracleTeacherConfig(PretrainedConfig):
    model_type = "msd_test_oracle"


class OracleTeacher(PreTrainedModel):
    """A hand-made teacher for the constructed task: the label is ``input_ids[:, 1] - 5`` and the image is
    noise. Logits = ``text_scale * onehot(input_ids[:, 1] - 5)`` (when text is given) plus
    ``image_scale * W @ mean_pixel_per_channel`` (when an image is given)."""

    config_class = OracleTeacherConfig

    def __init__(self, config: OracleTeacherConfig, text_scale: float = 4.0, image_scale: float = 4.0):
        super().__init__(config)
        self.text_scale, self.image_scale = text_scale, image_scale
        self.image_map = nn.Linear(3, config.num_labels, bias=False)
        self.post_init()

    def _init_weights(self, module):
        if isinstance(module, nn.Linear):
            generator = torch.Generator().manual_seed(0)
            module.weight.data.copy_(torch.randn(module.weight.shape, generator=generator))

    def forward(self, input_ids=None, attention_mask=None, token_type_ids=None, pixel_values=None, **kwargs):
        batch = (input_ids if input_ids is not None else pixel_values).shape[0]
        logits = torch.zeros(batch, self.config.num_labels)
        if input_ids is not None:
            logits = logits + self.text_scale * F.one_hot(input_ids[:, 1] - 5, self.config.num_labels)
        if pixel_values is not None:
            logits = logits + self.image_scale * self.image_map(pixel_values.mean(dim=(2, 3)))
        return SequenceClassifierOutput(logits=logits)


def oracle_teacher(num_labels: int = 3) -> OracleTeacher:
    return OracleTeacher(OracleTeacherConfig(num_labels=num_labels)).eval()


def text_label_dataset(size: int, num_labels: int = 3, seed: int = 0, seq_len: int = 6) -> list[dict]:
    """The constructed task: token 1 of the text is ``5 + label``; other tokens and the image are noise."""
    generator = torch.Generator().manual_seed(seed)
    labels = torch.randint(0, num_labels, (size,), generator=generator)
    input_ids = torch.randint(5 + num_labels, 20, (size, seq_len), generator=generator)
    input_ids[:, 0] = 2  # [CLS]
    input_ids[:, 1] = 5 + labels
    pixel_values = torch.randn(size, 3, 16, 16, generator=generator)
    return [
        {
            "input_ids": input_ids[i],
            "attention_mask": torch.ones(seq_len, dtype=torch.long),
            "token_type_ids": torch.zeros(seq_len, dtype=torch.long),
            "pixel_values": pixel_values[i],
            "labels": labels[i],
        }
        for i in range(size)
    ]


def stack_collate(examples: list[dict]) -> dict[str, torch.Tensor]:
    return {key: torch.stack([example[key] for example in examples]) for key in examples[0]}
