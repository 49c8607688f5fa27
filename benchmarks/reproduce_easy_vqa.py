"""Reproduce the papers' claims on easy-VQA: labels only vs KD vs MSD, and multimodal to unimodal.

    python benchmarks/reproduce_easy_vqa.py            # full run (about an hour on 2 idle CPU cores)
    python benchmarks/reproduce_easy_vqa.py --quick    # the same code path on a small slice, 1 seed

Every model comes from ``--config`` (default ``examples/configs/quick_easy_vqa.yaml``, read at run time): the
teacher recipe (``teacher_*``, ``teacher_config``) and the student recipe (``student_config``, loss weights,
learning rate, schedule, batch size). The script only adds, per arm, the method and the flags below, and
calls the workflow's stage functions (:mod:`hf_msd.experiment.workflow`), so each arm is exactly what
``examples/run_msd.py <config> <flags>`` would train.

1. Two teachers on every train label: the config's teacher (or ``--teacher PATH``) and the same recipe with
   ``--teacher_modality_dropout p`` (:mod:`hf_msd.modalities.dropout`); each scored once on the test split.
2. Multimodal students, for each labelled fraction and seed (the seed sets the labelled draw, the
   student's initial weights and the data order; the train / validation split is fixed by the config's
   seed): labels only (trained on the labelled rows alone), KD, MSD uniform / population / instance /
   learned, all for the same ``max_steps`` optimizer steps, and "KD at MSD wall-clock": KD for
   ``round(max_steps * t_MSD_population / t_KD)`` steps, both times measured in this run for the same seed
   and fraction.
3. From the modality-dropout teacher: KD and MSD population at the first fraction, every seed.
4. Unimodal students (text only, image only) at the first fraction, every seed: alone (labels only), KD on
   logits, KD on logits + hidden states, KD on logits + attention maps.
5. Teacher vs students: parameters and inference latency at batch sizes 1 and 256, interleaved rounds
   (:func:`hf_msd.evaluation.speed.compare_inference_speed`).

Each arm's result is written to ``<output_dir>/.../arm_result.json`` with its settings and skipped on a rerun
with the same settings (so an interrupted run resumes); teacher outputs are cached once per teacher
(``<output_dir>/<teacher>/teacher_outputs``). Results: ``<results_dir>/reproduce_easy_vqa{,_quick}.json``,
``.md`` (tables, claims with their rules) and ``.png``.
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import math
import os
import platform
import statistics
import time
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from hf_msd.experiment import parse_arguments
from hf_msd.experiment.workflow import (
    TRAIN_RESULTS,
    Run,
    distill_student,
    evaluate_models,
    load_data,
    measure_speed,
    new_student,
    train_or_load_teacher,
)

RESULTS_NAME = "reproduce_easy_vqa"
MAIN_ARMS = {
    "labels only": ["--method", "none"],
    "KD": ["--method", "kd"],
    "MSD uniform": ["--method", "msd", "--modality_weighting", "uniform"],
    "MSD population": ["--method", "msd", "--modality_weighting", "population"],
    "MSD instance": ["--method", "msd", "--modality_weighting", "instance"],
    "MSD learned": ["--method", "msd", "--modality_weighting", "learned"],
}
WALLCLOCK_ARM = "KD at MSD wall-clock"
WALLCLOCK_REFERENCE = "MSD population"
MSD_ARMS = [name for name in MAIN_ARMS if name.startswith("MSD")]
DROPOUT_ARMS = ("KD", "MSD population")
#: Hidden-state / attention KD weights of the unimodal students, fixed up front (not tuned).
UNIMODAL_ARMS = {
    "alone": ["--method", "none"],
    "KD logits": ["--method", "kd"],
    "KD logits + hidden": ["--method", "kd", "--hidden_loss_weight", "1.0", "--hidden_state_pooling", "mean"],
    "KD logits + attention": ["--method", "kd", "--attention_loss_weight", "1.0"],
}
UNIMODAL_DISTILLED = [name for name in UNIMODAL_ARMS if name != "alone"]
UNIMODAL_INTERMEDIATE = ("KD logits + hidden", "KD logits + attention")
SIZE_RATIO_CLAIM, LATENCY_REDUCTION_CLAIM = 2.5, 0.22
QUICK = {"max_train_samples": 1000, "max_eval_samples": 200, "max_test_samples": 500, "max_steps": 20}
FULL = {"max_train_samples": None, "max_eval_samples": 1000, "max_test_samples": 3000, "max_steps": 150}


# --- statistics and verdicts (pure functions, unit-tested) ----------------------------------------


def mean_std(values: Sequence[float]) -> tuple[float, float | None]:
    """Mean and sample standard deviation (n - 1 in the denominator); the std is None for one value. A NaN
    among the values (a condition the model cannot take, e.g. images for a text-only student) gives NaN."""
    if not values:
        raise ValueError("mean_std needs at least one value.")
    if any(math.isnan(v) for v in values):
        return math.nan, math.nan if len(values) > 1 else None
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else None


def paired_verdict(candidate: Sequence[float], baseline: Sequence[float]) -> str:
    """The claim "candidate beats baseline", paired by seed: 'held' if candidate > baseline on every seed,
    'mixed' if only its mean is higher, 'not held' otherwise (a tie on the mean is 'not held')."""
    if len(candidate) != len(baseline) or not candidate:
        raise ValueError(f"Paired values needed, got {len(candidate)} and {len(baseline)}.")
    if all(c > b for c, b in zip(candidate, baseline)):
        return "held"
    return "mixed" if statistics.fmean(candidate) > statistics.fmean(baseline) else "not held"


def size_speed_verdict(size_ratio: float, latency_reduction: float) -> str:
    """'held' if the student has >= 2.5x fewer parameters AND takes >= 22% less inference time."""
    return (
        "held"
        if size_ratio >= SIZE_RATIO_CLAIM and latency_reduction >= LATENCY_REDUCTION_CLAIM
        else "not held"
    )


def wallclock_steps(max_steps: int, msd_seconds: float, kd_seconds: float) -> int:
    """KD's step budget at MSD's wall-clock time: ``round(max_steps * msd_seconds / kd_seconds)`` (>= 1)."""
    return max(1, round(max_steps * msd_seconds / kd_seconds))


def fmt(value: float | None, digits: int = 4) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def fmt_mean_std(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{fmt(mean)} ± {fmt(std)}"


# --- running the arms -----------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    """What every arm shares: the base flags, the data (split once), the run's folders and options."""

    options: argparse.Namespace
    base_flags: list[str]
    dataset: Any
    output_dir: Path


