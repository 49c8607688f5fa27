"""`MSDTrainer`: modality-specific distillation (MSD) on top of :class:`DistillationTrainer`.

For a batch ``x`` with modalities ``m = 1..M`` and ``x_m`` the input keeping only modality ``m``
(:func:`hf_msd.modalities.modality.restrict`), the loss per example is::

    hard_label_weight * CE(S(x), y) + kd_loss_weight * KD(T(x), S(x)) + sum_m w_m * KD(T(x_m), S(x_m))

``KD`` is the distillation term of :class:`DistillationTrainer` (same ``temperature``, ``T**2`` scaling,
``kd_loss_type`` and problem types; :func:`hf_msd.distillation.losses.soft_target_loss`); the hidden-state
and attention losses, when enabled, apply to the full input only. ``w_m`` comes from
``args.modality_weighting`` (:mod:`hf_msd.distillation.weighting`; saliency in
:mod:`hf_msd.distillation.saliency`). Like every component, the total is summed over the examples of the
whole accumulated batch and divided by their number.

Generative students (decoder-only image-text-to-text models such as LLaVA, causal LMs): ``x_m`` are the
modality views a :class:`~hf_msd.data.VisionLanguageCollator` builds from the raw examples (``x_text`` the
question without image tokens or ``pixel_values``, ``x_image`` the image with an empty question), ``KD`` is
the per-token distillation over the answer tokens (:func:`hf_msd.distillation.losses.token_soft_target_loss`)
and each term is summed over the answer tokens of the accumulated batch and divided by their number (the same
tokens in every view). Per-example saliency averages the divergence of the teacher's answer-token
distributions over the answer tokens (:func:`hf_msd.distillation.saliency.answer_token_saliency`).

The teacher's passes on each ``x_m`` are :class:`~hf_msd.trainers.teacher.Teacher` methods; the checks and
the held-out split before training, the population saliency and the learned weights' meta step are in
:mod:`hf_msd.trainers.msd_setup`.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import datasets
import torch
from torch import nn
from transformers import PreTrainedModel
from transformers.modeling_outputs import SequenceClassifierOutput

from ..architectures import get_logits, reuses_towers
from ..data.generative import DISTILLATION_LABELS, VIEW_NAMES, has_views, view_inputs
from ..distillation import losses, objective
from ..distillation.answer_logits import answer_logits
from ..distillation.saliency import (
    SaliencyFn,
    answer_token_saliency,
    modality_saliency,
)
from ..distillation.weighting import build_weighting
from ..modalities.modality import Modality, restrict, validate_modalities
from .compilation import uncompiled
from .distillation_trainer import DistillationTrainer
from .meta_validation import MetaValidationBatches
from .meters import WeightLog
from .msd_config import MSDTrainingArguments
from .msd_setup import (
    MetaSchedule,
    check_held_out_source,
    check_stream,
    first_examples,
    meta_step,
    population_saliency,
    split_held_out,
)
from .teacher import batched_logits
from .terms import StudentOutput
from .training_state import resolve_checkpoint


class MSDTrainer(DistillationTrainer):
    """Modality-specific distillation (Jin et al., 2021, "MSD: Saliency-aware Knowledge Distillation for
    Multimodal Understanding") of ``teacher_model`` into ``model``.

    Args:
        model, teacher_model, **trainer_kwargs: as for :class:`DistillationTrainer`.
        args: an :class:`MSDTrainingArguments`.
        modalities, teacher_modalities: as for the parent; the teacher's ``x_m`` are made with the teacher's
            spec, the student's with the student's, both checked on the first batch when ``train()`` starts.
        saliency_fn: ``fn(teacher_logits_full, teacher_logits_without_m, problem_type) -> (B,)`` replacing
            :func:`hf_msd.distillation.saliency.default_saliency` for the saliency-based weights.

    Passes: the teacher runs without grad on ``x`` and the ``x_m`` it needs (cached columns are read
    instead; same-shaped inputs run as one concatenated call, :class:`~hf_msd.trainers.teacher.Teacher`);
    the student on ``x`` and each ``x_m``. A unimodal student (``config.modalities`` with one entry) sees only
    its modality, and only that modality gets a term. The population saliency, the held-out stream of the
    ``learned`` weights and their meta step: :mod:`hf_msd.trainers.msd_setup`; all of their state is saved
    in every checkpoint, so a resume continues exactly (docs/msd.md).

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
        # Tower reuse (hf_msd.architectures.reuses_towers): the modality-only passes run from the full
        # pass's tower outputs when the student / the online teacher qualifies with its spec.
        self.teacher.tower_reuse = args.tower_reuse and reuses_towers(
            self.teacher.model, self.teacher_modalities
        )
        self.weighting = build_weighting(
            args.modality_weighting,
            names,
            args.modality_loss_weight,
            learning_rate=args.meta_learning_rate,
            hidden_size=args.meta_weight_network_hidden_size,
        ).to(args.device)
        if self.weighting.learned:
            check_held_out_source(self.eval_dataset, args.meta_validation_fraction)
        if len(self.weighting.state_dict()):  # population saliency, learned weights and their Adam state
            self.register_state("modality_weighting", self.weighting)
        self._meta_dataset = None
        self._meta_batches: MetaValidationBatches | None = None
        self.meta_schedule = MetaSchedule(args.meta_update_interval)  # when the meta step runs, its last loss
        self.weight_log = WeightLog(names, args.device)  # the modality_weight_<name> logs

    # ---- Loss ----------------------------------------------------------------------------------------

    @property
    def uses_teacher(self) -> bool:
        return super().uses_teacher or self.args.modality_loss_weight > 0

    @property
    def student_returns_towers(self) -> bool:
        """With ``tower_reuse``, a classifier student with at least two modalities whose architecture
        qualifies with the trainer's spec (:func:`~hf_msd.architectures.reuses_towers`) returns its towers'
        outputs from the full pass, and its modality terms run from them (:meth:`_modality_terms`)."""
        return (
            self.args.tower_reuse
            and self.args.modality_loss_weight > 0
            and not self.generative
            and not self.pair.unimodal_student
            and bool(self._term_modalities())
            and reuses_towers(self._student_base(), self.modalities)
        )

    def _unwrapped(self, model: nn.Module) -> nn.Module:
        """``accelerator.unwrap_model(model)`` (without DDP; a compiled student stays compiled), resolved once
        per model object: accelerate reads package metadata on every call (milliseconds per step)."""
        resolved = getattr(self, "_resolved_unwrapped", None)
        if resolved is None or resolved[0] is not model:
            self._resolved_unwrapped = resolved = (model, self.accelerator.unwrap_model(model))
        return resolved[1]

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

    def teacher_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The parent's ``{"full": ...}`` plus ``"only"`` (modality name -> the teacher's logits on ``x_m``)
        and ``"without"`` (the logits on each ``x without m``, for per-example saliency), the teacher's
        passes run as concatenated calls (:meth:`~hf_msd.trainers.teacher.Teacher.modality_logits`). For a
        generative student see :meth:`_view_teacher_outputs`."""
        if self.generative:
            full = self.teacher.outputs(inputs)["full"]
            return {"full": full, **self._view_teacher_outputs(inputs, full.logits)}
        without = self.weighting.needs_instance_saliency
        only, extra = self.teacher.modality_logits(inputs, self._teacher_view_names(without), without)
        if "full" in extra:
            full = SequenceClassifierOutput(logits=extra["full"])
            self.check_finite("The teacher logits", full.logits)
        else:
            full = self.teacher.outputs(inputs)["full"]
        return {"full": full, "only": only, "without": extra.get("without")}

    def _view_teacher_outputs(
        self, inputs: dict[str, Any], full_logits: torch.Tensor, instance_saliency: bool | None = None
    ) -> dict[str, Any]:
        """A generative student's teacher outputs on the collator's views: ``"only"`` (view name -> the
        teacher's answer-only logits (N, V) on ``x_m``, for the views with a term, or every view for
        per-example weights) and, for per-example weights (``instance_saliency``, default whether the
        weighting needs it), ``"saliency"`` (B, M) from the answer-token distributions
        (:func:`~hf_msd.distillation.saliency.answer_token_saliency`; with two modalities ``x without image``
        is ``x_text`` and ``x without text`` is ``x_image``)."""
        if instance_saliency is None:
            instance_saliency = self.weighting.needs_instance_saliency
        only = self.teacher.view_logits(inputs, self.modality_names if instance_saliency else self.term_names)
        saliency = None
        if instance_saliency:
            first, second = self.modality_names
            scored = {name: view_inputs(inputs, name)[DISTILLATION_LABELS] for name in self.modality_names}
            saliency = answer_token_saliency(
                full_logits.detach(),
                self.columns.distillation_labels(inputs),
                [(only[second], scored[second]), (only[first], scored[first])],
                self.saliency_fn,
            )
        return {"only": only, "saliency": saliency}

    def loss_components(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        student: StudentOutput | None = None,
        teacher: dict[str, Any] | None = None,
        differentiable_weights: bool = False,
    ) -> tuple[dict[str, torch.Tensor], StudentOutput]:
        """The parent's components plus ``modality_<name>``: ``w_m * KD(T(x_m), S(x_m))``, shape (B,). The
        weights are constants unless ``differentiable_weights`` (the learned weights' meta step)."""
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
        batch_size = objective.batch_size(inputs)
        weights = self.weighting(batch_size, teacher.get("saliency")).to(student.logits.device)
        if not differentiable_weights:
            weights = weights.detach()
        for index, name in enumerate(self.modality_names):
            if name in terms:
                components[f"modality_{name}"] = weights[:, index] * terms[name]
        if self.step_window.active and not differentiable_weights:
            self.weight_log.add(weights)
        return components, student

    def _view_terms(self, model: nn.Module, inputs: dict[str, Any], teacher: dict) -> dict[str, torch.Tensor]:
        """A generative student's unweighted modality terms: view name -> the per-token KD between the
        student's and the teacher's answer-only logits on that view (the output layer at the answer tokens
        only, :func:`~hf_msd.targets.answer_logits`), summed over each example's answer tokens (B,)."""
        bare = self._unwrapped(model)  # see _modality_terms
        answers = (self.columns.distillation_labels(inputs) != losses.IGNORE_INDEX).sum(dim=-1)
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
            terms[name] = objective.soft_target(
                answer_logits(bare, view, labels),
                teacher["only"][name],
                distilled_labels=labels,
                attention_mask=None,
                token_level=self.token_level,
                problem_type=losses.SINGLE_LABEL,
                temperature=self.args.temperature,
                loss_type=self.args.kd_loss_type,
                beta=self.args.beta,
                answer_rows=True,
            )
        return terms

    def _modality_terms(
        self, model: nn.Module, inputs: dict[str, Any], student: StudentOutput, teacher: dict
    ) -> dict[str, torch.Tensor]:
        """A classifier's unweighted modality terms: name -> ``KD(T(x_m), S(x_m))`` (B,), or ``KD(T(x),
        S(x_m))`` with ``modality_target="full"``, for the modalities in :attr:`term_names`; also puts the
        per-example saliency into ``teacher["saliency"]`` when the weighting needs it."""
        problem_type = self.pair.problem_type_of(inputs.get("labels"))
        student_batch = self.columns.student(inputs)
        names = self._term_modalities()
        towers = getattr(student.outputs, "tower_outputs", None)
        if self.pair.unimodal_student:
            student_logits = [student.logits] if names else []
        elif towers is not None:  # tower reuse: only the fusion and the head run on each x_m
            bare = self._unwrapped(model)  # not through DDP, as below
            student_logits = [get_logits(bare, bare(tower_outputs={n: towers[n]})) for n in names]
        else:
            student_batches = [restrict(student_batch, self.modalities, n) for n in names]
            # Only the full-input pass (in the parent) goes through a DDP wrapper: a second forward through
            # DDP in one step fails ("mark a variable ready only once"). The modality-only passes use the
            # bare module; autograd sums their gradients into the same parameters before DDP's reducer
            # all-reduces them, so the update is the same as on one process.
            bare = self._unwrapped(model)
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
                beta=self.args.beta,
            )
            for name, logits in zip(names, student_logits)
        }

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Adds ``modality_weight_<name>`` (mean over the logging window) and ``meta_validation_loss``."""
        weights = self.weight_log.pop_means(self._sum_over_processes) if "loss" in logs else {}
        if weights:
            logs.update(weights)
            if self.meta_schedule.last_loss is not None:
                logs["meta_validation_loss"] = self.meta_schedule.last_loss.item()
        super().log(logs, start_time)

    # ---- Learned weights: the meta step ---------------------------------------------------------------

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None
    ) -> torch.Tensor:
        if self.weighting.learned and self.meta_schedule.due(self.state.global_step):
            # In training mode, as the step itself (`Trainer.training_step` sets it only after this): the
            # first step of a run or of a resume, or the one after an evaluation, would find it in eval mode.
            model.train()
            self._meta_step(model, self._prepare_inputs(inputs))
        return super().training_step(model, inputs, num_items_in_batch)

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
        """:func:`~hf_msd.trainers.msd_setup.meta_step` on ``inputs`` and the next held-out batch, on the
        uncompiled student (the look-ahead needs second-order gradients, which compiled graphs lack)."""
        student = uncompiled(self._unwrapped(model))
        held_out = self._prepare_inputs(self._meta_batches.next())

        def train_loss() -> torch.Tensor:
            components, output = self.loss_components(student, inputs, differentiable_weights=True)
            return self.reduce_loss(components, output, inputs, None)

        self.meta_schedule.last_loss = meta_step(
            self.weighting,
            student,
            train_loss,
            held_out,
            self.columns.student(held_out),
            self._counts(held_out),
            self.token_level,
            self.pair.problem_type_of(held_out["labels"]),
            self.args.meta_inner_learning_rate or self.args.learning_rate,
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
        weighting, fraction = self.weighting, self.args.meta_validation_fraction
        population = weighting.needs_population_saliency and not weighting.has_population_saliency
        check_stream(self.train_dataset, population, fraction if weighting.learned else 0)
        if weighting.learned and fraction > 0 and self._meta_dataset is None:
            self._meta_dataset, self.train_dataset = split_held_out(
                self.train_dataset, fraction, self.args.seed
            )
        if weighting.learned and self._meta_batches is None:
            self._start_meta_batches()
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir, self.training_state)
        first = self._first_batch()
        problem_type = self.pair.problem_type_of(first.get("labels"))
        self._validate(first)
        self.modules.restore(checkpoint)  # a resume restores the population saliency too
        if weighting.needs_population_saliency and not weighting.has_population_saliency:
            self._set_population_saliency(problem_type)
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)

    def _model_columns(self, dataset, description: str):
        """``dataset`` without the columns the models do not take (as the Trainer's dataloaders do)."""
        if isinstance(dataset, datasets.Dataset):
            return self._remove_unused_columns(dataset, description=description)
        return dataset

    def _first_batch(self) -> dict[str, Any]:
        """The first two training examples, collated (a stream is read from its start, not consumed)."""
        examples = first_examples(self._model_columns(self.train_dataset, "saliency"), 2)
        return self._prepare_inputs(self.data_collator(examples))

    def _validate(self, batch: dict[str, Any]) -> None:
        if self.generative:
            if not has_views(batch, self.modality_names):
                raise ValueError(
                    f"MSDTrainer with a generative student ({type(self._student_base()).__name__}) needs the "
                    f"modality views {self.modality_names} in every batch (keys view_<name>__input_ids, "
                    "...): collate with data_collator=hf_msd.data.VisionLanguageCollator(processor)."
                )
            return
        validate_modalities(
            self.teacher_modalities, self.columns.teacher(batch), uncompiled(self.teacher_model)
        )
        if not self.pair.unimodal_student:
            validate_modalities(self.modalities, self.columns.student(batch), self._student_base())

    def _set_population_saliency(self, problem_type: str | None = None) -> None:
        """The population weights' saliency (:func:`~hf_msd.trainers.msd_setup.population_saliency`):
        ``problem_type`` that of the training labels (default: from the first batch)."""
        if problem_type is None:
            problem_type = self.pair.problem_type_of(self._first_batch().get("labels"))

        def view_saliency(batch: dict[str, Any]) -> torch.Tensor:  # a generative teacher's, (B, M)
            batch = self._prepare_inputs(batch)
            full = self.teacher.outputs(batch)["full"].logits  # cached or a teacher pass
            return self._view_teacher_outputs(batch, full, instance_saliency=True)["saliency"]

        saliency = population_saliency(
            self.teacher_model,
            self._model_columns(self.train_dataset, "saliency"),
            self.modality_names if self.generative else self.teacher_modalities,
            args=self.args,
            problem_type=self.pair.problem_type if self.generative else problem_type,
            saliency_fn=self.saliency_fn,
            data_collator=self.data_collator,
            teacher_collator=lambda examples: self.columns.teacher(dict(self.data_collator(examples))),
            view_saliency=view_saliency if self.generative else None,
        )
        self.weighting.set_population_saliency(saliency)
