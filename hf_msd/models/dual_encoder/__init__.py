"""The dual-encoder classifier: CLIP / SigLIP towers + fusion head (configuration and modeling)."""

from .configuration_dual_encoder import DualEncoderConfig
from .modeling_dual_encoder import (
    DualEncoderForSequenceClassification,
    DualEncoderModel,
    DualEncoderModelOutput,
    DualEncoderPreTrainedModel,
    DualEncoderSequenceClassifierOutput,
)

__all__ = [
    "DualEncoderConfig",
    "DualEncoderForSequenceClassification",
    "DualEncoderModel",
    "DualEncoderModelOutput",
    "DualEncoderPreTrainedModel",
    "DualEncoderSequenceClassifierOutput",
]
