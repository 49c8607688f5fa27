"""A training run that SIGKILLs itself while saving a checkpoint, for tests/test_resume.py.

``python tests/helpers/scripts/resume_script.py OUT_DIR`` (repository root on ``PYTHONPATH``) trains
:func:`build_trainer`'s trainer with a checkpoint every 2 steps and kills its own process (SIGKILL, as an out-
of-memory killer or a pre-empted node would) in the middle of saving the step-4 checkpoint: after the Trainer
wrote it, before the training-only state was written. The test then resumes in its own process and compares
with an uninterrupted run built by the same function."""

from __future__ import annotations

import dataclasses
import os
import signal
import sys

from transformers import TrainerCallback

from hf_msd.trainers import MSDTrainer, MSDTrainingArguments
from tests.helpers.distillation import make_args
from tests.helpers.models import tiny_model
from tests.helpers.msd import stack_collate, text_label_dataset

MAX_STEPS = 4
KILL_AT_STEP = 4


class KillWhileSaving(TrainerCallback):
    """SIGKILL this process in ``on_save`` of step ``step`` (before the trainer's own state callback runs)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def on_save(self, args, state, control, **kwargs):
        if state.global_step == self.step:
            os.kill(os.getpid(), signal.SIGKILL)


def build_trainer(output_dir: str, callbacks=()) -> MSDTrainer:
    """An MSDTrainer holding every kind of training-only state: hidden-state KD through projections (student
    fusion width 16, teacher 32), learned modality weights with their Adam state (a meta step every step)
    and the held-out stream (6 examples in batches of 4, so it wraps into a second permutation)."""
    args = make_args(
        output_dir,
        max_steps=MAX_STEPS,
        per_device_train_batch_size=4,
        save_strategy="steps",
        save_steps=2,
        optim="adamw_torch",
        learning_rate=0.01,
        hidden_loss_weight=1.0,
    )
    fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
    args = MSDTrainingArguments(
        **fields, modality_weighting="learned", meta_update_interval=1, meta_learning_rate=0.1
    )
    return MSDTrainer(
        model=tiny_model(seed=1, hidden_size=16),
        teacher_model=tiny_model(seed=0),
        args=args,
        train_dataset=text_label_dataset(16),
        eval_dataset=text_label_dataset(6, seed=1),
        data_collator=stack_collate,
        callbacks=list(callbacks),
    )


if __name__ == "__main__":
    build_trainer(sys.argv[1], callbacks=[KillWhileSaving(KILL_AT_STEP)]).train()
    raise SystemExit("the run was not killed")
