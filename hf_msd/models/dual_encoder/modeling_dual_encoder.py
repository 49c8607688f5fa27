"""Dual-encoder classifier: a CLIP or SigLIP text tower and vision tower, projections and a fusion MLP.

This file imports only torch, transformers and its own configuration so that a saved folder (or Hub repo)
loads with `trust_remote_code=True` where hf_msd is not installed. The fused features are defined in
[`DualEncoderConfig`]: `f = [u; v; u * v]` of the projected pooled embeddings (a missing input gives a zero
embedding), then `Linear -> GELU -> Dropout -> Linear`.

Tower reuse (modality-specific distillation at the cost of one tower pass): each tower sees its modality on
its own, so a modality-only input runs the same tower on the same input as the full one.
`forward(..., return_tower_outputs=True)` returns the projected embeddings by modality (`tower_outputs`);
`forward(tower_outputs={m: ...})` runs only the fusion and the head on the modalities given (the others get
the zero embedding) and equals `forward` on that modality alone. In training mode, tower dropout then draws
one mask shared by the passes instead of one per pass.
"""

import inspect
from dataclasses import dataclass

import torch
from torch import nn
from transformers import (
    AutoModel,
    CLIPTextModel,
    CLIPVisionModel,
    PreTrainedModel,
    SiglipTextModel,
    SiglipVisionModel,
)
from transformers.modeling_outputs import ModelOutput, SequenceClassifierOutput

from .configuration_dual_encoder import DualEncoderConfig

#: Tower class per sub-config `model_type` (SigLIP's single towers are not in `AutoModel`'s mapping).
TOWER_CLASSES = {
    "clip_text_model": CLIPTextModel,
    "clip_vision_model": CLIPVisionModel,
    "siglip_text_model": SiglipTextModel,
    "siglip_vision_model": SiglipVisionModel,
}


@dataclass
class DualEncoderModelOutput(ModelOutput):
    """Outputs of [`DualEncoderModel`].

    Args:
        pooler_output (`torch.FloatTensor` of shape `(batch_size, fused_size)`): the fused features `f`
            (`3 * projection_dim` with both towers, `projection_dim` for a unimodal model).
        text_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*): `u`, or `None`
            when no text was given.
        image_embeds (`torch.FloatTensor` of shape `(batch_size, projection_dim)`, *optional*): `v`, or `None`
            when no image was given.
        tower_outputs (`dict[str, torch.FloatTensor]`, *optional*): the projected embeddings by modality
            (B, projection_dim), with `return_tower_outputs=True`.
    """

    pooler_output: torch.FloatTensor | None = None
    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    tower_outputs: dict[str, torch.FloatTensor] | None = None


@dataclass
class DualEncoderSequenceClassifierOutput(SequenceClassifierOutput):
    """[`SequenceClassifierOutput`] (`loss`, `logits` (B, num_labels)) plus `text_embeds` and `image_embeds`
    (B, projection_dim) and `tower_outputs` as in [`DualEncoderModelOutput`]."""

    text_embeds: torch.FloatTensor | None = None
    image_embeds: torch.FloatTensor | None = None
    tower_outputs: dict[str, torch.FloatTensor] | None = None


