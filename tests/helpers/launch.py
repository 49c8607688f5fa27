"""Launching the scripts of tests/helpers/scripts in fresh processes, shared by the tests that do it.

:func:`script_env` puts the repository root on ``PYTHONPATH``, so a script imports ``tests.helpers`` (and this
checkout's hf_msd) wherever it runs from.

With accelerate 1.15, `accelerate launch --cpu --num_processes 2` starts ONE process unless MPI is set
up; `--multi_gpu` with no visible GPU goes through torchrun and starts two CPU processes with gloo.
"""

import os
import socket
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
SCRIPTS = Path(__file__).resolve().parent / "scripts"


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def script_env(**overrides: str) -> dict[str, str]:
    """This process's environment for a launched script: the repository root first on ``PYTHONPATH``, the
    Hub offline, one thread, no GPU, no tokenizer threads; ``overrides`` last."""
    path = os.pathsep.join(p for p in (str(REPO_ROOT), os.environ.get("PYTHONPATH")) if p)
    return {
        **os.environ,
        "PYTHONPATH": path,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
        **overrides,
    }


def two_process_launch(script: str, *args: str) -> tuple[list[str], dict[str, str]]:
    """The command and environment that run ``script args...`` on two CPU processes."""
    command = [
        sys.executable,
        "-m",
        "accelerate.commands.launch",
        "--multi_gpu",
        "--num_processes",
        "2",
        "--num_machines",
        "1",
        "--mixed_precision",
        "no",
        "--dynamo_backend",
        "no",
        "--main_process_port",
        str(_free_port()),
        str(script),
        *args,
    ]
    return command, script_env()


def deepspeed_launch(
    script: str, zero_stage: int, *args: str, extensions_dir: str
) -> tuple[list[str], dict[str, str]]:
    """The command of docs/workflow.md that runs ``script args...`` under DeepSpeed ZeRO-``zero_stage`` on 2
    CPU processes (``accelerate launch --use_deepspeed``, ``DS_ACCELERATOR=cpu``), and its environment.

    DeepSpeed compiles its CPU communication op on first use into ``TORCH_EXTENSIONS_DIR``, behind a lock file
    that a process killed mid-build leaves behind, after which every later launch waits on it forever (no
    output): ``extensions_dir`` (the ``torch_extensions_dir`` fixture, one per pytest process) keeps the tests
    off the user's shared ``~/.cache/torch_extensions``."""
    command = [
        *(sys.executable, "-m", "accelerate.commands.launch"),
        *("--use_deepspeed", "--zero_stage", str(zero_stage)),
        *("--zero3_save_16bit_model", "true", "--num_processes", "2", "--num_machines", "1"),
        *("--mixed_precision", "no", "--dynamo_backend", "no", "--main_process_port", str(_free_port())),
        str(script),
        *args,
    ]
    return command, script_env(DS_ACCELERATOR="cpu", TORCH_EXTENSIONS_DIR=extensions_dir)
