"""One on-policy (lmbda=1) SGD step of MSDTrainer on a tiny LLaVA student, run on 2 CPU processes by
tests/test_on_policy.py: :func:`~distributed_vlm_script.main` on :data:`CASES` (each rank saves its
parameters to ``OUT_DIR/<case>/rank<k>.safetensors``)."""

from __future__ import annotations

import sys

from tests.helpers.scripts.distributed_vlm_script import main

#: name -> (per_device_train_batch_size, gradient_accumulation_steps, modality_weighting, overrides).
CASES = {"on_policy_batch2_accumulate2": (2, 2, "instance", {"lmbda": 1.0, "max_new_tokens": 4})}

if __name__ == "__main__":
    main(sys.argv[1], CASES)
