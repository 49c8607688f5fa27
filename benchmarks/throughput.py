"""Throughput and peak memory of fine-tuning, KD and MSD, with the teacher run online or read from the cache.

    python benchmarks/throughput.py                      # the quick config's models, a few minutes
    python benchmarks/throughput.py examples/configs/quick_easy_vqa.yaml --per_device_train_batch_size 32

The teacher, the student and the data are those of a ``run_msd.py`` config (default
``examples/configs/quick_easy_vqa.yaml``; any run_msd flag after it overrides the config, e.g. the model
sizes ``--teacher_config`` / ``--student_config``). Models are freshly initialised (speed does not
depend on training). One optimizer step on one batch of ``per_device_train_batch_size`` easy-VQA
examples, already collated, is timed for each variant:

- ``F``: plain fine-tuning of the student (``transformers.Trainer``, cross-entropy on the labels);
- ``KD online`` / ``KD cached``: :class:`~hf_msd.DistillationTrainer` running the teacher, or reading
  ``teacher_logits`` from :func:`~hf_msd.precompute_teacher_outputs`' columns;
- ``MSD <weighting> online`` / ``cached`` for ``uniform``, ``population`` and ``learned`` weights;
- the student's own passes in isolation (forward + backward of the cross-entropy on ``x``, ``x_text``,
  ``x_image``), the optimizer step alone, the teacher's no-grad forward on ``x``, ``x_text``,
  ``x_image``, and data loading (reading a batch's rows, which decodes their images, and collating them:
  what the Trainer's DataLoader adds to every variant's step, outside the timed steps above);
- with ``--compile 1`` (default), ``F``, ``KD cached`` and ``MSD <weighting> cached`` again with
  ``torch_compile=True`` (``<variant> compiled``: the student compiled by the trainer's accelerator, as
  ``Trainer.train`` compiles it, default inductor backend). Their untimed warm-up steps, which compile, are
  timed apart. The inductor cache starts cold (a fresh ``TORCHINDUCTOR_CACHE_DIR`` unless one is set).

Every variant first takes ``--warmup`` steps; then ``--rounds`` rounds each run ``--steps_per_round``
steps of every variant in turn (interleaved in alternating order by
:func:`hf_msd.evaluation.speed.time_interleaved`, so that load from other processes hits all variants
alike). Reported: the median over rounds (used for the ratios and targets) and the mean of the time per
step. ``learned`` runs a meta step every ``meta_update_interval`` steps: it is timed on its own,
interleaved like the rest, and its row is the training step plus 1 / ``meta_update_interval`` of the meta
step. Then inference: the teacher and the student, eager and (with ``--compile 1``) compiled, on the same
``--inference_examples`` questions at each of ``--inference_batch_sizes`` (default 1 and 256), interleaved
by :func:`hf_msd.evaluation.speed.compare_inference_speed`, whose compile warm-up is timed apart.
Separately, interleaved too: the caching pass (``precompute_teacher_outputs`` into a fresh folder:
fingerprint, input check, teacher passes, Arrow write) against plain batched teacher inference
(DataLoader + collator + the teacher on
``x`` and each ``x_m``) over the same ``--cache_examples`` examples. Peak memory: each training variant
again in its own process (``--memory``), reporting the process's max RSS (``resource.getrusage``) after
warm-up and a few steps, and the peak during training alone (the kernel's peak mark reset after loading
data and models); the cache those processes read is written beforehand by this process.

Writes ``benchmarks/results/throughput.json`` and ``throughput.md`` (``--output_name`` changes the name).
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from results_files import machine, write_results
from torch._inductor.runtime.cache_dir_utils import default_cache_dir
from torch.utils.data import DataLoader
from transformers import (
    AutoModelForSequenceClassification,
    AutoProcessor,
    Trainer,
    TrainingArguments,
)

from hf_msd import (
    DistillationTrainer,
    DistillationTrainingArguments,
    MSDTrainer,
    MSDTrainingArguments,
    MultimodalDataCollator,
    precompute_teacher_outputs,
)
from hf_msd.architectures import default_modalities
from hf_msd.evaluation.speed import COMPILED_SUFFIX, compare_inference_speed, time_interleaved
from hf_msd.experiment import parse_arguments
from hf_msd.experiment.workflow import load_data, new_student, new_teacher
from hf_msd.modalities.modality import model_inputs, restrict

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "examples" / "configs" / "quick_easy_vqa.yaml"
#: The statistic the ratios and targets use.
STAT = "median_s"
WEIGHTINGS = ("uniform", "population", "learned")
TRAINER_VARIANTS = [
    "F",
    "KD online",
    "KD cached",
    *(f"MSD {w} {mode}" for w in WEIGHTINGS for mode in ("online", "cached")),
]
#: Variants also timed with ``torch_compile=True`` ("<variant> compiled"): those that only run the student.
COMPILED_VARIANTS = ["F", "KD cached", *(f"MSD {w} cached" for w in WEIGHTINGS)]
COMPILED = " compiled"


def _parse() -> tuple[argparse.Namespace, list[str]]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="A run_msd.py config file.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per variant first.")
    parser.add_argument("--rounds", type=int, default=5, help="Interleaved rounds.")
    parser.add_argument("--steps_per_round", type=int, default=2, help="Timed steps per variant per round.")
    parser.add_argument("--num_examples", type=int, default=512, help="Training examples (cache, saliency).")
    parser.add_argument(
        "--cache_examples", type=int, default=512, help="Examples of the caching-pass timing."
    )
    parser.add_argument("--cache_rounds", type=int, default=3, help="Interleaved rounds of the caching pass.")
    parser.add_argument(
        "--compile", type=int, default=1, help="1: time the compiled variants and compiled inference too."
    )
    parser.add_argument(
        "--inference_batch_sizes", type=int, nargs="*", default=[1, 256], help="Batch sizes of inference."
    )
    parser.add_argument(
        "--inference_examples", type=int, default=512, help="Examples each model runs per inference round."
    )
    parser.add_argument("--inference_rounds", type=int, default=7, help="Interleaved rounds of inference.")
    parser.add_argument("--memory", type=int, default=1, help="1: measure peak memory (subprocesses).")
    parser.add_argument(
        "--memory_variants",
        default="F,KD cached,MSD uniform cached,MSD population cached,MSD learned cached,MSD uniform online",
        help="Comma-separated training variants whose peak memory is measured (one process each).",
    )
    parser.add_argument("--memory_steps", type=int, default=2, help="Steps per memory process after warm-up.")
    parser.add_argument(
        "--output_name", default="throughput", help="Results file stem in benchmarks/results/."
    )
    parser.add_argument("--memory_variant", help=argparse.SUPPRESS)  # internal: one variant, print max RSS
    parser.add_argument("--cache_dir", help=argparse.SUPPRESS)  # internal: the parent's cache folder
    return parser.parse_known_args()


# ---- setup: models, data, batches, trainers ------------------------------------------------------------


class Setup:
    """The config's teacher and student, the easy-VQA slice, its collator and the teacher-output cache.

    The models are built once by the parent process and saved to ``<cache_dir>/models``; every process
    (the parent and each memory subprocess) loads them from there, so the cache fingerprints match and a
    fine-tuning process never holds a teacher.
    """

    def __init__(
        self, config: str, overrides: list[str], num_examples: int, cache_dir: str, need_teacher: bool = True
    ) -> None:
        self.model_args, data_args, _, self.training_args = parse_arguments(
            [
                config,
                *overrides,
                "--output_dir",
                tempfile.mkdtemp(),
                "--report_to",
                "none",
                "--use_cpu",
                "true",
            ]
        )
        data_args.max_train_samples = num_examples
        data_args.max_eval_samples = self.training_args.per_device_train_batch_size * 2
        self.data = load_data(data_args, seed=self.training_args.seed)
        models = Path(cache_dir) / "models"
        if not (models / "student").is_dir():
            self._build_models(models)
        self.teacher = (
            AutoModelForSequenceClassification.from_pretrained(models / "teacher").eval()
            if need_teacher
            else None
        )
        self.student = AutoModelForSequenceClassification.from_pretrained(models / "student")
        self.processor = AutoProcessor.from_pretrained(models / "teacher")
        reference = self.teacher if need_teacher else self.student
        self.collator = MultimodalDataCollator.from_model(
            reference, self.processor, max_length=self.model_args.max_length
        )
        self.modalities = default_modalities(reference)
        self.cache_dir = cache_dir
        self._cached: dict[str, Any] = {}
        self.batch_size = self.training_args.per_device_train_batch_size

    def _build_models(self, folder: Path) -> None:
        """The config's new teacher and student, built as run_msd.py builds them, saved."""
        torch.manual_seed(self.training_args.seed)
        label_names = self.data["train"].features["label"].names
        texts = list(self.data["train"]["question"])
        teacher, processor = new_teacher(self.model_args, label_names, "single_label_classification", texts)
        student = new_student(self.model_args, teacher)
        teacher.save_pretrained(folder / "teacher")
        processor.save_pretrained(folder / "teacher")
        student.save_pretrained(folder / "student")

    def cached(self, split: str):
        if split not in self._cached:
            self._cached[split] = self._precompute(split)
        return self._cached[split]

    def _precompute(self, split: str):
        return precompute_teacher_outputs(
            self.teacher,
            self.data[split],
            self.modalities,
            self.collator,
            batch_size=self.training_args.per_device_eval_batch_size,
            cache_dir=self.cache_dir,
        )

    def batches(self, dataset, count: int = 2) -> list[dict[str, Any]]:
        count = max(1, min(count, len(dataset) // self.batch_size))
        return [
            self.collator([dataset[i] for i in range(k * self.batch_size, (k + 1) * self.batch_size)])
            for k in range(count)
        ]

    def args(self, cls, **overrides):
        values = {
            "output_dir": tempfile.mkdtemp(),
            "per_device_train_batch_size": self.batch_size,
            "learning_rate": self.training_args.learning_rate,
            "remove_unused_columns": False,
            "report_to": [],
            "save_strategy": "no",
            "use_cpu": True,
            "disable_tqdm": True,
            "seed": self.training_args.seed,
        }
        if cls is not TrainingArguments:
            values.update(
                temperature=self.training_args.temperature,
                hard_label_weight=self.training_args.hard_label_weight,
                kd_loss_weight=self.training_args.kd_loss_weight,
            )
        if cls is MSDTrainingArguments:
            for name in ("modality_loss_weight", "meta_update_interval", "meta_learning_rate"):
                values[name] = getattr(self.training_args, name)
        return cls(**values, **overrides)


def build_trainer(setup: Setup, variant: str):
    """The trainer of ``variant`` (eager variants share the student: its weights drift, its cost does not),
    the model its steps call (for ``<variant> compiled``: a copy of the student compiled by the trainer's
    accelerator, as ``Trainer.train`` does with ``torch_compile=True``) and the batches it trains on
    (collated from the cached dataset for ``cached`` variants)."""
    compiled = variant.endswith(COMPILED)
    variant = variant.removesuffix(COMPILED)
    cached = variant.endswith("cached")
    train = setup.cached("train") if cached else setup.data["train"]
    validation = setup.cached("validation") if cached else setup.data["validation"]
    # accelerate marks a model it prepared and never compiles it again: each compiled variant gets its own
    # copy of the student (dynamo still shares the compiled graphs between copies).
    student = copy.deepcopy(setup.student) if compiled else setup.student
    common = {"model": student, "train_dataset": train, "data_collator": setup.collator}
    options = {"torch_compile": True} if compiled else {}
    if variant == "F":
        trainer = Trainer(args=setup.args(TrainingArguments, **options), **common)
    elif variant.startswith("KD"):
        trainer = DistillationTrainer(
            teacher_model=setup.teacher, args=setup.args(DistillationTrainingArguments, **options), **common
        )
    else:
        weighting = variant.split()[1]
        trainer = MSDTrainer(
            teacher_model=setup.teacher,
            args=setup.args(MSDTrainingArguments, modality_weighting=weighting, **options),
            modalities=setup.modalities,
            eval_dataset=validation,
            **common,
        )
        if weighting == "learned":
            trainer._start_meta_batches()  # what train() does first: the held-out stream of the meta step
            # The meta step runs every meta_update_interval steps: it is timed on its own (meta_step_runner)
            # and amortized, so the timed training steps start off the interval.
            trainer.state.global_step = 1
        if weighting == "population":
            started = time.perf_counter()
            trainer._set_population_saliency()  # what train() does first: online pass or cached columns
            trainer.population_setup_seconds = time.perf_counter() - started
    trainer.create_optimizer()
    trainer.current_gradient_accumulation_steps = 1  # set by Trainer.train(), which this loop replaces
    model = trainer.accelerator.prepare_model(trainer.model) if compiled else trainer.model
    if compiled and not isinstance(model, torch._dynamo.eval_frame.OptimizedModule):
        raise RuntimeError(f"{variant} compiled: the trainer's accelerator did not compile the student.")
    return trainer, model, setup.batches(train)


def trainer_step(trainer, model, batch: dict[str, Any]) -> None:
    """One optimizer step as ``Trainer.train`` takes it: forward, loss, backward, optimizer step."""
    trainer.training_step(model, dict(batch))
    trainer.optimizer.step()
    trainer.optimizer.zero_grad(set_to_none=True)
    trainer.state.global_step += 1


def meta_step_runner(trainer, model):
    """One meta step of a ``learned`` MSDTrainer (look-ahead + weight update) on a batch."""

    def run(batch):
        trainer._meta_step(model, trainer._prepare_inputs(dict(batch)))

    return run


def amortize_meta_steps(times: dict, interval: int) -> None:
    """Adds ``MSD learned <mode>``: the training step plus 1 / ``interval`` of a meta step."""
    for mode in ("online", "cached", "cached compiled"):
        if f"MSD learned {mode} step" not in times:
            continue
        step, meta = times.pop(f"MSD learned {mode} step"), times[f"MSD learned {mode} meta step"]
        times[f"MSD learned {mode}"] = {
            key: step[key] + meta[key] / interval for key in ("mean_s", "median_s")
        }
        times[f"MSD learned {mode}"].update(
            steps=step["steps"], meta_update_interval=interval, warmup_s=step["warmup_s"] + meta["warmup_s"]
        )


def component_steps(setup: Setup) -> dict[str, Any]:
    """The student's passes on x and each x_m (forward + backward), the optimizer step alone, the teacher's
    no-grad forwards and data loading, each as a function of a collated raw batch."""
    student, teacher = setup.student, setup.teacher
    optimizer = torch.optim.AdamW(student.parameters(), lr=setup.training_args.learning_rate)
    names = [m.name for m in setup.modalities]
    views = {"x": lambda b: b, **{f"x_{n}": (lambda b, n=n: restrict(b, setup.modalities, n)) for n in names}}

    def student_pass(view):
        def run(batch):
            student.train()
            logits = student(**model_inputs(student, view(batch))).logits
            torch.nn.functional.cross_entropy(logits, batch["labels"]).backward()
            student.zero_grad(set_to_none=True)

        return run

    def optimizer_step(batch):
        for p in student.parameters():
            p.grad = torch.zeros_like(p)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)

    def teacher_pass(view):
        def run(batch):
            with torch.no_grad():
                teacher(**model_inputs(teacher, view(batch)))

        return run

    def data_loading(batch):
        # What the Trainer's DataLoader does per step with dataloader_num_workers=0 (the batch passed in is
        # not used): read a batch's rows (decoding each image) and collate them.
        setup.batches(setup.data["train"], count=1)

    steps = {f"student pass {key}": student_pass(view) for key, view in views.items()}
    steps["data loading"] = data_loading
    steps["optimizer step"] = optimizer_step
    steps.update({f"teacher forward {key}": teacher_pass(view) for key, view in views.items()})
    return steps


# ---- timing ------------------------------------------------------------------------------------------


def time_steps(runners: dict[str, tuple[Any, list]], warmup: int, rounds: int, steps: int) -> dict:
    """``runners``: name -> (fn(batch), batches). ``warmup`` untimed steps per variant, then ``rounds``
    interleaved rounds of ``steps`` steps per variant (:func:`hf_msd.evaluation.speed.time_interleaved`);
    seconds per step: the median and the mean over rounds of a round's time divided by its steps; and the
    seconds of the warm-up steps (for a compiled variant: its compilation, for the graphs not compiled yet by
    an earlier variant)."""
    warmup_seconds = {}
    for name, (fn, batches) in runners.items():
        start = time.perf_counter()
        for k in range(warmup):
            fn(batches[k % len(batches)])
        warmup_seconds[name] = time.perf_counter() - start

    def steps_of(fn, batches) -> Any:
        def run() -> None:
            for k in range(steps):
                fn(batches[k % len(batches)])

        return run

    seconds = time_interleaved(
        {name: steps_of(*runner) for name, runner in runners.items()}, rounds=rounds, warmup_rounds=0
    )
    return {
        name: {
            "mean_s": statistics.fmean(values) / steps,
            "median_s": statistics.median(values) / steps,
            "steps": rounds * steps,
            "warmup_s": warmup_seconds[name],
        }
        for name, values in seconds.items()
    }


def time_inference(setup: Setup, batch_sizes: list[int], examples: int, rounds: int, compile: bool) -> dict:
    """Teacher and student inference on the same ``examples`` train questions (collated beforehand), for each
    batch size: eager and, with ``compile``, compiled (default inductor), interleaved by
    :func:`hf_msd.evaluation.speed.compare_inference_speed` (its compile warm-up timed apart)."""
    pool = [setup.data["train"][i] for i in range(min(examples, len(setup.data["train"])))]
    if len(pool) < max(batch_sizes):
        raise ValueError(
            f"--inference_examples ({len(pool)} available) must be at least the largest of "
            f"--inference_batch_sizes {batch_sizes}."
        )
    results = {}
    for size in batch_sizes:
        batches = [
            {key: value for key, value in setup.collator(pool[i : i + size]).items() if key != "labels"}
            for i in range(0, len(pool) - size + 1, size)
        ]
        results[str(size)] = compare_inference_speed(
            {"teacher": setup.teacher, "student": setup.student},
            {"teacher": batches, "student": batches},
            rounds=rounds,
            progress=False,
            compile_options={} if compile else None,
        )
    return results


def time_caching_pass(setup: Setup, examples: int, rounds: int) -> dict:
    """Plain batched teacher inference vs the caching pass over the same examples, interleaved."""
    dataset = setup.data["train"].select(range(min(examples, len(setup.data["train"]))))
    batch_size = setup.training_args.per_device_eval_batch_size
    names = [m.name for m in setup.modalities]
    teacher = setup.teacher

    @torch.no_grad()
    def plain() -> None:
        for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=setup.collator):
            inputs = model_inputs(teacher, batch)
            teacher(**inputs)
            for name in names:
                teacher(**restrict(inputs, setup.modalities, name))

    def caching() -> None:
        with tempfile.TemporaryDirectory() as folder:
            precompute_teacher_outputs(
                teacher, dataset, setup.modalities, setup.collator, batch_size=batch_size, cache_dir=folder
            )

    runs = {"plain teacher inference": plain, "caching pass": caching}
    times = time_interleaved(runs, rounds=rounds, warmup_rounds=1)
    return {
        name: {"mean_s": statistics.fmean(v), "median_s": statistics.median(v), "examples": len(dataset)}
        for name, v in times.items()
    }


