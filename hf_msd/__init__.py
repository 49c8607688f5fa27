"""hf_msd: knowledge distillation for multimodal transformers on `transformers.Trainer`.

- :class:`DistillationTrainer` / :class:`DistillationTrainingArguments`: knowledge distillation on logits,
  hidden states and attention maps (a drop-in for `Trainer`).
- :class:`MSDTrainer` / :class:`MSDTrainingArguments`: modality-specific distillation (Jin et al., 2021),
  with uniform, saliency-based (population / instance) or meta-learned modality weights.
- :class:`Modality`: which batch keys form a modality and how it is removed
(:mod:`hf_msd.modalities.modality`);
  :class:`ArchitectureAdapter`: how hf_msd reads an architecture (its modalities, logits field and label
  count), registered per ``model_type`` for ViLT, VisualBERT, LXMERT, BridgeTower and ours
  (:mod:`hf_msd.architectures`; ``ModelPreset`` / ``register_model_preset`` are the former names).
- :mod:`hf_msd.models`: the multimodal fusion transformer (teacher, multimodal and unimodal students),
  its processor, :func:`make_student` and the CLIP / SigLIP dual encoder; importing hf_msd registers
  them with the Auto classes.
- :class:`MultimodalClassificationPipeline`: the `multimodal-classification` pipeline (registered on import).
- :mod:`hf_msd.data`: easy-VQA, the user's own files, the collator and :class:`PairedCollator` (a teacher
  and a student with different processors).
- :func:`precompute_teacher_outputs`: the frozen teacher's logits on x and every x_m as cached dataset
  columns the trainers read instead of running the teacher (:mod:`hf_msd.teacher_outputs.cache`).
"""

from .architectures import ArchitectureAdapter, default_modalities, get_logits, register_architecture
from .data import (
    DataValidationError,
    MultimodalDataCollator,
    PairedCollator,
    load_easy_vqa,
    load_local_dataset,
)
from .distillation.saliency import SaliencyReport, compute_saliency, plot_saliency
from .modalities.modality import Modality, restrict
from .models import (
    DualEncoderConfig,
    DualEncoderForSequenceClassification,
    MultimodalTransformerConfig,
    MultimodalTransformerForSequenceClassification,
    MultimodalTransformerModel,
    MultimodalTransformerProcessor,
    make_student,
)
from .pipelines import MultimodalClassificationPipeline
from .teacher_outputs.cache import precompute_teacher_outputs
from .trainers import (
    DistillationTrainer,
    DistillationTrainingArguments,
    MSDTrainer,
    MSDTrainingArguments,
)

__version__ = "0.1.0"

#: Former names of :class:`ArchitectureAdapter` and :func:`register_architecture`, kept for existing code.
ModelPreset = ArchitectureAdapter
register_model_preset = register_architecture

__all__ = [
    "ArchitectureAdapter",
    "DataValidationError",
    "DistillationTrainer",
    "DistillationTrainingArguments",
    "DualEncoderConfig",
    "DualEncoderForSequenceClassification",
    "MSDTrainer",
    "MSDTrainingArguments",
    "Modality",
    "ModelPreset",
    "MultimodalClassificationPipeline",
    "MultimodalDataCollator",
    "MultimodalTransformerConfig",
    "MultimodalTransformerForSequenceClassification",
    "MultimodalTransformerModel",
    "MultimodalTransformerProcessor",
    "PairedCollator",
    "SaliencyReport",
    "compute_saliency",
    "default_modalities",
    "get_logits",
    "load_easy_vqa",
    "load_local_dataset",
    "make_student",
    "plot_saliency",
    "precompute_teacher_outputs",
    "register_architecture",
    "register_model_preset",
    "restrict",
]
