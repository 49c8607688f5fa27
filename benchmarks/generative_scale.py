"""Generative distillation at real model shapes: peak memory and seconds per training step, full logits vs
answer-only logits.

Models are Idefics3 (SmolVLM's architecture) built from configs with random weights (nothing downloads):
``--shape smolvlm-256m`` is SmolVLM-256M's sizes (SigLIP-base vision tower at 512 px, 64 image tokens per
image, a Llama-style LM of width 576 and 30 layers, 49,280 vocabulary, untied output layer); ``--shape tiny``
is a few-thousand-parameter model for a smoke check. The teacher has the student's shape, or with
``--teacher larger`` a 960-wide, 32-layer LM (SmolLM2-360M's sizes) on the same vision tower. The LM sizes
are SmolLM2-135M's (576 wide, 1,536 MLP, 30 layers, 9 heads, 3 key-value heads) and the vision tower
SigLIP base-patch16-512's (768 wide, 3,072 MLP, 12 layers, 12 heads), the model card's base models; the
49,280 vocabulary (SmolLM2's 49,152 plus SmolVLM's added tokens), the untied output layer and the scale factor
4 are SmolVLM-256M's published config (the Hub is out of reach here: these values were checked against copies
of that config in other projects' tests; transformers' Idefics3 and SmolVLM defaults are Idefics3-8B's). RoPE
base, RMSNorm epsilon and position limits keep Llama's defaults: they change no tensor shape.

Each batch holds ``--batch`` examples of one image each, a prompt of ``--prompt-tokens`` tokens (the image
tokens, then random text tokens: a long prompt is a long text prompt, not image splitting) and answers of
1 to ``--answer-tokens`` tokens. The views of MSD: ``x_text`` is the prompt without its image tokens and
image, ``x_image`` the image tokens and the image without the text; every view has the same answers.

Variants (``--variants``), each one training step (task and KD weights 0.5, T = 2, MSD's modality terms
uniformly weighted with weight 0.5 each; one backward, AdamW):

- ``sft``: the student alone on the labels;
- ``kd_online`` / ``kd_cached``: KD on ``x``, the teacher run under no_grad or its top-k answer-token logits
  from a cache (``--top-k``; cached rows are random, so a cached variant never builds the full teacher);
- ``msd_online`` / ``msd_cached``: KD on ``x`` plus the KD terms on ``x_text`` and ``x_image``;

each with ``:answer`` (what the trainers do: the output layer at the answer tokens only, for teacher and
student) or ``:full`` (before answer-only logits: (B, T, V) logits of every view). The ``:answer`` KD and MSD
steps are ``DistillationTrainer`` / ``MSDTrainer``'s own ``compute_loss`` on the batch as
``VisionLanguageCollator`` collates it (the cached variants give the trainer a tiny stand-in teacher of the
same vocabulary, which the cache keeps from running); ``sft:answer`` is ``answer_task_loss`` on the answer
rows (the trainers' task term) and ``sft:full`` the model's own loss. The ``:full`` steps are written out with
the per-token losses of hf_msd.distillation.losses and give the ``:answer`` steps' loss (checked on tiny
shapes: equal to the float32 bit).

Measurement: every variant runs in its own process, one process per variant and round, the variants
interleaved round after round (order reversed every other round). A process builds its models and data,
resets the kernel's peak-RSS mark (``/proc/self/clear_refs``, VmHWM := VmRSS), then runs ``--warmup`` and
``--steps`` training steps; it reports the peak resident memory of that training phase (VmHWM) and the
seconds of each timed step. The report gives, per variant, the median over rounds of the median seconds per
step and the largest training-phase peak, each also as a ratio to ``sft:full``; and the bytes a top-k cache
stores per 1,000 answer tokens and view (``--top-k`` 20 and 100, float32 and float16 storage: the arrays'
bytes, without the file format's overhead).

    python benchmarks/generative_scale.py --shape smolvlm-256m --prompt-tokens 120 [--gradient-checkpointing]
        [--freeze-vision] [--rounds 3] [--steps 2] [--warmup 1] [--name generative_scale]
    python benchmarks/generative_scale.py --shape tiny --rounds 1 --steps 1 --name generative_scale_smoke
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from results_files import RESULTS, write_results

from hf_msd.data.generative import DISTILLATION_LABELS, VIEW_NAMES, view_key
from hf_msd.distillation.answer_logits import answer_logits, answer_positions, answer_task_loss
from hf_msd.distillation.losses import IGNORE_INDEX, token_soft_target_loss, token_task_loss
from hf_msd.teacher_outputs.cache import (
    REST_LOGIT,
    TOPK_INDICES,
    TOPK_LOGITS,
    compress_topk,
    expand_topk,
    teacher_column,
)

NAN = float("nan")

VISION = {
    "smolvlm-256m": dict(
        hidden_size=768, intermediate_size=3072, num_hidden_layers=12, num_attention_heads=12, patch_size=16
    ),
    "tiny": dict(
        hidden_size=16, intermediate_size=32, num_hidden_layers=1, num_attention_heads=2, patch_size=8
    ),
}
IMAGE_SIZE = {"smolvlm-256m": 512, "tiny": 32}
SCALE_FACTOR = {"smolvlm-256m": 4, "tiny": 2}
#: (shape, size) -> the LM's hidden_size, intermediate_size, layers, attention heads, key-value heads
TEXT = {
    ("smolvlm-256m", "same"): (576, 1536, 30, 9, 3),
    ("smolvlm-256m", "larger"): (960, 2560, 32, 15, 5),
    ("tiny", "same"): (16, 32, 1, 2, 2),
    ("tiny", "larger"): (32, 64, 2, 2, 2),
}
TEXT_FIELDS = (
    "hidden_size",
    "intermediate_size",
    "num_hidden_layers",
    "num_attention_heads",
    "num_key_value_heads",
)
VOCAB = {"smolvlm-256m": 49280, "tiny": 64}
METHODS = ("sft", "kd_online", "kd_cached", "msd_online", "msd_cached")
VARIANTS = [f"{method}:{logits}" for method in METHODS for logits in ("full", "answer")]
BASELINE = "sft:full"
TEMPERATURE, TASK_WEIGHT, KD_WEIGHT, MODALITY_WEIGHT = 2.0, 0.5, 0.5, 0.5
PAD, IMAGE_TOKEN = 0, 1  # token ids; text and answer tokens are drawn from 2 .. vocab - 1


def image_tokens(shape: str) -> int:
    patches = (IMAGE_SIZE[shape] // VISION[shape]["patch_size"]) ** 2
    return patches // SCALE_FACTOR[shape] ** 2


def build_model(shape: str, size: str, seed: int, vocab: int | None = None) -> torch.nn.Module:
    """An Idefics3ForConditionalGeneration of ``shape`` (LM ``size`` "same" or "larger"), random weights;
    ``vocab`` overrides the shape's vocabulary."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    torch.manual_seed(seed)
    text = dict(zip(TEXT_FIELDS, TEXT[shape, size]), vocab_size=vocab or VOCAB[shape], pad_token_id=PAD)
    config = Idefics3Config(
        text_config=text,
        vision_config=dict(VISION[shape], image_size=IMAGE_SIZE[shape]),
        scale_factor=SCALE_FACTOR[shape],
        image_token_id=IMAGE_TOKEN,
        pad_token_id=PAD,
        tie_word_embeddings=False,
    )
    return Idefics3ForConditionalGeneration(config)


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    length = max(len(row) for row in rows)
    return torch.tensor([row + [value] * (length - len(row)) for row in rows])


