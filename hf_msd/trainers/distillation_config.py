"""Training arguments of :class:`~hf_msd.trainers.DistillationTrainer`."""

from __future__ import annotations

import dataclasses
import json
import math
from dataclasses import dataclass, field
from typing import Any, ClassVar, TypeVar

from transformers import TrainingArguments

from ..distillation import losses
from ..distillation.divergences import check_beta

HIDDEN_STATE_POOLINGS = ("none", "mean", "first")
ATTENTION_HEAD_REDUCTIONS = ("mean", "match")


def _layer_map(name: str, value: Any) -> dict[int, int] | None:
    """Normalise a layer map given as a dict, a JSON string (from the CLI) or a list of pairs to
    ``{student_index: teacher_index}`` with int keys and values."""
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = json.loads(value)
        except json.JSONDecodeError as error:
            raise ValueError(f"{name} must be a JSON object like '{{\"2\": 4}}', got {value!r}.") from error
    pairs = value.items() if isinstance(value, dict) else value
    try:
        mapping = {int(student): int(teacher) for student, teacher in pairs}
    except (TypeError, ValueError) as error:
        raise ValueError(
            f"{name} must map student layer indices to teacher layer indices, e.g. {{2: 4}}; got {value!r}."
        ) from error
    if not mapping:
        raise ValueError(f"{name} is empty; leave it as None for the default evenly spaced map.")
    if any(index < 0 for pair in mapping.items() for index in pair):
        raise ValueError(f"{name} indices must be >= 0, got {mapping}.")
    return mapping


_Args = TypeVar("_Args", bound="DistillationTrainingArguments")
_COMBINED: dict[tuple[type, type], type] = {}


def _combined_class(cls: type, other: type) -> type:
    """A dataclass deriving from ``cls`` and ``other``, a module attribute so that pickling finds it (the
    Trainer saves its arguments with every checkpoint)."""
    name = f"{cls.__name__}With{other.__name__}"
    while name in globals():
        name += "_"
    combined = dataclass(type(name, (cls, other), {"__module__": __name__, "__qualname__": name}))
    globals()[name] = combined
    return combined


def check_weight(name: str, value: float) -> None:
    """Raise a ValueError naming ``name`` unless ``value`` is a finite number >= 0 (NaN compares False with
    everything, so ``value < 0`` alone would let it through and silently switch a loss term off)."""
    if not (isinstance(value, (int, float)) and math.isfinite(value) and value >= 0):
        raise ValueError(f"{name} must be a finite number >= 0, got {value!r}.")


def check_on_policy(args: DistillationTrainingArguments) -> None:
    """Raise a ValueError naming the field unless the on-policy settings are in range: ``lmbda`` in [0, 1],
    ``max_new_tokens`` an integer >= 1, ``generation_temperature`` finite and > 0."""
    if not (isinstance(args.lmbda, (int, float)) and 0.0 <= args.lmbda <= 1.0):
        raise ValueError(f"lmbda must be in [0, 1] (the share of on-policy steps), got {args.lmbda!r}.")
    if (
        isinstance(args.max_new_tokens, bool)
        or not isinstance(args.max_new_tokens, int)
        or args.max_new_tokens < 1
    ):
        raise ValueError(f"max_new_tokens must be an integer >= 1, got {args.max_new_tokens!r}.")
    temperature = args.generation_temperature
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"generation_temperature must be a finite number > 0, got {temperature!r}.")


