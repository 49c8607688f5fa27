"""Fingerprints: hashes that change whenever something that shapes a cached result changes.

Shared by the teacher-output cache (:mod:`hf_msd.teacher_outputs.cache`) and the population-saliency cache of
:class:`~hf_msd.trainers.MSDTrainer` (:func:`hf_msd.distillation.saliency.saliency_fingerprint`), so both
invalidate on
the same changes:

- a model (:func:`model_fingerprint`): its config (JSON, without the runtime flags such as ``use_cache``
  that a ``Trainer`` changes) and a SHA-256 of the raw bytes of every tensor in
  its ``state_dict`` (parameters and buffers) with name, dtype and shape, so any changed weight, including
  a permutation of two columns, changes the hash;
- a dataset (:func:`dataset_fingerprint`): a `datasets.Dataset`'s own ``_fingerprint`` (which `datasets`
  derives from its content or files and every transform applied) plus the bytes of the image / audio files
  its rows refer to by path (a file replaced at the same path changes the hash); any other indexable
  dataset (a list, a torch ``Dataset``) is hashed example by example, so changing any example changes it;
- any other object (:func:`object_fingerprint`): collators and processors (with their settings: max
  length, image size, tokenizer...), modality specs, saliency functions. It uses `datasets`' own
  :class:`datasets.fingerprint.Hasher` (the hash `Dataset.map` gives its functions): functions and lambdas
  are hashed by their code and closure, not by their name.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterable, Mapping
from typing import Any

import datasets
import torch
from datasets.fingerprint import Hasher

#: Features whose rows may hold a file path instead of the bytes (decoded from the file when read).
FILE_FEATURES = (datasets.Image, datasets.Audio)

#: Bytes hashed per update when reading a tensor (keeps the memory overhead bounded).
_CHUNK_ELEMENTS = 1 << 22


def _tensor_bytes(tensor: torch.Tensor) -> Iterable[memoryview]:
    """The raw bytes of ``tensor`` (any dtype, including bfloat16), in chunks."""
    flat = tensor.detach().reshape(-1)
    for start in range(0, flat.numel(), _CHUNK_ELEMENTS):
        chunk = flat[start : start + _CHUNK_ELEMENTS].cpu().contiguous()
        yield memoryview(chunk.view(torch.uint8).numpy())


def tensors_fingerprint(tensors: Iterable[tuple[str, torch.Tensor]]) -> str:
    """SHA-256 hex digest over ``(name, dtype, shape, raw bytes)`` of each named tensor, in order."""
    digest = hashlib.sha256()
    for name, tensor in tensors:
        if tensor.device.type == "meta":
            raise ValueError(
                f"Cannot fingerprint tensor {name!r}: it is on the meta device (no data). Load the model's "
                "weights (e.g. from_pretrained without device_map='meta') before caching its outputs."
            )
        digest.update(f"{name}|{tensor.dtype}|{tuple(tensor.shape)}|".encode())
        for chunk in _tensor_bytes(tensor):
            digest.update(chunk)
    return digest.hexdigest()


#: Config fields that say how a model was last called or where it was loaded from, not what it computes:
#: left out of :func:`model_fingerprint` (``Trainer`` sets ``use_cache=False`` on the model it evaluates).
RUNTIME_CONFIG_FIELDS = frozenset(
    {"use_cache", "output_attentions", "output_hidden_states", "return_dict", "_name_or_path"}
)


def model_fingerprint(model: torch.nn.Module) -> str:
    """A hash of ``model``'s config (without :data:`RUNTIME_CONFIG_FIELDS`) and of every tensor of its
    ``state_dict`` (exact bytes)."""
    config = getattr(model, "config", None)
    if hasattr(config, "to_dict"):
        values = {k: v for k, v in config.to_dict().items() if k not in RUNTIME_CONFIG_FIELDS}
        config_text = json.dumps(values, sort_keys=True, default=repr)
    else:
        config_text = repr(config)
    with torch.no_grad():
        weights = tensors_fingerprint(model.state_dict().items())
    return combine_fingerprints(type=type(model).__qualname__, config=config_text, weights=weights)


def object_fingerprint(value: Any) -> str:
    """`datasets`' hash of any picklable object (collators, processors, modality specs, functions)."""
    return Hasher.hash(value)


def dataset_fingerprint(dataset: Any) -> str:
    """A hash of ``dataset``'s content: for a `datasets.Dataset`, its ``_fingerprint`` combined with the
    bytes of every file its image / audio columns refer to by path (see :func:`referenced_files_digest`);
    for any other indexable dataset, a hash of its length and of every example (slow for large ones, but
    never stale)."""
    fingerprint = getattr(dataset, "_fingerprint", None)
    if fingerprint is not None:
        files = referenced_files_digest(dataset) if isinstance(dataset, datasets.Dataset) else None
        return f"datasets:{fingerprint}" + (f":files:{files}" if files else "")
    hasher = Hasher()
    hasher.update(len(dataset))
    for index in range(len(dataset)):
        hasher.update(dataset[index])
    return f"content:{hasher.hexdigest()}"


def referenced_files_digest(dataset: datasets.Dataset) -> str | None:
    """SHA-256 over ``(path, SHA-256 of the file's bytes)`` of every distinct file that the dataset's
    top-level ``datasets.Image`` / ``datasets.Audio`` columns store by path (the bytes a collator decodes);
    None when no column does. `datasets`' own ``_fingerprint`` hashes such paths, not the files, so a file
    replaced at the same path would otherwise look unchanged. Each distinct file is read once: easy-VQA's
    34,779 train rows point at 3,600 PNGs (15 MB), hashed in 0.4-0.7 s on 2 busy CPU cores (page cache warm).
    A missing file is hashed as missing (the data validation reports it)."""
    columns = [name for name, feature in dataset.features.items() if isinstance(feature, FILE_FEATURES)]
    if not columns:
        return None
    table = dataset.with_format("arrow", columns=columns)[:]
    paths = set()
    for column in columns:
        values = table.column(column).combine_chunks()
        stored, path = values.field("bytes"), values.field("path")
        paths.update(p for b, p in zip(stored.is_null().to_pylist(), path.to_pylist()) if b and p)
    digest = hashlib.sha256()
    for path in sorted(paths):
        try:
            with open(path, "rb") as file:
                content = hashlib.file_digest(file, "sha256").hexdigest()
        except OSError:
            content = "missing"
        digest.update(f"{path}\0{content}\0".encode())
    return digest.hexdigest()


def combine_fingerprints(**parts: Any) -> str:
    """SHA-256 of the named parts (strings, numbers, or JSON-serialisable mappings / lists)."""
    text = json.dumps(_jsonable(parts), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def _jsonable(value: Any) -> Any:
    if isinstance(value, Mapping):
        return {str(key): _jsonable(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(item) for item in value]
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    return object_fingerprint(value)
