import pytest
import torch

from hf_msd.architectures import default_modalities
from hf_msd.modalities.modality import (
    REMOVAL_STRATEGIES,
    Modality,
    model_inputs,
    register_removal_strategy,
    remove,
    restrict,
    validate_modalities,
)
from tests.helpers.models import tiny_batch, tiny_model, tiny_vilt
from tests.helpers.models import tiny_vilt_batch as vilt_batch

TEXT = Modality(
    "text", keys=["input_ids", "attention_mask"], optional_keys=["token_type_ids"], removal="mask"
)
IMAGE = Modality("image", keys=["pixel_values"], optional_keys=["pixel_mask"], removal="fill", fill_value=0.5)


def test_drop_leaves_keys_out_and_passes_other_keys_through():
    batch = vilt_batch(4)
    text = Modality("text", keys=["input_ids", "attention_mask"], optional_keys=["token_type_ids"])
    image = Modality("image", keys=["pixel_values", "pixel_mask"])
    x_text = restrict(batch, [text, image], keep="text")
    assert set(x_text) == {"input_ids", "attention_mask", "token_type_ids", "labels"}
    assert x_text["input_ids"] is batch["input_ids"]
    x_image = restrict(batch, [text, image], keep="image")
    assert set(x_image) == {"pixel_values", "pixel_mask", "labels"}
    assert "input_ids" in batch  # not modified in place


def test_mask_sets_ids_to_padding_masks_and_token_types_to_zero():
    batch = vilt_batch(4)
    batch["token_type_ids"] = torch.ones_like(batch["token_type_ids"])
    text = Modality(
        "text", keys=["input_ids", "attention_mask", "token_type_ids"], removal="mask", pad_token_id=7
    )
    out = remove(batch, [text, IMAGE], "text")
    assert torch.equal(out["input_ids"], torch.full_like(batch["input_ids"], 7))
    assert torch.equal(out["attention_mask"], torch.zeros_like(batch["attention_mask"]))
    assert torch.equal(out["token_type_ids"], torch.zeros_like(batch["token_type_ids"]))
    assert torch.equal(out["pixel_values"], batch["pixel_values"])
    assert batch["attention_mask"].sum() > 0


def test_mask_on_image_zeroes_pixel_mask_and_fills_pixels():
    batch = vilt_batch(4)
    image = Modality("image", keys=["pixel_values", "pixel_mask"], removal="mask", fill_value=-1.0)
    out = remove(batch, [TEXT, image], "image")
    assert torch.equal(out["pixel_mask"], torch.zeros_like(batch["pixel_mask"]))
    assert torch.equal(out["pixel_values"], torch.full_like(batch["pixel_values"], -1.0))


def test_fill_with_mean_image_broadcasts_and_keeps_masks():
    batch = vilt_batch(4)
    mean_image = torch.arange(3.0).reshape(3, 1, 1).expand(3, 32, 32)
    image = Modality(
        "image", keys=["pixel_values"], optional_keys=["pixel_mask"], removal="fill", fill_value=mean_image
    )
    out = restrict(batch, [TEXT, image], keep="text")
    expected = torch.stack([mean_image] * 4)
    assert torch.equal(out["pixel_values"], expected)
    assert torch.equal(out["pixel_mask"], batch["pixel_mask"])
    assert torch.equal(out["input_ids"], batch["input_ids"])


def test_custom_removal_strategy_is_used():
    @register_removal_strategy("negate")
    def negate(batch, modality):
        return {**batch, **{key: -batch[key] for key in modality.keys}}

    try:
        batch = vilt_batch(4)
        image = Modality("image", keys=["pixel_values"], removal="negate")
        out = remove(batch, [TEXT, image], "image")
        assert torch.equal(out["pixel_values"], -batch["pixel_values"])
    finally:
        del REMOVAL_STRATEGIES["negate"]


def test_unknown_removal_names_the_field():
    with pytest.raises(ValueError, match="removal='erase'"):
        Modality("text", keys=["input_ids"], removal="erase")


def test_unknown_modality_name():
    with pytest.raises(ValueError, match="audio"):
        restrict(vilt_batch(4), [TEXT, IMAGE], keep="audio")


