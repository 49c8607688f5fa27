"""Reproduce the papers' claims on easy-VQA at the main command's budget: labels only vs KD vs MSD, with the
controls that say where MSD's gain comes from.

    python benchmarks/reproduce_easy_vqa.py            # every arm, 3 seeds, 2 worker processes (1 thread
    each)
    python benchmarks/reproduce_easy_vqa.py --quick    # the same code path on a small slice, 1 seed

Every model comes from ``--config`` (default ``examples/configs/quick_easy_vqa.yaml``, the main command's
config, read at run time): the teacher recipe (``teacher_*``, ``teacher_config``) and the student recipe
(``student_config``, loss weights, learning rate, schedule, batch size and ``num_train_epochs``). The script
only
adds, per arm, the method and the flags below and calls the workflow's stage functions
(:mod:`hf_msd.experiment.workflow`), so each arm is exactly what ``examples/run_msd.py <config> <flags>``
would
train. By default every arm trains to the config's own end (its epochs; ``--max_steps`` caps every arm
instead).

1. Two teachers on every train label: the config's teacher (or ``--teacher PATH``, e.g. the main command's
   ``outputs/quick_easy_vqa/teacher``) and the same recipe with ``--teacher_modality_dropout p``
   (:mod:`hf_msd.modalities.dropout`); each scored once on the test split. Their outputs are cached once
   (``<output_dir>/<teacher>/teacher_outputs``) and read by every arm; the train / validation split is fixed
   by
   the config's seed.
2. Multimodal students for each seed (the seed sets the labelled draw, the student's initial weights and the
   data order). At the first labelled fraction (:data:`FIRST_FRACTION_ARMS`): labels only, KD, MSD uniform /
   population / instance / learned, KD at MSD population's wall-clock, and two controls:

   - "KD on modality-only inputs": MSD population's passes and weights, but the target of ``S(x_m)`` is the
     teacher's prediction on the *full* input (``--modality_target full``);
   - "MSD image term only" / "MSD text term only": MSD population with one modality term
     (``--modality_terms``).

   "Labels only" trains on the labelled rows for the same optimizer steps as KD (the KD arms' step count on
   the whole train split), not for the config's epochs over the few labelled rows. "KD at MSD wall-clock" runs
   ``round(steps * t_MSD_population / t_KD)`` steps, both training times measured in this run for the same
   seed and fraction. At the other fractions: :data:`OTHER_FRACTION_ARMS`.
3. From the modality-dropout teacher: :data:`DROPOUT_ARMS` at the first fraction, every seed.
4. With ``--unimodal``: unimodal students (text only, image only) at the first fraction: alone, KD on logits,
   KD on logits + hidden states, KD on logits + attention maps.
5. Teacher vs the MSD population student (and the unimodal KD students): parameters and inference latency at
   batch sizes 1 and 256, interleaved rounds (:func:`hf_msd.evaluation.speed.compare_inference_speed`).

Arms run in ``--workers`` processes (default 2, one torch thread each; they claim arms in the order of
:func:`arm_specs`, most informative first). Each arm's result is written to
``<output_dir>/.../arm_result.json``
with its settings and skipped on a rerun with the same settings, so an interrupted run resumes; ``--arms``
keeps
only the named arms (the report lists the others as not run). Results:
``<results_dir>/reproduce_easy_vqa{,_quick}.json``, ``.md`` (tables, claims with their rules) and ``.png``.
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
import subprocess
import sys
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import torch
import transformers

from hf_msd.experiment import parse_arguments
from hf_msd.experiment.run import make_collator
from hf_msd.experiment.student_stage import with_teacher_outputs
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
LABELS_ONLY, WALLCLOCK_ARM, WALLCLOCK_REFERENCE = "labels only", "KD at MSD wall-clock", "MSD population"
CONTROL_ARM = "KD on modality-only inputs"
POPULATION = ["--method", "msd", "--modality_weighting", "population"]
#: Arm -> flags, at the first labelled fraction (plain teacher), in the order they are claimed.
FIRST_FRACTION_ARMS = {
    "KD": ["--method", "kd"],
    "MSD population": POPULATION,
    LABELS_ONLY: ["--method", "none"],
    CONTROL_ARM: [*POPULATION, "--modality_target", "full"],
    "MSD image term only": [*POPULATION, "--modality_terms", "image"],
    "MSD text term only": [*POPULATION, "--modality_terms", "text"],
    WALLCLOCK_ARM: ["--method", "kd"],  # + --max_steps from the KD and MSD population arms of the seed
    "MSD uniform": ["--method", "msd", "--modality_weighting", "uniform"],
    "MSD instance": ["--method", "msd", "--modality_weighting", "instance"],
    "MSD learned": ["--method", "msd", "--modality_weighting", "learned"],
}
#: The first fraction's arms in the order they are claimed: the main comparison, the controls, then (after the
#: other fractions and the dropout teacher) the wall-clock arm and the other weightings.
FIRST_TIERS = (
    ("KD", "MSD population", LABELS_ONLY),
    (CONTROL_ARM, "MSD image term only", "MSD text term only"),
    (WALLCLOCK_ARM, "MSD uniform", "MSD instance", "MSD learned"),
)
OTHER_FRACTION_ARMS = (LABELS_ONLY, "KD", "MSD population")
#: The tier of the other fractions' and the dropout teacher's arms (``--secondary_seeds``).
SECONDARY_TIER = 2
DROPOUT_ARMS = ("KD", "MSD population")
MSD_ARMS = [name for name in FIRST_FRACTION_ARMS if name.startswith("MSD")]
#: Hidden-state / attention KD weights of the unimodal students, fixed up front (not tuned).
UNIMODAL_ARMS = {
    "alone": ["--method", "none"],
    "KD logits": ["--method", "kd"],
    "KD logits + hidden": ["--method", "kd", "--hidden_loss_weight", "1.0", "--hidden_state_pooling", "mean"],
    "KD logits + attention": ["--method", "kd", "--attention_loss_weight", "1.0"],
}
ARM_NAMES = [*FIRST_FRACTION_ARMS, *UNIMODAL_ARMS]
UNIMODAL_DISTILLED = [name for name in UNIMODAL_ARMS if name != "alone"]
UNIMODAL_INTERMEDIATE = ("KD logits + hidden", "KD logits + attention")
SIZE_RATIO_CLAIM, LATENCY_REDUCTION_CLAIM = 2.5, 0.22
QUICK = {"max_train_samples": 1000, "max_eval_samples": 200, "max_test_samples": 500, "max_steps": 20}
FULL = {"max_train_samples": None, "max_eval_samples": None, "max_test_samples": None, "max_steps": -1}


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


def fmt(value: float | None, digits: int = 4) -> str:
    return (
        "n/a" if value is None or (isinstance(value, float) and math.isnan(value)) else f"{value:.{digits}f}"
    )


def fmt_mean_std(values: Sequence[float]) -> str:
    mean, std = mean_std(values)
    return f"{fmt(mean)} ± {fmt(std)}"


# --- the arms -------------------------------------------------------------------------------------


@dataclasses.dataclass
class Setup:
    """What every arm shares: the base flags, the data (split once), the run's folders and options."""

    options: argparse.Namespace
    base_flags: list[str]
    dataset: Any
    output_dir: Path


