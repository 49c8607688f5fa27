"""Teacher stages and students of generative vision-language models, against hand computations: the image
labels read off the answers, the tower classifier's pooled logits and loss, the layer-dropped student against
a model of that size built from the teacher's weights by hand, and the cached full-input targets."""

from __future__ import annotations

import pytest
import torch
from datasets import Dataset

from hf_msd.data import VisionLanguageCollator
from hf_msd.models import vision_language_parts as parts
from hf_msd.models.vision_language import VLM_FAMILIES, tiny_llava, tiny_vlm, vlm_processor
from hf_msd.models.vision_language_students import vision_language_student
from hf_msd.models.vision_tower_pretraining import (
    VisionTowerClassifier,
    image_attribute_labels,
    pretrain_vision_tower,
)
from hf_msd.teacher_outputs.full_input_targets import with_full_input_targets
from tests.helpers.vlm import WORDS, processor, raw_examples

ATTRIBUTES = {"shape": ["circle", "square"], "color": ["red", "blue", "green"]}


def test_image_labels_are_read_off_the_answers():
    labels = image_attribute_labels(
        [7, 7, 7, 3, 3, 9], ["circle", "yes", "blue", "green", "no", "no"], ATTRIBUTES
    )
    assert labels == {
        7: {"shape": 0, "color": 1},
        3: {"shape": -100, "color": 2},
        9: {"shape": -100, "color": -100},
    }
    with pytest.raises(ValueError, match="Image 7 has two shape answers"):
        image_attribute_labels([7, 7], ["circle", "square"], ATTRIBUTES)


def tower_classifier(seed=0):
    model = tiny_llava(processor(), vision_hidden_size=16, vision_layers=1, seed=seed)
    return VisionTowerClassifier(model.model.vision_tower, {"shape": 2, "color": 3})


def test_tower_classifier_pools_the_patch_tokens_and_sums_the_masked_losses():
    torch.manual_seed(0)
    classifier = tower_classifier().eval()
    pixels = torch.randn(4, 3, 16, 16)
    labels = {"shape": torch.tensor([1, -100, 0, -100]), "color": torch.tensor([-100, -100, -100, -100])}
    hidden = classifier.tower(pixel_values=pixels).last_hidden_state  # (4, 1 + 4 patches, 16)
    pooled = hidden[:, 1:].sum(1) / 4
    head = classifier.heads["shape"]
    expected_logits = pooled @ head.weight.T + head.bias
    logits = classifier(pixels)
    torch.testing.assert_close(logits["shape"], expected_logits)
    assert logits["color"].shape == (4, 3)
    # Only the shape is labelled (rows 0 and 2): the loss is their mean cross-entropy.
    log_p = expected_logits.log_softmax(-1)
    expected_loss = -(log_p[0, 1] + log_p[2, 0]) / 2
    torch.testing.assert_close(classifier.loss(pixels, labels), expected_loss)
    accuracy = classifier.accuracy(pixels, labels)
    hand = [int(expected_logits[i].argmax() == gold) for i, gold in ((0, 1), (2, 0))]
    assert accuracy == {"shape": sum(hand) / 2, "color": 0.0}


def test_pretraining_learns_a_separable_attribute():
    torch.manual_seed(0)
    classifier = tower_classifier()
    pixels = torch.randn(32, 3, 16, 16) * 0.1
    shape = torch.arange(32) % 2
    pixels[shape == 1, 0] += 1.0  # the red channel tells the shape
    labels = {"shape": shape, "color": torch.full((32,), -100)}
    losses = pretrain_vision_tower(classifier, pixels, labels, epochs=15, learning_rate=1e-2, batch_size=8)
    assert losses[-1] < 0.5 * losses[0]
    assert classifier.accuracy(pixels, labels)["shape"] == 1.0
    with pytest.raises(ValueError, match="epochs must be >= 1"):
        pretrain_vision_tower(classifier, pixels, labels, epochs=0, learning_rate=1e-2)


