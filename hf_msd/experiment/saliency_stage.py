"""Stage 2, saliency: the teacher's modality saliency on the validation split, written to
``output_dir/saliency`` (``saliency.json`` and the ``saliency.png`` plot the student's card shows)."""

from __future__ import annotations

from pathlib import Path

from accelerate import PartialState
from transformers import PreTrainedModel

from ..architectures import default_modalities
from ..distillation.saliency import compute_saliency, plot_saliency
from .progress import announce
from .run import Run, make_collator
from .settings import saliency_settings
from .stages import mark_done, stage_done


def saliency_report(run: Run, teacher: PreTrainedModel, processor, teacher_settings: dict) -> Path:
    """Stage 2: the teacher's modality saliency on the validation split; returns the PNG's path."""
    directory = Path(run.training_args.output_dir) / "saliency"
    plot = directory / "saliency.png"
    settings = saliency_settings(run, teacher_settings)
    state = PartialState()
    if stage_done(directory, settings, run.exp_args.overwrite_output_dir):
        announce("saliency", f"reusing {directory}")
    else:
        announce(
            "saliency",
            f"the teacher's modality saliency on up to {run.exp_args.saliency_max_samples} "
            "validation examples",
        )
        if state.is_main_process:
            examples = run.dataset["validation"]
            examples = examples.select(range(min(len(examples), run.exp_args.saliency_max_samples)))
            report = compute_saliency(
                teacher,
                examples,
                default_modalities(teacher),
                data_collator=make_collator(run, teacher, processor),
                batch_size=run.training_args.per_device_eval_batch_size,
                device=run.training_args.device,
            )
            directory.mkdir(parents=True, exist_ok=True)
            report.save_json(directory / "saliency.json")
            plot_saliency(report, plot)
        mark_done(directory, settings)
    return plot
