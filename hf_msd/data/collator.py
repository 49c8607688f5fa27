"""Turn raw multimodal examples (image, text, label) into model inputs through the model's processor."""

from __future__ import annotations

import io
import os
from collections.abc import Sequence
from typing import Any

import numpy as np
import PIL.Image
import torch
from transformers import BatchFeature

from ..constants import IGNORE_INDEX
from ..pipelines.multimodal_classification import max_text_tokens, text_positions
from .validation import validate_examples

MODALITIES = ("text", "image")


def _to_rgb(image: Any) -> PIL.Image.Image:
    """A PIL RGB image from a PIL image, a file path, or a `datasets` {"path", "bytes"} dict."""
    if isinstance(image, dict):
        image = image.get("path") if image.get("bytes") is None else image["bytes"]
    if isinstance(image, (str, os.PathLike)):
        image = PIL.Image.open(image)
    elif isinstance(image, bytes):
        image = PIL.Image.open(io.BytesIO(image))
    if not isinstance(image, PIL.Image.Image):
        raise TypeError(f"expected a PIL image, a path or an image dict, got {type(image).__name__}.")
    return image if image.mode == "RGB" else image.convert("RGB")


def _stack(values: list[Any]) -> torch.Tensor:
    """Stack numbers, lists, numpy arrays or tensors into one tensor (B, ...); ints stay int64."""
    return torch.stack([torch.as_tensor(np.asarray(value)) for value in values])


