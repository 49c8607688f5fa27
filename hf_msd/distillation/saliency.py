"""Teacher saliency of each modality, per example and over a population, and its plots.

Definition. The saliency of modality ``m`` on an example ``x`` is how much the teacher's prediction
changes when ``m`` is removed::

    s_m(x) = D( p_T(x) || p_T(x without m) )

where ``x without m`` is ``x`` with modality ``m`` removed by its removal strategy
(:func:`hf_msd.modalities.modality.remove`; with two modalities, ``x without image`` is ``x_text``) and ``D``
(:func:`default_saliency`) depends on the problem type, with ``t = T(x)`` and ``u = T(x without m)``
the teacher's logits:

- single-label classification: ``KL(softmax(t) || softmax(u)) = sum_c p_c (log p_c - log q_c)``
  (temperature 1);
- multi-label classification: the mean over the ``C`` labels of the Bernoulli KL
  ``KL(Bern(sigmoid(t_c)) || Bern(sigmoid(u_c)))``;
- regression: the mean over outputs of ``(t - u)**2``.

Any ``saliency_fn(teacher_logits_full (B, C), teacher_logits_without_m (B, C), problem_type) -> (B,)``
can replace it. The population saliency of ``m`` is ``S_m = mean_x s_m(x)`` over a dataset
(:func:`compute_saliency`).
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm

from ..architectures import get_logits
from ..constants import MULTI_LABEL, REGRESSION, SINGLE_LABEL
from ..modalities.modality import Modality, model_inputs, remove, restrict
from ..targets import answer_positions, resolve_problem_type
from ..teacher_outputs.cache import cached_logits, has_cached_column, teacher_column, teacher_columns
from ..teacher_outputs.fingerprint import (
    combine_fingerprints,
    dataset_fingerprint,
    model_fingerprint,
    object_fingerprint,
)
from .losses import soft_target_loss

SaliencyFn = Callable[[torch.Tensor, torch.Tensor, str], torch.Tensor]
FULL = "full"


def default_saliency(
    teacher_logits_full: torch.Tensor, teacher_logits_without: torch.Tensor, problem_type: str
) -> torch.Tensor:
    """``D(p_T(x) || p_T(x without m))`` per example, (B, C) x (B, C) -> float32 (B,).

    KL of the softmaxes (single-label), mean per-label Bernoulli KL (multi-label) or mean squared
    difference of the outputs (regression); see the module docstring.
    """
    divergence = soft_target_loss(
        teacher_logits_without, teacher_logits_full, problem_type=problem_type, temperature=1.0
    )
    if problem_type == MULTI_LABEL:  # soft_target_loss sums the per-label KLs
        divergence = divergence / teacher_logits_full.shape[-1]
    return divergence


def modality_saliency(
    full_logits: torch.Tensor,
    without_logits: Sequence[torch.Tensor],
    problem_type: str,
    saliency_fn: SaliencyFn | None = None,
) -> torch.Tensor:
    """Saliency of each modality per example, (B, M): column ``m`` is ``saliency_fn(T(x), T(x without m))``.

    Args:
        full_logits: (B, C) teacher logits on the full input.
        without_logits: M tensors (B, C), the teacher's logits with modality ``m`` removed.
    """
    saliency_fn = saliency_fn or default_saliency
    columns = [saliency_fn(full_logits.float(), without.float(), problem_type) for without in without_logits]
    for modality_index, column in enumerate(columns):
        if column.shape != full_logits.shape[:1]:
            raise ValueError(
                f"saliency_fn returned shape {tuple(column.shape)} for modality {modality_index}; "
                f"it must return one value per example, shape ({full_logits.shape[0]},)."
            )
    return torch.stack(columns, dim=1).detach()


def answer_token_saliency(
    full_rows: torch.Tensor,
    full_labels: torch.Tensor,
    without: Sequence[tuple[torch.Tensor, torch.Tensor]],
    saliency_fn: SaliencyFn | None = None,
) -> torch.Tensor:
    """Saliency of each modality per example for a generative (causal, token-level) teacher, (B, M): the
    divergence ``saliency_fn`` (default :func:`default_saliency`, single-label) between the teacher's
    distributions over the answer tokens given ``x`` and given ``x without m``, averaged over the example's
    answer tokens (0 for an example without any).

    Args:
        full_rows: (N, V) the teacher's answer-only logits on ``x`` (:func:`~hf_msd.targets.answer_logits`
            of ``full_labels``): one row per answer token, example by example.
        full_labels: (B, T) the scored (answer) tokens of ``x``, -100 elsewhere.
        without: per modality ``(rows (N, V), labels (B, T_m))`` of ``x without m``; the answer tokens are
            matched by their order, so each example must have the same number of them in every input.
    """
    positions = answer_positions(full_labels)
    counts = positions.sum(dim=-1)
    for index, (_, labels) in enumerate(without):
        other = answer_positions(labels).sum(dim=-1)
        if not torch.equal(other.cpu(), counts.cpu()):
            raise ValueError(
                f"The input without modality {index} has other answer tokens per example ({other.tolist()}) "
                f"than the full input ({counts.tolist()}): build the modality views with one completion "
                "(hf_msd.data.VisionLanguageCollator)."
            )
    per_token = modality_saliency(full_rows, [rows for rows, _ in without], SINGLE_LABEL, saliency_fn)
    examples = positions.nonzero()[:, 0].to(per_token.device)
    sums = per_token.new_zeros(len(counts), per_token.shape[1]).index_add(0, examples, per_token)
    return sums / counts.clamp_min(1)[:, None].to(sums)


def without_logits(
    run: Callable[[dict], torch.Tensor],
    batch: Mapping[str, Any],
    modalities: Sequence[Modality],
    only_logits: Mapping[str, torch.Tensor],
) -> list[torch.Tensor]:
    """Teacher logits on ``x without m`` for each modality, in ``modalities`` order.

    With two modalities ``x without m`` is the other modality's ``x_m``, so ``only_logits``
    (name -> logits on :func:`~hf_msd.modalities.modality.restrict` ``(x, m)``) is reused and nothing is run;
    otherwise ``run(remove(batch, m))`` is called once per modality.
    """
    if len(modalities) == 2:
        return [only_logits[modalities[1 - index].name] for index in range(2)]
    return [run(remove(batch, modalities, modality.name)) for modality in modalities]


def _confidence(logits: torch.Tensor, reference: torch.Tensor, problem_type: str) -> torch.Tensor:
    """The probability ``logits`` give to the class the full-input teacher predicts (``reference``
    argmax); for regression, the first output. (B, C) -> (B,)."""
    if problem_type == REGRESSION:
        return logits.float().reshape(logits.shape[0], -1)[:, 0]
    probs = logits.float().softmax(-1) if problem_type == SINGLE_LABEL else logits.float().sigmoid()
    return probs.gather(1, reference.argmax(-1, keepdim=True)).squeeze(1)


@dataclass
class SaliencyReport:
    """Per-example and population saliency of each modality over a dataset.

    Attributes:
        modality_names: the M modality names, in column order.
        problem_type: the teacher's problem type.
        saliency: (N, M) float32, ``s_m(x_i)``.
        teacher_confidence: ``"full"`` and each modality name (the modality-only input ``x_m``) ->
            (N,) probability the teacher gives, on that input, to the class it predicts on the full input
            (softmax for single-label, sigmoid for multi-label; the first output for regression).
        student_confidence: the same for the student (its own full-input prediction), when given.
        fingerprint: identifies teacher, data and modality spec (see :func:`saliency_fingerprint`).
    """

    modality_names: list[str]
    problem_type: str
    saliency: torch.Tensor
    teacher_confidence: dict[str, torch.Tensor]
    student_confidence: dict[str, torch.Tensor] | None = None
    fingerprint: str | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @property
    def mean(self) -> torch.Tensor:
        """(M,) population saliency ``S_m``: the mean of ``s_m`` over the dataset."""
        return self.saliency.mean(dim=0)

    @property
    def std(self) -> torch.Tensor:
        """(M,) standard deviation of ``s_m`` over the dataset (population, ``correction=0``)."""
        return self.saliency.std(dim=0, correction=0)

    def population(self) -> dict[str, dict[str, float]]:
        """``{modality: {"mean": S_m, "std": ..., "median": ...}}``."""
        median = self.saliency.median(dim=0).values
        return {
            name: {"mean": float(self.mean[i]), "std": float(self.std[i]), "median": float(median[i])}
            for i, name in enumerate(self.modality_names)
        }

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (per-example values as lists)."""

        def lists(values: dict[str, torch.Tensor] | None):
            return None if values is None else {key: value.tolist() for key, value in values.items()}

        return {
            "modality_names": list(self.modality_names),
            "problem_type": self.problem_type,
            "fingerprint": self.fingerprint,
            "population": self.population(),
            "saliency": self.saliency.tolist(),
            "teacher_confidence": lists(self.teacher_confidence),
            "student_confidence": lists(self.student_confidence),
        }

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> SaliencyReport:
        def tensors(values):
            return None if values is None else {key: torch.tensor(value) for key, value in values.items()}

        saliency = torch.tensor(data["saliency"], dtype=torch.float32).reshape(
            -1, len(data["modality_names"])
        )
        return cls(
            modality_names=list(data["modality_names"]),
            problem_type=data["problem_type"],
            saliency=saliency,
            teacher_confidence=tensors(data["teacher_confidence"]),
            student_confidence=tensors(data.get("student_confidence")),
            fingerprint=data.get("fingerprint"),
        )

    def save_json(self, path: str | os.PathLike) -> None:
        """Write :meth:`to_dict` to ``path`` atomically (temporary file, then rename)."""
        tmp = f"{path}.tmp"
        with open(tmp, "w") as handle:
            json.dump(self.to_dict(), handle)
        os.replace(tmp, path)

    @classmethod
    def load_json(cls, path: str | os.PathLike) -> SaliencyReport:
        with open(path) as handle:
            return cls.from_dict(json.load(handle))


