"""The teacher-student pair, resolved once when a trainer is built (:func:`resolve_pair`).

:class:`DistillationPair` is a frozen description of what the loss needs to know about the two models:
their modality specs and which of them the student takes, the token level of the student, the label space's
config and its problem type (when the config fixes it), the layer maps of the intermediate losses and the
attention implementation they need. Building it checks the pair (label spaces, vocabularies, modality names,
layer maps) and raises a ValueError naming the field and the fix.
"""

from __future__ import annotations

import inspect
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from transformers.models.auto.modeling_auto import (
    MODEL_FOR_CAUSAL_LM_MAPPING_NAMES,
    MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES,
    MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES,
)
from transformers.utils import logging

from ..architectures import default_modalities, get_architecture
from ..architectures import num_labels as architecture_num_labels
from ..data.generative import DISTILLATION_LABELS
from ..distillation import intermediate_losses, losses
from ..modalities.modality import Modality
from .distillation_config import DistillationTrainingArguments

logger = logging.get_logger(__name__)


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


def config_of(model: nn.Module, purpose: str):
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
    implementation = getattr(config_of(model, "attention_loss_weight > 0"), "_attn_implementation", None)
    if implementation not in (None, "eager") and hasattr(model, "set_attn_implementation"):
        logger.warning(
            f"attention_loss_weight > 0 needs attention maps: switching the {role} from {implementation!r} "
            "to 'eager' attention (load it with attn_implementation='eager' to silence this)."
        )
        model.set_attn_implementation("eager")


def token_level_of(student: nn.Module, loss_shifts_labels: bool) -> str | None:
    """``"causal"`` for a causal LM student (its logits at position t predict the label at t + 1; also any
    model whose loss shifts the labels), ``"tokens"`` for a token classifier, ``None`` for a sequence-level
    model (logits (B, C))."""
    name = type(student).__name__
    if loss_shifts_labels or name in MODEL_FOR_CAUSAL_LM_MAPPING_NAMES.values():
        return "causal"
    if name in MODEL_FOR_TOKEN_CLASSIFICATION_MAPPING_NAMES.values():
        return "tokens"
    return None


def _resolve_layer_map(
    layer_map: Mapping[int, int] | None, offset: int, name: str, student: nn.Module, teacher: nn.Module
) -> dict[int, int]:
    """``layer_map``, checked against both models' layer counts, or the evenly spaced default."""
    if layer_map is None:
        purpose = "the default layer map of hidden_loss_weight > 0 or attention_loss_weight > 0"
        return intermediate_losses.evenly_spaced_layer_map(
            intermediate_losses.num_layers(config_of(student, purpose)),
            intermediate_losses.num_layers(config_of(teacher, purpose)),
            offset,
        )

    def layers(model: nn.Module) -> int | None:
        try:
            return intermediate_losses.num_layers(getattr(model, "config", None))
        except ValueError:
            return None  # unknown layer count: the model's outputs will tell

    intermediate_losses.check_layer_map(layer_map, name, offset, layers(student), layers(teacher))
    return dict(layer_map)


@dataclass(frozen=True)
class DistillationPair:
    """What the loss needs to know about a teacher and its student, fixed when the trainer is built.

    Attributes:
        modalities: the student's modality spec (the batch's modalities as the student sees them).
        teacher_modalities: the teacher's spec; its names are the modality set.
        student_modality_names: the teacher's modality names the student takes, in the teacher's order.
        keys_hidden_from_student: batch keys of the modalities the student does not take.
        token_level: ``"causal"``, ``"tokens"`` or ``None`` (:func:`token_level_of`).
        label_config: the config defining the label space (the student's, else the teacher's).
        problem_type: the label config's problem type when it fixes one (``problem_type`` set, or one
            label: regression), else ``None``: then each batch's labels decide (:meth:`problem_type_of`).
        hidden_map, attention_map: ``{student layer: teacher layer}`` of the intermediate losses (empty
            when off).
        unimodal_student: whether the student's config declares one modality.
        student_takes_labels: whether the student computes its own task loss from ``labels`` (a model that
            takes labels, other than the sequence classifiers whose task term the library computes: a
            registered architecture or a transformers ``*ForSequenceClassification``).
    """

    modalities: tuple[Modality, ...]
    teacher_modalities: tuple[Modality, ...]
    student_modality_names: tuple[str, ...]
    keys_hidden_from_student: frozenset[str]
    token_level: str | None
    label_config: Any
    problem_type: str | None
    hidden_map: Mapping[int, int] = field(default_factory=dict)
    attention_map: Mapping[int, int] = field(default_factory=dict)
    unimodal_student: bool = False
    student_takes_labels: bool = False

    def problem_type_of(self, labels: torch.Tensor | None) -> str:
        """The problem type of a batch with ``labels``: single-label for a token-level student, else the
        config's, else as transformers' heads infer it from the labels
        (:func:`~hf_msd.distillation.losses.resolve_problem_type`). Raises for class-id labels of a
        multi-label model."""
        if self.token_level:
            return losses.SINGLE_LABEL
        problem_type = self.problem_type or losses.resolve_problem_type(self.label_config, labels)
        if problem_type == losses.MULTI_LABEL and labels is not None and labels.dim() == 1:
            raise ValueError(
                f"The model is multi-label (problem_type={losses.MULTI_LABEL!r}) but the labels are one "
                "class id per example, shape (B,): give each example a list of class ids and collate them "
                "with MultimodalDataCollator.from_model(model, processor) (multi-hot (B, num_labels)), or "
                "set problem_type='single_label_classification' on both models."
            )
        return problem_type

    def answer_labels(self, batch: dict) -> torch.Tensor | None:
        """The tokens whose answer-only logits (:func:`~hf_msd.targets.answer_logits`, (N, V)) a causal
        student and its teacher compute instead of logits at every position: the batch's
        ``distillation_labels`` (B, T) (a :class:`~hf_msd.data.VisionLanguageCollator`'s answer tokens);
        ``None`` for another model or batch."""
        labels = batch.get(DISTILLATION_LABELS)
        return labels if self.token_level == "causal" and torch.is_tensor(labels) else None

    def student_span(self, teacher_length: int, student_length: int) -> slice:
        """The teacher's tokens of the student's modalities
        (:func:`~hf_msd.distillation.intermediate_losses.student_token_span`); every token when it takes them
        all."""
        if not self.keys_hidden_from_student:
            return slice(None)
        return intermediate_losses.student_token_span(
            teacher_length,
            student_length,
            [m.name for m in self.modalities],
            list(self.student_modality_names),
        )


