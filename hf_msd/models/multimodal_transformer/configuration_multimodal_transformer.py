"""Configuration of the multimodal fusion transformer (teacher, multimodal student and unimodal students).

This file imports only `transformers` so that a saved model folder loads with `trust_remote_code=True`
where hf_msd is not installed.
"""

from transformers import AutoConfig, PreTrainedConfig
from transformers.configuration_utils import SubConfigSpec

MODALITIES = ("text", "image")

# Small defaults so that `MultimodalTransformerConfig()` builds a model in a second; real sizes come from
# `hf_msd.models.default_teacher_config()` or from the caller.
# Initialisation std 0.05 rather than transformers' usual 0.02: trained from scratch on easy-VQA, the small
# fusion models stall on shape questions (near chance after 2-2.5 epochs) with 0.02 and learn them with 0.05.
DEFAULT_INITIALIZER_RANGE = 0.05
_DEFAULT_TEXT_CONFIG = {
    "vocab_size": 30522,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "initializer_range": DEFAULT_INITIALIZER_RANGE,
}
_DEFAULT_VISION_CONFIG = {
    "image_size": 64,
    "patch_size": 8,
    "num_channels": 3,
    "hidden_size": 256,
    "num_hidden_layers": 4,
    "num_attention_heads": 4,
    "intermediate_size": 1024,
    "initializer_range": DEFAULT_INITIALIZER_RANGE,
}

# Flat names transformers users know -> (sub-config, field). Read and written through to the sub-configs,
# which stay the single source of truth (and are what is serialised).
_TOWER_FIELDS = {
    "vocab_size": ("text_config", "vocab_size"),
    "num_text_layers": ("text_config", "num_hidden_layers"),
    "image_size": ("vision_config", "image_size"),
    "patch_size": ("vision_config", "patch_size"),
    "num_channels": ("vision_config", "num_channels"),
    "num_image_layers": ("vision_config", "num_hidden_layers"),
}


def _tower_property(name: str) -> property:
    sub_config_name, field = _TOWER_FIELDS[name]

    def getter(self):
        sub_config = getattr(self, sub_config_name)
        return None if sub_config is None else getattr(sub_config, field, None)

    def setter(self, value):
        sub_config = getattr(self, sub_config_name)
        if sub_config is None:
            raise ValueError(
                f"`{name}` sets `{sub_config_name}.{field}`, but this model has no `{sub_config_name}` "
                f"(modalities={self.modalities}); drop `{name}` or add the modality to `modalities`."
            )
        setattr(sub_config, field, value)

    return property(
        getter, setter, doc=f"Alias of `{sub_config_name}.{field}` (None without that tower or field)."
    )


