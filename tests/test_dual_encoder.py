"""The dual-encoder classifier: the fused features against a hand computation, missing modalities, unimodal
models, CLIP / SigLIP towers from local folders, Auto classes and remote code without hf_msd. (It runs in
MSDTrainer as teacher and student in tests/test_byom.py.)"""

import os
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F
from transformers import (
    AutoModel,
    AutoModelForSequenceClassification,
    CLIPConfig,
    CLIPModel,
    SiglipConfig,
    SiglipModel,
)

from hf_msd.models import DualEncoderConfig, DualEncoderForSequenceClassification, DualEncoderModel
from tests.helpers.byom import architecture_batch, tiny_dual_encoder, tiny_dual_encoder_config


def by_hand(model, input_ids=None, attention_mask=None, pixel_values=None):
    """Logits written out: u = P_t(text pooler), v = P_v(image pooler) (zero when missing), f = [u; v; u*v]
    (f = the present embedding for a unimodal model), then Linear -> GELU -> Linear (dropout 0)."""
    base = model.dual_encoder
    embeds = {}
    if input_ids is not None:
        pooled = base.towers["text"](input_ids=input_ids, attention_mask=attention_mask).pooler_output
        embeds["text"] = pooled @ base.projections["text"].weight.T
    if pixel_values is not None:
        pooled = base.towers["image"](pixel_values=pixel_values).pooler_output
        embeds["image"] = pooled @ base.projections["image"].weight.T
    if len(base.modalities) == 1:
        features = next(iter(embeds.values()))
    else:
        zero = torch.zeros_like(next(iter(embeds.values())))
        u, v = embeds.get("text", zero), embeds.get("image", zero)
        features = torch.cat([u, v, u * v], dim=-1)
    first, _, _, last = model.classifier
    return F.linear(F.gelu(F.linear(features, first.weight, first.bias)), last.weight, last.bias)


