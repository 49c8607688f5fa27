"""What :class:`~hf_msd.trainers.MSDTrainer` does around its loss: the checks and the held-out split before
training, the population saliency (computed once, cached) and the learned weights' meta step.

- :func:`check_held_out_source`: the learned weights need held-out data.
- :func:`check_stream`: a training set without a length (a ``datasets.IterableDataset``) trains as the same
  rows in a map-style dataset; what needs a pass over it (population saliency, the held-out split) is refused
  by name.
- :func:`split_held_out`: the fixed ``meta_validation_fraction`` split of the training set.
- :func:`population_saliency`: the teacher's per-modality saliency over the training set, read from cached
  teacher outputs, from ``<output_dir>/modality_saliency.json`` (same fingerprint) or computed.
- :class:`MetaSchedule`: when the learned weights' meta step runs;
- :func:`meta_step`: one hypergradient step of the learned weights
  (:meth:`~hf_msd.distillation.weighting.LearnedWeighting.meta_step`) on a held-out batch.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Subset
from transformers.utils import logging

from ..architectures import get_logits
from ..architectures import num_labels as architecture_num_labels
from ..distillation import losses, objective
from ..distillation.saliency import (
    SaliencyFn,
    SaliencyReport,
    compute_saliency,
    has_cached_saliency_columns,
    saliency_fingerprint,
    saliency_from_cache,
)
from ..modalities.modality import Modality
from .msd_config import MSDTrainingArguments
from .training_state import average_across_processes

logger = logging.get_logger(__name__)

SALIENCY_CACHE_NAME = "modality_saliency.json"


def check_stream(train_dataset: Any, needs_population_saliency: bool, held_out_fraction: float) -> None:
    """Refuse, naming the option, what needs a pass over a training set without a length (a
    ``datasets.IterableDataset``, a stream): the population saliency and the held-out split."""
    if hasattr(train_dataset, "__len__"):
        return
    kind = type(train_dataset).__name__
    if needs_population_saliency:
        raise ValueError(
            "modality_weighting='population' computes the teacher's saliency over the whole "
            f"train_dataset, which a {kind} (a stream without a length) cannot give: pass a map-style "
            "datasets.Dataset, or use modality_weighting='instance' (per-example saliency) or 'uniform'."
        )
    if held_out_fraction > 0:
        raise ValueError(
            f"meta_validation_fraction={held_out_fraction} splits the train_dataset, "
            f"which a {kind} (a stream without a length) cannot be: set meta_validation_fraction=0 and "
            "pass an eval_dataset for the learned weights' held-out batches."
        )


def check_held_out_source(eval_dataset: Any, held_out_fraction: float) -> None:
    """The learned weights' meta step needs held-out data: one eval_dataset or a split of the training set."""
    if eval_dataset is None and held_out_fraction == 0:
        raise ValueError(
            "modality_weighting='learned' needs held-out data for its meta step: pass an eval_dataset or "
            "set meta_validation_fraction > 0."
        )
    if isinstance(eval_dataset, dict) and not held_out_fraction:
        raise ValueError(
            "modality_weighting='learned' needs one eval_dataset, got a dict of several; set "
            "meta_validation_fraction > 0 instead."
        )


def first_examples(dataset: Any, count: int) -> list:
    """The first ``count`` examples of ``dataset`` (fewer if it is shorter); a stream is read from its start,
    not consumed."""
    if hasattr(dataset, "__len__"):
        return [dataset[i] for i in range(min(count, len(dataset)))]
    return list(itertools.islice(iter(dataset), count))


def split_held_out(dataset: Any, fraction: float, seed: int) -> tuple[Any, Any]:
    """``(held_out, rest)``: a seeded random ``fraction`` of ``dataset`` (at least one example) and the
    rest, as ``select`` views of a `datasets.Dataset` or `Subset` s."""
    size = len(dataset)
    held = max(1, round(size * fraction))
    if held >= size:
        raise ValueError(f"meta_validation_fraction={fraction} leaves no training data.")
    order = torch.randperm(size, generator=torch.Generator().manual_seed(seed)).tolist()
    pick = (
        (lambda idx: dataset.select(idx))
        if hasattr(dataset, "select")
        else (lambda idx: Subset(dataset, idx))
    )
    return pick(order[:held]), pick(order[held:])


