"""Offline teacher outputs: the frozen teacher's logits on ``x`` and on every ``x_m``, as dataset columns.

The teacher does not change during distillation, so its outputs on the training data can be computed once
(:func:`precompute_teacher_outputs`) and read back by :class:`~hf_msd.trainers.DistillationTrainer` and
:class:`~hf_msd.trainers.MSDTrainer` instead of running it every step. Columns (for modalities ``m``):

- ``teacher_logits``: the teacher on the full input ``x``, (num_labels,) per example;
- ``teacher_logits_<m>``: the teacher on ``x_m`` (:func:`hf_msd.modalities.modality.restrict`, only ``m``
kept);
- ``teacher_logits_without_<m>``: with more than two modalities, the teacher on ``x`` without ``m``
  (:func:`hf_msd.modalities.modality.remove`), for saliency; with two, ``x without m`` is the other ``x_m``.

The result is a `datasets.Dataset` made by ``Dataset.map(batched=True)``: Arrow, memory-mapped, written
atomically by `datasets` to ``<cache_dir>/teacher-outputs-<fingerprint>.arrow`` and loaded from there when
the fingerprint matches. The fingerprint (:mod:`hf_msd.teacher_outputs.fingerprint`) covers the dataset, the
teacher's
config and weights (exact bytes), the collator with its processor settings, the modality specs, the
storage format and the problem type: any change computes a new file, the old one is left untouched. A
SHA-256 of the file is stored beside it (``.arrow.sha256``); a cache file that no longer loads, holds
another number of rows or differs from its checksum (truncated, emptied, overwritten) is removed with a
warning naming it and computed again. Temporary files that a killed pass left in the folder
(``tmpXXXXXXXX``, not written to for :data:`STALE_TEMPORARY_SECONDS`) are removed on the next pass.

Storage (``storage_dtype``): float32 (default) or float16. With ``top_k=k`` (large label spaces) each
column ``c`` becomes three: ``c__topk_logits`` (k,), ``c__topk_indices`` (k,) and ``c__rest_logit`` (),
expanded back to dense logits ``(num_labels,)`` by :func:`expand_topk` when batches are prepared:

- single-label: the stored values are the top-k log-probabilities ``log p_i`` (``p = softmax(t)``) and the
  other ``C - k`` classes share the remaining mass uniformly, ``rest = log((1 - sum_topk p_i) / (C - k))``.
  The reconstruction ``t_hat`` satisfies ``softmax(t_hat) = q`` with ``q_i = p_i`` on the top k and
  ``q_j = (1 - sum_topk p) / (C - k)`` elsewhere, exactly at temperature 1; at temperature ``T`` the
  trainers use ``softmax(t_hat / T)`` (proportional to ``q ** (1 / T)``).
- multi-label: the top-k logits are kept as they are and every other label gets
  ``rest = logit(mean_{j not in top k} sigmoid(t_j))`` (the remaining sigmoid mass, spread uniformly).
- regression: not supported (every output matters).

Generative teachers (a causal vision-language model such as LLaVA, batches of a
:class:`~hf_msd.data.VisionLanguageCollator`, recognised by their ``distillation_labels``): the columns are
``teacher_logits`` (on ``x``), ``teacher_logits_image`` and ``teacher_logits_text`` (on the views ``x_image``
and ``x_text``), each a list with one row per answer token: the teacher's logits at the position that
predicts it, in order (the vocabulary's ``V`` values, or with ``top_k`` the triple above per token, as
single-label; ``top_k`` may equal ``V``, which stores every token's log-probability and is exact). The
trainers place the rows back at the answer positions of each batch
(:func:`batch_cached_answer_logits`).

Several processes (``accelerate`` / torchrun): the main process computes and writes the file while the
others wait (``PartialState().main_process_first()``), then they load it; each example is computed once.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import re
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import datasets
import torch
from accelerate import PartialState
from datasets import Features, Value
from datasets import Sequence as SequenceFeature
from transformers.utils import logging

from ..architectures import default_modalities
from ..constants import IGNORE_INDEX, REGRESSION, SINGLE_LABEL
from ..data.generative import DISTILLATION_LABELS, VIEW_NAMES, VIEW_PREFIX, view_inputs, view_key
from ..modalities.modality import Modality, model_inputs, remove, restrict
from ..targets import answer_logits, answer_positions, resolve_problem_type, token_targets
from .fingerprint import combine_fingerprints, dataset_fingerprint, model_fingerprint, object_fingerprint

logger = logging.get_logger(__name__)

#: Column of the teacher's logits on the full input; modality columns add ``_<name>`` / ``_without_<name>``.
TEACHER_LOGITS = "teacher_logits"
TOPK_LOGITS, TOPK_INDICES, REST_LOGIT = "__topk_logits", "__topk_indices", "__rest_logit"
STORAGE_DTYPES = ("float32", "float16")
#: Bumped when the meaning of the stored columns changes, so old cache files are not reused.
CACHE_FORMAT_VERSION = 1


def teacher_column(modality: str | None = None, without: bool = False) -> str:
    """Column name: ``teacher_logits``, ``teacher_logits_<modality>`` or
    ``teacher_logits_without_<modality>``."""
    if modality is None:
        return TEACHER_LOGITS
    return f"{TEACHER_LOGITS}_{'without_' if without else ''}{modality}"


def teacher_columns(modalities: Sequence[Modality]) -> list[str]:
    """The logical columns :func:`precompute_teacher_outputs` writes for ``modalities``."""
    names = [modality.name for modality in modalities]
    columns = [teacher_column(), *(teacher_column(name) for name in names)]
    if len(names) > 2:
        columns += [teacher_column(name, without=True) for name in names]
    return columns


# ---- top-k storage -------------------------------------------------------------------------------------


def compress_topk(
    logits: torch.Tensor, k: int, problem_type: str, allow_all: bool = False
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Top-k storage of teacher logits (B, C) -> ``(values (B, k), indices (B, k) int64, rest (B,))``.

    See the module docstring for the definition; :func:`expand_topk` inverts it into dense logits.
    ``allow_all`` accepts ``k = C`` (every class stored, ``rest`` 0 and unused), as the answer-token storage
    of a generative teacher does.
    """
    if problem_type == REGRESSION:
        raise ValueError("top_k storage is for classification teachers; a regression teacher has no top k.")
    num_labels = logits.shape[-1]
    largest = num_labels if allow_all else num_labels - 1
    if not 1 <= k <= largest:
        name = "vocab_size" if allow_all else "num_labels - 1"
        raise ValueError(f"top_k must be in [1, {name}] = [1, {largest}], got {k}.")
    logits = logits.double()
    if k == num_labels:
        values, indices = (logits.log_softmax(-1) if problem_type == SINGLE_LABEL else logits).topk(k, dim=-1)
        return values.float(), indices, torch.zeros(logits.shape[:-1])
    if problem_type == SINGLE_LABEL:
        log_probs = logits.log_softmax(-1)
        values, indices = log_probs.topk(k, dim=-1)
        rest = log_probs.scatter(1, indices, float("-inf")).logsumexp(-1) - math.log(num_labels - k)
    else:
        values, indices = logits.topk(k, dim=-1)
        probs = logits.sigmoid().scatter(1, indices, 0.0)
        mean_rest = (probs.sum(-1) / (num_labels - k)).clamp(1e-300, 1 - 1e-16)
        rest = mean_rest.log() - (-mean_rest).log1p()
    return values.float(), indices, rest.float()


