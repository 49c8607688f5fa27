"""Batched inference speed of several models measured side by side: interleaved rounds after a warm-up.

On a shared or throttled machine, timings drift over minutes; timing one model after the other would turn
the drift into a speed difference. :func:`compare_inference_speed` therefore runs the models in alternating
order round after round, on the same pre-collated batches (collation is not timed), and reports each model's
median time per batch over the rounds and its ratio to a reference model.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm


def _run(model: nn.Module, batches: Sequence[Mapping[str, Any]]) -> float:
    """Seconds taken by ``model`` to run every batch once."""
    start = time.perf_counter()
    for batch in batches:
        model(**batch)
    return time.perf_counter() - start


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
    if reference not in models or rounds < 1 or warmup_rounds < 0:
        raise ValueError("reference must name a model, rounds must be >= 1 and warmup_rounds >= 0.")
    sizes = {name: [next(iter(b.values())).shape[0] for b in batches[name]] for name in names}
    if len({tuple(s) for s in sizes.values()}) != 1:
        raise ValueError(f"Every model must get the same batches (sizes {sizes}).")
    examples = sum(sizes[reference])
    times: dict[str, list[float]] = {name: [] for name in names}
    for model in models.values():
        model.eval()
    with torch.inference_mode():
        for _ in range(warmup_rounds):
            for name in names:
                _run(models[name], batches[name])
        for index in tqdm(range(rounds), desc="Inference speed (interleaved rounds)", disable=not progress):
            for name in names if index % 2 == 0 else reversed(names):
                times[name].append(_run(models[name], batches[name]) / len(batches[name]))
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