# ---- memory: one process per variant --------------------------------------------------------------------


def max_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # Linux: KiB


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def memory_child(args: argparse.Namespace, overrides: list[str]) -> None:
    """Loads data and models, resets the kernel's peak-RSS mark (``/proc/self/clear_refs``), builds the
    variant's trainer and trains; prints the process's max RSS (getrusage) and the peak since the reset."""
    setup = Setup(
        args.config, overrides, args.num_examples, args.cache_dir, need_teacher=args.memory_variant != "F"
    )
    loaded = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    trainer, model, batches = build_trainer(setup, args.memory_variant)
    for k in range(args.warmup + args.memory_steps):
        trainer_step(trainer, model, batches[k % len(batches)])
    print(
        json.dumps({"max_rss_mb": max_rss_mb(), "loaded_mb": loaded, "training_peak_mb": _status_mb("VmHWM")})
    )


def measure_memory(args: argparse.Namespace, overrides: list[str], cache_dir: str) -> dict[str, dict]:
    results = {}
    for variant in args.memory_variants.split(","):
        command = [
            sys.executable,
            __file__,
            args.config,
            *overrides,
            "--memory_variant",
            variant,
            "--cache_dir",
            cache_dir,
            "--num_examples",
            str(args.num_examples),
            "--warmup",
            str(args.warmup),
            "--memory_steps",
            str(args.memory_steps),
        ]
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"memory run of {variant!r} failed:\n{done.stderr[-4000:]}")
        results[variant] = json.loads(done.stdout.strip().splitlines()[-1])
    return results