def build_batch(
    shape: str, vocab: int, batch: int, prompt_tokens: int, answer_tokens: int, seed: int
) -> dict[str, dict]:
    """The views ``x``, ``text``, ``image`` of one batch, each ``{"inputs": model inputs, "labels": (B, T)
    answer tokens, -100 elsewhere}``, right-padded; example ``i`` has ``max(1, answer_tokens - i)`` answer
    tokens, the same in every view."""
    generator = torch.Generator().manual_seed(seed)
    size, count = IMAGE_SIZE[shape], image_tokens(shape)
    if prompt_tokens <= count:
        raise ValueError(f"--prompt-tokens must exceed the {count} image tokens, got {prompt_tokens}.")
    pixels = torch.randn(batch, 1, 3, size, size, generator=generator)
    views: dict[str, dict] = {}
    texts = [
        torch.randint(2, vocab, (prompt_tokens - count,), generator=generator).tolist() for _ in range(batch)
    ]
    answers = [
        torch.randint(2, vocab, (max(1, answer_tokens - i),), generator=generator).tolist()
        for i in range(batch)
    ]
    prompts = {
        "x": [[IMAGE_TOKEN] * count + text for text in texts],
        "text": texts,
        "image": [[IMAGE_TOKEN] * count + text[:2] for text in texts],
    }
    for name, rows in prompts.items():
        ids = [prompt + answer for prompt, answer in zip(rows, answers)]
        scored = [[IGNORE_INDEX] * len(prompt) + answer for prompt, answer in zip(rows, answers)]
        view = {"input_ids": _pad(ids, PAD), "attention_mask": _pad([[1] * len(row) for row in ids], 0)}
        if name != "text":
            view["pixel_values"] = pixels
            view["pixel_attention_mask"] = torch.ones(batch, 1, size, size, dtype=torch.bool)
        labels = _pad(scored, IGNORE_INDEX)
        views[name] = {"inputs": view, "labels": labels}
    return views