@dataclasses.dataclass(frozen=True)
class ArmSpec:
    """One student arm: which group of the report it fills, its teacher, fraction, seed and flags, and the
    arms whose results its flags need (``depends``)."""

    group: tuple[str, ...]  # ("main", fraction) / ("dropout",) / ("unimodal", modality)
    name: str
    teacher: str
    fraction: float
    seed: int
    flags: tuple[str, ...]
    depends: tuple[ArmSpec, ...] = ()

    @property
    def key(self) -> str:
        """The arm's folder relative to the output dir, unique per arm."""
        parts = [self.teacher, f"fraction_{self.fraction}", f"seed_{self.seed}"]
        if self.group[0] == "unimodal":
            parts.append(self.group[1])
        return "/".join([*parts, _slug(self.name)])


def _slug(name: str) -> str:
    return name.lower().replace(" + ", "_").replace(" ", "_").replace("-", "")


def arm_specs(options: argparse.Namespace) -> list[ArmSpec]:
    """Every arm of the run, in the order the workers claim them: for each tier, every seed (so the arms that
    finish first are the ones the claims need most, and a cut run still has whole arms)."""
    first, others = options.fractions[0], options.fractions[1:]
    selected = set(options.arms or ARM_NAMES)
    main, plain = ("main", str(first)), "plain"
    tiers = [
        [(main, n, plain, first, FIRST_FRACTION_ARMS[n]) for n in tier if n in selected]
        for tier in FIRST_TIERS
    ]
    tiers.insert(
        SECONDARY_TIER,
        [(("main", str(f)), n, plain, f, FIRST_FRACTION_ARMS[n]) for f in others for n in OTHER_FRACTION_ARMS]
        + [(("dropout",), n, "dropout", first, FIRST_FRACTION_ARMS[n]) for n in DROPOUT_ARMS],
    )
    tiers[SECONDARY_TIER] = [arm for arm in tiers[SECONDARY_TIER] if arm[1] in selected]
    if options.unimodal:
        tiers.append(
            [
                (("unimodal", m), n, "plain", first, [*f, "--student_modalities", m])
                for m in ("text", "image")
                for n, f in UNIMODAL_ARMS.items()
                if n in selected
            ]
        )
    specs = []
    for index, tier in enumerate(tiers):
        for seed in options.secondary_seeds if index == SECONDARY_TIER else options.seeds:
            for group, name, teacher, fraction, flags in tier:
                spec = ArmSpec(group, name, teacher, fraction, seed, tuple(flags))
                if name == WALLCLOCK_ARM:
                    depends = tuple(
                        dataclasses.replace(spec, name=n, flags=tuple(FIRST_FRACTION_ARMS[n]))
                        for n in ("KD", WALLCLOCK_REFERENCE)
                    )
                    spec = dataclasses.replace(spec, depends=depends)
                specs.append(spec)
    return specs


