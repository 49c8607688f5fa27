"""KD and MSD of a tiny LLaVA student under DeepSpeed ZeRO on 2 CPU processes, run by
tests/test_deepspeed_vlm.py.

Launched as deepspeed_script.py beside it (``DS_ACCELERATOR=cpu accelerate launch --use_deepspeed
--zero_stage 3 ... deepspeed_vlm_script.py OUT_DIR``). For each case of :data:`CASES` every rank trains the
tiny LLaVA student :data:`STEPS` SGD steps of :data:`PER_DEVICE_BATCH` raw image-question-answer examples
(some without a gold answer), the LLaVA teacher being DeepSpeed's inference engine (partitioned under
ZeRO-3); the per-step losses go to ``OUT_DIR/<case>/losses.json`` and the student saved by ``save_model`` to
``OUT_DIR/<case>/student``, with the processor. The test compares them with one process taking the same
steps on batches of twice the size (:func:`train` is shared by both sides).
"""

from __future__ import annotations

import os
import sys

from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from hf_msd.data import VisionLanguageCollator
from hf_msd.trainers import DistillationTrainer, MSDTrainer
from tests.helpers.scripts.deepspeed_script import train_launched, write_losses
from tests.helpers.vlm import msd_args, processor, raw_examples, teacher_and_student

CASES = ("kd", "msd")
PER_DEVICE_BATCH = 2  # on each of 2 processes; the 1-process reference takes batches of 4
STEPS = 3
#: Rows without a gold answer (distilled on their teacher_answer), one in every combined batch.
UNLABELLED = (1, 6, 8)
LAUNCHED = "LOCAL_RANK" in os.environ


def train(output_dir: str, case: str, batch_size: int):
    """:data:`STEPS` SGD steps (lr 0.5, constant, sequential order) of the tiny LLaVA pair on
    ``STEPS * 2 * PER_DEVICE_BATCH`` examples, KD (``DistillationTrainer``, no views) or MSD (``MSDTrainer``,
    instance weighting), logging the loss at every step. Returns the trainer.

    The models are built before the arguments (outside ZeRO-3's ``zero.Init``), as in deepspeed_script.py.
    """
    unset_hf_deepspeed_config()  # the previous case's arguments enabled zero.Init
    teacher, student = teacher_and_student()
    args = msd_args(
        output_dir,
        max_steps=STEPS,
        per_device_train_batch_size=batch_size,
        modality_weighting="instance",
        modality_loss_weight=0.5 if case == "msd" else 0.0,
        logging_strategy="steps",
        logging_steps=1,
        use_cpu=not LAUNCHED,
        ddp_backend="gloo" if LAUNCHED else None,
    )
    examples = raw_examples(STEPS * 2 * PER_DEVICE_BATCH, unlabelled=UNLABELLED)
    trainer_class = MSDTrainer if case == "msd" else DistillationTrainer
    trainer = trainer_class(
        model=student,
        teacher_model=teacher,
        args=args,
        train_dataset=examples,
        data_collator=VisionLanguageCollator(processor(), views=case == "msd"),
    )
    trainer.train()
    return trainer


def main(out_dir: str) -> None:
    for case in CASES:
        directory, trainer = train_launched(train, out_dir, case, PER_DEVICE_BATCH)
        if trainer.is_world_process_zero():
            processor().save_pretrained(os.path.join(directory, "student"))
        write_losses(trainer, directory)


if __name__ == "__main__":
    main(sys.argv[1])