class DualEncoderPreTrainedModel(PreTrainedModel):
    """Weights initialisation and loading of the dual encoder. Projections and head are `nn.Linear`
    initialised by transformers' default `_init_weights` (normal with `config.initializer_range`, zero
    biases); the towers are transformers models that initialise themselves."""

    config: DualEncoderConfig
    config_class = DualEncoderConfig
    base_model_prefix = "dual_encoder"
    main_input_name = "input_ids"
    _supports_sdpa = True
    # hf_msd's trainers normalise the loss themselves (per example, over the whole accumulated batch).
    accepts_loss_kwargs = False

    def __init__(self, config: DualEncoderConfig, *inputs, **kwargs):
        super().__init__(config, *inputs, **kwargs)
        self.main_input_name = "input_ids" if "text" in config.modalities else "pixel_values"

    @classmethod
    def from_towers(
        cls,
        name_or_path: str | None = None,
        *,
        text_name_or_path: str | None = None,
        vision_name_or_path: str | None = None,
        **config_kwargs,
    ) -> "DualEncoderPreTrainedModel":
        """A model whose towers (and, from a CLIP checkpoint whose `projection_dim` matches, projections) are
        initialised from pretrained CLIP / SigLIP weights; the head is freshly initialised.

        Args:
            name_or_path: a full CLIP or SigLIP checkpoint (a local folder or a Hub id with `model_type`
                `"clip"` / `"siglip"`) giving both towers.
            text_name_or_path, vision_name_or_path: a single tower checkpoint each (e.g. a saved
                `CLIPTextModel` / `SiglipVisionModel`), used instead of, or without, `name_or_path`.
            config_kwargs: further [`DualEncoderConfig`] fields (`num_labels`, `projection_dim`, ...).
                `modalities` defaults to the towers given.
        """
        towers: dict[str, PreTrainedModel] = {}
        projections: dict[str, nn.Linear] = {}
        if name_or_path is not None:
            full = AutoModel.from_pretrained(name_or_path)
            if not hasattr(full, "text_model") or not hasattr(full, "vision_model"):
                raise ValueError(
                    f"{name_or_path!r} is a {type(full).__name__}, not a CLIP / SigLIP model with "
                    "`text_model` and `vision_model`; pass single towers as text_name_or_path / "
                    "vision_name_or_path."
                )
            towers = {"text": full.text_model, "image": full.vision_model}
            for modality, name in (("text", "text_projection"), ("image", "visual_projection")):
                if isinstance(getattr(full, name, None), nn.Linear):
                    projections[modality] = getattr(full, name)
        for modality, path in (("text", text_name_or_path), ("image", vision_name_or_path)):
            if path is not None:
                towers[modality] = AutoModel.from_pretrained(path)
        if not towers:
            raise ValueError("from_towers needs name_or_path, text_name_or_path or vision_name_or_path.")
        modalities = config_kwargs.pop("modalities", [m for m in ("text", "image") if m in towers])
        missing = [m for m in modalities if m not in towers]
        if missing:
            raise ValueError(f"modalities={modalities} but no pretrained tower was given for {missing}.")
        config = DualEncoderConfig(
            modalities=modalities,
            text_config=towers["text"].config.to_dict() if "text" in modalities else None,
            vision_config=towers["image"].config.to_dict() if "image" in modalities else None,
            **config_kwargs,
        )
        model = cls(config)
        base = getattr(model, cls.base_model_prefix, model)
        for modality in modalities:
            base.towers[modality].load_state_dict(towers[modality].state_dict())
            source = projections.get(modality)
            if source is not None and source.weight.shape == base.projections[modality].weight.shape:
                base.projections[modality].weight.data.copy_(source.weight.data)
        return model


def _build_tower(config) -> PreTrainedModel:
    return TOWER_CLASSES[config.model_type]._from_config(config)


def _takes(module: nn.Module, name: str) -> bool:
    return name in inspect.signature(module.forward).parameters


class DualEncoderModel(DualEncoderPreTrainedModel):
    """The towers and projections; returns the projected embeddings and the fused features `f`."""

    def __init__(self, config: DualEncoderConfig):
        super().__init__(config)
        self.modalities = list(config.modalities)
        tower_configs = {"text": config.text_config, "image": config.vision_config}
        self.towers = nn.ModuleDict(
            {
                m: TOWER_CLASSES[tower_configs[m].model_type]._from_config(tower_configs[m])
                for m in self.modalities
            }
        )
        self.projections = nn.ModuleDict(
            {
                m: nn.Linear(_pooled_width(tower_configs[m]), config.projection_dim, bias=False)
                for m in self.modalities
            }
        )
        self.post_init()

    def get_input_embeddings(self):
        return self.towers["text"].get_input_embeddings() if "text" in self.towers else None

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        tower_outputs: dict[str, torch.FloatTensor] | None = None,
        return_tower_outputs: bool = False,
    ) -> DualEncoderModelOutput:
        r"""
        Args:
            input_ids (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*): text tokens.
            attention_mask (`torch.Tensor` of shape `(batch_size, sequence_length)`, *optional*).
            token_type_ids (`torch.LongTensor`, *optional*): accepted for BERT-style tokenizers and passed on
                only to a text tower that takes it (CLIP and SigLIP have no segment embeddings).
            pixel_values (`torch.FloatTensor` of shape `(batch_size, channels, height, width)`, *optional*).
            tower_outputs (`dict[str, torch.FloatTensor]`, *optional*): projected embeddings (B,
                projection_dim) by modality from a call with `return_tower_outputs=True`, instead of the
                inputs: only the fusion runs, on the modalities given.
            return_tower_outputs (`bool`): also return the projected embeddings by modality (`tower_outputs`).

        At least one input of a modality the model has must be given; a missing one gives a zero embedding.
        """
        inputs = {"input_ids": input_ids, "attention_mask": attention_mask, "pixel_values": pixel_values}
        if tower_outputs is None:
            tower_outputs = self.encode_towers(input_ids, attention_mask, token_type_ids, pixel_values)
        elif any(value is not None for value in (*inputs.values(), token_type_ids)):
            given = sorted(name for name, value in inputs.items() if value is not None)
            raise ValueError(f"Pass either `tower_outputs` or the inputs, not both (got {given} too).")
        elif not tower_outputs or set(tower_outputs) - set(self.modalities):
            raise ValueError(
                f"`tower_outputs` must map some of this model's modalities {self.modalities} to embeddings "
                f"(from `return_tower_outputs=True`), got keys {sorted(tower_outputs)}."
            )
        output = self.fuse(tower_outputs)
        if return_tower_outputs:
            output.tower_outputs = dict(tower_outputs)
        return output

    def encode_towers(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
    ) -> dict[str, torch.FloatTensor]:
        """Run the tower and the projection of each present modality once (inputs as in [`forward`]).
        Returns modality -> projected pooled embedding (B, projection_dim), for [`fuse`]."""
        given = {"text": input_ids, "image": pixel_values}
        foreign = [m for m, value in given.items() if value is not None and m not in self.modalities]
        if foreign:
            raise ValueError(f"This model has no {foreign} tower (modalities={self.modalities}).")
        if all(given[m] is None for m in self.modalities):
            names = {"text": "input_ids", "image": "pixel_values"}
            raise ValueError(f"Give at least one of {[names[m] for m in self.modalities]}.")
        embeds = {}
        if input_ids is not None:
            text_inputs = {"input_ids": input_ids, "attention_mask": attention_mask}
            if token_type_ids is not None and _takes(self.towers["text"], "token_type_ids"):
                text_inputs["token_type_ids"] = token_type_ids
            embeds["text"] = self.projections["text"](self.towers["text"](**text_inputs).pooler_output)
        if pixel_values is not None:
            embeds["image"] = self.projections["image"](
                self.towers["image"](pixel_values=pixel_values).pooler_output
            )
        return embeds

    def fuse(self, tower_outputs: dict[str, torch.FloatTensor]) -> DualEncoderModelOutput:
        """The fused features `f` from the projected embeddings of [`encode_towers`] (or a subset of them: a
        missing modality gives the zero embedding)."""
        present = next(iter(tower_outputs.values()))
        if len(self.modalities) == 1:
            fused = present
        else:
            u, v = (tower_outputs.get(m, torch.zeros_like(present)) for m in ("text", "image"))
            fused = torch.cat([u, v, u * v], dim=-1)
        return DualEncoderModelOutput(
            pooler_output=fused,
            text_embeds=tower_outputs.get("text"),
            image_embeds=tower_outputs.get("image"),
        )


