"""The frozen teacher of a distillation trainer: its preparation, its context, its passes and cached outputs.

:func:`prepare_teacher` places the teacher as accelerate prescribes for a model that is only evaluated
(DeepSpeed inference engine, ``prepare_model(evaluation_mode=True)``, or left on its ``device_map``).
:class:`Teacher` runs it: under ``torch.no_grad()``, in eval mode, with the student's autocast and, when it is
the base model of a PEFT student, with the adapters disabled; on the whole input ``x``, on each modality-only
input ``x_m`` (one concatenated call per group of same-shaped inputs, :func:`batched_logits`) or on a
generative student's views; or reads its cached logits from the batch instead.
"""

from __future__ import annotations

import contextlib
import copy
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import torch
from accelerate.utils import is_peft_model
from torch import nn
from transformers import AutoModelForSequenceClassification
from transformers.modeling_outputs import SequenceClassifierOutput
from transformers.utils import logging

from ..architectures import classifier_output
from ..architectures import num_labels as architecture_num_labels
from ..data.generative import view_inputs
from ..modalities.modality import remove, restrict
from ..targets import answer_outputs
from ..teacher_outputs.cache import (
    TEACHER_LOGITS,
    answer_labels_column,
    batch_cached_answer_logits,
    batch_cached_logits,
    has_cached_column,
    teacher_column,
)
from .pair import DistillationPair

logger = logging.get_logger(__name__)


def frozen_copy(model: nn.Module) -> nn.Module:
    """Self-distillation: a plain model passed as its own teacher is distilled from a frozen deep copy of its
    weights at construction (the student trains; the copy never moves)."""
    try:
        teacher = copy.deepcopy(model)
    except Exception as error:
        raise ValueError(
            f"teacher_model is the student itself ({type(model).__name__}), whose weights cannot be copied "
            f"to make a frozen teacher ({type(error).__name__}: {error}): pass a separately loaded "
            "teacher_model."
        ) from error
    logger.info("teacher_model is the student: distilling from a frozen copy of its initial weights.")
    return teacher


def load_teacher(
    model: nn.Module | None, teacher_model: nn.Module | str | None, init_kwargs: dict | None = None
) -> nn.Module:
    """The teacher of student ``model``: ``teacher_model`` itself, loaded from a path (with
    ``AutoModelForSequenceClassification`` and ``init_kwargs``), the adapter-free base of a PEFT student
    passed as its own teacher, or a frozen copy of a plain student passed as its own teacher
    (:func:`frozen_copy`). Refuses a missing teacher and one with weights on the meta device."""
    if teacher_model is None:
        raise ValueError("teacher_model is required: pass a PreTrainedModel or a path to one.")
    if isinstance(teacher_model, str):
        teacher_model = AutoModelForSequenceClassification.from_pretrained(
            teacher_model, **(init_kwargs or {})
        )
    if teacher_model is model and is_peft_model(model):
        logger.warning(
            "The PEFT model itself was passed as teacher_model: distilling from its adapter-free base "
            "model (model.get_base_model()) into the adapters."
        )
        teacher_model = model.get_base_model()
    elif teacher_model is model:
        teacher_model = frozen_copy(model)
    meta = [name for name, p in teacher_model.named_parameters() if p.device.type == "meta"][:3]
    if meta:
        raise ValueError(
            f"teacher_model has weights on the meta device (e.g. {meta}): they hold no values. Load the "
            "teacher with its weights (from_pretrained without device_map='meta' / init_empty_weights)."
        )
    return teacher_model


def _deepspeed_inference_engine(model: nn.Module, accelerator) -> nn.Module:
    """``model`` as a DeepSpeed engine for evaluation only, from the student's DeepSpeed config: ZeRO-3
    partitions its parameters over the processes, other stages keep a full copy (stage 0); no optimizer."""
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


def prepare_teacher(teacher: nn.Module, accelerator, deepspeed: bool) -> nn.Module:
    """Place the frozen teacher as accelerate prescribes for a model that is only evaluated.

    - DeepSpeed: its own inference engine, partitioned across processes under ZeRO-3 (as the student's
      config shards), plainly replicated under ZeRO-0/1/2; never given an optimizer.
    - Otherwise (one process, DDP, FSDP): ``accelerator.prepare_model(teacher, evaluation_mode=True)``:
      placed on the device, replicated, never wrapped for gradient synchronisation or sharding.
    - A teacher loaded with a ``device_map`` (``hf_device_map``) is left where it is.
    """
    if getattr(teacher, "hf_device_map", None) is not None:
        return teacher
    if deepspeed:
        return _deepspeed_inference_engine(teacher, accelerator)
    return accelerator.prepare_model(teacher, evaluation_mode=True).eval()


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