@pytest.mark.parametrize("tower", ["clip", "siglip"])
def test_logits_follow_the_documented_fusion(tower):
    model = tiny_dual_encoder(tower=tower)
    batch = architecture_batch("msd_dual_encoder")
    text = {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
    with torch.no_grad():
        for inputs in (
            {**text, "pixel_values": batch["pixel_values"]},
            text,
            {"pixel_values": batch["pixel_values"]},
        ):
            torch.testing.assert_close(model(**inputs).logits, by_hand(model, **inputs))
        # token_type_ids (BERT-style tokenizers) are accepted; CLIP / SigLIP have no segment embeddings
        with_types = model(**text, token_type_ids=batch["token_type_ids"]).logits
        torch.testing.assert_close(with_types, model(**text).logits)
        both = model(**text, pixel_values=batch["pixel_values"])
    assert both.text_embeds.shape == both.image_embeds.shape == (2, 16)


@pytest.mark.parametrize("modalities", [("text",), ("image",)])
def test_unimodal_dual_encoder(modalities):
    model = tiny_dual_encoder(modalities)
    assert list(model.dual_encoder.towers) == list(modalities)
    batch = architecture_batch("msd_dual_encoder")
    inputs = (
        {"input_ids": batch["input_ids"], "attention_mask": batch["attention_mask"]}
        if modalities == ("text",)
        else {"pixel_values": batch["pixel_values"]}
    )
    with torch.no_grad():
        torch.testing.assert_close(model(**inputs).logits, by_hand(model, **inputs))
    other = (
        {"pixel_values": batch["pixel_values"]}
        if modalities == ("text",)
        else {"input_ids": batch["input_ids"]}
    )
    with pytest.raises(ValueError, match="has no"):
        model(**other)


def test_config_checks_name_the_field():
    with pytest.raises(ValueError, match=r"vision_config.*'bert'"):
        DualEncoderConfig(vision_config={"model_type": "bert"})
    with pytest.raises(ValueError, match="`text_config` was given"):
        DualEncoderConfig(modalities=["image"], text_config={})
    with pytest.raises(ValueError, match="modalities"):
        DualEncoderConfig(modalities=["audio"])


def test_towers_from_local_clip_and_siglip_folders(tmp_path):
    tiny = tiny_dual_encoder_config()
    text, vision = tiny.text_config.to_dict(), tiny.vision_config.to_dict()
    clip = CLIPModel(CLIPConfig(text_config=text, vision_config=vision, projection_dim=16))
    clip.save_pretrained(tmp_path / "clip")
    model = DualEncoderForSequenceClassification.from_towers(
        tmp_path / "clip", num_labels=3, projection_dim=16
    )
    base = model.dual_encoder
    for ours, theirs in ((base.towers["text"], clip.text_model), (base.towers["image"], clip.vision_model)):
        assert all(
            torch.equal(a, b) for a, b in zip(ours.state_dict().values(), theirs.state_dict().values())
        )
    assert torch.equal(base.projections["text"].weight, clip.text_projection.weight)
    assert torch.equal(base.projections["image"].weight, clip.visual_projection.weight)
    siglip_text = {**text, "model_type": "siglip_text_model"}
    siglip = SiglipModel(SiglipConfig(text_config=siglip_text, vision_config=vision))
    siglip.vision_model.save_pretrained(tmp_path / "siglip_vision")
    model = DualEncoderForSequenceClassification.from_towers(
        vision_name_or_path=str(tmp_path / "siglip_vision"), num_labels=3
    )
    assert (
        model.config.modalities == ["image"]
        and model.config.vision_config.model_type == "siglip_vision_model"
    )
    ours = model.dual_encoder.towers["image"].state_dict()
    assert all(torch.equal(ours[k], v) for k, v in siglip.vision_model.state_dict().items())


def test_auto_classes_round_trip(tmp_path):
    model, batch = tiny_dual_encoder(), architecture_batch("msd_dual_encoder")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    model.save_pretrained(tmp_path)
    reloaded = AutoModelForSequenceClassification.from_pretrained(tmp_path).eval()
    assert type(reloaded) is DualEncoderForSequenceClassification
    with torch.no_grad():
        assert torch.equal(reloaded(**inputs).logits, model(**inputs).logits)
    assert type(AutoModel.from_config(model.config)) is DualEncoderModel


REMOTE_CODE_SCRIPT = textwrap.dedent(
    """
    import sys

    class BlockHfMsd:  # hf_msd must not be importable: the code must come from the saved folder
        def find_spec(self, name, path=None, target=None):
            if name == "hf_msd" or name.startswith("hf_msd."):
                raise ImportError("hf_msd is blocked in this process")

    sys.meta_path.insert(0, BlockHfMsd())
    import torch
    from transformers import AutoModelForSequenceClassification

    folder, inputs_path, outputs_path = sys.argv[1:]
    model = AutoModelForSequenceClassification.from_pretrained(folder, trust_remote_code=True).eval()
    with torch.no_grad():
        logits = model(**torch.load(inputs_path)).logits
    torch.save({"logits": logits, "module": type(model).__module__}, outputs_path)
    """
)


def test_remote_code_without_hf_msd(tmp_path):
    model, batch = tiny_dual_encoder(), architecture_batch("msd_dual_encoder")
    inputs = {k: batch[k] for k in ("input_ids", "attention_mask", "pixel_values")}
    folder = tmp_path / "saved"
    model.save_pretrained(folder)
    assert sorted(p.name for p in folder.glob("*.py")) == [
        "configuration_dual_encoder.py",
        "modeling_dual_encoder.py",
    ]
    torch.save(inputs, tmp_path / "inputs.pt")
    (tmp_path / "load.py").write_text(REMOTE_CODE_SCRIPT)
    env = dict(os.environ, HF_HUB_OFFLINE="1", HF_MODULES_CACHE=str(tmp_path / "modules"))
    command = [sys.executable, "-I", "load.py", str(folder), "inputs.pt", "out.pt"]
    subprocess.run(command, check=True, cwd=tmp_path, env=env)
    result = torch.load(tmp_path / "out.pt")
    assert result["module"].startswith("transformers_modules.")
    with torch.no_grad():
        assert torch.equal(result["logits"], model(**inputs).logits)
