"""Load the user's own multimodal classification data from local files, validated before any training.

Supported inputs:
- CSV (`.csv`) and JSON Lines (`.jsonl` / `.json`, one object per line) with an image path column, a text
  column and a label column. Relative image paths are resolved against `base_dir` (default: the directory
  of the data file). Multi-label rows hold a list of label names: a JSON list in JSON Lines, a
  `label_delimiter`-separated string in CSV (e.g. "cat|dog").
- An image folder: `root/<label>/<image>` (one "train" split) or `root/<split>/<label>/<image>` when every
  subdirectory of `root` is a split name (train / validation / test). Image-only: no text column.

Whatever the input, the result has the standard columns `image` (`datasets.Image`, decoded lazily),
`text` (str) and `label` (`ClassLabel`, or `List(ClassLabel)` for multi-label); the user's column names are
mapped onto them and other columns are dropped. Pass `text_column=None` / `image_column=None` /
`label_column=None` for data without that column.

Every problem (missing column, missing or unreadable image, label outside the label set, malformed row) is
collected and raised together as a `DataValidationError` naming the file, row, line and column.
"""

from __future__ import annotations

import csv
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import PIL.Image
from datasets import ClassLabel, Dataset, DatasetDict, Features, Image, List, Value

from ..errors import UserInputError

IMAGE_EXTENSIONS = (".bmp", ".gif", ".jpeg", ".jpg", ".png", ".tif", ".tiff", ".webp")
SPLIT_NAMES = ("train", "validation", "test")
_MAX_REPORTED_PROBLEMS = 20


