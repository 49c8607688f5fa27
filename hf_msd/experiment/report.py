"""The end of a run: its summary (``summary.json`` and the console table), the student's model card, and
the upload of the student folder to the Hub."""

from __future__ import annotations

import json
import shutil
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from accelerate import PartialState
from transformers import PreTrainedModel, TrainingArguments

from ..errors import InputValueError
from ..hub import build_model_card, card_speed, hub_id, training_hyperparameters
from .arguments import DataArguments
from .data_stage import labelled_count
from .run import TRAIN_RESULTS, Run
from .stages import STAGE_FILE


def write_report(
    run: Run,
    teacher: PreTrainedModel,
    student: PreTrainedModel,
    evaluation: dict[str, Any],
    speed: dict[str, Any] | None,
    saliency_plot: Path,
) -> dict[str, Any]:
    """The run's summary (returned, and written to ``summary.json`` with the console table printed on the
    main process), and the student's model card (``student/README.md``) next to the saliency plot."""
    output_dir = Path(run.training_args.output_dir)
    student_dir = output_dir / "student"
    teacher_record = output_dir / "teacher" / TRAIN_RESULTS
    summary = {
        "method": run.exp_args.method,
        "modality_weighting": run.training_args.modality_weighting if run.exp_args.method == "msd" else None,
        "student_modalities": run.model_args.modalities(),
        "validation": run.data_args.validation_source(run.training_args.seed),
        "test_examples": len(run.dataset["test"]),
        "processes": PartialState().num_processes,
        "labeled_train_examples": labelled_count(run),
        "teacher_training": json.loads(teacher_record.read_text()) if teacher_record.exists() else None,
        "student_training": json.loads((student_dir / TRAIN_RESULTS).read_text()),
        "evaluation": evaluation,
        "parameters": {"teacher": parameter_count(teacher), "student": parameter_count(student)},
        "inference_speed": speed,
        "paths": {
            "student": str(student_dir),
            "model_card": str(student_dir / "README.md"),
            "saliency_plot": str(student_dir / "saliency.png"),
            "summary": str(output_dir / "summary.json"),
        },
    }
    if PartialState().is_main_process:
        shutil.copyfile(saliency_plot, student_dir / "saliency.png")
        card = build_model_card(
            model_name=run.training_args.hub_model_id
            or f"{run.data_args.dataset_name}-{run.exp_args.method}-student",
            method=run.exp_args.method,
            dataset_name=card_dataset_name(run.data_args),
            dataset_id=hub_id(run.data_args.dataset_name) if run.data_args.dataset_name != "local" else None,
            evaluation=evaluation,
            parameters=summary["parameters"],
            hyperparameters=training_hyperparameters(run.training_args, run.exp_args.method),
            student_modalities=run.model_args.modalities(),
            teacher_name_or_path=run.model_args.teacher_name_or_path,
            teacher_description="multimodal (text+image) fusion transformer teacher",
            repo_id=run.training_args.hub_model_id,
            num_eval_examples=summary["test_examples"],
            validation_description=summary["validation"],
            question_answering=run.data_args.dataset_name == "easy_vqa",
            **card_speed(summary.get("inference_speed")),
            saliency_plot="saliency.png",
        )
        card.save(student_dir / "README.md")
        (output_dir / "summary.json").write_text(json.dumps(summary, indent=2))
        print(format_summary(summary))
    return summary


def parameter_count(model: PreTrainedModel) -> int:
    """Every parameter of ``model``, trainable or not."""
    return sum(p.numel() for p in model.parameters())


def format_summary(summary: Mapping[str, Any]) -> str:
    """The console tables: accuracy per model and input condition with parameter counts, accuracy per
    question type (both modalities), the side-by-side inference speed, and the output paths."""
    conditions = ["both", "text", "image"]
    lines = [
        f"{'model':<10}{'params':>14}" + "".join(f"{'acc (' + c + ')':>15}" for c in conditions),
    ]
    for name, scores in summary["evaluation"].items():
        cells = [
            f"{scores[c]['accuracy']:>15.4f}" if c in scores and "accuracy" in scores[c] else f"{'n/a':>15}"
            for c in conditions
        ]
        lines.append(f"{name:<10}{summary['parameters'][name]:>14,}" + "".join(cells))
    teacher_params = summary["parameters"].get("teacher")
    for name, count in summary["parameters"].items():
        if name != "teacher" and teacher_params:
            lines.append(f"{name}: {teacher_params / count:.2f}x fewer parameters than the teacher")
    first = next(iter(summary["evaluation"].values()))["both"]
    types = [key.removeprefix("accuracy_") for key in first if key.startswith("accuracy_")]
    if types:
        lines += ["", f"{'model':<10}" + "".join(f"{'acc ' + t:>15}" for t in types) + "   (both modalities)"]
        for name, scores in summary["evaluation"].items():
            cells = [f"{scores['both'].get('accuracy_' + t, float('nan')):>15.4f}" for t in types]
            lines.append(f"{name:<10}" + "".join(cells))
    speed = summary.get("inference_speed")
    if speed:
        lines += [
            "",
            f"Batched inference ({speed['batches']} batches of {speed['batch_size']}, median of "
            f"{speed['rounds']} interleaved rounds after warm-up):",
        ]
        width = max(10, *(len(name) + 2 for name in speed["models"]))
        for name, values in speed["models"].items():
            lines.append(
                f"{name:<{width}}{values['seconds_per_batch'] * 1000:>10.1f} ms/batch"
                f"{values['examples_per_second']:>10.0f} examples/s   {speed['speedup'][name]:.2f}x"
            )
        if speed.get("compile_seconds"):
            lines.append(
                "compile warm-up (first pass over the batches, not in the timed rounds): "
                + ", ".join(f"{name} {value:.1f} s" for name, value in speed["compile_seconds"].items())
            )
    lines.append("")
    lines += [f"{key}: {value}" for key, value in summary["paths"].items()]
    return "\n".join(lines)


def card_dataset_name(data_args: DataArguments) -> str:
    """The data as the model card names it: easy-VQA, the data set's name, or "local data" (not a path)."""
    if data_args.dataset_name == "easy_vqa":
        return "easy-VQA"
    return "local data" if data_args.dataset_name == "local" else Path(data_args.dataset_name).name


def check_hub_model_id(training_args: TrainingArguments) -> None:
    if not training_args.hub_model_id:
        raise InputValueError("--push_to_hub needs --hub_model_id (e.g. 'your-name/easy-vqa-msd-student').")


def push_student(student_dir: Path, training_args: TrainingArguments) -> str:
    """Upload the student folder (weights, processor, card, plots) to ``hub_model_id``; returns the URL."""
    from huggingface_hub import HfApi

    check_hub_model_id(training_args)
    if not PartialState().is_main_process:
        return ""
    api = HfApi(token=training_args.hub_token)
    api.create_repo(training_args.hub_model_id, private=training_args.hub_private_repo, exist_ok=True)
    commit = api.upload_folder(
        folder_path=str(student_dir),
        repo_id=training_args.hub_model_id,
        ignore_patterns=[STAGE_FILE],
        commit_message="Upload distilled student (hf_msd)",
    )
    return str(commit)
