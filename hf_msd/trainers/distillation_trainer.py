"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into a student.

The trainer is glue; each step of :meth:`DistillationTrainer.compute_loss` lives in its own module:

- the pair of models, checked and described once at construction: :mod:`hf_msd.trainers.pair`;
- the student's forward: :meth:`~DistillationTrainer.student_forward` (`Trainer.compute_loss` when the model's
  own loss is the task term);
- the teacher's outputs (a pass or cached logits): :mod:`hf_msd.trainers.teacher`;
- the weighted per-example terms (``task``, ``kd``, ``hidden``, ``attention``): :mod:`hf_msd.trainers.terms`;
- their reduction by the counts of the whole accumulated batch: :mod:`hf_msd.distillation.objective`;
- the training-only modules (projections) and their checkpoints: :mod:`hf_msd.trainers.training_modules`;
- what outlives a call (step counts, log sums, agreement): :mod:`hf_msd.trainers.meters`.

With every teacher-dependent weight at 0 it behaves exactly like `Trainer` and the teacher never runs.
Subclasses (e.g. :class:`~hf_msd.trainers.MSDTrainer`) extend it through
:meth:`~DistillationTrainer.teacher_outputs`, :meth:`~DistillationTrainer.loss_components` and
:meth:`~DistillationTrainer.register_training_module`.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import nn
from transformers import PreTrainedModel, Trainer
from transformers.utils import CONFIG_NAME, logging

from ..architectures import get_logits
from ..architectures import num_labels as architecture_num_labels
from ..distillation import losses, objective
from ..modalities.modality import Modality
from ..pipelines import add_pipeline_code
from ..targets import answer_outputs, answer_rows
from .columns import EXTRA_COLUMN_PREFIXES, BatchColumns
from .compilation import allow_recompiles, mark_batch_dynamic
from .data_checks import check_datasets, check_finite
from .distillation_config import DistillationTrainingArguments
from .frozen_modules import keep_frozen_normalization_in_eval
from .meters import AgreementMeter, StepWindow, TermLog
from .on_policy import OnPolicy, add_gold_tokens, gold_task
from .pair import projections, resolve_pair
from .teacher import Teacher, load_teacher, prepare_teacher
from .terms import StudentOutput, weighted_terms
from .training_modules import TrainingModules
from .training_state import resolve_checkpoint

logger = logging.get_logger(__name__)


