"""One SGD step of MSDTrainer on a tiny LLaVA student, run on 2 CPU processes by tests/test_generative_vlm.py.

Launched like distributed_script.py beside it (``accelerate launch --multi_gpu --num_processes 2``, gloo). For
each case of :data:`CASES` every rank trains the student for one optimizer step on the :data:`NUM_EXAMPLES`
raw examples (some without a gold answer) and saves its parameters to ``OUT_DIR/<case>/rank<k>.safetensors``;
the test takes the same step on one process with one batch of all the examples (:func:`train_one_step`).
"""

from __future__ import annotations

import os
import sys

import torch
from safetensors.torch import save_file

from hf_msd.data import VisionLanguageCollator
from hf_msd.trainers import MSDTrainer
from tests.helpers.vlm import msd_args, processor, raw_examples, teacher_and_student

NUM_EXAMPLES = 8
#: Rows without a gold answer (distilled on their teacher_answer).
UNLABELLED = (1, 2, 6)
#: name -> (per_device_train_batch_size, gradient_accumulation_steps, modality_weighting) on 2 processes.
CASES = {
    "uniform_batch4": (4, 1, "uniform"),
    "instance_batch2_accumulate2": (2, 2, "instance"),
}


def train_one_step(output_dir, batch_size: int, accumulation: int, weighting: str, **overrides):
    """One SGD step (lr 0.5, sequential order) of the tiny LLaVA pair (``overrides``: more arguments);
    returns the trainer and the bare student."""
    teacher, student = teacher_and_student()
    args = msd_args(
        output_dir,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        modality_weighting=weighting,
        # The CLIP tower's post-layernorm is not used by LLaVA (it reads the last hidden state).
        ddp_find_unused_parameters=True,
        **overrides,
    )
    trainer = MSDTrainer(
        model=student,
        teacher_model=teacher,
        args=args,
        data_collator=VisionLanguageCollator(processor()),
        train_dataset=raw_examples(NUM_EXAMPLES, unlabelled=UNLABELLED),
    )
    trainer.train()
    return trainer, student


def parameters(student: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().cpu().clone().contiguous() for k, v in student.state_dict().items()}


def main(out_dir: str, cases: dict = CASES) -> None:
    """Train every case of ``cases`` (name -> (batch size, accumulation, weighting, optional overrides)) and
    save each rank's parameters."""
    for name, (batch_size, accumulation, weighting, *overrides) in cases.items():
        trainer, student = train_one_step(
            os.path.join(out_dir, name, "trainer"), batch_size, accumulation, weighting, **dict(*overrides)
        )
        state = trainer.accelerator.state
        if state.num_processes != 2:
            raise RuntimeError(f"expected 2 processes, got {state.num_processes}")
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        save_file(parameters(student), os.path.join(out_dir, name, f"rank{state.process_index}.safetensors"))
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
