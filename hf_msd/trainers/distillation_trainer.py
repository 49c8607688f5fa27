"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into a student.

The loss of a micro-batch reads as :meth:`DistillationTrainer.compute_loss`: the student's forward
(:meth:`~DistillationTrainer.student_forward`), the teacher's outputs
(:meth:`~DistillationTrainer.teacher_outputs`: cached logits or a teacher pass), the weighted per-example
terms (:meth:`~DistillationTrainer.loss_components`: ``task``, ``kd``, ``hidden``, ``attention``) and their
reduction (:meth:`~DistillationTrainer.reduce_loss`).
The task term is the model's own loss with `Trainer`'s semantics for models that compute one, else the
library's mean over the LABELLED examples of the whole accumulated batch (all processes); every other term
is summed over its examples (tokens, for token-level students) and divided by their number in the whole
accumulated batch, so gradient accumulation and several processes give the same update as one large batch,
with or without unlabelled examples (label -100) in it. With every teacher-dependent weight at 0 it behaves
exactly like `Trainer` and the teacher never runs.

Subclasses (e.g. :class:`~hf_msd.trainers.MSDTrainer`) extend it through
:meth:`~DistillationTrainer.teacher_outputs`, :meth:`~DistillationTrainer.loss_components` and
:meth:`~DistillationTrainer.register_training_module`.
"""

from __future__ import annotations

import contextlib
import inspect
import json
import os
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import datasets
import torch
from accelerate.utils import is_peft_model
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, Trainer, TrainingArguments
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
)
from transformers.utils import CONFIG_NAME, logging

from ..architectures import classifier_output, default_modalities, get_architecture, get_logits
from ..architectures import num_labels as architecture_num_labels
from ..data.generative import DISTILLATION_LABELS, VIEW_PREFIX, view_inputs
from ..data.on_policy import GOLD_VIEW
from ..data.paired import TEACHER_INPUT_PREFIX
from ..distillation import intermediate_losses, losses
from ..modalities.modality import Modality
from ..pipelines import add_pipeline_code
from ..teacher_outputs.cache import (
    TEACHER_LOGITS,
    answer_labels_column,
    batch_cached_answer_logits,
    batch_cached_logits,
)
from .compilation import allow_recompiles, mark_batch_dynamic
from .distillation_config import DistillationTrainingArguments
from .frozen_modules import keep_frozen_normalization_in_eval
from .on_policy import OnPolicy, check_on_policy_setup, gold_tokens
from .training_state import TrainingState, resolve_checkpoint

logger = logging.get_logger(__name__)

TEACHER_CACHE_PREFIX = TEACHER_LOGITS


@dataclass
class StudentOutput:
    """The student's forward on a batch: its raw ``outputs`` (what `Trainer.prediction_step` reads), its
    ``logits`` and, when the model's own loss is the task term, that loss as `Trainer.compute_loss` returns
    it."""

    outputs: Any
    logits: torch.Tensor
    task_loss: torch.Tensor | None = None


def _registered_modalities(teacher: nn.Module, student: nn.Module) -> list[Modality]:
    """The teacher's registered modality spec, else the student's, else none (an unregistered model)."""
    for model in (teacher, student):
        try:
            return default_modalities(model)
        except ValueError:
            continue
    return []


def _modality_specs(
    teacher: nn.Module,
    student: nn.Module,
    modalities: Sequence[Modality] | None,
    teacher_modalities: Sequence[Modality] | None,
) -> tuple[list[Modality], list[Modality]]:
    """``(student spec, teacher spec)``. Explicit arguments win (``modalities`` serves both when
    ``teacher_modalities`` is not given). Otherwise a heterogeneous pair (both models are registered
    architectures, of different ``model_type``s) takes each model's own spec; any other pair takes the
    teacher's spec, else the student's, for both."""
    teacher_adapter, student_adapter = get_architecture(teacher), get_architecture(student)
    if modalities is not None:
        student_spec = list(modalities)
    elif teacher_adapter and student_adapter and teacher_adapter.model_type != student_adapter.model_type:
        student_spec = default_modalities(student)
    else:
        student_spec = _registered_modalities(teacher, student)
    if teacher_modalities is not None:
        teacher_spec = list(teacher_modalities)
    elif modalities is None and teacher_adapter is not None:
        teacher_spec = default_modalities(teacher)
    else:
        teacher_spec = student_spec
    unknown = sorted({m.name for m in student_spec} - {m.name for m in teacher_spec})
    if unknown:
        raise ValueError(
            f"The student's modalities {unknown} are not among the teacher's modalities "
            f"{[m.name for m in teacher_spec]}: name each student Modality after a teacher Modality."
        )
    return student_spec, teacher_spec


def _is_default_id2label(id2label: dict | None) -> bool:
    return not id2label or all(str(label) == f"LABEL_{index}" for index, label in id2label.items())


def check_label_spaces(student_config, teacher_config) -> None:
    """Raise a ValueError unless student and teacher predict the same labels (``num_labels``, read through
    the registered architectures, e.g. LXMERT's ``num_qa_labels``; ``id2label`` where both models set
    non-default names, and ``problem_type`` where both set it). A config may be any object: missing fields
    are not compared."""
    student_count, teacher_count = (
        architecture_num_labels(student_config),
        architecture_num_labels(teacher_config),
    )
    if student_count != teacher_count:
        raise ValueError(
            f"Teacher and student label spaces differ: teacher num_labels={teacher_count}, "
            f"student num_labels={student_count}. Build the student with the teacher's "
            "num_labels/id2label."
        )
    student_labels = getattr(student_config, "id2label", None)
    teacher_labels = getattr(teacher_config, "id2label", None)
    if not _is_default_id2label(student_labels) and not _is_default_id2label(teacher_labels):
        student_names = {int(k): v for k, v in student_labels.items()}
        teacher_names = {int(k): v for k, v in teacher_labels.items()}
        if student_names != teacher_names:
            raise ValueError(
                f"Teacher and student id2label differ: teacher {teacher_names}, student {student_names}. "
                "The logits must index the same classes in the same order."
            )
    student_type = getattr(student_config, "problem_type", None)
    teacher_type = getattr(teacher_config, "problem_type", None)
    if student_type and teacher_type and student_type != teacher_type:
        raise ValueError(
            f"Teacher problem_type={teacher_type!r} and student problem_type={student_type!r} differ."
        )


def check_vocabularies(student_config, teacher_config) -> None:
    """Raise a ValueError naming both models unless a token-level student and its teacher predict over one
    vocabulary (the text config's ``vocab_size``): their distributions are compared token id by token id, so
    cross-tokenizer distillation is refused. Compare the tokenizers themselves with
    :func:`hf_msd.data.check_same_vocabulary`."""
    sizes = [getattr(c.get_text_config(), "vocab_size", None) for c in (student_config, teacher_config)]
    if None not in sizes and sizes[0] != sizes[1]:
        names = [c.name_or_path or c.model_type for c in (student_config, teacher_config)]
        raise ValueError(
            f"The student {names[0]!r} has a vocabulary of {sizes[0]} tokens and the teacher {names[1]!r} "
            f"one of {sizes[1]}: token-level distillation needs teacher and student to share one tokenizer "
            "(cross-tokenizer distillation is not supported). Build the student with the teacher's tokenizer."
        )


def _config_of(model: nn.Module, purpose: str):
    """``model.config``, or a ValueError saying what a model without one (a plain ``nn.Module``) needs."""
    config = getattr(model, "config", None)
    if config is None:
        raise ValueError(
            f"{type(model).__name__} has no `.config` (a plain nn.Module), which {purpose} needs; give it a "
            "`config` (e.g. a transformers PreTrainedConfig with the needed fields) or turn that option off."
        )
    return config


def _use_eager_attention(role: str, model: nn.Module) -> None:
    """Fused attention kernels (sdpa, flash) return no attention maps: switch the model to eager attention."""
    implementation = getattr(_config_of(model, "attention_loss_weight > 0"), "_attn_implementation", None)
    if implementation not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        logger.warning(
            f"attention_loss_weight > 0 needs attention maps: switching the {role} from {implementation!r} "
            "to 'eager' attention (load it with attn_implementation='eager' to silence this)."
        )
        model.set_attn_implementation("eager")


def _deepspeed_inference_engine(model: nn.Module, accelerator) -> nn.Module:
    """``model`` as a DeepSpeed engine for evaluation only, from the student's DeepSpeed config: ZeRO-3
    partitions its parameters over the processes, other stages keep a full copy (stage 0); no optimizer."""
    import copy

    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    stage = config.get("zero_optimization", {}).get("stage", 0)
    if stage != 3:
        config["zero_optimization"] = {"stage": 0}
    config.pop("optimizer", None)
    config.pop("scheduler", None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # returns None in DeepSpeed 0.19, not the engine
    return engine


class DistillationTrainer(Trainer):
    """Knowledge distillation from a frozen ``teacher_model`` into ``model`` (the student).

    Args:
        model: the student (a `PreTrainedModel` or a PEFT model wrapping one).
        teacher_model: a `PreTrainedModel`, or a path loaded with
            ``AutoModelForSequenceClassification.from_pretrained(path, **args.teacher_model_init_kwargs)``.
            It is frozen (``requires_grad=False``), kept in eval mode, placed on ``args.device``, run under
            the student's autocast, never given to the optimizer, never wrapped for DDP and never saved.
            If it is the base model of a PEFT student, its outputs are computed with the adapters disabled.
        args: a :class:`DistillationTrainingArguments`.
        modalities: the batch's modalities (:class:`~hf_msd.modalities.modality.Modality`) as the student
        sees them;
            default the teacher's registered spec (:func:`~hf_msd.architectures.default_modalities`), else
            the student's, else none; for a heterogeneous pair (two registered architectures), the student's
            own. They matter when the student takes fewer modalities than the teacher
            (``config.modalities``, e.g. ``["text"]``: the multimodal-to-unimodal setting of Agarwal et
            al.): the student is then given only its own modalities' keys while the teacher sees the whole
            batch.
        teacher_modalities: the teacher's spec when it differs from the student's (a teacher with another
            processor); default ``modalities`` if given, else the teacher's registered spec. Its names are the
            modality set; the student's names must be among them.
        **trainer_kwargs: everything else `transformers.Trainer` accepts (datasets, collator, callbacks...).

    Batches may carry cached teacher outputs: ``teacher_logits`` (B, num_labels), and
    ``teacher_logits_<name>`` for subclasses; they survive ``remove_unused_columns`` and are removed
    before the student's forward. Heterogeneous pairs (teacher and student with different processors,
    e.g. collated by :class:`~hf_msd.data.PairedCollator`): the teacher's inputs are the batch keys
    ``teacher_<key>``, handed to the teacher as ``<key>``; the student keeps the unprefixed keys. Components
    are logged as ``<name>_loss`` (e.g. ``kd_loss``) next to
    ``loss``; evaluation adds ``<prefix>_teacher_agreement``.
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
    extra_column_prefixes: tuple[str, ...] = (
        TEACHER_CACHE_PREFIX,
        TEACHER_INPUT_PREFIX,
        DISTILLATION_LABELS,
        VIEW_PREFIX,
    )

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
        args: DistillationTrainingArguments | None = None,
        modalities: Sequence[Modality] | None = None,
        teacher_modalities: Sequence[Modality] | None = None,
        **trainer_kwargs: Any,
    ):
        args = self._distillation_args(args)
        if teacher_model is None:
            raise ValueError("teacher_model is required: pass a PreTrainedModel or a path to one.")
        if isinstance(teacher_model, str):
            teacher_model = AutoModelForSequenceClassification.from_pretrained(
                teacher_model, **(args.teacher_model_init_kwargs or {})
            )
        if teacher_model is model and is_peft_model(model):
            logger.warning(
                "The PEFT model itself was passed as teacher_model: distilling from its adapter-free base "
                "model (model.get_base_model()) into the adapters."
            )
            teacher_model = model.get_base_model()
        meta = [name for name, p in teacher_model.named_parameters() if p.device.type == "meta"][:3]
        if meta:
            raise ValueError(
                f"teacher_model has weights on the meta device (e.g. {meta}): they hold no values. Load the "
                "teacher with its weights (from_pretrained without device_map='meta' / init_empty_weights)."
            )
        super().__init__(model=model, args=args, **trainer_kwargs)
        if self.args.torch_compile:  # one compiled forward, several input signatures (see .compilation)
            allow_recompiles()
        student = self._student_base()
        student_config = getattr(student, "config", None)  # None for a plain nn.Module student
        if student_config is not None and getattr(teacher_model, "config", None) is not None:
            check_label_spaces(student_config, teacher_model.config)
            if self.token_level:
                check_vocabularies(student_config, teacher_model.config)
        self.teacher_model = teacher_model
        self._teacher_is_student_base = student is teacher_model
        if not self._teacher_is_student_base:  # a shared PEFT base is already frozen and placed
            teacher_model.requires_grad_(False).eval()
        self.modalities, self.teacher_modalities = _modality_specs(
            teacher_model, student, modalities, teacher_modalities
        )
        names = [modality.name for modality in self.teacher_modalities]
        student_modalities = getattr(student_config, "modalities", None)
        own = {modality.name for modality in self.modalities}
        self.student_modality_names = [
            name
            for name in names
            if name in own and (student_modalities is None or name in student_modalities)
        ]
        if names and not self.student_modality_names:
            raise ValueError(
                f"The student's config.modalities={student_modalities} shares no modality with modalities="
                f"{names}: name the Modality after the student's modality."
            )
        #: Keys of the modalities the student does not take; left out of the student's inputs.
        own_keys = {
            key for m in self.modalities if m.name in self.student_modality_names for key in m.all_keys
        }
        self._keys_hidden_from_student = {
            key
            for m in (*self.modalities, *self.teacher_modalities)
            if m.name not in self.student_modality_names
            for key in m.all_keys
            if key not in own_keys
        }
        #: The config defining the label space: the student's, or the teacher's for a plain-module student.
        self._label_config = (
            student_config if student_config is not None else getattr(teacher_model, "config", None)
        )
        self.problem_type = getattr(self._label_config, "problem_type", None)
        #: Owner of the state trained or tracked beside the student (checkpointed, restored on resume).
        self.training_state = TrainingState()
        self._restored_from: str | None = None
        self._checked_data: tuple | None = None
        self.training_modules = nn.ModuleDict()
        self._hidden_map = self._attention_map = {}
        if args.hidden_loss_weight > 0:
            self._hidden_map = self._resolve_layer_map(
                args.hidden_layer_map, offset=1, name="hidden_layer_map"
            )
            self.register_training_module(
                "hidden_projections", self._build_projections(student, teacher_model)
            )
        if args.attention_loss_weight > 0:
            self._attention_map = self._resolve_layer_map(
                args.attention_layer_map, offset=0, name="attention_layer_map"
            )
            for role, network in (("student", student), ("teacher", teacher_model)):
                _use_eager_attention(role, network)
        self._log_sums: dict[str, torch.Tensor] = {}
        #: examples, labelled examples, labelled tokens, distilled tokens (see _counts)
        self._log_counts = torch.zeros(4, device=self.args.device)
        #: [examples, labelled examples, labelled tokens, distilled tokens] of the accumulated batch
        #: (get_batch_samples).
        self._batch_counts: torch.Tensor | None = None
        self._grad_step_of_modules = -1
        self._batches_seen = 0  # training micro-batches, named by check_finite's errors
        self._eval_agreement: list[torch.Tensor] | None = None
        if not self._teacher_is_student_base:
            self.teacher_model = self._prepare_teacher(teacher_model)
        check_on_policy_setup(args.lmbda, self.token_level, self.train_dataset)
        #: The on-policy steps of ``lmbda > 0`` (:mod:`hf_msd.trainers.on_policy`), else None.
        self.on_policy = (
            OnPolicy(args, self.student_inputs, self.accelerator.process_index) if args.lmbda > 0 else None
        )

    @classmethod
    def _distillation_args(cls, args: TrainingArguments | None) -> DistillationTrainingArguments:
        """``args`` as this trainer's arguments class: its defaults for ``None`` (as `Trainer` does, with
        ``output_dir="trainer_output"``), a `TrainingArguments` converted keeping every field
        (:meth:`DistillationTrainingArguments.from_training_arguments`)."""
        args_class = cls.args_class
        if args is None:
            return args_class(output_dir="trainer_output")
        if isinstance(args, args_class):
            return args
        if not isinstance(args, TrainingArguments):
            raise TypeError(
                f"args must be a TrainingArguments (ideally a {args_class.__name__}), got "
                f"{type(args).__name__}."
            )
        return args_class.from_training_arguments(args)

    def register_state(self, name: str, part: Any) -> None:
        """Add ``part`` (``state_dict()`` / ``load_state_dict()``) to the training-only state saved with every
        checkpoint and restored on resume (:class:`TrainingState`); the state's callback joins the Trainer's
        callbacks with the first part, so a run without training-only state has `Trainer`'s callbacks."""
        if not self.training_state.parts:
            self.add_callback(self.training_state)
        self.training_state.register(name, part)

    def _prepare_teacher(self, teacher: nn.Module) -> nn.Module:
        """Place the frozen teacher as accelerate prescribes for a model that is only evaluated.

        - DeepSpeed: its own inference engine, partitioned across processes under ZeRO-3 (as the student's
          config shards), plainly replicated under ZeRO-0/1/2; never given an optimizer.
        - Otherwise (one process, DDP, FSDP): ``accelerator.prepare_model(teacher, evaluation_mode=True)``:
          placed on the device, replicated, never wrapped for gradient synchronisation or sharding.
        - A teacher loaded with a ``device_map`` (``hf_device_map``) is left where it is.
        """
        if getattr(teacher, "hf_device_map", None) is not None:
            return teacher
        if self.is_deepspeed_enabled:
            return _deepspeed_inference_engine(teacher, self.accelerator)
        return self.accelerator.prepare_model(teacher, evaluation_mode=True).eval()

    # ---- Teacher -------------------------------------------------------------------------------------

    def _student_base(self) -> nn.Module:
        """The student without its PEFT wrapper. Resolved once per student object: accelerate's
        ``is_peft_model`` reads package metadata on every call (milliseconds), and a step asks many times."""
        resolved = getattr(self, "_resolved_student_base", None)
        if resolved is None or resolved[0] is not self.model:
            base = self.model.get_base_model() if is_peft_model(self.model) else self.model
            self._resolved_student_base = resolved = (self.model, base)
        return resolved[1]

    @contextlib.contextmanager
    def _teacher_context(self) -> Iterator[None]:
        """No grad, eval mode, the student's autocast; adapters off when the teacher is the PEFT base."""
        shared = self._teacher_is_student_base
        was_training = self.teacher_model.training
        self.teacher_model.eval()  # guards against a train() toggle since the last call
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(self.accelerator.autocast())
            if shared:
                stack.enter_context(self.model.disable_adapter())
            try:
                yield
            finally:
                if shared:  # eval() on the shared base also switched the student's modules
                    self.teacher_model.train(was_training)

    def teacher_forward(self, inputs: dict[str, Any], output_intermediates: bool | None = None):
        """The teacher's outputs on ``inputs``: the teacher run on its view of the batch (labels and cached
        columns removed, :meth:`teacher_inputs`) under ``torch.no_grad()`` and the student's autocast.
        ``output_intermediates`` (default: whether the hidden/attention losses are on) asks for
        ``hidden_states`` / ``attentions``."""
        need_hidden, need_attentions = self._needs_intermediates(output_intermediates)
        teacher_inputs = self.teacher_inputs(inputs)
        if need_hidden:
            teacher_inputs["output_hidden_states"] = True
        if need_attentions:
            teacher_inputs["output_attentions"] = True
        with self._teacher_context():
            return classifier_output(self.teacher_model, self.teacher_model(**teacher_inputs))

    def _needs_intermediates(self, output_intermediates: bool | None) -> tuple[bool, bool]:
        if output_intermediates is False:
            return False, False
        return bool(self._hidden_map), bool(self._attention_map)

    # ---- Batch columns ---------------------------------------------------------------------------------

    def _is_extra_column(self, name: str) -> bool:
        return name.startswith(self.extra_column_prefixes)

    def model_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """``inputs`` without the extra columns (cached teacher outputs...), ready for ``model(**...)``."""
        return {k: v for k, v in inputs.items() if not self._is_extra_column(k)}

    def _shared_inputs(self, inputs: dict[str, Any], keep_labels: bool = False) -> dict[str, Any]:
        dropped = () if keep_labels else ("labels", "return_loss", *self.label_names)
        return {k: v for k, v in self.model_inputs(inputs).items() if k not in dropped}

    def teacher_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The teacher's view of a batch (every modality, no labels): the ``teacher_<key>`` entries renamed
        ``<key>`` when the batch has them (a heterogeneous pair), else the model inputs without labels."""
        own = {
            k[len(TEACHER_INPUT_PREFIX) :]: v
            for k, v in inputs.items()
            if k.startswith(TEACHER_INPUT_PREFIX) and not k.startswith(TEACHER_CACHE_PREFIX)
        }
        return own or self._shared_inputs(inputs)

    def student_inputs(self, inputs: dict[str, Any], keep_labels: bool = False) -> dict[str, Any]:
        """The student's view of a batch: the model inputs (no ``teacher_*`` entries; labels only with
        ``keep_labels``) without the keys of the modalities the student does not take (a unimodal student sees
        only its own modality)."""
        return {
            k: v
            for k, v in self._shared_inputs(inputs, keep_labels).items()
            if k not in self._keys_hidden_from_student
        }

    def cached_teacher_logits(
        self, inputs: dict[str, Any], column: str = TEACHER_CACHE_PREFIX
    ) -> torch.Tensor | None:
        """The batch's cached teacher logits ``column`` on the trainer's device; ``None`` if not cached.

        A classifier's are dense (B, num_labels) (top-k columns expanded by
        :func:`~hf_msd.teacher_outputs.cache.batch_cached_logits`); a generative teacher's (one row per answer
        token) are placed at the positions predicting the answer tokens of the column's input (``x`` or a
        view), (B, T, vocab_size), 0 elsewhere
        (:func:`~hf_msd.teacher_outputs.cache.batch_cached_answer_logits`)."""
        if self.token_level == "causal":
            labels = inputs.get(answer_labels_column(column))
            if labels is None:  # batches of a causal LM without the collator's answer columns
                return None
            vocab_size = self.teacher_model.config.get_text_config().vocab_size
            logits = batch_cached_answer_logits(inputs, column, labels, vocab_size)
        else:
            logits = batch_cached_logits(inputs, column, architecture_num_labels(self.teacher_model))
        return None if logits is None else logits.to(self.args.device)

    # ---- Training-only modules (projections, learned weights) ----------------------------------------

    def register_training_module(self, name: str, module: nn.Module) -> None:
        """Add a module trained with the student but not part of it (e.g. projections, learned loss weights).

        Its trainable parameters join the optimizer (as one extra parameter group), its gradients are
        all-reduced across processes, zeroed after each optimizer step and clipped with the student's, and
        its state is saved with every checkpoint and restored on resume (:class:`TrainingState`). It is
        never written by ``save_model``. Call it in ``__init__`` (before ``train()`` creates the optimizer).
        Registered modules are available as ``self.training_modules[name]``.
        """
        if self.optimizer is not None:
            raise RuntimeError(
                f"register_training_module({name!r}) must be called before the optimizer exists."
            )
        if name in self.training_modules:
            raise ValueError(f"A training module named {name!r} is already registered.")
        if not len(self.training_modules):
            self.register_state("training_modules", self.training_modules)
        self.training_modules[name] = module.to(self.args.device)

    def _build_projections(self, student: nn.Module, teacher: nn.Module) -> nn.ModuleDict:
        purpose = "hidden_loss_weight > 0 (projection widths)"
        return intermediate_losses.build_projections(
            intermediate_losses.config_width(_config_of(student, purpose)),
            intermediate_losses.config_width(_config_of(teacher, purpose)),
            self._hidden_map,
        )

    def _resolve_layer_map(self, layer_map: dict[int, int] | None, offset: int, name: str) -> dict[int, int]:
        """``layer_map``, checked against both models' layer counts, or the evenly spaced default."""
        student, teacher = self._student_base(), self.teacher_model
        if layer_map is None:
            purpose = "the default layer map of hidden_loss_weight > 0 or attention_loss_weight > 0"
            return intermediate_losses.evenly_spaced_layer_map(
                intermediate_losses.num_layers(_config_of(student, purpose)),
                intermediate_losses.num_layers(_config_of(teacher, purpose)),
                offset,
            )

        def layers(model: nn.Module) -> int | None:
            try:
                return intermediate_losses.num_layers(getattr(model, "config", None))
            except ValueError:
                return None  # unknown layer count: the model's outputs will tell

        intermediate_losses.check_layer_map(layer_map, name, offset, layers(student), layers(teacher))
        return dict(layer_map)

    def _training_parameters(self) -> list[nn.Parameter]:
        return [p for p in self.training_modules.parameters() if p.requires_grad]

    def create_optimizer(self, model=None) -> torch.optim.Optimizer:
        optimizer = super().create_optimizer(model)
        params = self._training_parameters()
        in_optimizer = {id(p) for group in optimizer.param_groups for p in group["params"]}
        new = [p for p in params if id(p) not in in_optimizer]
        if new:
            optimizer.add_param_group({"params": new, "weight_decay": self.args.weight_decay})
        return optimizer

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """`Trainer`'s, then, with ``torch_compile``, the batch dimensions marked dynamic
        (:func:`~hf_msd.trainers.compilation.mark_batch_dynamic`): a new batch size or padded length, or a
        modality-only pass, does not recompile the student."""
        inputs = super()._prepare_inputs(inputs)
        return mark_batch_dynamic(inputs) if self.args.torch_compile else inputs

    def training_step(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch=None
    ) -> torch.Tensor:
        params = self._training_parameters()
        if params and self._grad_step_of_modules != self.state.global_step:
            # The Trainer only zeroes the student's gradients: start each accumulation cycle afresh.
            for p in params:
                p.grad = None
            self._grad_step_of_modules = self.state.global_step
        loss = super().training_step(model, inputs, num_items_in_batch)
        if params and self.accelerator.sync_gradients and self.accelerator.num_processes > 1:
            # Not inside DDP: sum the gradients like DDP's average of our world-size-scaled loss.
            for p in params:
                if p.grad is None:
                    p.grad = torch.zeros_like(p)
                torch.distributed.all_reduce(p.grad)
                p.grad /= self.accelerator.num_processes
        return loss

    def _clip_grad_norm(self, model):
        params = self._training_parameters()
        if not params or self.is_deepspeed_enabled or self.is_fsdp_enabled:
            return super()._clip_grad_norm(model)
        return self.accelerator.clip_grad_norm_([*model.parameters(), *params], self.args.max_grad_norm)

    def train(self, resume_from_checkpoint: str | bool | None = None, trial=None, **kwargs):
        """:meth:`transformers.Trainer.train`, plus the training-only state (:class:`TrainingState`):
        ``resume_from_checkpoint=True`` takes the newest *complete* checkpoint (one left half-written by a
        kill is skipped with a warning; none at all raises, as in `Trainer`), whose projections and other
        training-only state are restored here, before training, under every backend."""
        self.check_data()
        checkpoint = resolve_checkpoint(resume_from_checkpoint, self.args.output_dir, self.training_state)
        self._restore_training_state(checkpoint)
        self.training_state.synchronize()
        return super().train(resume_from_checkpoint=checkpoint, trial=trial, **kwargs)

    def check_data(self) -> None:
        """Check the training and evaluation data before any training work, naming the bad rows and columns.

        An empty training set is refused; a collator with a ``validate(dataset, num_labels, multi_label,
        name)`` method (:meth:`hf_msd.data.MultimodalDataCollator.validate`) checks every row; raw image
        columns with a collator that cannot turn them into tensors are refused. Runs once per datasets.
        """
        datasets_ = {"train_dataset": self.train_dataset}
        if isinstance(self.eval_dataset, dict):
            datasets_.update({f"eval_dataset[{k!r}]": v for k, v in self.eval_dataset.items()})
        elif self.eval_dataset is not None:
            datasets_["eval_dataset"] = self.eval_dataset
        key = tuple(id(dataset) for dataset in datasets_.values())
        if key == self._checked_data:
            return
        num_labels = architecture_num_labels(self._label_config)  # e.g. LXMERT's num_qa_labels
        for name, dataset in datasets_.items():
            extra = [c for c in getattr(dataset, "column_names", None) or [] if self._is_extra_column(c)]
            if extra and self.args.remove_unused_columns:
                raise ValueError(
                    f"{name} has the columns {extra} (cached teacher outputs / teacher inputs), which "
                    "remove_unused_columns=True drops before they reach the trainer: set "
                    "remove_unused_columns=False (the default of the distillation arguments)."
                )
            if dataset is None or not hasattr(dataset, "__len__"):
                continue
            if len(dataset) == 0:
                raise ValueError(f"{name} is empty: give it at least one example.")
            validate = getattr(self.data_collator, "validate", None)
            if callable(validate):
                validate(
                    dataset,
                    num_labels=num_labels,
                    multi_label=self.problem_type == losses.MULTI_LABEL,
                    name=name,
                )
                continue
            features = getattr(dataset, "features", None) or {}
            images = [column for column, feature in features.items() if isinstance(feature, datasets.Image)]
            if images:
                raise ValueError(
                    f"{name} has raw image column(s) {images} but data_collator="
                    f"{type(self.data_collator).__name__} cannot turn images into tensors. Pass "
                    "data_collator=hf_msd.data.MultimodalDataCollator.from_model(model, processor)."
                )
        self._checked_data = key

    def _restore_training_state(self, checkpoint: str | None) -> None:
        if checkpoint is not None and checkpoint != self._restored_from:
            self.training_state.load(checkpoint)
            self._restored_from = checkpoint

    # ---- Batch counting for exact gradient accumulation ----------------------------------------------

    @staticmethod
    def _batch_size(batch: dict[str, Any]) -> int:
        if torch.is_tensor(batch.get("labels")):
            return batch["labels"].shape[0]
        return next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0)

    def _num_labelled(self, batch: dict[str, Any]) -> int:
        """Labelled examples of ``batch`` (:func:`hf_msd.distillation.losses.labelled_mask`) when the library
        computes the
        task term of a sequence-level model; 0 otherwise (no labels, or the model's own loss is the task)."""
        labels = batch.get("labels")
        if not torch.is_tensor(labels) or self.token_level or self._model_computes_task_loss(batch):
            return 0
        return int(losses.labelled_mask(labels, self._problem_type(labels)).sum())

    def _num_labelled_tokens(self, batch: dict[str, Any], labels: torch.Tensor | None = None) -> int:
        """The positions a token-level model's terms score in ``batch``
        (:func:`hf_msd.distillation.losses.scored_token_mask`: ``labels`` (default the batch's) != -100 after
        the causal
        shift; without labels, the real tokens); 0 for a sequence-level model."""
        if not self.token_level:
            return 0
        labels = batch.get("labels") if labels is None else labels
        mask = losses.scored_token_mask(
            labels if torch.is_tensor(labels) else None,
            batch.get("attention_mask"),
            self._token_shape(batch),
            causal=self.token_level == "causal",
        )
        return int(mask.sum())

    @staticmethod
    def distillation_labels(batch: dict[str, Any]) -> torch.Tensor | None:
        """The tokens a token-level model's distillation terms score: the batch's ``distillation_labels``
        (:class:`~hf_msd.data.VisionLanguageCollator`: the answer tokens of every example, gold or the
        teacher's) when it has them, else its ``labels``."""
        labels = batch.get(DISTILLATION_LABELS)
        return labels if torch.is_tensor(labels) else batch.get("labels")

    @staticmethod
    def _token_shape(batch: dict[str, Any]) -> torch.Size:
        """(B, T) of a token-level batch, from its ``input_ids`` (or ``inputs_embeds``)."""
        tokens = batch.get("input_ids")
        return tokens.shape if tokens is not None else batch["inputs_embeds"].shape[:2]

    def _counts(self, batch: dict[str, Any]) -> torch.Tensor:
        """``[examples, labelled examples, labelled tokens, distilled tokens]`` of one micro-batch; the last
        two are 0 for a sequence-level model and differ only when the batch has ``distillation_labels``."""
        distilled = self.distillation_labels(batch)
        return torch.tensor(
            [
                self._batch_size(batch),
                self._num_labelled(batch),
                self._num_labelled_tokens(batch) + gold_tokens(batch),
                self._num_labelled_tokens(batch, distilled if torch.is_tensor(distilled) else None),
            ],
            dtype=torch.float32,
        )

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The Trainer's micro-batches and ``num_items_in_batch`` (unchanged: it is what the model's own loss
        and ``compute_loss_func`` receive), plus this library's counts of the whole accumulated batch, summed
        over processes when ``average_tokens_across_devices``: examples, labelled examples, labelled and
        distilled tokens, the divisors of the terms the library computes (see :meth:`compute_loss`).

        A ``num_items_in_batch`` of 0 (an accumulated batch without a single labelled token, e.g. when few
        examples carry labels) becomes 1: the model's summed loss over no tokens is then 0, not 0 / 0 = NaN.
        """
        batch_samples, num_items_in_batch = super().get_batch_samples(epoch_iterator, num_batches, device)
        if self.on_policy is not None and batch_samples:
            batch_samples = self.on_policy.rewrite(self.model, batch_samples, self.state.global_step)
        if torch.is_tensor(num_items_in_batch):
            num_items_in_batch = torch.where(num_items_in_batch == 0, 1, num_items_in_batch)
        self._batch_counts = None
        if batch_samples:
            counts = sum(self._counts(b) for b in batch_samples).to(device)
            if self.args.average_tokens_across_devices and self.args.world_size > 1:
                counts = self.accelerator.gather(counts).reshape(-1, len(counts)).sum(dim=0)
            self._batch_counts = counts
        return batch_samples, num_items_in_batch

    # ---- Loss ----------------------------------------------------------------------------------------

    @property
    def uses_teacher(self) -> bool:
        """Whether a teacher-dependent term is on; if not, the teacher never runs (training or evaluation)."""
        args = self.args
        return args.kd_loss_weight > 0 or args.hidden_loss_weight > 0 or args.attention_loss_weight > 0

    @property
    def token_level(self) -> str | None:
        """``"causal"`` for a causal LM student (its logits at position t predict the label at t + 1),
        ``"tokens"`` for a token classifier, ``None`` for a sequence-level model (logits (B, C))."""
        student = self._student_base()
        name = type(student).__name__
        if self._loss_shifts_labels or name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
            return "causal"
        if name in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES.values():
            return "tokens"
        return None

    def _model_computes_task_loss(self, inputs: dict[str, Any]) -> bool:
        """Whether the task term is the model's own loss, computed as `Trainer.compute_loss` does.

        Yes with ``compute_loss_func`` or label smoothing, with custom ``label_names``, and for any model that
        takes labels (a ``labels`` argument or ``**kwargs``) unless the library computes it: sequence
        classifiers it knows (a registered architecture, e.g. hf_msd's models and ViLT, or a transformers
        ``*ForSequenceClassification``), whose per-micro-batch mean the library replaces by the mean over the
        labelled examples of the whole accumulated batch.
        """
        if self.args.hard_label_weight == 0:
            return False
        if self.compute_loss_func is not None or self.label_smoother is not None:
            return True
        if list(self.label_names) not in ([], ["labels"]):
            return any(name in inputs for name in self.label_names)
        if not torch.is_tensor(inputs.get("labels")):
            return False
        student = self._student_base()
        if get_architecture(student) is not None or (
            type(student).__name__ in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()
        ):
            return False
        parameters = inspect.signature(student.forward).parameters
        return "labels" in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())

    def _problem_type(self, labels: torch.Tensor | None) -> str:
        if self.token_level:
            return losses.SINGLE_LABEL
        if self.problem_type is None:
            self.problem_type = losses.resolve_problem_type(self._label_config, labels)
        if self.problem_type == losses.MULTI_LABEL and labels is not None and labels.dim() == 1:
            raise ValueError(
                f"The model is multi-label (problem_type={losses.MULTI_LABEL!r}) but the labels are one "
                "class id per example, shape (B,): give each example a list of class ids and collate them "
                "with MultimodalDataCollator.from_model(model, processor) (multi-hot (B, num_labels)), or "
                "set problem_type='single_label_classification' on both models."
            )
        return self.problem_type

    def student_forward(
        self, model: nn.Module, inputs: dict[str, Any], num_items_in_batch: torch.Tensor | int | None = None
    ) -> StudentOutput:
        """The student's forward on its view of the batch (:meth:`student_inputs`).

        When the model's own loss is the task term (:meth:`_model_computes_task_loss`) this is exactly
        `Trainer.compute_loss` (labels passed, ``num_items_in_batch`` when the model accepts loss kwargs,
        ``compute_loss_func``, label smoothing, the multi-process scale); otherwise the labels are left out.
        """
        keep_frozen_normalization_in_eval(model)  # frozen BatchNorm statistics must not move
        model_loss = self._model_computes_task_loss(inputs)
        student_inputs = self.student_inputs(inputs, keep_labels=model_loss)
        need_hidden, need_attentions = self._needs_intermediates(None)
        if need_hidden:
            student_inputs["output_hidden_states"] = True
        if need_attentions:
            student_inputs["output_attentions"] = True
        if not model_loss:
            outputs = model(**student_inputs)
            return StudentOutput(outputs, get_logits(self._student_base(), outputs))
        task, outputs = super().compute_loss(
            model, student_inputs, return_outputs=True, num_items_in_batch=num_items_in_batch
        )
        labels_reached_model = self.label_smoother is None and self.compute_loss_func is None
        logits = get_logits(self._student_base(), outputs, has_loss=labels_reached_model)
        return StudentOutput(outputs, logits, task_loss=task)

    def teacher_outputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The teacher's outputs the terms need: ``{"full": outputs on the whole input}``, read from the
        batch's cached ``teacher_logits`` when it has them and no hidden states or attentions are needed,
        else from :meth:`teacher_forward`. Subclasses add entries (e.g. the teacher's logits on each
        modality)."""
        cached = None if any(self._needs_intermediates(None)) else self.cached_teacher_logits(inputs)
        teacher = (
            SequenceClassifierOutput(logits=cached) if cached is not None else self.teacher_forward(inputs)
        )
        self.check_finite(f"The {'cached ' if cached is not None else ''}teacher logits", teacher.logits)
        return {"full": teacher}

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
        args = self.args
        if student is None:
            student = self.student_forward(model, inputs)
        if teacher is None and self.uses_teacher:
            teacher = self.teacher_outputs(inputs)
        labels = inputs.get("labels")
        components: dict[str, torch.Tensor] = {}
        if args.hard_label_weight > 0 and student.task_loss is None and torch.is_tensor(labels):
            if self.token_level:
                task = losses.token_task_loss(student.logits, labels, causal=self.token_level == "causal")
            else:
                task = losses.task_loss(student.logits, labels, self._problem_type(labels))
            components["task"] = args.hard_label_weight * task
        if teacher is None:
            return components, student
        full = teacher["full"]
        if student.logits.shape != full.logits.shape:
            raise ValueError(
                f"Student logits {tuple(student.logits.shape)} and teacher logits "
                f"{tuple(full.logits.shape)} differ in shape: both models must predict the same labels."
            )
        if args.kd_loss_weight > 0:
            components["kd"] = args.kd_loss_weight * self._soft_target(student.logits, full.logits, inputs)
        mask = inputs.get("attention_mask")
        if args.hidden_loss_weight > 0:
            components["hidden"] = args.hidden_loss_weight * self._hidden_loss(student.outputs, full, mask)
        if args.attention_loss_weight > 0:
            components["attention"] = args.attention_loss_weight * self._attention_loss(
                student.outputs, full, mask
            )
        return components, student

    def _soft_target(
        self, student_logits: torch.Tensor, teacher_logits: torch.Tensor, inputs: dict
    ) -> torch.Tensor:
        """The soft-target loss per example: (B, C) logits, or, for a token-level model, the sum over each
        example's labelled tokens of the per-token divergence
        (:func:`~hf_msd.distillation.losses.token_soft_target_loss`).
        """
        if student_logits.dim() == 3 and not self.token_level:
            raise ValueError(
                f"{type(self._student_base()).__name__} returns token-level logits "
                f"{tuple(student_logits.shape)} "
                "but is neither a causal LM nor a token classifier of transformers' auto classes, so which "
                "tokens are targets is unknown: register it with AutoModelForCausalLM / "
                "AutoModelForTokenClassification, or distil a sequence-level head."
            )
        if self.token_level:
            return losses.token_soft_target_loss(
                student_logits,
                teacher_logits,
                labels=self.distillation_labels(inputs),
                attention_mask=inputs.get("attention_mask"),
                causal=self.token_level == "causal",
                temperature=self.args.temperature,
                loss_type=self.args.kd_loss_type,
                beta=self.args.beta,
            )
        return losses.soft_target_loss(
            student_logits,
            teacher_logits,
            problem_type=self._problem_type(inputs.get("labels")),
            temperature=self.args.temperature,
            loss_type=self.args.kd_loss_type,
            beta=self.args.beta,
        )

    def _student_span(self, teacher_length: int, student_length: int) -> slice:
        """The teacher's tokens of the student's modalities
        (:func:`~hf_msd.distillation.intermediate_losses.student_token_span`); every token when it takes them
        all."""
        if not self._keys_hidden_from_student:
            return slice(None)
        return intermediate_losses.student_token_span(
            teacher_length,
            student_length,
            [m.name for m in self.modalities],
            self.student_modality_names,
        )

    def _hidden_loss(self, student_outputs, teacher_outputs, mask: torch.Tensor | None) -> torch.Tensor:
        """:func:`~hf_msd.distillation.intermediate_losses.hidden_states_loss` with this run's layers and
        projections."""
        return intermediate_losses.hidden_states_loss(
            student_outputs,
            teacher_outputs,
            self._hidden_map,
            self.training_modules["hidden_projections"],
            mask,
            self._student_span,
            pooling=self.args.hidden_state_pooling,
            loss_type=self.args.hidden_loss_type,
        )

    def _attention_loss(self, student_outputs, teacher_outputs, mask: torch.Tensor | None) -> torch.Tensor:
        """:func:`~hf_msd.distillation.intermediate_losses.attention_maps_loss` with this run's layer map."""
        return intermediate_losses.attention_maps_loss(
            student_outputs,
            teacher_outputs,
            self._attention_map,
            mask,
            self._student_span,
            loss_type=self.args.attention_loss_type,
            head_reduction=self.args.attention_head_reduction,
        )

    def _is_distillation_token_term(self, name: str) -> bool:
        """Whether the component ``name`` of a token-level model is a sum over the distilled tokens."""
        return name == "kd"

    def combine_components(
        self,
        components: dict[str, torch.Tensor],
        examples: torch.Tensor | float,
        labelled: torch.Tensor | float,
        tokens: torch.Tensor | float | None = None,
        distilled: torch.Tensor | float | None = None,
    ) -> torch.Tensor:
        """The scalar loss from the library's per-example components (each (B,)); see :meth:`compute_loss`.

        ``sum(task) / max(labelled, 1) + sum over the other components of sum(c) / examples``; for a
        token-level model ``task`` (a sum over labelled tokens) is divided by ``max(tokens, 1)`` and the
        distillation terms (``kd``, sums over the distilled tokens, :meth:`_is_distillation_token_term`) by
        ``max(distilled, 1)``.
        """

        def divisor(count):
            return count.clamp_min(1) if torch.is_tensor(count) else max(count, 1)

        terms = []
        for name, value in components.items():
            if self.token_level and self._is_distillation_token_term(name):
                terms.append(value.sum() / divisor(tokens if distilled is None else distilled))
            elif self.token_level and name == "task":
                terms.append(value.sum() / divisor(tokens))
            elif name == "task":
                terms.append(value.sum() / divisor(labelled))
            else:
                terms.append(value.sum() / examples)
        return torch.stack(terms).sum()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """The loss of one micro-batch: student forward, teacher outputs, the terms, their reduction.

        The task term comes from one of two places:

        - **The model's own loss** (a model that takes labels and returns a loss, or ``compute_loss_func``,
          label smoothing, custom ``label_names``; see :meth:`_model_computes_task_loss`): exactly what
          `Trainer.compute_loss` returns, with the Trainer's gradient-accumulation contract (divided by the
          accumulation steps unless the model receives ``num_items_in_batch`` or ``compute_loss_func`` is
          set), times ``hard_label_weight``.
        - **The library** (hf_msd's models and other registered architectures, transformers'
          ``*ForSequenceClassification``, models that return no loss): the per-example task loss summed over
          the labelled examples (label != -100) and divided by their number in the whole accumulated batch,
          over every process.

        Every other term ``c`` (``kd``, ``hidden``, ``attention``, modality terms) is summed over the examples
        and divided by the number of examples ``N`` of the whole accumulated batch (over every process, from
        :meth:`get_batch_samples`). For a token-level model (causal LM, token classifier, decoder-only
        image-text-to-text model such as LLaVA) the ``kd`` term (and a library-computed ``task``) is the
        per-token divergence summed over the labelled tokens and divided by the labelled tokens of the
        accumulated batch
        (after the causal shift); the distillation terms score the batch's ``distillation_labels`` when it has
        them (:meth:`distillation_labels`), the task term its ``labels``. Summed over the
        micro-batches of an optimizer step this is the large-batch loss however the batch is split. Outside
        training (evaluation, direct calls) the counts are this batch's. With several processes the library's
        terms are
        multiplied by the number of processes to undo DDP's gradient averaging, as transformers' default loss
        does. With every teacher-dependent weight at 0 the teacher does not run.
        """
        if model.training:
            self._batches_seen += 1
        student = self.student_forward(model, inputs, num_items_in_batch)
        teacher = self.teacher_outputs(inputs) if self.uses_teacher else None
        components, _ = self.loss_components(model, inputs, student, teacher)
        self.gold_task(model, inputs, student, components, num_items_in_batch)
        loss = self.reduce_loss(components, student, inputs, num_items_in_batch, training=model.training)
        if (
            self.uses_teacher
        ):  # a NaN teacher must not reach the student; otherwise the Trainer's NaN handling
            self.check_finite("The training loss" if model.training else "The evaluation loss", loss)
        if model.training:
            self._accumulate_logs(components, inputs)
        elif self._eval_agreement is not None and teacher is not None:
            self._record_agreement(student.logits, teacher["full"].logits)
        if not return_outputs:
            return loss
        outputs = student.outputs
        if student.task_loss is None and isinstance(outputs, tuple):
            outputs = (loss, *outputs)  # Trainer's convention: a tuple's first entry is the loss
        return loss, outputs

    def gold_task(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        student: StudentOutput,
        components: dict[str, torch.Tensor],
        num_items_in_batch: torch.Tensor | int | None,
    ) -> None:
        """On an on-policy batch, the task term on the gold answers: the student's forward on the batch's
        :data:`~hf_msd.data.on_policy.GOLD_VIEW` (the bare module: a second pass through DDP in one step
        fails) replaces the task term of ``x``, whose labels are all -100 (``student.task_loss`` or
        ``components["task"]``). Nothing off-policy or with ``hard_label_weight`` 0."""
        gold = view_inputs(inputs, GOLD_VIEW)
        if not gold or self.args.hard_label_weight == 0:
            return
        bare = self.accelerator.unwrap_model(model)
        gold_student = self.student_forward(bare, gold, num_items_in_batch)
        if gold_student.task_loss is not None:
            student.task_loss = gold_student.task_loss
        else:
            labels = gold["labels"]
            task = losses.token_task_loss(gold_student.logits, labels, causal=self.token_level == "causal")
            components["task"] = self.args.hard_label_weight * task

    def reduce_loss(
        self,
        components: dict[str, torch.Tensor],
        student: StudentOutput,
        inputs: dict[str, Any],
        num_items_in_batch: torch.Tensor | int | None,
        training: bool,
    ) -> torch.Tensor:
        """The scalar loss of :meth:`compute_loss`: the library's components and the model's own task loss."""
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
            if training and not scaled:
                loss = loss / self.current_gradient_accumulation_steps
            if self.args.hard_label_weight != 1:
                loss = self.args.hard_label_weight * loss
        if components:
            accumulated = training and self._batch_counts is not None
            counts = self._batch_counts if accumulated else self._counts(inputs)
            library = self.combine_components(components, *counts.to(self.args.device))
            if accumulated and self.args.average_tokens_across_devices and self.args.world_size > 1:
                library = library * self.accelerator.num_processes
            loss = library if loss is None else loss + library
        return loss

    def check_finite(self, what: str, tensor: torch.Tensor) -> None:
        """Raise a FloatingPointError naming the batch and step if ``tensor`` holds NaN or inf.

        A NaN teacher output would silently turn every student weight into NaN while the logged loss reads 0
        (the Trainer's ``logging_nan_inf_filter``), so training stops before the optimizer applies it.
        """
        if bool(torch.isfinite(tensor.detach()).all()):
            return
        where = (
            f"training batch {self._batches_seen} (optimizer step {self.state.global_step}, epoch "
            f"{self.state.epoch or 0:.2f})"
            if self.model.training
            else "an evaluation batch"
        )
        raise FloatingPointError(
            f"{what} contain NaN or inf on {where}. Check the teacher's weights and any cached "
            f"'{TEACHER_CACHE_PREFIX}*' columns (recompute them), the inputs of that batch, and the "
            "learning rate / mixed precision settings; nothing of this batch was applied to the student."
        )

    # ---- Saving and the model card ---------------------------------------------------------------------

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

    # ---- Logging and evaluation ------------------------------------------------------------------------

    def _accumulate_logs(self, components: dict[str, torch.Tensor], inputs: dict[str, Any]) -> None:
        """Add this micro-batch's component sums and counts to the logging window (only when a teacher term is
        on: without one the loss is the task term alone and the logs are the Trainer's)."""
        if not self.uses_teacher:
            return
        for name, value in components.items():
            value = value.detach().sum()
            self._log_sums[name] = self._log_sums.get(name, torch.zeros_like(value)) + value
        self._log_counts = self._log_counts + self._counts(inputs).to(self._log_counts.device)

    def _sum_over_processes(self, tensor: torch.Tensor) -> torch.Tensor:
        return self.accelerator.reduce(tensor, reduction="sum")

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each library-computed loss component over the logging window (``<name>_loss``) to
        training logs: ``task_loss`` over the labelled examples, the others over all examples (over the
        labelled tokens for a token-level model's ``task`` and ``kd``)."""
        if "loss" in logs and self.on_policy is not None:
            logs.update(self.on_policy.pop_logs(self._sum_over_processes, self.args.device))
        if "loss" in logs and self._log_sums:
            names = sorted(self._log_sums)
            sums = torch.cat([torch.stack([self._log_sums[name] for name in names]), self._log_counts])
            sums = self.accelerator.reduce(sums, reduction="sum")
            examples, labelled, tokens, distilled = sums[-4:]
            for name, value in zip(names, sums[:-4]):
                if self.token_level and self._is_distillation_token_term(name):
                    count = distilled
                elif self.token_level and name == "task":
                    count = tokens
                else:
                    count = labelled if name == "task" else examples
                logs[f"{name}_loss"] = (value / count.clamp_min(1)).item()
            self._log_sums = {}
            self._log_counts = torch.zeros_like(self._log_counts)
        super().log(logs, start_time)

    def _record_agreement(self, student_logits: torch.Tensor, teacher_logits: torch.Tensor) -> None:
        problem_type = self.problem_type
        if problem_type == losses.SINGLE_LABEL:
            agree = (student_logits.argmax(-1) == teacher_logits.argmax(-1)).float()
        elif problem_type == losses.MULTI_LABEL:
            agree = ((student_logits > 0) == (teacher_logits > 0)).float().mean(dim=-1)
        else:
            return
        self._eval_agreement.append(self.accelerator.gather_for_metrics(agree).cpu())

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
        self._eval_agreement = []
        try:
            output = super().evaluation_loop(
                dataloader, description, prediction_loss_only, ignore_keys, metric_key_prefix
            )
            if self._eval_agreement:
                output.metrics[f"{metric_key_prefix}_teacher_agreement"] = (
                    torch.cat(self._eval_agreement).mean().item()
                )
        finally:
            self._eval_agreement = None
        return output
