"""Launching a script on two CPU processes (gloo DDP), shared by the multi-process tests.

With accelerate 1.15, `accelerate launch --cpu --num_processes 2` starts ONE process unless MPI is set
up; `--multi_gpu` with no visible GPU goes through torchrun and starts two CPU processes with gloo.
"""

import os
import socket
import sys


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


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
    env = {
        **os.environ,
        "HF_HUB_OFFLINE": "1",
        "OMP_NUM_THREADS": "1",
        "CUDA_VISIBLE_DEVICES": "",
        "TOKENIZERS_PARALLELISM": "false",
    }
    return command, env