def test_layer_dropped_student_is_the_teacher_with_those_layers():
    proc = processor()
    teacher = tiny_llava(proc, hidden_size=16, num_layers=3, vision_hidden_size=16, vision_layers=1, seed=0)
    teacher.requires_grad_(False)
    student = vision_language_student(teacher, language_layers_to_keep=[0, 2])
    # The reference: a 2-layer model of the same sizes whose weights are copied from the teacher by name.
    reference = tiny_llava(proc, hidden_size=16, num_layers=2, vision_hidden_size=16, vision_layers=1, seed=5)
    state = teacher.state_dict()
    for name in reference.state_dict():
        source = name.replace("layers.1.", "layers.2.") if "language_model.layers.1." in name else name
        reference.state_dict()[name].copy_(state[source])
    reference.eval()
    student.eval()
    inputs = proc(
        text=["USER : <image> what shape is the ? ASSISTANT :"] * 2,
        images=[example["image"] for example in raw_examples(2)],
        return_tensors="pt",
    )
    torch.testing.assert_close(student(**inputs).logits, reference(**inputs).logits)
    generated = student.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    expected = reference.generate(**inputs, max_new_tokens=4, do_sample=False, min_new_tokens=4)
    assert torch.equal(generated, expected)  # the key-value cache follows the renumbered layers
    assert student.config.text_config.num_hidden_layers == 2
    # The tower is frozen, the rest trainable although the teacher is frozen; the teacher is unchanged.
    assert not any(p.requires_grad for p in student.model.vision_tower.parameters())
    assert all(p.requires_grad for n, p in student.named_parameters() if "vision_tower" not in n)
    assert len(teacher.model.language_model.layers) == 3


def test_random_tower_student_and_bad_layers():
    teacher = tiny_llava(processor(), hidden_size=16, num_layers=2, vision_hidden_size=16, vision_layers=1)
    student = vision_language_student(teacher, vision_tower="random", freeze_vision_tower=False, seed=3)
    for part in ("vision_tower", "multi_modal_projector"):
        mine, theirs = getattr(student.model, part).state_dict(), getattr(teacher.model, part).state_dict()
        assert mine.keys() == theirs.keys()
        assert any(not torch.equal(mine[k], theirs[k]) for k in mine if mine[k].dtype.is_floating_point)
    assert all(p.requires_grad for p in student.parameters())
    assert len(student.model.language_model.layers) == 1  # every other layer: [0]
    with pytest.raises(ValueError, match="language_layers_to_keep must list distinct layer indices in"):
        vision_language_student(teacher, language_layers_to_keep=[0, 2])
    with pytest.raises(ValueError, match="vision_tower='pretrained' is unknown"):
        vision_language_student(teacher, vision_tower="pretrained")


def test_full_input_targets_replace_every_view_column():
    full = [[[1.0, 2.0]], [[3.0, 4.0], [5.0, 6.0]]]
    dataset = Dataset.from_dict(
        {
            "question": ["a", "b"],
            "teacher_logits": full,
            "teacher_logits_image": [[[0.0, 0.0]], [[0.0, 0.0], [0.0, 0.0]]],
            "teacher_logits_text__topk_logits": [[[9.0]], [[9.0], [9.0]]],
            "teacher_logits__topk_logits": [[[7.0]], [[8.0], [8.5]]],
        }
    )
    replaced = with_full_input_targets(dataset)
    assert replaced["teacher_logits_image"] == full
    assert replaced["teacher_logits_text__topk_logits"] == [[[7.0]], [[8.0], [8.5]]]
    assert replaced["teacher_logits"] == full and replaced["question"] == ["a", "b"]
    with pytest.raises(ValueError, match="no cached 'teacher_logits' column"):
        with_full_input_targets(dataset.remove_columns(["teacher_logits", "teacher_logits__topk_logits"]))


# Each family's parts, written out from transformers' modeling files: the vision tower (for Qwen2-VL the
# patch embedding and the blocks of `visual`, not its merger), the projector, the decoder's layer prefix.
TOWER = {
    "llava": ("model.vision_tower.",),
    "idefics3": ("model.vision_model.",),
    "qwen2_vl": ("model.visual.patch_embed.", "model.visual.blocks."),
}
PROJECTOR = {
    "llava": "model.multi_modal_projector.",
    "idefics3": "model.connector.",
    "qwen2_vl": "model.visual.merger.",
}
LAYERS = {
    "llava": "model.language_model.layers.",
    "idefics3": "model.text_model.layers.",
    "qwen2_vl": "model.language_model.layers.",
}
FAMILIES = sorted(TOWER)


# The language model (32) and the vision tower (16) differ in width, so a tower read at the wrong width fails.
def family_teacher(family, num_layers=2):
    proc = vlm_processor(family, WORDS, image_size=32, patch_size=8)
    model = tiny_vlm(
        family, proc, hidden_size=32, num_layers=num_layers, vision_hidden_size=16, vision_layers=1, seed=0
    )
    return proc, model


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_teacher_stages_train_the_parts_they_name(family):
    _, model = family_teacher(family)
    names = [name for name, _ in model.named_parameters()]
    tower = {n for n in names if n.startswith(TOWER[family])}
    projector = {n for n in names if n.startswith(PROJECTOR[family])}
    assert tower and projector
    parts.set_trainable_parts(model, ("projector",))  # stage 2
    assert {n for n, p in model.named_parameters() if p.requires_grad} == projector
    parts.set_trainable_parts(model, ("projector", "language_model"))  # stage 3: all but the tower
    assert {n for n, p in model.named_parameters() if not p.requires_grad} == tower
    with pytest.raises(ValueError, match=r"Unknown part\(s\) \['vision_tower'\]"):
        parts.set_trainable_parts(model, ("vision_tower",))


