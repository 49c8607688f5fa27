"""The on-policy batch rewrite (hf_msd.data.on_policy) against hand-built batches and against the collator.

A batch rewritten with other answers must equal, in every view, the batch the collator builds from the raw
examples with those answers; its prompts must equal the collator's generation prompts.
"""

from __future__ import annotations

import pytest
import torch

from hf_msd.data import VisionLanguageCollator
from hf_msd.data.generative import view_inputs
from hf_msd.data.on_policy import (
    GOLD_VIEW,
    answer_starts,
    generated_answers,
    on_policy_draw,
    prompt_inputs,
    with_answers,
)
from hf_msd.models.vision_language import vlm_processor
from tests.helpers.vlm import IDS, WORDS, raw_examples

X = -100
PAD, EOS = 0, 3


def hand_batch() -> dict[str, torch.Tensor]:
    """Two examples: x prompts of 3 and 2 tokens with answers [20, EOS] and [21, 22, EOS]; a text view with
    prompts of 2 and 1 tokens; a per-token column on x; one gold row (row 0)."""
    return {
        "input_ids": torch.tensor([[5, 6, 7, 20, EOS, PAD], [8, 9, 21, 22, EOS, PAD]]),
        "attention_mask": torch.tensor([[1, 1, 1, 1, 1, 0], [1, 1, 1, 1, 1, 0]]),
        "distillation_labels": torch.tensor([[X, X, X, 20, EOS, X], [X, X, 21, 22, EOS, X]]),
        "labels": torch.tensor([[X, X, X, 20, EOS, X], [X] * 6]),
        "mm_token_type_ids": torch.tensor([[0, 1, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0]]),
        "pixel_values": torch.arange(8.0).reshape(2, 4),
        "view_text__input_ids": torch.tensor([[5, 7, 20, EOS, PAD], [9, 21, 22, EOS, PAD]]),
        "view_text__attention_mask": torch.tensor([[1, 1, 1, 1, 0], [1, 1, 1, 1, 0]]),
        "view_text__distillation_labels": torch.tensor([[X, X, 20, EOS, X], [X, 21, 22, EOS, X]]),
    }


def test_with_answers_rewrites_every_view_and_keeps_the_gold_x():
    batch = hand_batch()
    out = with_answers(batch, [torch.tensor([30, 31, 32, EOS]), torch.tensor([EOS])], pad_token_id=PAD)
    assert out["input_ids"].tolist() == [[5, 6, 7, 30, 31, 32, EOS], [8, 9, EOS, PAD, PAD, PAD, PAD]]
    assert out["attention_mask"].tolist() == [[1] * 7, [1, 1, 1, 0, 0, 0, 0]]
    assert out["distillation_labels"].tolist() == [[X, X, X, 30, 31, 32, EOS], [X, X, EOS, X, X, X, X]]
    assert out["mm_token_type_ids"].tolist() == [[0, 1, 0, 0, 0, 0, 0], [1, 0, 0, 0, 0, 0, 0]]
    assert out["view_text__input_ids"].tolist() == [[5, 7, 30, 31, 32, EOS], [9, EOS, PAD, PAD, PAD, PAD]]
    assert out["view_text__attention_mask"].tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert out["view_text__distillation_labels"].tolist() == [[X, X, 30, 31, 32, EOS], [X, EOS, X, X, X, X]]
    assert out["pixel_values"] is batch["pixel_values"]
    assert out["labels"].tolist() == [[X] * 7, [X] * 7]
    gold = view_inputs(out, GOLD_VIEW)
    assert set(gold) == {"input_ids", "attention_mask", "labels", "mm_token_type_ids", "pixel_values"}
    for key, value in gold.items():
        assert value is batch[key], key
    # The input batch is left as it was.
    assert batch["input_ids"].tolist() == hand_batch()["input_ids"].tolist()


def test_with_answers_without_gold_labels_keeps_no_gold_view():
    batch = hand_batch()
    batch["labels"] = torch.full_like(batch["labels"], X)
    out = with_answers(batch, [torch.tensor([EOS]), torch.tensor([EOS])], pad_token_id=PAD)
    assert (out["labels"] == X).all() and out["labels"].shape == out["input_ids"].shape
    assert not any(k.startswith(f"view_{GOLD_VIEW}__") for k in out)


