"""Tiny LLaVA teacher / student, their processor and raw image-question-answer examples for the generative
tests.

The vocabulary is written out here (ids fixed by :func:`hf_msd.models.vision_language.word_level_tokenizer`:
the 5 special tokens, the 3 template words, then these words sorted), so tests can spell token ids by hand.
Images are 16 x 16 with patch 8: every ``<image>`` becomes 4 image tokens.
"""

from __future__ import annotations

import dataclasses

from PIL import Image

from hf_msd.models.vision_language import (
    llava_processor,
    tiny_llava,
    tiny_vlm,
    vlm_processor,
    word_level_tokenizer,
)
from hf_msd.trainers import MSDTrainingArguments

WORDS = ["?", "blue", "circle", "color", "is", "no", "red", "shape", "the", "what", "yes"]
# <pad> 0, <unk> 1, <s> 2, </s> 3, <image> 4, USER 5, ASSISTANT 6, : 7, then WORDS in order from 8.
IDS = {word: 8 + i for i, word in enumerate(WORDS)}

QUESTIONS = [
    ("what shape is the ?", "circle"),
    ("what color is the shape ?", "red"),
    ("is the shape blue ?", "no"),
    ("what color is the shape ?", "blue"),
    ("is the shape red ?", "yes"),
    ("what shape ?", "circle"),
    ("is the circle blue ?", "yes"),
    ("what is the color ?", "red"),
]


def processor():
    return llava_processor(word_level_tokenizer(WORDS), image_size=16, patch_size=8)


def teacher_and_student(seed: int = 0):
    """A 2-layer teacher (width 32) and a 1-layer student (width 16), dropout-free, on one processor."""
    proc = processor()
    teacher = tiny_llava(
        proc, hidden_size=32, num_layers=2, vision_hidden_size=16, vision_layers=1, seed=seed
    )
    student = tiny_llava(
        proc, hidden_size=16, num_layers=1, vision_hidden_size=16, vision_layers=1, seed=seed + 1
    )
    return teacher, student


def image(index: int) -> Image.Image:
    colours = ["red", "blue", "green", "yellow"]
    return Image.new("RGB", (16, 16), colours[index % len(colours)])


def raw_examples(n: int = 8, unlabelled: tuple[int, ...] = ()) -> list[dict]:
    """``n`` examples ``{"image", "question", "answer", "teacher_answer"}``; rows in ``unlabelled`` have no
    gold answer (their distilled answer is ``teacher_answer``, "yes")."""
    rows = []
    for i in range(n):
        question, answer = QUESTIONS[i % len(QUESTIONS)]
        rows.append(
            {
                "image": image(i),
                "question": question,
                "answer": None if i in unlabelled else answer,
                "teacher_answer": "yes",
            }
        )
    return rows


def msd_args(output_dir, **overrides) -> MSDTrainingArguments:
    """Deterministic CPU arguments for one SGD step (as tests/distillation_utils.make_args)."""
    from tests.helpers.distillation import make_args

    base = make_args(output_dir, remove_unused_columns=False, train_sampling_strategy="sequential")
    fields = {f.name: getattr(base, f.name) for f in dataclasses.fields(base) if f.init}
    fields.update(
        temperature=2.0,
        hard_label_weight=0.3,
        kd_loss_weight=0.7,
        modality_loss_weight=0.5,
        learning_rate=0.5,
    )
    fields.update(overrides)
    return MSDTrainingArguments(**fields)


def family_processor_and_models(family: str, image_size: int = 32):
    """A ``family`` processor on :data:`WORDS` (patch 8; 4 image tokens per 32 x 32 image for idefics3 and
    qwen2_vl) and a 2-layer teacher (width 32) and a 1-layer student (width 16), built by the library's
    builders."""
    proc = vlm_processor(family, WORDS, image_size=image_size, patch_size=8)
    sizes = dict(vision_hidden_size=16, vision_layers=1)
    teacher = tiny_vlm(family, proc, hidden_size=32, num_layers=2, seed=0, **sizes)
    student = tiny_vlm(family, proc, hidden_size=16, num_layers=1, seed=1, **sizes)
    return proc, teacher, student


def idefics3_processor_and_models():
    """An Idefics3 (SmolVLM's architecture) processor (one 32 x 32 tile, 4 image tokens), teacher and
    student."""
    return family_processor_and_models("idefics3")
