"""Modalities: what a modality is in a batch, how it is removed, validated and dropped."""