def test_answer_starts_and_prompts_left_padded():
    batch = hand_batch()
    starts = answer_starts(batch["distillation_labels"])
    assert starts.tolist() == [3, 2]
    inputs = {k: v for k, v in batch.items() if not k.startswith("view_") and k != "distillation_labels"}
    prompts = prompt_inputs(inputs, starts, pad_token_id=PAD)
    assert set(prompts) == {"input_ids", "attention_mask", "mm_token_type_ids", "pixel_values"}
    assert prompts["input_ids"].tolist() == [[5, 6, 7], [PAD, 8, 9]]
    assert prompts["attention_mask"].tolist() == [[1, 1, 1], [0, 1, 1]]
    assert prompts["mm_token_type_ids"].tolist() == [[0, 1, 0], [0, 1, 0]]
    with pytest.raises(ValueError, match=r"Rows \[1\].*'distillation_labels'"):
        answer_starts(torch.tensor([[X, 4], [X, X]]))


def test_generated_answers_end_at_the_first_end_of_sequence():
    sequences = torch.tensor(
        [
            [PAD, 5, 6, 30, EOS, PAD, PAD],  # ends at EOS, then padding
            [5, 6, 7, 31, 32, 33, 34],  # never ends: all 4 new tokens
            [5, 6, 7, 9, 35, EOS, 36],  # the second end-of-turn id (9) ends it first
        ]
    )
    answers = generated_answers(sequences, prompt_width=3, eos_token_ids=[EOS, 9])
    assert [a.tolist() for a in answers] == [[30, EOS], [31, 32, 33, 34], [9]]
    assert [a.tolist() for a in generated_answers(sequences[:1], 3, EOS)] == [[30, EOS]]
    with pytest.raises(ValueError, match="max_new_tokens"):
        generated_answers(sequences, prompt_width=7, eos_token_ids=EOS)


def test_on_policy_draw_is_seeded_by_step_and_leaves_the_global_rng_alone():
    state = torch.random.get_rng_state()
    draws = [on_policy_draw(0.5, seed=42, step=s) for s in range(2000)]
    assert torch.equal(torch.random.get_rng_state(), state)
    assert draws == [on_policy_draw(0.5, seed=42, step=s) for s in range(2000)]
    assert 0.45 < sum(draws) / len(draws) < 0.55
    assert draws != [on_policy_draw(0.5, seed=43, step=s) for s in range(2000)]
    assert 0.2 < sum(on_policy_draw(0.25, 0, s) for s in range(2000)) / 2000 < 0.3
    assert not any(on_policy_draw(0.0, 42, s) for s in range(50))
    assert all(on_policy_draw(1.0, 42, s) for s in range(50))


FAMILIES = ["llava", "idefics3", "qwen2_vl"]


@pytest.fixture(scope="module", params=FAMILIES)
def collator(request):
    return VisionLanguageCollator(vlm_processor(request.param, WORDS, image_size=32, patch_size=8))


def test_prompts_equal_the_collators_generation_inputs(collator):
    examples = raw_examples(3, unlabelled=(1,))
    batch = collator(examples)
    pad = collator.tokenizer.pad_token_id
    for view in (None, "text", "image"):
        inputs = (
            {k: v for k, v in batch.items() if not k.startswith("view_")}
            if view is None
            else view_inputs(batch, view)
        )
        starts = answer_starts(inputs.pop("distillation_labels"))
        got = prompt_inputs(inputs, starts, pad)
        want = collator.generation_inputs(examples, view=view)
        assert set(got) == set(want), view
        for key in want:
            torch.testing.assert_close(got[key], want[key], msg=f"{view} {key}")


def test_rewritten_batch_equals_the_collation_of_the_new_answers(collator):
    """Answers of other lengths ("no", "what color", "yes ? ?") put in every view give the batch the collator
    builds when those are the examples' distilled answers; the gold x stays in the gold view."""
    examples = raw_examples(3, unlabelled=(1,))
    batch = collator(examples)
    new = ["no", "what color", "yes ? ?"]
    answers = [torch.tensor(collator.completion_ids(e["question"], a)) for e, a in zip(examples, new)]
    assert answers[1].tolist()[:2] == [IDS["what"], IDS["color"]]
    out = with_answers(batch, answers, collator.tokenizer.pad_token_id)
    want = collator([{**e, "answer": None, "teacher_answer": a} for e, a in zip(examples, new)])
    assert (want["labels"] == X).all()  # no gold answer in the reference, as in the on-policy x
    gold = {
        key: out.pop(f"view_{GOLD_VIEW}__{key}")
        for key in list(batch)
        if not key.startswith("view_") and key != "distillation_labels"
    }
    assert set(out) == set(want)
    for key in want:
        torch.testing.assert_close(out[key], want[key], msg=key)
    for key, value in gold.items():
        torch.testing.assert_close(value, batch[key], msg=f"gold {key}")
