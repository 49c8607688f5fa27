"""hf_msd models: the multimodal fusion transformer (teacher, multimodal and unimodal students), its
processor,
`make_student` and the default sizes. Importing this module registers the classes with transformers' Auto
classes, and marks them for `register_for_auto_class` so that `save_pretrained` writes `auto_map` and copies
the configuration / modeling / processing files (loadable with `trust_remote_code=True` without hf_msd)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
)

from .multimodal_transformer import (
    MultimodalSequenceClassifierOutput,
    MultimodalTransformerConfig,
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerModel,
    MultimodalTransformerModelOutput,
    MultimodalTransformerPreTrainedModel,
    MultimodalTransformerProcessor,
)
from .presets import default_image_processor, default_teacher_config
from .students import make_student


def _register_auto_classes() -> None:
    AutoConfig.register(MultimodalTransformerConfig.model_type, MultimodalTransformerConfig, exist_ok=True)
    AutoModel.register(MultimodalTransformerConfig, MultimodalTransformerModel, exist_ok=True)
    AutoModelForSequenceClassification.register(
        MultimodalTransformerConfig, MultimodalTransformerForSequenceClassification, exist_ok=True
    )
    AutoProcessor.register(MultimodalTransformerConfig, MultimodalTransformerProcessor, exist_ok=True)
    MultimodalTransformerConfig.register_for_auto_class()
    MultimodalTransformerModel.register_for_auto_class("AutoModel")
    MultimodalTransformerForSequenceClassification.register_for_auto_class(
        "AutoModelForSequenceClassification"
    )
    MultimodalTransformerProcessor.register_for_auto_class("AutoProcessor")


_register_auto_classes()

__all__ = [
    "MultimodalSequenceClassifierOutput",
    "MultimodalTransformerConfig",
    "MultimodalTransformerForSequenceClassification",
    "MultimodalTransformerModel",
    "MultimodalTransformerModelOutput",
    "MultimodalTransformerPreTrainedModel",
    "MultimodalTransformerProcessor",
    "default_image_processor",
    "default_teacher_config",
    "make_student",
]
