"""hf_msd: knowledge distillation for multimodal transformers on transformers.Trainer."""

__version__ = "0.1.0"