def expand_topk(
    values: torch.Tensor, indices: torch.Tensor, rest: torch.Tensor, num_labels: int
) -> torch.Tensor:
    """Dense logits (..., num_labels) from top-k storage (values and indices (..., k), rest (...)): ``rest``
    everywhere, ``values`` at ``indices``."""
    dense = rest.float()[..., None].expand(*values.shape[:-1], num_labels).clone()
    return dense.scatter(-1, indices.long(), values.float())


def batch_cached_logits(batch: Mapping[str, Any], column: str, num_labels: int) -> torch.Tensor | None:
    """The cached teacher logits ``column`` of a collated ``batch`` as dense (B, num_labels): the column
    itself, or its top-k triple (``column__topk_logits``, ``__topk_indices``, ``__rest_logit``) expanded
    (:func:`expand_topk`); ``None`` when the batch has neither."""
    if batch.get(column) is not None:
        return batch[column]
    parts = [batch.get(column + suffix) for suffix in (TOPK_LOGITS, TOPK_INDICES, REST_LOGIT)]
    if all(part is None for part in parts):
        return None
    if any(part is None for part in parts):
        raise KeyError(
            f"Top-k teacher column {column!r} is incomplete: it needs {column}{TOPK_LOGITS}, "
            f"{column}{TOPK_INDICES} and {column}{REST_LOGIT}; keep all three columns."
        )
    return expand_topk(*parts, num_labels=num_labels).to(parts[0].device)


