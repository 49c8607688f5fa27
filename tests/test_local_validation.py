"""Local data without a validation file: the validation split is held out of train (seeded), never the test
split, and the stage records, the summary and the model card say where it came from."""

import csv

import PIL.Image

from hf_msd.data import split_by_group
from hf_msd.experiment import DataArguments
from hf_msd.experiment.workflow import load_data
from hf_msd.hub import build_model_card


def _write(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["image", "text", "label"])
        writer.writeheader()
        writer.writerows(rows)


def _local_args(tmp_path, **overrides) -> DataArguments:
    PIL.Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")
    train = [{"image": "a.png", "text": f"train {i}", "label": "ab"[i % 2]} for i in range(20)]
    test = [{"image": "a.png", "text": f"test {i}", "label": "ab"[i % 2]} for i in range(6)]
    _write(tmp_path / "train.csv", train)
    _write(tmp_path / "test.csv", test)
    fields = {"dataset_name": "local", "train_file": str(tmp_path / "train.csv")}
    return DataArguments(**fields, test_file=str(tmp_path / "test.csv"), text_column="text", **overrides)


def test_validation_is_held_out_of_train_not_the_test_split(tmp_path):
    args = _local_args(tmp_path, validation_fraction=0.2)
    dataset = load_data(args, seed=3)
    train, validation, test = (set(dataset[s]["text"]) for s in ("train", "validation", "test"))
    assert test == {f"test {i}" for i in range(6)}
    assert not validation & test and not validation & train
    assert train | validation == {f"train {i}" for i in range(20)}
    # The same rows as a seeded split of the whole train file by row (independent of load_data).
    whole = load_data(_local_args(tmp_path, validation_file=str(tmp_path / "train.csv")), seed=3)["train"]
    _, held_out = split_by_group(whole, 0.2, seed=3)
    assert sorted(validation) == sorted(held_out["text"]) and len(validation) == 4
    assert load_data(args, seed=3)["validation"]["text"] == dataset["validation"]["text"]  # seeded
    source = "0.2 of the train examples held out (seed 3); the test split is unused"
    assert args.validation_source(3) == source


def test_a_validation_file_is_used_as_given(tmp_path):
    args = _local_args(tmp_path, validation_file=str(tmp_path / "test.csv"))
    dataset = load_data(args, seed=0)
    assert len(dataset["train"]) == 20 and dataset["validation"]["text"] == dataset["test"]["text"]
    assert args.validation_source(0) == f"the validation file {tmp_path / 'test.csv'}"


def test_model_card_names_the_validation_split():
    card = build_model_card(
        model_name="m",
        method="kd",
        dataset_name="d",
        evaluation={},
        parameters={"teacher": 2, "student": 1},
        hyperparameters={},
        student_modalities=["text", "image"],
        validation_description="0.1 of the train examples held out (seed 42); the test split is unused",
    )
    said = "Validation split (teacher checkpoint selection, saliency, learned modality weights): "
    assert said + "0.1 of the train examples held out (seed 42); the test split is unused." in card.text