def student_steps(setup: Setup) -> int:
    """The optimizer steps of a KD / MSD student of the config on the whole train split:
    ``ceil(epochs x (ceil(train examples / batch size) // gradient accumulation))``, as ``Trainer`` counts
    them on one process (or ``--max_steps``)."""
    if setup.options.max_steps is not None:
        return setup.options.max_steps
    _, _, _, args = parse_arguments([setup.options.config, *setup.base_flags])
    per_epoch = math.ceil(len(setup.dataset["train"]) / args.per_device_train_batch_size)
    return math.ceil(args.num_train_epochs * max(1, per_epoch // args.gradient_accumulation_steps))


def wallclock_steps(steps: int, msd_seconds: float, kd_seconds: float) -> int:
    """KD's step budget at MSD's wall-clock time: ``round(steps * msd_seconds / kd_seconds)`` (>= 1)."""
    return max(1, round(steps * msd_seconds / kd_seconds))


def _run(setup: Setup, flags: Sequence[str], output_dir: Path) -> Run:
    """A workflow ``Run`` for ``<config> <base flags> <flags>`` on the shared data."""
    argv = [setup.options.config, *setup.base_flags, *flags, "--output_dir", str(output_dir)]
    return Run(*parse_arguments(argv), setup.dataset)


def _record(path: Path, settings: dict) -> dict | None:
    """The result stored in ``path`` if it was made with ``settings``."""
    if path.exists():
        record = json.loads(path.read_text())
        if record["settings"] == settings:
            return record["result"]
    return None


def _cached(path: Path, settings: dict, compute: Callable[[], dict]) -> dict:
    """``compute()``'s result, stored in ``path`` with ``settings``; reused if the settings match."""
    result = _record(path, settings)
    if result is None:
        result = compute()
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps({"settings": settings, "result": result}, indent=2, default=str))
    return result


def _teacher(setup: Setup, name: str, flags: Sequence[str]) -> dict:
    """Train (or load) one teacher, score it once on the test split and cache its outputs on the train and
    validation splits (before any worker starts, so no two processes write the same cache)."""
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
    cache = str(setup.output_dir / name / "teacher_outputs")
    kd = _run(setup, ["--method", "kd", "--teacher_cache_dir", cache], setup.output_dir / name)
    collator = make_collator(kd, teacher, processor)
    for split in ("train", "validation"):
        with_teacher_outputs(kd, teacher, collator, setup.dataset[split])
    return {"name": name, "model": teacher, "processor": processor, "settings": settings, **result}


def _arm_flags(setup: Setup, teachers: Mapping[str, dict], spec: ArmSpec) -> list[str] | None:
    """The arm's flags with its step budget; None while an arm it depends on has no current result."""
    steps = student_steps(setup)
    flags = [*spec.flags, "--seed", str(spec.seed), "--labeled_fraction", str(spec.fraction)]
    flags += ["--teacher_cache_dir", str(setup.output_dir / spec.teacher / "teacher_outputs")]
    if spec.name == WALLCLOCK_ARM:
        kd, msd = (_result(setup, teachers, dependency) for dependency in spec.depends)
        if kd is None or msd is None:
            return None
        flags += ["--max_steps", str(wallclock_steps(steps, msd["train_runtime"], kd["train_runtime"]))]
    elif "none" in spec.flags or setup.options.max_steps is not None:
        flags += ["--max_steps", str(steps)]  # labels only: the KD arms' steps, not epochs over few rows
    return flags


def _result(setup: Setup, teachers: Mapping[str, dict], spec: ArmSpec) -> dict | None:
    """The arm's stored result if it was made with the settings the arm has now, else None (a record of other
    settings is stale: it is neither reported nor fed to the arms that depend on it)."""
    flags = _arm_flags(setup, teachers, spec)
    if flags is None:
        return None
    path = setup.output_dir / spec.key / "arm_result.json"
    return _record(path, _arm_settings(setup, teachers[spec.teacher], flags))


def _arm_settings(setup: Setup, teacher: dict, flags: list[str]) -> dict:
    return {"flags": flags, "base_flags": setup.base_flags, "teacher": teacher["settings"]}


def run_arm(setup: Setup, teachers: Mapping[str, dict], spec: ArmSpec) -> dict:
    """Train one student arm (``distill_student``) and score it on the test split; resumable."""
    teacher, directory = teachers[spec.teacher], setup.output_dir / spec.key
    flags = _arm_flags(setup, teachers, spec)
    if flags is None:
        raise RuntimeError(f"{spec.key} needs the results of {[d.key for d in spec.depends]} first.")
    run = _run(setup, flags, directory)

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
            "torch_threads": torch.get_num_threads(),
        }

    print(f"== {spec.key}", flush=True)
    try:
        result = _cached(directory / "arm_result.json", _arm_settings(setup, teacher, flags), train_and_score)
    except (ValueError, NotImplementedError) as error:
        if spec.group[0] != "unimodal" or spec.name not in UNIMODAL_INTERMEDIATE:
            raise
        return {
            "unsupported": f"{type(error).__name__}: {error}"
        }  # hidden / attention KD the library refuses
    if spec.name == WALLCLOCK_ARM:
        kd, msd = (_result(setup, teachers, dependency) for dependency in spec.depends)
        result["wallclock"] = {"msd_seconds": msd["train_runtime"], "kd_seconds": kd["train_runtime"]}
    return result


