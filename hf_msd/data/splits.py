"""Deterministic, machine-independent subsets and group-aware splits of `datasets.Dataset`s.

Every choice here is made by ranking keys with SHA-256 of ``f"{seed}:{key}"``, so the result depends only
on the keys and the seed: not on numpy's random streams, dict ordering, ``os.listdir`` order or the machine.
"""

from __future__ import annotations

import hashlib
from collections.abc import Hashable, Iterable, Mapping

from datasets import Dataset, DatasetDict


def stable_rank(keys: Iterable[Hashable], seed: int = 0) -> list[Hashable]:
    """Return the distinct `keys` in a pseudo-random order that is fixed for a given `seed` everywhere."""
    return sorted(set(keys), key=lambda key: hashlib.sha256(f"{seed}:{key}".encode()).hexdigest())


def split_by_group(
    dataset: Dataset, fraction: float, group_column: str | None = None, seed: int = 0
) -> tuple[Dataset, Dataset]:
    """Split `dataset` into (rest, held_out) with about `fraction` of the groups held out.

    Rows sharing a value in `group_column` (e.g. the image id of several questions about one image) land on
    the same side, so nothing leaks between the two parts. Without `group_column` each row is its own group.
    Both parts keep the original row order.
    """
    if not 0.0 < fraction < 1.0:
        raise ValueError(
            f"fraction must be in (0, 1), got {fraction}; use e.g. 0.1 to hold out 10% of the groups."
        )
    if group_column is None:
        groups: list[Hashable] | range = range(len(dataset))
    else:
        groups = dataset.select_columns([group_column])[:][group_column]  # one Arrow read, not per row
    ranked = stable_rank(groups, seed)
    held_out_groups = set(ranked[: max(1, round(fraction * len(ranked)))])
    held_out = [i for i, group in enumerate(groups) if group in held_out_groups]
    held_out_set = set(held_out)
    rest = [i for i in range(len(dataset)) if i not in held_out_set]
    return dataset.select(rest), dataset.select(held_out)


def carve_validation(
    dataset_dict: DatasetDict, fraction: float, group_column: str | None = None, seed: int = 0
) -> DatasetDict:
    """``dataset_dict`` with a "validation" split held out of its "train" split by :func:`split_by_group`
    (about ``fraction`` of the groups, fixed per ``seed``); the other splits are kept as they are.

    The test split is never used for validation: model selection on it would make its scores optimistic.
    """
    if "validation" in dataset_dict:
        raise ValueError(f"dataset_dict already has a validation split: {list(dataset_dict)}.")
    train, validation = split_by_group(dataset_dict["train"], fraction, group_column=group_column, seed=seed)
    others = {name: split for name, split in dataset_dict.items() if name != "train"}
    return DatasetDict({"train": train, "validation": validation, **others})


def select_subset(dataset: Dataset, max_samples: int | None, seed: int = 0) -> Dataset:
    """Return `max_samples` rows of `dataset` chosen pseudo-randomly (fixed per `seed`), in original order.

    `None` or a value >= len(dataset) returns the dataset unchanged. Meant for quick runs and smoke tests.
    """
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    if max_samples < 0:
        raise ValueError(f"max_samples must be >= 0, got {max_samples}.")
    return dataset.select(sorted(stable_rank(range(len(dataset)), seed)[:max_samples]))


def limit_splits(
    dataset_dict: DatasetDict, max_samples: int | Mapping[str, int | None] | None, seed: int = 0
) -> DatasetDict:
    """Apply `select_subset` to each split: one limit for every split, or a mapping split name -> limit."""
    if max_samples is None:
        return dataset_dict
    if isinstance(max_samples, Mapping):
        unknown = set(max_samples) - set(dataset_dict)
        if unknown:
            raise ValueError(
                f"max_samples names unknown splits {sorted(unknown)}; splits are {list(dataset_dict)}."
            )
        limits = {name: max_samples.get(name) for name in dataset_dict}
    else:
        limits = dict.fromkeys(dataset_dict, max_samples)
    return DatasetDict({name: select_subset(ds, limits[name], seed) for name, ds in dataset_dict.items()})


def num_labelled(size: int, fraction: float | None = None, max_samples: int | None = None) -> int:
    """How many of ``size`` examples keep their label: ``round(fraction * size)`` (at least 1) and/or
    ``max_samples``, the smaller when both are given; all of them when neither is."""
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise ValueError(f"labeled_fraction must be in (0, 1], got {fraction}.")
    if max_samples is not None and max_samples < 1:
        raise ValueError(f"max_labeled_samples must be >= 1, got {max_samples}.")
    count = size
    if fraction is not None:
        count = min(count, max(1, round(fraction * size)))
    if max_samples is not None:
        count = min(count, max_samples)
    return count


def keep_labels_on_subset(
    dataset: Dataset,
    fraction: float | None = None,
    max_samples: int | None = None,
    seed: int = 0,
    label_column: str = "label",
) -> Dataset:
    """Keep the labels of a deterministic subset of ``dataset`` and set every other label to ``None``.

    The subset is :func:`num_labelled` rows chosen by :func:`stable_rank` of the row positions (fixed per
    ``seed`` on every machine and run; a larger ``fraction`` keeps a superset of a smaller one's rows). The
    unlabelled rows stay in the dataset (for distillation) with label ``None``, which
    :class:`~hf_msd.data.MultimodalDataCollator` turns into the ignore marker -100 (a row of -100 for
    multi-label). The column's feature (e.g. its ``ClassLabel`` names) is kept.
    """
    count = num_labelled(len(dataset), fraction, max_samples)
    if count >= len(dataset):
        return dataset
    if label_column not in dataset.column_names:
        raise ValueError(f"No label column {label_column!r} in {dataset.column_names}.")
    keep = set(stable_rank((f"labelled:{i}" for i in range(len(dataset))), seed)[:count])

    def unlabel(labels: list, indices: list[int]) -> dict:  # reads only the label column (no image decoding)
        return {label_column: [y if f"labelled:{i}" in keep else None for y, i in zip(labels, indices)]}

    return dataset.map(
        unlabel,
        with_indices=True,
        batched=True,
        input_columns=[label_column],
        desc=f"Keeping {count} of {len(dataset)} labels",
    )


def labelled_rows(dataset: Dataset, label_column: str = "label") -> Dataset:
    """The rows of ``dataset`` whose label is not ``None`` (see :func:`keep_labels_on_subset`)."""
    labels = dataset.select_columns([label_column])[:][label_column]
    keep = [i for i, label in enumerate(labels) if label is not None]
    return dataset if len(keep) == len(dataset) else dataset.select(keep)
