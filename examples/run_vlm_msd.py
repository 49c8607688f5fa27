#!/usr/bin/env python
"""Modality-specific distillation of a generative vision-language model (image-text-to-text) on easy-VQA.

    python examples/run_vlm_msd.py examples/configs/vlm_easy_vqa.yaml [--key value ...]

easy-VQA as generation ("what shape is in the image?" -> "circle"): a tiny LLaVA-style teacher (CLIP
vision tower, projector, Llama language model, built from configs with a word-level tokenizer of the easy-VQA
vocabulary; nothing downloads) is trained on every training label, then a smaller student of the same family
is trained with labels on ``label_fraction`` of the training questions by

- ``labels``: the labelled questions only (the model's own loss);
- ``kd``: :class:`hf_msd.trainers.DistillationTrainer`, per-token KD on every question's answer (the
  teacher's greedy answer where there is no label) plus the labels;
- ``msd``: :class:`hf_msd.trainers.MSDTrainer`, KD plus the per-token KD on the question alone and on the
  image with an empty question (:class:`hf_msd.data.VisionLanguageCollator`).

Every student gets the same number of optimizer steps. Accuracy is the exact match of the greedy answer on
the test questions, with image + question, with the question alone and with the image alone, overall and per
question type. With ``cache_teacher_outputs: true`` the teacher's answer-token distributions on the three
inputs are computed once per seed (:func:`hf_msd.teacher_outputs.cache.precompute_teacher_outputs`,
``cache_top_k``
tokens per answer token, all of them when null) and the KD and MSD students read them instead of running the
teacher. The last seed's student of each method is saved with its processor and a model card
(``pipeline_tag: image-text-to-text``), ready for ``pipeline("image-text-to-text", model=folder)``; the
results go to ``<output_dir>/results.json`` and ``results.md``. Config keys: see
``examples/configs/vlm_easy_vqa.yaml``; ``--key value`` overrides one (YAML syntax, e.g. ``--seeds [0]``).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import time
from typing import Any

import torch
import yaml
from huggingface_hub import ModelCard, ModelCardData
from transformers import Trainer, TrainingArguments

from hf_msd.data import VisionLanguageCollator, easy_vqa_answers, easy_vqa_question_types, load_easy_vqa
from hf_msd.data.splits import keep_labels_on_subset
from hf_msd.models.vision_language import llava_processor, tiny_llava, word_level_tokenizer
from hf_msd.teacher_outputs.cache import precompute_teacher_outputs
from hf_msd.trainers import (
    DistillationTrainer,
    DistillationTrainingArguments,
    MSDTrainer,
    MSDTrainingArguments,
)

METHODS = ("labels", "kd", "msd")
#: The inputs accuracy is measured on: image + question, the question alone, the image alone.
VIEWS = {"image+text": None, "text only": "text", "image only": "image"}


def load_config(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    known, rest = parser.parse_known_args(argv)
    with open(known.config) as handle:
        config = yaml.safe_load(handle)
    for key, value in zip(rest[::2], rest[1::2]):
        name = key.lstrip("-")
        if name not in config:
            raise SystemExit(f"Unknown option --{name}; the config's keys: {sorted(config)}.")
        config[name] = yaml.safe_load(value)
    unknown = set(config["methods"]) - set(METHODS)
    if unknown:
        raise SystemExit(f"--methods: unknown {sorted(unknown)}; choose among {list(METHODS)}.")
    return config


def words_of(text: str) -> list[str]:
    """The word-level tokenizer's split: words and punctuation."""
    return re.findall(r"\w+|[^\w\s]+", text)


def load_data(config: dict) -> tuple:
    """``(train, test, vocabulary)``: easy-VQA rows ``{image, question, answer}`` (answer strings)."""
    limits = {"train": config["train_samples"], "validation": 1, "test": config["test_samples"]}
    data = load_easy_vqa(max_samples=limits, seed=config["data_seed"])
    names = easy_vqa_answers()

    def as_text(row):
        return {"answer": names[row["label"]]}

    train = data["train"].map(as_text).remove_columns(["image_id"])
    test = data["test"].map(as_text).remove_columns(["image_id"])
    words = {w for split in (train, test) for q in split["question"] for w in words_of(q)} | set(names)
    return train, test, sorted(words)