def _run(setup: Setup, flags: Sequence[str], output_dir: Path) -> Run:
    """A workflow ``Run`` for ``<config> <base flags> <flags>`` on the shared data."""
    argv = [setup.options.config, *setup.base_flags, *flags, "--output_dir", str(output_dir)]
    return Run(*parse_arguments(argv), setup.dataset)


def _cached(path: Path, settings: dict, compute) -> dict:
    """``compute()``'s result, stored in ``path`` with ``settings``; reused if the settings match."""
    if path.exists():
        record = json.loads(path.read_text())
        if record["settings"] == settings:
            return record["result"]
    result = compute()
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"settings": settings, "result": result}, indent=2, default=str))
    return result


def _teacher(setup: Setup, name: str, flags: Sequence[str]) -> dict:
    """Train (or load) one teacher and score it once on the test split."""
    run = _run(setup, flags, setup.output_dir / name)
    start = time.perf_counter()
    teacher, processor, settings = train_or_load_teacher(run)
    seconds = time.perf_counter() - start

    def score() -> dict:
        return {
            "evaluation": evaluate_models(run, {"teacher": teacher}, processor)["teacher"],
            "parameters": sum(p.numel() for p in teacher.parameters()),
            "stage_seconds": seconds,
        }

    record = {"teacher": settings, "base_flags": setup.base_flags}
    result = _cached(setup.output_dir / name / "teacher_evaluation.json", record, score)
    return {"name": name, "model": teacher, "processor": processor, "settings": settings, **result}