def _logits(model, batch: Mapping[str, Any]) -> torch.Tensor:
    return get_logits(model, model(**model_inputs(model, batch)))


def _to_device(batch: Mapping[str, Any], device: torch.device) -> dict[str, Any]:
    return {
        key: value.to(device) if isinstance(value, torch.Tensor) else value for key, value in batch.items()
    }


@torch.no_grad()
def compute_saliency(
    teacher,
    dataset,
    modalities: Sequence[Modality],
    data_collator: Callable | None = None,
    batch_size: int = 32,
    saliency_fn: SaliencyFn | None = None,
    student=None,
    device: str | torch.device | None = None,
    problem_type: str | None = None,
    progress: bool = True,
) -> SaliencyReport:
    """Run the teacher (and optionally the student) over ``dataset`` and measure each modality's saliency.

    For every batch ``x`` the teacher is run on ``x``, on each modality-only input ``x_m``
    (:func:`~hf_msd.modalities.modality.restrict`) and, with more than two modalities, on each ``x without
    m``;
    ``s_m(x)`` follows the module docstring. Models are put in eval mode for the pass and restored.

    Args:
        teacher: a classifier; its logits (B, C) are read with :func:`hf_msd.architectures.get_logits`.
        dataset: indexable dataset of examples; ``data_collator`` turns a list of them into a batch dict.
        modalities: the modality spec.
        batch_size: examples per forward pass.
        saliency_fn: replaces :func:`default_saliency`.
        student: when given, its confidences on ``x`` and each ``x_m`` are recorded for the plots.
        device: where to run (default: the teacher's device).
        problem_type: default :func:`~hf_msd.targets.resolve_problem_type` of the teacher's
        config.

    Returns:
        :class:`SaliencyReport` with ``saliency`` (N, M) and the confidences.
    """
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    problem_type = problem_type or resolve_problem_type(getattr(teacher, "config", None))
    models = [model for model in (teacher, student) if model is not None]
    was_training = [model.training for model in models]
    for model in models:
        model.eval()
    loader = DataLoader(dataset, batch_size=batch_size, shuffle=False, collate_fn=data_collator)
    names = [modality.name for modality in modalities]
    saliency, teacher_conf = [], {key: [] for key in (FULL, *names)}
    student_conf = {key: [] for key in (FULL, *names)} if student is not None else None
    try:
        for batch in tqdm(loader, desc="Teacher saliency", disable=not progress):
            batch = _to_device(batch, device)
            inputs = {FULL: batch, **{name: restrict(batch, modalities, name) for name in names}}
            full = _logits(teacher, batch)
            only = {name: _logits(teacher, inputs[name]) for name in names}
            run = lambda x: _logits(teacher, x)  # noqa: E731
            saliency.append(
                modality_saliency(
                    full, without_logits(run, batch, modalities, only), problem_type, saliency_fn
                )
            )
            for key, logits in ((FULL, full), *only.items()):
                teacher_conf[key].append(_confidence(logits, full, problem_type).cpu())
            if student is not None:
                student_full = _logits(student, batch)
                for key, x in inputs.items():
                    logits = student_full if key == FULL else _logits(student, x)
                    student_conf[key].append(_confidence(logits, student_full, problem_type).cpu())
    finally:
        for model, mode in zip(models, was_training):
            model.train(mode)

    def cat(values):
        return None if values is None else {key: torch.cat(parts) for key, parts in values.items()}

    return SaliencyReport(
        modality_names=names,
        problem_type=problem_type,
        saliency=torch.cat(saliency).float().cpu(),
        teacher_confidence=cat(teacher_conf),
        student_confidence=cat(student_conf),
    )