class DataValidationError(UserInputError, ValueError):
    """Raised when local data files have problems; `problems` lists one message per problem."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:_MAX_REPORTED_PROBLEMS]
        more = len(problems) - len(shown)
        lines = [f"Found {len(problems)} problem(s) in the data files:", *(f"  - {p}" for p in shown)]
        if more:
            lines.append(f"  ... and {more} more.")
        super().__init__("\n".join(lines))


@dataclass
class _Row:
    """One raw example and where it came from (for error messages)."""

    values: dict[str, Any]
    where: str  # e.g. "data.csv, row 3 (line 4)"
    base_dir: Path


def _read_csv(path: Path, base_dir: Path, problems: list[str]) -> tuple[list[_Row], set[str]]:
    with path.open(newline="", encoding="utf-8") as file:
        reader = csv.DictReader(file)
        rows = []
        for i, record in enumerate(reader, start=1):
            where = f"{path}, row {i} (line {reader.line_num})"
            if None in record:  # csv.DictReader files surplus cells under the key None
                problems.append(
                    f"{where}: more cells than header columns. Fix: quote cells containing commas."
                )
            rows.append(_Row(record, where, base_dir))
        return rows, set(reader.fieldnames or ())


def _read_jsonl(path: Path, base_dir: Path, problems: list[str]) -> tuple[list[_Row], set[str]]:
    rows, columns = [], set()
    with path.open(encoding="utf-8") as file:
        lines = [line for line in enumerate(file, start=1) if line[1].strip()]
    for row, (line_number, line) in enumerate(lines, start=1):
        where = f"{path}, row {row} (line {line_number})"
        try:
            record = json.loads(line)
        except json.JSONDecodeError as error:
            problems.append(f"{where}: invalid JSON ({error.msg}). Fix: write one JSON object per line.")
            continue
        if not isinstance(record, dict):
            problems.append(f"{where}: expected a JSON object, got {type(record).__name__}.")
            continue
        rows.append(_Row(record, where, base_dir))
        columns.update(record)
    return rows, columns


def _read_image_folder(root: Path) -> list[_Row]:
    return [
        _Row({"image": str(file.resolve()), "label": label_dir.name}, str(file), root)
        for label_dir in sorted(p for p in root.iterdir() if p.is_dir())
        for file in sorted(label_dir.iterdir())
        if file.suffix.lower() in IMAGE_EXTENSIONS
    ]


def _check_image(row: _Row, column: str, problems: list[str]) -> str | None:
    """Resolve the image path of `row`, check that PIL can read it; return the absolute path or None."""
    where = f"{row.where}, column '{column}'"
    value = row.values.get(column)
    if not isinstance(value, str) or not value.strip():
        problems.append(f"{where}: no image path (got {value!r}). Fix: give a path to an image file.")
        return None
    path = Path(value) if os.path.isabs(value) else row.base_dir / value
    if not path.is_file():
        problems.append(
            f"{where}: image file not found: {path}. Fix: correct the path, or pass base_dir= "
            "to resolve relative paths against another directory."
        )
        return None
    try:
        with PIL.Image.open(path) as image:
            image.verify()
    except Exception as error:
        problems.append(f"{where}: unreadable image {path} ({error}). Fix: replace or remove this file.")
        return None
    return str(path.resolve())


def _is_label_name(value: Any) -> bool:
    return isinstance(value, (str, int)) and not isinstance(value, bool)


def _raw_labels(
    row: _Row, column: str, multi_label: bool, delimiter: str, problems: list[str], flags: bool = False
) -> list[str]:
    """The label names of `row` as strings (one unless `multi_label`); [] plus a problem if malformed."""
    where = f"{row.where}, column '{column}'"
    value = row.values.get(column)
    if multi_label:
        if isinstance(value, str):
            value = [part.strip() for part in value.split(delimiter) if part.strip()]
        if isinstance(value, list) and all(_is_label_name(v) for v in value):
            return [str(v) for v in value]
        problems.append(
            f"{where}: expected a list of label names (a JSON list, or names separated by "
            f"{delimiter!r} in CSV), got {value!r}."
        )
        return []
    if _is_label_name(value) and str(value).strip():
        return [str(value).strip()]
    fix = "--multi_label" if flags else "multi_label=True"
    hint = f" Fix: pass {fix} for multi-label data." if isinstance(value, list) else ""
    problems.append(f"{where}: expected one label name, got {value!r}.{hint}")
    return []


def _resolve_files(data_files: str | os.PathLike | Mapping[str, str | os.PathLike]) -> dict[str, Path]:
    if isinstance(data_files, Mapping):
        return {split: Path(path) for split, path in data_files.items()}
    path = Path(data_files)
    subdirs = [p for p in path.iterdir() if p.is_dir()] if path.is_dir() else []
    if subdirs and all(p.name in SPLIT_NAMES for p in subdirs):
        return {p.name: p for p in sorted(subdirs, key=lambda p: SPLIT_NAMES.index(p.name))}
    return {"train": path}


def _argument(name: str, flags: bool) -> str:
    """How an error names an argument: ``--name`` for the command line, else ``name=``."""
    return f"--{name}" if flags else f"{name}="


def _read_split(
    split: str,
    path: Path,
    columns: dict[str, str | None],
    base_dir: Path | None,
    problems: list[str],
    flags: bool = False,
) -> tuple[list[_Row], dict[str, str | None]]:
    """Read one split; return its rows and the mapping standard column -> source column for it."""
    if not path.exists():
        raise FileNotFoundError(f"data file for split {split!r} not found: {path}.")
    if path.is_dir():
        rows = _read_image_folder(path)
        if not rows:
            problems.append(f"{path}: no images found. Fix: lay images out as {path}/<label>/<image file>.")
        return rows, {"image": "image", "text": None, "label": "label" if columns["label"] else None}
    readers = {".csv": _read_csv, ".jsonl": _read_jsonl, ".json": _read_jsonl}
    if path.suffix.lower() not in readers:
        raise ValueError(f"unsupported data file {path}: use .csv, .jsonl or an image-folder directory.")
    rows, found = readers[path.suffix.lower()](path, base_dir or path.parent, problems)
    missing = [
        f"{path}, column '{column}': column not found (columns: {sorted(found)}). Fix: pass the right "
        f"{_argument('image_column', flags)} / {_argument('text_column', flags)} / "
        f"{_argument('label_column', flags)}, or None if the data has no such column."
        for column in filter(None, columns.values())
        if column not in found
    ]
    if missing:  # every row would fail: report the columns alone
        raise DataValidationError(missing)
    return rows, columns


def _texts(rows: list[_Row], column: str, problems: list[str]) -> list[str]:
    for row in rows:
        if not isinstance(row.values.get(column), str):
            problems.append(
                f"{row.where}, column '{column}': expected a string, got {row.values.get(column)!r}."
            )
    return [row.values.get(column) for row in rows]


def load_local_dataset(
    data_files: str | os.PathLike | Mapping[str, str | os.PathLike],
    image_column: str | None = "image",
    text_column: str | None = "text",
    label_column: str | None = "label",
    label_names: list[str] | None = None,
    multi_label: bool = False,
    base_dir: str | os.PathLike | None = None,
    label_delimiter: str = "|",
    flags: bool = False,
) -> DatasetDict:
    """Load and validate local CSV / JSON Lines files or an image folder as a `DatasetDict`.

    Args:
        data_files: one path (a file becomes split "train"; a directory is an image folder) or a mapping
            split name -> path (each a CSV / JSON Lines file or an image-folder directory).
        image_column / text_column / label_column: the columns to read (`None` when the data has no such
            column). They become `image`, `text` and `label` in the result. For image folders, images and
            labels come from the layout (label_column=None drops the labels).
        label_names: the label set, in class-id order. Default: the sorted label names found in all splits.
            Labels are compared as strings, so the integer 3 in JSON Lines matches the name "3".
        multi_label: each row has a list of labels; `label` becomes `List(ClassLabel)` (the collator turns it
            into a float multi-hot vector).
        base_dir: directory that relative image paths are resolved against (default: the data file's).
        label_delimiter: separator of multi-label names in CSV cells.
        flags: name arguments in error messages as command-line flags (``--image_column``), for
            ``examples/run_msd.py``, instead of Python arguments (``image_column=``).

    Raises:
        DataValidationError: listing every problem with its file, row, line and column, before any dataset
            is built. Every image is opened and checked with PIL.
        FileNotFoundError / ValueError: for a missing data file or an unsupported file type.
    """
    problems: list[str] = []
    requested = {"image": image_column, "text": text_column, "label": label_column}
    base = Path(base_dir) if base_dir is not None else None
    splits = {
        split: _read_split(split, path, requested, base, problems, flags)
        for split, path in _resolve_files(data_files).items()
    }

    labels = {
        split: [
            _raw_labels(row, columns["label"], multi_label, label_delimiter, problems, flags) for row in rows
        ]
        for split, (rows, columns) in splits.items()
        if columns["label"] is not None
    }
    if label_names is None:
        label_names = sorted({name for per_split in labels.values() for names in per_split for name in names})
    known = set(label_names)
    label_set = _argument("class_names" if flags else "label_names", flags)
    for split, per_split in labels.items():
        rows, columns = splits[split]
        problems.extend(
            f"{row.where}, column '{columns['label']}': label {name!r} is not in label_names {label_names}. "
            f"Fix: correct the label or add it to {label_set}."
            for row, names in zip(rows, per_split)
            for name in names
            if name not in known
        )

    data: dict[str, dict[str, list]] = {}
    for split, (rows, columns) in splits.items():
        data[split] = {}
        if columns["image"] is not None:
            data[split]["image"] = [_check_image(row, columns["image"], problems) for row in rows]
        if columns["text"] is not None:
            data[split]["text"] = _texts(rows, columns["text"], problems)
        if split in labels:
            data[split]["label"] = (
                labels[split] if multi_label else [(names or [None])[0] for names in labels[split]]
            )
    if problems:
        raise DataValidationError(problems)

    label_feature = ClassLabel(names=label_names)
    features = {
        "image": Image(),
        "text": Value("string"),
        "label": List(label_feature) if multi_label else label_feature,
    }
    return DatasetDict(
        {
            split: Dataset.from_dict(columns, features=Features({name: features[name] for name in columns}))
            for split, columns in data.items()
        }
    )


def check_two_modalities(dataset: Dataset) -> None:
    """Refuse data without an ``image`` or a ``text`` column (an image folder has no text) for the workflow,
    whose teacher takes both modalities; the trainers themselves take unimodal models."""
    missing = [name for name in ("image", "text") if name not in dataset.column_names]
    if missing:
        raise DataValidationError(
            [
                f"the data has no {' or '.join(missing)} column, and examples/run_msd.py distils a "
                "text+image teacher. Fix: give CSV / JSON Lines data with an image path and a text per row "
                "(--image_column, --text_column), or train unimodal models with DistillationTrainer directly."
            ]
        )
