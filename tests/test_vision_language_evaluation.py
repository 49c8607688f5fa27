"""The three-input evaluation of generative vision-language models: the seeded derangement of the images,
the lazily swapped rows and the accuracy per question type, against hand-counted cases."""

from __future__ import annotations

import pytest
import torch

from hf_msd.data import VisionLanguageCollator
from hf_msd.evaluation.vision_language import (
    INPUTS,
    SwappedImages,
    accuracy_by_type,
    generate_answers,
    group_derangement,
    three_input_accuracy,
)
from tests.helpers.vlm import processor, raw_examples, teacher_and_student


@pytest.mark.parametrize("groups", [list(range(7)), [0, 0, 0, 1, 1, 2, 2, 3, 4, 4]])
def test_derangement_gives_every_row_another_groups_row(groups):
    permutation = group_derangement(groups, seed=3)
    assert sorted(permutation) == list(range(len(groups)))
    assert all(groups[permutation[i]] != groups[i] for i in range(len(groups)))
    assert group_derangement(groups, seed=3) == permutation
    assert any(group_derangement(groups, seed=s) != permutation for s in range(4, 10))


def test_derangement_refuses_a_group_of_more_than_half():
    with pytest.raises(ValueError, match="one group holds 3 of the 5 rows"):
        group_derangement([1, 1, 1, 2, 3], seed=0)


def test_swapped_images_take_the_permuted_rows_image():
    rows = [{"image": f"img{i}", "question": f"q{i}"} for i in range(3)]
    swapped = SwappedImages(rows, [2, 0, 1])
    assert len(swapped) == 3
    assert swapped[0] == {"image": "img2", "question": "q0"}
    assert swapped[2] == {"image": "img1", "question": "q2"}
    with pytest.raises(ValueError, match="permutation must be a permutation of range"):
        SwappedImages(rows, [0, 0, 1])


def test_accuracy_by_question_type():
    types = {"yes/no": ["yes", "no"], "shape": ["circle", "square"]}
    scores = accuracy_by_type(
        ["yes", "no", "circle", "yes", "square"], ["yes", "yes", "circle", "square", "square"], types
    )
    assert scores == {"all": 3 / 5, "yes/no": 1 / 2, "shape": 2 / 3}


def test_three_inputs_score_the_models_own_greedy_answers():
    teacher, _ = teacher_and_student()
    collator = VisionLanguageCollator(processor(), views=False)
    rows = raw_examples(6)
    swapped = SwappedImages(rows, [1, 2, 0, 4, 5, 3])
    gold = [row["answer"] for row in rows]
    types = {"yes/no": ["yes", "no"], "shape": ["circle"], "color": ["red", "blue"]}
    scores = three_input_accuracy(teacher, collator, rows, swapped, types, batch_size=4)
    assert list(scores) == list(INPUTS)
    for name, (source, view) in {
        "image+question": (rows, None),
        "question only": (rows, "text"),
        "swapped image": (swapped, None),
    }.items():
        answers = []
        for row in source:  # one example at a time: no padding
            inputs = collator.generation_inputs([row], view=view)
            with torch.no_grad():
                output = teacher.generate(**inputs, max_new_tokens=3, do_sample=False)
            text = collator.tokenizer.decode(
                output[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True
            )
            answers.append(text.strip())
        assert answers == generate_answers(teacher, collator, source, view, batch_size=4)
        hits = [a == g for a, g in zip(answers, gold)]
        assert scores[name]["all"] == sum(hits) / 6