@torch.no_grad()
def generate_answers(
    model, collator: VisionLanguageCollator, rows, view: str | None, batch_size: int
) -> list:
    """The model's greedy answer (decoded, stripped) to every row on ``view``."""
    model.eval()
    tokenizer = collator.tokenizer
    answers = []
    for start in range(0, len(rows), batch_size):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        inputs = collator.generation_inputs(batch, view=view)
        output = model.generate(**inputs, max_new_tokens=3, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :]
        answers += [text.strip() for text in tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def accuracy(model, collator, test, batch_size: int) -> dict[str, dict[str, float]]:
    """Exact-match accuracy per view, overall and per question type (``{view: {"all": ..., type: ...}}``)."""
    types = {answer: kind for kind, answers in easy_vqa_question_types().items() for answer in answers}
    gold = test["answer"]
    results = {}
    for name, view in VIEWS.items():
        predicted = generate_answers(model, collator, test, view, batch_size)
        hits = [p == g for p, g in zip(predicted, gold)]
        scores = {"all": sum(hits) / len(hits)}
        for kind in ("yes/no", "shape", "color"):
            mine = [h for h, g in zip(hits, gold) if types[g] == kind]
            scores[kind] = sum(mine) / max(len(mine), 1)
        results[name] = scores
    return results


def training_arguments(config: dict, output_dir: str, seed: int, args_class=TrainingArguments, **extra):
    return args_class(
        output_dir=output_dir,
        per_device_train_batch_size=config["batch_size"],
        learning_rate=config["learning_rate"],
        lr_scheduler_type="constant_with_warmup",
        warmup_steps=10,
        weight_decay=0.0,
        logging_steps=50,
        save_strategy="no",
        report_to=[],
        use_cpu=True,
        disable_tqdm=not config["progress"],
        remove_unused_columns=False,
        dataloader_num_workers=0,
        seed=seed,
        **extra,
    )


def train_teacher(config: dict, processor, train) -> torch.nn.Module:
    teacher = tiny_llava(processor, **config["teacher"], seed=config["data_seed"])
    args = training_arguments(
        config,
        os.path.join(config["output_dir"], "teacher"),
        config["data_seed"],
        num_train_epochs=config["teacher_epochs"],
    )
    Trainer(
        model=teacher,
        args=args,
        train_dataset=train,
        data_collator=VisionLanguageCollator(processor, views=False),
    ).train()
    return teacher.eval()


def train_student(config: dict, method: str, processor, teacher, train, seed: int):
    """``(trainer, seconds per optimizer step)`` of one student."""
    student = tiny_llava(processor, **config["student"], seed=1000 + seed)
    output_dir = os.path.join(config["output_dir"], f"{method}_seed{seed}")
    common = dict(
        max_steps=config["student_steps"],
        temperature=config["temperature"],
        hard_label_weight=1.0,
        kd_loss_weight=0.0 if method == "labels" else 1.0,
        lmbda=0.0 if method == "labels" else config["lmbda"],
        max_new_tokens=config["max_new_tokens"],
    )
    collator = VisionLanguageCollator(processor, views=method == "msd")
    if method == "msd":
        args = training_arguments(
            config,
            output_dir,
            seed,
            MSDTrainingArguments,
            modality_loss_weight=config["modality_loss_weight"],
            modality_weighting=config["modality_weighting"],
            saliency_batch_size=config["batch_size"],
            **common,
        )
        trainer_class = MSDTrainer
    else:
        args = training_arguments(config, output_dir, seed, DistillationTrainingArguments, **common)
        trainer_class = DistillationTrainer
    data = train.filter(lambda row: row["answer"] is not None) if method == "labels" else train
    trainer = trainer_class(
        model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=collator
    )
    start = time.perf_counter()
    trainer.train()
    seconds = (time.perf_counter() - start) / config["student_steps"]
    return trainer, seconds


def save_student(trainer, processor, output_dir: str, method: str, results: dict, config: dict) -> None:
    """The student, its processor and a model card, loadable by ``pipeline("image-text-to-text", ...)``."""
    trainer.model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    rows = [
        f"| {view} | " + " | ".join(f"{scores[k]:.3f}" for k in ("all", "yes/no", "shape", "color")) + " |"
        for view, scores in results.items()
    ]
    card = ModelCard.from_template(
        ModelCardData(
            pipeline_tag="image-text-to-text",
            library_name="transformers",
            license="apache-2.0",
            tags=["hf_msd", "distillation", method, "llava"],
        ),
        template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
        body=(
            f"# easy-VQA {method} student\n\nA tiny LLaVA-style student (CLIP vision tower, projector, Llama "
            f"language model) distilled with `hf_msd` ({method}) from a larger LLaVA-style teacher on "
            "easy-VQA as "
            f"generation, with labels on {config['label_fraction']:.0%} of the training questions.\n\n"
            "## Results (exact match of the greedy answer, test subset)\n\n"
            "| input | all | yes/no | shape | color |\n|---|---|---|---|---|\n" + "\n".join(rows) + "\n\n"
            "## Use\n\n```python\nfrom transformers import pipeline\n\n"
            f'vqa = pipeline("image-text-to-text", model="{output_dir}")\n'
            'chat = [{"role": "user", "content": [{"type": "image", "image": image}, '
            '{"type": "text", "text": "what shape is in the image?"}]}]\n'
            "vqa(text=chat, max_new_tokens=3, return_full_text=False)\n```\n"
        ),
    )
    card.save(os.path.join(output_dir, "README.md"))


def summarise(runs: list[dict]) -> dict:
    """Mean and standard deviation over seeds of every accuracy and of the step time, per method."""
    summary = {}
    for method in dict.fromkeys(run["method"] for run in runs):
        mine = [run for run in runs if run["method"] == method]

        def stats(values):
            return {
                "mean": statistics.fmean(values),
                "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            }

        summary[method] = {
            "accuracy": {
                view: {k: stats([r["accuracy"][view][k] for r in mine]) for k in mine[0]["accuracy"][view]}
                for view in mine[0]["accuracy"]
            },
            "seconds_per_step": stats([r["seconds_per_step"] for r in mine]),
        }
    return summary


def markdown(config: dict, teacher: dict, summary: dict, command: str, machine: dict) -> str:
    lines = [
        "# Generative MSD on easy-VQA (tiny LLaVA-style models)",
        "",
        f"Command: `{command}`",
        "",
        f"Machine: {machine['cpu_count']} CPU cores, {machine['torch_threads']} torch thread(s);"
        " s/step is the wall time of one optimizer step, "
        + (
            f"teacher outputs cached (top {config['cache_top_k'] or 'all'} per answer token; computed once"
            " per seed before training, not counted)."
            if config["cache_teacher_outputs"]
            else "teacher online (no cache)."
        ),
        "",
        f"Labels on {config['label_fraction']:.0%} of {config['train_samples']} training questions; "
        f"{config['test_samples']} test questions; seeds {config['seeds']}; {config['student_steps']} "
        "optimizer steps "
        f"of batch {config['batch_size']} per student. Exact match of the greedy answer; mean ± std over "
        "seeds.",
        "",
        "| method | input | all | yes/no | shape | color | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    rows = [
        (
            "teacher",
            {"accuracy": {v: {k: {"mean": x, "std": 0.0} for k, x in s.items()} for v, s in teacher.items()}},
        )
    ]
    for method, result in [*rows, *summary.items()]:
        for view, scores in result["accuracy"].items():
            cells = " | ".join(
                f"{scores[k]['mean']:.3f} ± {scores[k]['std']:.3f}"
                for k in ("all", "yes/no", "shape", "color")
            )
            step = result.get("seconds_per_step")
            timing = f"{step['mean']:.3f}" if step and view == "image+text" else ""
            lines.append(f"| {method} | {view} | {cells} | {timing} |")
    return "\n".join(lines) + "\n"


def run(config: dict, command: str) -> dict:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.makedirs(config["output_dir"], exist_ok=True)
    train, test, words = load_data(config)
    processor = llava_processor(word_level_tokenizer(words), config["image_size"], config["patch_size"])
    start = time.perf_counter()
    teacher = train_teacher(config, processor, train)
    teacher_seconds = time.perf_counter() - start
    collator = VisionLanguageCollator(processor, views=False)
    teacher_accuracy = accuracy(teacher, collator, test, config["eval_batch_size"])
    print(json.dumps({"teacher": teacher_accuracy}), flush=True)
    runs = []
    for seed in config["seeds"]:
        labelled = keep_labels_on_subset(
            train, fraction=config["label_fraction"], seed=seed, label_column="answer"
        )
        needs_teacher_answers = any(m != "labels" for m in config["methods"])
        if needs_teacher_answers:
            teacher_answers = generate_answers(teacher, collator, train, None, config["eval_batch_size"])
            labelled = labelled.add_column("teacher_answer", teacher_answers)
        distilled = labelled
        if needs_teacher_answers and config["cache_teacher_outputs"]:
            distilled = precompute_teacher_outputs(
                teacher,
                labelled,
                data_collator=VisionLanguageCollator(processor),
                top_k=config["cache_top_k"],
                batch_size=config["eval_batch_size"],
                cache_dir=os.path.join(config["output_dir"], "teacher_outputs"),
            )
        for method in config["methods"]:
            data = labelled if method == "labels" else distilled
            trainer, seconds = train_student(config, method, processor, teacher, data, seed)
            scores = accuracy(trainer.model, collator, test, config["eval_batch_size"])
            runs.append({"method": method, "seed": seed, "accuracy": scores, "seconds_per_step": seconds})
            print(json.dumps(runs[-1]), flush=True)
            if seed == config["seeds"][-1]:
                folder = os.path.join(config["output_dir"], f"student_{method}")
                save_student(trainer, processor, folder, method, scores, config)
    summary = summarise(runs)
    result = {
        "command": command,
        "config": config,
        "machine": {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "teacher": {"accuracy": teacher_accuracy, "training_seconds": teacher_seconds},
        "runs": runs,
        "summary": summary,
    }
    with open(os.path.join(config["output_dir"], "results.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    with open(os.path.join(config["output_dir"], "results.md"), "w") as handle:
        handle.write(markdown(config, teacher_accuracy, summary, command, result["machine"]))
    return result


def main(argv: list[str]) -> None:
    run(load_config(argv), "python examples/run_vlm_msd.py " + " ".join(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