def cached_rows(labels: torch.Tensor, vocab: int, top_k: int, seed: int) -> tuple[torch.Tensor, ...]:
    """Random top-k teacher rows of the answer tokens of ``labels``: values, indices (N, k), rest (N,)."""
    generator = torch.Generator().manual_seed(seed)
    count = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return compress_topk(torch.randn(count, vocab, generator=generator), top_k, "single_label_classification")


def teacher_logits(teacher, cache, view: dict, vocab: int) -> torch.Tensor:
    """Today's (full-logits) teacher logits of one view, (B, T, V): online, or the cached rows placed where
    the online teacher's would be (0 elsewhere), as hf_msd's cache did before answer-only logits."""
    labels = view["labels"]
    if cache is None:
        with torch.no_grad():
            return teacher(**view["inputs"]).logits
    rows = expand_topk(*cache, num_labels=vocab)
    dense = rows.new_zeros(*labels.shape, rows.shape[-1])
    dense[answer_positions(labels)] = rows
    return dense


def view_losses(student, teacher, cache, view: dict, with_task: bool = True) -> list:
    """Today's per-token KD loss of one view on full logits and, ``with_task``, its task loss, each a mean
    over its answer tokens (the modality views have no task term)."""
    labels = view["labels"]
    target = teacher_logits(teacher, cache, view, student.config.text_config.vocab_size)
    logits = student(**view["inputs"]).logits
    kd = token_soft_target_loss(logits, target, labels=labels, causal=True, temperature=TEMPERATURE)
    tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    if not with_task:
        return [kd.sum() / tokens]
    return [kd.sum() / tokens, token_task_loss(logits, labels, causal=True).sum() / tokens]


def trainer_batch(views: dict, caches: dict) -> dict[str, torch.Tensor]:
    """The batch as a :class:`~hf_msd.data.VisionLanguageCollator` collates it for the trainers: ``x`` with
    ``labels`` and ``distillation_labels`` (every answer is gold here), the views ``view_<m>__<key>``, and
    each cached view's top-k rows as (B, A, k) columns, NaN past an example's answer tokens."""
    x = views["x"]
    batch = {**x["inputs"], "labels": x["labels"], DISTILLATION_LABELS: x["labels"]}
    for name in VIEW_NAMES:
        for key, value in {**views[name]["inputs"], DISTILLATION_LABELS: views[name]["labels"]}.items():
            batch[view_key(name, key)] = value
    for name, (values, indices, rest) in caches.items():
        counts = answer_positions(views[name]["labels"]).sum(-1).tolist()
        column = teacher_column(None if name == "x" else name)
        for suffix, rows, fill in (
            (TOPK_LOGITS, values, NAN),
            (TOPK_INDICES, indices, 0),
            (REST_LOGIT, rest, NAN),
        ):
            padded = rows.new_full((len(counts), max(counts), *rows.shape[1:]), fill)
            for example, part in enumerate(rows.split(counts)):
                padded[example, : len(part)] = part
            batch[column + suffix] = padded
    return batch