# ---- report ------------------------------------------------------------------------------------------


def targets(times: dict, caching: dict, memory: dict | None, inference: dict) -> list[dict]:
    """Each target as ``{"target", "measured", "limit", "met"}``: a ratio at most (or, for the speed-ups
    of compilation, at least) its limit."""
    mean = {name: value[STAT] for name, value in times.items()}
    keys = [key for key in mean if key.startswith("student pass ")]
    teacher_keys = [key for key in mean if key.startswith("teacher forward ")]
    own = sum(mean[k] for k in keys) + mean["optimizer step"]
    every = own + sum(mean[k] for k in teacher_keys)
    rows = [
        ("KD cached <= 1.05 x F", mean["KD cached"] / mean["F"], 1.05),
        *(
            (f"MSD {w} cached <= {limit} x F", mean[f"MSD {w} cached"] / mean["F"], limit)
            for w, limit in (("uniform", 1.30), ("population", 1.30), ("learned", 1.8))
        ),
        *(
            (
                f"MSD {w} cached <= 1.10 x student's own passes (x, each x_m) + optimizer step",
                mean[f"MSD {w} cached"] / own,
                1.10,
            )
            for w in ("uniform", "population", "learned")
        ),
        *(
            (
                f"MSD {w} online <= 1.10 x all its passes (student's + teacher's) + optimizer step",
                mean[f"MSD {w} online"] / every,
                1.10,
            )
            for w in ("uniform", "population", "learned")
        ),
        (
            "caching pass <= 1.10 x plain batched teacher inference",
            caching["caching pass"][STAT] / caching["plain teacher inference"][STAT],
            1.10,
        ),
    ]
    if memory:
        for key, label in (
            ("max_rss_mb", "process max RSS"),
            ("training_peak_mb", "training-phase peak RSS"),
        ):
            rows += [
                (
                    f"{label} of MSD {w} cached <= 1.25 x F",
                    memory[f"MSD {w} cached"][key] / memory["F"][key],
                    1.25,
                )
                for w in ("uniform", "population", "learned")
                if f"MSD {w} cached" in memory and "F" in memory
            ]
    at_least = []
    for weighting in WEIGHTINGS:
        key = f"MSD {weighting} cached"
        if key + COMPILED in mean:
            rows.append((f"{key}{COMPILED} <= 0.75 x eager", mean[key + COMPILED] / mean[key], 0.75))
    compiled_student = "student" + COMPILED_SUFFIX
    for size, result in inference.items():
        models = result["models"]
        if compiled_student not in models:
            continue
        speed = {name: values["seconds_per_batch"] for name, values in models.items()}
        at_least.append(
            (
                f"compiled student inference >= 1.5 x eager, batch {size}",
                speed["student"] / speed[compiled_student],
                1.5,
            )
        )
        if size == "1":
            at_least.append(
                (
                    "compiled student inference >= 2 x eager teacher, batch 1",
                    speed["teacher"] / speed[compiled_student],
                    2.0,
                )
            )
    return [
        {"target": name, "measured": round(value, 3), "limit": limit, "met": value <= limit}
        for name, value, limit in rows
    ] + [
        {"target": name, "measured": round(value, 3), "limit": limit, "met": value >= limit}
        for name, value, limit in at_least
    ]