def answer_labels_column(column: str) -> str:
    """The batch column marking the answer tokens that the cached answer-token column ``column`` belongs to:
    ``distillation_labels`` for ``teacher_logits`` (``x``), ``view_<m>__distillation_labels`` for
    ``teacher_logits_<m>`` (the view ``x_m`` of a :class:`~hf_msd.data.VisionLanguageCollator`)."""
    if column == TEACHER_LOGITS:
        return DISTILLATION_LABELS
    return view_key(column[len(TEACHER_LOGITS) + 1 :], DISTILLATION_LABELS)


def batch_cached_answer_logits(
    batch: Mapping[str, Any], column: str, labels: torch.Tensor, vocab_size: int
) -> torch.Tensor | None:
    """A generative teacher's cached answer-token logits ``column`` as the online teacher's answer-only
    logits (:func:`~hf_msd.targets.answer_logits` of ``labels`` (B, T)): (N, vocab_size), one row per answer
    token, example by example. ``None`` when the batch does not have the column.

    The collated column is (B, A, ...) with the rows past an example's answer tokens NaN
    (:class:`~hf_msd.data.VisionLanguageCollator` pads them so); an example whose number of cached rows
    differs from its answer tokens in ``labels`` raises a ValueError.
    """
    answers = batch_cached_logits(batch, column, vocab_size)
    if answers is None:
        return None
    stored = ~answers.isnan().any(dim=-1)  # (B, A)
    scored = token_targets(labels, causal=True) != IGNORE_INDEX  # (B, T - 1)
    if not torch.equal(stored.sum(-1).cpu(), scored.sum(-1).cpu()):
        raise ValueError(
            f"The cached teacher column {column!r} holds {stored.sum(-1).tolist()} answer tokens per "
            f"example, the batch's answers {scored.sum(-1).tolist()}: the cache was computed for other "
            "answers. Compute it again with precompute_teacher_outputs on this dataset and collator."
        )
    return answers[stored]


def has_cached_column(column_names: Sequence[str], column: str) -> bool:
    """Whether ``column`` is stored, densely or as top-k."""
    return column in column_names or column + TOPK_LOGITS in column_names


def cached_logits(dataset: datasets.Dataset, column: str, num_labels: int) -> torch.Tensor:
    """The whole cached ``column`` of ``dataset`` as dense float32 logits (N, num_labels)."""
    if column in dataset.column_names:
        return dataset.with_format("torch", columns=[column])[:][column].float()
    names = [column + suffix for suffix in (TOPK_LOGITS, TOPK_INDICES, REST_LOGIT)]
    table = dataset.with_format("torch", columns=names)[:]
    return expand_topk(*(table[name] for name in names), num_labels=num_labels)


# ---- the cache -----------------------------------------------------------------------------------------


def _differing_keys(first: Mapping[str, Any], second: Mapping[str, Any]) -> list[str]:
    keys = sorted(set(first) | set(second))
    differ = []
    for key in keys:
        a, b = first.get(key), second.get(key)
        if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
            same = a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b)
        else:
            same = type(a) is type(b) and a == b
        if not same:
            differ.append(key)
    return differ