def saliency_fingerprint(
    teacher, dataset, modalities: Sequence[Modality], data_collator: Callable | None = None, **extra: Any
) -> str:
    """A hash that changes when the teacher's weights or config, the dataset, the collator (with its
    processor settings), the modality spec or any ``extra`` value change
    (:mod:`hf_msd.teacher_outputs.fingerprint`).

    Teacher: its config and the exact bytes of every tensor of its state dict. Dataset: a
    `datasets.Dataset`'s ``_fingerprint``, else the content of every example. Collator, modalities and
    ``extra`` values (e.g. the saliency function, hashed by its code, not its name): `datasets`' hasher.
    """
    return combine_fingerprints(
        teacher=model_fingerprint(teacher),
        dataset=dataset_fingerprint(dataset),
        modalities=object_fingerprint(list(modalities)),
        data_collator=object_fingerprint(data_collator),
        extra=extra,
    )


def saliency_from_cache(
    dataset,
    modalities: Sequence[Modality],
    problem_type: str,
    num_labels: int,
    saliency_fn: SaliencyFn | None = None,
) -> SaliencyReport:
    """The :class:`SaliencyReport` of a dataset that carries cached teacher outputs
    (:func:`hf_msd.teacher_outputs.cache.precompute_teacher_outputs`): the same values as
    :func:`compute_saliency`,
    read from the ``teacher_logits`` / ``teacher_logits_<m>`` (/ ``teacher_logits_without_<m>``) columns
    without running the teacher."""
    names = [modality.name for modality in modalities]
    full = cached_logits(dataset, teacher_column(), num_labels)
    only = {name: cached_logits(dataset, teacher_column(name), num_labels) for name in names}
    if len(names) == 2:
        without = [only[names[1]], only[names[0]]]
    else:
        without = [cached_logits(dataset, teacher_column(name, without=True), num_labels) for name in names]
    return SaliencyReport(
        modality_names=names,
        problem_type=problem_type,
        saliency=modality_saliency(full, without, problem_type, saliency_fn).float(),
        teacher_confidence={
            key: _confidence(logits, full, problem_type) for key, logits in ((FULL, full), *only.items())
        },
    )


