"""A user's own data: relative image folders, `datasets` folders and Hub names with column flags, data
without a text column refused up front, and command-line errors that name the flag without a traceback."""

import os
import subprocess
import sys
from pathlib import Path

import datasets
import PIL.Image
import pytest
from datasets import Dataset, DatasetDict, Image

from hf_msd.data import DataValidationError, load_local_dataset
from hf_msd.experiment import DataArguments
from hf_msd.experiment.workflow import load_data

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_msd.py"


def _image_folder(root: Path) -> None:
    for split in ("train", "test"):
        for label, color in (("circle", "red"), ("square", "blue")):
            (root / split / label).mkdir(parents=True)
            PIL.Image.new("RGB", (8, 8), color).save(root / split / label / "0001.png")


def test_image_folder_given_by_a_relative_path(tmp_path, monkeypatch):
    _image_folder(tmp_path / "mydata")
    monkeypatch.chdir(tmp_path)
    dataset = load_local_dataset({"train": "mydata/train", "test": "mydata/test"}, text_column=None)
    rows = dataset["train"].cast_column("image", Image(decode=False))["image"]
    assert sorted(Path(row["path"]) for row in rows) == sorted(
        (tmp_path / "mydata" / "train" / label / "0001.png") for label in ("circle", "square")
    )
    assert dataset["train"][0]["image"].size == (8, 8)


def test_data_without_text_is_refused_naming_the_flag(tmp_path):
    _image_folder(tmp_path / "mydata")
    args = DataArguments(
        dataset_name="local",
        train_file=str(tmp_path / "mydata/train"),
        test_file=str(tmp_path / "mydata/test"),
    )
    with pytest.raises(DataValidationError, match=r"no text column.*--text_column"):
        load_data(args, seed=0)


def _user_dataset(tmp_path) -> DatasetDict:
    PIL.Image.new("RGB", (8, 8), "red").save(tmp_path / "a.png")

    def split(n, offset):
        return Dataset.from_dict(
            {
                "picture": [str(tmp_path / "a.png")] * n,
                "caption": [f"question {offset + i}" for i in range(n)],
                "answer": ["yes" if i % 3 else "no" for i in range(n)],
                "extra": list(range(n)),
            }
        )

    return DatasetDict({"train": split(20, 0), "test": split(5, 100)})


def _check_standard_columns(dataset: DatasetDict) -> None:
    assert list(dataset) == ["train", "validation", "test"]
    assert dataset["train"].column_names == ["image", "text", "label"]
    assert dataset["train"].features["label"].names == ["no", "yes"]
    assert len(dataset["train"]) + len(dataset["validation"]) == 20
    assert not set(dataset["validation"]["text"]) & set(dataset["train"]["text"])
    example = dataset["test"][1]
    assert example["text"] == "question 101" and example["label"] == 1 and example["image"].size == (8, 8)


COLUMNS = {"image_column": "picture", "text_column": "caption", "label_column": "answer"}


def test_save_to_disk_folder_with_column_flags(tmp_path):
    _user_dataset(tmp_path).save_to_disk(str(tmp_path / "saved"))
    args = DataArguments(dataset_name=str(tmp_path / "saved"), **COLUMNS)
    _check_standard_columns(load_data(args, seed=0))
    assert args.validation_source(0).startswith("0.1 of the train examples held out (seed 0)")


def test_hub_dataset_name_goes_to_load_dataset(tmp_path, monkeypatch):
    calls = []
    user = _user_dataset(tmp_path)

    def fake_load_dataset(name, *args, **kwargs):
        calls.append(name)
        return user

    monkeypatch.setattr(datasets, "load_dataset", fake_load_dataset)
    _check_standard_columns(load_data(DataArguments(dataset_name="someone/shapes", **COLUMNS), seed=0))
    assert calls == ["someone/shapes"]
    with pytest.raises(DataValidationError, match=r"column 'image' not found.*--image_column"):
        load_data(DataArguments(dataset_name="someone/shapes", text_column="caption"), seed=0)


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.run(
        [sys.executable, str(SCRIPT), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=300
    )


def test_command_line_data_errors_name_the_flag_without_traceback(tmp_path):
    (tmp_path / "train.csv").write_text("photo,text,label\na.png,hi,x\n")
    result = _run(
        str(ROOT / "examples" / "configs" / "tiny_easy_vqa.yaml"),
        *("--dataset_name", "local", "--train_file", "train.csv", "--test_file", "train.csv"),
        *("--text_column", "text", "--output_dir", str(tmp_path / "out")),
        cwd=tmp_path,
    )
    assert result.returncode == 1
    assert "column 'image': column not found" in result.stderr and "--image_column" in result.stderr
    assert "image_column=" not in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out" / "teacher").exists()


def test_a_run_without_config_explains_instead_of_training(tmp_path):
    result = _run("--output_dir", str(tmp_path / "out"), cwd=tmp_path)
    assert result.returncode == 1 and "no config file" in result.stderr
    assert "quick_easy_vqa.yaml" in result.stderr and "Traceback" not in result.stderr
    assert not (tmp_path / "out").exists()
