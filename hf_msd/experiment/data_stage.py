"""The data of a run: the train / validation / test splits (easy-VQA, local files or a `datasets` data set,
each capped by ``max_*_samples``) and the labels each stage may use."""

from __future__ import annotations

from datasets import Dataset, DatasetDict

from ..data import (
    carve_validation,
    keep_labels_on_subset,
    labelled_rows,
    limit_splits,
    load_datasets_data,
    load_easy_vqa,
    load_local_dataset,
)
from ..data.local import check_two_modalities
from .arguments import DataArguments
from .run import Run


def load_data(data_args: DataArguments, seed: int) -> DatasetDict:
    """The train / validation / test splits as raw examples (image, text, label columns)."""
    limits = {
        "train": data_args.max_train_samples,
        "validation": data_args.max_eval_samples,
        "test": data_args.max_test_samples,
    }
    if data_args.dataset_name == "easy_vqa":
        return load_easy_vqa(validation_fraction=data_args.validation_fraction, seed=seed, max_samples=limits)
    columns = {
        "image_column": data_args.image_column,
        "text_column": data_args.text_column,
        "label_column": data_args.label_column,
        "label_names": data_args.class_names.split(",") if data_args.class_names else None,
        "flags": True,
    }
    if data_args.dataset_name == "local":
        files = {"train": data_args.train_file, "test": data_args.test_file}
        if data_args.validation_file:
            files["validation"] = data_args.validation_file
        dataset = load_local_dataset(files, multi_label=data_args.multi_label, **columns)
    else:
        dataset = load_datasets_data(data_args.dataset_name, **columns)
    check_two_modalities(dataset["train"])
    if "validation" not in dataset:  # never the test split: its scores would be optimistic
        dataset = carve_validation(dataset, data_args.validation_fraction, seed=seed)
    return limit_splits(dataset, limits, seed=seed)


def training_split(run: Run, for_teacher: bool = False, train: Dataset | None = None) -> Dataset:
    """The train split (or ``train``, the same rows with added columns such as cached teacher outputs) with
    the labels a stage may use.

    With ``labeled_fraction`` / ``max_labeled_samples`` only a deterministic subset keeps its labels
    (:func:`hf_msd.data.keep_labels_on_subset`, seeded by ``--seed``); the other examples have label ``None``
    (-100 in batches). The student trains on all of them with KD / MSD (the unlabelled ones get only the
    distillation terms) and on the labelled ones only with ``method='none'``. A new teacher trains on every
    label (``teacher_train_labels='all'``) or on the labelled examples only (``'subset'``).
    """
    train = run.dataset["train"] if train is None else train
    if not run.data_args.has_unlabelled() or (for_teacher and run.exp_args.teacher_train_labels == "all"):
        return train
    train = keep_labels_on_subset(
        train,
        fraction=run.data_args.labeled_fraction,
        max_samples=run.data_args.max_labeled_samples,
        seed=run.training_args.seed,
    )
    return labelled_rows(train) if for_teacher or run.exp_args.method == "none" else train


def labelled_count(run: Run) -> dict[str, int]:
    """How many train examples the student stage sees, and how many of them carry a label."""
    train = training_split(run)
    labels = train.select_columns(["label"])[:]["label"]
    return {"train": len(train), "labelled": sum(label is not None for label in labels)}
