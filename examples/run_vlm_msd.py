#!/usr/bin/env python
"""Modality-specific distillation of a generative vision-language model (image-text-to-text) on easy-VQA.

    python examples/run_vlm_msd.py examples/configs/vlm_easy_vqa.yaml [--key value ...]

easy-VQA as generation ("what shape is in the image?" -> "circle") with tiny vision-language models of one
``family`` (``llava``: CLIP tower, projector, Llama; ``idefics3``: SigLIP-like tower, pixel-shuffle connector,
Llama; ``qwen2_vl``: Qwen2-VL's vision transformer and merger, Qwen2), built from configs with a word-level
tokenizer of the easy-VQA vocabulary; nothing downloads. Which module is each family's tower, projector and
language model: :data:`hf_msd.models.vision_language_parts.VLM_LAYOUTS`.

The teacher is built in three stages, as LLaVA is (``docs/generative.md``):

1. ``tower_*``: the vision tower alone, trained as a classifier of the image's shape and colour (read off the
   training questions' answers) on the mean of its last-layer patch tokens
   (:func:`hf_msd.models.vision_tower_pretraining.pretrain_vision_tower`);
2. ``align_*``: the projector alone (tower and language model frozen) on the describing questions ("what
   shape ...", "what color ...");
3. ``instruct_*``: the projector and the language model (tower frozen) on every training question.

With ``teacher_path`` (a teacher saved by an earlier run, ``<its output_dir>/teacher``) the stages are skipped
and that teacher and its processor are loaded instead (its family must be ``family``).

Students (:func:`hf_msd.models.vision_language_students.vision_language_student`) are the teacher with
``student_language_layers`` of its language-model layers, with the teacher's vision tower (``vision_tower:
teacher``) or a freshly initialised one (``random``, the control), trained for ``student_steps`` optimizer
steps with labels on ``label_fraction`` of the training questions by each arm of :data:`ARMS`. Every model
is scored on three inputs (:func:`hf_msd.evaluation.vision_language.three_input_accuracy`): image + question,
the question alone, and another row's image (a seeded derangement of the test images), overall and per
question type. Results: ``<output_dir>/results.json`` and ``results.md``; the teacher is saved with its
processor in ``<output_dir>/teacher`` and the last seed's students in ``<output_dir>/student_<run>``. Config
keys: see ``examples/configs/vlm_easy_vqa.yaml``; ``--key value`` overrides one (YAML, e.g. ``--seeds [0]``).
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
import transformers
import yaml
from huggingface_hub import ModelCard, ModelCardData
from transformers import Trainer, TrainingArguments

from hf_msd.data import VisionLanguageCollator, easy_vqa_answers, easy_vqa_question_types, load_easy_vqa
from hf_msd.data.splits import keep_labels_on_subset, select_subset
from hf_msd.evaluation.vision_language import (
    INPUTS,
    SwappedImages,
    generate_answers,
    group_derangement,
    three_input_accuracy,
)
from hf_msd.models.vision_language import VLM_FAMILIES, load_vlm, saved_family, tiny_vlm, vlm_processor
from hf_msd.models.vision_language_parts import image_rows, set_trainable_parts, tower_classifier
from hf_msd.models.vision_language_students import VISION_TOWERS, vision_language_student
from hf_msd.models.vision_tower_pretraining import image_attribute_labels, pretrain_vision_tower
from hf_msd.teacher_outputs.cache import precompute_teacher_outputs
from hf_msd.teacher_outputs.full_input_targets import with_full_input_targets
from hf_msd.trainers import (
    DistillationTrainer,
    DistillationTrainingArguments,
    MSDTrainer,
    MSDTrainingArguments,
)

#: Each arm: its MSDTrainingArguments extras, None for DistillationTrainer. ``labels`` trains on the labelled
#: questions only; ``kd`` is plain KD; the others are MSDTrainer: MSD, KD on the modality views with the
#: teacher's full-input targets (``KD(T(x), S(x_m))``: the cached view outputs replaced by the full input's,
#: :func:`~hf_msd.teacher_outputs.full_input_targets.with_full_input_targets`, with MSD's weights), and one
#: MSD term at a time.
ARMS = {
    "labels": None,
    "kd": None,
    "msd": {},
    "kd_full_target": {},
    "msd_text": {"modality_terms": ["text"]},
    "msd_image": {"modality_terms": ["image"]},
}
#: The attributes the vision tower is pretrained to name, as easy-VQA question types.
ATTRIBUTES = ("shape", "color")
QUESTION_TYPES = ("yes/no", "shape", "color")
#: Keys an older config may lack, with their defaults.
DEFAULTS = {"family": "llava", "teacher_path": None}


def load_config(argv: list[str]) -> dict[str, Any]:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("config")
    known, rest = parser.parse_known_args(argv)
    with open(known.config) as handle:
        config = {**DEFAULTS, **yaml.safe_load(handle)}
    for key, value in zip(rest[::2], rest[1::2]):
        name = key.lstrip("-")
        if name not in config:
            raise SystemExit(f"Unknown option --{name}; the config's keys: {sorted(config)}.")
        config[name] = yaml.safe_load(value)
    check_family(config)
    for group in config["students"]:
        unknown = set(group["arms"]) - set(ARMS)
        if unknown:
            raise SystemExit(f"--students: unknown arm(s) {sorted(unknown)}; choose among {list(ARMS)}.")
        if group["vision_tower"] not in VISION_TOWERS:
            raise SystemExit(
                f"--students: vision_tower {group['vision_tower']!r} is unknown; choose one of "
                f"{list(VISION_TOWERS)}."
            )
        if not 0 < group["label_fraction"] <= 1:
            raise SystemExit(f"--students: label_fraction must be in (0, 1], got {group['label_fraction']}.")
        if "kd_full_target" in group["arms"]:
            check_full_target(config, group["arms"])
    return config


def check_family(config: dict) -> None:
    """``family`` is a known family, and a ``teacher_path`` holds a saved model of that family."""
    if config["family"] not in VLM_FAMILIES:
        raise SystemExit(f"--family: {config['family']!r} is unknown; choose one of {list(VLM_FAMILIES)}.")
    path = config["teacher_path"]
    if path is None:
        return
    if not os.path.isfile(os.path.join(path, "config.json")):
        raise SystemExit(
            f"--teacher_path: no saved model in {path!r} (no config.json); give the teacher folder of an "
            "earlier run (<output_dir>/teacher) or null to train the teacher."
        )
    found = saved_family(path)
    if found != config["family"]:
        raise SystemExit(
            f"--teacher_path: {path!r} holds a {found} teacher but --family is {config['family']}; set "
            f"--family {found} or give a {config['family']} teacher."
        )


def check_full_target(config: dict, arms: list[str]) -> None:
    """``kd_full_target`` reads the full input's cached outputs in place of each view's, with MSD's weights:
    it needs the cache, and, with population weights, an MSD arm before it (whose saliency it takes)."""
    if not config["cache_teacher_outputs"]:
        raise SystemExit("--students: the arm kd_full_target needs --cache_teacher_outputs true.")
    if config["modality_weighting"] not in ("uniform", "population"):
        raise SystemExit(
            "--students: the arm kd_full_target takes --modality_weighting uniform or population, got "
            f"{config['modality_weighting']!r} (per-example weights would come from the replaced targets)."
        )
    before = arms[: arms.index("kd_full_target")]
    if config["modality_weighting"] == "population" and not any(ARMS.get(arm) is not None for arm in before):
        raise SystemExit(
            "--students: list an MSD arm (msd, msd_text or msd_image) before kd_full_target in its group: "
            "kd_full_target uses that arm's population saliency as its weights."
        )


def words_of(text: str) -> list[str]:
    """The word-level tokenizer's split: words and punctuation."""
    return re.findall(r"\w+|[^\w\s]+", text)