def resolve_pair(
    student: nn.Module,
    teacher: nn.Module,
    args: DistillationTrainingArguments,
    modalities: Sequence[Modality] | None = None,
    teacher_modalities: Sequence[Modality] | None = None,
    loss_shifts_labels: bool = False,
) -> DistillationPair:
    """Check ``student`` (without its PEFT wrapper) and ``teacher`` against each other and ``args`` and
    describe the pair; switches both to eager attention when ``attention_loss_weight > 0`` needs the maps.
    ``modalities`` / ``teacher_modalities`` as for :class:`~hf_msd.trainers.DistillationTrainer`;
    ``loss_shifts_labels``: whether the student's loss is a causal-LM loss (`Trainer` finds out)."""
    token_level = token_level_of(student, loss_shifts_labels)
    student_config = getattr(student, "config", None)  # None for a plain nn.Module student
    if student_config is not None and getattr(teacher, "config", None) is not None:
        check_label_spaces(student_config, teacher.config)
        if token_level:
            check_vocabularies(student_config, teacher.config)
    student_spec, teacher_spec = _modality_specs(teacher, student, modalities, teacher_modalities)
    names = [modality.name for modality in teacher_spec]
    declared = getattr(student_config, "modalities", None)
    own = {modality.name for modality in student_spec}
    student_names = [name for name in names if name in own and (declared is None or name in declared)]
    if names and not student_names:
        raise ValueError(
            f"The student's config.modalities={declared} shares no modality with modalities="
            f"{names}: name the Modality after the student's modality."
        )
    own_keys = {key for m in student_spec if m.name in student_names for key in m.all_keys}
    hidden_keys = {
        key
        for m in (*student_spec, *teacher_spec)
        if m.name not in student_names
        for key in m.all_keys
        if key not in own_keys
    }
    label_config = student_config if student_config is not None else getattr(teacher, "config", None)
    fixed = (
        getattr(label_config, "problem_type", None) is not None or getattr(label_config, "num_labels", 2) == 1
    )
    config_type = losses.resolve_problem_type(label_config) if fixed else None
    hidden_map = attention_map = {}
    if args.hidden_loss_weight > 0:
        hidden_map = _resolve_layer_map(args.hidden_layer_map, 1, "hidden_layer_map", student, teacher)
    if args.attention_loss_weight > 0:
        attention_map = _resolve_layer_map(
            args.attention_layer_map, 0, "attention_layer_map", student, teacher
        )
        for role, network in (("student", student), ("teacher", teacher)):
            _use_eager_attention(role, network)
    return DistillationPair(
        modalities=tuple(student_spec),
        teacher_modalities=tuple(teacher_spec),
        student_modality_names=tuple(student_names),
        keys_hidden_from_student=frozenset(hidden_keys),
        token_level=token_level,
        label_config=label_config,
        problem_type=config_type,
        hidden_map=hidden_map,
        attention_map=attention_map,
        unimodal_student=declared is not None and len(declared) == 1,
        student_takes_labels=_takes_labels(student),
    )


def _takes_labels(student: nn.Module) -> bool:
    """Whether ``student`` computes its own task loss (see :attr:`DistillationPair.student_takes_labels`)."""
    if get_architecture(student) is not None or (
        type(student).__name__ in MODEL_FOR_SEQUENCE_CLASSIFICATION_MAPPING_NAMES.values()
    ):
        return False
    parameters = inspect.signature(student.forward).parameters
    return "labels" in parameters or any(p.kind == p.VAR_KEYWORD for p in parameters.values())


def projections(student: nn.Module, teacher: nn.Module, pair: DistillationPair) -> nn.ModuleDict:
    """The hidden-state projections of ``pair.hidden_map``, from the student's width to the teacher's
    (:func:`~hf_msd.distillation.intermediate_losses.build_projections`)."""
    purpose = "hidden_loss_weight > 0 (projection widths)"
    return intermediate_losses.build_projections(
        intermediate_losses.config_width(config_of(student, purpose)),
        intermediate_losses.config_width(config_of(teacher, purpose)),
        pair.hidden_map,
    )
