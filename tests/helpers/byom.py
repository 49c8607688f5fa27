"""Tiny transformers architectures for the bring-your-own-model tests (ViLT, VisualBERT, LXMERT,
BridgeTower, hf_msd's fusion model and dual encoder), built offline from small configs, with batches and
the modality-only inputs each registered architecture's spec must produce, written out by hand."""

from __future__ import annotations

import torch
from transformers import (
    BridgeTowerConfig,
    BridgeTowerForImageAndTextRetrieval,
    LxmertConfig,
    LxmertForQuestionAnswering,
    ViltConfig,
    ViltForQuestionAnswering,
    VisualBertConfig,
    VisualBertForQuestionAnswering,
)

from hf_msd.models import DualEncoderConfig, DualEncoderForSequenceClassification
from tests.helpers.models import TINY_VOCAB, tiny_model

BATCH, SEQ, REGIONS, FEAT = 2, 6, 3, 12
CLS, SEP = TINY_VOCAB.index("[CLS]"), TINY_VOCAB.index("[SEP]")
#: Number of classes per architecture (BridgeTower's image-text matching head has two).
NUM_LABELS = {
    "vilt": 3,
    "visual_bert": 3,
    "lxmert": 3,
    "bridgetower": 2,
    "msd_multimodal_transformer": 3,
    "msd_dual_encoder": 3,
}
HF_MSD_MODELS = ("msd_multimodal_transformer", "msd_dual_encoder")  # 16x16 images, "drop" removal
ARCHITECTURES = list(NUM_LABELS)
_TEXT = {"vocab_size": len(TINY_VOCAB), "num_attention_heads": 4, "intermediate_size": 64}


def tiny_architecture(name: str, seed: int = 0) -> torch.nn.Module:
    """A seeded tiny classifier of architecture ``name`` (a key of NUM_LABELS), in eval mode."""
    torch.manual_seed(seed)
    labels = NUM_LABELS[name]
    if name == "vilt":
        config = ViltConfig(
            **_TEXT,
            hidden_size=32,
            num_hidden_layers=1,
            max_position_embeddings=40,
            image_size=32,
            patch_size=8,
        )
        config.num_labels = labels
        return ViltForQuestionAnswering(config).eval()
    if name == "visual_bert":
        config = VisualBertConfig(
            **_TEXT,
            hidden_size=32,
            num_hidden_layers=1,
            visual_embedding_dim=FEAT,
            num_labels=labels,
            pad_token_id=0,
        )
        return VisualBertForQuestionAnswering(config).eval()
    if name == "lxmert":
        # num_labels is left at its default (2): LXMERT's classes are config.num_qa_labels.
        config = LxmertConfig(
            **_TEXT,
            hidden_size=32,
            l_layers=1,
            x_layers=1,
            r_layers=1,
            visual_feat_dim=FEAT,
            num_qa_labels=labels,
            num_object_labels=4,
            num_attr_labels=4,
        )
        return LxmertForQuestionAnswering(config).eval()
    if name == "bridgetower":  # the vision tower needs width >= 64 (one head per 64 channels)
        config = BridgeTowerConfig(
            hidden_size=64,
            num_hidden_layers=1,
            num_attention_heads=4,
            text_config={**_TEXT, "hidden_size": 64, "num_hidden_layers": 1, "max_position_embeddings": 40},
            vision_config={"hidden_size": 64, "num_hidden_layers": 1, "patch_size": 8, "image_size": 32},
        )
        return BridgeTowerForImageAndTextRetrieval(config).eval()
    if name == "msd_dual_encoder":
        return tiny_dual_encoder(num_labels=labels, seed=seed)
    return tiny_model(num_labels=labels, seed=seed)


def tiny_dual_encoder_config(
    modalities=("text", "image"), tower: str = "clip", num_labels: int = 3
) -> DualEncoderConfig:
    """A tiny dual encoder: CLIP (or SigLIP) towers of width 32, one layer, 16x16 images with patch 8, the
    tiny vocabulary ([SEP] is the end-of-text token CLIP pools), projections of 16 and an MLP of width 32."""
    text = {
        **_TEXT,
        "model_type": f"{tower}_text_model",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "max_position_embeddings": 40,
        "pad_token_id": 0,
        "bos_token_id": CLS,
        "eos_token_id": SEP,
    }
    vision = {
        "model_type": f"{tower}_vision_model",
        "hidden_size": 32,
        "num_hidden_layers": 1,
        "num_attention_heads": 4,
        "intermediate_size": 64,
        "image_size": 16,
        "patch_size": 8,
    }
    return DualEncoderConfig(
        modalities=list(modalities),
        text_config=text if "text" in modalities else None,
        vision_config=vision if "image" in modalities else None,
        projection_dim=16,
        fusion_hidden_size=32,
        classifier_dropout=0.0,
        num_labels=num_labels,
    )


def tiny_dual_encoder(modalities=("text", "image"), tower: str = "clip", num_labels: int = 3, seed: int = 0):
    """A seeded tiny DualEncoderForSequenceClassification in eval mode."""
    torch.manual_seed(seed)
    return DualEncoderForSequenceClassification(
        tiny_dual_encoder_config(modalities, tower, num_labels)
    ).eval()


