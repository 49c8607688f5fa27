"""Batched `multimodal-classification` pipeline throughput vs calling the model directly.

For each student (the default multimodal student and the text-only student made from the default teacher
by `make_student`, random weights: speed does not depend on them) and each batch size, two workloads run on
the same easy-VQA test examples, interleaved round after round (`hf_msd.evaluation.speed.time_interleaved`,
medians):

- pipeline: `pipe(examples, batch_size=b)` on decoded PIL images and questions: tokenisation, image
  processing, collation, forward and post-processing (softmax, labels) all included;
- model: `model(**batch)` under `torch.no_grad()` on the same examples pre-processed once by the processor
  into batches of `b` (padded per batch, as the pipeline pads).

The ratio pipeline / model is the share of the model's own throughput that serving through `pipeline()`
keeps (target: >= 0.8 for batched calls). Both run with `--threads` torch threads. Results go to
`benchmarks/results/pipeline_throughput.json` and a Markdown table is printed.

    python benchmarks/pipeline_throughput.py [--examples 128] [--batch-sizes 1 8 32] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from pathlib import Path

import torch
from transformers import AutoTokenizer, pipeline

import hf_msd  # noqa: F401  (registers the multimodal-classification task)
from hf_msd.data import load_easy_vqa
from hf_msd.evaluation.speed import time_interleaved
from hf_msd.experiment.workflow import resolve_path
from hf_msd.models import (
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerProcessor,
    default_image_processor,
    default_teacher_config,
    make_student,
)

RESULTS = Path(__file__).resolve().parent / "results" / "pipeline_throughput.json"


def students() -> dict[str, MultimodalTransformerForSequenceClassification]:
    torch.manual_seed(0)
    teacher = MultimodalTransformerForSequenceClassification(default_teacher_config())
    return {
        "text+image student": make_student(teacher).eval(),
        "text-only student": make_student(teacher, modalities=["text"]).eval(),
    }


def measure(model, processor, examples, batch_size: int, rounds: int) -> dict[str, float]:
    modalities = model.config.modalities
    inputs = [{m: example[m] for m in modalities} for example in examples]
    pipe = pipeline("multimodal-classification", model=model, processor=processor, top_k=1)
    batches = []
    for start in range(0, len(inputs), batch_size):
        chunk = inputs[start : start + batch_size]
        kwargs = {}
        if "text" in modalities:
            kwargs["text"] = [item["text"] for item in chunk]
        if "image" in modalities:
            kwargs["images"] = [item["image"] for item in chunk]
        batches.append(dict(processor(**kwargs, return_tensors="pt")))

    def run_model() -> None:
        with torch.no_grad():
            for batch in batches:
                model(**batch)

    # One untimed warm-up round, then interleaved rounds; examples per second from the median round.
    seconds = time_interleaved(
        {"pipeline": lambda: pipe(inputs, batch_size=batch_size), "model": run_model}, rounds=rounds
    )
    rates = {name: len(inputs) / statistics.median(values) for name, values in seconds.items()}
    return {
        "pipeline_examples_per_second": rates["pipeline"],
        "model_examples_per_second": rates["model"],
        "ratio": rates["pipeline"] / rates["model"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--examples", type=int, default=128, help="easy-VQA test examples per workload.")
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[1, 8, 32])
    parser.add_argument("--rounds", type=int, default=3, help="Timed interleaved rounds (median reported).")
    parser.add_argument(
        "--threads", type=int, default=1, help="torch threads (1: steadier on a machine shared with others)."
    )
    parser.add_argument("--output", type=Path, default=RESULTS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    test = load_easy_vqa(max_samples={"test": args.examples})["test"]
    examples = [{"image": row["image"].convert("RGB"), "text": row["question"]} for row in test]
    tokenizer = AutoTokenizer.from_pretrained(resolve_path("minilm"))
    processor = MultimodalTransformerProcessor(default_image_processor(), tokenizer)

    started = time.time()
    rows = []
    for name, model in students().items():
        for batch_size in args.batch_sizes:
            result = measure(model, processor, examples, batch_size, args.rounds)
            rows.append({"model": name, "batch_size": batch_size, **result})
            print(
                f"{name:<20} batch {batch_size:>3}: "
                f"pipeline {result['pipeline_examples_per_second']:8.1f} ex/s, "
                f"model {result['model_examples_per_second']:8.1f} ex/s, ratio {result['ratio']:.2f}",
                flush=True,
            )
    sizes = " ".join(map(str, args.batch_sizes))
    report = {
        "command": "python benchmarks/pipeline_throughput.py "
        f"--examples {args.examples} --batch-sizes {sizes} --rounds {args.rounds} --threads {args.threads}",
        "machine": {
            "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
        },
        "examples": len(examples),
        "rounds": args.rounds,
        "seconds": round(time.time() - started, 1),
        "results": rows,
    }
    args.output.parent.mkdir(parents=True, exist_ok=True)
    args.output.write_text(json.dumps(report, indent=2) + "\n")
    print()
    print("| model | batch size | pipeline (ex/s) | model (ex/s) | pipeline / model |")
    print("|---|---:|---:|---:|---:|")
    for row in rows:
        print(
            f"| {row['model']} | {row['batch_size']} | {row['pipeline_examples_per_second']:.1f} | "
            f"{row['model_examples_per_second']:.1f} | {row['ratio']:.2f} |"
        )
    print(f"\nwritten to {args.output}")


if __name__ == "__main__":
    main()
