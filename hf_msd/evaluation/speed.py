"""Timing workloads side by side: interleaved rounds after a warm-up.

On a shared or throttled machine, timings drift over minutes; timing one workload after the other would turn
the drift into a speed difference. :func:`time_interleaved` therefore runs the workloads in alternating
order round after round and records each one's time per round; it is the one timer behind the workflow's
inference speed (:func:`compare_inference_speed`: models on the same pre-collated batches, collation not
timed, median time per batch and ratio to a reference model) and the benchmarks under ``benchmarks/``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


def time_interleaved(
    workloads: Mapping[str, Callable[[], Any]],
    rounds: int,
    warmup_rounds: int = 1,
    progress: bool = False,
    description: str = "Interleaved rounds",
) -> dict[str, list[float]]:
    """Seconds each workload takes in each of ``rounds`` timed rounds.

    Every workload first runs ``warmup_rounds`` times untimed (allocator, kernels, caches); then, in each
    round, every workload runs once, in the listed order in even rounds and in reverse in odd ones, so that a
    drift in machine load hits all of them alike. Compare workloads by their medians over the rounds.

    Args:
        workloads: name -> a function without arguments that does one round's work (its result is ignored).
        rounds: timed rounds (>= 1).
        warmup_rounds: untimed rounds first (>= 0).
        progress / description: a progress bar over the timed rounds, and its label.

    Returns:
        name -> ``rounds`` durations in seconds, in round order.
    """
    if rounds < 1 or warmup_rounds < 0:
        raise ValueError(f"rounds must be >= 1 and warmup_rounds >= 0, got {rounds} and {warmup_rounds}.")
    names = list(workloads)
    for _ in range(warmup_rounds):
        for name in names:
            workloads[name]()
    times: dict[str, list[float]] = {name: [] for name in names}
    for index in tqdm(range(rounds), desc=description, disable=not progress):
        for name in names if index % 2 == 0 else reversed(names):
            start = time.perf_counter()
            workloads[name]()
            times[name].append(time.perf_counter() - start)
    return times


def _run_batches(model: nn.Module, batches: Sequence[Mapping[str, Any]]) -> Callable[[], None]:
    """A workload for :func:`time_interleaved`: ``model`` on every batch once."""

    def run() -> None:
        for batch in batches:
            model(**batch)

    return run


def compare_inference_speed(
    models: Mapping[str, nn.Module],
    batches: Mapping[str, Sequence[Mapping[str, Any]]],
    rounds: int = 5,
    warmup_rounds: int = 1,
    reference: str | None = None,
    progress: bool = True,
) -> dict[str, Any]:
    """Time batched forward passes of ``models`` side by side.

    Args:
        models: name -> model (put in eval mode, run under ``torch.inference_mode()``).
        batches: name -> that model's batches (the same examples for every model, collated for each model's
            inputs: a unimodal student gets only its modality's keys), already on the models' device.
        rounds: timed rounds; in each round every model runs all its batches once, in alternating order
            (forward in even rounds, reversed in odd ones).
        warmup_rounds: untimed rounds first (allocator, kernels, caches).
        reference: the model the others are compared to (default: the first).
        progress: show a progress bar over the rounds.

    Returns:
        ``{"models": {name: {"seconds_per_batch": median over rounds, "examples_per_second": ...,
        "rounds": [seconds per batch of each round]}}, "speedup": {name: reference's median / name's median},
        "batch_size": ..., "batches": ..., "rounds": ..., "warmup_rounds": ...}``.
    """
    names = list(models)
    if set(batches) != set(names):
        raise ValueError(f"batches must have one entry per model {names}, got {sorted(batches)}.")
    reference = names[0] if reference is None else reference
    if reference not in models:
        raise ValueError(f"reference must name one of the models {names}, got {reference!r}.")
    sizes = {name: [next(iter(b.values())).shape[0] for b in batches[name]] for name in names}
    if len({tuple(s) for s in sizes.values()}) != 1:
        raise ValueError(f"Every model must get the same batches (sizes {sizes}).")
    examples = sum(sizes[reference])
    for model in models.values():
        model.eval()
    with torch.inference_mode():
        seconds = time_interleaved(
            {name: _run_batches(models[name], batches[name]) for name in names},
            rounds=rounds,
            warmup_rounds=warmup_rounds,
            progress=progress,
            description="Inference speed (interleaved rounds)",
        )
    times = {name: [value / len(batches[name]) for value in seconds[name]] for name in names}
    medians = {name: statistics.median(values) for name, values in times.items()}
    return {
        "models": {
            name: {
                "seconds_per_batch": medians[name],
                "examples_per_second": examples / len(batches[name]) / medians[name],
                "rounds": times[name],
            }
            for name in names
        },
        "speedup": {name: medians[reference] / medians[name] for name in names},
        "reference": reference,
        "batch_size": sizes[reference][0],
        "batches": len(sizes[reference]),
        "rounds": rounds,
        "warmup_rounds": warmup_rounds,
    }
