"""One SGD step of DistillationTrainer, run on 2 CPU processes by tests/test_distributed.py.

Launched as ``accelerate launch --multi_gpu --num_processes 2 --num_machines 1
tests/helpers/scripts/distributed_script.py OUT_DIR`` with no visible GPU: torchrun starts 2 processes and
accelerate picks MULTI_CPU (gloo). (With ``--cpu``, accelerate 1.15's simple launcher starts ONE process
unless MPI is used.) For each case of :data:`CASES` every rank trains the tiny student (a BERT student of
:class:`DistillationTrainer`, or for ``msd_*`` cases a student made from the tiny multimodal teacher and
trained by :class:`MSDTrainer` with uniform or learned modality weights) for one optimizer step (two when
learned) on the whole :data:`NUM_EXAMPLES`-example dataset and saves the student's and the projections' (and
learned weights') parameters to ``OUT_DIR/<case>/rank<k>.safetensors``. The test compares them with the same
steps taken by one process on one batch of all the examples (:func:`train_one_step` is shared by both
sides)."""

from __future__ import annotations

import dataclasses
import os
import sys

import torch
from safetensors.torch import save_file

from hf_msd.trainers import DistillationTrainer, MSDTrainer, MSDTrainingArguments
from tests.helpers.distillation import make_args, teacher_and_student, token_dataset
from tests.helpers.models import tiny_model
from tests.helpers.msd import stack_collate, text_label_dataset

#: Examples in the dataset: exactly one optimizer step's worth in every case (2 x 4, 2 x 2 x 2 and 1 x 8).
NUM_EXAMPLES = 8

#: name -> (per_device_train_batch_size, gradient_accumulation_steps, hidden_loss_weight) on 2 processes.
CASES = {
    "batch4": (4, 1, 0.0),
    "batch4_hidden": (4, 1, 1.0),
    "batch2_accumulate2_hidden": (2, 2, 1.0),
    # Rows 2, 3 and 6 unlabelled: the task term's divisor is the labelled count over both processes.
    "batch2_accumulate2_unlabelled": (2, 2, 0.0),
    # MSDTrainer: the modality-only student passes go through the bare module, the full pass through DDP.
    "msd_uniform_batch4": (4, 1, 0.0),
    # Learned weights: two steps, each with a meta step whose look-ahead gradient and hypergradient are
    # averaged over the processes (each process holds half of the training and of the held-out batch).
    "msd_learned_batch4": (4, 1, 0.0),
}


#: Rows without a label (-100) in the ``*_unlabelled`` cases.
UNLABELLED = (2, 3, 6)


def dataset(case: str):
    """The ``NUM_EXAMPLES`` token examples of a DistillationTrainer case (rows :data:`UNLABELLED` without a
    label in the ``*_unlabelled`` cases)."""
    examples = token_dataset(NUM_EXAMPLES)
    if not case.endswith("_unlabelled"):
        return examples
    labels = [-100 if i in UNLABELLED else y for i, y in enumerate(examples["labels"])]
    return examples.remove_columns("labels").add_column("labels", labels)


def is_msd(case: str) -> bool:
    """Whether ``case`` trains the multimodal student with :class:`MSDTrainer`."""
    return case.startswith("msd_")


def models(case: str):
    """The freshly built (seeded, so identical on every call) ``(teacher, student)`` of ``case``."""
    if is_msd(case):
        teacher = tiny_model(seed=0)  # dropout 0 (tiny_config)
        # Not make_student(teacher): its logits are so close to the teacher's that the modality terms barely
        # move the step (7e-5); with a seed-1 student they move it by 3e-3, far above the 1e-6 tolerance.
        return teacher, tiny_model(seed=1)
    return teacher_and_student()


def train_one_step(output_dir, case: str, batch_size: int, accumulation: int, hidden_loss_weight: float):
    """One SGD step (lr 0.5, constant, no clipping, sequential order) on ``NUM_EXAMPLES`` examples with the
    models and trainer of ``case``.

    Returns ``(trainer, student)``; ``student`` is the bare model (not the DDP wrapper).
    """
    teacher, student = models(case)
    args = make_args(
        output_dir,
        max_steps=1,
        per_device_train_batch_size=batch_size,
        gradient_accumulation_steps=accumulation,
        hidden_loss_weight=hidden_loss_weight,
        learning_rate=0.5,
        warmup_steps=0,
        train_sampling_strategy="sequential",
    )
    if is_msd(case):
        fields = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
        learned = "learned" in case
        if learned:
            fields.update(
                max_steps=2, modality_weighting="learned", meta_update_interval=1, meta_learning_rate=0.1
            )
        args = MSDTrainingArguments(**fields)
        trainer = MSDTrainer(
            model=student,
            teacher_model=teacher,
            args=args,
            train_dataset=text_label_dataset(NUM_EXAMPLES),
            eval_dataset=text_label_dataset(NUM_EXAMPLES, seed=1) if learned else None,
            data_collator=stack_collate,
        )
    else:
        trainer = DistillationTrainer(
            model=student, teacher_model=teacher, args=args, train_dataset=dataset(case)
        )
    trainer.train()
    return trainer, student


def parameters(trainer: DistillationTrainer, student: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The student's parameters (``student.``) and the registered training modules' (``modules.``)."""
    state = {f"student.{k}": v for k, v in student.state_dict().items()}
    state.update({f"modules.{k}": v for k, v in trainer.training_modules.state_dict().items()})
    if isinstance(trainer, MSDTrainer):
        state.update(
            {f"weighting.{k}": v for k, v in trainer.weighting.state_dict().items() if torch.is_tensor(v)}
        )
    return {k: v.detach().cpu().clone().contiguous() for k, v in state.items()}


def main(out_dir: str) -> None:
    for name, (batch_size, accumulation, hidden_loss_weight) in CASES.items():
        trainer, student = train_one_step(
            os.path.join(out_dir, name, "trainer"), name, batch_size, accumulation, hidden_loss_weight
        )
        state = trainer.accelerator.state
        if state.num_processes != 2:
            raise RuntimeError(f"expected 2 processes, got {state.num_processes}")
        os.makedirs(os.path.join(out_dir, name), exist_ok=True)
        save_file(
            parameters(trainer, student),
            os.path.join(out_dir, name, f"rank{state.process_index}.safetensors"),
            metadata={"world_size": str(trainer.args.world_size)},
        )
        trainer.accelerator.wait_for_everyone()


if __name__ == "__main__":
    main(sys.argv[1])
