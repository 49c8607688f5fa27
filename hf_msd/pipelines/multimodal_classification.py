"""The `multimodal-classification` pipeline: classify (image, text) pairs, or one modality (unimodal models).

This file imports only transformers, torch, PIL and numpy: it is copied next to a saved hf_msd model (and
named in its `config.custom_pipelines`), so `pipeline(model=folder_or_repo, trust_remote_code=True)` builds it
where hf_msd is not installed.
"""

from __future__ import annotations

import inspect
import os
from collections.abc import Callable
from typing import Any

import numpy as np
import PIL.Image
import torch
from torch.utils.data import DataLoader
from transformers import Pipeline
from transformers.image_utils import load_image
from transformers.pipelines.base import no_collate_fn, pad_collate_fn
from transformers.pipelines.pt_utils import PipelineDataset, PipelineIterator

MODALITIES = ("image", "text")
#: Models trained with a per-label sigmoid (binary cross-entropy) although their config has no `problem_type`.
SIGMOID_MODELS = ("ViltForQuestionAnswering",)


def model_modalities(model) -> list[str]:
    """The modalities a model needs, in `MODALITIES` order: `config.modalities` for hf_msd's models, else the
    inputs its `forward` takes (`input_ids` -> "text", `pixel_values` -> "image"; ViLT takes both)."""
    declared = getattr(model.config, "modalities", None)
    if declared:
        return [m for m in MODALITIES if m in declared]
    parameters = inspect.signature(model.forward).parameters
    found = {"text": "input_ids" in parameters, "image": "pixel_values" in parameters}
    return [m for m in MODALITIES if found[m]]


def text_positions(config) -> int | None:
    """`max_position_embeddings` of a model config's text config (None when it has none, e.g. image-only)."""
    text_config = config.get_text_config() if hasattr(config, "get_text_config") else config
    return getattr(text_config, "max_position_embeddings", None)


def max_text_tokens(config, tokenizer) -> int | None:
    """The most tokens (special tokens included) a text may have for a model with `config`: the tokenizer's
    `model_max_length`, capped at :func:`text_positions` (None when neither is known). A tokenizer saved
    without `model_max_length` reports a huge placeholder and alone would not truncate at all."""
    limits = [getattr(tokenizer, "model_max_length", None), text_positions(config)]
    limits = [limit for limit in limits if limit is not None]
    return min(limits) if limits else None


def _describe(value: Any) -> str:
    return type(value).__name__


#: Channel counts of image arrays: grayscale, RGB, RGBA.
IMAGE_CHANNELS = (1, 3, 4)


def _rgb_array(image: np.ndarray | torch.Tensor, where: str) -> np.ndarray | torch.Tensor:
    """An image array or tensor with three channels, converted as PIL's `convert("RGB")` converts images:
    grayscale `(H, W)`, `(H, W, 1)` or `(1, H, W)` repeated into R, G and B, RGBA `(H, W, 4)` or `(4, H, W)`
    without its alpha channel. The result is `(3, H, W)` (an RGB array is returned unchanged); the channel
    axis is the first when it has 1, 3 or 4 entries, else the last, as transformers' image processors infer
    it. Any other shape raises a `ValueError` naming `where`."""
    shape = tuple(image.shape)
    if image.ndim == 3 and shape[0] in IMAGE_CHANNELS:
        channels_first = image
    elif image.ndim == 3 and shape[-1] in IMAGE_CHANNELS:
        channels_first = np.moveaxis(image, -1, 0) if isinstance(image, np.ndarray) else image.movedim(-1, 0)
    elif image.ndim == 2:
        channels_first = image[None]
    else:
        raise ValueError(
            f"{where}: 'image' array has shape {shape}; expected (H, W) grayscale, or (H, W, C) or (C, H, W) "
            "with C = 1 (grayscale), 3 (RGB) or 4 (RGBA, whose alpha channel is dropped)."
        )
    if channels_first.shape[0] == 3:
        return image
    return channels_first[[0, 0, 0]] if channels_first.shape[0] == 1 else channels_first[:3]


