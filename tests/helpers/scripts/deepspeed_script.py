"""KD and MSD under DeepSpeed ZeRO on 2 CPU processes, run by tests/test_deepspeed.py.

Launched as ``DS_ACCELERATOR=cpu CUDA_VISIBLE_DEVICES= accelerate launch --use_deepspeed --zero_stage N
--zero3_save_16bit_model true --num_processes 2 --num_machines 1 --mixed_precision no --dynamo_backend no
tests/helpers/scripts/deepspeed_script.py OUT_DIR`` (DeepSpeed's CPU accelerator falls back to gloo). For each
case of :data:`CASES` every rank trains the tiny student :data:`STEPS` SGD steps of :data:`PER_DEVICE_BATCH`
examples (the teacher is DeepSpeed's inference engine, partitioned under ZeRO-3), saving a checkpoint every
:data:`SAVE_STEPS`; the per-step losses go to ``OUT_DIR/<case>/losses.json`` and the student to
``OUT_DIR/<case>/student``. A second trainer then resumes from the first checkpoint and saves its student to
``OUT_DIR/<case>/resumed``. The test compares all of it with one process taking the same steps on batches of
twice the size (:func:`train` is shared by both sides)."""

from __future__ import annotations

import dataclasses
import json
import os
import sys

from transformers.integrations.deepspeed import unset_hf_deepspeed_config

from hf_msd.trainers import DistillationTrainer, MSDTrainer, MSDTrainingArguments
from tests.helpers.distillation import make_args, teacher_and_student, token_dataset
from tests.helpers.models import tiny_model
from tests.helpers.msd import stack_collate, text_label_dataset

CASES = ("kd", "msd")
PER_DEVICE_BATCH = 4  # on each of 2 processes; the 1-process reference takes batches of 8
STEPS = 4
SAVE_STEPS = 2
LAUNCHED = "LOCAL_RANK" in os.environ


def train(output_dir: str, case: str, batch_size: int, resume_from_checkpoint: str | None = None):
    """:data:`STEPS` SGD steps (lr 0.5, constant, no clipping, sequential order) of ``case``'s seeded tiny
    teacher and student on ``STEPS * 8`` examples, logging the loss at every step and saving a checkpoint
    every :data:`SAVE_STEPS`. Returns the trainer.

    The models are built before the arguments, outside ZeRO-3's ``zero.Init``: under it transformers 5 builds
    the fusion model's towers (``AutoModel.from_config`` inside a model's ``__init__``) on already partitioned
    parameters and fails in ``_init_weights``. The trainer partitions the student and the teacher itself.
    """
    unset_hf_deepspeed_config()  # the previous case's arguments enabled zero.Init
    if case == "msd":
        teacher, student = tiny_model(seed=0), tiny_model(seed=1)
    else:
        teacher, student = teacher_and_student()
    args = make_args(
        output_dir,
        max_steps=STEPS,
        per_device_train_batch_size=batch_size,
        learning_rate=0.5,
        warmup_steps=0,
        train_sampling_strategy="sequential",
        logging_strategy="steps",
        logging_steps=1,
        save_strategy="steps" if resume_from_checkpoint is None else "no",
        save_steps=SAVE_STEPS,
        # Launched: DeepSpeed on gloo (without ddp_backend, accelerate 1.16 counts one process under DeepSpeed
        # on CPU); not launched: the plain one-process CPU reference.
        use_cpu=not LAUNCHED,
        ddp_backend="gloo" if LAUNCHED else None,
    )
    examples = STEPS * 8
    if case == "msd":
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
        trainer = MSDTrainer(
            model=student,
            teacher_model=teacher,
            args=MSDTrainingArguments(**fields),
            train_dataset=text_label_dataset(examples),
            data_collator=stack_collate,
        )
    else:
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=token_dataset(examples)
        )
    trainer.train(resume_from_checkpoint=resume_from_checkpoint)
    return trainer


def losses(trainer) -> list[float]:
    """The logged training loss of every step."""
    return [entry["loss"] for entry in trainer.state.log_history if "loss" in entry]


def train_launched(train_case, out_dir: str, case: str, batch_size: int = PER_DEVICE_BATCH):
    """``train_case(OUT_DIR/<case>/run, case, batch_size)`` on the launched processes (checked: 2, under
    DeepSpeed), its student saved to ``OUT_DIR/<case>/student``; returns ``(OUT_DIR/<case>, trainer)``."""
    directory = os.path.join(out_dir, case)
    trainer = train_case(os.path.join(directory, "run"), case, batch_size)
    if trainer.accelerator.state.num_processes != 2 or not trainer.is_deepspeed_enabled:
        raise RuntimeError("expected 2 processes under DeepSpeed")
    trainer.save_model(os.path.join(directory, "student"))
    return directory, trainer


def write_losses(trainer, directory: str, **record) -> None:
    """``directory/losses.json``: the step losses, the ZeRO stage and ``record``, from process 0."""
    if trainer.is_world_process_zero():
        record = {"losses": losses(trainer), **record}
        record["zero_stage"] = trainer.accelerator.state.deepspeed_plugin.zero_stage
        with open(os.path.join(directory, "losses.json"), "w") as file:
            json.dump(record, file)
    trainer.accelerator.wait_for_everyone()


def main(out_dir: str) -> None:
    for case in CASES:
        directory, trainer = train_launched(train, out_dir, case)
        checkpoint = os.path.join(directory, "run", f"checkpoint-{SAVE_STEPS}")
        resumed = train(os.path.join(directory, "resume"), case, PER_DEVICE_BATCH, checkpoint)
        resumed.save_model(os.path.join(directory, "resumed"))
        write_losses(trainer, directory, resumed_losses=losses(resumed))


if __name__ == "__main__":
    main(sys.argv[1])
