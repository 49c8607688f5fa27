"""hf_msd.modalities.dropout and the workflow's --teacher_modality_dropout, against hand-built batches."""

import pytest
import torch
from torch import nn

from hf_msd.experiment import ExperimentArguments, StageMismatchError, parse_arguments
from hf_msd.modalities.dropout import ModalityDropoutCollator, ModalityDropoutTrainer
from hf_msd.modalities.modality import Modality

MODALITIES = [
    Modality("text", keys=["input_ids"], optional_keys=["attention_mask"]),
    Modality("image", keys=["pixel_values"], removal="fill", fill_value=0.5),
]


def _collate(examples):
    """A stand-in collator: one example per row, values derived from the example's index."""
    index = torch.tensor([e["i"] for e in examples])
    return {
        "input_ids": index[:, None].repeat(1, 3),
        "attention_mask": torch.ones(len(examples), 3, dtype=torch.long),
        "pixel_values": index[:, None, None, None].float().repeat(1, 3, 2, 2),
        "labels": index % 2,
    }


def _batches(count):
    return [[{"i": 2 * b}, {"i": 2 * b + 1}] for b in range(count)]


def _equal(a, b):
    return a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_p_zero_leaves_every_batch_unchanged():
    collator = ModalityDropoutCollator(_collate, MODALITIES, probability=0.0, seed=3)
    for examples in _batches(50):
        assert _equal(collator(examples), _collate(examples))


def test_removed_batches_follow_the_seeded_draws():
    """Replay the documented draws by hand and build each expected batch without
    hf_msd.modalities.modality."""
    p, seed = 0.5, 7
    collator = ModalityDropoutCollator(_collate, MODALITIES, probability=p, seed=seed)
    generator = torch.Generator().manual_seed(seed)
    seen = set()
    for examples in _batches(40):
        full = _collate(examples)
        expected = dict(full)
        if torch.rand(1, generator=generator).item() < p:
            dropped = ["text", "image"][int(torch.randint(2, (1,), generator=generator).item())]
            if dropped == "text":  # keep image: the text keys are dropped
                expected = {"pixel_values": full["pixel_values"], "labels": full["labels"]}
            else:  # keep text: pixels filled with 0.5, everything else as is
                expected["pixel_values"] = torch.full_like(full["pixel_values"], 0.5)
            seen.add(dropped)
        else:
            seen.add(None)
        assert _equal(collator(examples), expected)
    assert seen == {None, "text", "image"}  # every case was exercised


@pytest.mark.parametrize("p", [0.2, 0.6])
def test_frequency_of_removal_is_near_p(p):
    collator = ModalityDropoutCollator(_collate, MODALITIES, probability=p, seed=0)
    draws = [collator.drawn_modality() for _ in range(4000)]
    removed = sum(d is not None for d in draws) / len(draws)
    assert abs(removed - p) < 4 * (p * (1 - p) / len(draws)) ** 0.5
    text = sum(d == "text" for d in draws) / max(1, sum(d is not None for d in draws))
    assert abs(text - 0.5) < 0.05  # the removed modality is uniform


@pytest.mark.parametrize("p", [-0.1, 1.0, 1.5, float("nan")])
def test_bad_p_is_refused_naming_the_field(p):
    with pytest.raises(ValueError, match="teacher_modality_dropout"):
        ExperimentArguments(teacher_modality_dropout=p)
    with pytest.raises(ValueError, match="probability"):
        ModalityDropoutCollator(_collate, MODALITIES, probability=p)


def test_trainer_uses_dropout_for_training_batches_only(tmp_path):
    from datasets import Dataset
    from transformers import TrainingArguments

    data = Dataset.from_dict({"i": list(range(8))})
    dropout = ModalityDropoutCollator(_collate, MODALITIES, probability=0.5, seed=0)
    args = TrainingArguments(str(tmp_path), remove_unused_columns=False, report_to="none", use_cpu=True)
    trainer = ModalityDropoutTrainer(
        model=nn.Linear(2, 2),
        args=args,
        train_dataset=data,
        eval_dataset=data,
        data_collator=_collate,
        modality_dropout=dropout,
    )
    assert trainer.get_train_dataloader().collate_fn is dropout
    assert trainer.get_eval_dataloader().collate_fn is _collate
    assert trainer.data_collator is _collate


def test_workflow_records_teacher_modality_dropout(tmp_path):
    """A teacher trained with p is not reused for another p (nor for p = 0), and p needs a new teacher."""
    from hf_msd.experiment.workflow import Run, load_data, train_or_load_teacher

    dataset = {}

    def run(*flags):
        argv = ["examples/configs/tiny_easy_vqa.yaml", "--output_dir", str(tmp_path / "out")]
        argv += ["--max_train_samples", "16", "--per_device_train_batch_size", "8", *flags]
        model_args, data_args, exp_args, training_args = parse_arguments(argv)
        dataset["d"] = dataset.get("d") or load_data(data_args, seed=0)
        return Run(model_args, data_args, exp_args, training_args, dataset["d"])

    _, _, settings = train_or_load_teacher(run("--teacher_modality_dropout", "0.5"))
    assert settings["teacher_training"]["teacher_modality_dropout"] == 0.5
    train_or_load_teacher(run("--teacher_modality_dropout", "0.5"))  # same settings: reused
    pattern = r"teacher_training\.teacher_modality_dropout: 0\.5 -> 0\.3"
    with pytest.raises(StageMismatchError, match=pattern):
        train_or_load_teacher(run("--teacher_modality_dropout", "0.3"))
    with pytest.raises(StageMismatchError, match=r"teacher_modality_dropout: 0\.5 -> unset"):
        train_or_load_teacher(run())
    trained = str(tmp_path / "out" / "teacher")
    with pytest.raises(ValueError, match=r"teacher_modality_dropout.*teacher_name_or_path"):
        train_or_load_teacher(run("--teacher_modality_dropout", "0.5", "--teacher_name_or_path", trained))
