"""What data loading costs a training step, and whether DataLoader workers take it off the step.

    python benchmarks/data_loading.py            # the quick config, about 3 minutes on 2 cores

The quick config's student (:mod:`benchmarks.throughput`'s ``Setup``) trains with ``Trainer.train`` on
easy-VQA questions read as the main command reads them: the ``image`` column decoded to PIL per row and
collated by :class:`~hf_msd.MultimodalDataCollator` (image processor and tokenizer) in the DataLoader. Timed
for ``dataloader_num_workers`` 0, 1 and 2 (``--workers``), each as plain fine-tuning (``F``) and MSD
population from the teacher-output cache, in interleaved rounds: the wall time between optimizer steps after
``--warmup`` steps (a callback's clock), median over the steps of a round, then median over rounds. Also the
DataLoader alone (no training): seconds per batch at 0 workers, what a step pays when loading is inline.

Writes ``benchmarks/results/data_loading.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from functools import partial
from pathlib import Path
from typing import Any

from results_files import machine, write_results
from transformers import TrainerCallback

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.throughput import DEFAULT_CONFIG, Setup, build_trainer
from hf_msd.evaluation.speed import time_interleaved


class StepClock(TrainerCallback):
    """The wall time of every optimizer step's end."""

    def __init__(self) -> None:
        self.ends: list[float] = []

    def on_step_end(self, args, state, control, **kwargs):
        self.ends.append(time.perf_counter())


def step_seconds(setup: Setup, variant: str, workers: int, steps: int, warmup: int) -> float:
    """The median wall time between optimizer steps of ``Trainer.train`` over ``steps`` steps after
    ``warmup``, with ``dataloader_num_workers=workers``."""
    trainer, _, _ = build_trainer(setup, variant)
    trainer.args.dataloader_num_workers = workers
    trainer.args.max_steps = warmup + steps
    trainer.args.logging_strategy = "no"
    clock = StepClock()
    trainer.add_callback(clock)
    trainer.train()
    return statistics.median(b - a for a, b in zip(clock.ends[warmup:], clock.ends[warmup + 1 :]))


def loader_seconds(setup: Setup, batches: int) -> float:
    """Seconds per batch of the training DataLoader alone at 0 workers (read rows, decode, collate)."""
    trainer, _, _ = build_trainer(setup, "F")
    loader = iter(trainer.get_train_dataloader())
    next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    return (time.perf_counter() - start) / batches


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--workers", default="0,1,2", help="Comma-separated dataloader_num_workers.")
    parser.add_argument("--variants", default="F,MSD population cached")
    parser.add_argument("--steps", type=int, default=30, help="Timed steps per run.")
    parser.add_argument("--warmup", type=int, default=5, help="Untimed steps per run first.")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--num_examples", type=int, default=2048, help="Training questions.")
    args = parser.parse_args()
    workers = [int(w) for w in args.workers.split(",")]
    runs = {f"{v}, {w} workers": (v, w) for v in args.variants.split(",") for w in workers}
    load_before = os.getloadavg()[0]
    with tempfile.TemporaryDirectory() as cache_dir:
        setup = Setup(str(DEFAULT_CONFIG), [], args.num_examples, cache_dir)
        medians: dict[str, list[float]] = {name: [] for name in runs}

        def run(name: str) -> None:
            medians[name].append(step_seconds(setup, *runs[name], args.steps, args.warmup))

        # time_interleaved's own wall times (set-up included) are not used: each run records its step median
        time_interleaved({name: partial(run, name) for name in runs}, rounds=args.rounds, warmup_rounds=0)
        loader = loader_seconds(setup, args.steps)
    seconds = {name: statistics.median(values) for name, values in medians.items()}
    report: dict[str, Any] = {
        "command": " ".join(["python", "benchmarks/data_loading.py", *sys.argv[1:]]),
        "machine": f"{machine()}; load average before the run {load_before:.2f}, after "
        f"{os.getloadavg()[0]:.2f}",
        "batch_size": setup.batch_size,
        "rounds": args.rounds,
        "steps": args.steps,
        "warmup": args.warmup,
        "step_seconds": seconds,
        "step_seconds_per_round": medians,
        "dataloader_alone_seconds_per_batch": loader,
    }
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Batch {setup.batch_size}; {args.rounds} interleaved rounds of {args.steps} steps after "
        f"{args.warmup}; median seconds between optimizer steps.",
        "",
        f"| variant | dataloader_num_workers | s/step | / {workers[0]} workers |",
        "|---|---:|---:|---:|",
    ]
    for name, value in seconds.items():
        variant, count = runs[name]
        base = seconds[f"{variant}, {workers[0]} workers"]
        lines.append(f"| {variant} | {count} | {value:.4f} | {value / base:.2f} |")
    lines += ["", f"The DataLoader alone at 0 workers (read, decode, collate): {loader:.4f} s per batch."]
    write_results("data_loading", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
