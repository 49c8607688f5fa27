"""A missing image in generative vision-language data is refused by row and column before training (issue 33,
defect 5), not deep inside the processor mid-training; the collator itself names the column and the example's
index in its batch."""

from __future__ import annotations

import datasets
import pytest

from hf_msd.data import VisionLanguageCollator
from hf_msd.teacher_outputs.cache import precompute_teacher_outputs
from hf_msd.trainers import DistillationTrainer, MSDTrainer
from tests.helpers.vlm import msd_args, processor, raw_examples, teacher_and_student


def examples_without(column: str, rows: tuple[int, ...]) -> list[dict]:
    examples = raw_examples(4)
    for row in rows:
        examples[row][column] = None
    return examples


@pytest.mark.parametrize("as_dataset", [True, False])
@pytest.mark.parametrize("trainer_class", [DistillationTrainer, MSDTrainer])
def test_trainers_name_the_rows_without_an_image_before_training(tmp_path, trainer_class, as_dataset):
    teacher, student = teacher_and_student()
    examples = examples_without("image", (2,))
    trainer = trainer_class(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path, max_steps=1, save_strategy="no"),
        data_collator=VisionLanguageCollator(processor(), views=trainer_class is MSDTrainer),
        train_dataset=datasets.Dataset.from_list(examples) if as_dataset else examples,
    )
    calls = []
    student.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(
        ValueError, match=r"train_dataset has 1 bad example\(s\):\n  row 2, column 'image': no image"
    ):
        trainer.train()
    assert not calls  # refused before the first step


def test_trainers_name_an_empty_question(tmp_path):
    teacher, student = teacher_and_student()
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path, max_steps=1, save_strategy="no"),
        data_collator=VisionLanguageCollator(processor()),
        train_dataset=datasets.Dataset.from_list(examples_without("question", (0, 3))),
        eval_dataset=raw_examples(2),
    )
    with pytest.raises(
        ValueError, match=r"2 bad example\(s\):\n  row 0, column 'question'.*\n  row 3, column"
    ):
        trainer.train()


def test_the_collator_names_the_column_and_the_example_in_its_batch():
    collator = VisionLanguageCollator(processor())
    with pytest.raises(ValueError, match=r"Example\(s\) \[1, 3\] of this batch have no 'image'"):
        collator(examples_without("image", (1, 3)))
    with pytest.raises(ValueError, match=r"Example\(s\) \[0\] of this batch have no 'question'"):
        collator(examples_without("question", (0,)))
    for view in (None, "text"):
        with pytest.raises(ValueError, match=r"Example\(s\) \[0\] of this batch have no 'question'"):
            collator.generation_inputs(examples_without("question", (0,)), view=view)
    with pytest.raises(ValueError, match=r"Example\(s\) \[2\] of this batch have no 'image'"):
        collator.generation_inputs(examples_without("image", (2,)), view="image")
    # The question-only prompt needs no image, the image-only prompt no question.
    assert collator.generation_inputs(examples_without("image", (2,)), view="text")["input_ids"].shape[0] == 4
    assert (
        collator.generation_inputs(examples_without("question", (0,)), view="image")["input_ids"].shape[0]
        == 4
    )


def test_precompute_teacher_outputs_names_the_row_without_an_image(tmp_path):
    teacher, _ = teacher_and_student()
    dataset = datasets.Dataset.from_list(examples_without("image", (0, 3)))
    calls = []
    teacher.register_forward_pre_hook(lambda module, args: calls.append(1))
    with pytest.raises(
        ValueError, match=r"dataset has 2 bad example\(s\):\n  row 0, column 'image': no image.*\n  row 3"
    ):
        precompute_teacher_outputs(
            teacher, dataset, data_collator=VisionLanguageCollator(processor()), cache_dir=str(tmp_path)
        )
    assert not calls  # refused before the teacher ran
