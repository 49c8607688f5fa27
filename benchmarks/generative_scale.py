"""Generative distillation at real model shapes: peak memory and seconds per training step, full logits vs
answer-only logits.

Models are Idefics3 (SmolVLM's architecture) built from configs with random weights (nothing downloads):
``--shape smolvlm-256m`` is SmolVLM-256M's sizes (SigLIP-base vision tower at 512 px, 64 image tokens per
image, a Llama-style LM of width 576 and 30 layers, 49,280 vocabulary, untied output layer); ``--shape tiny``
is a few-thousand-parameter model for a smoke check. The teacher has the student's shape, or with
``--teacher larger`` a 960-wide, 32-layer LM (SmolLM2-360M's sizes) on the same vision tower.

Each batch holds ``--batch`` examples of one image each, a prompt of ``--prompt-tokens`` tokens (the image
tokens, then random text tokens: a long prompt is a long text prompt, not image splitting) and answers of
1 to ``--answer-tokens`` tokens. The views of MSD: ``x_text`` is the prompt without its image tokens and
image, ``x_image`` the image tokens and the image without the text; every view has the same answers.

Variants (``--variants``), each a training step written out with hf_msd's loss functions (the maths of
DistillationTrainer / MSDTrainer: task and KD weights 0.5, T = 2, MSD's modality terms uniformly weighted
with weight 0.5; one backward, AdamW):

- ``sft``: the student alone on the labels (full logits: the model's own loss);
- ``kd_online`` / ``kd_cached``: KD on ``x``, the teacher run under no_grad or its top-k answer-token logits
  from a cache (``--top-k``; cached rows are random, so a cached variant never builds the teacher);
- ``msd_online`` / ``msd_cached``: KD on ``x`` plus the KD terms on ``x_text`` and ``x_image``;

each with ``:full`` (today: (B, T, V) logits of every view, the per-token losses of
hf_msd.distillation.losses) or ``:answer`` (hf_msd.distillation.answer_logits: the output layer at the
answer tokens only, for teacher and student).

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
import time
from pathlib import Path
from typing import Any

import torch
from results_files import write_results

from hf_msd.distillation.answer_logits import (
    answer_logits,
    answer_positions,
    answer_soft_target_loss,
    answer_task_loss,
)
from hf_msd.distillation.losses import IGNORE_INDEX, token_soft_target_loss, token_task_loss
from hf_msd.teacher_outputs.cache import compress_topk, expand_topk

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


def build_model(shape: str, size: str, seed: int) -> torch.nn.Module:
    """An Idefics3ForConditionalGeneration of ``shape`` (LM ``size`` "same" or "larger"), random weights."""
    from transformers import Idefics3Config, Idefics3ForConditionalGeneration

    torch.manual_seed(seed)
    text = dict(zip(TEXT_FIELDS, TEXT[shape, size]), vocab_size=VOCAB[shape], pad_token_id=PAD)
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


def build_batch(shape: str, batch: int, prompt_tokens: int, answer_tokens: int, seed: int) -> dict[str, dict]:
    """The views ``x``, ``text``, ``image`` of one batch, each ``{"inputs": model inputs, "labels": (B, T)
    answer tokens, -100 elsewhere}``, right-padded; example ``i`` has ``max(1, answer_tokens - i)`` answer
    tokens, the same in every view."""
    generator = torch.Generator().manual_seed(seed)
    vocab, size, count = VOCAB[shape], IMAGE_SIZE[shape], image_tokens(shape)
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


def teacher_logits(teacher, cache, view: dict, answer_only: bool, vocab: int) -> torch.Tensor:
    """The teacher's logits of one view: (N, V) answer rows or (B, T, V), online or from the cache (placed
    where the online teacher's would be, as hf_msd's batch_cached_answer_logits does)."""
    labels = view["labels"]
    if cache is not None:
        rows = expand_topk(*cache, num_labels=vocab)
        if answer_only:
            return rows
        dense = rows.new_zeros(*labels.shape, rows.shape[-1])
        dense[answer_positions(labels)] = rows
        return dense
    with torch.no_grad():
        if answer_only:
            return answer_logits(teacher, view["inputs"], labels)
        return teacher(**view["inputs"]).logits


def view_losses(student, teacher, cache, view: dict, answer_only: bool, with_task: bool = True) -> list:
    """The per-token KD loss of one view and, ``with_task``, its task loss, each a mean over its answer
    tokens (the modality views have no task term: today's trainers compute none there)."""
    labels = view["labels"]
    target = teacher_logits(teacher, cache, view, answer_only, student.config.text_config.vocab_size)
    if answer_only:
        rows = answer_logits(student, view["inputs"], labels)
        kd = answer_soft_target_loss(rows, target, labels, temperature=TEMPERATURE)
        task = answer_task_loss(rows, labels, labels) if with_task else None
    else:
        logits = student(**view["inputs"]).logits
        kd = token_soft_target_loss(logits, target, labels=labels, causal=True, temperature=TEMPERATURE)
        task = token_task_loss(logits, labels, causal=True) if with_task else None
    tokens = int((labels[:, 1:] != IGNORE_INDEX).sum())
    return [kd.sum() / tokens] + ([task.sum() / tokens] if with_task else [])


def step_loss(variant: str, student, teacher, caches: dict, views: dict) -> torch.Tensor:
    """The variant's training loss on the batch ``views``."""
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
    kd, task = view_losses(student, teacher, caches.get("x"), x, answer_only)
    loss = TASK_WEIGHT * task + KD_WEIGHT * kd
    if method.startswith("msd"):
        terms = [
            view_losses(student, teacher, caches.get(n), views[n], answer_only, False)[0]
            for n in ("text", "image")
        ]
        loss = loss + MODALITY_WEIGHT * sum(terms) / len(terms)
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
    student = build_model(args.shape, "same", seed=1)
    student.config.use_cache = False
    if args.freeze_vision:
        student.model.vision_model.requires_grad_(False)
    if args.gradient_checkpointing:
        student.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    student.train()
    online = "online" in variant
    teacher = build_model(args.shape, args.teacher, seed=2).eval().requires_grad_(False) if online else None
    views = build_batch(args.shape, args.batch, args.prompt_tokens, args.answer_tokens, seed=0)
    caches = {}
    if "cached" in variant:
        names = ("x", "text", "image") if variant.startswith("msd") else ("x",)
        caches = {
            name: cached_rows(views[name]["labels"], VOCAB[args.shape], args.top_k, 3) for name in names
        }
    optimizer = torch.optim.AdamW([p for p in student.parameters() if p.requires_grad], lr=1e-5)
    loaded = _status_mb("VmRSS")
    Path("/proc/self/clear_refs").write_text("5")  # VmHWM := VmRSS
    seconds = []
    for index in range(args.warmup + args.steps):
        started = time.perf_counter()
        step_loss(variant, student, teacher, caches, views).backward()
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
        "--threads", str(args.threads),
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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shape", choices=sorted(VOCAB), default="smolvlm-256m")
    parser.add_argument("--teacher", choices=("same", "larger"), default="same")
    parser.add_argument("--batch", type=int, default=2)
    parser.add_argument("--prompt-tokens", type=int, default=120, help="Image tokens plus text tokens.")
    parser.add_argument(
        "--answer-tokens", type=int, default=4, help="The first example's; others 1 fewer each."
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
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
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
        ["python benchmarks/generative_scale.py", *child_flags(args), "--rounds", str(args.rounds)]
    )
    report = {
        "command": command,
        "machine": f"{platform.platform()}, {os.cpu_count()} CPUs, torch {torch.__version__}, "
        f"{args.threads} thread(s)",
        "setup": (
            f"Idefics3 {args.shape} student, teacher {args.teacher}; batch {args.batch}, "
            f"{args.prompt_tokens}-token prompts ({image_tokens(args.shape)} image tokens), answers of "
            f"1-{args.answer_tokens} tokens; gradient checkpointing "
            f"{'on' if args.gradient_checkpointing else 'off'}, vision tower "
            f"{'frozen' if args.freeze_vision else 'trained'}; {args.rounds} rounds x {args.steps} steps "
            f"after {args.warmup} warm-up; {time.time() - started:.0f} s"
        ),
        "variants": summary,
        "cache_bytes_per_1000_answer_tokens": cache_bytes_per_1000_tokens(VOCAB[args.shape]),
    }
    write_results(args.name, report, markdown(report))


if __name__ == "__main__":
    main()
