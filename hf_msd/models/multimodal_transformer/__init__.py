"""The multimodal fusion transformer: configuration, modeling and processing (transformers layout)."""

from .configuration_multimodal_transformer import MultimodalTransformerConfig
from .modeling_multimodal_transformer import (
    MultimodalSequenceClassifierOutput,
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerModel,
    MultimodalTransformerModelOutput,
    MultimodalTransformerPreTrainedModel,
    MultimodalTransformerTowerOutput,
)
from .processing_multimodal_transformer import MultimodalTransformerProcessor

__all__ = [
    "MultimodalSequenceClassifierOutput",
    "MultimodalTransformerConfig",
    "MultimodalTransformerForSequenceClassification",
    "MultimodalTransformerModel",
    "MultimodalTransformerModelOutput",
    "MultimodalTransformerPreTrainedModel",
    "MultimodalTransformerProcessor",
    "MultimodalTransformerTowerOutput",
]
