"""Where a training step's time goes: cProfile over a few steps of each variant of benchmarks/throughput.py.

    python benchmarks/profile_step.py                                  # F and KD cached, the quick config
    python benchmarks/profile_step.py --variants "F,MSD population cached" --steps 5

The models, data and steps are :mod:`benchmarks.throughput`'s (``Setup``, ``build_trainer``,
``trainer_step``; run_msd flags after the config override it). For each variant: the seconds per step
under the profiler, then hf_msd's own functions by cumulative time per step (the library's overhead over
the student's forward, backward and optimizer step, which fine-tuning ``F`` pays too) and the top functions
by their own time. Profiler overhead inflates small Python calls, so read the figures relative to ``F``; the
step times of record are throughput.py's.
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.throughput import DEFAULT_CONFIG, Setup, build_trainer, trainer_step


def profile_variant(setup: Setup, variant: str, warmup: int, steps: int) -> pstats.Stats:
    """The cProfile statistics of ``steps`` steps of ``variant`` after ``warmup`` untimed ones."""
    trainer, model, batches = build_trainer(setup, variant)
    for k in range(warmup):
        trainer_step(trainer, model, batches[k % len(batches)])
    profiler = cProfile.Profile()
    profiler.enable()
    for k in range(steps):
        trainer_step(trainer, model, batches[k % len(batches)])
    profiler.disable()
    return pstats.Stats(profiler)


def report(variant: str, stats: pstats.Stats, steps: int, top: int) -> None:
    """Prints the seconds per step, hf_msd's functions by cumulative time and the top own-time functions."""
    print(f"\n## {variant}: {stats.total_tt / steps * 1000:.1f} ms per step (under the profiler)")
    rows = [
        (cumulative / steps, own / steps, calls / steps, f"{Path(file).name}:{line} {name}")
        for (file, line, name), (_, calls, own, cumulative, _) in stats.stats.items()
    ]
    own_files = {
        f"{Path(file).name}:{line} {name}"
        for (file, line, name) in stats.stats
        if "/hf_msd/" in file or "/benchmarks/" in file
    }
    library = sorted((r for r in rows if r[3] in own_files), reverse=True)
    print("\nhf_msd functions, cumulative ms per step (own ms, calls per step):")
    for cumulative, own, calls, where in library[:top]:
        print(f"  {cumulative * 1000:8.2f}  ({own * 1000:6.2f}, {calls:5.1f})  {where}")
    print("\nTop functions by own time, ms per step (calls per step):")
    for _, own, calls, where in sorted(rows, key=lambda r: r[1], reverse=True)[:top]:
        print(f"  {own * 1000:8.2f}  ({calls:6.1f})  {where}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="A run_msd.py config file.")
    parser.add_argument("--variants", default="F,KD cached", help="Comma-separated throughput.py variants.")
    parser.add_argument("--warmup", type=int, default=2, help="Untimed steps per variant first.")
    parser.add_argument("--steps", type=int, default=5, help="Profiled steps per variant.")
    parser.add_argument("--num_examples", type=int, default=128, help="Training examples (cache, saliency).")
    parser.add_argument("--top", type=int, default=25, help="Rows per table.")
    args, overrides = parser.parse_known_args()
    setup = Setup(args.config, overrides, args.num_examples, tempfile.mkdtemp())
    for variant in args.variants.split(","):
        stats = profile_variant(setup, variant.strip(), args.warmup, args.steps)
        report(variant, stats, args.steps, args.top)


if __name__ == "__main__":
    main()