def has_cached_saliency_columns(dataset, modalities: Sequence[Modality]) -> bool:
    """Whether ``dataset`` carries every teacher column :func:`saliency_from_cache` needs."""
    names = getattr(dataset, "column_names", None)
    return names is not None and all(has_cached_column(names, c) for c in teacher_columns(modalities))


def plot_saliency(report: SaliencyReport, path: str | os.PathLike, bins: int = 30) -> str:
    """Write a PNG with the saliency analysis of ``report`` (:func:`saliency_figure`) to ``path``; returns
    ``path``. Requires matplotlib (``pip install hf_msd[plots]``); uses the Agg backend, no display needed."""
    saliency_figure(report, bins).savefig(os.fspath(path), format="png", dpi=100)
    return os.fspath(path)


def saliency_figure(report: SaliencyReport, bins: int = 30):
    """The saliency analysis of ``report`` as a matplotlib ``Figure`` of two rows, every panel drawn.

    Top row: density (normalised histogram) of the teacher's confidence (see :class:`SaliencyReport`) given
    both modalities and each modality alone; with student confidences, a second panel for the student; then
    the population saliency ``S_m`` of each modality (bars: mean over the examples, error bars: standard
    deviation), the values MSD's population weighting starts from. Bottom row: one histogram of ``s_m`` per
    modality with its mean.
    """
    try:
        from matplotlib.backends.backend_agg import FigureCanvasAgg
        from matplotlib.figure import Figure
    except ImportError as error:  # pragma: no cover - depends on the environment
        raise ImportError("plot_saliency needs matplotlib: pip install 'hf_msd[plots]'") from error

    density_panels = [("Teacher", report.teacher_confidence)]
    if report.student_confidence is not None:
        density_panels.append(("Student", report.student_confidence))
    names = report.modality_names
    figure = Figure(figsize=(4.5 * max(len(density_panels) + 1, len(names)), 7.0), layout="constrained")
    FigureCanvasAgg(figure)
    top, bottom = figure.subfigures(2, 1)
    top_axes = top.subplots(1, len(density_panels) + 1, squeeze=False)[0]
    x_label = "output" if report.problem_type == REGRESSION else "probability of the full-input prediction"
    value_range = None if report.problem_type == REGRESSION else (0.0, 1.0)
    for ax, (who, confidence) in zip(top_axes, density_panels):
        for key, values in confidence.items():
            label = "both modalities" if key == FULL else f"{key} only"
            ax.hist(
                values.numpy(),
                bins=bins,
                range=value_range,
                density=True,
                histtype="step",
                linewidth=1.5,
                label=label,
            )
        ax.set(title=f"{who} output density", xlabel=x_label, ylabel="density")
        ax.legend(fontsize="small")
    population = top_axes[-1]
    means, stds = report.mean.tolist(), report.std.tolist()  # the means are also in the bottom row's legends
    population.bar(names, means, yerr=stds, capsize=4, color=[f"C{i}" for i in range(len(names))])
    population.set_ylim(bottom=0.0)  # a divergence: the error bar's lower half may reach below 0
    population.set(
        title="Population saliency S_m (mean ± std)",
        xlabel="modality m",
        ylabel="mean of D(T(x) || T(x without m))",
    )
    for ax, (index, name) in zip(bottom.subplots(1, len(names), squeeze=False)[0], enumerate(names)):
        values = report.saliency[:, index]
        ax.hist(values.numpy(), bins=bins, color=f"C{index}")
        ax.axvline(float(values.mean()), color="k", linestyle="--", label=f"mean {float(values.mean()):.3g}")
        ax.set(title=f"Saliency of {name}", xlabel=f"D(T(x) || T(x without {name}))", ylabel="examples")
        ax.legend(fontsize="small")
    return figure
