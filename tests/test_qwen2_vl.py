"""Qwen2-VL through the generative path: collator, training steps, generation and serving (the KD and MSD
losses against the hand computations and gradient accumulation: tests/test_generative_vlm.py; the
teacher-output cache: tests/test_generative_teacher_cache.py; both with ``family="qwen2_vl"``).

The models and processor come from :func:`hf_msd.models.vision_language.vlm_processor` /
:func:`~hf_msd.models.vision_language.tiny_vlm` (``family="qwen2_vl"``): Qwen2-VL's processor without its
video processor (which needs torchvision), the word-level vocabulary of ``tests/helpers/vlm.py`` and 32 x 32
images cut into 8 x 8 patches, merged 2 x 2: 4 image tokens per image, 16 patches of 3 * 2 * 8 * 8 values.
Qwen2-VL's processor returns ``mm_token_type_ids`` (1 on image tokens), which the model needs for its
multimodal RoPE; the collator pads it like the ids, 0 over the answer.
"""

from __future__ import annotations

import pytest
import torch
from test_generative_vlm import X
from transformers import pipeline

from hf_msd.data import VisionLanguageCollator
from hf_msd.data.generative import view_inputs
from hf_msd.models.vision_language import Qwen2VLImageTextProcessor
from hf_msd.trainers import DistillationTrainer, MSDTrainer
from tests.helpers.vlm import IDS, family_processor_and_models, msd_args, raw_examples

PAD, BOS, EOS, IMAGE, USER, ASSISTANT, COLON = 0, 2, 3, 4, 5, 6, 7


def qwen():
    return family_processor_and_models("qwen2_vl")


def test_collator_pads_mm_token_type_ids_over_the_answer_in_every_view():
    proc, _, _ = qwen()
    examples = raw_examples(2, unlabelled=(1,))  # row 1: distilled on its teacher_answer "yes"
    collator = VisionLanguageCollator(proc)
    batch = collator(examples)
    what, shape, is_, the, q, color = IDS["what"], IDS["shape"], IDS["is"], IDS["the"], IDS["?"], IDS["color"]
    circle, yes = IDS["circle"], IDS["yes"]
    image = [IMAGE] * 4
    # <s> USER : <image>x4 what shape is the ? ASSISTANT : circle </s>
    full0 = [BOS, USER, COLON, *image, what, shape, is_, the, q, ASSISTANT, COLON, circle, EOS]
    full1 = [BOS, USER, COLON, *image, what, color, is_, the, shape, q, ASSISTANT, COLON, yes, EOS]
    assert batch["input_ids"].tolist() == [[*full0, PAD], full1]
    types = [0, 0, 0, 1, 1, 1, 1]  # text, then the 4 image tokens; 0 from the question on
    assert batch["mm_token_type_ids"].tolist() == [types + [0] * 10, types + [0] * 10]
    assert batch["distillation_labels"].tolist() == [[X] * 14 + [circle, EOS, X], [X] * 15 + [yes, EOS]]
    assert batch["labels"].tolist() == [[X] * 14 + [circle, EOS, X], [X] * 17]
    assert batch["pixel_values"].shape == (2 * 16, 3 * 2 * 8 * 8)  # every image's patches, concatenated
    assert batch["image_grid_thw"].tolist() == [[1, 4, 4], [1, 4, 4]]
    text = view_inputs(batch, "text")  # no image tokens: all text
    assert text["mm_token_type_ids"].tolist() == [[0] * 13, [0] * 13]
    assert text["input_ids"].shape == (2, 13) and "pixel_values" not in text
    image_view = view_inputs(batch, "image")
    assert image_view["input_ids"].tolist() == [
        [BOS, USER, COLON, *image, ASSISTANT, COLON, circle, EOS],
        [BOS, USER, COLON, *image, ASSISTANT, COLON, yes, EOS],
    ]
    assert image_view["mm_token_type_ids"].tolist() == [types + [0] * 4] * 2
    torch.testing.assert_close(image_view["pixel_values"], batch["pixel_values"])
    prompts = collator.generation_inputs(examples)  # left-padded, no answer
    assert prompts["input_ids"].tolist() == [
        [PAD, BOS, USER, COLON, *image, what, shape, is_, the, q, ASSISTANT, COLON],
        [BOS, USER, COLON, *image, what, color, is_, the, shape, q, ASSISTANT, COLON],
    ]
    assert prompts["mm_token_type_ids"].tolist() == [[0] + types + [0] * 7, types + [0] * 8]