def markdown(report: dict) -> str:
    times, memory = report["step_times"], report.get("peak_memory_mb") or {}
    f_time, f_mem = times["F"][STAT], memory.get("F")
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Models: teacher {report['parameters']['teacher']:,} parameters, student "
        f"{report['parameters']['student']:,}; batch {report['batch_size']}; {report['rounds']} interleaved "
        f"rounds x {report['steps_per_round']} steps after {report['warmup']} warm-up steps per variant.",
        "",
        "Ratios use the median time per step (robust to bursts of load from other jobs); means shown too.",
        "Memory: each variant in its own process; max RSS of the whole process (getrusage), and the peak",
        "during training only (VmHWM reset after loading data and models; its start in brackets).",
        "",
        "| variant | median s/step | mean s/step | / F | max RSS MB | / F | training peak MB | / F |",
        "|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for name, value in times.items():
        if name.endswith(COMPILED) or name.endswith(COMPILED + " meta step"):
            continue
        mem = memory.get(name)
        mem_cells = (
            f"{mem['max_rss_mb']:,.0f} | {mem['max_rss_mb'] / f_mem['max_rss_mb']:.2f} | "
            f"{mem['training_peak_mb']:,.0f} ({mem['loaded_mb']:,.0f}) | "
            f"{mem['training_peak_mb'] / f_mem['training_peak_mb']:.2f}"
            if mem and f_mem
            else " | | | "
        )
        ratio = value[STAT] / f_time
        lines.append(
            f"| {name} | {value['median_s']:.3f} | {value['mean_s']:.3f} | {ratio:.2f} | {mem_cells} |"
        )
    lines += _compiled_markdown(report)
    caching = report["caching_pass"]
    plain = caching["plain teacher inference"][STAT]
    lines += [
        "",
        "| teacher pass over the same examples | median s | mean s | / plain |",
        "|---|---:|---:|---:|",
    ]
    for name, value in caching.items():
        label = f"{name} ({value['examples']} examples, x and each x_m)"
        lines.append(
            f"| {label} | {value['median_s']:.2f} | {value['mean_s']:.2f} | {value[STAT] / plain:.2f} |"
        )
    if report.get("population_setup_s"):
        lines += [
            "",
            "Population-saliency setup before training (s): "
            + ", ".join(f"{k} {v:.2f}" for k, v in report["population_setup_s"].items()),
        ]
    lines += ["", "| target | measured | met |", "|---|---:|:---:|"]
    for row in report["targets"]:
        lines.append(f"| {row['target']} | {row['measured']:.2f} | {'yes' if row['met'] else 'no'} |")
    return "\n".join(lines) + "\n"


