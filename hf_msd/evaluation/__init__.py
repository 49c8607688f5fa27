"""Measurement: robustness to a missing modality and interleaved inference timing."""