def work(
    setup: Setup, teachers: Mapping[str, dict], specs: Sequence[ArmSpec], poll_seconds: float = 10
) -> None:
    """A worker: claims (an exclusive ``.claim`` file per arm) and runs the first unclaimed arm whose
    dependencies are done, until every arm is done or claimed by another worker."""
    pending = list(specs)
    while pending:
        started = False
        for spec in list(pending):
            if any(_result(setup, teachers, dependency) is None for dependency in spec.depends):
                continue
            pending.remove(spec)
            if _result(setup, teachers, spec) is not None:
                continue
            claim = setup.output_dir / spec.key / ".claim"
            claim.parent.mkdir(parents=True, exist_ok=True)
            try:
                os.close(os.open(claim, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            except FileExistsError:
                continue  # another worker runs it
            run_arm(setup, teachers, spec)
            claim.unlink()  # the arm's record now says it is done
            started = True
            break
        if pending and not started:
            time.sleep(poll_seconds)  # waiting for another worker's arm this one depends on


def run_workers(options: argparse.Namespace, argv: Sequence[str], specs: Sequence[ArmSpec]) -> None:
    """Run the arms in ``options.workers`` processes of this script (one torch thread each) and wait."""
    for claim in options.output_dir.rglob(".claim"):
        claim.unlink()  # claims of an earlier, interrupted run
    env = dict(os.environ, OMP_NUM_THREADS="1", MKL_NUM_THREADS="1")
    command = [sys.executable, str(Path(__file__).resolve()), "--worker", *argv]  # before --override
    workers = [subprocess.Popen(command, env=env) for _ in range(options.workers)]
    failed = [w.args for w in workers if w.wait() != 0]
    if failed:
        raise RuntimeError(f"A worker process failed (see its output above): {failed[0]}")


def _student_size_ratio(setup: Setup, teacher: dict) -> float:
    """Teacher parameters / multimodal student parameters, from an untrained student of the config (checked
    before any student trains)."""
    run = _run(setup, [], setup.output_dir / teacher["name"])
    student = new_student(run.model_args, teacher["model"])
    return teacher["parameters"] / sum(p.numel() for p in student.parameters())


def collect(
    setup: Setup, teachers: Mapping[str, dict], specs: Sequence[ArmSpec], report_only: bool = False
) -> tuple[dict, list[str]]:
    """The report's arm results: {"main": {fraction: {arm: {seed: result}}}, "dropout": {...}, "unimodal":
    {modality: {...}}}, running any arm that has no stored result; with ``report_only`` such arms are left
    out instead and returned as the second element (their keys)."""
    groups: dict[str, Any] = {"main": {}, "dropout": {}, "unimodal": {}}
    missing = []
    for spec in specs:
        if report_only and _result(setup, teachers, spec) is None:
            missing.append(spec.key)
            continue
        kind, *rest = spec.group
        arms = groups[kind].setdefault(rest[0], {}) if rest else groups[kind]
        arms.setdefault(spec.name, {})[spec.seed] = run_arm(setup, teachers, spec)
    return groups, missing


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
    """The paired claim on the seeds both arms have (the secondary groups may have fewer)."""
    seeds = sorted(set(candidate) & set(baseline), key=int)
    a = _accuracies({s: candidate[s] for s in seeds})
    b = _accuracies({s: baseline[s] for s in seeds})
    return {
        "claim": name,
        "verdict": paired_verdict(a, b),
        "candidate": a,
        "baseline": b,
        "differences": [x - y for x, y in zip(a, b)],
    }


#: (claim, candidate arm, baseline arm) at every fraction: (1) MSD vs KD, (1b) at equal wall-clock, (1c) vs
#: labels only, (5) the controls. Made only for the arms that ran.
PAIRED_CLAIMS = [
    *((f"(1) {name} beats KD", name, "KD") for name in MSD_ARMS),
    (f"(1b) MSD population beats {WALLCLOCK_ARM}", "MSD population", WALLCLOCK_ARM),
    *((f"(1c) {name} beats {LABELS_ONLY}", name, LABELS_ONLY) for name in ("KD", "MSD population")),
    (f"(5a) MSD population beats {CONTROL_ARM}", "MSD population", CONTROL_ARM),
    (f"(5b) {CONTROL_ARM} beats KD", CONTROL_ARM, "KD"),
    ("(5c) MSD population beats MSD image term only", "MSD population", "MSD image term only"),
    ("(5d) MSD population beats MSD text term only", "MSD population", "MSD text term only"),
]


def build_claims(report: dict) -> list[dict]:
    """Claims 1-5 (rules in :func:`paired_verdict` and :func:`size_speed_verdict`) from the raw results, for
    the arms that ran."""
    claims = [
        _claim(f"{claim} at {fraction} labels", arms[candidate], arms[baseline])
        for fraction, arms in report["main"].items()
        for claim, candidate, baseline in PAIRED_CLAIMS
        if candidate in arms and baseline in arms
    ]
    first = str(report["settings"]["fractions"][0])
    for name in report["dropout"]:
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


RULES = """Claim rules (fixed before the run): (1)-(3) and (5) compare two arms paired by seed on test
accuracy
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
        f"{m['load_average_start']} at the start. "
        + (
            "This command trained nothing (--report_only): it reports the arms a run recorded."
            if s["report_only"]
            else f"Whole run: {report['wall_seconds'] / 60:.1f} min."
        ),
        f"Seeds {s['seeds']} (other fractions and the dropout teacher: {s['secondary_seeds']}), labelled "
        f"fractions {s['fractions']}; {s['steps']} optimizer steps for every "
        f"arm ({s['budget']}) except '{WALLCLOCK_ARM}'; training pool {s['train_examples']} questions, test "
        f"{s['test_examples']} questions; config `{s['config']}`; modality-dropout p = "
        f"{s['modality_dropout']}; {s['workers']} worker process(es) with {s['worker_threads']} torch "
        "thread(s) each, so training times are comparable within this run only.",
        "",
        "Notes: the test split is scored only once per model, never used to choose anything. "
        f"'{LABELS_ONLY}' trains on the labelled rows for the same optimizer steps as KD. "
        f"'{CONTROL_ARM}': MSD population's passes and weights with the teacher's full-input prediction as "
        "the target of every modality-only pass. 'MSD image / text term only': MSD population with one "
        "modality term. 'MSD learned' meta-learns its modality weights on the labelled validation split, "
        "which no other student arm uses. Unimodal students' 'acc (both)' is their accuracy on their own "
        "modality.",
        *([f"Not run: {', '.join(s['not_run'])} (not in --arms)."] if s["not_run"] else []),
        *([f"Not finished when the report was written: {', '.join(s['missing'])}."] if s["missing"] else []),
        "",
        "## Teachers (test split)",
        "",
        *_teacher_lines(report),
    ]
    for fraction, arms in report["main"].items():
        lines += ["", f"## Multimodal students, labels on {fraction} of the train split (plain teacher)", ""]
        lines += _table_header(type_keys) + _arm_rows(arms, type_keys)
    first = s["fractions"][0]
    if report["dropout"]:
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
    if report["dropout"]:
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
        "--secondary_seeds",
        type=int,
        nargs="+",
        help="Seeds of the other fractions and of the dropout teacher's arms (default: --seeds).",
    )
    parser.add_argument(
        "--arms", nargs="+", choices=ARM_NAMES, help="Run only these arms (by name; default all)."
    )
    parser.add_argument("--unimodal", action="store_true", help="Also train the unimodal students.")
    parser.add_argument(
        "--max_steps",
        type=int,
        help="Steps of every arm; -1 (the default; quick: 20) trains every arm for the config's epochs.",
    )
    parser.add_argument(
        "--max_train_samples", type=int, help="Training pool size (default: all; quick 1000)."
    )
    parser.add_argument("--max_eval_samples", type=int, help="Validation questions (default all; quick 200).")
    parser.add_argument("--max_test_samples", type=int, help="Test questions (default all; quick 500).")
    parser.add_argument("--modality_dropout", type=float, default=0.3, help="p of the second teacher.")
    parser.add_argument("--workers", type=int, help="Processes that train arms (default 2, quick 1).")
    parser.add_argument(
        "--report_only",
        action="store_true",
        help="Train nothing: report the arms recorded so far (e.g. of a run stopped at its time budget).",
    )
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)  # the worker processes
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
    options.secondary_seeds = options.secondary_seeds or options.seeds
    if options.workers is None:
        options.workers = 1 if options.quick else 2
    options.max_steps = None if options.max_steps < 0 else options.max_steps
    suffix = "_quick" if options.quick else ""
    options.output_dir = Path(options.output_dir or f"outputs/{RESULTS_NAME}{suffix}")
    options.results_name = RESULTS_NAME + suffix
    if not 0 < options.modality_dropout < 1:
        parser.error(f"--modality_dropout must be in (0, 1), got {options.modality_dropout}.")
    if options.workers < 1:
        parser.error(f"--workers must be >= 1, got {options.workers}.")
    return options


def _base_flags(options: argparse.Namespace) -> list[str]:
    flags = ["--speed_rounds", "0"]
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
    argv = list(sys.argv[1:] if argv is None else argv)
    options = parse_options(argv)
    start, machine = time.perf_counter(), _machine()
    base = _base_flags(options)
    _, data_args, _, training_args = parse_arguments([options.config, *base])
    dataset = load_data(data_args, seed=training_args.seed)  # the split is fixed by the config's seed
    setup = Setup(options, base, dataset, options.output_dir)
    specs = arm_specs(options)
    plain = _teacher(setup, "plain", ["--teacher_name_or_path", options.teacher] if options.teacher else [])
    teachers = {"plain": plain}
    if any(spec.teacher == "dropout" for spec in specs):
        flags = ["--teacher_modality_dropout", str(options.modality_dropout)]
        teachers["dropout"] = _teacher(setup, "dropout", flags)
    if options.worker:
        work(setup, teachers, specs)
        return {}
    size_ratio = _student_size_ratio(setup, plain)
    if size_ratio < 3 and not options.quick:
        raise ValueError(
            f"{options.config}: its student_config gives a student with only {size_ratio:.2f}x fewer "
            "parameters than the teacher; the comparison needs >= 3x: make the student smaller."
        )
    if options.workers > 1 and not options.report_only:
        run_workers(options, argv, specs)
    groups, missing = collect(setup, teachers, specs, options.report_only)
    report = {
        "settings": {
            "command": " ".join(["python benchmarks/reproduce_easy_vqa.py", *argv]),
            "config": options.config,
            "seeds": options.seeds,
            "secondary_seeds": options.secondary_seeds,
            "fractions": options.fractions,
            "steps": student_steps(setup),
            "budget": "--max_steps" if options.max_steps else "the config's epochs on the whole train split",
            "not_run": [n for n in ARM_NAMES if n not in {s.name for s in specs} and n not in UNIMODAL_ARMS],
            "missing": missing,
            "report_only": options.report_only,
            "modality_dropout": options.modality_dropout,
            "workers": options.workers,
            "worker_threads": 1 if options.workers > 1 else torch.get_num_threads(),
            "base_flags": base,
            "split_seed": training_args.seed,
            "train_examples": len(dataset["train"]),
            "test_examples": len(dataset["test"]),
            "unimodal_arms": UNIMODAL_ARMS if options.unimodal else None,
            "student_size_ratio": size_ratio,
        },
        "machine": machine,
        "teachers": {
            name: {k: teacher[k] for k in ("evaluation", "parameters", "stage_seconds")}
            for name, teacher in teachers.items()
        },
        **groups,
    }
    first = next(s for s in specs if s.name == "MSD population" and s.group[0] == "main")
    students = {"MSD population student": setup.output_dir / first.key / "student"}
    for spec in specs:
        if spec.group[0] == "unimodal" and spec.name == "KD logits" and spec.seed == options.seeds[0]:
            students[f"{spec.group[1]}-only KD student"] = setup.output_dir / spec.key / "student"
    report["latency"] = measure_latency(setup, plain, students)
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
    main()
