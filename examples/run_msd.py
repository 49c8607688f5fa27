#!/usr/bin/env python
"""Distil a multimodal teacher into a small student, end to end: data -> teacher -> saliency -> student ->
robustness evaluation -> model card (-> Hub).

    python examples/run_msd.py examples/configs/quick_easy_vqa.yaml
    accelerate launch examples/run_msd.py examples/configs/quick_easy_vqa.yaml
    accelerate launch --cpu --num_processes 2 examples/run_msd.py examples/configs/quick_easy_vqa.yaml
    python examples/run_msd.py --output_dir outputs/kd --method kd --student_modalities text ...

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
