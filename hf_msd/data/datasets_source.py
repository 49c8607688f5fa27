"""Data already in `datasets` form: a folder written by ``DatasetDict.save_to_disk`` or a name that
``datasets.load_dataset`` knows (a Hub data set or a loading script), with the user's column names.

The result has the standard columns of :func:`hf_msd.data.load_local_dataset`: ``image`` (``datasets.Image``),
``text`` (str) and ``label`` (``ClassLabel``; string labels are encoded in sorted order, or in the order of
``label_names``); other columns are dropped.
"""

from __future__ import annotations

import os

import datasets
from datasets import ClassLabel, DatasetDict, Image

from .local import DataValidationError, _argument


def load_datasets_data(
    name_or_path: str,
    image_column: str | None = "image",
    text_column: str | None = "text",
    label_column: str = "label",
    label_names: list[str] | None = None,
    flags: bool = False,
) -> DatasetDict:
    """Load ``name_or_path`` (a ``save_to_disk`` folder, else a ``load_dataset`` name) as a ``DatasetDict``
    with the columns ``image`` / ``text`` / ``label``.

    Args:
        name_or_path: a folder holding a saved ``DatasetDict`` (``dataset_dict.json``), or a data set name.
        image_column / text_column / label_column: the user's columns (``None``: the data has no such one).
        label_names: the label set in class-id order for string labels; default: the sorted names seen.
        flags: name arguments in errors as command-line flags (``--image_column``).

    Raises:
        DataValidationError: a missing split or column, naming the split, the columns found and the fix.
    """
    if os.path.isdir(name_or_path):
        loaded = datasets.load_from_disk(name_or_path)
    else:
        loaded = datasets.load_dataset(name_or_path)
    if not isinstance(loaded, DatasetDict):
        raise DataValidationError(
            [f"{name_or_path}: a single Dataset. Fix: save a DatasetDict with train and test splits."]
        )
    requested = {"image": image_column, "text": text_column, "label": label_column}
    problems = [
        f"{name_or_path}: no '{split}' split (splits: {list(loaded)}). Fix: give the data a '{split}' split."
        for split in ("train", "test")
        if split not in loaded
    ]
    for split, dataset in loaded.items():
        for standard, column in requested.items():
            if column is not None and column not in dataset.column_names:
                flag = _argument(f"{standard}_column", flags)
                problems.append(
                    f"{name_or_path}, split '{split}': column '{column}' not found "
                    f"(columns: {dataset.column_names}). Fix: pass the right {flag}."
                )
    if problems:
        raise DataValidationError(problems)
    wanted = {column: standard for standard, column in requested.items() if column is not None}
    loaded = DatasetDict(
        {
            split: dataset.select_columns(list(wanted)).rename_columns(
                {column: standard for column, standard in wanted.items() if column != standard}
            )
            for split, dataset in loaded.items()
        }
    )
    if image_column is not None and not isinstance(loaded["train"].features["image"], Image):
        loaded = loaded.cast_column("image", Image())
    if not isinstance(loaded["train"].features["label"], ClassLabel):
        seen = {v for split in loaded.values() for v in split["label"]}
        numeric = all(isinstance(v, int) for v in seen)
        names = label_names or [str(v) for v in sorted(seen, key=int if numeric else str)]
        feature = ClassLabel(names=names)
        unknown = sorted({str(v) for v in seen} - set(names))
        if unknown:
            raise DataValidationError(
                [f"{name_or_path}: labels {unknown} are not in the label set {names}. Fix: add them to it."]
            )
        loaded = loaded.map(
            lambda labels: {"label": [feature.str2int(str(v)) for v in labels]},
            input_columns=["label"],
            batched=True,
        )
        loaded = loaded.cast_column("label", feature)
    return loaded
