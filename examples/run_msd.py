#!/usr/bin/env python
"""Distil a multimodal teacher into a small student, end to end: data -> teacher -> saliency -> student ->
robustness evaluation -> model card (-> Hub).

    python examples/run_msd.py examples/configs/quick_easy_vqa.yaml
    python examples/run_msd.py --output_dir outputs/kd --method kd --student_modalities text ...
    # N GPUs (DDP; or an `accelerate config` with FSDP / DeepSpeed):
    accelerate launch --num_processes N examples/run_msd.py examples/configs/quick_easy_vqa.yaml
    # 2 CPU processes (gloo DDP). Not `accelerate launch --cpu --num_processes 2`: without MPI, accelerate
    # starts ONE process then. With no visible GPU, --multi_gpu goes through torchrun and starts two:
    CUDA_VISIBLE_DEVICES= accelerate launch --multi_gpu --num_processes 2 examples/run_msd.py \\
        examples/configs/quick_easy_vqa.yaml

The frozen teacher is placed as accelerate prescribes for evaluated-only models (replicated, never wrapped
for DDP / FSDP; its own DeepSpeed inference engine, partitioned under ZeRO-3). Tested here: 1 and 2 CPU
processes (gloo DDP), and the trainers under DeepSpeed ZeRO-2/3 on 2 CPU processes. Not run here: FSDP (see
README, "What is tested").

Every field of ModelArguments, DataArguments, ExperimentArguments (hf_msd.experiment) and
MSDTrainingArguments is a command-line flag (`--help` lists them). A YAML or JSON config file given first
supplies defaults that later flags override. Each stage is skipped when its output exists with the same
settings.
"""

import sys

from hf_msd.experiment import parse_arguments, run_experiment


def main() -> None:
    run_experiment(*parse_arguments(sys.argv[1:]))


if __name__ == "__main__":
    main()