def _arm(
    setup: Setup, teacher: dict, flags: Sequence[str], directory: Path, seed: int, fraction: float
) -> dict:
    """Train one student arm (``distill_student``) and score it on the test split; resumable."""
    cache = str(setup.output_dir / teacher["name"] / "teacher_outputs")
    all_flags = [
        *flags,
        "--seed",
        str(seed),
        "--labeled_fraction",
        str(fraction),
        "--teacher_cache_dir",
        cache,
    ]
    run = _run(setup, all_flags, directory)
    settings = {"flags": all_flags, "base_flags": setup.base_flags, "teacher": teacher["settings"]}

    def train_and_score() -> dict:
        start = time.perf_counter()
        student = distill_student(run, teacher["model"], teacher["processor"], teacher["settings"])
        evaluation = evaluate_models(run, {"student": student}, teacher["processor"])["student"]
        training = json.loads((directory / "student" / TRAIN_RESULTS).read_text())
        return {
            "evaluation": evaluation,
            "train_runtime": training["train_runtime"],
            "steps": training["steps"],
            "parameters": sum(p.numel() for p in student.parameters()),
            "wall_seconds": time.perf_counter() - start,
        }

    print(f"== {directory.relative_to(setup.output_dir)}", flush=True)
    return _cached(directory / "arm_result.json", settings, train_and_score)


def _student_size_ratio(setup: Setup, teacher: dict) -> float:
    """Teacher parameters / multimodal student parameters, from an untrained student of the config (checked
    before any student trains)."""
    run = _run(setup, [], setup.output_dir / teacher["name"])
    student = new_student(run.model_args, teacher["model"])
    return teacher["parameters"] / sum(p.numel() for p in student.parameters())


def _unsupported(error: Exception) -> dict:
    return {"unsupported": f"{type(error).__name__}: {error}"}


def run_main_arms(setup: Setup, teacher: dict) -> dict:
    """fraction -> arm -> seed -> result, including the KD arm at MSD population's wall-clock time."""
    opts, results = setup.options, {}
    for fraction in opts.fractions:
        arms: dict[str, dict] = {name: {} for name in [*MAIN_ARMS, WALLCLOCK_ARM]}
        for seed in opts.seeds:
            where = setup.output_dir / teacher["name"] / f"fraction_{fraction}" / f"seed_{seed}"
            for name, flags in MAIN_ARMS.items():
                arms[name][seed] = _arm(setup, teacher, flags, where / _slug(name), seed, fraction)
            msd, kd = arms[WALLCLOCK_REFERENCE][seed], arms["KD"][seed]
            steps = wallclock_steps(opts.max_steps, msd["train_runtime"], kd["train_runtime"])
            flags = ["--method", "kd", "--max_steps", str(steps)]
            result = _arm(setup, teacher, flags, where / _slug(WALLCLOCK_ARM), seed, fraction)
            result["wallclock"] = {"msd_seconds": msd["train_runtime"], "kd_seconds": kd["train_runtime"]}
            arms[WALLCLOCK_ARM][seed] = result
        results[str(fraction)] = arms
    return results


def run_dropout_arms(setup: Setup, teacher: dict) -> dict:
    """arm -> seed -> result for the modality-dropout teacher at the first fraction."""
    fraction = setup.options.fractions[0]
    arms: dict[str, dict] = {name: {} for name in DROPOUT_ARMS}
    for seed in setup.options.seeds:
        where = setup.output_dir / teacher["name"] / f"fraction_{fraction}" / f"seed_{seed}"
        for name in DROPOUT_ARMS:
            arms[name][seed] = _arm(setup, teacher, MAIN_ARMS[name], where / _slug(name), seed, fraction)
    return arms


def run_unimodal_arms(setup: Setup, teacher: dict) -> dict:
    """modality -> arm -> seed -> result (or {"unsupported": reason}) at the first fraction."""
    fraction, results = setup.options.fractions[0], {}
    for modality in ("text", "image"):
        arms: dict[str, dict] = {name: {} for name in UNIMODAL_ARMS}
        for seed in setup.options.seeds:
            where = setup.output_dir / teacher["name"] / f"fraction_{fraction}" / f"seed_{seed}" / modality
            for name, flags in UNIMODAL_ARMS.items():
                flags = [*flags, "--student_modalities", modality]
                try:
                    arms[name][seed] = _arm(setup, teacher, flags, where / _slug(name), seed, fraction)
                except (ValueError, NotImplementedError) as error:
                    if name not in UNIMODAL_INTERMEDIATE:
                        raise
                    arms[name][seed] = _unsupported(error)  # hidden / attention KD the library refuses
        results[modality] = arms
    return results


def _slug(name: str) -> str:
    return name.lower().replace(" + ", "_").replace(" ", "_").replace("-", "")


