"""How well the generative example's teacher stage 1 (the vision tower alone) names easy-VQA's shapes and
colours at each image size: the stage that limits the teacher's shape accuracy.

    python benchmarks/vlm_tower_resolution.py                        # 32, 48 and 64 px, about 10 minutes
    python benchmarks/vlm_tower_resolution.py --image_sizes 32 64    # some sizes

For each size, :func:`examples.run_vlm_msd.train_tower` runs with ``examples/configs/vlm_easy_vqa.yaml``'s
tower keys (``--config`` for another) on a fresh teacher built at that size, and its accuracy on the
validation images is reported with the stage's seconds and the image tokens a question then carries (every
later teacher and student pass pays for them). Sizes run in turn in this process, each timed alone.

Writes ``benchmarks/results/vlm_tower_resolution.{json,md}``.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from results_files import machine, write_results

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "examples")]

from run_vlm_msd import load_config, load_data, train_tower  # noqa: E402

from hf_msd.data import VisionLanguageCollator  # noqa: E402
from hf_msd.models.vision_language import IMAGE, tiny_vlm, vlm_processor  # noqa: E402

DEFAULT_CONFIG = ROOT / "examples" / "configs" / "vlm_easy_vqa.yaml"


def image_tokens(processor, row: dict) -> int:
    """The image tokens ``processor`` puts in the prompt of the question ``row`` (an easy-VQA row)."""
    input_ids = VisionLanguageCollator(processor, views=False)([row])["input_ids"]
    return int((input_ids == processor.tokenizer.convert_tokens_to_ids(IMAGE)).sum())


def measure(config: dict, image_size: int, images, validation, words: list[str]) -> dict:
    """Stage 1 on a teacher whose images are ``image_size`` px: seconds, validation accuracy, image tokens."""
    family, patch = config["family"], config["patch_size"]
    processor = vlm_processor(family, words, image_size, patch)
    teacher = tiny_vlm(family, processor, **config["teacher"], seed=config["data_seed"])
    report = train_tower(config, teacher, processor, images, validation)
    return {"image_size": image_size, "image_tokens": image_tokens(processor, validation[0]), **report}


def markdown(report: dict) -> str:
    lines = [
        f"Command: `{report['command']}`  ",
        f"Machine: {report['machine']}  ",
        f"Config: `{report['config']}` (family {report['family']}, patch {report['patch_size']}, "
        f"{report['tower_epochs']} epochs on the images of {report['images']} training questions, "
        f"{report['validation_images']} validation images)",
        "",
        "| image size | image tokens / question | stage-1 seconds | shape | colour |",
        "|---:|---:|---:|---:|---:|",
    ]
    for row in report["sizes"]:
        accuracy = row["validation_accuracy"]
        lines.append(
            f"| {row['image_size']} | {row['image_tokens']} | {row['seconds']:.0f} | {accuracy['shape']:.3f} "
            f"| {accuracy['color']:.3f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--config", default=str(DEFAULT_CONFIG))
    parser.add_argument("--image_sizes", type=int, nargs="+", default=[32, 48, 64])
    args = parser.parse_args(argv)
    config = load_config([args.config])
    images, _, validation, _, words = load_data(config)
    sizes = [measure(config, size, images, validation, words) for size in args.image_sizes]
    report = {
        "command": " ".join(["python", "benchmarks/vlm_tower_resolution.py", *(argv or sys.argv[1:])]),
        "machine": machine(),
        "config": os.path.relpath(args.config, ROOT),
        "family": config["family"],
        "patch_size": config["patch_size"],
        "tower_epochs": config["tower_epochs"],
        "images": len(images),
        "validation_images": len(set(validation["image_id"])),
        "sizes": sizes,
    }
    write_results("vlm_tower_resolution", report, markdown(report))


if __name__ == "__main__":
    main()
