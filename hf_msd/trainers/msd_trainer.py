"""`MSDTrainer`: modality-specific distillation (MSD) on top of :class:`DistillationTrainer`.

For a batch ``x`` with modalities ``m = 1..M`` and ``x_m`` the input keeping only modality ``m``
(:func:`hf_msd.modalities.modality.restrict`), the loss per example is::

    hard_label_weight * CE(S(x), y) + kd_loss_weight * KD(T(x), S(x)) + sum_m w_m * KD(T(x_m), S(x_m))

``KD`` is the distillation term of :class:`DistillationTrainer` (same ``temperature``, ``T**2``
scaling, ``kd_loss_type`` and problem types; :func:`hf_msd.distillation.losses.soft_target_loss`); the
hidden-state
and attention losses, when enabled, apply to the full input only. ``w_m`` comes from
``args.modality_weighting`` (:mod:`hf_msd.distillation.weighting`; saliency in
:mod:`hf_msd.distillation.saliency`). Like every
component, the total is summed over the examples of the whole accumulated batch and divided by their
number.

Generative students (decoder-only image-text-to-text models such as LLaVA, causal LMs): ``x_m`` are the
modality views a :class:`~hf_msd.data.VisionLanguageCollator` builds from the raw examples (``x_text`` the
question without image tokens or ``pixel_values``, ``x_image`` the image with an empty question), ``KD`` is
the per-token distillation over the answer tokens (:func:`hf_msd.distillation.losses.token_soft_target_loss`)
and each term
is summed over the answer tokens of the accumulated batch and divided by their number (the same tokens in
every view). Per-example saliency averages the divergence of the teacher's answer-token distributions over the
answer tokens (:func:`hf_msd.distillation.saliency.answer_token_saliency`).
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Callable, Sequence
from typing import Any

import datasets
import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel
from torch.utils.data import Subset
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging

from ..architectures import get_logits
from ..architectures import num_labels as architecture_num_labels
from ..data.generative import DISTILLATION_LABELS, VIEW_NAMES, has_views, view_inputs
from ..distillation import losses
from ..distillation.saliency import (
    SaliencyFn,
    SaliencyReport,
    answer_token_saliency,
    compute_saliency,
    has_cached_saliency_columns,
    modality_saliency,
    saliency_fingerprint,
    saliency_from_cache,
)
from ..distillation.weighting import build_weighting
from ..modalities.modality import Modality, remove, restrict, validate_modalities
from ..teacher_outputs.cache import has_cached_column, teacher_column
from .compilation import uncompiled
from .distillation_trainer import DistillationTrainer, StudentOutput
from .meta_validation import MetaValidationBatches
from .msd_config import MSDTrainingArguments
from .training_state import average_across_processes, resolve_checkpoint

logger = logging.get_logger(__name__)

SALIENCY_CACHE_NAME = "modality_saliency.json"


def _signature(batch: dict[str, Any]) -> tuple:
    return tuple(sorted((key, tuple(value.shape), value.dtype) for key, value in batch.items()))


def batched_logits(run: Callable[[dict], torch.Tensor], batches: Sequence[dict]) -> list[torch.Tensor]:
    """``[run(b).logits-like for b in batches]``, running batches with the same keys, shapes and dtypes as one
    concatenated call (split back afterwards). ``run`` maps a batch dict of tensors (B, ...) to (B, C)."""
    groups: dict[tuple, list[int]] = {}
    for index, batch in enumerate(batches):
        groups.setdefault(_signature(batch), []).append(index)
    results: list[torch.Tensor | None] = [None] * len(batches)
    for indices in groups.values():
        if len(indices) == 1:
            results[indices[0]] = run(batches[indices[0]])
            continue
        first = batches[indices[0]]
        joined = {key: torch.cat([batches[i][key] for i in indices]) for key in first}
        sizes = [next(iter(batches[i].values())).shape[0] for i in indices]
        for index, logits in zip(indices, run(joined).split(sizes)):
            results[index] = logits
    return results


class MSDTrainer(DistillationTrainer):
    """Modality-specific distillation (Jin et al., 2021, "MSD: Saliency-aware Knowledge Distillation for
    Multimodal Understanding") of ``teacher_model`` into ``model``.

    Args:
        model, teacher_model, **trainer_kwargs: as for :class:`DistillationTrainer`.
        args: an :class:`MSDTrainingArguments`.
        modalities, teacher_modalities: the :class:`~hf_msd.modalities.modality.Modality` specs (keys and
        removal
            strategy of each modality) of the student's and the teacher's inputs, as for the parent
            (default the registered specs, :func:`~hf_msd.architectures.default_modalities`). The teacher's
            ``x_m`` are made with the teacher's spec from its inputs, the student's with the student's spec.
            Checked against the first training batch and both models when ``train()`` starts (errors name
            the key).
        saliency_fn: ``fn(teacher_logits_full, teacher_logits_without_m, problem_type) -> (B,)`` replacing
            :func:`hf_msd.distillation.saliency.default_saliency` for the population / instance / network
            weights.

    Forward passes: the teacher runs without grad on ``x`` and each ``x_m`` (and, with more than two
    modalities and per-example saliency, on each ``x without m``); cached ``teacher_logits`` /
    ``teacher_logits_<name>`` batch columns are used instead when present. Passes whose inputs share keys
    and shapes ("mask" / "fill" removal) run as one concatenated call; with "drop" each ``x_m`` is its own,
    shorter, call. The student runs on ``x`` (with the intermediate outputs the other losses need) and on
    the ``x_m`` the same way.

    Unimodal students (``config.modalities`` with one entry, the multimodal-to-unimodal setting): the
    student only ever sees its modality (the other modalities' keys are left out), the teacher sees the
    full ``x`` for the ``kd`` term, and only the student's modality gets a modality term.

    Weights: ``population`` saliency is computed once at the start of ``train()`` over the training set (a
    progress bar), cached in ``<output_dir>/modality_saliency.json`` with a fingerprint of teacher, data,
    modalities and saliency function (a mismatch recomputes), and saved in every checkpoint (the
    trainer's :class:`~hf_msd.trainers.training_state.TrainingState`) so a resume does not recompute.
    ``learned`` weights, their Adam state and the position of the held-out stream are saved there too, so a
    resume continues exactly; every ``meta_update_interval`` optimizer steps
    :meth:`~hf_msd.distillation.weighting.LearnedWeighting.meta_step` runs on the current training batch and
    a held-out
    batch (:class:`~hf_msd.trainers.meta_validation.MetaValidationBatches` over ``eval_dataset``, or a fixed
    ``meta_validation_fraction`` split of the training set made at the start of ``train()``), looking ahead
    over the student's trainable parameters (so LoRA works). With several processes the look-ahead
    gradient and the hypergradient are averaged over them, so the weights stay identical on every process
    and equal those of one process on the combined batches.

    Logs: each modality term's mean as ``modality_<name>_loss``, each modality's mean weight as
    ``modality_weight_<name>``, and with ``learned`` the last held-out loss as ``meta_validation_loss``.
    """

    _tag_names = ["hf_msd", "distillation", "msd"]
    card_method = "msd"
    args_class = MSDTrainingArguments

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
        args: MSDTrainingArguments | None = None,
        modalities: Sequence[Modality] | None = None,
        teacher_modalities: Sequence[Modality] | None = None,
        saliency_fn: SaliencyFn | None = None,
        **trainer_kwargs: Any,
    ):
        super().__init__(
            model=model,
            teacher_model=teacher_model,
            args=args,
            modalities=modalities,
            teacher_modalities=teacher_modalities,
            **trainer_kwargs,
        )
        args = self.args
        #: A generative student (causal LM, e.g. LLaVA): the modality views come from the collator.
        self.generative = self.token_level == "causal"
        if self.token_level == "tokens" and args.modality_loss_weight > 0:
            raise ValueError(
                f"MSDTrainer does not support token classifiers ({type(self._student_base()).__name__}): "
                "use DistillationTrainer, or set modality_loss_weight=0."
            )
        if not self.generative and not self.modalities and args.modality_loss_weight > 0:
            raise ValueError(
                "modalities is empty and neither model is a registered architecture: pass "
                "modalities=[Modality(...), ...]."
            )
        self.saliency_fn = saliency_fn
        names = list(VIEW_NAMES) if self.generative else [m.name for m in self.teacher_modalities]
        #: The modalities of the weighting, in the order of its columns.
        self.modality_names = names
        unknown = sorted(set(args.modality_terms or ()) - set(names))
        if unknown:
            raise ValueError(
                f"modality_terms names {unknown}, not modalities of this teacher: choose from {names}."
            )
        #: The modalities that get a term (``args.modality_terms``, default all).
        self.term_names = [n for n in names if args.modality_terms is None or n in args.modality_terms]
        if self.generative and args.modality_target != "modality":
            raise ValueError(
                "modality_target='full' is not supported for generative students (each view has its own "
                "token sequence): use modality_target='modality'."
            )
        student_modalities = getattr(getattr(self._student_base(), "config", None), "modalities", None)
        self._unimodal_student = student_modalities is not None and len(student_modalities) == 1
        self.weighting = build_weighting(
            args.modality_weighting,
            names,
            args.modality_loss_weight,
            learning_rate=args.meta_learning_rate,
            hidden_size=args.meta_weight_network_hidden_size,
        ).to(args.device)
        if self.weighting.learned and self.eval_dataset is None and args.meta_validation_fraction == 0:
            raise ValueError(
                "modality_weighting='learned' needs held-out data for its meta step: pass an eval_dataset or "
                "set meta_validation_fraction > 0."
            )
        if (
            self.weighting.learned
            and isinstance(self.eval_dataset, dict)
            and not args.meta_validation_fraction
        ):
            raise ValueError(
                "modality_weighting='learned' needs one eval_dataset, got a dict of several; set "
                "meta_validation_fraction > 0 instead."
            )
        if len(self.weighting.state_dict()):  # population saliency, learned weights and their Adam state
            self.register_state("modality_weighting", self.weighting)
        self._meta_mode = False
        self._meta_dataset = None
        self._meta_batches: MetaValidationBatches | None = None
        self._last_meta_step = -1
        self._last_meta_loss: torch.Tensor | None = None
        self._weight_sums = torch.zeros(len(names), device=args.device)
        self._weight_count = torch.zeros((), device=args.device)

    # ---- Batches -------------------------------------------------------------------------------------

    def _term_modalities(self) -> list[str]:
        """The modalities that get a term in a classifier's loss: those of :attr:`term_names` the student
        sees."""
        return [n for n in self.student_modality_names if n in self.term_names]

    def _teacher_view_names(self, needs_without: bool) -> list[str]:
        """The modalities ``m`` whose teacher logits on ``x_m`` a step needs: every one for per-example
        saliency with two modalities (``x without text`` is ``x_image``), else those whose term copies
        ``T(x_m)`` (none with ``modality_target="full"``)."""
        names = [m.name for m in self.teacher_modalities]
        if needs_without and len(names) == 2:
            return names
        if self.args.modality_target == "full":
            return []
        return [n for n in names if n in self._term_modalities()]

    def _teacher_logits(self, inputs: dict[str, Any], needs_without: bool) -> tuple[dict, dict]:
        """Teacher logits on ``x`` (key "full", unless cached or computed by the parent for intermediates),
        each ``x_m`` that the step needs (by name, :meth:`_teacher_view_names`) and, if ``needs_without``,
        each ``x without m``; one concatenated call per group of same-shaped inputs. Returns ``(only,
        extra)``: name -> (B, C) and {"full"?, "without"?}."""
        model_batch = self.teacher_inputs(inputs)
        names = [m.name for m in self.teacher_modalities]
        only: dict[str, torch.Tensor] = {}
        pending: list[tuple[str, dict]] = []
        results_cached: dict[str, torch.Tensor] = {}
        for name in self._teacher_view_names(needs_without):
            cached = self.cached_teacher_logits(inputs, teacher_column(name))
            if cached is not None:
                only[name] = cached
            else:
                pending.append((f"only:{name}", restrict(model_batch, self.teacher_modalities, name)))
        need_hidden, need_attentions = self._needs_intermediates(None)
        # Cached full-input logits are read by the parent's teacher_outputs; only their presence matters here.
        if not has_cached_column(list(inputs), teacher_column()) and not (need_hidden or need_attentions):
            pending.append(("full", model_batch))
        if needs_without and len(self.teacher_modalities) > 2:
            for n in names:
                cached = self.cached_teacher_logits(inputs, teacher_column(n, without=True))
                if cached is not None:
                    results_cached[f"without:{n}"] = cached
                else:
                    pending.append((f"without:{n}", remove(model_batch, self.teacher_modalities, n)))

        def run(batch):
            return self.teacher_forward(batch, output_intermediates=False).logits

        results = dict(zip([key for key, _ in pending], batched_logits(run, [b for _, b in pending])))
        results.update(results_cached)
        only.update({key[len("only:") :]: value for key, value in results.items() if key.startswith("only:")})
        for name, logits in only.items():
            self.check_finite(f"The teacher logits on the {name}-only input", logits)
        extra: dict[str, Any] = {}
        if "full" in results:
            extra["full"] = results["full"]
        if needs_without:
            extra["without"] = (
                [only[names[1]], only[names[0]]]
                if len(names) == 2
                else [results[f"without:{n}"] for n in names]
            )
        return only, extra

    # ---- Loss ----------------------------------------------------------------------------------------

    @property
    def uses_teacher(self) -> bool:
        return super().uses_teacher or self.args.modality_loss_weight > 0

    def teacher_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The parent's ``{"full": ...}`` plus ``"only"`` (modality name -> the teacher's logits on ``x_m``)
        and ``"without"`` (the logits on each ``x without m``, for per-example saliency), the teacher's
        passes run as concatenated calls (:meth:`_teacher_logits`). For a generative student see
        :meth:`_view_teacher_outputs`."""
        if self.generative:
            full = super().teacher_outputs(inputs)["full"]
            return {"full": full, **self._view_teacher_outputs(inputs, full.logits)}
        only, extra = self._teacher_logits(inputs, needs_without=self.weighting.needs_instance_saliency)
        if "full" in extra:
            full = SequenceClassifierOutput(logits=extra["full"])
            self.check_finite("The teacher logits", full.logits)
        else:
            full = super().teacher_outputs(inputs)["full"]
        return {"full": full, "only": only, "without": extra.get("without")}

    def _view_teacher_outputs(
        self, inputs: dict[str, Any], full_logits: torch.Tensor, instance_saliency: bool | None = None
    ) -> dict[str, Any]:
        """A generative student's teacher outputs on the collator's views: ``"only"`` (view name -> the
        teacher's logits (B, T_m, V) on ``x_m``, for the views with a term, or every view for per-example
        weights) and, for per-example weights (``instance_saliency``, default whether the weighting needs
        it), ``"saliency"`` (B, M) from the answer-token distributions
        (:func:`~hf_msd.distillation.saliency.answer_token_saliency`; with two modalities ``x without image``
        is ``x_text`` and ``x without text`` is ``x_image``)."""
        if instance_saliency is None:
            instance_saliency = self.weighting.needs_instance_saliency
        only = {}
        for name in self.modality_names if instance_saliency else self.term_names:
            only[name] = self.cached_teacher_logits(inputs, teacher_column(name))
            if only[name] is None:
                view = view_inputs(inputs, name)
                only[name] = self.teacher_forward(view, output_intermediates=False).logits
            self.check_finite(f"The teacher logits on the {name}-only input", only[name])
        saliency = None
        if instance_saliency:
            first, second = self.modality_names
            scored = {name: view_inputs(inputs, name)[DISTILLATION_LABELS] for name in self.modality_names}
            saliency = answer_token_saliency(
                full_logits.detach(),
                self.distillation_labels(inputs),
                [(only[second], scored[second]), (only[first], scored[first])],
                self.saliency_fn,
            )
        return {"only": only, "saliency": saliency}

    def _is_distillation_token_term(self, name: str) -> bool:
        return super()._is_distillation_token_term(name) or name.startswith("modality_")

    def loss_components(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        student: StudentOutput | None = None,
        teacher: dict[str, Any] | None = None,
    ) -> tuple[dict[str, torch.Tensor], StudentOutput]:
        """The parent's components plus ``modality_<name>``: ``w_m * KD(T(x_m), S(x_m))``, shape (B,)."""
        if student is None:
            student = self.student_forward(model, inputs)
        if teacher is None and self.uses_teacher:
            teacher = self.teacher_outputs(inputs)
        components, student = super().loss_components(model, inputs, student, teacher)
        if teacher is None or self.args.modality_loss_weight == 0:
            return components, student
        if self.generative:
            terms = self._view_terms(model, inputs, teacher)
        else:
            terms = self._modality_terms(model, inputs, student, teacher)
        batch_size = student.logits.shape[0]
        weights = self.weighting(batch_size, teacher.get("saliency")).to(student.logits.device)
        if not self._meta_mode:
            weights = weights.detach()
        for index, name in enumerate(self.modality_names):
            if name in terms:
                components[f"modality_{name}"] = weights[:, index] * terms[name]
        if model.training and not self._meta_mode:
            self._weight_sums = self._weight_sums + weights.detach().sum(dim=0)
            self._weight_count = self._weight_count + batch_size
        return components, student

    def _view_terms(self, model: nn.Module, inputs: dict[str, Any], teacher: dict) -> dict[str, torch.Tensor]:
        """A generative student's unweighted modality terms: view name -> the per-token KD between the
        student's and the teacher's logits on that view, summed over each example's answer tokens (B,)."""
        bare = self.accelerator.unwrap_model(model)  # see _modality_terms
        answers = (self.distillation_labels(inputs) != losses.IGNORE_INDEX).sum(dim=-1)
        terms = {}
        for name in self.term_names:
            view = view_inputs(inputs, name)
            labels = view.pop(DISTILLATION_LABELS)
            if not bool(((labels != losses.IGNORE_INDEX).sum(dim=-1) == answers).all()):
                raise ValueError(
                    f"The {name}-only view has other answer tokens than the full input: build the views with "
                    "one "
                    "completion per example (hf_msd.data.VisionLanguageCollator)."
                )
            logits = get_logits(bare, bare(**view))
            terms[name] = losses.token_soft_target_loss(
                logits,
                teacher["only"][name],
                labels=labels,
                causal=True,
                temperature=self.args.temperature,
                loss_type=self.args.kd_loss_type,
            )
        return terms

    def _modality_terms(
        self, model: nn.Module, inputs: dict[str, Any], student: StudentOutput, teacher: dict
    ) -> dict[str, torch.Tensor]:
        """A classifier's unweighted modality terms: name -> ``KD(T(x_m), S(x_m))`` (B,), or ``KD(T(x),
        S(x_m))`` with ``modality_target="full"``, for the modalities in :attr:`term_names`; also puts the
        per-example saliency into ``teacher["saliency"]`` when the weighting needs it."""
        problem_type = self._problem_type(inputs.get("labels"))
        student_batch = self.student_inputs(inputs)
        names = self._term_modalities()
        if self._unimodal_student:
            student_logits = [student.logits] if names else []
        else:
            student_batches = [restrict(student_batch, self.modalities, n) for n in names]
            # Only the full-input pass (in the parent) goes through a DDP wrapper: a second forward through
            # DDP in one step fails ("mark a variable ready only once"). The modality-only passes use the
            # bare module; autograd sums their gradients into the same parameters before DDP's reducer
            # all-reduces them, so the update is the same as on one process.
            bare = self.accelerator.unwrap_model(model)
            student_logits = batched_logits(lambda batch: get_logits(bare, bare(**batch)), student_batches)
        if self.weighting.needs_instance_saliency:
            teacher["saliency"] = modality_saliency(
                teacher["full"].logits.detach(), teacher["without"], problem_type, self.saliency_fn
            )
        full_input = self.args.modality_target == "full"
        return {
            name: losses.soft_target_loss(
                logits,
                teacher["full"].logits if full_input else teacher["only"][name],
                problem_type=problem_type,
                temperature=self.args.temperature,
                loss_type=self.args.kd_loss_type,
            )
            for name, logits in zip(names, student_logits)
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds ``modality_weight_<name>`` (mean over the logging window) and ``meta_validation_loss``."""
        if "loss" in logs and self._weight_count.item() > 0:
            sums = torch.cat([self._weight_sums, self._weight_count[None]])
            sums = self.accelerator.reduce(sums, reduction="sum")
            for name, value in zip(self.modality_names, sums[:-1]):
                logs[f"modality_weight_{name}"] = (value / sums[-1]).item()
            self._weight_sums = torch.zeros_like(self._weight_sums)
            self._weight_count = torch.zeros_like(self._weight_count)
            if self._last_meta_loss is not None:
                logs["meta_validation_loss"] = self._last_meta_loss.item()
        super().log(logs, start_time)

    # ---- Learned weights: the meta step ---------------------------------------------------------------

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None
    ) -> torch.Tensor:
        step = self.state.global_step
        if (
            self.weighting.learned
            and step % self.args.meta_update_interval == 0
            and step != self._last_meta_step
        ):
            self._last_meta_step = step
            self._meta_step(model, self._prepare_inputs(inputs))
        return super().training_step(model, inputs, num_items_in_batch)

    def _next_meta_batch(self) -> dict[str, Any]:
        return self._prepare_inputs(self._meta_batches.next())

    def _start_meta_batches(self) -> None:
        """The held-out stream of the meta step (:class:`MetaValidationBatches`), part of the training state
        so a resume continues it."""
        dataset = self._meta_dataset if self._meta_dataset is not None else self.eval_dataset
        self._meta_batches = MetaValidationBatches(
            self._model_columns(dataset, "meta-validation"),
            self.data_collator,
            batch_size=self.args.per_device_train_batch_size,
            seed=self.args.seed,
            process_index=self.accelerator.process_index,
            num_processes=self.accelerator.num_processes,
        )
        self.register_state("meta_validation", self._meta_batches)

    def _meta_step(self, model: nn.Module, inputs: dict[str, Any]) -> None:
        # Uncompiled under torch_compile: the look-ahead needs second-order gradients, which compiled
        # (AOTAutograd) graphs do not provide.
        student = uncompiled(self.accelerator.unwrap_model(model))
        params = {name: p for name, p in student.named_parameters() if p.requires_grad}
        held_out = self._next_meta_batch()
        val_inputs = self.student_inputs(held_out)
        problem_type = self._problem_type(held_out["labels"])

        def train_loss() -> torch.Tensor:
            self._meta_mode = True
            try:
                components, output = self.loss_components(student, inputs)
            finally:
                self._meta_mode = False
            return self.reduce_loss(components, output, inputs, None, training=False)

        def val_loss(lookahead: dict[str, torch.Tensor]) -> torch.Tensor:
            outputs = torch.func.functional_call(student, lookahead, args=(), kwargs=val_inputs)
            logits = get_logits(student, outputs)
            if self.token_level:  # mean over the labelled tokens
                task = losses.token_task_loss(logits, held_out["labels"], causal=True)
                return task.sum() / max(self._num_labelled_tokens(held_out), 1)
            task = losses.task_loss(logits, held_out["labels"], problem_type)
            return task.sum() / max(self._num_labelled(held_out), 1)  # mean over labelled examples

        inner_lr = self.args.meta_inner_learning_rate or self.args.learning_rate
        # Fused attention kernels have no double backward; the math kernel does.
        with sdpa_kernel(SDPBackend.MATH):
            self._last_meta_loss = self.weighting.meta_step(
                train_loss, val_loss, params, inner_lr, average=average_across_processes
            )

    # ---- Before training: validation, held-out split, population saliency ------------------------------

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """Checks the modality spec on the first batch, makes the meta-validation split and computes (or
        loads) the population saliency, then trains as :meth:`transformers.Trainer.train`."""
        if self.train_dataset is None:
            raise ValueError("MSDTrainer.train() needs a train_dataset.")
        if self.args.modality_loss_weight == 0:  # no modality terms: nothing to check or compute first
            return super().train(resume_from_checkpoint=resume_from_checkpoint, trial=trial, **kwargs)
        self.check_data()
        self._check_stream()
        if self.weighting.learned and self.args.meta_validation_fraction > 0 and self._meta_dataset is None:
            self._split_meta_validation()
        if self.weighting.learned and self._meta_batches is None:
            self._start_meta_batches()
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir, self.training_state)
        first = self._first_batch()
        self._problem_type(first.get("labels"))
        self._validate(first)
        self._restore_training_state(checkpoint)  # a resume restores the population saliency too
        if self.weighting.needs_population_saliency and not self.weighting.has_population_saliency:
            self._set_population_saliency()
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)

    def _check_stream(self) -> None:
        """Refuse, naming the option, what needs a pass over a training set without a length (a
        ``datasets.IterableDataset``, a stream): the population saliency and the held-out split."""
        if hasattr(self.train_dataset, "__len__"):
            return
        kind = type(self.train_dataset).__name__
        if self.weighting.needs_population_saliency and not self.weighting.has_population_saliency:
            raise ValueError(
                "modality_weighting='population' computes the teacher's saliency over the whole "
                f"train_dataset, which a {kind} (a stream without a length) cannot give: pass a map-style "
                "datasets.Dataset, or use modality_weighting='instance' (per-example saliency) or 'uniform'."
            )
        if self.weighting.learned and self.args.meta_validation_fraction > 0:
            raise ValueError(
                f"meta_validation_fraction={self.args.meta_validation_fraction} splits the train_dataset, "
                f"which a {kind} (a stream without a length) cannot be: set meta_validation_fraction=0 and "
                "pass an eval_dataset for the learned weights' held-out batches."
            )

    def _split_meta_validation(self) -> None:
        dataset = self.train_dataset
        size = len(dataset)
        held = max(1, round(size * self.args.meta_validation_fraction))
        if held >= size:
            raise ValueError(
                f"meta_validation_fraction={self.args.meta_validation_fraction} leaves no training data."
            )
        order = torch.randperm(size, generator=torch.Generator().manual_seed(self.args.seed)).tolist()
        pick = (
            (lambda idx: dataset.select(idx))
            if hasattr(dataset, "select")
            else (lambda idx: Subset(dataset, idx))
        )
        self._meta_dataset, self.train_dataset = pick(order[:held]), pick(order[held:])

    def _model_columns(self, dataset, description: str):
        """``dataset`` without the columns the models do not take (as the Trainer's dataloaders do)."""
        if isinstance(dataset, datasets.Dataset):
            return self._remove_unused_columns(dataset, description=description)
        return dataset

    def _saliency_dataset(self):
        return self._model_columns(self.train_dataset, "saliency")

    def _first_batch(self) -> dict[str, Any]:
        """The first two training examples, collated (a stream is read from its start, not consumed)."""
        dataset = self._saliency_dataset()
        if hasattr(dataset, "__len__"):
            examples = [dataset[i] for i in range(min(2, len(dataset)))]
        else:
            examples = list(itertools.islice(iter(dataset), 2))
        return self._prepare_inputs(self.data_collator(examples))

    def _validate(self, batch: dict[str, Any]) -> None:
        if self.generative:
            if not has_views(batch, self.modality_names):
                raise ValueError(
                    f"MSDTrainer with a generative student ({type(self._student_base()).__name__}) needs the "
                    f"modality views {self.modality_names} in every batch (keys view_<name>__input_ids, "
                    "...): "
                    "collate with data_collator=hf_msd.data.VisionLanguageCollator(processor)."
                )
            return
        validate_modalities(
            self.teacher_modalities, self.teacher_inputs(batch), uncompiled(self.teacher_model)
        )
        student = self._student_base()
        if self._unimodal_student:
            return
        validate_modalities(self.modalities, self.student_inputs(batch), student)

    def _teacher_collator(self, examples: list[dict]) -> dict[str, Any]:
        """The data collator's batch as the teacher sees it (:meth:`teacher_inputs`), for saliency."""
        return self.teacher_inputs(dict(self.data_collator(examples)))

    @torch.no_grad()
    def _view_saliency(self, dataset) -> SaliencyReport:
        """The per-example saliency of a generative teacher over ``dataset``, from the collator's views."""
        loader = torch.utils.data.DataLoader(
            dataset, batch_size=self.args.saliency_batch_size, shuffle=False, collate_fn=self.data_collator
        )
        rows = []
        for batch in loader:
            batch = self._prepare_inputs(batch)
            full = super().teacher_outputs(batch)["full"].logits  # cached or a teacher pass
            rows.append(self._view_teacher_outputs(batch, full, instance_saliency=True)["saliency"].cpu())
        return SaliencyReport(
            self.modality_names, losses.SINGLE_LABEL, torch.cat(rows), teacher_confidence={}
        )

    def _set_population_saliency(self) -> None:
        dataset = self._saliency_dataset()
        if not self.generative and has_cached_saliency_columns(
            dataset, self.teacher_modalities
        ):  # precompute_teacher_outputs' columns
            report = saliency_from_cache(
                dataset,
                self.teacher_modalities,
                self.problem_type,
                architecture_num_labels(self.teacher_model),
                self.saliency_fn,
            )
            logger.info(f"Population saliency from the cached teacher outputs: {report.population()}")
            self.weighting.set_population_saliency(report.mean)
            return
        fingerprint = saliency_fingerprint(
            self.teacher_model,
            dataset,
            self.modality_names if self.generative else self.teacher_modalities,
            data_collator=self.data_collator,
            saliency_fn=self.saliency_fn,
            problem_type=self.problem_type,
        )
        cache = os.path.join(self.args.output_dir, SALIENCY_CACHE_NAME)
        if os.path.isfile(cache) and SaliencyReport.load_json(cache).fingerprint == fingerprint:
            report = SaliencyReport.load_json(cache)
            logger.info(f"Loaded the population saliency from {cache}.")
        elif self.generative:
            report = self._view_saliency(dataset)
        else:
            report = compute_saliency(
                self.teacher_model,
                dataset,
                self.teacher_modalities,
                data_collator=self._teacher_collator,
                batch_size=self.args.saliency_batch_size,
                saliency_fn=self.saliency_fn,
                device=self.args.device,
                problem_type=self.problem_type,
                progress=not self.args.disable_tqdm,
            )
            report.fingerprint = fingerprint
            if self.args.should_save:
                os.makedirs(self.args.output_dir, exist_ok=True)
                report.save_json(cache)
        self.weighting.set_population_saliency(report.mean)
        logger.info(f"Population saliency: {report.population()}")