def test_vilt_spec_matches_hand_built_inputs():
    model = tiny_vilt()
    modalities = default_modalities(model)
    assert [(m.name, m.removal) for m in modalities] == [("text", "mask"), ("image", "fill")]
    batch = vilt_batch(4)
    validate_modalities(modalities, batch, model)
    with torch.no_grad():
        got_text = model(**model_inputs(model, restrict(batch, modalities, keep="text"))).logits
        got_image = model(**model_inputs(model, restrict(batch, modalities, keep="image"))).logits
        want_text = model(
            input_ids=batch["input_ids"],
            attention_mask=batch["attention_mask"],
            token_type_ids=batch["token_type_ids"],
            pixel_values=torch.zeros_like(batch["pixel_values"]),
            pixel_mask=batch["pixel_mask"],
        ).logits
        want_image = model(
            input_ids=torch.zeros_like(batch["input_ids"]),
            attention_mask=torch.zeros_like(batch["attention_mask"]),
            token_type_ids=torch.zeros_like(batch["token_type_ids"]),
            pixel_values=batch["pixel_values"],
            pixel_mask=batch["pixel_mask"],
        ).logits
        full = model(**model_inputs(model, batch)).logits
    torch.testing.assert_close(got_text, want_text)
    torch.testing.assert_close(got_image, want_image)
    assert not torch.allclose(got_text, full) and not torch.allclose(got_image, full)


def test_validate_names_missing_key():
    batch = vilt_batch(4)
    del batch["pixel_values"]
    with pytest.raises(ValueError, match="'pixel_values'"):
        validate_modalities([TEXT, IMAGE], batch)


def test_validate_optional_key_may_be_missing():
    batch = vilt_batch(4)
    del batch["token_type_ids"]
    validate_modalities([TEXT, IMAGE], batch)


def test_validate_shared_key_and_duplicate_names():
    with pytest.raises(ValueError, match="'pixel_values'"):
        validate_modalities([TEXT, IMAGE, Modality("extra", keys=["pixel_values"])], vilt_batch(4))
    with pytest.raises(ValueError, match="unique"):
        validate_modalities([TEXT, Modality("text", keys=["pixel_values"])], vilt_batch(4))


def test_validate_drop_on_vilt_names_key_and_suggests_mask():
    model = tiny_vilt()
    text = Modality(
        "text", keys=["input_ids", "attention_mask"], optional_keys=["token_type_ids"], removal="drop"
    )
    with pytest.raises(ValueError, match=r"'input_ids'.*removal='mask'"):
        validate_modalities([text, IMAGE], vilt_batch(4), model)


def test_validate_required_forward_argument():
    class NeedsBoth(torch.nn.Module):
        def forward(self, input_ids, pixel_values):
            return input_ids

    text = Modality("text", keys=["input_ids"])
    image = Modality("image", keys=["pixel_values"])
    with pytest.raises(ValueError, match="'pixel_values' is a required input"):
        validate_modalities([text, image], vilt_batch(4), NeedsBoth(), check_forward=False)


def test_no_registered_architecture_for_unknown_model():
    with pytest.raises(ValueError, match="model_type='bert'"):
        default_modalities(type("Cfg", (), {"model_type": "bert"})())


def test_our_model_spec_drops_and_matches_hand_built_inputs():
    model = tiny_model()
    modalities = default_modalities(model)
    assert [(m.name, m.removal) for m in modalities] == [("text", "drop"), ("image", "drop")]
    batch = tiny_batch(model.config)
    validate_modalities(modalities, batch, model)
    x_text, x_image = (restrict(batch, modalities, keep=name) for name in ("text", "image"))
    assert set(x_text) == {"input_ids", "attention_mask", "token_type_ids"} and set(x_image) == {
        "pixel_values"
    }
    with torch.no_grad():
        torch.testing.assert_close(
            model(**x_text).logits,
            model(
                input_ids=batch["input_ids"],
                attention_mask=batch["attention_mask"],
                token_type_ids=batch["token_type_ids"],
            ).logits,
        )
        torch.testing.assert_close(model(**x_image).logits, model(pixel_values=batch["pixel_values"]).logits)
    assert default_modalities(tiny_model(modalities=("text",)))[0].name == "text"


def test_fill_on_our_model_feeds_a_blank_image():
    model = tiny_model()
    text = Modality("text", keys=["input_ids"], optional_keys=["attention_mask", "token_type_ids"])
    image = Modality("image", keys=["pixel_values"], removal="fill", fill_value=0.0)
    batch = tiny_batch(model.config)
    validate_modalities([text, image], batch, model)
    with torch.no_grad():
        got = model(**restrict(batch, [text, image], keep="text")).logits
        want = model(**{**batch, "pixel_values": torch.zeros_like(batch["pixel_values"])}).logits
    torch.testing.assert_close(got, want)
