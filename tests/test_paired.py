"""Heterogeneous pairs: a teacher and a student with different processors (PairedCollator, the trainers'
``teacher_<key>`` inputs and per-model modality specs), end to end: a ViLT teacher, a fusion student."""

import itertools
import math

import pytest
import torch

from hf_msd.data import MultimodalDataCollator, PairedCollator
from hf_msd.trainers.msd_config import MSDTrainingArguments
from hf_msd.trainers.msd_trainer import MSDTrainer
from tests.helpers.byom import tiny_architecture, train_recording_inputs
from tests.helpers.models import TINY_WORDS, tiny_images, tiny_model, tiny_processor, tiny_vilt_processor

QUESTIONS = [
    "what color is the circle?",
    "is there a red shape?",
    "does the image contain a triangle?",
    "what shape?",
]


@pytest.fixture(scope="module")
def pair(tmp_path_factory):
    folder = tmp_path_factory.mktemp("processors")
    student_collator = MultimodalDataCollator(tiny_processor(folder / "student"))
    teacher_collator = MultimodalDataCollator(tiny_vilt_processor(folder / "teacher"))
    examples = [
        {"image": image, "question": question, "label": index % 3}
        for index, (image, question) in enumerate(zip(tiny_images(4), QUESTIONS))
    ]
    assert all(word in TINY_WORDS for q in QUESTIONS for word in q.replace("?", " ?").split())
    return student_collator, teacher_collator, examples


def test_paired_batch_layout(pair):
    student_collator, teacher_collator, examples = pair
    batch = PairedCollator(student_collator, teacher_collator)(examples[:2])
    student, teacher = student_collator(examples[:2]), teacher_collator(examples[:2])
    assert set(batch) == set(student) | {f"teacher_{key}" for key in teacher if key != "labels"}
    for key in student:
        assert torch.equal(batch[key], student[key])
    for key in teacher:
        if key != "labels":
            assert torch.equal(batch[f"teacher_{key}"], teacher[key])
    assert batch["pixel_values"].shape[-1] == 16 and batch["teacher_pixel_values"].shape[-1] == 32
    assert "teacher_pixel_mask" in batch and "pixel_mask" not in batch


def test_paired_collator_rejects_labels_that_differ(pair):
    student_collator, _, examples = pair
    multi_hot = MultimodalDataCollator(student_collator.processor, num_labels=3)
    with pytest.raises(ValueError, match="encode the labels differently"):
        PairedCollator(student_collator, multi_hot)(examples[:2])


@pytest.mark.parametrize("weighting", ["uniform", "population"])
def test_vilt_teacher_fusion_student_end_to_end(tmp_path, pair, weighting):
    student_collator, teacher_collator, examples = pair
    teacher, student = tiny_architecture("vilt"), tiny_model(num_labels=3, seed=1)
    args = MSDTrainingArguments(
        output_dir=str(tmp_path),
        modality_weighting=weighting,
        per_device_train_batch_size=2,
        max_steps=2,
        learning_rate=1e-2,
        report_to=[],
        save_strategy="no",
        use_cpu=True,
        disable_tqdm=True,
        logging_steps=1,
        remove_unused_columns=False,
        saliency_batch_size=2,
        tower_reuse=False,  # the student receives x_text and x_image as inputs (tests/test_tower_reuse.py)
    )
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=examples,
        data_collator=PairedCollator(student_collator, teacher_collator),
    )
    # Each model keeps its own spec: ViLT masks / fills, the fusion model drops.
    assert [m.removal for m in trainer.teacher_modalities] == ["mask", "fill"]
    assert [m.removal for m in trainer.modalities] == ["drop", "drop"]
    recorders = train_recording_inputs(trainer, teacher, student)
    # The training batches are shuffled: build the expectation for every ordered pair of examples, each
    # collated by its model's own collator, and check the pairs each model was run on.
    seen_teacher = seen_student = 0
    for indices in itertools.permutations(range(len(examples)), 2):
        chunk = [examples[i] for i in indices]
        t = {k: v for k, v in teacher_collator(chunk).items() if k != "labels"}
        s = {k: v for k, v in student_collator(chunk).items() if k != "labels"}
        text = {k: t[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        teacher_expected = [
            t,
            {**text, "pixel_values": torch.zeros_like(t["pixel_values"]), "pixel_mask": t["pixel_mask"]},
            {
                "input_ids": torch.zeros_like(t["input_ids"]),
                "attention_mask": torch.zeros_like(t["attention_mask"]),
                "token_type_ids": torch.zeros_like(t["token_type_ids"]),
                "pixel_values": t["pixel_values"],
                "pixel_mask": t["pixel_mask"],
            },
        ]
        student_text = {k: s[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
        student_expected = [s, student_text, {"pixel_values": s["pixel_values"]}]
        if recorders["teacher"].saw(t):
            assert all(recorders["teacher"].saw(x) for x in teacher_expected)
            seen_teacher += 1
        if recorders["student"].saw(s):
            assert all(recorders["student"].saw(x) for x in student_expected)
            seen_student += 1
    assert seen_teacher >= 2 and seen_student == 2  # both training batches
    logs = [entry for entry in trainer.state.log_history if "loss" in entry]
    assert {"modality_text_loss", "modality_image_loss", "kd_loss"} <= set(logs[0])
    assert all(math.isfinite(entry["loss"]) for entry in logs)
