"""hf_msd models: the multimodal fusion transformer (teacher, multimodal and unimodal students), its
processor, the CLIP / SigLIP dual-encoder classifier,
`make_student` and the default sizes. Importing this module registers the classes with transformers' Auto
classes, and marks them for `register_for_auto_class` so that `save_pretrained` writes `auto_map` and copies
the configuration / modeling / processing files (loadable with `trust_remote_code=True` without hf_msd)."""

from transformers import (
    AutoConfig,
    AutoModel,
    AutoModelForSequenceClassification,
    AutoProcessor,
)

from .defaults import default_image_processor, default_teacher_config
from .dual_encoder import (
    DualEncoderConfig,
    DualEncoderForSequenceClassification,
    DualEncoderModel,
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
from .students import make_student, student_from_config


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


def _register_dual_encoder() -> None:
    """The dual encoder: Auto classes, and remote code (configuration + modeling files) on save."""
    AutoConfig.register(DualEncoderConfig.model_type, DualEncoderConfig, exist_ok=True)
    AutoModel.register(DualEncoderConfig, DualEncoderModel, exist_ok=True)
    AutoModelForSequenceClassification.register(
        DualEncoderConfig, DualEncoderForSequenceClassification, exist_ok=True
    )
    DualEncoderConfig.register_for_auto_class()
    DualEncoderModel.register_for_auto_class("AutoModel")
    DualEncoderForSequenceClassification.register_for_auto_class("AutoModelForSequenceClassification")


_register_dual_encoder()

__all__ = [
    "DualEncoderConfig",
    "DualEncoderForSequenceClassification",
    "DualEncoderModel",
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
    "student_from_config",
]