class MultimodalClassificationPipeline(Pipeline):
    """Classification of `{"image": ..., "text": ...}` inputs with a sequence-classification model that takes
    images and/or text: hf_msd's multimodal teacher and students, its unimodal students, ViLT.

    Inputs (one, or a list of them; `batch_size` batches them through the model):
        - `{"image": image, "text": str}`: `image` is a PIL image, a local path (or http(s) URL), or an
          array / tensor `(H, W)`, `(H, W, C)` or `(C, H, W)` with C = 1, 3 or 4. Images become RGB as PIL's
          `convert("RGB")` makes them: grayscale is repeated into three channels, alpha is dropped. A key may
          be left out only when the model does not take that modality; a model with one modality also takes
          the bare value (`pipe("what shape is it?")`).
        - keywords: `pipe(image=..., text=...)`.

    Serving a compiled model: `pipeline(..., compile=True)` runs the model through `torch.compile` (or pass
    its keywords: `compile={"mode": "max-autotune"}`); outputs equal eager ones within float tolerance.

    Parameters (at construction or call): `top_k` (default 5, at most `num_labels`; `None` for all labels),
    `function_to_apply` (`"default"`, `"softmax"`, `"sigmoid"`, `"none"`). The default is a sigmoid per label
    for multi-label models (`problem_type="multi_label_classification"`, a single label, or
    `ViltForQuestionAnswering`) and a softmax otherwise, as in transformers' classification pipelines.

    Returns, per input, `[{"label": str, "score": float}, ...]` sorted by decreasing score. Text is truncated
    to the tokens the model takes (:func:`max_text_tokens`).

    A missing modality, an unknown key, a modality the model does not take, a wrong type or an unreadable
    image raise a `ValueError` / `TypeError` naming the input (its index in a list) before any model call.
    """

    _load_processor = True
    _load_tokenizer = None
    _load_image_processor = None
    _load_feature_extractor = False

    def __init__(self, *args, compile: bool | dict[str, Any] = False, **kwargs):
        super().__init__(*args, **kwargs)
        #: What runs the model: the model itself, or with `compile` (True, or `torch.compile` keywords such
        #: as `{"mode": "max-autotune"}`) its `torch.compile` wrapper. The first call of each new input
        #: signature compiles (seconds to a minute on CPU); later calls reuse the graph, and a second batch
        #: size or text length makes that dimension dynamic instead of compiling one graph per size.
        self.forward_model = self.model
        if compile:
            self.forward_model = torch.compile(self.model, **(compile if isinstance(compile, dict) else {}))
        self.modalities = model_modalities(self.model)
        if not self.modalities:
            raise ValueError(
                f"{type(self.model).__name__} takes neither `input_ids` nor `pixel_values`: "
                "the multimodal-classification pipeline needs a text and/or image classification model."
            )
        if "text" in self.modalities and self.tokenizer is None:
            raise ValueError("This model takes text: pass `processor=` or `tokenizer=` to pipeline().")
        self.max_text_length = (
            max_text_tokens(self.model.config, self.tokenizer) if "text" in self.modalities else None
        )
        if "image" in self.modalities and self.image_processor is None:
            raise ValueError(
                "This model takes images: pass `processor=` or `image_processor=` to pipeline()."
            )

    # ---- parameters ------------------------------------------------------------------------------------

    def _sanitize_parameters(
        self, top_k: int | str | None = "", function_to_apply: str | None = None, **kwargs
    ):
        if kwargs:
            raise TypeError(
                f"Unknown arguments {sorted(kwargs)}; the pipeline takes top_k and function_to_apply."
            )
        postprocess = {}
        if top_k != "":  # "" = not given (None means every label)
            if top_k is not None and (not isinstance(top_k, int) or top_k < 1):
                raise ValueError(f"top_k must be a positive int or None, got {top_k!r}.")
            postprocess["top_k"] = top_k
        if function_to_apply is not None:
            if function_to_apply not in ("default", "softmax", "sigmoid", "none"):
                raise ValueError(
                    f"function_to_apply={function_to_apply!r}: use 'default', 'softmax', 'sigmoid' or 'none'."
                )
            postprocess["function_to_apply"] = function_to_apply
        return {}, {}, postprocess

    # ---- inputs ----------------------------------------------------------------------------------------

    def __call__(self, inputs=None, **kwargs):
        """Classify one input or a list of inputs (see the class docstring); `batch_size`, `top_k`,
        `function_to_apply` as keywords."""
        given = {m: kwargs.pop(m) for m in MODALITIES if m in kwargs}
        if given:
            if inputs is not None:
                raise ValueError("Pass the input either as the first argument or as image=/text= keywords.")
            inputs = given
        if inputs is None:
            raise ValueError(f"No input: pass {self._expected()} (or a list of them).")
        if isinstance(inputs, tuple):
            inputs = list(inputs)
        if isinstance(inputs, list):
            if not inputs:
                return []
            inputs = [self._check_input(item, f"input {i}") for i, item in enumerate(inputs)]
        else:
            inputs = self._check_input(inputs, "the input")
        return super().__call__(inputs, **kwargs)

    def _expected(self) -> str:
        return "{" + ", ".join(f'"{m}": ...' for m in self.modalities) + "}"

    def _check_input(self, item: Any, where: str) -> dict[str, Any]:
        """`item` as `{modality: value}` with exactly the model's modalities, each of an accepted type."""
        if not isinstance(item, dict):
            if len(self.modalities) != 1:
                raise TypeError(
                    f"{where} is a {_describe(item)}; this model takes {self.modalities}, so pass "
                    f"{self._expected()}."
                )
            item = {self.modalities[0]: item}
        unknown = sorted(set(item) - set(MODALITIES))
        if unknown:
            raise ValueError(f"{where} has unknown keys {unknown}; the keys are {list(MODALITIES)}.")
        for modality in self.modalities:
            if item.get(modality) is None:
                raise ValueError(
                    f"{where} has no {modality!r}, which this model needs (it takes {self.modalities}): "
                    f"pass {self._expected()}."
                )
        extra = [m for m in MODALITIES if m not in self.modalities and item.get(m) is not None]
        if extra:
            raise ValueError(
                f"{where} has {extra}, which this model does not take (it takes only {self.modalities}); "
                f"remove {extra} rather than have it ignored."
            )
        if "text" in self.modalities and not isinstance(item["text"], str):
            raise TypeError(f"{where}: 'text' must be a str, got {_describe(item['text'])}.")
        if "image" in self.modalities:
            image = item["image"]
            if isinstance(image, (np.ndarray, torch.Tensor)):
                _rgb_array(image, where)
            elif not isinstance(image, (str, os.PathLike, PIL.Image.Image)):
                raise TypeError(
                    f"{where}: 'image' must be a PIL image, a path or URL, or an array, "
                    f"got {_describe(image)}."
                )
        return {m: item[m] for m in self.modalities}

    @staticmethod
    def _load(image: Any) -> Any:
        """A PIL image (RGB) from a path or URL; PIL images are converted to RGB; arrays and tensors to three
        channels by :func:`_rgb_array`."""
        if isinstance(image, (str, os.PathLike)):
            source = os.fspath(image)
            if source.startswith(("http://", "https://")):
                return load_image(source)
            if not os.path.isfile(source):
                raise ValueError(f"'image' {source!r} is not a file (nor an http(s) URL).")
            try:
                with PIL.Image.open(source) as opened:
                    return opened.convert("RGB")
            except (OSError, PIL.UnidentifiedImageError) as error:
                raise ValueError(f"'image' {source!r} could not be read as an image: {error}") from error
        if isinstance(image, PIL.Image.Image):
            return image.convert("RGB")
        if isinstance(image, (np.ndarray, torch.Tensor)):
            return _rgb_array(image, "the input")
        return image

    # ---- pipeline steps --------------------------------------------------------------------------------

    def preprocess(self, inputs: dict[str, Any]) -> dict[str, torch.Tensor]:
        """One example -> model inputs with a batch dimension of 1 (`input_ids`... and/or `pixel_values`); the
        text is truncated to :func:`max_text_tokens` tokens."""
        text = [inputs["text"]] if "text" in inputs else None
        images = [self._load(inputs["image"])] if "image" in inputs else None
        if self.processor is not None:
            kwargs = {"images": images, "return_tensors": "pt"}
            if text is not None:
                kwargs.update(text=text, truncation=True, max_length=self.max_text_length)
            encoded = self.processor(**kwargs)
        else:
            encoded = {}
            if text is not None:
                encoded.update(
                    self.tokenizer(
                        text, truncation=True, max_length=self.max_text_length, return_tensors="pt"
                    )
                )
            if images is not None:
                encoded.update(self.image_processor(images, return_tensors="pt"))
        return dict(encoded)

    def _forward(self, model_inputs: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        return {"logits": self.forward_model(**model_inputs).logits}

    def postprocess(self, model_outputs, top_k: int | None = 5, function_to_apply: str = "default"):
        """`[{"label", "score"}]` for one example, best first (`top_k` entries, all when None)."""
        logits = model_outputs["logits"][0].float().numpy()
        if function_to_apply == "default":
            function_to_apply = "sigmoid" if self._is_multi_label() else "softmax"
        if function_to_apply == "sigmoid":
            scores = 1.0 / (1.0 + np.exp(-logits))
        elif function_to_apply == "softmax":
            shifted = np.exp(logits - logits.max())
            scores = shifted / shifted.sum()
        else:
            scores = logits
        order = np.argsort(-scores, kind="stable")
        if top_k is not None:
            order = order[:top_k]
        id2label = self.model.config.id2label
        return [{"label": id2label[int(i)], "score": float(scores[i])} for i in order]

    def _is_multi_label(self) -> bool:
        config = self.model.config
        return (
            config.problem_type == "multi_label_classification"
            or config.num_labels == 1
            or type(self.model).__name__ in SIGMOID_MODELS
        )

    # ---- batching --------------------------------------------------------------------------------------

    def get_iterator(
        self, inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
    ):
        """`Pipeline.get_iterator` for a list of inputs, collating with :func:`pad_images_then` (images of
        different sizes, as ViLT's processor makes them, are padded to the batch's largest)."""
        if not isinstance(inputs, list):
            return super().get_iterator(
                inputs, num_workers, batch_size, preprocess_params, forward_params, postprocess_params
            )
        dataset = PipelineDataset(inputs, self.preprocess, preprocess_params)
        collate = (
            no_collate_fn
            if batch_size == 1
            else pad_images_then(pad_collate_fn(self.tokenizer, self.image_processor))
        )
        loader = DataLoader(dataset, num_workers=num_workers, batch_size=batch_size, collate_fn=collate)
        model_iterator = PipelineIterator(loader, self.forward, forward_params, loader_batch_size=batch_size)
        return PipelineIterator(model_iterator, self.postprocess, postprocess_params)


def pad_images_then(collate: Callable[[list[dict]], dict]) -> Callable[[list[dict]], dict]:
    """Collate function: when the examples' `pixel_values` (1, C, H, W) differ in size, pad them (zeros,
    bottom / right) and their `pixel_mask` (1, H, W) to the batch's largest H and W, then `collate`. A model
    without `pixel_mask` cannot tell padding from image, so different sizes then raise an error."""

    def inner(items: list[dict[str, Any]]) -> dict[str, Any]:
        sizes = {tuple(item["pixel_values"].shape[-2:]) for item in items if "pixel_values" in item}
        if len(sizes) > 1:
            if not all("pixel_mask" in item for item in items):
                raise ValueError(
                    f"The images of this batch were preprocessed to different sizes {sorted(sizes)} and the "
                    "model takes no `pixel_mask`: use batch_size=1 or an image processor with a fixed size."
                )
            height, width = max(h for h, _ in sizes), max(w for _, w in sizes)
            for item in items:
                pad = (0, width - item["pixel_values"].shape[-1], 0, height - item["pixel_values"].shape[-2])
                item["pixel_values"] = torch.nn.functional.pad(item["pixel_values"], pad)
                item["pixel_mask"] = torch.nn.functional.pad(item["pixel_mask"], pad)
        return collate(items)

    return inner


__all__ = [
    "MultimodalClassificationPipeline",
    "max_text_tokens",
    "model_modalities",
    "pad_images_then",
    "text_positions",
]