def _compiled_markdown(report: dict) -> list[str]:
    """The compiled training steps beside their eager ones, and inference per batch size."""
    times, lines = report["step_times"], []
    compiled = [name.removesuffix(COMPILED) for name in times if name.endswith(COMPILED)]
    if compiled:
        lines += [
            "",
            "Compiled training steps (`torch_compile=True`, inductor; compile cache "
            f"{report['compile_cache']}). Warm-up: the untimed first step(s), which compile the graphs that "
            "no earlier variant compiled (variants share the student's graphs, one per input signature), "
            "in this order:",
            "",
            "| variant | eager median s/step | compiled median s/step | compiled / eager | warm-up s |",
            "|---|---:|---:|---:|---:|",
        ]
        for name in compiled:
            eager, fast = times[name], times[name + COMPILED]
            lines.append(
                f"| {name} | {eager[STAT]:.4f} | {fast[STAT]:.4f} | {fast[STAT] / eager[STAT]:.2f} | "
                f"{fast['warmup_s']:.1f} |"
            )
    lines += [
        "",
        "Inference (no grad, eval mode) on the same train questions, collated beforehand; interleaved rounds "
        "per batch size; compile warm-up: the compiled model's first pass over the batches.",
        "",
        "| batch | model | median ms/batch | examples/s | x eager teacher | compile warm-up s |",
        "|---:|---|---:|---:|---:|---:|",
    ]
    for size, result in report["inference"].items():
        warmups = result.get("compile_seconds", {})
        for name, values in result["models"].items():
            warmup = f"{warmups[name]:.1f}" if name in warmups else ""
            lines.append(
                f"| {size} | {name} | {values['seconds_per_batch'] * 1000:.2f} | "
                f"{values['examples_per_second']:,.0f} | {result['speedup'][name]:.2f} | {warmup} |"
            )
    return lines