def check_deterministic_inputs(
    dataset: datasets.Dataset, data_collator: Callable, num_examples: int = 4
) -> None:
    """Raise a ValueError if reading and collating the same examples twice gives different batches (a random
    dataset transform or collator, e.g. augmentation): cached teacher outputs would not match the inputs the
    student sees."""
    indices = range(min(num_examples, len(dataset)))
    batches = [data_collator([dataset[i] for i in indices]) for _ in range(2)]
    differ = _differing_keys(dict(batches[0]), dict(batches[1]))
    if differ:
        raise ValueError(
            f"The data collator / dataset transform is random: collating the same {len(indices)} examples "
            f"twice gave different {differ}. Cached teacher outputs would not match the student's inputs "
            "(augmentation). Run the teacher online (no cache), make the inputs deterministic, or pass "
            "deterministic_inputs=True if the difference does not reach the model."
        )


def _cache_file(
    dataset: datasets.Dataset, fingerprint: str, cache_dir: str | os.PathLike | None
) -> str | None:
    """Where the cached dataset lives: ``cache_dir``, else next to the dataset's own cache files, else in
    `datasets`' cache directory; None (in memory only) when `datasets` caching is disabled."""
    name = f"teacher-outputs-{fingerprint}.arrow"
    if cache_dir is not None:
        directory = os.fspath(cache_dir)
    elif not datasets.is_caching_enabled():
        return None
    elif dataset.cache_files:
        directory = os.path.dirname(dataset.cache_files[0]["filename"])
    else:
        directory = os.path.join(datasets.config.HF_DATASETS_CACHE, "hf_msd_teacher_outputs")
    os.makedirs(directory, exist_ok=True)
    return os.path.join(directory, name)


#: A temporary file `datasets` writes a cache file into before renaming it (``tempfile``'s names).
_TEMPORARY_NAME = re.compile(r"tmp[a-z0-9_]{8}")
#: A temporary file not written to for this long is left over from a killed run (a live pass rewrites it
#: every ``writer_batch_size`` examples, seconds apart).
STALE_TEMPORARY_SECONDS = 3600


def remove_stale_temporary_files(
    directory: str | os.PathLike, max_age: float = STALE_TEMPORARY_SECONDS
) -> list[str]:
    """Delete the temporary files a killed caching pass left in ``directory``: names ``tmpXXXXXXXX`` (how
    `datasets` names the file it writes before renaming it into place) not modified for ``max_age``
    seconds, so the file of a pass still running elsewhere is kept. Returns the removed paths."""
    removed = []
    now = time.time()
    for entry in os.scandir(directory):
        if not (entry.is_file() and _TEMPORARY_NAME.fullmatch(entry.name)):
            continue
        with contextlib.suppress(FileNotFoundError):
            if now - entry.stat().st_mtime >= max_age:
                os.remove(entry.path)
                removed.append(entry.path)
    if removed:
        logger.warning(
            f"Removed {len(removed)} stale temporary file(s) of an interrupted caching pass: {removed}"
        )
    return removed


def _checksum_file(cache_file: str) -> str:
    return cache_file + ".sha256"


def _file_sha256(path: str) -> str:
    with open(path, "rb") as file:
        return hashlib.file_digest(file, "sha256").hexdigest()


def _broken_cache_file(cache_file: str, num_rows: int) -> str | None:
    """Why the existing ``cache_file`` cannot be reused (None when it can): it does not load as Arrow, holds
    another number of rows, or its bytes differ from the SHA-256 stored beside it when it was written."""
    checksum = _checksum_file(cache_file)
    if os.path.exists(checksum):
        with open(checksum) as file:
            if file.read().strip() != _file_sha256(cache_file):
                return "its bytes do not match the checksum stored when it was written"
    try:
        rows = len(datasets.Dataset.from_file(cache_file))
    except Exception as error:  # pyarrow raises ArrowInvalid, OSError... for a damaged file
        return f"it does not load ({type(error).__name__}: {error})"
    if rows != num_rows:
        return f"it holds {rows} rows, not {num_rows}"
    return None


