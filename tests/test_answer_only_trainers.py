"""The trainers apply a generative model's output layer only where the loss reads: in a KD and an MSD training
step (online teacher, and MSD's per-example saliency), the student's and the teacher's ``lm_head`` see at most
the batch's answer tokens plus one row per example, in every view, never the (B * T) positions of the full
logits."""

from __future__ import annotations

import pytest
import torch

from hf_msd.data import VisionLanguageCollator
from hf_msd.trainers import DistillationTrainer, MSDTrainer
from tests.helpers.vlm import (
    family_processor_and_models,
    msd_args,
    processor,
    raw_examples,
    teacher_and_student,
)

EXAMPLES = 4


def rows_seen(model) -> list[int]:
    """The number of hidden-state rows each call of ``model``'s output layer receives."""
    calls = []
    model.get_output_embeddings().register_forward_hook(
        lambda module, args, output: calls.append(args[0].reshape(-1, args[0].shape[-1]).shape[0])
    )
    return calls


@pytest.mark.parametrize("family", ["llava", "idefics3"])
@pytest.mark.parametrize("method", ["kd", "msd"])
def test_lm_head_sees_only_the_scored_rows_in_a_training_step(tmp_path, family, method):
    if family == "llava":
        proc, (teacher, student) = processor(), teacher_and_student()
    else:
        proc, teacher, student = family_processor_and_models(family)
    msd = method == "msd"
    collator = VisionLanguageCollator(proc, views=msd)
    examples = raw_examples(EXAMPLES, unlabelled=(1,))
    batch = collator(examples)
    answers = int((batch["distillation_labels"][:, 1:] != -100).sum())
    shortest = batch["input_ids"].shape[1]
    if msd:
        shortest = min(shortest, *(batch[f"view_{v}__input_ids"].shape[1] for v in ("text", "image")))
    assert answers + EXAMPLES < EXAMPLES * shortest  # the full logits would show many more rows
    student_rows, teacher_rows = rows_seen(student), rows_seen(teacher)
    trainer = (MSDTrainer if msd else DistillationTrainer)(
        model=student,
        teacher_model=teacher,
        args=msd_args(
            tmp_path,
            max_steps=1,
            per_device_train_batch_size=EXAMPLES,
            modality_weighting="instance",
            modality_loss_weight=0.5 if msd else 0.0,
        ),
        data_collator=collator,
        train_dataset=examples,
    )
    trainer.train()
    views = 3 if msd else 1  # x, x_text, x_image
    assert len(student_rows) == views and len(teacher_rows) == views
    assert all(rows <= answers + EXAMPLES for rows in student_rows + teacher_rows), (
        student_rows,
        teacher_rows,
    )
    assert torch.isfinite(torch.tensor(trainer.state.log_history[-1]["train_loss"]))