def main() -> None:
    args, overrides = _parse()
    load_before = os.getloadavg()[0]
    torch.set_num_threads(max(1, torch.get_num_threads()))
    if args.memory_variant:
        memory_child(args, overrides)
        return
    compile_cache = f"TORCHINDUCTOR_CACHE_DIR={os.environ.get('TORCHINDUCTOR_CACHE_DIR')}"
    # Importing torch sets TORCHINDUCTOR_CACHE_DIR to the default folder: a user's own folder differs.
    if args.compile and os.environ.get("TORCHINDUCTOR_CACHE_DIR") in (None, default_cache_dir()):
        # A cold start, as a user's first run: no inductor kernels from an earlier run are reused.
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = tempfile.mkdtemp(prefix="torchinductor_")
        compile_cache = "cold (a fresh TORCHINDUCTOR_CACHE_DIR)"
    with tempfile.TemporaryDirectory() as cache_dir:
        setup = Setup(args.config, overrides, args.num_examples, cache_dir)
        runners, population = {}, {}
        variants = TRAINER_VARIANTS + ([v + COMPILED for v in COMPILED_VARIANTS] if args.compile else [])
        for variant in variants:
            trainer, model, batches = build_trainer(setup, variant)
            name = f"{variant} step" if "learned" in variant else variant
            runners[name] = (lambda batch, t=trainer, m=model: trainer_step(t, m, batch), batches)
            if "learned" in variant:
                runners[f"{variant} meta step"] = (meta_step_runner(trainer, model), batches)
            if hasattr(trainer, "population_setup_seconds"):
                population[variant] = trainer.population_setup_seconds
        for name in ("ACCELERATE_DYNAMO_BACKEND", "ACCELERATE_DYNAMO_MODE"):
            os.environ.pop(name, None)  # set by TrainingArguments(torch_compile=True); not for the children
        raw_batches = setup.batches(setup.data["train"])
        for name, fn in component_steps(setup).items():
            runners[name] = (fn, raw_batches)
        times = time_steps(runners, args.warmup, args.rounds, args.steps_per_round)
        amortize_meta_steps(times, setup.training_args.meta_update_interval)
        inference = time_inference(
            setup, args.inference_batch_sizes, args.inference_examples, args.inference_rounds, args.compile
        )
        caching = time_caching_pass(setup, args.cache_examples, args.cache_rounds)
        memory = measure_memory(args, overrides, cache_dir) if args.memory else None
    report = {
        "command": " ".join(["python", "benchmarks/throughput.py", *sys.argv[1:]]),
        "machine": f"{machine()}; load average before the run {load_before:.2f}, after "
        f"{os.getloadavg()[0]:.2f}: absolute times are noisy, compare the ratios (interleaved)",
        "parameters": {
            "teacher": sum(p.numel() for p in setup.teacher.parameters()),
            "student": sum(p.numel() for p in setup.student.parameters()),
        },
        "batch_size": setup.batch_size,
        "warmup": args.warmup,
        "rounds": args.rounds,
        "steps_per_round": args.steps_per_round,
        "step_times": times,
        "compile_cache": compile_cache if args.compile else None,
        "inference": inference,
        "caching_pass": caching,
        "population_setup_s": population,
        "peak_memory_mb": memory,
    }
    report["targets"] = targets(times, caching, memory, inference)
    write_results(args.output_name, report, markdown(report))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main()