class MultimodalTransformerConfig(PreTrainedConfig):
    r"""
    Configuration of [`MultimodalTransformerModel`] and [`MultimodalTransformerForSequenceClassification`].

    The model is a text tower (any transformers encoder, BERT-style by default, built from `text_config`) and
    an image tower (any transformers vision encoder built from `vision_config`, a ViT by default), each
    followed by a linear projection to `hidden_size` when the widths differ, then `num_hidden_layers`
    fusion layers in which each stream runs self-attention,
    cross-attention to the other stream (both directions) and a feed-forward block, then a pooled
    classification head. `modalities` decides which towers and streams exist: `["text", "image"]` is the
    multimodal teacher or student, `["text"]` or `["image"]` a unimodal student with the same API and outputs.

    Args:
        modalities (`list[str]`, defaults to `["text", "image"]`):
            The modalities the model takes, a non-empty subset of `["text", "image"]` in that order.
        text_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the text tower (`model_type` defaults to `"bert"`). Required content only when
            `"text"` is in
            `modalities`; must be `None` otherwise.
        vision_config (`dict` or `PreTrainedConfig`, *optional*):
            Config of the image tower (`model_type` defaults to `"vit"`). Must be `None` without `"image"`.
            A tower whose `last_hidden_state` is tokens (B, L, C), such as ViT or Swin, feeds its tokens to
            the fusion layers; a convolutional backbone whose `last_hidden_state` is a feature map
            (B, C, H, W), such as ResNet or ConvNeXt, feeds its H * W positions (row-major) as tokens. The
            tower's width is its `hidden_size`, else the last of its `hidden_sizes`. `image_size` (the side
            the processor resizes images to) is required; convolutional configs lack the field, so give it,
            e.g. `{"model_type": "resnet", "image_size": 64, "hidden_sizes": [32, 64, 128], ...}`.
        hidden_size (`int`, defaults to 256):
            Width of the fusion layers, of `hidden_states` and of the pooled output.
        num_hidden_layers (`int`, defaults to 2):
            Number of fusion layers (the fusion depth; alias `num_fusion_layers`). The towers' depths are
            `num_text_layers` and `num_image_layers`.
        num_attention_heads (`int`, defaults to 4): Heads of the fusion self- and cross-attention.
        intermediate_size (`int`, defaults to 1024): Width of the fusion feed-forward blocks.
        hidden_act (`str`, defaults to `"gelu"`): Activation of the fusion feed-forward blocks.
        hidden_dropout_prob (`float`, defaults to 0.1): Dropout on fusion residual branches and projections.
        attention_probs_dropout_prob (`float`, defaults to 0.1): Dropout on fusion attention probabilities.
        classifier_dropout (`float`, *optional*): Dropout before the classifier (`hidden_dropout_prob` if
        None). layer_norm_eps (`float`, defaults to 1e-12): Epsilon of the fusion layer norms.
        initializer_range (`float`, defaults to 0.05): Std of the normal init of fusion and head weights
            (the default towers use 0.05 too; transformers' usual 0.02 stalls small models trained from
            scratch on easy-VQA's shape questions). Set the towers' own `initializer_range` in
            `text_config` / `vision_config` when you give them.

    Flat aliases (read and written through to the sub-configs): `vocab_size`, `num_text_layers`
    (`text_config`), `image_size`, `patch_size`, `num_channels`, `num_image_layers` (`vision_config`).
    They are `None` when the model lacks that tower. Classification fields (`num_labels`, `id2label`,
    `label2id`, `problem_type`) are the standard ones of [`PreTrainedConfig`].

    Example:

    ```python
    >>> from hf_msd.models import MultimodalTransformerConfig, MultimodalTransformerForSequenceClassification
    >>> config = MultimodalTransformerConfig(num_labels=13, vocab_size=1000, image_size=32,
    num_fusion_layers=2)
    >>> model = MultimodalTransformerForSequenceClassification(config)
    >>> text_student = MultimodalTransformerConfig(modalities=["text"], num_labels=13)
    ```
    """

    model_type = "msd_multimodal_transformer"
    attribute_map = {"num_fusion_layers": "num_hidden_layers"}
    sub_configs_defaults = {
        "text_config": SubConfigSpec(
            config_class=AutoConfig, model_type="bert", init_kwargs=_DEFAULT_TEXT_CONFIG, optional=True
        ),
        "vision_config": SubConfigSpec(
            config_class=AutoConfig, model_type="vit", init_kwargs=_DEFAULT_VISION_CONFIG, optional=True
        ),
    }

    modalities: list[str] | tuple[str, ...] = MODALITIES
    text_config: dict | PreTrainedConfig | None = None
    vision_config: dict | PreTrainedConfig | None = None
    hidden_size: int = 256
    num_hidden_layers: int = 2
    num_attention_heads: int = 4
    intermediate_size: int = 1024
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    classifier_dropout: float | None = None
    layer_norm_eps: float = 1e-12
    initializer_range: float = DEFAULT_INITIALIZER_RANGE

    def __post_init__(self, **kwargs):
        modalities = list(self.modalities)
        unknown = [m for m in modalities if m not in MODALITIES]
        if not modalities or unknown or len(set(modalities)) != len(modalities):
            raise ValueError(
                f"`modalities` must be a non-empty subset of {list(MODALITIES)} without repeats, "
                f"got {modalities}."
            )
        # Canonical order, so that the fused sequence is always [text tokens; image tokens].
        self.modalities = [m for m in MODALITIES if m in modalities]
        for modality, key in (("text", "text_config"), ("image", "vision_config")):
            if modality in self.modalities and getattr(self, key) is None:
                setattr(self, key, dict(self.sub_configs_defaults[key].init_kwargs))
            elif modality not in self.modalities and getattr(self, key) is not None:
                raise ValueError(
                    f"`{key}` was given but {modality!r} is not in `modalities`={self.modalities}; "
                    f"pass `{key}=None` or add {modality!r} to `modalities`."
                )
        super().__post_init__(**kwargs)  # builds the sub-configs, then sets the flat aliases from kwargs
        if "image" in self.modalities and getattr(self.vision_config, "image_size", None) is None:
            raise ValueError(
                f"`vision_config.image_size` is missing ({self.vision_config.model_type} config): the "
                "processor resizes images to it. Add it to `vision_config`, e.g. "
                f"{{'model_type': '{self.vision_config.model_type}', 'image_size': 64, ...}}."
            )
        if self.hidden_size % self.num_attention_heads != 0:
            raise ValueError(
                f"`hidden_size` ({self.hidden_size}) must be a multiple of `num_attention_heads` "
                f"({self.num_attention_heads})."
            )

    vocab_size = _tower_property("vocab_size")
    num_text_layers = _tower_property("num_text_layers")
    image_size = _tower_property("image_size")
    patch_size = _tower_property("patch_size")
    num_channels = _tower_property("num_channels")
    num_image_layers = _tower_property("num_image_layers")


__all__ = ["MultimodalTransformerConfig"]