def text_inputs(generator: torch.Generator) -> dict[str, torch.Tensor]:
    """``[CLS] w w w w [SEP]`` and ``[CLS] w w [SEP] [PAD] [PAD]`` (B=2, L=6)."""
    input_ids = torch.randint(5, len(TINY_VOCAB), (BATCH, SEQ), generator=generator)
    input_ids[:, 0] = CLS
    input_ids[0, -1] = SEP
    input_ids[1, 3], input_ids[1, 4:] = SEP, 0
    attention_mask = torch.tensor([[1, 1, 1, 1, 1, 1], [1, 1, 1, 1, 0, 0]])
    return {
        "input_ids": input_ids,
        "attention_mask": attention_mask,
        "token_type_ids": torch.zeros_like(input_ids),
    }


def image_inputs(name: str, generator: torch.Generator) -> dict[str, torch.Tensor]:
    if name == "visual_bert":
        return {
            "visual_embeds": torch.randn(BATCH, REGIONS, FEAT, generator=generator),
            "visual_attention_mask": torch.ones(BATCH, REGIONS, dtype=torch.long),
            "visual_token_type_ids": torch.ones(BATCH, REGIONS, dtype=torch.long),
        }
    if name == "lxmert":
        return {
            "visual_feats": torch.randn(BATCH, REGIONS, FEAT, generator=generator),
            "visual_pos": torch.rand(BATCH, REGIONS, 4, generator=generator),
            "visual_attention_mask": torch.ones(BATCH, REGIONS, dtype=torch.long),
        }
    size = 16 if name in HF_MSD_MODELS else 32
    inputs = {"pixel_values": torch.randn(BATCH, 3, size, size, generator=generator)}
    if name not in HF_MSD_MODELS:
        inputs["pixel_mask"] = torch.ones(BATCH, size, size, dtype=torch.long)
    return inputs


def architecture_batch(name: str, seed: int = 0) -> dict[str, torch.Tensor]:
    """Model inputs for ``name`` plus int64 ``labels`` (B,)."""
    generator = torch.Generator().manual_seed(seed)
    batch = {**text_inputs(generator), **image_inputs(name, generator)}
    batch["labels"] = torch.randint(0, NUM_LABELS[name], (BATCH,), generator=generator)
    return batch


def expected_modality_inputs(name: str, batch: dict[str, torch.Tensor]) -> dict[str, dict[str, torch.Tensor]]:
    """The modality-only inputs ``{"text": x_text, "image": x_image}`` (labels excluded) that the registered
    spec of ``name`` must produce, written out for the B=2, L=6 batch of :func:`architecture_batch`."""
    text = {k: batch[k] for k in ("input_ids", "attention_mask", "token_type_ids")}
    image = {k: v for k, v in batch.items() if k not in text and k != "labels"}
    if name in HF_MSD_MODELS:  # "drop": the other modality's keys are left out
        return {"text": text, "image": image}
    if name == "visual_bert":  # text: the empty question [CLS] [SEP] at the original positions; image dropped
        keep = torch.tensor([[1, 0, 0, 0, 0, 1], [1, 0, 0, 1, 0, 0]])
        empty = {
            "input_ids": torch.where(keep.bool(), batch["input_ids"], 0),
            "attention_mask": keep,
            "token_type_ids": torch.zeros(BATCH, SEQ, dtype=torch.long),
        }
        assert empty["input_ids"].tolist() == [[CLS, 0, 0, 0, 0, SEP], [CLS, 0, 0, SEP, 0, 0]]
        return {"text": text, "image": {**empty, **image}}
    pad = 1 if name == "bridgetower" else 0  # BridgeTower's RoBERTa text tower pads with 1
    masked_text = {
        "input_ids": torch.full((BATCH, SEQ), pad),
        "attention_mask": torch.zeros(BATCH, SEQ, dtype=torch.long),
        "token_type_ids": torch.zeros(BATCH, SEQ, dtype=torch.long),
    }
    if name == "lxmert":  # image: features, boxes and the visual mask zeroed
        masked_image = {k: torch.zeros_like(v) for k, v in image.items()}
    else:  # ViLT / BridgeTower: blank pixels, pixel mask kept
        masked_image = {
            "pixel_values": torch.zeros_like(image["pixel_values"]),
            "pixel_mask": image["pixel_mask"],
        }
    return {"text": {**text, **masked_image}, "image": {**masked_text, **image}}


class InputRecorder:
    """Records the keyword inputs of every forward call of a module, split into chunks of ``batch_size``
    examples (concatenated calls, e.g. MSD's joined modality passes, give one chunk per pass)."""

    def __init__(self, module: torch.nn.Module, batch_size: int = BATCH):
        self.batch_size = batch_size
        self.chunks: list[dict[str, torch.Tensor]] = []
        self.handle = module.register_forward_pre_hook(self._record, with_kwargs=True)

    def _record(self, module, args, kwargs):
        tensors = {k: v.detach().clone() for k, v in kwargs.items() if isinstance(v, torch.Tensor)}
        size = next(iter(tensors.values())).shape[0]
        for start in range(0, size, self.batch_size):
            self.chunks.append({k: v[start : start + self.batch_size] for k, v in tensors.items()})

    def saw(self, expected: dict[str, torch.Tensor]) -> bool:
        """Whether some recorded call had exactly these keys and tensors."""
        return any(
            chunk.keys() == expected.keys() and all(torch.equal(chunk[k], v) for k, v in expected.items())
            for chunk in self.chunks
        )

    def remove(self) -> None:
        self.handle.remove()


def train_recording_inputs(
    trainer, teacher: torch.nn.Module, student: torch.nn.Module
) -> dict[str, InputRecorder]:
    """Run ``trainer.train()`` while recording every forward input of the teacher and the student."""
    recorders = {"teacher": InputRecorder(teacher), "student": InputRecorder(student)}
    try:
        trainer.train()
    finally:
        for recorder in recorders.values():
            recorder.remove()
    return recorders