def measure_latency(setup: Setup, teacher: dict, students: Mapping[str, Path]) -> dict:
    """Teacher and students side by side at batch 1 and at the config's eval batch size (interleaved)."""
    from transformers import AutoModelForSequenceClassification

    models = {"teacher": teacher["model"]}
    models |= {
        name: AutoModelForSequenceClassification.from_pretrained(str(p)) for name, p in students.items()
    }
    run = _run(setup, [], setup.output_dir / teacher["name"])
    results = {}
    for batch_size, batches in (
        (1, setup.options.latency_single_batches),
        (None, setup.options.latency_batches),
    ):
        args = copy.copy(run.training_args)
        args.per_device_eval_batch_size = batch_size or args.per_device_eval_batch_size
        exp = dataclasses.replace(
            run.exp_args, speed_rounds=setup.options.latency_rounds, speed_batches=batches
        )
        sized = dataclasses.replace(run, training_args=args, exp_args=exp)
        speed = measure_speed(sized, models, teacher["processor"])
        results[str(speed["batch_size"])] = speed
    parameters = {name: sum(p.numel() for p in model.parameters()) for name, model in models.items()}
    return {"parameters": parameters, "by_batch_size": results}


# --- claims ---------------------------------------------------------------------------------------


def _accuracies(arm: Mapping[Any, dict], condition: str = "both", key: str = "accuracy") -> list[float]:
    """Per-seed accuracies of one arm (seeds in order), NaN for a missing value."""
    return [arm[s]["evaluation"].get(condition, {}).get(key, float("nan")) for s in sorted(arm, key=int)]


def _claim(name: str, candidate: Mapping, baseline: Mapping) -> dict:
    a, b = _accuracies(candidate), _accuracies(baseline)
    return {
        "claim": name,
        "verdict": paired_verdict(a, b),
        "candidate": a,
        "baseline": b,
        "differences": [x - y for x, y in zip(a, b)],
    }


def build_claims(report: dict) -> list[dict]:
    """Claims 1-4 (rules in :func:`paired_verdict` and :func:`size_speed_verdict`) from the raw results."""
    claims = []
    for fraction, arms in report["main"].items():
        for name in MSD_ARMS:
            claims.append(_claim(f"(1) {name} beats KD at {fraction} labels", arms[name], arms["KD"]))
        claims.append(
            _claim(
                f"(1b) MSD population beats {WALLCLOCK_ARM} at {fraction} labels",
                arms["MSD population"],
                arms[WALLCLOCK_ARM],
            )
        )
    first = str(report["settings"]["fractions"][0])
    for name in DROPOUT_ARMS:
        claims.append(
            _claim(
                f"(2) the modality-dropout teacher helps {name} at {first} labels",
                report["dropout"][name],
                report["main"][first][name],
            )
        )
    for modality, arms in report["unimodal"].items():
        for name in UNIMODAL_DISTILLED:
            if any("unsupported" in r for r in arms[name].values()):
                claims.append(
                    {"claim": f"(3) {modality}-only student: {name} beats alone", "verdict": "unsupported"}
                )
                continue
            claims.append(
                _claim(f"(3) {modality}-only student: {name} beats alone", arms[name], arms["alone"])
            )
    latency = report["latency"]
    params = latency["parameters"]
    for student in (s for s in params if s != "teacher"):
        for size, speed in latency["by_batch_size"].items():
            models = speed["models"]
            reduction = 1 - models[student]["seconds_per_batch"] / models["teacher"]["seconds_per_batch"]
            ratio = params["teacher"] / params[student]
            claims.append(
                {
                    "claim": f"(4) {student}: >= 2.5x fewer parameters and >= 22% less time at batch {size}",
                    "verdict": size_speed_verdict(ratio, reduction),
                    "size_ratio": ratio,
                    "latency_reduction": reduction,
                }
            )
    return claims


# --- report ---------------------------------------------------------------------------------------


def _type_keys(report: dict) -> list[str]:
    both = report["teachers"]["plain"]["evaluation"]["both"]
    return [k for k in both if k.startswith("accuracy_")]


def _arm_rows(arms: Mapping[str, Mapping], type_keys: list[str]) -> list[str]:
    rows = []
    for name, arm in arms.items():
        if any("unsupported" in r for r in arm.values()):
            reason = next(r["unsupported"] for r in arm.values() if "unsupported" in r)
            rows.append(f"| {name} | not supported by the library: {reason} |")
            continue
        both = _accuracies(arm)
        cells = [fmt_mean_std(both), ", ".join(fmt(v) for v in both)]
        cells += [fmt_mean_std(_accuracies(arm, c)) for c in ("text", "image")]
        cells += [fmt(mean_std(_accuracies(arm, "both", k))[0]) for k in type_keys]
        steps = ", ".join(str(arm[s]["steps"]) for s in sorted(arm, key=int))
        seconds = fmt(mean_std([arm[s]["train_runtime"] for s in arm])[0], 1)
        rows.append(f"| {name} | " + " | ".join(cells) + f" | {steps} | {seconds} |")
    return rows