def _prepare_cache_file(cache_file: str, num_rows: int) -> None:
    """Clean ``cache_file``'s folder of stale temporary files and remove a damaged ``cache_file`` (with a
    warning naming it and why) so the teacher outputs are computed again."""
    remove_stale_temporary_files(os.path.dirname(cache_file))
    if not os.path.exists(cache_file):
        return
    problem = _broken_cache_file(cache_file, num_rows)
    if problem is not None:
        logger.warning(f"Teacher-output cache file {cache_file} is damaged ({problem}); computing it again.")
        os.remove(cache_file)
        with contextlib.suppress(FileNotFoundError):
            os.remove(_checksum_file(cache_file))


def _storage_features(
    features: Features,
    columns: Sequence[str],
    num_labels: int,
    storage_dtype: str,
    top_k: int | None,
    answer_tokens: bool = False,
) -> Features:
    """The features of the stored columns; with ``answer_tokens`` each is a list over the answer tokens."""
    features = features.copy()

    def stored(feature):
        return SequenceFeature(feature) if answer_tokens else feature

    for column in columns:
        if top_k is None:
            features[column] = stored(SequenceFeature(Value(storage_dtype), length=num_labels))
        else:
            features[column + TOPK_LOGITS] = stored(SequenceFeature(Value(storage_dtype), length=top_k))
            features[column + TOPK_INDICES] = stored(SequenceFeature(Value("int32"), length=top_k))
            features[column + REST_LOGIT] = stored(Value(storage_dtype))
    return features


def teacher_outputs_fingerprint(
    teacher: torch.nn.Module,
    dataset: datasets.Dataset,
    modalities: Sequence[Modality],
    data_collator: Callable,
    storage_dtype: str = "float32",
    top_k: int | None = None,
    problem_type: str | None = None,
    answer_tokens: bool = False,
) -> str:
    """The cache key of :func:`precompute_teacher_outputs` (64 hex characters)."""
    layout = {"layout": "answer_tokens"} if answer_tokens else {}
    return combine_fingerprints(
        **layout,
        format_version=CACHE_FORMAT_VERSION,
        dataset=dataset_fingerprint(dataset),
        teacher=model_fingerprint(teacher),
        data_collator=object_fingerprint(data_collator),
        modalities=object_fingerprint(list(modalities)),
        storage_dtype=storage_dtype,
        top_k=top_k,
        problem_type=problem_type,
    )