class DistillationTrainer(Trainer):
    """Knowledge distillation from a frozen ``teacher_model`` into ``model`` (the student).

    Args:
        model: the student (a `PreTrainedModel` or a PEFT model wrapping one).
        teacher_model: a `PreTrainedModel`, or a path loaded with
            ``AutoModelForSequenceClassification.from_pretrained(path, **args.teacher_model_init_kwargs)``.
            It is frozen (``requires_grad=False``), kept in eval mode, placed on ``args.device``, run under
            the student's autocast, never given to the optimizer, never wrapped for DDP and never saved.
            If it is the base model of a PEFT student (or the PEFT student itself), its outputs are computed
            with the adapters disabled; if it is the (non-PEFT) student itself, a frozen copy of the
            student's weights at construction is the teacher (self-distillation).
        args: a :class:`DistillationTrainingArguments`.
        modalities: the batch's modalities (:class:`~hf_msd.modalities.modality.Modality`) as the student
            sees them; default the teacher's registered spec
            (:func:`~hf_msd.architectures.default_modalities`), else the student's, else none; for a
            heterogeneous pair (two registered architectures), the student's own. They matter when the
            student takes fewer modalities than the teacher (``config.modalities``, e.g. ``["text"]``: the
            multimodal-to-unimodal setting of Agarwal et al.): the student is then given only its own
            modalities' keys while the teacher sees the whole batch.
        teacher_modalities: the teacher's spec when it differs from the student's (a teacher with another
            processor); default ``modalities`` if given, else the teacher's registered spec. Its names are the
            modality set; the student's names must be among them.
        **trainer_kwargs: everything else `transformers.Trainer` accepts (datasets, collator, callbacks...).

    Batches may carry cached teacher outputs (``teacher_logits``...) and a heterogeneous teacher's inputs
    (``teacher_<key>``, :class:`~hf_msd.data.PairedCollator`): see :mod:`hf_msd.trainers.columns`. Terms are
    logged as ``<name>_loss`` next to ``loss``; evaluation adds ``<prefix>_teacher_agreement``.
    """

    #: compute_loss returns a loss already scaled for gradient accumulation (see compute_loss).
    loss_is_scaled_for_ga = True
    #: The arguments class; ``args=None`` and a plain `TrainingArguments` are converted to it.
    args_class: type[DistillationTrainingArguments] = DistillationTrainingArguments
    _tag_names = ["hf_msd", "distillation"]
    #: The method named in the model card (:meth:`create_model_card`).
    card_method = "kd"
    #: Batch columns starting with one of these prefixes are kept past ``remove_unused_columns`` and removed
    #: before the student's forward. Subclasses may extend it.
    extra_column_prefixes: tuple[str, ...] = EXTRA_COLUMN_PREFIXES

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
        args: DistillationTrainingArguments | None = None,
        modalities: Sequence[Modality] | None = None,
        teacher_modalities: Sequence[Modality] | None = None,
        **trainer_kwargs: Any,
    ):
        args = self.args_class.coerce(args)
        teacher_model = load_teacher(model, teacher_model, args.teacher_model_init_kwargs)
        super().__init__(model=model, args=args, **trainer_kwargs)
        if self.args.torch_compile:  # one compiled forward, several input signatures (see .compilation)
            allow_recompiles()
        student = self._student_base()
        #: The pair, checked and described once (:class:`~hf_msd.trainers.pair.DistillationPair`).
        self.pair = resolve_pair(
            student, teacher_model, self.args, modalities, teacher_modalities, self._loss_shifts_labels
        )
        #: The views of a batch each model takes (:class:`~hf_msd.trainers.columns.BatchColumns`).
        self.columns = BatchColumns(
            self.extra_column_prefixes, tuple(self.label_names), self.pair.keys_hidden_from_student
        )
        shared = student is teacher_model  # a shared PEFT base is already frozen and placed
        if not shared:
            teacher_model.requires_grad_(False).eval()
        #: Projections, learned weights and the other training-only state, with their checkpoints.
        self.modules = TrainingModules(self.add_callback, self.args.device)
        if args.hidden_loss_weight > 0:
            self.register_training_module(
                "hidden_projections", projections(student, teacher_model, self.pair)
            )
        if not shared:
            teacher_model = prepare_teacher(teacher_model, self.accelerator, self.is_deepspeed_enabled)
        #: The frozen teacher: its context, passes and cached outputs (:class:`~.teacher.Teacher`).
        self.teacher = Teacher(
            teacher_model,
            self.pair,
            self.accelerator,
            inputs=self.columns.teacher,
            check=self.check_finite,
            device=self.args.device,
            peft_student=(lambda: self.model) if shared else None,
        )
        self.step_window = StepWindow()  # the accumulated batch's counts (get_batch_samples)
        self.term_log = TermLog(self.args.device)  # the <name>_loss logs
        self.agreement = AgreementMeter()  # <prefix>_teacher_agreement of an evaluation loop
        self._checked_data: tuple | None = None
        #: The on-policy steps of ``lmbda > 0`` (:class:`~hf_msd.trainers.on_policy.OnPolicy`), else None.
        self.on_policy = OnPolicy.from_trainer(self)

    # ---- The pair, the teacher and the training-only modules ---------------------------------------------

    teacher_model = property(lambda self: self.teacher.model, doc="The frozen teacher, as prepared.")
    token_level = property(lambda self: self.pair.token_level, doc="See :func:`~.pair.token_level_of`.")
    modalities = property(lambda self: list(self.pair.modalities), doc="The student's modality spec.")
    teacher_modalities = property(lambda self: list(self.pair.teacher_modalities), doc="The teacher's spec.")
    student_modality_names = property(
        lambda self: list(self.pair.student_modality_names), doc="The modalities the student takes."
    )
    training_modules = property(lambda self: self.modules.modules, doc="The registered training modules.")
    training_state = property(lambda self: self.modules.state, doc="The training-only state (checkpointed).")

    def _student_base(self) -> nn.Module:
        """The student without its PEFT wrapper. Resolved once per student object: accelerate's
        ``is_peft_model`` reads package metadata on every call (milliseconds), and a step asks many times."""
        resolved = getattr(self, "_resolved_student_base", None)
        if resolved is None or resolved[0] is not self.model:
            base = self.model.get_base_model() if is_peft_model(self.model) else self.model
            self._resolved_student_base = resolved = (self.model, base)
        return resolved[1]

    def register_state(self, name: str, part: Any) -> None:
        """Add ``part`` (``state_dict()`` / ``load_state_dict()``) to the training-only state saved with every
        checkpoint and restored on resume (:class:`~hf_msd.trainers.training_state.TrainingState`)."""
        self.modules.register_state(name, part)

    def register_training_module(self, name: str, module: nn.Module) -> None:
        """Add a module trained with the student but not part of it (e.g. projections, learned loss weights).

        It trains, is clipped and checkpointed with the student, and is restored on resume and with
        ``load_best_model_at_end`` (:class:`~hf_msd.trainers.training_modules.TrainingModules`), never saved
        by ``save_model``. Call it in ``__init__``; it is then ``self.training_modules[name]``.
        """
        if self.optimizer is not None:
            raise RuntimeError(
                f"register_training_module({name!r}) must be called before the optimizer exists."
            )
        self.modules.register(name, module)

    def _counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """The counts of one micro-batch (:func:`~hf_msd.distillation.objective.count_batch`)."""
        labels, distilled = batch.get("labels"), self.columns.distillation_labels(batch)
        library_task = torch.is_tensor(labels) and not self.token_level
        library_task = library_task and not self._model_computes_task_loss(batch)
        counts = objective.count_batch(
            batch,
            distilled if torch.is_tensor(distilled) else None,
            self.token_level,
            self.pair.problem_type_of(labels) if library_task else None,
            library_task,
        )
        return add_gold_tokens(counts, batch)  # an on-policy batch's task term: its gold view

    # ---- Training: optimizer, steps, data, checkpoints ---------------------------------------------------

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        self.modules.add_to(optimizer, self.args.weight_decay)
        return optimizer

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """`Trainer`'s, then, with ``torch_compile``, the batch dimensions marked dynamic
        (:func:`~hf_msd.trainers.compilation.mark_batch_dynamic`): a new batch size or padded length, or a
        modality-only pass, does not recompile the student."""
        inputs = super()._prepare_inputs(inputs)
        return mark_batch_dynamic(inputs) if self.args.torch_compile else inputs

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The Trainer's micro-batches and ``num_items_in_batch`` (what the model's own loss receives; 0
        becomes 1, so a summed loss over no labelled token is 0, not NaN), plus the library's counts of the
        whole accumulated batch over the processes (:attr:`step_window`)."""
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.on_policy is not None and batch_samples:  # the student's answers, before the counts
            batch_samples = self.on_policy.rewrite(self.model, batch_samples, self.state.global_step)
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = torch.where(num_items_in_batch == 0, 1, num_items_in_batch)
        self.step_window.counts = None
        if batch_samples:
            counts = sum(self._counts(b) for b in batch_samples).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                counts = self.accelerator.gather(counts).reshape(-1, len(counts)).sum(dim=0)
            self.step_window.counts = counts
        return batch_samples, num_items_in_batch

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None
    ) -> torch.Tensor:
        self.modules.start_micro_batch(self.state.global_step)
        with self.step_window.step():
            loss = super().training_step(model, inputs, num_items_in_batch)
        if self.accelerator.sync_gradients:  # they are not inside DDP
            self.modules.all_reduce_gradients(self.accelerator.num_processes)
        return loss

    def _clip_grad_norm(self, model):
        """The student's and the training modules' gradients clipped by their joint norm."""
        if not self.modules.parameters() or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._clip_grad_norm(model)
        return self.modules.clip_grad_norm(model, self.accelerator, self.args.max_grad_norm)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """:meth:`transformers.Trainer.train`, plus the training-only state: ``resume_from_checkpoint=True``
        takes the newest *complete* checkpoint (one left half-written by a kill is skipped with a warning;
        none at all raises, as in `Trainer`), whose projections and other training-only state are restored
        here, before training, under every backend."""
        self.check_data()
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir, self.training_state)
        self.modules.restore(checkpoint)
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)

    def check_data(self) -> None:
        """Check the training and evaluation data before any training work, naming the bad rows and columns
        (:func:`~hf_msd.trainers.data_checks.check_datasets`). Runs once per datasets."""
        key = (id(self.train_dataset), id(self.eval_dataset))
        if key != self._checked_data:
            check_datasets(
                self.train_dataset,
                self.eval_dataset,
                self.data_collator,
                architecture_num_labels(self.pair.label_config),  # e.g. LXMERT's num_qa_labels
                self.pair.problem_type == losses.MULTI_LABEL,
                self.args.remove_unused_columns,
                self.columns.is_extra,
            )
            self._checked_data = key

    # ---- Loss ----------------------------------------------------------------------------------------

    @property
    def uses_teacher(self) -> bool:
        """Whether a teacher-dependent term is on; if not, the teacher never runs (training or evaluation)."""
        args = self.args
        return args.kd_loss_weight > 0 or args.hidden_loss_weight > 0 or args.attention_loss_weight > 0

    def _model_computes_task_loss(self, inputs: dict[str, Any]) -> bool:
        """Whether the task term is the model's own loss, computed as `Trainer.compute_loss` does: with
        ``compute_loss_func`` or label smoothing, with custom ``label_names``, and for a student that takes
        labels (:attr:`~hf_msd.trainers.pair.DistillationPair.student_takes_labels`), unless the batch has
        answer tokens (:meth:`~hf_msd.trainers.pair.DistillationPair.answer_labels`): the model's own loss
        would need its (B, T, V) logits, so the library computes the same cross-entropy from the answer
        rows (:func:`~hf_msd.distillation.answer_logits.answer_task_loss`)."""
        if self.args.hard_label_weight == 0:
            return False
        if self.compute_loss_func is not None or self.label_smoother is not None:
            return True
        if list(self.label_names) not in ([], ["labels"]):
            return any(name in inputs for name in self.label_names)
        if self.pair.answer_labels(inputs) is not None:
            return False
        return torch.is_tensor(inputs.get("labels")) and self.pair.student_takes_labels

    def student_forward(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> StudentOutput:
        """The student's forward on its view of the batch (:meth:`~.columns.BatchColumns.student`).

        When the model's own loss is the task term (:meth:`_model_computes_task_loss`) this is exactly
        `Trainer.compute_loss` (labels passed, ``num_items_in_batch`` when the model accepts loss kwargs,
        ``compute_loss_func``, label smoothing, the multi-process scale); otherwise the labels are left out.
        """
        keep_frozen_normalization_in_eval(model)  # frozen BatchNorm statistics must not move
        model_loss = self._model_computes_task_loss(inputs)
        student_inputs = self.columns.student(inputs, keep_labels=model_loss)
        if self.pair.hidden_map:
            student_inputs["output_hidden_states"] = True
        if self.pair.attention_map:
            student_inputs["output_attentions"] = True
        if model.training and self.student_returns_towers:
            student_inputs["return_tower_outputs"] = True
        answers = self.pair.answer_labels(inputs)
        if answers is not None and model.training and not model_loss:  # the output layer at the answers only
            outputs = answer_outputs(model, student_inputs, answers)
            return StudentOutput(outputs, outputs.logits, answer_labels=answers)
        if model_loss:  # with answer tokens, the full logits that the model's own loss needed
            task, outputs = super().compute_loss(
                model, student_inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
            )
        else:  # with answer tokens, evaluation keeps Trainer's (B, T, V) logits
            task, outputs = None, model(**student_inputs)
        labels_reached_model = model_loss and self.label_smoother is None and self.compute_loss_func is None
        logits = get_logits(self._student_base(), outputs, has_loss=labels_reached_model)
        return StudentOutput(outputs, answer_rows(logits, answers), task_loss=task, answer_labels=answers)

    @property
    def student_returns_towers(self) -> bool:
        """Whether the student's training pass returns its towers' outputs (``return_tower_outputs=True``)
        for later passes to reuse; none here (see ``MSDTrainer``)."""
        return False

    def teacher_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The teacher's outputs the terms need: ``{"full": outputs on the whole input}``, cached or a pass
        (:meth:`~hf_msd.trainers.teacher.Teacher.outputs`). Subclasses add entries (e.g. the teacher's logits
        on each modality)."""
        return self.teacher.outputs(inputs)

    def loss_components(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        student: StudentOutput | None = None,
        teacher: dict[str, Any] | None = None,
    ) -> tuple[dict[str, torch.Tensor], StudentOutput]:
        """Weighted per-example loss components computed by the library, and the student's output.

        Returns ``({"task": (B,), "kd": (B,), ...}, student)``: each value is a float32 ``(B,)`` tensor
        already multiplied by its weight; components whose weight is 0 are left out, and so is "task" when
        the batch has no labels or the model's own loss is the task term (``student.task_loss``). For a
        token-level model, "task" and "kd" hold each example's SUM over its labelled tokens. ``student``
        and ``teacher`` (:meth:`student_forward`, :meth:`teacher_outputs`) are computed when not given.
        Subclasses call ``super().loss_components(model, inputs, student, teacher)`` and add their own
        entries.
        """
        if student is None:
            student = self.student_forward(model, inputs)
        if teacher is None and self.uses_teacher:
            teacher = self.teacher_outputs(inputs)
        components = weighted_terms(
            student,
            None if teacher is None else teacher["full"],
            inputs,
            self.pair,
            self.args,
            self.training_modules["hidden_projections"] if self.args.hidden_loss_weight > 0 else None,
            type(self._student_base()).__name__,
        )
        return components, student

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """The loss of one micro-batch: student forward, teacher outputs, the terms, their reduction.

        The task term is the model's own loss when it computes one (:meth:`_model_computes_task_loss`, as
        `Trainer.compute_loss` returns it, times ``hard_label_weight``), else the library's. The library's
        terms are each summed and divided by their count (:mod:`hf_msd.distillation.objective`,
        docs/losses.md) of the whole accumulated batch over every process inside a training step, of this
        batch otherwise (evaluation, direct calls): the micro-batches of a step sum to the large-batch loss.
        """
        accumulated = self.step_window.current  # None outside training_step (evaluation, direct calls)
        student = self.student_forward(model, inputs, num_items_in_batch)
        teacher = self.teacher_outputs(inputs) if self.uses_teacher else None
        components, _ = self.loss_components(model, inputs, student, teacher)
        gold_task(self, model, inputs, student, components, num_items_in_batch)  # on-policy: the gold view
        loss = self.reduce_loss(components, student, inputs, num_items_in_batch, accumulated)
        if self.uses_teacher:  # a NaN teacher must not reach the student; else the Trainer's NaN handling
            self.check_finite("The training loss" if model.training else "The evaluation loss", loss)
            if accumulated is not None:
                self.term_log.add(components, self._counts(inputs))
            elif self.agreement.collecting and not model.training and not self.token_level:
                problem_type = self.pair.problem_type_of(inputs.get("labels"))
                agreement = objective.teacher_agreement(student.logits, teacher["full"].logits, problem_type)
                if agreement is not None:
                    self.agreement.add(self.accelerator.gather_for_metrics(agreement))
        if not return_outputs:
            return loss
        outputs = student.outputs
        if student.task_loss is None and isinstance(outputs, tuple):
            outputs = (loss, *outputs)  # Trainer's convention: a tuple's first entry is the loss
        return loss, outputs

    def reduce_loss(
        self,
        components: dict[str, torch.Tensor],
        student: StudentOutput,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
        accumulated: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The scalar loss of :meth:`compute_loss`: the library's components divided by the ``accumulated``
        counts of the optimizer step inside a training step, else by this batch's, plus the model's own task
        loss (divided by the accumulation steps inside a training step, as `Trainer.training_step` does)."""
        if not components and student.task_loss is None:
            raise ValueError(
                "No loss component to train on: the batch has no labels and every distillation weight "
                "is 0. Set kd_loss_weight (or another weight) > 0, or provide labels."
            )
        loss = None
        if student.task_loss is not None:
            loss = student.task_loss
            scaled = (self.model_accepts_loss_kwargs and num_items_in_batch is not None) or (
                self.compute_loss_func is not None
            )
            if accumulated is not None and not scaled:
                loss = loss / self.current_gradient_accumulation_steps
            if self.args.hard_label_weight != 1:
                loss = self.args.hard_label_weight * loss
        if components:
            counts = accumulated if accumulated is not None else self._counts(inputs)
            library = objective.reduce_terms(components, counts.to(self.args.device), self.token_level)
            if (
                accumulated is not None
                and self.args.average_tokens_across_devices
                and self.args.world_size > 1
            ):
                library = library * self.accelerator.num_processes
            loss = library if loss is None else loss + library
        return loss

    def check_finite(self, what: str, tensor: torch.Tensor) -> None:
        """Raise a FloatingPointError if ``tensor`` holds NaN or inf (:func:`~.data_checks.check_finite`)."""
        check_finite(what, tensor, self.model.training, self.step_window.micro_batches, self.state)

    # ---- Saving, the model card, logs and evaluation ---------------------------------------------------

    def _save(self, output_dir: str | None = None, state_dict: dict | None = None) -> None:
        """`Trainer._save`; the folder of an hf_msd student (its config declares `modalities`) also gets the
        `multimodal-classification` pipeline (:func:`hf_msd.pipelines.add_pipeline_code`), so what
        `push_to_hub` uploads is served by `pipeline(model=repo, trust_remote_code=True)`."""
        super()._save(output_dir, state_dict)
        config = Path(output_dir if output_dir is not None else self.args.output_dir) / CONFIG_NAME
        if self.args.should_save and config.is_file() and "modalities" in json.loads(config.read_text()):
            add_pipeline_code(config.parent)

    def create_model_card(self, **kwargs: Any) -> None:
        """Write hf_msd's model card of this run to ``<output_dir>/README.md`` (``push_to_hub`` calls this
        and uploads it): teacher, method and its weights, sizes, the last evaluation, the saliency plot and
        citations; see :func:`hf_msd.hub.trainer_model_card` for what is read and which keywords it takes
        (those of `Trainer.create_model_card`, plus ``evaluation`` with per-modality results)."""
        from ..hub import trainer_model_card

        if self.is_world_process_zero():
            trainer_model_card(self, **kwargs).save(os.path.join(self.args.output_dir, "README.md"))

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each library-computed loss term over the logging window (``<name>_loss``) to
        training logs (:class:`~hf_msd.trainers.meters.TermLog`: ``task_loss`` over the labelled examples,
        the others over all examples; a token-level model's ``task`` and ``kd`` over the labelled tokens)."""
        if "loss" in logs:
            logs.update(self.term_log.pop_means(self._sum_over_processes, self.token_level))
            if self.on_policy is not None:
                logs.update(self.on_policy.pop_logs(self._sum_over_processes, self.args.device))
        super().log(logs, start_time)

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum")

    def evaluation_loop(
        self,
        dataloader,
        description: str,
        prediction_loss_only: bool | None = None,
        ignore_keys: list[str] | None = None,
        metric_key_prefix: str = "eval",
    ):
        """The Trainer's evaluation loop, plus ``<prefix>_teacher_agreement``: the fraction of examples where
        the student's argmax equals the teacher's (single-label), or the mean fraction of labels on which
        their ``logit > 0`` decisions agree (multi-label). Needs labels in the evaluation batches."""
        self.agreement.start()
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
        finally:
            agreement = self.agreement.stop()
        if agreement is not None:
            output.metrics[f"{metric_key_prefix}_teacher_agreement"] = agreement
        return output
