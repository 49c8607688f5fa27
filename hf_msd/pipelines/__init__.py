"""Pipelines: `multimodal-classification`, registered with transformers' `PIPELINE_REGISTRY` on import, so
`pipeline("multimodal-classification", model=...)` works once hf_msd is imported, and saved hf_msd models name
it in `config.custom_pipelines` (with its code) for `pipeline(model=path, trust_remote_code=True)` without
hf_msd."""

from transformers import AutoModelForSequenceClassification
from transformers.pipelines import PIPELINE_REGISTRY

from .multimodal_classification import MultimodalClassificationPipeline, model_modalities

TASK = "multimodal-classification"

PIPELINE_REGISTRY.register_pipeline(
    TASK,
    pipeline_class=MultimodalClassificationPipeline,
    pt_model=AutoModelForSequenceClassification,
    type="multimodal",
)

__all__ = ["TASK", "MultimodalClassificationPipeline", "model_modalities"]
