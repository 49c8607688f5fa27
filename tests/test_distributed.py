"""Two CPU processes (gloo DDP through `accelerate launch`) take the same SGD step as one process.

The trainer divides the summed loss by the examples of the whole accumulated batch gathered across
processes and multiplies it by the world size to undo DDP's gradient averaging; the projections (a
registered training module, outside DDP) get their gradients all-reduced by the trainer, and learned
modality weights average their look-ahead gradient and hypergradient over the processes. If either were
wrong, the 2-process update would differ from the 1-process one (e.g. by a factor of 2 in the step).
"""

from __future__ import annotations

import subprocess

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file

from tests.helpers.launch import REPO_ROOT, SCRIPTS, two_process_launch
from tests.helpers.scripts.distributed_script import CASES, NUM_EXAMPLES, models, parameters, train_one_step

SCRIPT = str(SCRIPTS / "distributed_script.py")
TIMEOUT = 300


@pytest.fixture(scope="module")
def two_process_run(tmp_path_factory):
    """Runs every case of the launched script once; returns its output directory."""
    out_dir = tmp_path_factory.mktemp("distributed")
    command, env = two_process_launch(SCRIPT, str(out_dir))
    result = subprocess.run(command, cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == 0, f"launch failed:\n{result.stdout[-4000:]}\n{result.stderr[-8000:]}"
    return out_dir


@pytest.mark.multiprocess
@pytest.mark.parametrize("case", list(CASES))
def test_two_processes_take_the_one_process_step(two_process_run, tmp_path, case):
    batch_size, accumulation, hidden_loss_weight = CASES[case]
    assert 2 * batch_size * accumulation == NUM_EXAMPLES  # the 2 processes see the 1-process batch
    ranks = [load_file(two_process_run / case / f"rank{k}.safetensors") for k in (0, 1)]
    with safe_open(two_process_run / case / "rank0.safetensors", "pt") as f:
        assert f.metadata()["world_size"] == "2"

    trainer, student = train_one_step(tmp_path, case, NUM_EXAMPLES, 1, hidden_loss_weight)
    assert trainer.args.world_size == 1
    want = parameters(trainer, student)
    start = {f"student.{k}": v for k, v in models(case)[1].state_dict().items()}  # initial weights
    has_projections = any(k.startswith("modules.") for k in want)
    assert has_projections == (hidden_loss_weight > 0)

    for rank, got in enumerate(ranks):
        assert got.keys() == want.keys(), rank
        for name in want:
            torch.testing.assert_close(got[name], want[name], rtol=0, atol=1e-6, msg=f"rank {rank}: {name}")
    # The step is large next to the tolerance, so a missing world-size factor (half the step) fails.
    moved = max((want[k] - start[k]).abs().max().item() for k in start)
    assert moved > 1e-2
    if "learned" in case:  # the weights moved from 0 and agree on both ranks with the 1-process meta steps
        assert want["weighting.alpha"].abs().max() > 1e-2
