"""One run of the workflow: its arguments and data (:class:`Run`), and what every stage derives from them
(the collator, plain training arguments, the label names and the text column)."""

from __future__ import annotations

import dataclasses
from typing import Any

from datasets import DatasetDict
from transformers import PreTrainedModel, TrainingArguments

from ..data import MultimodalDataCollator
from ..trainers import MSDTrainingArguments
from .arguments import DataArguments, ExperimentArguments, ModelArguments

#: A stage's training metrics (``train_runtime``, ``steps``...), written next to the model it trained.
TRAIN_RESULTS = "train_results.json"


@dataclasses.dataclass
class Run:
    """One run's arguments and data: what every stage reads."""

    model_args: ModelArguments
    data_args: DataArguments
    exp_args: ExperimentArguments
    training_args: MSDTrainingArguments
    dataset: DatasetDict


def text_column(data_args: DataArguments) -> str:
    """The text column of the raw examples: easy-VQA's question column, ``text`` for other data."""
    return data_args.text_column if data_args.dataset_name == "easy_vqa" else "text"


def label_names(dataset: DatasetDict) -> list[str]:
    """The class names in label-id order, from the train split's label feature."""
    feature = dataset["train"].features["label"]
    feature = getattr(feature, "feature", feature)  # multi-label: List(ClassLabel)
    return list(feature.names)


def base_training_args(training_args: TrainingArguments, **overrides: Any) -> TrainingArguments:
    """A plain ``TrainingArguments`` with the run's settings (device, precision, batch sizes...)."""
    values = {
        f.name: getattr(training_args, f.name)
        for f in dataclasses.fields(TrainingArguments)
        if f.init and f.name in training_args.__dict__
    }
    values.update(remove_unused_columns=False, push_to_hub=False, **overrides)
    return TrainingArguments(**values)


def make_collator(run: Run, model: PreTrainedModel, processor) -> MultimodalDataCollator:
    """The collator of the run's raw examples for ``model`` (its modalities) with ``processor``."""
    return MultimodalDataCollator.from_model(
        model,
        processor,
        text_column=text_column(run.data_args),
        image_column="image",
        label_column="label",
        max_length=run.model_args.max_length,
    )