def _table_header(type_keys: list[str]) -> list[str]:
    types = [k.removeprefix("accuracy_") for k in type_keys]
    header = ["arm", "acc (both) mean ± std", "per seed", "acc (text only)", "acc (image only)"]
    header += [f"{t} (mean)" for t in types] + ["steps", "train s (mean)"]
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]


def _teacher_lines(report: dict) -> list[str]:
    lines = [
        "| teacher | parameters | acc (both) | acc (text only) | acc (image only) | per question type |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for name, teacher in report["teachers"].items():
        ev = teacher["evaluation"]
        types = ", ".join(
            f"{k.removeprefix('accuracy_')} {fmt(v)}"
            for k, v in ev["both"].items()
            if k.startswith("accuracy_")
        )
        cells = [fmt(ev.get(c, {}).get("accuracy")) for c in ("both", "text", "image")]
        lines.append(f"| {name} | {teacher['parameters']:,} | " + " | ".join(cells) + f" | {types} |")
    return lines


def _latency_lines(latency: dict) -> list[str]:
    lines = [
        "| model | parameters | teacher / model params | batch | ms per batch | time vs teacher |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    params = latency["parameters"]
    for size, speed in latency["by_batch_size"].items():
        for name, values in speed["models"].items():
            ratio = values["seconds_per_batch"] / speed["models"]["teacher"]["seconds_per_batch"]
            lines.append(
                f"| {name} | {params[name]:,} | {params['teacher'] / params[name]:.2f} | {size} | "
                f"{values['seconds_per_batch'] * 1000:.2f} | {ratio:.3f} |"
            )
    return lines


def _claim_lines(claims: list[dict]) -> list[str]:
    lines = ["| claim | verdict | spread |", "|---|---|---|"]
    for claim in claims:
        if "differences" in claim:
            spread = (
                f"{fmt_mean_std(claim['candidate'])} vs {fmt_mean_std(claim['baseline'])}; per-seed "
                "differences " + ", ".join(f"{d:+.4f}" for d in claim["differences"])
            )
        elif "size_ratio" in claim:
            spread = (
                f"{claim['size_ratio']:.2f}x fewer parameters, {claim['latency_reduction']:.1%} less time"
            )
        else:
            spread = "not measured (unsupported combination)"
        lines.append(f"| {claim['claim']} | **{claim['verdict']}** | {spread} |")
    return lines


RULES = """Claim rules (fixed before the run): (1)-(3) compare two arms paired by seed on test accuracy
with both modalities (text only for a text student, image only for an image student: their "both" is their own
input): **held** if the candidate is higher on every seed, **mixed** if only its mean over seeds is higher,
**not held** otherwise. (4) the seeds' claim "2.5x fewer parameters and 22% less inference time": **held**
at a batch size if teacher params / student params >= 2.5 and 1 - student time / teacher time >= 0.22.
Means ± sample standard deviation (n - 1) over seeds; 'n/a' with one seed."""


def render_markdown(report: dict) -> str:
    """The results file: settings, teacher, tables per fraction / teacher / modality, latency, claims."""
    s, m, type_keys = report["settings"], report["machine"], _type_keys(report)
    lines = [
        "# Reproducing the papers' claims on easy-VQA",
        "",
        f"Command: `{s['command']}`. Machine: {m['cpus']} CPU cores, torch {m['torch']}, transformers "
        f"{m['transformers']}, {m['torch_threads']} torch thread(s), load average "
        f"{m['load_average_start']} at the start. Whole run: {report['wall_seconds'] / 60:.1f} min.",
        f"Seeds {s['seeds']}, labelled fractions {s['fractions']}, {s['max_steps']} optimizer steps for "
        f"every arm except '{WALLCLOCK_ARM}'; training pool {s['train_examples']} questions, test "
        f"{s['test_examples']} questions; config `{s['config']}`; modality-dropout p = "
        f"{s['modality_dropout']}.",
        "",
        "Notes: the test split is scored only once per model, never used to choose anything. 'MSD learned' "
        "meta-learns its modality weights on the labelled validation split, which no other student arm "
        "uses. Unimodal students' 'acc (both)' is their accuracy on their own modality.",
        "",
        "## Teachers (test split)",
        "",
        *_teacher_lines(report),
    ]
    for fraction, arms in report["main"].items():
        lines += ["", f"## Multimodal students, labels on {fraction} of the train split (plain teacher)", ""]
        lines += _table_header(type_keys) + _arm_rows(arms, type_keys)
    first = s["fractions"][0]
    lines += ["", f"## Modality-dropout teacher, labels on {first}", ""]
    lines += _table_header(type_keys) + _arm_rows(report["dropout"], type_keys)
    for modality, arms in report["unimodal"].items():
        lines += ["", f"## {modality}-only students, labels on {first} (plain teacher)", ""]
        lines += _table_header(type_keys) + _arm_rows(arms, type_keys)
    lines += ["", "## Parameters and inference latency (interleaved rounds, median)", ""]
    lines += _latency_lines(report["latency"])
    lines += ["", "## Claims", "", RULES, "", *_claim_lines(report["claims"]), ""]
    return "\n".join(lines)


def plot(report: dict, path: Path) -> None:
    """Test accuracy (both modalities) per arm: one dot per seed and the mean, one panel per group."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups = {f"labels {f}": arms for f, arms in report["main"].items()}
    groups["dropout teacher"] = report["dropout"]
    for modality, arms in report["unimodal"].items():
        groups[f"{modality} only"] = {
            n: a for n, a in arms.items() if not any("unsupported" in r for r in a.values())
        }
    fig, axes = plt.subplots(1, len(groups), figsize=(4 * len(groups), 4.5), squeeze=False)
    for axis, (title, arms) in zip(axes[0], groups.items()):
        for x, arm in enumerate(arms.values()):
            values = _accuracies(arm)
            axis.scatter([x] * len(values), values, s=14, alpha=0.7)
            axis.plot([x - 0.3, x + 0.3], [statistics.fmean(values)] * 2, color="black")
        axis.set_xticks(range(len(arms)), list(arms), rotation=60, ha="right", fontsize=7)
        axis.set_title(title)
        axis.set_ylabel("test accuracy")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


# --- entry point ----------------------------------------------------------------------------------


def parse_options(argv: Sequence[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default="examples/configs/quick_easy_vqa.yaml", help="run_msd.py config.")
    parser.add_argument("--quick", action="store_true", help=f"Small slice, few steps, 1 seed: {QUICK}.")
    parser.add_argument("--teacher", help="A trained plain teacher's folder to reuse (else trained here).")
    parser.add_argument("--fractions", type=float, nargs="+", default=[0.02, 0.1])
    parser.add_argument("--seeds", type=int, nargs="+", help="Default 0 1 2 (quick: 0).")
    parser.add_argument(
        "--max_steps", type=int, help=f"Steps per arm (default {FULL['max_steps']}, quick 20)."
    )
    parser.add_argument(
        "--max_train_samples", type=int, help="Training pool size (default: all; quick 1000)."
    )
    parser.add_argument(
        "--max_eval_samples", type=int, help="Validation questions (default 1000; quick 200)."
    )
    parser.add_argument("--max_test_samples", type=int, help="Test questions (default 3000; quick 500).")
    parser.add_argument("--modality_dropout", type=float, default=0.3, help="p of the second teacher.")
    parser.add_argument("--latency_rounds", type=int, default=5)
    parser.add_argument("--latency_single_batches", type=int, default=32, help="Batches of 1 per round.")
    parser.add_argument("--latency_batches", type=int, default=4, help="Batches of the eval size per round.")
    parser.add_argument(
        "--output_dir", help="Models and arm records (default outputs/reproduce_easy_vqa[_quick])."
    )
    parser.add_argument("--results_dir", default="benchmarks/results")
    parser.add_argument("--overwrite", action="store_true", help="Redo stages whose settings changed.")
    parser.add_argument(
        "--override",
        nargs=argparse.REMAINDER,
        default=[],
        help="Further run_msd.py flags for every model (e.g. tiny models for tests); last.",
    )
    options = parser.parse_args(argv)
    defaults = QUICK if options.quick else FULL
    for key, value in defaults.items():
        if getattr(options, key) is None:
            setattr(options, key, value)
    options.seeds = options.seeds or ([0] if options.quick else [0, 1, 2])
    suffix = "_quick" if options.quick else ""
    options.output_dir = Path(options.output_dir or f"outputs/{RESULTS_NAME}{suffix}")
    options.results_name = RESULTS_NAME + suffix
    if not 0 < options.modality_dropout < 1:
        parser.error(f"--modality_dropout must be in (0, 1), got {options.modality_dropout}.")
    return options


def _base_flags(options: argparse.Namespace) -> list[str]:
    flags = ["--max_steps", str(options.max_steps), "--speed_rounds", "0"]
    for key in ("max_train_samples", "max_eval_samples", "max_test_samples"):
        if getattr(options, key) is not None:
            flags += [f"--{key}", str(getattr(options, key))]
    if options.overwrite:
        flags += ["--overwrite_output_dir", "true"]
    return [*flags, *options.override]


def _machine() -> dict:
    return {
        "cpus": os.cpu_count(),
        "platform": platform.platform(),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "transformers": transformers.__version__,
        "torch_threads": torch.get_num_threads(),
        "OMP_NUM_THREADS": os.environ.get("OMP_NUM_THREADS"),
        "load_average_start": [round(x, 2) for x in os.getloadavg()],
    }


def main(argv: Sequence[str] | None = None) -> dict:
    options = parse_options(argv)
    start, machine = time.perf_counter(), _machine()
    base = _base_flags(options)
    _, data_args, _, training_args = parse_arguments([options.config, *base])
    dataset = load_data(data_args, seed=training_args.seed)  # the split is fixed by the config's seed
    setup = Setup(options, base, dataset, options.output_dir)
    plain = _teacher(setup, "plain", ["--teacher_name_or_path", options.teacher] if options.teacher else [])
    size_ratio = _student_size_ratio(setup, plain)
    if size_ratio < 3 and not options.quick:
        raise ValueError(
            f"{options.config}: its student_config gives a student with only {size_ratio:.2f}x fewer "
            "parameters than the teacher; the comparison needs >= 3x: make the student smaller."
        )
    dropout = _teacher(setup, "dropout", ["--teacher_modality_dropout", str(options.modality_dropout)])
    main_arms = run_main_arms(setup, plain)
    report = {
        "settings": {
            "command": "python benchmarks/reproduce_easy_vqa.py "
            + " ".join(argv if argv is not None else []),
            "config": options.config,
            "seeds": options.seeds,
            "fractions": options.fractions,
            "max_steps": options.max_steps,
            "modality_dropout": options.modality_dropout,
            "base_flags": base,
            "split_seed": training_args.seed,
            "train_examples": len(dataset["train"]),
            "test_examples": len(dataset["test"]),
            "unimodal_arms": UNIMODAL_ARMS,
        },
        "machine": machine,
        "teachers": {},
        "main": main_arms,
        "dropout": run_dropout_arms(setup, dropout),
        "unimodal": run_unimodal_arms(setup, plain),
    }
    first = setup.output_dir / "plain" / f"fraction_{options.fractions[0]}" / f"seed_{options.seeds[0]}"
    students = {"MSD population student": first / _slug("MSD population") / "student"}
    students |= {
        f"{m}-only KD student": first / m / _slug("KD logits") / "student" for m in ("text", "image")
    }
    report["latency"] = measure_latency(setup, plain, students)
    for teacher in (plain, dropout):
        report["teachers"][teacher["name"]] = {
            k: teacher[k] for k in ("evaluation", "parameters", "stage_seconds")
        }
    report["settings"]["student_size_ratio"] = size_ratio
    report["claims"] = build_claims(report)
    machine["load_average_end"] = [round(x, 2) for x in os.getloadavg()]
    report["wall_seconds"] = time.perf_counter() - start
    write_results(report, Path(options.results_dir), options.results_name)
    return report


def write_results(report: dict, results_dir: Path, name: str) -> None:
    results_dir.mkdir(parents=True, exist_ok=True)
    (results_dir / f"{name}.json").write_text(json.dumps(report, indent=2, default=str))
    (results_dir / f"{name}.md").write_text(render_markdown(report))
    plot(report, results_dir / f"{name}.png")
    print(render_markdown(report))


if __name__ == "__main__":
    import sys

    main(sys.argv[1:])
