"""hf_msd.experiment pieces that the end-to-end run does not reach: local data, stage records, Hub push."""

import csv
import json

import PIL.Image
import pytest
import torch
from transformers import TrainingArguments

from hf_msd.experiment import DataArguments, StageMismatchError
from hf_msd.experiment.stages import STAGE_FILE, mark_done, stage_done
from hf_msd.experiment.workflow import load_data, push_student


def _write_csv(path, rows):
    with open(path, "w", newline="") as handle:
        writer = csv.DictWriter(handle, fieldnames=["picture", "caption", "answer"])
        writer.writeheader()
        writer.writerows(rows)


def test_local_csv_data_with_the_users_column_names(tmp_path):
    for name, color in (("a.png", "red"), ("b.png", "blue")):
        PIL.Image.new("RGB", (8, 8), color).save(tmp_path / name)
    rows = [
        {"picture": "a.png", "caption": "what color?", "answer": "red"},
        {"picture": "b.png", "caption": "what color?", "answer": "blue"},
        {"picture": "a.png", "caption": "is it red?", "answer": "red"},
    ]
    _write_csv(tmp_path / "train.csv", rows)
    _write_csv(tmp_path / "test.csv", rows[:2])
    data_args = DataArguments(
        dataset_name="local",
        train_file=str(tmp_path / "train.csv"),
        test_file=str(tmp_path / "test.csv"),
        image_column="picture",
        text_column="caption",
        label_column="answer",
        class_names="blue,red",
        max_train_samples=2,
    )
    dataset = load_data(data_args, seed=0)
    assert sorted(dataset) == ["test", "train", "validation"]
    assert len(dataset["train"]) == 2 and len(dataset["test"]) == 2
    assert dataset["train"].features["label"].names == ["blue", "red"]
    first = dataset["test"][0]
    assert first["text"] == "what color?" and first["label"] == 1
    assert first["image"].size == (8, 8)


def test_local_data_needs_its_files():
    with pytest.raises(ValueError, match="--train_file and --test_file"):
        DataArguments(dataset_name="local", train_file="train.csv")


def test_stage_records_reuse_refuse_and_overwrite(tmp_path):
    settings = {"stage": "student", "training": {"learning_rate": 0.1, "seed": 0}}
    assert not stage_done(tmp_path, settings, overwrite=False)
    mark_done(tmp_path, settings)
    assert json.loads((tmp_path / STAGE_FILE).read_text()) == settings
    assert stage_done(tmp_path, settings, overwrite=False)

    changed = {"stage": "student", "training": {"learning_rate": 0.2, "seed": 0}}
    with pytest.raises(StageMismatchError) as refusal:
        stage_done(tmp_path, changed, overwrite=False)
    # Only the changed leaf is named, not the whole nested dictionaries.
    assert "(training.learning_rate: 0.1 -> 0.2). Pass --overwrite_output_dir" in str(refusal.value)
    assert "seed" not in str(refusal.value)
    assert not stage_done(tmp_path, changed, overwrite=True)
    assert json.loads((tmp_path / STAGE_FILE).read_text()) == settings  # nothing rewritten by the check


class FakeHfApi:
    calls: list = []

    def __init__(self, token=None):
        self.token = token

    def create_repo(self, repo_id, private=None, exist_ok=False):
        self.calls.append(("create_repo", repo_id, private, exist_ok))

    def upload_folder(self, folder_path, repo_id, ignore_patterns, commit_message):
        self.calls.append(("upload_folder", folder_path, repo_id, tuple(ignore_patterns)))
        return f"https://hub/{repo_id}/commit/1"


def test_push_uploads_the_student_folder(tmp_path, monkeypatch):
    import huggingface_hub

    monkeypatch.setattr(huggingface_hub, "HfApi", FakeHfApi)
    FakeHfApi.calls = []
    args = TrainingArguments(
        output_dir=str(tmp_path), hub_model_id="me/student", hub_private_repo=True, report_to=[]
    )
    url = push_student(tmp_path / "student", args)
    assert url == "https://hub/me/student/commit/1"
    assert FakeHfApi.calls[0] == ("create_repo", "me/student", True, True)
    kind, folder, repo, ignored = FakeHfApi.calls[1]
    assert (kind, folder, repo) == ("upload_folder", str(tmp_path / "student"), "me/student")
    assert STAGE_FILE in ignored


def test_push_needs_a_repository_id(tmp_path):
    args = TrainingArguments(output_dir=str(tmp_path), report_to=[])
    with pytest.raises(ValueError, match="--hub_model_id"):
        push_student(tmp_path, args)


def test_changed_teacher_weights_or_data_settings_are_not_reused(tmp_path):
    """A teacher given by path is recorded by its weights' hash; the data settings shape the later stages."""
    from hf_msd.experiment import parse_arguments
    from hf_msd.experiment.workflow import Run, load_data, saliency_report, train_or_load_teacher
    from tests.helpers.models import tiny_model, tiny_processor

    teacher_dir = tmp_path / "teacher"
    tiny_model(num_labels=13, seed=0).save_pretrained(teacher_dir)
    tiny_processor(teacher_dir, image_size=16)

    datasets = {}

    def run(*flags):
        argv = [
            "--teacher_name_or_path",
            str(teacher_dir),
            "--output_dir",
            str(tmp_path / "out"),
            "--report_to",
            "none",
        ]
        argv += ["--max_train_samples", "8", "--max_eval_samples", "4", "--saliency_max_samples", "4", *flags]
        model_args, data_args, exp_args, training_args = parse_arguments(argv)
        training_args.per_device_eval_batch_size = 4
        key = data_args.validation_fraction  # the only data setting changed here
        datasets[key] = datasets.get(key) or load_data(data_args, seed=0)
        return Run(model_args, data_args, exp_args, training_args, datasets[key])

    first = run()
    teacher, processor, settings = train_or_load_teacher(first)
    saliency_report(first, teacher, processor, settings)
    saliency_report(first, teacher, processor, settings)  # same settings: reused

    changed = tiny_model(num_labels=13, seed=0)
    with torch.no_grad():
        changed.classifier.weight[[0, 1]] = changed.classifier.weight[
            [1, 0]
        ].clone()  # same sums, new weights
    changed.save_pretrained(teacher_dir)
    again = run()
    teacher, processor, new_settings = train_or_load_teacher(again)
    assert new_settings["weights"] != settings["weights"]
    with pytest.raises(StageMismatchError, match=r"\(teacher\.weights: '[0-9a-f]+' -> '[0-9a-f]+'\)"):
        saliency_report(again, teacher, processor, new_settings)
    redo = run("--overwrite_output_dir", "true")
    saliency_report(redo, teacher, processor, new_settings)  # redone, then recorded

    with pytest.raises(StageMismatchError, match=r"data\.validation_fraction: 0\.1 -> 0\.2"):
        saliency_report(run("--validation_fraction", "0.2"), teacher, processor, new_settings)
