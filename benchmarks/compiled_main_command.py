"""The main command end to end, eager and with ``--torch_compile true``, one after the other.

    python benchmarks/compiled_main_command.py                 # about 30 minutes here
    python benchmarks/compiled_main_command.py --num_train_epochs 1   # any run_msd flag is passed on

Each mode runs ``examples/run_msd.py <config>`` from scratch (teacher, cache, saliency, student, evaluation,
speed table) into its own fresh folder under ``--output_root``; the compiled run starts with a cold inductor
cache (a fresh ``TORCHINDUCTOR_CACHE_DIR``), as a user's first run does. Reported per mode: the wall time of
the whole command (compilation included), the teacher's and the student's training time
(``train_runtime``, compilation included) and their test accuracy. Run it on an otherwise idle machine: the
two runs are sequential, so load from other jobs would land on one of them only.

Writes ``benchmarks/results/compiled_main_command.{json,md}``.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from results_files import write_results

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "examples" / "configs" / "quick_easy_vqa.yaml"
MODES = {"eager": [], "compiled": ["--torch_compile", "true"]}


def run_mode(mode: str, config: str, output_dir: Path, overrides: list[str]) -> dict:
    """One run of the main command in ``mode``; its wall time and the summary's figures."""
    if output_dir.exists():
        shutil.rmtree(output_dir)
    env = dict(os.environ)
    if mode == "compiled":
        env["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="torchinductor_")
    command = [sys.executable, "examples/run_msd.py", config, "--output_dir", str(output_dir)]
    command += MODES[mode] + overrides
    log = output_dir.with_suffix(".log")
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    start = time.perf_counter()
    with log.open("w") as handle:
        done = subprocess.run(
            command, cwd=ROOT, env=env, stdout=handle, stderr=subprocess.STDOUT, check=False
        )
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise RuntimeError(f"The {mode} run failed (exit {done.returncode}); see {log}.")
    summary = json.loads((output_dir / "summary.json").read_text())
    return {
        "command": " ".join(command[1:]),
        "wall_s": wall,
        "teacher_train_s": (summary.get("teacher_training") or {}).get("train_runtime"),
        "student_train_s": summary["student_training"]["train_runtime"],
        "accuracy": {name: scores["both"]["accuracy"] for name, scores in summary["evaluation"].items()},
    }


def markdown(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}",
        "",
        "| mode | wall time s | / eager | teacher training s | student training s | teacher acc "
        "| student acc |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    eager = report["runs"].get("eager", {}).get("wall_s")
    for mode, run in report["runs"].items():
        ratio = f"{run['wall_s'] / eager:.2f}" if eager else ""
        teacher = f"{run['teacher_train_s']:.0f}" if run["teacher_train_s"] is not None else "loaded"
        lines.append(
            f"| {mode} | {run['wall_s']:.0f} | {ratio} | {teacher} | {run['student_train_s']:.0f} | "
            f"{run['accuracy'].get('teacher', float('nan')):.4f} | {run['accuracy']['student']:.4f} |"
        )
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="A run_msd.py config file.")
    parser.add_argument(
        "--output_root", default="outputs/compiled_main_command", help="Parent of the runs' folders."
    )
    parser.add_argument("--modes", nargs="+", default=list(MODES), choices=list(MODES), help="In this order.")
    parser.add_argument("--output_name", default="compiled_main_command", help="Results file stem.")
    args, overrides = parser.parse_known_args()
    load_before = os.getloadavg()[0]
    runs = {
        mode: run_mode(mode, args.config, ROOT / args.output_root / mode, overrides) for mode in args.modes
    }
    report = {
        "command": " ".join(["python", "benchmarks/compiled_main_command.py", *sys.argv[1:]]),
        "machine": f"{platform.machine()}, {os.cpu_count()} CPU cores; load average before "
        f"{load_before:.2f}, after {os.getloadavg()[0]:.2f}",
        "runs": runs,
    }
    write_results(args.output_name, report, markdown(report))


if __name__ == "__main__":
    main()
