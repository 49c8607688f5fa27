"""Print a markdown table of the parameter counts of the default teacher and the students made from it.

The teacher is `hf_msd.models.default_teacher_config()` (MiniLM-L6 text tower, small ViT, 2 fusion layers),
built with random weights (the counts do not depend on the weights, so MiniLM is not loaded). The students are
made with `make_student`: every other layer of each tower and of the fusion stack (DistilBERT-style), and the
unimodal text-only and image-only students from the matching tower.

    python benchmarks/parameter_counts.py [--num-labels 13]
"""

import argparse

import torch

from hf_msd.models import MultimodalTransformerForSequenceClassification, default_teacher_config, make_student


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num-labels", type=int, default=13, help="Classifier outputs (easy-VQA: 13).")
    args = parser.parse_args()

    config = default_teacher_config(num_labels=args.num_labels)
    teacher = MultimodalTransformerForSequenceClassification(config)
    models = {
        "teacher": teacher,
        "student (half layers)": make_student(teacher),
        "text-only student (half layers)": make_student(teacher, modalities=["text"]),
        "image-only student (half layers)": make_student(teacher, modalities=["image"]),
    }
    teacher_count = count_parameters(teacher)
    print("| model | modalities | text layers | image layers | fusion layers | parameters | vs teacher |")
    print("| --- | --- | ---: | ---: | ---: | ---: | ---: |")
    for name, model in models.items():
        config, count = model.config, count_parameters(model)
        print(
            f"| {name} | {', '.join(config.modalities)} | {config.num_text_layers or '-'} "
            f"| {config.num_image_layers or '-'} | {config.num_hidden_layers} | {count / 1e6:.2f}M "
            f"| {count / teacher_count:.0%} |"
        )


if __name__ == "__main__":
    main()
