"""End-to-end: examples/run_msd.py on a tiny easy-VQA slice with tiny models, as a user runs it."""

import importlib.util
import json
import os
import re
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForSequenceClassification, AutoProcessor

from hf_msd.data import load_easy_vqa
from hf_msd.errors import InputValueError
from hf_msd.experiment import parse_arguments
from hf_msd.experiment.arguments import check_student_schedule
from hf_msd.experiment.output_lock import LOCK_FILE
from hf_msd.experiment.runtime import check_no_deepspeed
from tests.helpers.launch import two_process_launch

ROOT = Path(__file__).resolve().parents[1]
SCRIPT = ROOT / "examples" / "run_msd.py"
TINY = ROOT / "examples" / "configs" / "tiny_easy_vqa.yaml"
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def run(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, str(SCRIPT), str(TINY), *args],
        cwd=ROOT,
        env=ENV,
        capture_output=True,
        text=True,
        timeout=600,
    )


def check_ok(result: subprocess.CompletedProcess) -> None:
    assert result.returncode == 0, result.stderr[-4000:]


def test_config_file_then_flags_override():
    model_args, data_args, exp_args, training_args = parse_arguments(
        [str(TINY), "--learning_rate", "0.01", "--method", "kd", "--output_dir", "elsewhere"]
    )
    assert training_args.learning_rate == 0.01
    assert exp_args.method == "kd"
    assert training_args.output_dir == "elsewhere"
    assert json.loads(model_args.teacher_config)["vision_config"]["patch_size"] == 16
    assert data_args.max_train_samples == 64
    assert training_args.report_to == []


def test_bad_argument_is_named_before_any_work():
    with pytest.raises(ValueError, match="method"):
        parse_arguments([str(TINY), "--method", "distil"])
    with pytest.raises(ValueError, match="student_modalities"):
        parse_arguments([str(TINY), "--student_modalities", "audio"])


