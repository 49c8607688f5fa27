"""How fast compiled training drifts from eager training, next to the drift from a change of thread count.

    python benchmarks/compile_divergence.py            # about a minute here

Three copies of the quick config's new teacher (one initialisation) train in lockstep on the same easy-VQA
batches with AdamW (``--learning_rate``, cross-entropy on the labels):

- ``eager``: the reference, with ``--threads`` torch threads;
- ``eager, 1 thread``: the same code with one thread, which only changes the order of float additions;
- ``compiled``: the model through ``torch.compile`` (inductor), ``--threads`` threads.

After each step every copy scores one fixed held-out batch in eval mode; reported is the largest absolute
difference of its logits from the reference's. Float rounding differs between the three from the first step;
training amplifies it (Adam divides each gradient by its own running scale, and batch-norm statistics follow
the weights), so what matters is whether compilation drifts faster than the thread-count change does.

Writes ``benchmarks/results/compile_divergence.{json,md}``.
"""

from __future__ import annotations

import argparse
import copy
import os
import sys
import tempfile
from pathlib import Path

import torch
from results_files import write_results
from torch.nn import functional as F

from hf_msd import MultimodalDataCollator
from hf_msd.experiment import parse_arguments
from hf_msd.experiment.workflow import load_data, new_teacher

ROOT = Path(__file__).resolve().parent.parent
DEFAULT_CONFIG = ROOT / "examples" / "configs" / "quick_easy_vqa.yaml"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config", nargs="?", default=str(DEFAULT_CONFIG), help="A run_msd.py config file.")
    parser.add_argument("--steps", type=int, default=50, help="Optimizer steps.")
    parser.add_argument("--batch_size", type=int, default=32, help="Training batch size.")
    parser.add_argument("--learning_rate", type=float, default=5e-4, help="AdamW learning rate.")
    parser.add_argument("--threads", type=int, default=2, help="Torch threads of the reference and compiled.")
    args = parser.parse_args()
    model_args, data_args, _, training_args = parse_arguments(
        [args.config, "--output_dir", tempfile.mkdtemp(), "--use_cpu", "true"]
    )
    data_args.max_train_samples = args.steps * args.batch_size + 64
    data = load_data(data_args, seed=training_args.seed)
    train = data["train"]
    torch.manual_seed(training_args.seed)
    teacher, processor = new_teacher(
        model_args, train.features["label"].names, "single_label_classification", list(train["question"])
    )
    collator = MultimodalDataCollator.from_model(teacher, processor, max_length=model_args.max_length)
    held_out = collator([train[i] for i in range(64)])
    held_out.pop("labels")
    batches = [
        collator([train[64 + k * args.batch_size + i] for i in range(args.batch_size)])
        for k in range(args.steps)
    ]
    models = {name: copy.deepcopy(teacher) for name in ("eager", "eager, 1 thread", "compiled")}
    callables = {**models, "compiled": torch.compile(models["compiled"])}
    threads = {"eager": args.threads, "eager, 1 thread": 1, "compiled": args.threads}
    optimizers = {
        name: torch.optim.AdamW(model.parameters(), lr=args.learning_rate) for name, model in models.items()
    }
    rows = []
    for step, batch in enumerate(batches, start=1):
        labels = batch.pop("labels")
        logits, losses = {}, {}
        for name, model in models.items():
            torch.set_num_threads(threads[name])
            model.train()
            loss = F.cross_entropy(callables[name](**batch).logits, labels)
            loss.backward()
            optimizers[name].step()
            optimizers[name].zero_grad(set_to_none=True)
            model.eval()
            with torch.no_grad():
                logits[name] = callables[name](**held_out).logits
            losses[name] = loss.item()
        rows.append(
            {
                "step": step,
                "loss": losses,
                "max_logit_difference": {
                    name: (logits[name] - logits["eager"]).abs().max().item()
                    for name in models
                    if name != "eager"
                },
            }
        )
    report = {
        "command": " ".join(["python", "benchmarks/compile_divergence.py", *sys.argv[1:]]),
        "machine": f"{os.cpu_count()} CPU cores, torch {torch.__version__}",
        "settings": vars(args),
        "steps": rows,
    }
    shown = sorted({1, 2, 5, 10, 20, args.steps} & set(range(1, args.steps + 1)))
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}",
        "",
        "| step | max logit difference: eager, 1 thread | compiled | loss: eager / eager, 1 thread / "
        "compiled |",
        "|---:|---:|---:|---|",
    ]
    for row in rows:
        if row["step"] in shown:
            difference, loss = row["max_logit_difference"], row["loss"]
            lines.append(
                f"| {row['step']} | {difference['eager, 1 thread']:.2e} | {difference['compiled']:.2e} | "
                f"{loss['eager']:.4f} / {loss['eager, 1 thread']:.4f} / {loss['compiled']:.4f} |"
            )
    write_results("compile_divergence", report, "\n".join(lines) + "\n")


if __name__ == "__main__":
    main()