class MultimodalDataCollator:
    """Collate examples into a batch for a (possibly unimodal) student.

    Each example is a dict with raw inputs: `text_column` (str), `image_column` (PIL image / path) and
    `label_column`. Only the columns of `modalities` are read and sent to the processor, so a text-only
    student never touches images and an image-only student never tokenizes text. (To also skip *decoding*
    images that a `datasets.Image` column would decode, remove that column from the dataset.)

    The processor is called as `processor(images=..., text=..., return_tensors="pt", padding=True,
    truncation=True, max_length=max_length)` (text arguments only with text), giving `input_ids`,
    `attention_mask`, `token_type_ids` and/or `pixel_values` (and e.g. `pixel_mask`). With `max_length=None`
    the tokenizer's `model_max_length` applies, which a tokenizer saved without one sets to a huge
    placeholder: :meth:`from_model` sets `max_length` to what the model takes.

    Labels (key `labels`):
    - single label: int class ids -> int64 (B,);
    - multi-label (`num_labels` set): each label is a list of class ids -> float32 multi-hot (B, num_labels),
      or already a float vector of length num_labels (e.g. VQA soft scores) -> float32 (B, num_labels);
    - regression: float labels -> float32 (B,) or (B, k).
    Examples without `label_column` give a batch without `labels`. An example whose label is `None` is
    unlabelled: its label is -100 (single-label and regression (B,)) or a row of -100 (multi-label and
    regression (B, k)), which the trainers' task term ignores (`hf_msd.distillation.losses.labelled_mask`)
    while the
    distillation terms still use the example.

    Columns named in `passthrough_columns`, or starting with one of them plus "_" (by default
    `teacher_logits` and `teacher_logits_<modality>`, cached teacher outputs), are stacked as float32
    tensors (B, ...) and added to the batch unchanged.
    """

    def __init__(
        self,
        processor: Any,
        modalities: Sequence[str] = MODALITIES,
        text_column: str = "question",
        image_column: str = "image",
        label_column: str = "label",
        num_labels: int | None = None,
        max_length: int | None = None,
        passthrough_columns: Sequence[str] = ("teacher_logits",),
    ):
        unknown = [m for m in modalities if m not in MODALITIES]
        if unknown or not modalities:
            raise ValueError(
                f"modalities must be a non-empty subset of {MODALITIES}, got {list(modalities)}."
            )
        if num_labels is not None and num_labels < 1:
            raise ValueError(f"num_labels must be a positive number of classes, got {num_labels}.")
        self.processor = processor
        self.modalities = tuple(modalities)
        self.text_column = text_column
        self.image_column = image_column
        self.label_column = label_column
        self.num_labels = num_labels
        self.max_length = max_length
        self.passthrough_columns = tuple(passthrough_columns)

    @classmethod
    def from_model(cls, model: Any, processor: Any, **kwargs: Any) -> MultimodalDataCollator:
        """Build a collator matching `model`: its `config.modalities` (when present), for a multi-label model
        (`config.problem_type == "multi_label_classification"`) its `num_labels`, and as `max_length` the
        most tokens the model takes (:func:`~hf_msd.pipelines.multimodal_classification.max_text_tokens`: the
        tokenizer's `model_max_length`, capped at the text config's `max_position_embeddings`). Explicit
        `kwargs` win, except a `max_length` above the model's `max_position_embeddings`, which is refused."""
        config = model.config
        if getattr(config, "modalities", None):
            kwargs.setdefault("modalities", tuple(config.modalities))
        if getattr(config, "problem_type", None) == "multi_label_classification":
            kwargs.setdefault("num_labels", config.num_labels)
        if "text" in kwargs.get("modalities", MODALITIES):
            # A tokenizer without `model_max_length` would not truncate: cap at the model's positions.
            positions = text_positions(config)
            max_length = kwargs.get("max_length")
            if max_length is None:
                kwargs["max_length"] = max_text_tokens(config, getattr(processor, "tokenizer", processor))
            elif positions is not None and max_length > positions:
                raise ValueError(
                    f"max_length={max_length} is more than the {positions} text positions of "
                    f"{type(model).__name__} (max_position_embeddings of its text config): pass "
                    f"max_length <= {positions}."
                )
        return cls(processor, **kwargs)

    def validate(
        self, dataset, num_labels: int | None = None, multi_label: bool | None = None, name: str = "dataset"
    ) -> None:
        """Check ``dataset``'s rows for this collator before training, naming each bad row and column (empty
        text, a missing or unreadable image file, a label outside ``[0, num_labels)`` or of the wrong kind):
        :func:`hf_msd.data.validation.validate_examples` on this collator's columns. ``num_labels`` and
        ``multi_label`` default to the collator's (a collator with ``num_labels`` is multi-label)."""
        validate_examples(
            dataset,
            text_column=self.text_column if "text" in self.modalities else None,
            image_column=self.image_column if "image" in self.modalities else None,
            label_column=self.label_column,
            num_labels=self.num_labels or num_labels,
            multi_label=self.num_labels is not None if multi_label is None else multi_label,
            name=name,
        )

    def _column(self, examples: list[dict[str, Any]], column: str, modality: str) -> list[Any]:
        missing = [i for i, example in enumerate(examples) if example.get(column) is None]
        if missing:
            raise KeyError(
                f"example {missing[0]} has no {modality} in column {column!r} (keys: {sorted(examples[0])}). "
                f"Fix: pass {modality}_column=<your column>, or drop {modality!r} from modalities for a "
                "student without that modality. With a Trainer, also set remove_unused_columns=False: "
                "otherwise it drops raw columns that are not arguments of the model's forward."
            )
        return [example[column] for example in examples]

    def _labels(self, labels: list[Any]) -> torch.Tensor:
        if self.num_labels is None:
            known = [label for label in labels if label is not None]
            if not known:  # a batch of unlabelled single-label examples
                return torch.full((len(labels),), IGNORE_INDEX, dtype=torch.long)
            first = np.asarray(known[0])
            if first.ndim > 0 and (first.size == 0 or first.dtype.kind in "iub"):
                raise ValueError(
                    "labels are lists of class ids (multi-label) but num_labels is not set. Fix: pass "
                    "num_labels=<number of classes>, or use MultimodalDataCollator.from_model()."
                )
            ignored = np.full(first.shape, IGNORE_INDEX, dtype=first.dtype)
            stacked = _stack([ignored if label is None else label for label in labels])
            return stacked.float() if stacked.is_floating_point() else stacked  # int64 ids or float targets
        rows = []
        for label in labels:
            if label is None:
                rows.append(torch.full((self.num_labels,), float(IGNORE_INDEX)))
                continue
            label = torch.as_tensor(label)
            if torch.is_floating_point(label) and label.numel():  # [] means no labels, not scores
                if label.shape != (self.num_labels,):
                    raise ValueError(
                        f"float label vectors must have shape ({self.num_labels},), got {label.shape}."
                    )
                rows.append(label.float())
            else:
                if label.numel() and (label.min() < 0 or label.max() >= self.num_labels):
                    raise ValueError(f"label ids {label.tolist()} outside [0, {self.num_labels}).")
                rows.append(torch.zeros(self.num_labels).index_fill_(0, label.long().reshape(-1), 1.0))
        return torch.stack(rows)

    def __call__(self, examples: list[dict[str, Any]]) -> BatchFeature:
        """Collate a list of examples into a `BatchFeature` of tensors (see the class docstring)."""
        inputs: dict[str, Any] = {"return_tensors": "pt"}
        if "text" in self.modalities:
            inputs["text"] = self._column(examples, self.text_column, "text")
            inputs.update(padding=True, truncation=True, max_length=self.max_length)
        if "image" in self.modalities:
            inputs["images"] = [
                _to_rgb(image) for image in self._column(examples, self.image_column, "image")
            ]
        batch = dict(self.processor(**inputs))
        if self.label_column in examples[0]:
            batch["labels"] = self._labels([example[self.label_column] for example in examples])
        for key in examples[0]:
            if any(key == name or key.startswith(f"{name}_") for name in self.passthrough_columns):
                batch[key] = torch.stack(
                    [torch.as_tensor(np.asarray(e[key]), dtype=torch.float32) for e in examples]
                )
        return BatchFeature(batch)
