"""On-policy distillation of a generative student (``lmbda``, TRL's GKD): the student answers, the teacher
scores.

:class:`OnPolicy` decides once per optimizer step whether its accumulated batch is on-policy
(:func:`~hf_msd.data.on_policy.on_policy_draw`, seeded by ``args.seed`` and the step: the same on every
process and every micro-batch). If it is, the student generates each example's answer from the ``x`` prompt
(:func:`generate_answers`: eval mode, no gradients, greedy or sampled, image / video placeholder tokens
suppressed) and every micro-batch is rewritten with those answers in ``x`` and in every modality view
(:func:`~hf_msd.data.on_policy.with_answers`), before the step's counts are taken, so the distillation terms
are normalised over the generated tokens of the whole accumulated batch. The task term of such a batch is the
student's on the gold answers (:func:`gold_task`), counted over the gold tokens (:func:`add_gold_tokens`).
The generation's cost (seconds and generated tokens) is summed over the logging window
(:meth:`OnPolicy.pop_logs`).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from ..data.generative import DISTILLATION_LABELS, view_inputs
from ..data.on_policy import (
    GOLD_VIEW,
    answer_starts,
    derived_seed,
    generated_answers,
    on_policy_draw,
    prompt_inputs,
    with_answers,
)
from ..distillation import losses, objective
from ..teacher_outputs.cache import TEACHER_LOGITS
from .columns import BatchColumns
from .distillation_config import DistillationTrainingArguments
from .terms import StudentOutput

#: Words in the names of a vision-language config's placeholder token ids (``image_token_id``,
#: ``video_token_id``, ``vision_start_token_id``...): an answer holding one would not match the images.
_PLACEHOLDER_WORDS = ("image", "video", "vision")


def placeholder_token_ids(config: Any) -> list[int]:
    """The image / video placeholder token ids a vision-language ``config`` declares (attributes named
    ``*_token_id`` or ``*_token_index`` with image, video or vision in the name), sorted."""
    ids = set()
    for name, value in vars(config).items():
        placeholder = any(word in name for word in _PLACEHOLDER_WORDS)
        if placeholder and name.endswith(("_token_id", "_token_index")) and isinstance(value, int):
            ids.add(value)
    return sorted(ids)


def generate_answers(
    model: nn.Module,
    prompts: Mapping[str, Any],
    args: DistillationTrainingArguments,
    seed: int,
) -> list[torch.Tensor]:
    """The student's answers to left-padded ``prompts`` (:func:`~hf_msd.data.on_policy.prompt_inputs`): B 1-D
    tensors, each up to and including its first end-of-sequence token (at most ``args.max_new_tokens``).

    Greedy, or with ``args.generation_do_sample`` sampled at ``args.generation_temperature`` (no top-k /
    top-p) from a random state seeded by ``seed`` and restored afterwards. Runs under ``no_grad`` with
    ``model`` in eval mode and gives it back in the mode it had. Image / video placeholder tokens are
    suppressed.
    """
    config = model.generation_config
    sampling = (
        {"do_sample": True, "temperature": args.generation_temperature, "top_k": 0, "top_p": 1.0}
        if args.generation_do_sample
        else {"do_sample": False}
    )
    vocab_size = model.get_output_embeddings().weight.shape[0]
    suppressed = [i for i in placeholder_token_ids(model.config) if i < vocab_size]
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad(), torch.random.fork_rng(devices=[device] if device.type == "cuda" else []):
            torch.manual_seed(seed)
            sequences = model.generate(
                **{
                    key: value.to(device) if torch.is_tensor(value) else value
                    for key, value in prompts.items()
                },
                max_new_tokens=args.max_new_tokens,
                suppress_tokens=suppressed or None,
                pad_token_id=config.pad_token_id,
                eos_token_id=config.eos_token_id,
                **sampling,
            )
    finally:
        model.train(was_training)
    return generated_answers(sequences, prompts["input_ids"].shape[1], config.eos_token_id)


def check_on_policy_setup(lmbda: float, token_level: str | None, train_dataset: Any) -> None:
    """Refuse, before training, ``lmbda > 0`` for a student that is not a causal LM, and with a training set
    of cached teacher outputs (``teacher_logits*`` columns: they score the collated answers, not generated
    ones), naming both ways out."""
    if lmbda == 0:
        return
    if token_level != "causal":
        raise ValueError(
            f"lmbda={lmbda} generates the answers of generative (causal LM) students; this student is not "
            "one: set lmbda=0."
        )
    columns = getattr(train_dataset, "column_names", None)
    if columns is None and isinstance(train_dataset, list) and train_dataset:
        columns = list(train_dataset[0])
    cached = [column for column in columns or [] if column.startswith(TEACHER_LOGITS)]
    if cached:
        raise ValueError(_cached_message(lmbda, cached))


def _cached_message(lmbda: float, cached: Sequence[str]) -> str:
    return (
        f"lmbda={lmbda} generates answers the cached teacher outputs {list(cached)} do not cover: set "
        "lmbda=0, or train on the dataset without the cached columns (online teacher)."
    )


def add_gold_tokens(counts: torch.Tensor, batch: Mapping[str, Any]) -> torch.Tensor:
    """``counts`` of ``batch`` (:func:`~hf_msd.distillation.objective.count_batch`) with, for an on-policy
    batch, its gold answer tokens added to the token count in place (its
    :data:`~hf_msd.data.on_policy.GOLD_VIEW`'s ``labels`` != -100 after the causal shift): the task term's
    count. Unchanged without a gold view."""
    gold = view_inputs(batch, GOLD_VIEW)
    if gold:
        labels = gold["labels"]
        mask = losses.scored_token_mask(labels, gold.get("attention_mask"), labels.shape, causal=True)
        counts[objective.TOKENS] += int(mask.sum())
    return counts


def gold_task(
    trainer: Any,
    model: nn.Module,
    inputs: dict[str, Any],
    student: StudentOutput,
    components: dict[str, torch.Tensor],
    num_items_in_batch: torch.Tensor | int | None,
) -> None:
    """On an on-policy batch, the task term on the gold answers: the student's forward
    (:meth:`~hf_msd.trainers.DistillationTrainer.student_forward` of ``trainer``, a DistillationTrainer) on
    the batch's :data:`~hf_msd.data.on_policy.GOLD_VIEW` (through the bare module: a second pass through DDP
    in one step fails) replaces the task term of ``x``, whose labels are all -100 (``student.task_loss`` or
    ``components["task"]``). Nothing happens off-policy or with ``hard_label_weight`` 0."""
    gold = view_inputs(inputs, GOLD_VIEW)
    if not gold or trainer.args.hard_label_weight == 0:
        return
    gold_student = trainer.student_forward(trainer.accelerator.unwrap_model(model), gold, num_items_in_batch)
    if gold_student.task_loss is not None:
        student.task_loss = gold_student.task_loss
    else:
        task = losses.token_task_loss(gold_student.logits, gold["labels"], causal=True)
        components["task"] = trainer.args.hard_label_weight * task


class OnPolicy:
    """The on-policy steps of a trainer with ``args.lmbda > 0`` (see the module docstring).

    Args:
        args: the trainer's arguments (``lmbda``, ``seed``, ``max_new_tokens``, generation settings).
        student_inputs: a batch -> the student's model inputs (extra columns and labels removed).
        process_index: this process's index (seeds the sampling of its own examples).
    """

    def __init__(
        self,
        args: DistillationTrainingArguments,
        student_inputs: Callable[[dict[str, Any]], dict[str, Any]],
        process_index: int = 0,
    ):
        self.args = args
        self.student_inputs = student_inputs
        self.process_index = process_index
        self.seconds = 0.0
        self.tokens = 0
        self.steps = 0

    @classmethod
    def from_trainer(cls, trainer: Any) -> OnPolicy | None:
        """The on-policy steps of ``trainer`` (a :class:`~hf_msd.trainers.DistillationTrainer`) when its
        ``args.lmbda > 0``, else None, after :func:`check_on_policy_setup` (its student, its training set)."""
        args = trainer.args
        check_on_policy_setup(args.lmbda, trainer.token_level, trainer.train_dataset)
        return (
            cls(args, trainer.columns.student, trainer.accelerator.process_index) if args.lmbda > 0 else None
        )

    def rewrite(self, model: nn.Module, batches: Sequence[dict[str, Any]], step: int) -> list[dict[str, Any]]:
        """``batches`` (the micro-batches of optimizer step ``step``) with the student's answers when the
        step is on-policy, else unchanged. ``model`` is the bare student (not DDP-wrapped)."""
        if not on_policy_draw(self.args.lmbda, self.args.seed, step):
            return list(batches)
        pad = model.generation_config.pad_token_id
        if pad is None:
            raise ValueError(
                "lmbda > 0 needs the student's generation_config.pad_token_id to pad its answers: set it to "
                "the tokenizer's pad_token_id."
            )
        start, out = time.perf_counter(), []
        for index, batch in enumerate(batches):
            cached = [key for key in batch if key.startswith(TEACHER_LOGITS)]
            if cached:
                raise ValueError(_cached_message(self.args.lmbda, cached))
            distilled = BatchColumns.distillation_labels(batch)
            batch = {**batch, DISTILLATION_LABELS: distilled}
            prompts = prompt_inputs(self.student_inputs(batch), answer_starts(distilled), pad)
            seed = derived_seed(self.args.seed, step, self.process_index, index)
            answers = generate_answers(model, prompts, self.args, seed)
            out.append(with_answers(batch, answers, pad))
            self.tokens += sum(len(answer) for answer in answers)
        self.seconds += time.perf_counter() - start
        self.steps += 1
        return out

    def pop_logs(
        self, reduce: Callable[[torch.Tensor], torch.Tensor], device: torch.device
    ) -> dict[str, float]:
        """The logging window's generation cost, summed over the processes, and reset: ``on_policy_steps``
        (optimizer steps that generated, counted once), ``on_policy_generation_seconds`` (per process,
        summed) and ``on_policy_generated_tokens`` (all processes)."""
        totals = reduce(torch.tensor([self.seconds, float(self.tokens)], dtype=torch.float32, device=device))
        logs = {
            "on_policy_steps": float(self.steps),
            "on_policy_generation_seconds": round(float(totals[0]), 4),
            "on_policy_generated_tokens": float(totals[1]),
        }
        self.seconds, self.tokens, self.steps = 0.0, 0, 0
        return logs