class Teacher:
    """The frozen, prepared teacher of one trainer.

    Args:
        model: the prepared teacher (:func:`prepare_teacher`), or the student's PEFT base.
        pair: the resolved pair (modalities, token level, the intermediate losses' layer maps).
        accelerator: the trainer's (its autocast).
        inputs: the teacher's view of a batch (``DistillationTrainer.teacher_inputs``).
        check: raises when a tensor holds NaN or inf (``DistillationTrainer.check_finite``).
        device: where cached logits are placed.
        peft_student: when ``model`` is the student's PEFT base, a callable returning the PEFT student, whose
            adapters are disabled during the teacher's passes.
    """

    def __init__(
        self,
        model: nn.Module,
        pair: DistillationPair,
        accelerator,
        inputs: Callable[[dict[str, Any]], dict[str, Any]],
        check: Callable[[str, torch.Tensor], None],
        device: torch.device | str,
        peft_student: Callable[[], nn.Module] | None = None,
    ) -> None:
        self.model, self.pair, self.accelerator = model, pair, accelerator
        self.inputs, self.check, self.device, self.peft_student = inputs, check, device, peft_student
        #: Run ``x_m`` from the full pass's tower outputs (:meth:`reused_logits`); set by ``MSDTrainer``.
        self.tower_reuse = False

    @property
    def needs_intermediates(self) -> bool:
        """Whether the hidden-state or attention losses need the teacher's intermediate outputs."""
        return bool(self.pair.hidden_map) or bool(self.pair.attention_map)

    @contextlib.contextmanager
    def context(self) -> Iterator[None]:
        """No grad, eval mode, the student's autocast; adapters off when the teacher is the PEFT base."""
        shared = self.peft_student is not None
        was_training = self.model.training
        self.model.eval()  # guards against a train() toggle since the last call
        with contextlib.ExitStack() as stack:
            stack.enter_context(torch.no_grad())
            stack.enter_context(self.accelerator.autocast())
            if shared:
                stack.enter_context(self.peft_student().disable_adapter())
            try:
                yield
            finally:
                if shared:  # eval() on the shared base also switched the student's modules
                    self.model.train(was_training)

    def forward(self, batch: dict[str, Any], output_intermediates: bool | None = None):
        """The teacher's outputs on its view of ``batch`` (labels and cached columns removed). With
        ``output_intermediates`` (default: whether the hidden / attention losses are on) it also returns
        ``hidden_states`` / ``attentions``."""
        teacher_inputs = self.inputs(batch)
        if output_intermediates is not False:
            if self.pair.hidden_map:
                teacher_inputs["output_hidden_states"] = True
            if self.pair.attention_map:
                teacher_inputs["output_attentions"] = True
        answers = self.pair.answer_labels(batch)
        with self.context():
            if answers is not None:  # answer-only logits (N, V)
                return answer_outputs(self.model, teacher_inputs, answers)
            return classifier_output(self.model, self.model(**teacher_inputs))

    def cached_logits(self, batch: dict[str, Any], column: str = TEACHER_LOGITS) -> torch.Tensor | None:
        """The batch's cached teacher logits ``column`` on the trainer's device; ``None`` if not cached.

        A classifier's are dense (B, num_labels) (top-k columns expanded by
        :func:`~hf_msd.teacher_outputs.cache.batch_cached_logits`); a generative teacher's are its answer-only
        logits on the column's input (``x`` or a view), (N, vocab_size), one row per answer token
        (:func:`~hf_msd.teacher_outputs.cache.batch_cached_answer_logits`)."""
        if self.pair.token_level == "causal":
            labels = batch.get(answer_labels_column(column))
            if labels is None:  # batches of a causal LM without the collator's answer columns
                return None
            # The prepared teacher may be a DeepSpeed engine, whose own `config` is its DeepSpeed settings.
            vocab_size = self.accelerator.unwrap_model(self.model).config.get_text_config().vocab_size
            logits = batch_cached_answer_logits(batch, column, labels, vocab_size)
        else:
            logits = batch_cached_logits(batch, column, architecture_num_labels(self.model))
        return None if logits is None else logits.to(self.device)

    def outputs(self, batch: dict[str, Any]) -> dict[str, Any]:
        """``{"full": the teacher's outputs on the whole input}``: its cached logits when the batch has them
        and no intermediate outputs are needed, else a pass (:meth:`forward`)."""
        cached = None if self.needs_intermediates else self.cached_logits(batch)
        full = SequenceClassifierOutput(logits=cached) if cached is not None else self.forward(batch)
        self.check(f"The {'cached ' if cached is not None else ''}teacher logits", full.logits)
        return {"full": full}

    def modality_logits(
        self, batch: dict[str, Any], names: Sequence[str], without: bool
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        """A classifier teacher's logits on ``x_m`` for each modality in ``names`` and, with ``without``,
        on each ``x without m`` (with two modalities that is the other ``x_m``); also on ``x`` unless cached
        or needed with intermediates (then the caller's :meth:`outputs` runs it). Cached columns are read
        first; the passes run as one concatenated call per group of same-shaped inputs.

        Returns ``(only, extra)``: modality name -> (B, C), and ``{"full"?: (B, C), "without"?: [(B, C)]}``
        (``without`` in the order of the teacher's modalities)."""
        spec = self.pair.teacher_modalities
        teacher_batch = self.inputs(batch)
        all_names = [m.name for m in spec]
        only: dict[str, torch.Tensor] = {}
        pending: list[tuple[str, dict]] = []
        results_cached: dict[str, torch.Tensor] = {}
        for name in names:
            cached = self.cached_logits(batch, teacher_column(name))
            if cached is not None:
                only[name] = cached
            else:
                pending.append((f"only:{name}", restrict(teacher_batch, spec, name)))
        # Cached full-input logits are read by outputs(); only their presence matters here.
        if not has_cached_column(list(batch), teacher_column()) and not self.needs_intermediates:
            pending.append(("full", teacher_batch))
        if without and len(spec) > 2:
            for n in all_names:
                cached = self.cached_logits(batch, teacher_column(n, without=True))
                if cached is not None:
                    results_cached[f"without:{n}"] = cached
                else:
                    pending.append((f"without:{n}", remove(teacher_batch, spec, n)))

        def run(teacher_inputs):
            with self.context():
                return classifier_output(self.model, self.model(**teacher_inputs)).logits

        results = self.reused_logits(teacher_batch, [key for key, _ in pending]) if self.tower_reuse else {}
        pending = [(key, b) for key, b in pending if key not in results]
        results.update(zip([key for key, _ in pending], batched_logits(run, [b for _, b in pending])))
        results.update(results_cached)
        only.update({key[len("only:") :]: value for key, value in results.items() if key.startswith("only:")})
        for name, logits in only.items():
            self.check(f"The teacher logits on the {name}-only input", logits)
        extra: dict[str, Any] = {}
        if "full" in results:
            extra["full"] = results["full"]
        if without:
            extra["without"] = (
                [only[all_names[1]], only[all_names[0]]]
                if len(all_names) == 2
                else [results[f"without:{n}"] for n in all_names]
            )
        return only, extra

    def reused_logits(self, teacher_batch: dict[str, Any], keys: Sequence[str]) -> dict[str, torch.Tensor]:
        """Tower reuse: when ``keys`` (of :meth:`modality_logits`) hold ``"full"`` and some ``"only:<m>"``,
        one pass on ``x`` returning its towers' outputs, then only the fusion and head for each ``x_m``
        (``tower_outputs={m: ...}``, equal to the pass on ``x_m``). Returns those keys -> (B, C); ``{}``
        otherwise (the full input cached or run elsewhere, or no view needed)."""
        views = [key.removeprefix("only:") for key in keys if key.startswith("only:")]
        if "full" not in keys or not views:
            return {}
        with self.context():
            full = self.model(**teacher_batch, return_tower_outputs=True)
            towers = full.tower_outputs
            logits = {"full": classifier_output(self.model, full).logits}
            for name in views:
                view = self.model(tower_outputs={name: towers[name]})
                logits[f"only:{name}"] = classifier_output(self.model, view).logits
        return logits

    def view_logits(self, batch: dict[str, Any], names: Sequence[str]) -> dict[str, torch.Tensor]:
        """A generative teacher's answer-only logits (N, V) on the collator's views ``names`` (``x_text``,
        ``x_image``): cached or a pass on each view."""
        only = {}
        for name in names:
            only[name] = self.cached_logits(batch, teacher_column(name))
            if only[name] is None:
                only[name] = self.forward(view_inputs(batch, name), output_intermediates=False).logits
            self.check(f"The teacher logits on the {name}-only input", only[name])
        return only