@pytest.mark.parametrize("trainer_class", [DistillationTrainer, MSDTrainer])
def test_a_training_step_moves_the_student(tmp_path, trainer_class):
    proc, teacher, student = qwen()
    start = {name: p.detach().clone() for name, p in student.named_parameters()}
    trainer = trainer_class(
        model=student,
        teacher_model=teacher,
        args=msd_args(tmp_path, per_device_train_batch_size=4, max_steps=1, save_strategy="no"),
        data_collator=VisionLanguageCollator(proc, views=trainer_class is MSDTrainer),
        train_dataset=raw_examples(4, unlabelled=(1,)),
    )
    trainer.train()
    params = dict(student.named_parameters())
    assert all(torch.isfinite(p).all() for p in params.values())
    assert max((params[k] - start[k]).abs().max().item() for k in start) > 1e-3


def test_greedy_generation_on_the_collators_prompts_matches_step_by_step_argmax():
    """``generate`` (cache, 3D positions from the left-padded prompt's ``mm_token_type_ids``) picks, at each
    step, the argmax of a full forward pass over the prompt plus the tokens picked so far (``</s>`` and the
    image and video tokens excluded, so that the untrained model keeps generating text)."""
    proc, teacher, _ = qwen()
    teacher.eval()
    inputs = VisionLanguageCollator(proc).generation_inputs(raw_examples(2))
    suppressed = [EOS, proc.image_token_id, proc.video_token_id]
    generated = teacher.generate(**inputs, max_new_tokens=3, suppress_tokens=suppressed, do_sample=False)
    prompt_length = inputs["input_ids"].shape[1]
    assert generated.shape == (2, prompt_length + 3)
    assert torch.equal(generated[:, :prompt_length], inputs["input_ids"])
    sequence = dict(inputs)
    for step in range(3):
        with torch.no_grad():
            logits = teacher(**sequence).logits[:, -1]
        logits[:, suppressed] = -torch.inf
        picked = logits.argmax(-1)
        assert torch.equal(picked, generated[:, prompt_length + step]), step
        ones = torch.ones(2, 1, dtype=torch.long)
        sequence["input_ids"] = torch.cat([sequence["input_ids"], picked[:, None]], dim=1)
        sequence["attention_mask"] = torch.cat([sequence["attention_mask"], ones], dim=1)
        sequence["mm_token_type_ids"] = torch.cat([sequence["mm_token_type_ids"], 0 * ones], dim=1)


def test_saved_model_and_processor_serve_the_pipeline(tmp_path):
    """`AutoProcessor` would build `Qwen2VLProcessor` (which needs torchvision): the saved processor is loaded
    with `Qwen2VLImageTextProcessor.from_pretrained` and given to the pipeline, whose greedy answer is the
    model's greedy continuation of the collator's prompt (text tokens only: the untrained model answers)."""
    proc, teacher, _ = qwen()
    teacher.save_pretrained(tmp_path)
    proc.save_pretrained(tmp_path)
    loaded = Qwen2VLImageTextProcessor.from_pretrained(tmp_path)
    example = raw_examples(1)
    batch = VisionLanguageCollator(loaded)(example)
    for key, value in VisionLanguageCollator(proc)(example).items():
        torch.testing.assert_close(batch[key], value, msg=key)
    vqa = pipeline("image-text-to-text", model=str(tmp_path), processor=loaded)
    keep_text = {"max_new_tokens": 2, "suppress_tokens": [EOS, proc.image_token_id, proc.video_token_id]}
    chat = VisionLanguageCollator.messages(example[0]["question"], with_image=True)
    chat[0]["content"][0]["image"] = example[0]["image"]
    answer = vqa(text=chat, generate_kwargs=keep_text, return_full_text=False)[0]["generated_text"]
    inputs = VisionLanguageCollator(proc).generation_inputs(example)
    generated = teacher.eval().generate(**inputs, **keep_text, do_sample=False)
    expected = proc.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    assert answer.strip() == expected.strip() and expected.strip()
