"""Distillation maths: losses, intermediate-layer losses, modality saliency and weighting."""