def precompute_teacher_outputs(
    teacher: torch.nn.Module,
    dataset: datasets.Dataset,
    modalities: Sequence[Modality] | None = None,
    data_collator: Callable | None = None,
    *,
    batch_size: int = 64,
    storage_dtype: str = "float32",
    top_k: int | None = None,
    cache_dir: str | os.PathLike | None = None,
    deterministic_inputs: bool = False,
    device: str | torch.device | None = None,
    problem_type: str | None = None,
) -> datasets.Dataset:
    """``dataset`` plus the teacher's logits on ``x``, each ``x_m`` (and, with more than two modalities, each
    ``x without m``) as columns (see the module docstring), computed in one batched no-grad pass or loaded
    from the cache file with the same fingerprint.

    Pass the result as ``train_dataset`` (or ``eval_dataset``) of
    :class:`~hf_msd.trainers.DistillationTrainer` / :class:`~hf_msd.trainers.MSDTrainer` with the same
    ``data_collator``: the trainers then read the teacher's logits from the batch (hidden-state and
    attention losses still run the teacher), and MSDTrainer's population and per-example saliency come
    from the same columns. `datasets` shows the pass's progress bar.

    Args:
        teacher: the frozen teacher; run in eval mode under ``torch.no_grad()`` (its mode is restored).
        dataset: a `datasets.Dataset` of raw examples (the training set as the trainer will read it).
        modalities: the modality spec; default the teacher's
            (:func:`~hf_msd.architectures.default_modalities`). Unused for a generative teacher (its views
            are the collator's ``x_image`` and ``x_text``).
        data_collator: turns a list of examples into a batch dict of tensors (the trainer's collator); its
            ``validate(dataset, name=...)``, when it has one, checks every row first, naming the bad ones.
        batch_size: examples per teacher pass.
        storage_dtype: "float32" or "float16".
        top_k: store only the top-k classes per example and spread the rest (see the module docstring).
        cache_dir: folder of the cache file. Default: next to the dataset's own Arrow files, or
            `datasets`' cache directory (``HF_DATASETS_CACHE/hf_msd_teacher_outputs``) for an in-memory
            dataset; with `datasets` caching disabled and no ``cache_dir``, the outputs stay in memory
            (one process only).
        deterministic_inputs: skip the check that collating the same examples twice gives the same batch;
            set it only when the randomness does not reach the model's inputs.
        device: where the teacher runs (default: its own device).
        problem_type: default :func:`~hf_msd.targets.resolve_problem_type` of the teacher's
        config.

    Returns:
        The dataset with the teacher columns; its ``_fingerprint`` is the cache fingerprint.
    """
    if not isinstance(dataset, datasets.Dataset):
        raise TypeError(
            f"precompute_teacher_outputs needs a datasets.Dataset, got {type(dataset).__name__}; convert it "
            "with datasets.Dataset.from_list(examples) (or from_dict / from_generator)."
        )
    if data_collator is None:
        raise ValueError("data_collator is required: pass the collator the trainer will use.")
    if storage_dtype not in STORAGE_DTYPES:
        raise ValueError(f"storage_dtype={storage_dtype!r}: choose one of {STORAGE_DTYPES}.")
    if len(dataset) == 0:
        raise ValueError("The dataset is empty: there are no teacher outputs to compute.")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}.")
    validate = getattr(data_collator, "validate", None)
    if callable(validate):  # names a bad row (no image, an empty question) before the first collated batch
        validate(dataset, name="dataset")
    answer_tokens = DISTILLATION_LABELS in data_collator([dataset[0]])
    if answer_tokens:  # a generative teacher: its answer-token distributions on x and each view
        modalities, problem_type = list(VIEW_NAMES), SINGLE_LABEL
        num_labels = teacher.config.get_text_config().vocab_size
        columns = [teacher_column(), *(teacher_column(name) for name in VIEW_NAMES)]
    else:
        modalities = list(modalities) if modalities is not None else default_modalities(teacher)
        problem_type = problem_type or resolve_problem_type(teacher.config)
        num_labels = teacher.config.num_labels
        columns = teacher_columns(modalities)
    if top_k is not None:  # validates top_k early
        compress_topk(torch.zeros(1, num_labels), top_k, problem_type, allow_all=answer_tokens)
    stale = [name for name in dataset.column_names if name.startswith(TEACHER_LOGITS)]
    if stale:
        logger.warning(f"Replacing the dataset's existing teacher columns {stale} with new teacher outputs.")
        dataset = dataset.remove_columns(stale)
    if not deterministic_inputs:
        check_deterministic_inputs(dataset, data_collator)

    fingerprint = teacher_outputs_fingerprint(
        teacher, dataset, modalities, data_collator, storage_dtype, top_k, problem_type, answer_tokens
    )
    device = torch.device(device) if device is not None else next(teacher.parameters()).device
    # A CPU teacher under torchrun / accelerate: let accelerate find the CPU processes (gloo) if nothing set
    # the distributed state up yet (otherwise this returns the existing state).
    state = PartialState(cpu=device.type == "cpu")
    cache_file = _cache_file(dataset, fingerprint, cache_dir)
    if cache_file is None and state.num_processes > 1:
        raise ValueError(
            "datasets caching is disabled and no cache_dir was given: with several processes the main "
            "process must write the teacher outputs to a file the others read: pass cache_dir=<folder>."
        )
    names = [getattr(modality, "name", modality) for modality in modalities]
    computed = []

    @torch.no_grad()
    def teacher_batch(batch: dict[str, list]) -> dict[str, Any]:
        examples = [dict(zip(batch, values)) for values in zip(*batch.values())]
        inputs = {
            key: value.to(device) if isinstance(value, torch.Tensor) else value
            for key, value in dict(data_collator(examples)).items()
        }
        if answer_tokens:
            computed.append(len(examples))
            return _encode_answer_tokens(_answer_token_logits(teacher, inputs), storage_dtype, top_k)
        inputs = model_inputs(teacher, inputs)
        logits = {teacher_column(): teacher(**inputs).logits}
        for name in names:
            logits[teacher_column(name)] = teacher(**restrict(inputs, modalities, name)).logits
        if len(names) > 2:
            for name in names:
                logits[teacher_column(name, without=True)] = teacher(
                    **remove(inputs, modalities, name)
                ).logits
        computed.append(len(examples))
        return _encode(logits, storage_dtype, top_k, problem_type)

    features = _storage_features(dataset.features, columns, num_labels, storage_dtype, top_k, answer_tokens)
    was_training = teacher.training
    teacher.eval()
    try:
        with state.main_process_first():
            if cache_file is not None and state.is_main_process:
                _prepare_cache_file(cache_file, len(dataset))
            result = dataset.map(
                teacher_batch,
                batched=True,
                batch_size=batch_size,
                features=features,
                new_fingerprint=fingerprint,
                cache_file_name=cache_file,
                keep_in_memory=cache_file is None,
                load_from_cache_file=True,
                desc="Teacher outputs",
            )
    finally:
        teacher.train(was_training)
    if computed and cache_file is not None:
        with open(_checksum_file(cache_file), "w") as file:
            file.write(_file_sha256(cache_file))
    if computed:
        logger.info(
            f"Computed the teacher outputs of {sum(computed)} examples ({cache_file or 'in memory'})."
        )
    else:
        logger.info(f"Loaded cached teacher outputs from {cache_file}.")
    return result


