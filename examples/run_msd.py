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

from hf_msd.errors import UserInputError
from hf_msd.experiment import parse_arguments, run_experiment

NO_CONFIG = """run_msd.py: error: no config file. Give one first; flags after it override its values:
  examples/configs/tiny_easy_vqa.yaml    tiny random models, seconds (a smoke test, not for accuracy)
  examples/configs/quick_easy_vqa.yaml   the README's main command, about 10 minutes on 2 CPU cores
  examples/configs/full_easy_vqa.yaml    the full run, hours on CPU
e.g. python examples/run_msd.py examples/configs/quick_easy_vqa.yaml --output_dir outputs/mine
Without a config file only --teacher_name_or_path runs (no teacher is trained); `--help` lists every flag."""


def main(argv: list[str] | None = None) -> None:
    """Parse the command line and run the workflow. Errors about the user's own input or setup (bad arguments,
    bad data, a missing file, an output folder in use, under a file or holding other settings' stages) end
    the run with a message naming the flag and the fix, no traceback; any other error is a bug and keeps its
    traceback."""
    argv = sys.argv[1:] if argv is None else argv
    has_config = bool(argv) and argv[0].endswith((".yaml", ".yml", ".json"))
    asks_help = any(flag in argv for flag in ("-h", "--help"))
    if not (has_config or asks_help or "--teacher_name_or_path" in argv):
        sys.exit(NO_CONFIG)
    try:
        arguments = parse_arguments(argv)
    except ValueError as error:
        sys.exit(f"run_msd.py: error: {error}")
    try:
        run_experiment(*arguments)
    except (UserInputError, FileNotFoundError) as error:
        sys.exit(f"run_msd.py: error: {error}")


if __name__ == "__main__":
    main()
