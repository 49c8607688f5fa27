"""hf_msd/evaluation/speed.py: the interleaved timer and the side-by-side inference speed built on it."""

import pytest
import torch
from torch import nn

from hf_msd.evaluation.speed import compare_inference_speed, time_interleaved


def test_time_interleaved_warms_up_then_alternates_the_order():
    calls = []
    workloads = {name: (lambda name=name: calls.append(name)) for name in ("a", "b", "c")}
    seconds = time_interleaved(workloads, rounds=3, warmup_rounds=2)
    warmup, timed = calls[:6], calls[6:]
    assert warmup == ["a", "b", "c"] * 2
    # Listed order in even rounds, reversed in odd ones: drift in machine load hits every workload alike.
    assert timed == ["a", "b", "c", "c", "b", "a", "a", "b", "c"]
    assert {name: len(values) for name, values in seconds.items()} == {"a": 3, "b": 3, "c": 3}
    assert all(value >= 0 for values in seconds.values() for value in values)
    with pytest.raises(ValueError, match="rounds must be >= 1"):
        time_interleaved(workloads, rounds=0)


class _Counting(nn.Module):
    def __init__(self):
        super().__init__()
        self.calls = 0

    def forward(self, x):
        self.calls += 1
        return x


def test_compare_inference_speed_runs_every_batch_each_round_and_reports_per_batch():
    models = {"teacher": _Counting(), "student": _Counting()}
    batches = {name: [{"x": torch.zeros(4, 2)}, {"x": torch.zeros(4, 2)}] for name in models}
    result = compare_inference_speed(models, batches, rounds=3, warmup_rounds=1, progress=False)
    # (1 warm-up + 3 timed rounds) x 2 batches each.
    assert [model.calls for model in models.values()] == [8, 8]
    assert (result["batch_size"], result["batches"], result["reference"]) == (4, 2, "teacher")
    teacher = result["models"]["teacher"]
    assert len(teacher["rounds"]) == 3
    assert teacher["examples_per_second"] == pytest.approx(4 / teacher["seconds_per_batch"])
    assert result["speedup"]["teacher"] == 1.0
    assert result["speedup"]["student"] == pytest.approx(
        teacher["seconds_per_batch"] / result["models"]["student"]["seconds_per_batch"]
    )


def test_compiled_rows_run_through_torch_compile_after_a_separately_timed_warm_up():
    from torch._dynamo.testing import CompileCounter

    torch._dynamo.reset()
    counter = CompileCounter()  # a backend that counts the graphs it is given and runs them eagerly
    models = {"teacher": nn.Linear(3, 5), "student": nn.Linear(3, 2)}
    batches = {name: [{"input": torch.randn(4, 3)} for _ in range(2)] for name in models}
    result = compare_inference_speed(
        models, batches, rounds=2, progress=False, compile_options={"backend": counter}
    )
    assert list(result["models"]) == ["teacher", "teacher (compiled)", "student", "student (compiled)"]
    assert counter.frame_count >= 1  # the compiled rows went through dynamo
    assert set(result["compile_seconds"]) == {"teacher (compiled)", "student (compiled)"}
    assert all(seconds > 0 for seconds in result["compile_seconds"].values())
    assert result["reference"] == "teacher" and result["speedup"]["teacher"] == 1.0
    for name in ("teacher (compiled)", "student (compiled)"):
        assert len(result["models"][name]["rounds"]) == 2
        assert result["speedup"][name] == pytest.approx(
            result["models"]["teacher"]["seconds_per_batch"] / result["models"][name]["seconds_per_batch"]
        )
    assert "compile_seconds" not in compare_inference_speed(models, batches, rounds=1, progress=False)
    with pytest.raises(ValueError, match="at least one batch"):
        compare_inference_speed(models, {name: [] for name in models}, rounds=1, progress=False)