def pooled_by_hand(family, model, images):
    """Each image's mean last-layer patch token, one image at a time from the processor's own outputs."""
    proc = vlm_processor(family, WORDS, image_size=32, patch_size=8)
    rows = []
    for image in images:
        if family == "llava":
            pixels = proc.image_processor([image], return_tensors="pt")["pixel_values"]
            tokens = model.model.vision_tower(pixel_values=pixels).last_hidden_state[0, 1:]  # no CLS token
        elif family == "idefics3":
            pixels = proc.image_processor([[image]], return_tensors="pt")["pixel_values"]  # (1, 1, 3, S, S)
            tokens = model.model.vision_model(pixel_values=pixels[0]).last_hidden_state[0]
        else:
            out = proc.image_processor([image], return_tensors="pt")
            tokens = model.model.visual(out["pixel_values"], grid_thw=out["image_grid_thw"]).last_hidden_state
        rows.append(tokens.mean(0))
    return torch.stack(rows)


@pytest.mark.parametrize("family", FAMILIES)
def test_each_familys_tower_classifier_pools_its_patch_tokens(family):
    proc, model = family_teacher(family)
    model.eval()
    images = [example["image"] for example in raw_examples(3)]
    classifier = parts.tower_classifier(model, {"shape": 2, "color": 3}).eval()
    tower = {"llava": "model.vision_tower", "idefics3": "model.vision_model", "qwen2_vl": "model.visual"}
    assert classifier.tower is model.get_submodule(tower[family])  # shared, not copied
    pooled = pooled_by_hand(family, model, images)
    head = classifier.heads["color"]
    logits = classifier(parts.image_rows(family, proc.image_processor, images))
    torch.testing.assert_close(logits["color"], pooled @ head.weight.T + head.bias)


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_each_familys_layer_dropped_student_is_the_teacher_with_those_layers(family):
    proc, teacher = family_teacher(family, num_layers=3)
    teacher.requires_grad_(False)
    student = vision_language_student(teacher, language_layers_to_keep=[0, 2])
    _, reference = family_teacher(family, num_layers=2)
    state = teacher.state_dict()
    layer_one = LAYERS[family] + "1."
    for name in reference.state_dict():
        source = name.replace(layer_one, LAYERS[family] + "2.") if name.startswith(layer_one) else name
        reference.state_dict()[name].copy_(state[source])
    reference.eval()
    student.eval()
    batch = VisionLanguageCollator(proc, views=False).generation_inputs(raw_examples(2))
    torch.testing.assert_close(student(**batch).logits, reference(**batch).logits)
    generated = student.generate(**batch, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    assert torch.equal(
        generated, reference.generate(**batch, max_new_tokens=3, do_sample=False, min_new_tokens=3)
    )
    # The family's tower is frozen (not its projector); the rest trains although the teacher is frozen.
    frozen = {n for n, p in student.named_parameters() if not p.requires_grad}
    assert frozen == {n for n, _ in student.named_parameters() if n.startswith(TOWER[family])}


@pytest.mark.parametrize("family", ["idefics3", "qwen2_vl"])
def test_each_familys_random_tower_student_redraws_the_tower_and_projector_only(family):
    _, teacher = family_teacher(family)
    student = vision_language_student(teacher, vision_tower="random", freeze_vision_tower=False, seed=3)
    again = vision_language_student(teacher, vision_tower="random", freeze_vision_tower=False, seed=3)
    theirs = dict(teacher.named_parameters())
    vision = (*TOWER[family], PROJECTOR[family])
    for name, value in student.named_parameters():
        torch.testing.assert_close(value, dict(again.named_parameters())[name])  # seeded
        if name.startswith(vision) and value.dim() > 1:
            assert not torch.equal(value, theirs[name]), name
        elif not name.startswith(vision):
            assert torch.equal(value, theirs[name]), name  # layer 0 and the rest of the language model
    assert all(p.requires_grad for p in student.parameters())


def test_every_buildable_family_has_a_layout():
    assert sorted(parts.VLM_LAYOUTS) == sorted(VLM_FAMILIES) == FAMILIES
    with pytest.raises(ValueError, match=r"family='blip' has no known layout"):
        parts.vlm_layout("blip")