def _encode(
    logits: Mapping[str, torch.Tensor],
    storage_dtype: str,
    top_k: int | None,
    problem_type: str,
    allow_all: bool = False,
) -> dict[str, Any]:
    """Teacher logits (B, C) per column -> the stored arrays (dense, or the top-k triple)."""
    dtype = getattr(torch, storage_dtype)
    out: dict[str, Any] = {}
    for column, values in logits.items():
        values = values.detach().float().cpu()
        if top_k is None:
            out[column] = values.to(dtype).numpy()
            continue
        top, indices, rest = compress_topk(values, top_k, problem_type, allow_all)
        out[column + TOPK_LOGITS] = top.to(dtype).numpy()
        out[column + TOPK_INDICES] = indices.int().numpy()
        out[column + REST_LOGIT] = rest.to(dtype).numpy()
    return out


def _answer_token_logits(teacher: torch.nn.Module, batch: Mapping[str, Any]) -> dict[str, list[torch.Tensor]]:
    """A generative teacher's logits at the positions predicting each answer token, per example ((A_i, V),
    in order), on ``x`` and on each view of a :class:`~hf_msd.data.VisionLanguageCollator` batch: its
    output layer runs at those positions only (:func:`~hf_msd.targets.answer_logits`)."""
    inputs = {None: {k: v for k, v in batch.items() if not k.startswith(VIEW_PREFIX)}}
    inputs.update({name: view_inputs(batch, name) for name in VIEW_NAMES})
    rows = {}
    for name, view in inputs.items():
        labels = view.pop(DISTILLATION_LABELS)
        view.pop("labels", None)
        counts = answer_positions(labels).sum(dim=-1).tolist()
        rows[teacher_column(name)] = list(answer_logits(teacher, view, labels).split(counts))
    return rows


def _encode_answer_tokens(
    rows: Mapping[str, list[torch.Tensor]], storage_dtype: str, top_k: int | None
) -> dict[str, Any]:
    """Per-example answer-token logits ((A_i, V) per column) -> the stored lists over the answer tokens."""
    out: dict[str, Any] = {}
    for column, examples in rows.items():
        sizes = [len(example) for example in examples]
        encoded = _encode({column: torch.cat(examples)}, storage_dtype, top_k, SINGLE_LABEL, allow_all=True)
        for key, values in encoded.items():
            out[key] = [part.tolist() for part in torch.as_tensor(values).split(sizes)]
    return out
