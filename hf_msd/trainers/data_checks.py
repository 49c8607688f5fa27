"""The checks a distillation trainer runs on its data: before any training work, naming rows and columns
(:func:`check_datasets`), and on each batch's teacher outputs and loss, naming the batch
(:func:`check_finite`)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import datasets
import torch
from transformers import TrainerState

from ..teacher_outputs.cache import TEACHER_LOGITS


def check_datasets(
    train_dataset: Any,
    eval_dataset: Any,
    data_collator: Any,
    num_labels: int | None,
    multi_label: bool,
    remove_unused_columns: bool,
    is_extra_column: Callable[[str], bool],
) -> None:
    """Check the training dataset and each evaluation dataset (one, or a dict of several), naming it.

    Extra columns (cached teacher outputs, teacher inputs: ``is_extra_column``) with
    ``remove_unused_columns`` are refused (they would be dropped); an empty dataset is refused; a collator
    with a ``validate(dataset, num_labels, multi_label, name)`` method
    (:meth:`hf_msd.data.MultimodalDataCollator.validate`) checks every row; raw image columns with a collator
    that cannot turn them into tensors are refused. Datasets without a length (streams) are checked for
    their columns only.
    """
    named = {"train_dataset": train_dataset}
    if isinstance(eval_dataset, dict):
        named.update({f"eval_dataset[{k!r}]": v for k, v in eval_dataset.items()})
    elif eval_dataset is not None:
        named["eval_dataset"] = eval_dataset
    for name, dataset in named.items():
        extra = [c for c in getattr(dataset, "column_names", None) or [] if is_extra_column(c)]
        if extra and remove_unused_columns:
            raise ValueError(
                f"{name} has the columns {extra} (cached teacher outputs / teacher inputs), which "
                "remove_unused_columns=True drops before they reach the trainer: set "
                "remove_unused_columns=False (the default of the distillation arguments)."
            )
        if dataset is None or not hasattr(dataset, "__len__"):
            continue
        if len(dataset) == 0:
            raise ValueError(f"{name} is empty: give it at least one example.")
        validate = getattr(data_collator, "validate", None)
        if callable(validate):
            validate(dataset, num_labels=num_labels, multi_label=multi_label, name=name)
            continue
        features = getattr(dataset, "features", None) or {}
        images = [column for column, feature in features.items() if isinstance(feature, datasets.Image)]
        if images:
            raise ValueError(
                f"{name} has raw image column(s) {images} but data_collator="
                f"{type(data_collator).__name__} cannot turn images into tensors. Pass "
                "data_collator=hf_msd.data.MultimodalDataCollator.from_model(model, processor)."
            )


def check_finite(
    what: str, tensor: torch.Tensor, training: bool, micro_batch: int, state: TrainerState
) -> None:
    """Raise a FloatingPointError naming the batch and step if ``tensor`` holds NaN or inf.

    A NaN teacher output would silently turn every student weight into NaN while the logged loss reads 0
    (the Trainer's ``logging_nan_inf_filter``), so training stops before the optimizer applies it.
    ``training``: whether ``tensor`` comes from training batch ``micro_batch`` (at ``state``'s optimizer step
    and epoch), else from an evaluation batch.
    """
    if bool(torch.isfinite(tensor.detach()).all()):
        return
    where = (
        f"training batch {micro_batch} (optimizer step {state.global_step}, epoch {state.epoch or 0:.2f})"
        if training
        else "an evaluation batch"
    )
    raise FloatingPointError(
        f"{what} contain NaN or inf on {where}. Check the teacher's weights and any cached "
        f"'{TEACHER_LOGITS}*' columns (recompute them), the inputs of that batch, and the "
        "learning rate / mixed precision settings; nothing of this batch was applied to the student."
    )
