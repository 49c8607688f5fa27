"""Configuration of the dual-encoder classifier (CLIP / SigLIP towers + a fusion head).

This file imports only `transformers` so that a saved model folder loads with `trust_remote_code=True`
where hf_msd is not installed.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

MODALITIES = ("text", "image")
#: Tower configs the dual encoder accepts (`model_type` of the sub-configs).
TEXT_TOWERS = ("clip_text_model", "siglip_text_model")
VISION_TOWERS = ("clip_vision_model", "siglip_vision_model")

# Small defaults so that `DualEncoderConfig()` builds a model in a second; real towers come from a CLIP or
# SigLIP checkpoint (`DualEncoderForSequenceClassification.from_towers`) or from the caller.
_DEFAULT_TEXT_CONFIG = {
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
}
_DEFAULT_VISION_CONFIG = {
    "image_size": 64,
    "patch_size": 8,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
}


class DualEncoderConfig(PreTrainedConfig):
    r"""
    Configuration of [`DualEncoderModel`] and [`DualEncoderForSequenceClassification`].

    A CLIP or SigLIP text tower and vision tower each encode their input on their own (no cross-attention);
    their pooled outputs (`pooler_output`: CLIP's EOS token / post-layernorm CLS, SigLIP's last token head /
    attention-pooling head) are projected to `projection_dim` (`u` for text, `v` for the image, linear, no
    bias, as CLIP's projections). The classifier reads the fused features

        f = [u; v; u * v]        (both towers in `modalities`; 3 * projection_dim)
        f = u  or  f = v         (a unimodal model; projection_dim)

    through an MLP `Linear(f, fusion_hidden_size) -> GELU -> Dropout -> Linear(fusion_hidden_size,
    num_labels)`. A model with both towers also runs when one input is missing (modality-specific
    distillation removes a modality by leaving its keys out): the missing embedding is a zero vector, so its
    own block and the product block of `f` are zero.

    Args:
        modalities (`list[str]`, defaults to `["text", "image"]`):
            The towers the model has, a non-empty subset of `["text", "image"]`.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the text tower, `model_type` one of `"clip_text_model"` (default) or
            `"siglip_text_model"`. Must be `None` without `"text"`.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the vision tower, `"clip_vision_model"` (default) or `"siglip_vision_model"`. Must be
            `None` without `"image"`.
        projection_dim (`int`, defaults to 256): Width of the projected embeddings `u` and `v`.
        fusion_hidden_size (`int`, defaults to 512): Width of the classifier MLP's hidden layer.
        classifier_dropout (`float`, defaults to 0.1): Dropout in the classifier MLP.
        initializer_range (`float`, defaults to 0.02): Std of the normal init of projections and head.

    Classification fields (`num_labels`, `id2label`, `label2id`, `problem_type`) are the standard ones.
    """

    model_type = "msd_dual_encoder"
    sub_configs_defaults = {
        "text_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_text_model",
            init_kwargs=_DEFAULT_TEXT_CONFIG,
            optional=True,
        ),
        "vision_config": SubConfigSpec(
            config_class=AutoConfig,
            model_type="clip_vision_model",
            init_kwargs=_DEFAULT_VISION_CONFIG,
            optional=True,
        ),
    }

    modalities: list[str] | tuple[str, ...] = MODALITIES
    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    projection_dim: int = 256
    fusion_hidden_size: int = 512
    classifier_dropout: float = 0.1
    initializer_range: float = 0.02

    # The modality checks mirror MultimodalTransformerConfig's: each model folder's files are self-contained
    # (remote code copies only this file and the modeling file), so they cannot import each other.
    def __post_init__(self, **kwargs):
        modalities = list(self.modalities)
        unknown = [m for m in modalities if m not in MODALITIES]
        if not modalities or unknown or len(set(modalities)) != len(modalities):
            raise ValueError(
                f"`modalities` must be a non-empty subset of {list(MODALITIES)} without repeats, "
                f"got {modalities}."
            )
        self.modalities = [m for m in MODALITIES if m in modalities]
        for modality, key in (("text", "text_config"), ("image", "vision_config")):
            if modality in self.modalities and getattr(self, key) is None:
                setattr(self, key, dict(self.sub_configs_defaults[key].init_kwargs))
            elif modality not in self.modalities and getattr(self, key) is not None:
                raise ValueError(
                    f"`{key}` was given but {modality!r} is not in `modalities`={self.modalities}; "
                    f"pass `{key}=None` or add {modality!r} to `modalities`."
                )
        super().__post_init__(**kwargs)
        for key, allowed in (("text_config", TEXT_TOWERS), ("vision_config", VISION_TOWERS)):
            sub_config = getattr(self, key)
            if sub_config is not None and sub_config.model_type not in allowed:
                raise ValueError(
                    f"`{key}` has model_type={sub_config.model_type!r}; the dual encoder takes one of "
                    f"{allowed} (the text_config / vision_config of a CLIP or SigLIP checkpoint)."
                )


__all__ = ["DualEncoderConfig"]
