"""A convolutional image tower (ResNet) in the fusion transformer: its feature map becomes image tokens,
it saves and reloads, students are built from it, and a missing `image_size` is refused."""

import pytest
import torch
from transformers import AutoModelForSequenceClassification

from hf_msd.models import (
    MultimodalTransformerConfig,
    MultimodalTransformerForSequenceClassification,
    make_student,
    student_from_config,
)
from tests.helpers.models import TINY_IMAGE_SIZE, tiny_batch, tiny_config
from tests.helpers.models import TINY_RESNET as RESNET


def resnet_model(seed: int = 0, **overrides):
    torch.manual_seed(seed)
    config = tiny_config(vision_config=dict(RESNET), **overrides)
    return MultimodalTransformerForSequenceClassification(config).eval()


def test_feature_map_positions_become_tokens_in_row_major_order():
    model, batch = resnet_model(), tiny_batch()
    base = model.multimodal_transformer
    with torch.no_grad():
        out = model(**batch, output_hidden_states=True)
        feature_map = base.image_encoder(pixel_values=batch["pixel_values"]).last_hidden_state
    b, c, h, w = feature_map.shape
    assert (c, h, w) == (12, 2, 2)  # 16x16 image: stem /4, second stage /2
    tokens = torch.empty(b, h * w, c)
    for i in range(h):
        for j in range(w):
            tokens[:, i * w + j, :] = feature_map[:, :, i, j]
    expected = base.image_projection(tokens)  # width 12 -> fusion width 32
    text_length = batch["input_ids"].shape[1]
    fused_input = out.hidden_states[0]
    assert fused_input.shape == (b, text_length + h * w, 32)
    assert torch.allclose(fused_input[:, text_length:], expected, atol=1e-6)
    assert base.image_projection.in_features == 12  # the last of `hidden_sizes`


def test_image_only_input_and_gradients_reach_the_convolutions():
    model, batch = resnet_model(), tiny_batch()
    model.train()
    labels = torch.arange(batch["pixel_values"].shape[0]) % 3
    model(pixel_values=batch["pixel_values"], labels=labels).loss.backward()
    stem = model.multimodal_transformer.image_encoder.embedder.embedder.convolution.weight
    assert stem.grad is not None and stem.grad.abs().sum() > 0


def test_save_and_reload_give_the_same_logits(tmp_path):
    model, batch = resnet_model(), tiny_batch()
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded.config.vision_config).__name__ == "ResNetConfig"
    assert reloaded.config.image_size == TINY_IMAGE_SIZE
    with torch.no_grad():
        assert torch.equal(reloaded(**batch).logits, model(**batch).logits)


def test_missing_image_size_is_refused_naming_the_field():
    without = {key: value for key, value in RESNET.items() if key != "image_size"}
    with pytest.raises(ValueError, match=r"vision_config\.image_size"):
        MultimodalTransformerConfig(num_labels=3, vision_config=without)
    assert tiny_config(vision_config=dict(RESNET)).patch_size is None  # no such field: None, not an error


def test_make_student_copies_a_convolutional_tower_whole():
    teacher = resnet_model()
    student = make_student(teacher)
    teacher_tower = teacher.multimodal_transformer.image_encoder.state_dict()
    student_tower = student.multimodal_transformer.image_encoder.state_dict()
    assert student_tower.keys() == teacher_tower.keys()
    assert all(torch.equal(student_tower[k], teacher_tower[k]) for k in teacher_tower)
    assert student.config.num_hidden_layers == 1  # fusion layers 0 of 2 kept
    with pytest.raises(ValueError, match=r"image_layers_to_keep.*resnet"):
        make_student(teacher, image_layers_to_keep=[0])


def test_student_from_config_narrows_the_convolutional_tower():
    teacher = resnet_model()
    student = student_from_config(
        teacher, {"hidden_size": 16, "vision_config": {"embedding_size": 4, "hidden_sizes": [4, 6]}}
    )
    assert student.config.vision_config.hidden_sizes == [4, 6]
    assert student.multimodal_transformer.image_projection.in_features == 6
    batch = tiny_batch()
    with torch.no_grad():
        assert student(**batch).logits.shape == (batch["input_ids"].shape[0], 3)