def build_trainer(method: str, student, teacher, output_dir: str):
    """The trainer of ``method`` (kd_* or msd_*): DistillationTrainer / MSDTrainer with the weights of
    :data:`TASK_WEIGHT`, :data:`KD_WEIGHT`, :data:`MODALITY_WEIGHT` (uniform), T = :data:`TEMPERATURE`."""
    from hf_msd.trainers import DistillationTrainer, MSDTrainer, MSDTrainingArguments

    msd = method.startswith("msd")
    args = MSDTrainingArguments(
        output_dir=output_dir,
        use_cpu=True,
        report_to=[],
        remove_unused_columns=False,
        hard_label_weight=TASK_WEIGHT,
        kd_loss_weight=KD_WEIGHT,
        modality_loss_weight=MODALITY_WEIGHT if msd else 0.0,
        modality_weighting="uniform",
        temperature=TEMPERATURE,
    )
    return (MSDTrainer if msd else DistillationTrainer)(model=student, teacher_model=teacher, args=args)


def step_loss(variant: str, student, teacher, caches: dict, views: dict, trainer=None) -> torch.Tensor:
    """The variant's training loss on the batch ``views``: ``trainer.compute_loss`` for the KD and MSD
    variants with answer-only logits (the trainers' own step), written out for SFT and for full logits."""
    method, logits = variant.split(":")
    answer_only = logits == "answer"
    x = views["x"]
    if method == "sft":
        if not answer_only:
            return student(**x["inputs"], labels=x["labels"]).loss
        rows = answer_logits(student, x["inputs"], x["labels"])
        return answer_task_loss(rows, x["labels"], x["labels"]).sum() / int(
            (x["labels"][:, 1:] != IGNORE_INDEX).sum()
        )
    if answer_only:
        return trainer.compute_loss(student, trainer_batch(views, caches))
    kd, task = view_losses(student, teacher, caches.get("x"), x)
    loss = TASK_WEIGHT * task + KD_WEIGHT * kd
    if method.startswith("msd"):  # uniform weights: modality_loss_weight on each view's term
        for name in VIEW_NAMES:
            loss = (
                loss
                + MODALITY_WEIGHT * view_losses(student, teacher, caches.get(name), views[name], False)[0]
            )
    return loss


def _status_mb(field: str) -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) / 1024
    return float("nan")


def child(args: argparse.Namespace) -> None:
    """One variant in this process: build, reset the peak-RSS mark, train; print the measurements as JSON."""
    torch.set_num_threads(args.threads)
    variant = args.child
    vocab = args.vocab or VOCAB[args.shape]
    student = build_model(args.shape, "same", seed=1, vocab=vocab)
    student.config.use_cache = False
    if args.freeze_vision:
        student.model.vision_model.requires_grad_(False)
    if args.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()
    method, logits = variant.split(":")
    if "online" in variant:
        teacher = build_model(args.shape, args.teacher, seed=2, vocab=vocab).eval().requires_grad_(False)
    elif logits == "answer" and method != "sft":  # the trainer needs a teacher; the cache replaces its passes
        teacher = build_model("tiny", "same", seed=2, vocab=vocab).eval().requires_grad_(False)
    else:
        teacher = None
    views = build_batch(args.shape, vocab, args.batch, args.prompt_tokens, args.answer_tokens, seed=0)
    caches = {}
    if "cached" in variant:
        names = ("x", "text", "image") if variant.startswith("msd") else ("x",)
        caches = {name: cached_rows(views[name]["labels"], vocab, args.top_k, 3) for name in names}
    trainer = None
    if logits == "answer" and method != "sft":
        trainer = build_trainer(method, student, teacher, tempfile.mkdtemp(prefix="generative_scale_"))
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    loaded = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    seconds = []
    for index in range(args.warmup + args.steps):
        started = time.perf_counter()
        step_loss(variant, student, teacher, caches, views, trainer).backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if index >= args.warmup:
            seconds.append(time.perf_counter() - started)
    print(json.dumps({"loaded_mb": loaded, "training_peak_mb": _status_mb("VmHWM"), "seconds": seconds}))