def load_data(config: dict) -> tuple:
    """``(images, train, validation, test, vocabulary)``: easy-VQA rows ``{image, question, answer,
    image_id}``; ``images``: ``tower_samples`` training questions (null: all), whose images and answers the
    vision tower learns from; ``train``: the ``train_samples`` questions the rest of the teacher and the
    students train on."""
    limits = {"validation": config["validation_samples"], "test": config["test_samples"]}
    data = load_easy_vqa(max_samples=limits, seed=config["data_seed"])
    names = easy_vqa_answers()
    full, validation, test = [
        data[name].map(lambda row: {"answer": names[row["label"]]}).remove_columns(["label"])
        for name in ("train", *limits)
    ]
    train = select_subset(full, config["train_samples"], seed=config["data_seed"])
    images = select_subset(full, config["tower_samples"], seed=config["data_seed"])
    words = {w for split in (full, test) for q in split["question"] for w in words_of(q)} | set(names)
    return images, train, validation, test, sorted(words)


def training_arguments(config: dict, output_dir: str, seed: int, args_class=TrainingArguments, **extra):
    extra.setdefault("learning_rate", config["learning_rate"])
    return args_class(
        output_dir=output_dir,
        per_device_train_batch_size=config["batch_size"],
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


def image_attributes(rows, processor, family: str) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """One row of pixels per image of ``rows`` (``family``'s image processor's) and its shape / colour labels
    (-100 where unknown)."""
    types = easy_vqa_question_types()
    labels = image_attribute_labels(rows["image_id"], rows["answer"], {a: types[a] for a in ATTRIBUTES})
    first = {}
    for index, image_id in enumerate(rows["image_id"]):
        first.setdefault(image_id, index)
    images = list(rows.select([first[i] for i in labels])["image"])
    pixels = image_rows(family, processor.image_processor, images)
    return pixels, {a: torch.tensor([labels[i][a] for i in labels]) for a in ATTRIBUTES}


def train_tower(config: dict, teacher, processor, images, validation) -> dict:
    """Teacher stage 1: ``teacher``'s vision tower trained in place as a shape + colour classifier of the
    images of ``images``; returns its seconds and its accuracy per attribute on ``validation``'s images."""
    family = config["family"]
    start = time.perf_counter()
    types = easy_vqa_question_types()
    classifier = tower_classifier(teacher, {a: len(types[a]) for a in ATTRIBUTES})
    pixels, labels = image_attributes(images, processor, family)
    pretrain_vision_tower(
        classifier,
        pixels,
        labels,
        epochs=config["tower_epochs"],
        learning_rate=config["tower_learning_rate"],
        batch_size=config["batch_size"],
        seed=config["data_seed"],
    )
    return {
        "seconds": time.perf_counter() - start,
        "validation_accuracy": classifier.accuracy(*image_attributes(validation, processor, family)),
    }


def train_teacher(config: dict, processor, images, train, validation) -> tuple[torch.nn.Module, dict]:
    """The three teacher stages; returns the teacher and each stage's seconds and validation figures."""
    family = config["family"]
    teacher = tiny_vlm(family, processor, **config["teacher"], seed=config["data_seed"])
    report = {"tower": train_tower(config, teacher, processor, images, validation)}
    print(json.dumps({"teacher stage": "tower", **report["tower"]}), flush=True)
    types = easy_vqa_question_types()
    folder = os.path.join(config["output_dir"], "teacher")
    collator = VisionLanguageCollator(processor, views=False)
    describing = train.filter(lambda row: row["answer"] not in types["yes/no"])
    stages = {
        "align": (("projector",), describing),
        "instruct": (("projector", "language_model"), train),
    }
    for stage, (parts, data) in stages.items():
        start = time.perf_counter()
        set_trainable_parts(teacher, parts)
        args = training_arguments(
            config,
            folder,
            config["data_seed"],
            num_train_epochs=config[f"{stage}_epochs"],
            learning_rate=config[f"{stage}_learning_rate"],
        )
        Trainer(model=teacher, args=args, train_dataset=data, data_collator=collator).train()
        report[stage] = {"seconds": time.perf_counter() - start}
        print(json.dumps({"teacher stage": stage, **report[stage]}), flush=True)
    teacher.requires_grad_(False)
    return teacher.eval(), report


def train_student(config: dict, arm: str, group: dict, processor, teacher, train, seed: int, saliency=None):
    """``(trainer, seconds per optimizer step)`` of one student; ``saliency``: the population saliency an MSD
    trainer uses instead of computing it from ``train``."""
    student = vision_language_student(
        teacher,
        language_layers_to_keep=config["student_language_layers"],
        vision_tower=group["vision_tower"],
        freeze_vision_tower=config["freeze_student_vision_tower"],
        seed=1000 + seed,
    )
    output_dir = os.path.join(config["output_dir"], f"{run_name(arm, group)}_seed{seed}")
    common = dict(
        max_steps=config["student_steps"],
        temperature=config["temperature"],
        hard_label_weight=1.0,
        kd_loss_weight=0.0 if arm == "labels" else 1.0,
        lmbda=0.0 if arm == "labels" else config["lmbda"],
        max_new_tokens=config["max_new_tokens"],
    )
    msd_options = ARMS[arm]
    collator = VisionLanguageCollator(processor, views=msd_options is not None)
    if msd_options is not None:
        args = training_arguments(
            config,
            output_dir,
            seed,
            MSDTrainingArguments,
            modality_loss_weight=config["modality_loss_weight"],
            modality_weighting=config["modality_weighting"],
            saliency_batch_size=config["eval_batch_size"],
            **msd_options,
            **common,
        )
        trainer_class = MSDTrainer
    else:
        args = training_arguments(config, output_dir, seed, DistillationTrainingArguments, **common)
        trainer_class = DistillationTrainer
    data = train.filter(lambda row: row["answer"] is not None) if arm == "labels" else train
    trainer = trainer_class(
        model=student, teacher_model=teacher, args=args, train_dataset=data, data_collator=collator
    )
    if saliency is not None:
        trainer.weighting.set_population_saliency(saliency)
    start = time.perf_counter()
    trainer.train()
    seconds = (time.perf_counter() - start) / config["student_steps"]
    return trainer, seconds


def run_name(arm: str, group: dict) -> str:
    """``<arm>-<vision tower>_tower-<label percentage>pct``, e.g. ``msd-teacher_tower-2pct``."""
    return f"{arm}-{group['vision_tower']}_tower-{100 * group['label_fraction']:g}pct"


def score_table(results: dict[str, dict[str, float]]) -> list[str]:
    return [
        f"| {name} | " + " | ".join(f"{scores[k]:.3f}" for k in ("all", *QUESTION_TYPES)) + " |"
        for name, scores in results.items()
    ]


def save_student(
    trainer, processor, output_dir: str, name: str, results: dict, group: dict, family: str
) -> None:
    """The student, its processor and a model card, loadable by ``pipeline("image-text-to-text", ...)``."""
    trainer.model.save_pretrained(output_dir)
    processor.save_pretrained(output_dir)
    processor_class = type(processor).__name__
    processor_module = type(processor).__module__
    if hasattr(transformers, processor_class):
        processor_module = "transformers"
    card = ModelCard.from_template(
        ModelCardData(
            pipeline_tag="image-text-to-text",
            library_name="transformers",
            license="apache-2.0",
            tags=["hf_msd", "distillation", name.split("-")[0], family],
        ),
        template_str="---\n{{ card_data }}\n---\n\n{{ body }}\n",
        body=(
            f"# easy-VQA student {name}\n\nA tiny `{family}` student (vision tower, projector, language "
            f"model) distilled with `hf_msd` from a larger `{family}` teacher on easy-VQA as generation, "
            f"with labels on {group['label_fraction']:.0%} of the training questions and the "
            f"{group['vision_tower']} vision tower.\n\n"
            "## Results (exact match of the greedy answer, test subset)\n\n"
            "| input | all | yes/no | shape | color |\n|---|---|---|---|---|\n"
            + "\n".join(score_table(results))
            + "\n\n## Use\n\n```python\nfrom transformers import pipeline\n"
            f"from {processor_module} import {processor_class}\n\n"
            f'processor = {processor_class}.from_pretrained("{output_dir}")\n'
            f'vqa = pipeline("image-text-to-text", model="{output_dir}", processor=processor)\n'
            'chat = [{"role": "user", "content": [{"type": "image", "image": image}, '
            '{"type": "text", "text": "what shape is in the image?"}]}]\n'
            "vqa(text=chat, max_new_tokens=3, return_full_text=False)\n```\n"
        ),
    )
    card.save(os.path.join(output_dir, "README.md"))


def summarise(runs: list[dict]) -> dict:
    """Per run name: mean and standard deviation over seeds of every accuracy and of the step time."""
    summary = {}
    for name in dict.fromkeys(run["run"] for run in runs):
        mine = [run for run in runs if run["run"] == name]

        def stats(values):
            return {
                "mean": statistics.fmean(values),
                "std": statistics.pstdev(values) if len(values) > 1 else 0.0,
            }

        first = mine[0]["accuracy"]
        summary[name] = {
            "accuracy": {
                view: {k: stats([r["accuracy"][view][k] for r in mine]) for k in first[view]}
                for view in first
            },
            "seconds_per_step": stats([r["seconds_per_step"] for r in mine]),
        }
    return summary


def teacher_line(config: dict, stages: dict) -> str:
    """Where the teacher comes from: each stage's time, or the ``teacher_path`` it was loaded from."""
    if not stages:
        return f"Teacher: loaded from `{config['teacher_path']}` (no teacher stage run)."
    tower = stages["tower"]["validation_accuracy"]
    return (
        f"Teacher stages: vision tower {stages['tower']['seconds']:.0f} s (validation images: shape "
        f"{tower['shape']:.3f}, colour {tower['color']:.3f}), projector alignment "
        f"{stages['align']['seconds']:.0f} s, instruction tuning {stages['instruct']['seconds']:.0f} s."
    )


def markdown(config: dict, result: dict) -> str:
    machine, teacher, summary = result["machine"], result["teacher"], result["summary"]
    lines = [
        f"# Generative MSD on easy-VQA (tiny `{config['family']}` models)",
        "",
        f"Command: `{result['command']}`",
        "",
        f"Machine: {machine['cpu_count']} CPU cores, {machine['torch_threads']} torch thread(s); "
        f"wall clock of the whole run {result['seconds'] / 60:.1f} min. s/step is the wall time of one "
        "student optimizer step, "
        + (
            f"teacher outputs cached (top {config['cache_top_k'] or 'all'}"
            " per answer token; computed once per seed and label fraction before training, not counted)."
            if config["cache_teacher_outputs"]
            else "teacher online (no cache)."
        ),
        "",
        teacher_line(config, teacher["stages"]),
        "",
        f"{config['train_samples']} training questions; {config['test_samples']} test questions; seeds "
        f"{config['seeds']}; {config['student_steps']} optimizer steps of batch {config['batch_size']} per "
        "student. Exact match of the greedy answer; mean ± std over seeds. Inputs: image + question, the "
        "question alone, another test row's image with the question (a fixed seeded derangement).",
        "",
        "| model | input | all | yes/no | shape | color | s/step |",
        "|---|---|---|---|---|---|---|",
    ]
    for view, scores in teacher["accuracy"].items():
        cells = " | ".join(f"{scores[k]:.3f}" for k in ("all", *QUESTION_TYPES))
        lines.append(f"| teacher | {view} | {cells} | |")
    for name, row in summary.items():
        for view, scores in row["accuracy"].items():
            cells = " | ".join(
                f"{scores[k]['mean']:.3f} ± {scores[k]['std']:.3f}" for k in ("all", *QUESTION_TYPES)
            )
            timing = f"{row['seconds_per_step']['mean']:.3f}" if view == "image+question" else ""
            lines.append(f"| {name} | {view} | {cells} | {timing} |")
    lines += ["", "Per seed (all questions; image + question / question only / swapped image):", ""]
    lines += ["| run | seed | image+question | question only | swapped image | shape | color |"]
    lines += ["|---|---|---|---|---|---|---|"]
    for run in result["runs"]:
        scores = run["accuracy"]
        lines.append(
            f"| {run['run']} | {run['seed']} | "
            + " | ".join(f"{scores[view]['all']:.3f}" for view in INPUTS)
            + f" | {scores['image+question']['shape']:.3f} | {scores['image+question']['color']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def write_results(config: dict, result: dict, run_start: float) -> str:
    """Summarise the runs so far into ``result`` and write ``results.json`` and ``results.md``; returns the
    markdown."""
    result["summary"] = summarise(result["runs"])
    result["seconds"] = time.perf_counter() - run_start
    with open(os.path.join(config["output_dir"], "results.json"), "w") as handle:
        json.dump(result, handle, indent=2)
    table = markdown(config, result)
    with open(os.path.join(config["output_dir"], "results.md"), "w") as handle:
        handle.write(table)
    return table


def remove_empty_folders(root: str) -> None:
    for folder, _, _ in sorted(os.walk(root), key=lambda entry: -len(entry[0])):
        if folder != root and not os.listdir(folder):
            os.rmdir(folder)


def build_teacher(config: dict, images, train, validation, words: list[str]) -> tuple:
    """``(teacher, processor, stage report)``: the teacher of ``teacher_path`` and its processor (no stage
    runs), or a ``family`` processor on ``words`` and the teacher of the three stages; either is saved with
    its processor in ``<output_dir>/teacher``."""
    folder = os.path.join(config["output_dir"], "teacher")
    path = config["teacher_path"]
    if path is not None:
        teacher, processor = load_vlm(path, config["family"])
        teacher.requires_grad_(False)
        teacher.eval()
        stages = {}
    else:
        processor = vlm_processor(config["family"], words, config["image_size"], config["patch_size"])
        teacher, stages = train_teacher(config, processor, images, train, validation)
    if path is None or not (os.path.isdir(folder) and os.path.samefile(path, folder)):
        processor.save_pretrained(folder)
        teacher.save_pretrained(folder)
    return teacher, processor, stages


def run(config: dict, command: str) -> dict:
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    os.makedirs(config["output_dir"], exist_ok=True)
    run_start = time.perf_counter()
    images, train, validation, test, words = load_data(config)
    teacher, processor, stages = build_teacher(config, images, train, validation, words)
    collator = VisionLanguageCollator(processor, views=False)
    types = easy_vqa_question_types()
    batch = config["eval_batch_size"]

    def evaluate(model, rows) -> dict:
        swapped = SwappedImages(rows, group_derangement(rows["image_id"], seed=config["data_seed"]))
        return three_input_accuracy(model, collator, rows, swapped, types, batch)

    teacher_validation = evaluate(teacher, validation)
    print(json.dumps({"teacher validation": teacher_validation}), flush=True)
    teacher_accuracy = evaluate(teacher, test)
    print(json.dumps({"teacher test": teacher_accuracy}), flush=True)
    distilling = any(arm != "labels" for group in config["students"] for arm in group["arms"])
    if distilling:
        train = train.add_column("teacher_answer", generate_answers(teacher, collator, train, None, batch))
    datasets_of = {}  # (seed, label fraction) -> the labelled rows, with cached outputs, with full targets
    saliency = {}  # (seed, label fraction) -> the population saliency of its first MSD student

    def student_data(seed: int, fraction: float) -> dict:
        if (seed, fraction) not in datasets_of:
            labelled = keep_labels_on_subset(train, fraction=fraction, seed=seed, label_column="answer")
            data = {"labels": labelled, "distilled": labelled, "kd_full_target": labelled}
            if distilling and config["cache_teacher_outputs"]:
                data["distilled"] = precompute_teacher_outputs(
                    teacher,
                    labelled,
                    data_collator=VisionLanguageCollator(processor),
                    top_k=config["cache_top_k"],
                    batch_size=batch,
                    cache_dir=os.path.join(config["output_dir"], "teacher_outputs"),
                )
                data["kd_full_target"] = with_full_input_targets(data["distilled"])
            datasets_of[seed, fraction] = data
        return datasets_of[seed, fraction]

    result = {
        "command": command,
        "config": config,
        "machine": {"torch_threads": torch.get_num_threads(), "cpu_count": os.cpu_count()},
        "teacher": {
            "accuracy": teacher_accuracy,
            "validation_accuracy": teacher_validation,
            "stages": stages,
        },
        "runs": [],
    }
    # Group by group (the first group's arms on every seed first), the results written after every student.
    for group in config["students"]:
        fraction = group["label_fraction"]
        for seed in config["seeds"]:
            for arm in group["arms"]:
                data = student_data(seed, fraction)
                trainer, seconds = train_student(
                    config,
                    arm,
                    group,
                    processor,
                    teacher,
                    data.get(arm, data["distilled"]),
                    seed,
                    saliency.get((seed, fraction)) if arm == "kd_full_target" else None,
                )
                if ARMS[arm] is not None and config["modality_weighting"] == "population":
                    saliency.setdefault((seed, fraction), trainer.weighting.population_saliency.clone())
                scores = evaluate(trainer.model, test)
                name = run_name(arm, group)
                run = {"run": name, "seed": seed, "accuracy": scores, "seconds_per_step": seconds}
                result["runs"].append(run)
                print(json.dumps(run), flush=True)
                if seed == config["seeds"][-1]:
                    folder = os.path.join(config["output_dir"], f"student_{name}")
                    save_student(trainer, processor, folder, name, scores, group, config["family"])
                write_results(config, result, run_start)
    table = write_results(config, result, run_start)
    remove_empty_folders(config["output_dir"])
    print(table, flush=True)
    return result


def main(argv: list[str]) -> None:
    run(load_config(argv), "python examples/run_vlm_msd.py " + " ".join(argv))


if __name__ == "__main__":
    main(sys.argv[1:])
