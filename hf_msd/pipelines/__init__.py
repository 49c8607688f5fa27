"""Pipelines: `multimodal-classification`, registered with transformers' `PIPELINE_REGISTRY` on import, so
`pipeline("multimodal-classification", model=...)` works once hf_msd is imported.

A folder saved through the pipeline (`pipeline(TASK, model=..., processor=...).save_pretrained(folder)`,
transformers' own `Pipeline.save_pretrained`) names it in `config.custom_pipelines` and carries its code, so
`pipeline(model=folder, trust_remote_code=True)` builds it where hf_msd is not installed. A folder written by
`save_pretrained` / `Trainer.save_model` gets the same two things from :func:`add_pipeline_code`.
"""

import json
import os
from pathlib import Path

from transformers import AutoModelForSequenceClassification
from transformers.dynamic_module_utils import custom_object_save
from transformers.pipelines import PIPELINE_REGISTRY
from transformers.utils import CONFIG_NAME

from .multimodal_classification import MultimodalClassificationPipeline, model_modalities

#: The pipeline's task name (the one definition).
TASK = "multimodal-classification"

PIPELINE_REGISTRY.register_pipeline(
    TASK,
    pipeline_class=MultimodalClassificationPipeline,
    pt_model=AutoModelForSequenceClassification,
    type="multimodal",
)


def add_pipeline_code(save_directory: str | os.PathLike) -> None:
    """Make a saved model folder servable by `pipeline(model=folder, trust_remote_code=True)`: add the
    `multimodal-classification` entry to its `config.json`'s `custom_pipelines` and copy the pipeline's module
    next to the model, exactly as transformers' `Pipeline.save_pretrained` writes them, without saving the
    weights a second time (for folders written by `Trainer.save_model`, which saves the model alone)."""
    config_file = Path(save_directory) / CONFIG_NAME
    config = json.loads(config_file.read_text())
    registered = MultimodalClassificationPipeline._registered_impl[TASK]
    module = MultimodalClassificationPipeline.__module__.rsplit(".", 1)[-1]
    entry = {
        **registered,
        "impl": f"{module}.{MultimodalClassificationPipeline.__name__}",
        "pt": [model_class.__name__ for model_class in registered["pt"]],
    }
    custom_object_save(MultimodalClassificationPipeline, save_directory)
    config["custom_pipelines"] = {**(config.get("custom_pipelines") or {}), TASK: entry}
    config_file.write_text(json.dumps(config, indent=2, sort_keys=True) + "\n")


__all__ = ["TASK", "MultimodalClassificationPipeline", "add_pipeline_code", "model_modalities"]