def population_saliency(
    teacher: nn.Module,
    dataset: Any,
    modalities: Sequence[Modality] | Sequence[str],
    *,
    args: MSDTrainingArguments,
    problem_type: str | None,
    saliency_fn: SaliencyFn | None,
    data_collator: Callable,
    teacher_collator: Callable,
    view_saliency: Callable[[dict[str, Any]], torch.Tensor] | None = None,
) -> torch.Tensor:
    """The mean saliency of each modality over ``dataset`` (M,), for the ``population`` weights.

    ``modalities``: the teacher's Modality spec, or a generative teacher's view names, whose per-batch
    saliency ``view_saliency`` gives ((B, M) from a collated batch). A classifier's dataset with cached
    teacher outputs is read without a teacher pass; else ``<output_dir>/modality_saliency.json`` is loaded
    when its fingerprint (teacher, data, collator, modalities, saliency function, problem type) matches;
    else the teacher runs over ``dataset`` (a classifier's batches collated by ``teacher_collator``,
    :func:`~hf_msd.distillation.saliency.compute_saliency`, the report saved there)."""
    generative = view_saliency is not None
    if not generative and has_cached_saliency_columns(dataset, modalities):  # precompute_teacher_outputs'
        report = saliency_from_cache(
            dataset, modalities, problem_type, architecture_num_labels(teacher), saliency_fn
        )
        logger.info(f"Population saliency from the cached teacher outputs: {report.population()}")
        return report.mean
    fingerprint = saliency_fingerprint(
        teacher,
        dataset,
        modalities,
        data_collator=data_collator,
        saliency_fn=saliency_fn,
        problem_type=problem_type,
    )
    cache = os.path.join(args.output_dir, SALIENCY_CACHE_NAME)
    if os.path.isfile(cache) and SaliencyReport.load_json(cache).fingerprint == fingerprint:
        report = SaliencyReport.load_json(cache)
        logger.info(f"Loaded the population saliency from {cache}.")
    elif generative:
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=args.saliency_batch_size, shuffle=False, collate_fn=data_collator
        )
        with torch.no_grad():
            rows = torch.cat([view_saliency(batch).cpu() for batch in loader])
        report = SaliencyReport(list(modalities), losses.SINGLE_LABEL, rows, teacher_confidence={})
    else:
        report = compute_saliency(
            teacher,
            dataset,
            modalities,
            data_collator=teacher_collator,
            batch_size=args.saliency_batch_size,
            saliency_fn=saliency_fn,
            device=args.device,
            problem_type=problem_type,
            progress=not args.disable_tqdm,
        )
        report.fingerprint = fingerprint
        if args.should_save:
            os.makedirs(args.output_dir, exist_ok=True)
            report.save_json(cache)
    logger.info(f"Population saliency: {report.population()}")
    return report.mean


class MetaSchedule:
    """When the learned weights' meta step runs: at the first micro-batch of every ``interval``-th optimizer
    step; and the held-out loss of the last one (``last_loss``, logged as ``meta_validation_loss``)."""

    def __init__(self, interval: int) -> None:
        self.interval, self.last_step = interval, -1
        self.last_loss: torch.Tensor | None = None

    def due(self, step: int) -> bool:
        """Whether the meta step runs now, at optimizer step ``step`` (once per step)."""
        if step % self.interval or step == self.last_step:
            return False
        self.last_step = step
        return True


def meta_step(
    weighting: nn.Module,
    student: nn.Module,
    train_loss: Callable[[], torch.Tensor],
    held_out: Mapping[str, Any],
    student_inputs: dict[str, Any],
    counts: torch.Tensor,
    token_level: str | None,
    problem_type: str,
    inner_learning_rate: float,
) -> torch.Tensor:
    """One hypergradient step of the learned ``weighting`` over ``student``'s trainable parameters; returns
    the held-out loss after the look-ahead. The held-out loss is the task loss of the looked-ahead student
    on ``held_out`` (its ``student_inputs``), the mean over its labelled examples (tokens for a token-level
    student, by ``counts``: :func:`~hf_msd.distillation.objective.reduce_terms`)."""
    params = {name: p for name, p in student.named_parameters() if p.requires_grad}

    def val_loss(lookahead: dict[str, torch.Tensor]) -> torch.Tensor:
        outputs = torch.func.functional_call(student, lookahead, args=(), kwargs=student_inputs)
        logits = get_logits(student, outputs)
        if token_level:  # mean over the labelled tokens
            task = losses.token_task_loss(logits, held_out["labels"], causal=True)
        else:  # mean over the labelled examples
            task = losses.task_loss(logits, held_out["labels"], problem_type)
        return objective.reduce_terms({"task": task}, counts, token_level)

    # Fused attention kernels have no double backward; the math kernel does.
    with sdpa_kernel(SDPBackend.MATH):
        return weighting.meta_step(
            train_loss, val_loss, params, inner_learning_rate, average=average_across_processes
        )