def run_child(args: argparse.Namespace, variant: str) -> dict[str, Any]:
    command = [sys.executable, __file__, *child_flags(args), "--child", variant]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{variant} failed:\n{done.stderr[-4000:]}")
    return json.loads(done.stdout.strip().splitlines()[-1])


def child_flags(args: argparse.Namespace) -> list[str]:
    flags = [
        "--shape", args.shape, "--teacher", args.teacher, "--batch", str(args.batch),
        "--prompt-tokens", str(args.prompt_tokens), "--answer-tokens", str(args.answer_tokens),
        "--top-k", str(args.top_k), "--steps", str(args.steps), "--warmup", str(args.warmup),
        "--threads", str(args.threads), "--vocab", str(args.vocab or VOCAB[args.shape]),
    ]  # fmt: skip
    flags += ["--gradient-checkpointing"] * args.gradient_checkpointing + [
        "--freeze-vision"
    ] * args.freeze_vision
    return flags


def cache_bytes_per_1000_tokens(vocab: int) -> dict[str, int]:
    """Bytes of the top-k arrays of 1,000 answer tokens of one view, as the teacher-output cache stores
    them."""
    result = {}
    for k in (k for k in (20, 100) if k < vocab):
        values, indices, rest = compress_topk(torch.randn(1000, vocab), k, "single_label_classification")
        for dtype in (torch.float32, torch.float16):
            stored = (values.to(dtype), indices.int(), rest.to(dtype))  # as the cache's _encode writes them
            result[f"top-{k} {str(dtype).removeprefix('torch.')}"] = sum(a.numpy().nbytes for a in stored)
    return result


def markdown(report: dict[str, Any]) -> str:
    rows = report["variants"]
    base = rows[BASELINE]
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Setup: {report['setup']}",
        "",
        "| variant | s/step (median) | / SFT | training peak MB | / SFT |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, row in rows.items():
        seconds, peak = row["seconds_per_step"], row["training_peak_mb"]
        lines.append(
            f"| {name} | {seconds:.3f} | {seconds / base['seconds_per_step']:.2f} | "
            f"{peak:,.0f} | {peak / base['training_peak_mb']:.2f} |"
        )
    lines += ["", "Cache bytes per 1,000 answer tokens and view:", ""]
    lines += [f"- {name}: {value:,}" for name, value in report["cache_bytes_per_1000_answer_tokens"].items()]
    return "\n".join(lines) + "\n"


#: the targets at the long prompt with gradient checkpointing on: (variant, measure, largest ratio to SFT)
TARGETS = (
    ("kd_cached:answer", "training_peak_mb", 1.10),
    ("kd_cached:answer", "seconds_per_step", 1.15),
    ("msd_cached:answer", "training_peak_mb", 1.35),
    ("msd_cached:answer", "seconds_per_step", 2.3),
    ("msd_online:answer", "training_peak_mb", 1.5),
)


