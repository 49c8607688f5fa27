"""Timing workloads side by side: interleaved rounds after a warm-up.

On a shared or throttled machine, timings drift over minutes; timing one workload after the other would turn
the drift into a speed difference. :func:`time_interleaved` therefore runs the workloads in alternating
order round after round and records each one's time per round; it is the one timer behind the workflow's
inference speed (:func:`compare_inference_speed`: models on the same pre-collated batches, collation not
timed, median time per batch and ratio to a reference model, optionally each one compiled with
``torch.compile`` beside it) and the benchmarks under ``benchmarks/``.
"""

from __future__ import annotations

import statistics
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from ..recompile_limit import allow_recompiles


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


#: The suffix of a compiled model's name in :func:`compare_inference_speed`'s result.
COMPILED_SUFFIX = " (compiled)"


def compile_for_inference(
    models: Mapping[str, nn.Module],
    batches: Mapping[str, Sequence[Mapping[str, Any]]],
    compile_options: Mapping[str, Any],
) -> tuple[dict[str, nn.Module], dict[str, float]]:
    """``torch.compile`` each model and run it once on each of its batches (eval mode, inference mode), so
    that the compilation (and any recompile for a differently sized batch) happens here and not in a timed
    round.

    Returns ``({name + " (compiled)": compiled model}, {name + " (compiled)": seconds of that first pass})``:
    the one-off compile warm-up, which timed rounds never include.
    """
    allow_recompiles()  # teacher and student of one class share one compiled forward (one dynamo cache)
    compiled, seconds = {}, {}
    for name, model in models.items():
        model.eval()
        wrapper = torch.compile(model, **compile_options)
        start = time.perf_counter()
        with torch.inference_mode():
            _run_batches(wrapper, batches[name])()
        compiled[name + COMPILED_SUFFIX] = wrapper
        seconds[name + COMPILED_SUFFIX] = time.perf_counter() - start
    return compiled, seconds


def compare_inference_speed(
    models: Mapping[str, nn.Module],
    batches: Mapping[str, Sequence[Mapping[str, Any]]],
    rounds: int = 5,
    warmup_rounds: int = 1,
    reference: str | None = None,
    progress: bool = True,
    compile_options: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """Time batched forward passes of ``models`` side by side, eager and optionally compiled.

    Args:
        models: name -> model (put in eval mode, run under ``torch.inference_mode()``).
        batches: name -> that model's batches (the same examples for every model, collated for each model's
            inputs: a unimodal student gets only its modality's keys), already on the models' device.
        rounds: timed rounds; in each round every model runs all its batches once, in alternating order
            (forward in even rounds, reversed in odd ones).
        warmup_rounds: untimed rounds first (allocator, kernels, caches).
        reference: the model the others are compared to (default: the first).
        progress: show a progress bar over the rounds.
        compile_options: when given (``{}`` for torch's defaults: the inductor backend), every model is also
            timed compiled (``torch.compile(model, **compile_options)``), as ``"<name> (compiled)"`` right
            after its eager entry, interleaved with the rest; each compiled model first runs all its batches
            once (:func:`compile_for_inference`), timed apart as ``compile_seconds``.

    Returns:
        ``{"models": {name: {"seconds_per_batch": median over rounds, "examples_per_second": ...,
        "rounds": [seconds per batch of each round]}}, "speedup": {name: reference's median / name's median},
        "batch_size": ..., "batches": ..., "rounds": ..., "warmup_rounds": ...}``, plus
        ``"compile_seconds": {"<name> (compiled)": seconds}`` and ``"compile_options"`` with
        ``compile_options``. The reference is always an eager model.
    """
    names = list(models)
    if set(batches) != set(names):
        raise ValueError(f"batches must have one entry per model {names}, got {sorted(batches)}.")
    reference = names[0] if reference is None else reference
    if reference not in models:
        raise ValueError(f"reference must name one of the models {names}, got {reference!r}.")
    if not all(batches[name] for name in names):
        raise ValueError(f"Every model needs at least one batch, got {[len(batches[n]) for n in names]}.")
    sizes = {name: [next(iter(b.values())).shape[0] for b in batches[name]] for name in names}
    if len({tuple(s) for s in sizes.values()}) != 1:
        raise ValueError(f"Every model must get the same batches (sizes {sizes}).")
    examples = sum(sizes[reference])
    for model in models.values():
        model.eval()
    compile_seconds = None
    if compile_options is not None:
        compiled, compile_seconds = compile_for_inference(models, batches, compile_options)
        ordered = {}
        for name in names:
            ordered[name] = models[name]
            ordered[name + COMPILED_SUFFIX] = compiled[name + COMPILED_SUFFIX]
        batches = {key: batches[key.removesuffix(COMPILED_SUFFIX)] for key in ordered}
        models, names = ordered, list(ordered)
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
        **(
            {"compile_seconds": compile_seconds, "compile_options": dict(compile_options)}
            if compile_options is not None
            else {}
        ),
    }