@dataclass
class DistillationTrainingArguments(TrainingArguments):
    """`TrainingArguments` plus the knowledge-distillation settings of `DistillationTrainer`.

    The training loss per example is
    ``hard_label_weight * task + kd_loss_weight * kd + hidden_loss_weight * hidden
    + attention_loss_weight * attention``, averaged over the examples of the whole accumulated batch. See
    :mod:`hf_msd.distillation.losses` for each term (and why the KL term is multiplied by ``temperature**2``).
    """

    _VALID_DICT_FIELDS = [
        *TrainingArguments._VALID_DICT_FIELDS,
        "teacher_model_init_kwargs",
        "hidden_layer_map",
        "attention_layer_map",
    ]

    remove_unused_columns: bool = field(
        default=False,
        metadata={
            "help": "Drop the dataset columns the student's forward does not take. Off by default (as in "
            "TRL's configs): cached teacher outputs, teacher inputs and modality keys must reach the trainer."
        },
    )
    temperature: float = field(
        default=2.0,
        metadata={"help": "Temperature T (> 0) of the soft-target loss; the KL term is scaled by T^2."},
    )
    hard_label_weight: float = field(
        default=0.5, metadata={"help": "Weight (>= 0) of the student's supervised loss on the gold labels."}
    )
    kd_loss_weight: float = field(
        default=0.5,
        metadata={"help": "Weight (>= 0) of the soft-target loss between student and teacher outputs."},
    )
    kd_loss_type: str = field(
        default="kl",
        metadata={
            "help": "Soft-target loss: 'kl' (temperature-scaled KL; per-label binary KL for multi-label) or "
            "'mse' on logits, or any name registered with "
            "hf_msd.distillation.losses.register_loss('soft_target', name). "
            "Regression always uses the MSE to the teacher's output."
        },
    )
    beta: float = field(
        default=0.0,
        metadata={
            "help": "Divergence of kd_loss_type 'kl', in [0, 1], as TRL's GKD and DistillationTrainer define "
            "it: 0 forward KL(teacher || student), 1 reverse KL(student || teacher), in between the "
            "generalized Jensen-Shannon divergence with mixture beta * teacher + (1 - beta) * student. "
            "Scaled by T^2 (TRL's is not)."
        },
    )
    hidden_loss_weight: float = field(
        default=0.0, metadata={"help": "Weight (>= 0) of hidden-state distillation; 0 turns it off."}
    )
    hidden_layer_map: dict | str | None = field(
        default=None,
        metadata={
            "help": "Student -> teacher indices into `outputs.hidden_states` (0 = embeddings), e.g. "
            "'{\"2\": 4}'. Default: each student layer to the evenly spaced teacher layer, last to last."
        },
    )
    hidden_loss_type: str = field(
        default="mse", metadata={"help": "Hidden-state loss: 'mse' or 'cosine' (or a registered name)."}
    )
    hidden_state_pooling: str = field(
        default="none",
        metadata={
            "help": "How to compare hidden states: 'none' token by token (sequence lengths must match), "
            "'mean' (masked mean over tokens) or 'first' (first token, e.g. [CLS])."
        },
    )
    attention_loss_weight: float = field(
        default=0.0, metadata={"help": "Weight (>= 0) of attention-map distillation; 0 turns it off."}
    )
    attention_layer_map: dict | str | None = field(
        default=None,
        metadata={
            "help": "Student -> teacher indices into `outputs.attentions`, e.g. '{\"1\": 3}'. Default: "
            "evenly spaced, last to last."
        },
    )
    attention_loss_type: str = field(
        default="kl", metadata={"help": "Attention-map loss: 'kl' or 'mse' (or a registered name)."}
    )
    attention_head_reduction: str = field(
        default="mean",
        metadata={"help": "'mean' averages each model's heads first; 'match' compares head i with head i."},
    )
    teacher_model_init_kwargs: dict | str | None = field(
        default=None,
        metadata={
            "help": "Keyword arguments for AutoModelForSequenceClassification.from_pretrained when the "
            "teacher is given as a path."
        },
    )
    lmbda: float = field(
        default=0.0,
        metadata={
            "help": "On-policy share, in [0, 1], as TRL's GKD `lmbda`: with this probability per optimizer "
            "step (seeded by `seed` and the step, the same draw on every process), a generative (causal LM) "
            "student generates each example's answer from the x prompt and the distillation terms (KD and "
            "every MSD view) score those tokens instead of the collated answers; the task term keeps the "
            "gold answers. 0 (default): off-policy only. Not with cached teacher outputs."
        },
    )
    max_new_tokens: int = field(
        default=128,
        metadata={"help": "Longest on-policy answer (>= 1) the student generates (TRL's `max_new_tokens`)."},
    )
    generation_do_sample: bool = field(
        default=False,
        metadata={
            "help": "On-policy answers sampled (True, at generation_temperature, no top-k / top-p) or greedy "
            "(False, default). TRL's GKD always samples (do_sample=True, top_k=0)."
        },
    )
    generation_temperature: float = field(
        default=1.0,
        metadata={
            "help": "Sampling temperature (> 0) of the on-policy answers when generation_do_sample (TRL's "
            "GKD calls it `temperature`). The distillation loss uses `temperature` (the KD one), not this."
        },
    )

    #: The weights of the loss terms: each is checked (finite, >= 0), and not all of them may be 0.
    loss_weight_names: ClassVar[tuple[str, ...]] = (
        "hard_label_weight",
        "kd_loss_weight",
        "hidden_loss_weight",
        "attention_loss_weight",
    )

    @classmethod
    def coerce(cls: type[_Args], args: TrainingArguments | None) -> _Args:
        """``args`` as ``cls``: its defaults for ``None`` (as `Trainer` does, with
        ``output_dir="trainer_output"``), a `TrainingArguments` converted keeping every field
        (:meth:`from_training_arguments`); anything else is refused."""
        if args is None:
            return cls(output_dir="trainer_output")
        if isinstance(args, cls):
            return args
        if not isinstance(args, TrainingArguments):
            raise TypeError(
                f"args must be a TrainingArguments (ideally a {cls.__name__}), got {type(args).__name__}."
            )
        return cls.from_training_arguments(args)

    @classmethod
    def from_training_arguments(cls: type[_Args], args: TrainingArguments, **overrides: Any) -> _Args:
        """``args`` (any `TrainingArguments`) as ``cls``, keeping every field it has, plus ``overrides``.

        A plain `TrainingArguments` becomes ``cls``; a subclass with its own fields becomes a class deriving
        from both (so ``isinstance(result, type(args))`` holds and its extra fields are kept). The
        distillation fields take their defaults unless given in ``overrides``. This is how the trainers
        accept the arguments of a project that trained with `transformers.Trainer`.
        """
        if isinstance(args, cls):
            return dataclasses.replace(args, **overrides) if overrides else args
        target = cls
        if type(args) is not TrainingArguments:
            key = (cls, type(args))
            if key not in _COMBINED:
                _COMBINED[key] = _combined_class(cls, type(args))
            target = _COMBINED[key]
        values = {f.name: getattr(args, f.name) for f in dataclasses.fields(args) if f.init}
        return target(**{**values, **overrides})

    def __post_init__(self):
        super().__post_init__()
        check_weight("learning_rate", self.learning_rate)  # transformers accepts NaN, inf and negatives
        if not (self.temperature > 0 and math.isfinite(self.temperature)):
            raise ValueError(f"temperature must be a finite number > 0, got {self.temperature}.")
        weights = self.loss_weight_names
        for name in weights:
            check_weight(name, getattr(self, name))
        if all(getattr(self, name) == 0 for name in weights):
            raise ValueError(f"All loss weights ({', '.join(weights)}) are 0: set at least one of them > 0.")
        check_beta(self.beta)
        if self.beta and self.kd_loss_type != "kl":
            raise ValueError(
                f"beta={self.beta} selects a divergence of kd_loss_type='kl', but kd_loss_type is "
                f"{self.kd_loss_type!r}: set kd_loss_type='kl' or beta=0."
            )
        for name, registry in (
            ("kd_loss_type", losses.SOFT_TARGET_LOSSES),
            ("hidden_loss_type", losses.HIDDEN_STATE_LOSSES),
            ("attention_loss_type", losses.ATTENTION_MAP_LOSSES),
        ):
            if getattr(self, name) not in registry:
                raise ValueError(
                    f"{name}={getattr(self, name)!r} is unknown; choose one of {sorted(registry)}."
                )
        for name, choices in (
            ("hidden_state_pooling", HIDDEN_STATE_POOLINGS),
            ("attention_head_reduction", ATTENTION_HEAD_REDUCTIONS),
        ):
            if getattr(self, name) not in choices:
                raise ValueError(f"{name}={getattr(self, name)!r} is unknown; choose one of {choices}.")
        self.hidden_layer_map = _layer_map("hidden_layer_map", self.hidden_layer_map)
        self.attention_layer_map = _layer_map("attention_layer_map", self.attention_layer_map)
        if self.teacher_model_init_kwargs is not None and not isinstance(
            self.teacher_model_init_kwargs, dict
        ):
            raise ValueError(
                "teacher_model_init_kwargs must be a dict (or a JSON object string), "
                f"got {self.teacher_model_init_kwargs!r}."
            )
        check_on_policy(self)
