"""The tiny vision-language builders of every family (:func:`hf_msd.models.vision_language.vlm_processor` and
:func:`~hf_msd.models.vision_language.tiny_vlm`): swapping ``family`` is the only change a caller makes.

Expected image tokens per 32 x 32 image with 8 x 8 patches, from each architecture's definition: LLaVA one
per patch (16); Idefics3 and Qwen2-VL merge 2 x 2 patches into one (4).
"""

from __future__ import annotations

import pytest
import torch

from hf_msd.data import VisionLanguageCollator
from hf_msd.models.vision_language import VLM_FAMILIES, tiny_vlm, vlm_processor
from tests.helpers.vlm import WORDS, processor, raw_examples

UNK, IMAGE = 1, 4
IMAGE_TOKENS = {"llava": 16, "idefics3": 4, "qwen2_vl": 4}


@pytest.mark.parametrize("family", sorted(IMAGE_TOKENS))
def test_each_family_builds_a_processor_and_models_that_train_on_the_collators_batch(family):
    proc = vlm_processor(family, WORDS, image_size=32, patch_size=8)
    batch = VisionLanguageCollator(proc, views=False)(raw_examples(2))
    assert (batch["input_ids"] == IMAGE).sum(dim=1).tolist() == [IMAGE_TOKENS[family]] * 2
    assert not (batch["input_ids"] == UNK).any()  # the family's image markers are whole tokens
    model = tiny_vlm(
        family, proc, hidden_size=32, num_layers=1, vision_hidden_size=16, vision_layers=1, seed=3
    )
    again = tiny_vlm(
        family, proc, hidden_size=32, num_layers=1, vision_hidden_size=16, vision_layers=1, seed=3
    )
    for (name, value), other in zip(model.named_parameters(), again.parameters()):
        torch.testing.assert_close(value, other, msg=name)
    output = model(**{k: v for k, v in batch.items() if k != "distillation_labels"})
    assert output.logits.shape == (*batch["input_ids"].shape, len(proc.tokenizer))
    assert torch.isfinite(output.loss)
    output.loss.backward()
    assert model.get_input_embeddings().weight.grad.abs().sum() > 0


def test_llava_family_is_the_llava_builder():
    examples = raw_examples(2)
    built = VisionLanguageCollator(vlm_processor("llava", WORDS, image_size=16, patch_size=8))(examples)
    reference = VisionLanguageCollator(processor())(examples)
    assert built.keys() == reference.keys()
    for key, value in reference.items():
        torch.testing.assert_close(built[key], value, msg=key)


def test_unknown_family_and_bad_image_size_are_refused_by_name():
    assert sorted(VLM_FAMILIES) == ["idefics3", "llava", "qwen2_vl"]
    choices = r"\['idefics3', 'llava', 'qwen2_vl'\]"
    with pytest.raises(ValueError, match=rf"family='blip' .*{choices}"):
        vlm_processor("blip", WORDS)
    with pytest.raises(ValueError, match=rf"family='blip' .*{choices}"):
        tiny_vlm("blip", processor())
    with pytest.raises(ValueError, match=r"image_size=24 .* patch_size \* 2 = 16.*family='qwen2_vl'"):
        vlm_processor("qwen2_vl", WORDS, image_size=24, patch_size=8)