def combine(names: list[str], targets_from: str) -> tuple[dict[str, Any], str]:
    """One report of several runs' reports (``benchmarks/results/<name>.json``): every run's table, and the
    targets checked on ``targets_from``'s run against both SFT baselines (``sft:full``, the model's own loss,
    and ``sft:answer``, the output layer at the answer tokens only)."""
    reports = {name: json.loads((RESULTS / f"{name}.json").read_text()) for name in names}
    rows = reports[targets_from]["variants"]
    checks = [
        {
            "variant": variant,
            "measure": measure,
            "target": limit,
            **{
                f"ratio_to_{base.replace(':', '_')}": rows[variant][measure] / rows[base][measure]
                for base in ("sft:full", "sft:answer")
                if base in rows
            },
        }
        for variant, measure, limit in TARGETS
        if variant in rows
    ]
    lines = [
        f"Targets, checked on `{targets_from}` (ratios to SFT with the model's own loss, and to SFT with "
        "answer-only logits):",
        "",
        "| variant | measure | target | / sft:full | / sft:answer | met |",
        "|---|---|---:|---:|---:|---|",
    ]
    for check in checks:
        full, answer = check["ratio_to_sft_full"], check.get("ratio_to_sft_answer", NAN)
        lines.append(
            f"| {check['variant']} | {check['measure']} | <= {check['target']} | {full:.2f} | {answer:.2f} | "
            f"{'yes' if full <= check['target'] else 'no'} |"
        )
    for name, report in reports.items():
        lines += ["", f"## {name}", "", markdown(report)]
    return {"targets": checks, "runs": reports}, "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(VOCAB), default="smolvlm-256m")
    parser.add_argument("--teacher", choices=("same", "larger"), default="same")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=120, help="Image tokens plus text tokens.")
    parser.add_argument(
        "--answer-tokens", type=int, default=4, help="The first example's; others 1 fewer each."
    )
    parser.add_argument(
        "--vocab", type=int, help="The models' vocabulary size (default: the shape's; 151936 is Qwen2-VL's)."
    )
    parser.add_argument("--top-k", type=int, default=20, help="Top-k of the cached variants.")
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--freeze-vision", action="store_true", help="Freeze the student's vision tower.")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--steps", type=int, default=2, help="Timed steps per process.")
    parser.add_argument("--warmup", type=int, default=1, help="Untimed steps per process (inside the peak).")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--name", default="generative_scale", help="Result files benchmarks/results/<name>.*")
    parser.add_argument(
        "--combine",
        help="Comma-separated result names to gather into one report under --name, the targets checked on "
        "the first (the long prompt with gradient checkpointing); no training.",
    )
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.combine:
        names = args.combine.split(",")
        write_results(args.name, *combine(names, names[0]))
        return
    if args.child:
        child(args)
        return
    variants = args.variants.split(",")
    unknown = sorted(set(variants) - set(VARIANTS))
    if unknown or BASELINE not in variants:
        raise SystemExit(f"--variants: unknown {unknown}, or {BASELINE} missing; choose from {VARIANTS}.")
    runs: dict[str, list[dict]] = {variant: [] for variant in variants}
    started = time.time()
    for index in range(args.rounds):
        for variant in variants if index % 2 == 0 else reversed(variants):
            runs[variant].append(run_child(args, variant))
            print(f"round {index + 1}: {variant} {runs[variant][-1]}", flush=True)
    summary = {
        variant: {
            "seconds_per_step": statistics.median(statistics.median(run["seconds"]) for run in measured),
            "training_peak_mb": max(run["training_peak_mb"] for run in measured),
            "loaded_mb": statistics.median(run["loaded_mb"] for run in measured),
            "runs": measured,
        }
        for variant, measured in runs.items()
    }
    command = " ".join(
        [
            "python benchmarks/generative_scale.py",
            *child_flags(args),
            *("--rounds", str(args.rounds), "--variants", args.variants, "--name", args.name),
        ]
    )
    report = {
        "command": command,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s), pinned to CPUs {sorted(os.sched_getaffinity(0))}",
        "setup": (
            f"Idefics3 {args.shape} student, teacher {args.teacher}; batch {args.batch}, "
            f"{args.prompt_tokens}-token prompts ({image_tokens(args.shape)} image tokens), answers of "
            f"1-{args.answer_tokens} tokens; gradient checkpointing "
            f"{'on' if args.gradient_checkpointing else 'off'}, vision tower "
            f"{'frozen' if args.freeze_vision else 'trained'}; {args.rounds} rounds x {args.steps} steps "
            f"after {args.warmup} warm-up; {time.time() - started:.0f} s"
        ),
        "variants": summary,
        "cache_bytes_per_1000_answer_tokens": cache_bytes_per_1000_tokens(args.vocab or VOCAB[args.shape]),
    }
    write_results(args.name, report, markdown(report))


if __name__ == "__main__":
    main()
