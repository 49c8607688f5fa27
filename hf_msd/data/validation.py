"""Up-front checks of raw multimodal examples: bad rows fail before training, naming their row and column
(instead of a bare ``IndexError`` or a PIL error naming no file several steps in)."""

from __future__ import annotations

import io
import operator
import os
from collections.abc import Sequence
from typing import Any

import datasets
import PIL.Image

#: At most this many problems are listed in one error.
MAX_LISTED = 10


def _image_problem(value: Any) -> str | None:
    """Why ``value`` (a PIL image, a path, or a `datasets` {"path", "bytes"} dict) is not a readable image."""
    if isinstance(value, PIL.Image.Image):
        return None
    if isinstance(value, dict):
        value = value.get("path") if value.get("bytes") is None else value["bytes"]
    if value is None or (isinstance(value, str) and not value.strip()):
        return "no image"
    try:
        if isinstance(value, bytes):
            source = io.BytesIO(value)
        elif isinstance(value, (str, os.PathLike)):
            if not os.path.isfile(value):
                return f"image file not found: {value}"
            source = value
        else:
            return f"not an image, a path or an image dict ({type(value).__name__})"
        with PIL.Image.open(source) as image:
            image.verify()  # reads the whole file: catches truncated and corrupt files
    except Exception as error:
        name = value if isinstance(value, (str, os.PathLike)) else "embedded image bytes"
        return f"unreadable image {name} ({error})"
    return None


def _class_id(value: Any) -> int | None:
    """``value`` as a class id when it is integer-like (int, numpy integer, 0-d integer array or tensor);
    None for anything else (bools, floats, strings...)."""
    if isinstance(value, (bool, float, str, bytes)):
        return None
    try:
        return operator.index(value)
    except TypeError:
        return None


def _label_problem(label: Any, num_labels: int | None, multi_label: bool) -> str | None:
    if label is None:
        return None  # unlabelled examples are allowed (distillation terms only)
    if isinstance(label, str):
        return f"label {label!r} is a string, not a class id: map the label names to ids (e.g. a ClassLabel)"
    if multi_label:
        if _class_id(label) is not None or not isinstance(label, Sequence):
            return (
                f"label {label!r} is one class id, but the model is multi-label: give a list of class ids "
                "(or a float score vector of length num_labels)"
            )
        ids = [_class_id(v) for v in label]
        if num_labels is not None and None not in ids:
            outside = [v for v in ids if not 0 <= v < num_labels and v != -100]
            if outside:
                return f"label ids {outside} outside [0, {num_labels})"
        return None
    class_id = _class_id(label)
    if class_id is None or num_labels is None or num_labels <= 1 or class_id == -100:
        return None
    if not 0 <= class_id < num_labels:
        return f"label {class_id} outside the label set [0, {num_labels})"
    return None


def validate_examples(
    dataset,
    *,
    text_column: str | None = None,
    image_column: str | None = None,
    label_column: str | None = None,
    num_labels: int | None = None,
    multi_label: bool = False,
    name: str = "dataset",
) -> None:
    """Raise a ValueError listing the bad rows of ``dataset`` (a `datasets.Dataset` or a list of dicts).

    Checks, naming row and column: the dataset is not empty; each ``text_column`` value is a non-empty
    string; each ``image_column`` value is a readable image (the file exists and PIL reads it whole, so
    truncated files are caught; each distinct file is read once, images are not decoded); each label of
    ``label_column`` is a class id in ``[0, num_labels)`` (single-label) or a list of them / a score vector
    (``multi_label``). ``-100`` and ``None`` labels mean "unlabelled" and pass. Columns set to None are not
    checked.
    """
    if len(dataset) == 0:
        raise ValueError(f"{name} is empty: give it at least one example (check the data files and filters).")
    columns = dataset.column_names if isinstance(dataset, datasets.Dataset) else list(dataset[0])
    for column in (text_column, image_column):
        if column is not None and column not in columns:
            raise ValueError(f"{name} has no column {column!r} (columns: {columns}).")

    def values(column: str) -> list:
        if isinstance(dataset, datasets.Dataset):
            if isinstance(dataset.features.get(column), datasets.Image):  # paths / bytes, not decoded images
                return dataset.cast_column(column, datasets.Image(decode=False))[column]
            return dataset[column]
        return [example.get(column) for example in dataset]

    problems: list[str] = []
    if text_column is not None:
        for row, text in enumerate(values(text_column)):
            if not isinstance(text, str) or not text.strip():
                problems.append(f"row {row}, column {text_column!r}: empty or missing text ({text!r})")
    if image_column is not None:
        seen: dict[Any, str | None] = {}
        for row, image in enumerate(values(image_column)):
            key = image.get("path") if isinstance(image, dict) and image.get("bytes") is None else None
            if key is None or key not in seen:
                problem = _image_problem(image)
                if key is not None:
                    seen[key] = problem
            else:
                problem = seen[key]
            if problem:
                problems.append(f"row {row}, column {image_column!r}: {problem}")
    if label_column is not None and label_column in columns:
        for row, label in enumerate(values(label_column)):
            problem = _label_problem(label, num_labels, multi_label)
            if problem:
                problems.append(f"row {row}, column {label_column!r}: {problem}")
    if problems:
        listed = "\n  ".join(problems[:MAX_LISTED])
        more = f"\n  ... and {len(problems) - MAX_LISTED} more" if len(problems) > MAX_LISTED else ""
        raise ValueError(
            f"{name} has {len(problems)} bad example(s):\n  {listed}{more}\nFix or remove these rows "
            "(e.g. dataset.filter(...)) before training."
        )