def main_exit_message(*args: str) -> str:
    """Run examples/run_msd.py's ``main`` on the tiny config and ``args`` in this process and return the
    message of the SystemExit it must end with (any other exception escapes and fails the test)."""
    spec = importlib.util.spec_from_file_location("run_msd", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    with pytest.raises(SystemExit) as exit_info:
        script.main([str(TINY), *args])
    return str(exit_info.value.code)


@pytest.mark.parametrize(
    "flags",
    [
        ("--num_train_epochs", "0"),
        ("--num_train_epochs", "0", "--max_steps", "0"),
        ("--num_train_epochs", "-1"),
    ],
)
def test_a_student_schedule_of_no_step_is_refused_before_any_work(tmp_path, flags):
    out = tmp_path / "run"
    message = main_exit_message("--output_dir", str(out), *flags)
    assert message.startswith("run_msd.py: error: --num_train_epochs") and "--max_steps" in message, message
    assert "\n" not in message
    assert not out.exists()  # refused before the data, the teacher or the lock


def test_a_schedule_of_steps_is_accepted_whatever_the_epochs():
    for flags, accepted in (
        (["--max_steps", "2", "--num_train_epochs", "0"], True),
        (["--num_train_epochs", "0.5"], True),
        (["--num_train_epochs", "nan"], False),
    ):
        training_args = parse_arguments([str(TINY), *flags])[3]
        try:
            check_student_schedule(training_args)
        except ValueError:
            assert not accepted, flags
        else:
            assert accepted, flags


def test_deepspeed_is_refused_with_the_ddp_command(monkeypatch):
    """The workflow under DeepSpeed (``accelerate launch --use_deepspeed`` sets ACCELERATE_USE_DEEPSPEED) is
    refused in one line naming the flags and the DDP command; tests/test_deepspeed.py launches it."""
    training_args = parse_arguments([str(TINY)])[3]
    check_no_deepspeed(training_args)  # no DeepSpeed: accepted
    monkeypatch.setenv("ACCELERATE_USE_DEEPSPEED", "true")
    with pytest.raises(InputValueError) as refused:
        check_no_deepspeed(training_args)
    message = str(refused.value)
    assert "--use_deepspeed" in message and "accelerate launch --multi_gpu --num_processes N" in message
    assert "\n" not in message


def test_an_output_dir_in_use_is_one_line_naming_the_flag(tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = {"pid": os.getpid(), "host": socket.gethostname(), "started": "now", "command": "another run"}
    (out / LOCK_FILE).write_text(json.dumps(holder))
    message = main_exit_message("--output_dir", str(out))
    assert message.startswith(f"run_msd.py: error: --output_dir {out} is in use by process {os.getpid()}")
    assert "\n" not in message


def test_an_output_dir_at_or_under_a_file_is_one_line_naming_the_flag(tmp_path):
    """``sys.exit(message)``: Python prints the message alone on stderr and exits with status 1."""
    (tmp_path / "file").write_text("not a folder")
    for out in (tmp_path / "file", tmp_path / "file" / "sub"):
        assert main_exit_message("--output_dir", str(out)) == (
            f"run_msd.py: error: --output_dir {out} cannot be created: {tmp_path / 'file'} is a file, not a "
            "folder. Choose another --output_dir."
        )


def test_a_bug_keeps_its_traceback(tmp_path, monkeypatch):
    """Only errors about the user's input become one line: anything else escapes ``main`` as it was."""
    spec = importlib.util.spec_from_file_location("run_msd", SCRIPT)
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)

    def broken(*arguments):
        raise KeyError("a bug")

    monkeypatch.setattr(script, "run_experiment", broken)
    with pytest.raises(KeyError, match="a bug"):
        script.main([str(TINY), "--output_dir", str(tmp_path)])


def _test_accuracy_by_hand(student_dir: Path, max_test_samples: int, condition: str) -> float:
    """Accuracy of the saved student on the test slice, computed without hf_msd's evaluation code."""
    model = AutoModelForSequenceClassification.from_pretrained(student_dir).eval()
    processor = AutoProcessor.from_pretrained(student_dir)
    test = load_easy_vqa(max_samples={"test": max_test_samples})["test"]
    kwargs = {}
    if condition in ("both", "text"):
        kwargs["text"] = list(test["question"])
    if condition in ("both", "image"):
        kwargs["images"] = [image.convert("RGB") for image in test["image"]]
    inputs = processor(**kwargs, return_tensors="pt", padding=True, truncation=True, max_length=32)
    with torch.no_grad():
        predictions = model(**inputs).logits.argmax(-1)
    return (predictions == torch.tensor(list(test["label"]))).float().mean().item()


def test_end_to_end_then_reuse_then_refuse_changed_settings(tmp_path):
    out = tmp_path / "run"
    first = run("--output_dir", str(out))
    check_ok(first)
    summary = json.loads((out / "summary.json").read_text())
    assert "acc (both)" in first.stdout  # the console table
    # Every progress bar says what it counts: the training stage, or the model and input condition.
    segments = re.split(r"[\r\n]", first.stderr)
    bars = [m.group(1) for m in map(re.compile(r"(.*?)\s*\d+%\|").match, segments) if m]
    assert bars and all(bars), [bar for bar in bars if not bar]
    labels = {bar.rstrip(":") for bar in bars}
    assert {"teacher", "student"} <= labels
    assert {
        f"{model} test ({c})" for model in ("teacher", "student") for c in ("both", "text", "image")
    } <= labels

    student_dir = out / "student"
    for path in summary["paths"].values():
        assert Path(path).exists(), path
    assert (student_dir / "model.safetensors").exists()
    assert (student_dir / "processor_config.json").exists() or (student_dir / "tokenizer.json").exists()
    assert (student_dir / "saliency.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    card = (student_dir / "README.md").read_text()
    assert "MSD: Saliency-aware Knowledge Distillation" in card
    assert summary["test_examples"] == 32 and "(32 examples)" in card
    # MSD trained from the teacher-output cache: one Arrow file per split (train, validation).
    assert len(list((out / "teacher_outputs").glob("teacher-outputs-*.arrow"))) == 2

    for model in ("teacher", "student"):
        assert set(summary["evaluation"][model]) == {"both", "text", "image"}
    assert summary["parameters"]["student"] < summary["parameters"]["teacher"]
    for condition in ("both", "text", "image"):
        expected = _test_accuracy_by_hand(student_dir, 32, condition)
        assert summary["evaluation"]["student"][condition]["accuracy"] == pytest.approx(expected, abs=1e-6)

    # Same training settings, a smaller test set: every trained stage is reused, nothing is rewritten.
    weights = [out / "teacher" / "model.safetensors", student_dir / "model.safetensors"]
    stamps = [w.stat().st_mtime_ns for w in weights]
    check_ok(run("--output_dir", str(out), "--max_test_samples", "16"))
    assert [w.stat().st_mtime_ns for w in weights] == stamps
    assert json.loads((out / "summary.json").read_text())["test_examples"] == 16

    # Changed student settings: refused with the field named, nothing lost.
    changed = run("--output_dir", str(out), "--learning_rate", "0.5")
    assert changed.returncode != 0
    assert "learning_rate" in changed.stderr and "--overwrite_output_dir" in changed.stderr
    assert [w.stat().st_mtime_ns for w in weights] == stamps


def test_unimodal_text_student_with_kd(tmp_path):
    out = tmp_path / "kd_text"
    check_ok(
        run(
            "--output_dir",
            str(out),
            "--method",
            "kd",
            "--student_modalities",
            "text",
            "--cache_teacher_outputs",
            "false",
        )
    )
    assert not (out / "teacher_outputs").exists()  # the teacher ran online
    summary = json.loads((out / "summary.json").read_text())
    assert set(summary["evaluation"]["student"]) == {"both", "text"}
    config = json.loads((out / "student" / "config.json").read_text())
    assert config["modalities"] == ["text"]


@pytest.mark.multiprocess
def test_accelerate_launch_two_processes(tmp_path):
    out = tmp_path / "ddp"
    # use_cpu false, as in the quick config: on a machine without GPU the two processes are still one run.
    command, env = two_process_launch(SCRIPT, str(TINY), "--output_dir", str(out), "--use_cpu", "false")
    result = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    check_ok(result)
    summary = json.loads((out / "summary.json").read_text())
    assert summary["processes"] == 2
    # 64 examples, 16 per process: 2 steps of 32 (two independent copies would take 4 steps each).
    assert summary["student_training"]["steps"] == 2
    assert json.loads((out / "teacher" / "train_results.json").read_text())["steps"] == 2
    # Printed once, by the main process; no warnings about pinned memory or DDP's unused-parameter search.
    for line in ("[hf_msd] teacher: training", "[hf_msd] student: training", "model             params"):
        assert result.stdout.count(line) == 1, result.stdout
    assert result.stdout.count("'train_runtime'") == 2, result.stdout  # teacher and student, main process
    assert "pin_memory" not in result.stderr, result.stderr[-3000:]
    assert "find_unused_parameters" not in result.stderr, result.stderr[-3000:]
    assert set(summary["evaluation"]["student"]) == {"both", "text", "image"}
    assert (out / "student" / "model.safetensors").exists()