def _pooled_width(tower_config) -> int:
    """Width of a tower's `pooler_output` (SigLIP's text head maps to `projection_size`)."""
    return getattr(tower_config, "projection_size", None) or tower_config.hidden_size


class DualEncoderForSequenceClassification(DualEncoderPreTrainedModel):
    """[`DualEncoderModel`] with the fusion MLP `Linear(f, fusion_hidden_size) -> GELU -> Dropout ->
    Linear(fusion_hidden_size, num_labels)`. The loss follows `config.problem_type` as transformers' own
    `*ForSequenceClassification` heads (cross-entropy, BCE-with-logits or MSE; inferred when None)."""

    def __init__(self, config: DualEncoderConfig):
        super().__init__(config)
        self.num_labels = config.num_labels
        self.dual_encoder = DualEncoderModel(config)
        fused_size = config.projection_dim * (3 if len(config.modalities) == 2 else 1)
        self.classifier = nn.Sequential(
            nn.Linear(fused_size, config.fusion_hidden_size),
            nn.GELU(),
            nn.Dropout(config.classifier_dropout),
            nn.Linear(config.fusion_hidden_size, config.num_labels),
        )
        self.post_init()

    def get_input_embeddings(self):
        return self.dual_encoder.get_input_embeddings()

    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        token_type_ids: torch.LongTensor | None = None,
        pixel_values: torch.FloatTensor | None = None,
        labels: torch.Tensor | None = None,
        tower_outputs: dict[str, torch.FloatTensor] | None = None,
        return_tower_outputs: bool = False,
    ) -> DualEncoderSequenceClassifierOutput:
        r"""
        Inputs (and tower reuse: `tower_outputs`, `return_tower_outputs`) as [`DualEncoderModel.forward`];
        `labels` int64 (B,) for single-label classification, float (B, num_labels) for multi-label, float (B,)
        / (B, num_labels) for regression.
        """
        outputs = self.dual_encoder(
            input_ids=input_ids,
            attention_mask=attention_mask,
            token_type_ids=token_type_ids,
            pixel_values=pixel_values,
            tower_outputs=tower_outputs,
            return_tower_outputs=return_tower_outputs,
        )
        logits = self.classifier(outputs.pooler_output)
        loss = None
        if labels is not None:
            loss = self.loss_function(labels=labels, pooled_logits=logits, config=self.config)
        return DualEncoderSequenceClassifierOutput(
            loss=loss,
            logits=logits,
            text_embeds=outputs.text_embeds,
            image_embeds=outputs.image_embeds,
            tower_outputs=outputs.tower_outputs,
        )


__all__ = [
    "DualEncoderForSequenceClassification",
    "DualEncoderModel",
    "DualEncoderModelOutput",
    "DualEncoderPreTrainedModel",
    "DualEncoderSequenceClassifierOutput",
]
