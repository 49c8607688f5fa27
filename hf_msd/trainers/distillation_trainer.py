"""`DistillationTrainer`: a `transformers.Trainer` that distils a frozen teacher into a student.

The loss per example is a weighted sum of components (see :meth:`DistillationTrainer.loss_components`):
``task`` (gold labels), ``kd`` (soft targets), ``hidden`` (hidden states, through learned projections)
and ``attention`` (attention maps). The ``task`` term is summed over the LABELLED examples of the whole
accumulated batch (all processes) and divided by their number; every other term is summed over all its
examples and divided by their number (see :meth:`DistillationTrainer.compute_loss`), so gradient
accumulation and several processes give the same update as one large batch, with or without unlabelled
examples (label -100) in it.

Subclasses (e.g. :class:`~hf_msd.trainers.MSDTrainer`) extend it through three hooks:
:meth:`~DistillationTrainer.teacher_forward`, :meth:`~DistillationTrainer.loss_components` and
:meth:`~DistillationTrainer.register_training_module`.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator, Sequence
from typing import Any

import datasets
import torch
from torch import nn
from transformers import AutoModelForSequenceClassification, PreTrainedModel, Trainer
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging

from .. import losses
from ..data.paired import TEACHER_INPUT_PREFIX
from ..modality import Modality, default_modalities
from ..modality_presets import classifier_output, get_model_preset
from ..modality_presets import num_labels as preset_num_labels
from ..teacher_cache import TEACHER_LOGITS, expand_topk_columns
from .distillation_config import DistillationTrainingArguments
from .frozen_modules import keep_frozen_normalization_in_eval
from .training_state import TrainingState, resolve_checkpoint

logger = logging.get_logger(__name__)

TEACHER_CACHE_PREFIX = TEACHER_LOGITS


def _is_peft_model(model: nn.Module) -> bool:
    return hasattr(model, "get_base_model") and hasattr(model, "peft_config")


def _config_width(config) -> int:
    for name in ("hidden_size", "d_model", "dim"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(
        f"Cannot read the hidden width of {type(config).__name__} (no hidden_size / d_model / dim) for "
        "hidden-state distillation."
    )


def _num_layers(config) -> int:
    for name in ("num_hidden_layers", "num_layers", "n_layers"):
        if isinstance(getattr(config, name, None), int):
            return getattr(config, name)
    raise ValueError(
        f"Cannot read the number of layers of {type(config).__name__}; set hidden_layer_map / "
        "attention_layer_map explicitly."
    )


def evenly_spaced_layer_map(num_student: int, num_teacher: int, offset: int) -> dict[int, int]:
    """Map each student layer to the teacher layer at the same relative depth, last to last.

    ``offset`` is 1 for ``outputs.hidden_states`` (index 0 is the embeddings, not mapped by default) and 0
    for ``outputs.attentions``. Returns ``{student_index: teacher_index}``.
    """
    return {
        layer - 1 + offset: round(layer * num_teacher / num_student) - 1 + offset
        for layer in range(1, num_student + 1)
    }


def _preset_modalities(teacher: nn.Module, student: nn.Module) -> list[Modality]:
    """The teacher's modality preset, else the student's, else none (a model without a preset)."""
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
    ``teacher_modalities`` is not given). Otherwise a heterogeneous pair (both models have presets, for
    different ``model_type``s) takes each model's own preset; any other pair takes the teacher's preset, else
    the student's, for both."""
    teacher_preset, student_preset = get_model_preset(teacher), get_model_preset(student)
    if modalities is not None:
        student_spec = list(modalities)
    elif teacher_preset and student_preset and teacher_preset.model_type != student_preset.model_type:
        student_spec = default_modalities(student)
    else:
        student_spec = _preset_modalities(teacher, student)
    if teacher_modalities is not None:
        teacher_spec = list(teacher_modalities)
    elif modalities is None and teacher_preset is not None:
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
    the model presets, e.g. LXMERT's ``num_qa_labels``; ``id2label`` where both models set non-default
    names, and ``problem_type`` where both set it)."""
    student_count, teacher_count = preset_num_labels(student_config), preset_num_labels(teacher_config)
    if student_count != teacher_count:
        raise ValueError(
            f"Teacher and student label spaces differ: teacher num_labels={teacher_count}, "
            f"student num_labels={student_count}. Build the student with the teacher's "
            "num_labels/id2label."
        )
    student_labels, teacher_labels = student_config.id2label, teacher_config.id2label
    if not _is_default_id2label(student_labels) and not _is_default_id2label(teacher_labels):
        student_names = {int(k): v for k, v in student_labels.items()}
        teacher_names = {int(k): v for k, v in teacher_labels.items()}
        if student_names != teacher_names:
            raise ValueError(
                f"Teacher and student id2label differ: teacher {teacher_names}, student {student_names}. "
                "The logits must index the same classes in the same order."
            )
    student_type, teacher_type = student_config.problem_type, teacher_config.problem_type
    if student_type and teacher_type and student_type != teacher_type:
        raise ValueError(
            f"Teacher problem_type={teacher_type!r} and student problem_type={student_type!r} differ."
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


def token_mask(outputs: Any, attention_mask: torch.Tensor | None, length: int) -> torch.Tensor | None:
    """The (B, ``length``) mask of real tokens of a model's ``hidden_states`` / ``attentions``.

    A fused multimodal model returns ``outputs.hidden_states_mask`` (text ``attention_mask`` then ones for
    image tokens); a text model's sequence is its input, so the batch's ``attention_mask`` is used when it
    has ``length`` positions. ``None`` (every token counts) when neither fits.
    """
    mask = getattr(outputs, "hidden_states_mask", None)
    if mask is not None and mask.shape[1] == length:
        return mask
    if attention_mask is not None and attention_mask.shape[1] == length:
        return attention_mask
    return None


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


def _pool(hidden: torch.Tensor, attention_mask: torch.Tensor | None, pooling: str) -> torch.Tensor:
    """(B, L, H) -> (B, H) for pooling "mean" (masked) or "first"; unchanged for "none"."""
    if pooling == "first":
        return hidden[:, 0]
    if pooling == "mean":
        if attention_mask is None or attention_mask.shape[:2] != hidden.shape[:2]:
            return hidden.mean(dim=1)
        mask = attention_mask[..., None].to(hidden.dtype)
        return (hidden * mask).sum(dim=1) / mask.sum(dim=1).clamp_min(1.0)
    return hidden


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
        modalities: the batch's modalities (:class:`~hf_msd.modality.Modality`) as the student sees them;
            default the teacher's preset (:func:`~hf_msd.modality.default_modalities`), else the student's,
            else none; for a heterogeneous pair (two architectures with presets), the student's preset. They
            matter when the student takes fewer modalities than the teacher (``config.modalities``, e.g.
            ``["text"]``: the multimodal-to-unimodal setting of Agarwal et al.): the student is then given
            only its own modalities' keys while the teacher sees the whole batch.
        teacher_modalities: the teacher's spec when it differs from the student's (a teacher with another
            processor); default ``modalities`` if given, else the teacher's preset. Its names are the
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

    loss_is_scaled_for_ga = True
    _tag_names = ["hf_msd", "distillation"]
    #: The method named in the model card (:meth:`create_model_card`).
    card_method = "kd"
    #: Batch columns starting with one of these prefixes are kept past ``remove_unused_columns`` and removed
    #: before the student's forward. Subclasses may extend it.
    extra_column_prefixes: tuple[str, ...] = (TEACHER_CACHE_PREFIX, TEACHER_INPUT_PREFIX)

    def __init__(
        self,
        model: PreTrainedModel | nn.Module | None = None,
        teacher_model: PreTrainedModel | nn.Module | str | None = None,
        args: DistillationTrainingArguments | None = None,
        modalities: Sequence[Modality] | None = None,
        teacher_modalities: Sequence[Modality] | None = None,
        **trainer_kwargs: Any,
    ):
        if not isinstance(args, DistillationTrainingArguments):
            raise TypeError(
                f"args must be a DistillationTrainingArguments, got {type(args).__name__}; build it with "
                "DistillationTrainingArguments(output_dir=..., temperature=..., ...)."
            )
        if teacher_model is None:
            raise ValueError("teacher_model is required: pass a PreTrainedModel or a path to one.")
        if isinstance(teacher_model, str):
            teacher_model = AutoModelForSequenceClassification.from_pretrained(
                teacher_model, **(args.teacher_model_init_kwargs or {})
            )
        if teacher_model is model and _is_peft_model(model):
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
        # Our loss does not go through the model's own loss kwargs; num_items_in_batch is counted in examples.
        self.model_accepts_loss_kwargs = False
        student = self._student_base()
        student_config = getattr(student, "config", None)  # None for a plain nn.Module student
        if student_config is not None and getattr(teacher_model, "config", None) is not None:
            check_label_spaces(student_config, teacher_model.config)
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
        self.add_callback(self.training_state)
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
        self._log_count = torch.zeros((), device=self.args.device)
        self._log_labelled = torch.zeros((), device=self.args.device)
        #: (examples, labelled examples) of the accumulated batch, as counted by get_batch_samples.
        self._batch_counts: tuple[torch.Tensor, torch.Tensor] | None = None
        self._grad_step_of_modules = -1
        self._batches_seen = 0  # training micro-batches, named by check_finite's errors
        self._eval_agreement: list[torch.Tensor] | None = None
        self._last_teacher_logits: torch.Tensor | None = None
        if not self._teacher_is_student_base:
            self.teacher_model = self._prepare_teacher(teacher_model)

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
        return self.model.get_base_model() if _is_peft_model(self.model) else self.model

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

    def teacher_forward(
        self,
        inputs: dict[str, Any],
        cache_key: str = TEACHER_CACHE_PREFIX,
        output_intermediates: bool | None = None,
    ):
        """The teacher's outputs on ``inputs``.

        Uses ``inputs[cache_key]`` (cached logits, (B, num_labels)) when present and no hidden states or
        attentions are needed, returning a `SequenceClassifierOutput` with ``logits`` only. Otherwise runs the
        teacher on the model inputs (labels and cached columns removed) under ``torch.no_grad()`` and the
        student's autocast. ``output_intermediates`` (default: whether the hidden/attention losses are on)
        asks for ``hidden_states`` / ``attentions``.
        """
        need_hidden, need_attentions = self._needs_intermediates(output_intermediates)
        cached = inputs.get(cache_key)
        if cached is not None and not (need_hidden or need_attentions):
            return SequenceClassifierOutput(logits=cached.to(self.args.device))
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

    def _shared_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in self.model_inputs(inputs).items() if k not in ("labels", "return_loss")}

    def teacher_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The teacher's view of a batch (every modality, no labels): the ``teacher_<key>`` entries renamed
        ``<key>`` when the batch has them (a heterogeneous pair), else the model inputs without labels."""
        own = {
            k[len(TEACHER_INPUT_PREFIX) :]: v
            for k, v in inputs.items()
            if k.startswith(TEACHER_INPUT_PREFIX) and not k.startswith(TEACHER_CACHE_PREFIX)
        }
        return own or self._shared_inputs(inputs)

    def student_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The student's view of a batch: the model inputs (no labels, no ``teacher_*`` entries) without the
        keys of the modalities the student does not take (a unimodal student sees only its own modality)."""
        return {
            k: v for k, v in self._shared_inputs(inputs).items() if k not in self._keys_hidden_from_student
        }

    def _prepare_inputs(self, inputs: dict[str, Any]) -> dict[str, Any]:
        """The Trainer's device placement, plus dense ``teacher_logits*`` (B, num_labels) from top-k cache
        columns (:func:`hf_msd.teacher_cache.expand_topk_columns`)."""
        inputs = super()._prepare_inputs(inputs)
        if not any(key.startswith(TEACHER_LOGITS) for key in inputs):
            return inputs
        return expand_topk_columns(inputs, preset_num_labels(self.teacher_model))

    def _set_signature_columns_if_needed(self) -> None:
        super()._set_signature_columns_if_needed()
        if TEACHER_CACHE_PREFIX not in self._signature_columns:
            self._signature_columns.append(TEACHER_CACHE_PREFIX)

    def _remove_unused_columns(self, dataset, description: str | None = None):
        if self.args.remove_unused_columns and hasattr(dataset, "column_names"):
            self._set_signature_columns_if_needed()
            extra = [c for c in dataset.column_names if self._is_extra_column(c)]
            self._signature_columns += [c for c in extra if c not in self._signature_columns]
        return super()._remove_unused_columns(dataset, description)

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
            self.training_state.register("training_modules", self.training_modules)
        self.training_modules[name] = module.to(self.args.device)

    def _build_projections(self, student: nn.Module, teacher: nn.Module) -> nn.ModuleDict:
        purpose = "hidden_loss_weight > 0 (projection widths)"
        student_width = _config_width(_config_of(student, purpose))
        teacher_width = _config_width(_config_of(teacher, purpose))
        projections = nn.ModuleDict()
        if student_width != teacher_width:
            for student_index, teacher_index in self._hidden_map.items():
                projections[f"{student_index}_to_{teacher_index}"] = nn.Linear(student_width, teacher_width)
        return projections

    def _resolve_layer_map(self, layer_map: dict[int, int] | None, offset: int, name: str) -> dict[int, int]:
        """``layer_map``, checked against both models' layer counts, or the evenly spaced default."""
        if layer_map is None:
            purpose = "the default layer map of hidden_loss_weight > 0 or attention_loss_weight > 0"
            student_layers = _num_layers(_config_of(self._student_base(), purpose))
            teacher_layers = _num_layers(_config_of(self.teacher_model, purpose))
            return evenly_spaced_layer_map(student_layers, teacher_layers, offset)
        for role, config, indices in (
            ("student", getattr(self._student_base(), "config", None), layer_map.keys()),
            ("teacher", getattr(self.teacher_model, "config", None), layer_map.values()),
        ):
            try:
                last = _num_layers(config) - 1 + offset
            except ValueError:
                continue  # unknown layer count: the model's outputs will tell
            outside = sorted(i for i in indices if i > last)
            if outside:
                what = "hidden_states (0 = embeddings)" if offset else "attentions"
                raise ValueError(
                    f"{name}={layer_map}: {role} index {outside} is out of range; the {role}'s "
                    f"outputs.{what} has indices 0..{last}."
                )
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
        num_labels = preset_num_labels(self._label_config)  # e.g. LXMERT's num_qa_labels
        for name, dataset in datasets_.items():
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

    # ---- Batch size counting for exact gradient accumulation ----------------------------------------

    @staticmethod
    def _batch_size(batch: dict[str, Any]) -> int:
        if torch.is_tensor(batch.get("labels")):
            return batch["labels"].shape[0]
        return next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0)

    def _num_labelled(self, batch: dict[str, Any]) -> int:
        """Examples of ``batch`` with a label (:func:`hf_msd.losses.labelled_mask`); 0 without labels."""
        labels = batch.get("labels")
        if not torch.is_tensor(labels):
            return 0
        return int(losses.labelled_mask(labels, self._problem_type(labels)).sum())

    def get_batch_samples(self, epoch_iterator, num_batches: int, device: torch.device):
        """The next ``num_batches`` micro-batches and the number of EXAMPLES in them (summed over processes
        when ``average_tokens_across_devices``), the divisor of :meth:`compute_loss`. The number of LABELLED
        examples among them (counted the same way) is kept for the task term."""
        batch_samples, _ = super().get_batch_samples(epoch_iterator, num_batches, device)
        if not batch_samples:
            return batch_samples, None
        counts = torch.tensor(
            [
                sum(self._batch_size(b) for b in batch_samples),
                sum(self._num_labelled(b) for b in batch_samples),
            ],
            device=device,
        )
        if self.args.average_tokens_across_devices and self.args.world_size > 1:
            counts = self.accelerator.gather(counts).reshape(-1, 2).sum(dim=0)
        count = counts[0]
        self._batch_counts = (count, counts[1])
        return batch_samples, count

    # ---- Loss ----------------------------------------------------------------------------------------

    def _problem_type(self, labels: torch.Tensor | None) -> str:
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

    def loss_components(
        self, model: nn.Module, inputs: dict[str, Any]
    ) -> tuple[dict[str, torch.Tensor], Any]:
        """Weighted per-example loss components and the student's outputs on the full input.

        Returns ``({"task": (B,), "kd": (B,), ...}, student_outputs)``: each value is a float32 ``(B,)``
        tensor already multiplied by its weight; components whose weight is 0 are left out (and "task" when
        the batch has no labels). Subclasses call ``super().loss_components(model, inputs)`` and add their
        own entries; the teacher's logits on the full input are then in ``self._last_teacher_logits``.
        """
        keep_frozen_normalization_in_eval(model)  # frozen BatchNorm statistics must not move
        args = self.args
        labels = inputs.get("labels")
        need_hidden, need_attentions = self._needs_intermediates(None)
        student_inputs = self.student_inputs(inputs)
        if need_hidden:
            student_inputs["output_hidden_states"] = True
        if need_attentions:
            student_inputs["output_attentions"] = True
        outputs = classifier_output(self._student_base(), model(**student_inputs))
        teacher = self.teacher_forward(inputs)
        if outputs.logits.shape != teacher.logits.shape:
            raise ValueError(
                f"Student logits {tuple(outputs.logits.shape)} and teacher logits "
                f"{tuple(teacher.logits.shape)} differ in shape: both models must predict the same labels."
            )
        cached = "cached " if inputs.get(TEACHER_CACHE_PREFIX) is not None else ""
        self.check_finite(f"The {cached}teacher logits", teacher.logits)
        self._last_teacher_logits = teacher.logits.detach()
        problem_type = self._problem_type(labels)
        components: dict[str, torch.Tensor] = {}
        if args.hard_label_weight > 0 and labels is not None:
            components["task"] = args.hard_label_weight * losses.task_loss(
                outputs.logits, labels, problem_type
            )
        if args.kd_loss_weight > 0:
            kd = losses.soft_target_loss(
                outputs.logits,
                teacher.logits,
                problem_type=problem_type,
                temperature=args.temperature,
                loss_type=args.kd_loss_type,
            )
            components["kd"] = args.kd_loss_weight * kd
        mask = inputs.get("attention_mask")
        if need_hidden:
            components["hidden"] = args.hidden_loss_weight * self._hidden_loss(outputs, teacher, mask)
        if need_attentions:
            components["attention"] = args.attention_loss_weight * self._attention_loss(
                outputs, teacher, mask
            )
        return components, outputs

    def _student_tokens(self, teacher_length: int, student_length: int) -> slice:
        """The positions of the teacher's fused sequence that hold the student's modalities.

        A student that takes every modality (or whose sequence is as long as the teacher's) is compared with
        every teacher token. A student that takes fewer modalities (multimodal to unimodal) is compared with
        the teacher's tokens of its own modalities: the fused sequence holds the modalities' tokens in the
        order of ``modalities`` (text first in our model and in ViLT), so the student's tokens are the first
        ``student_length`` positions when its modalities come first, the last ones when they come last.
        """
        if teacher_length == student_length or not self._keys_hidden_from_student:
            return slice(None)
        names, kept = [m.name for m in self.modalities], self.student_modality_names
        if names[: len(kept)] == kept:
            return slice(0, student_length)
        if names[-len(kept) :] == kept:
            return slice(teacher_length - student_length, teacher_length)
        raise ValueError(
            f"Cannot locate the student's modalities {kept} in the teacher's sequence (modalities {names}): "
            "they must be the first or the last ones."
        )

    def _hidden_loss(self, student_outputs, teacher_outputs, mask: torch.Tensor | None) -> torch.Tensor:
        """Mean over mapped layers of the hidden-state loss, (B,). Student and teacher states are compared
        on the teacher's tokens of the student's modalities (:meth:`_student_tokens`), padding left out
        (:func:`token_mask`), token by token or pooled (``hidden_state_pooling``)."""
        pooling = self.args.hidden_state_pooling
        projections = self.training_modules["hidden_projections"]
        per_layer = []
        for student_index, teacher_index in self._hidden_map.items():
            student_hidden = student_outputs.hidden_states[student_index]
            teacher_hidden = teacher_outputs.hidden_states[teacher_index]
            student_mask = token_mask(student_outputs, mask, student_hidden.shape[1])
            teacher_mask = token_mask(teacher_outputs, mask, teacher_hidden.shape[1])
            span = self._student_tokens(teacher_hidden.shape[1], student_hidden.shape[1])
            teacher_hidden = teacher_hidden[:, span]
            teacher_mask = None if teacher_mask is None else teacher_mask[:, span]
            if pooling == "none" and student_hidden.shape[1] != teacher_hidden.shape[1]:
                raise ValueError(
                    f"Student hidden states ({student_hidden.shape[1]} positions) and teacher hidden "
                    f"states ({teacher_hidden.shape[1]}) differ in length: set hidden_state_pooling='mean' "
                    "or 'first'."
                )
            key = f"{student_index}_to_{teacher_index}"
            if key in projections:
                student_hidden = projections[key](student_hidden.to(projections[key].weight.dtype))
            student_hidden = _pool(student_hidden, student_mask, pooling)
            teacher_hidden = _pool(teacher_hidden, teacher_mask, pooling)
            per_layer.append(
                losses.hidden_state_loss(
                    student_hidden,
                    teacher_hidden,
                    attention_mask=student_mask,
                    loss_type=self.args.hidden_loss_type,
                )
            )
        return torch.stack(per_layer).mean(dim=0)

    def _attention_loss(self, student_outputs, teacher_outputs, mask: torch.Tensor | None) -> torch.Tensor:
        """Mean over mapped layers of the attention-map loss, (B,): the teacher's map restricted to the
        student's modalities' tokens (rows and columns, rows renormalised to sum to 1), padded query rows
        left out."""
        per_layer = []
        for outputs, role in ((student_outputs, "student"), (teacher_outputs, "teacher")):
            if not getattr(outputs, "attentions", None):
                raise ValueError(
                    f"The {role} returned no attention maps for attention_loss_weight > 0; load it with "
                    "attn_implementation='eager' (fused kernels cannot return attention probabilities)."
                )
        for student_index, teacher_index in self._attention_map.items():
            student_attn = student_outputs.attentions[student_index]
            teacher_attn = teacher_outputs.attentions[teacher_index]
            span = self._student_tokens(teacher_attn.shape[-1], student_attn.shape[-1])
            if span != slice(None):
                teacher_attn = teacher_attn[..., span, span].float()
                teacher_attn = teacher_attn / teacher_attn.sum(-1, keepdim=True).clamp_min(1e-12)
            per_layer.append(
                losses.attention_map_loss(
                    student_attn,
                    teacher_attn,
                    loss_type=self.args.attention_loss_type,
                    head_reduction=self.args.attention_head_reduction,
                    attention_mask=token_mask(student_outputs, mask, student_attn.shape[-1]),
                )
            )
        return torch.stack(per_layer).mean(dim=0)

    @staticmethod
    def combine_components(
        components: dict[str, torch.Tensor], examples: torch.Tensor | float, labelled: torch.Tensor | float
    ) -> torch.Tensor:
        """``sum(task) / max(labelled, 1) + sum over the other components of sum(c) / examples``: the
        scalar loss from per-example components (each (B,)); see :meth:`compute_loss`."""
        terms = [c.sum() / examples for name, c in components.items() if name != "task"]
        if "task" in components:
            divisor = labelled.clamp_min(1) if torch.is_tensor(labelled) else max(labelled, 1)
            terms.append(components["task"].sum() / divisor)
        return torch.stack(terms).sum()

    def compute_loss(
        self,
        model: nn.Module,
        inputs: dict[str, Any],
        return_outputs: bool = False,
        num_items_in_batch: torch.Tensor | int | None = None,
    ):
        """The training loss of one micro-batch:

            loss = sum_{i labelled} task_i / N_labelled + sum_{c != task} sum_i c_i / N

        where ``c_i`` are the weighted per-example :meth:`loss_components`, ``N`` is ``num_items_in_batch``
        (the examples of the whole accumulated batch, over every process, from :meth:`get_batch_samples`)
        and ``N_labelled`` the labelled examples among them (label != -100; ``max(N_labelled, 1)``, so an
        accumulated batch without any label contributes no task term). Summed over the micro-batches of an
        optimizer step this is exactly the large-batch loss ``mean over labelled examples of task + mean
        over all examples of the other terms``, however the batch is split (a micro-batch without labelled
        examples adds only its distillation terms). Without ``num_items_in_batch`` (evaluation, direct
        calls) ``N`` and ``N_labelled`` are this batch's counts.

        With several processes and a global count, the loss is multiplied by the number of processes to undo
        DDP's gradient averaging, as transformers' default loss does.
        """
        if model.training:
            self._batches_seen += 1
        components, outputs = self.loss_components(model, inputs)
        if not components:
            raise ValueError(
                "No loss component to train on: the batch has no 'labels' and every distillation weight "
                "is 0. Set kd_loss_weight (or another weight) > 0, or provide labels."
            )
        batch_size = next(iter(components.values())).shape[0]
        labelled = self._num_labelled(inputs)
        if num_items_in_batch is None:
            examples, all_labelled = batch_size, labelled
        elif self._batch_counts is not None and num_items_in_batch is self._batch_counts[0]:
            examples, all_labelled = self._batch_counts
        else:  # a caller's own example count: assume this batch's labelled fraction
            examples, all_labelled = num_items_in_batch, num_items_in_batch * labelled / batch_size
        loss = self.combine_components(components, examples, all_labelled)
        if (
            num_items_in_batch is not None
            and self.args.average_tokens_across_devices
            and self.args.world_size > 1
        ):
            loss = loss * self.accelerator.num_processes
        self.check_finite("The training loss" if model.training else "The evaluation loss", loss)
        if model.training:
            self._accumulate_logs(components, batch_size, labelled)
        elif self._eval_agreement is not None:
            self._record_agreement(outputs.logits, self._last_teacher_logits)
        return (loss, outputs) if return_outputs else loss

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

    # ---- Model card ----------------------------------------------------------------------------------

    def create_model_card(self, **kwargs: Any) -> None:
        """Write hf_msd's model card of this run to ``<output_dir>/README.md`` (``push_to_hub`` calls this
        and uploads it): teacher, method and its weights, sizes, the last evaluation, the saliency plot and
        citations; see :func:`hf_msd.hub.trainer_model_card` for what is read and which keywords it takes
        (those of `Trainer.create_model_card`, plus ``evaluation`` with per-modality results)."""
        from ..hub import trainer_model_card

        if self.is_world_process_zero():
            trainer_model_card(self, **kwargs).save(os.path.join(self.args.output_dir, "README.md"))

    # ---- Logging and evaluation ------------------------------------------------------------------------

    def _accumulate_logs(self, components: dict[str, torch.Tensor], batch_size: int, labelled: int) -> None:
        for name, value in components.items():
            value = value.detach().sum()
            self._log_sums[name] = self._log_sums.get(name, torch.zeros_like(value)) + value
        self._log_count = self._log_count + batch_size
        self._log_labelled = self._log_labelled + labelled

    def log(self, logs: dict[str, float], start_time: float | None = None) -> None:
        """Add the mean of each loss component over the logging window (``<name>_loss``) to training logs:
        ``task_loss`` over the labelled examples, the others over all examples."""
        if "loss" in logs and self._log_sums:
            names = sorted(self._log_sums)
            counts = [self._log_count.float(), self._log_labelled.float()]
            sums = torch.stack([self._log_sums[name] for name in names] + counts)
            sums = self.accelerator.reduce(sums, reduction="sum")
            for name, value in zip(names, sums[:-2]):
                count = sums[-1] if name == "task" else sums[-2]
                logs[f"{name}_loss"] = (value / count.clamp_min(1)).item()
            self._log_sums = {}
            self._log_count = torch.zeros_like(self._log_count)
            self._log_labelled = torch.zeros_like(self._log_labelled)
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
