"""On-policy batches: the student's own answers in place of the collated ones, in every modality view.

A :class:`~hf_msd.data.VisionLanguageCollator` batch holds, in ``x`` and in each view (``view_<name>__*``),
right-padded sequences ``prompt + completion`` whose ``distillation_labels`` mark the completion. On-policy
distillation (GKD, Agarwal et al. 2024; TRL's ``lmbda``) replaces the completion by the answer the student
generates from the ``x`` prompt. This module is that rewrite as tensor code:

- :func:`answer_starts` finds where each example's completion starts (its prompt length) in one view;
- :func:`prompt_inputs` cuts the prompts out of a view and left-pads them for ``model.generate`` (the same
  tensors as :meth:`~hf_msd.data.VisionLanguageCollator.generation_inputs` on the raw examples);
- :func:`generated_answers` keeps each generated answer up to and including its first end-of-sequence token;
- :func:`with_answers` puts the answers after each view's prompt, so the answer tokens stay identical in
  ``x``, ``x_text`` and ``x_image``, and keeps the gold sequence of ``x`` for the task term in the view
  :data:`GOLD_VIEW`;
- :func:`on_policy_draw` decides, from the seed and the optimizer step only, whether a batch is on-policy.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import torch

from ..constants import IGNORE_INDEX
from .generative import DISTILLATION_LABELS, TOKEN_TYPE_COLUMNS, VIEW_PREFIX, view_key

#: The view of an on-policy batch that keeps ``x`` as collated (gold answer, ``labels``) for the task term.
GOLD_VIEW = "gold"
#: The per-token columns of a view rebuilt by :func:`with_answers` (images and the rest are kept as they are).
_SEQUENCE_COLUMNS = ("input_ids", "attention_mask", DISTILLATION_LABELS, "labels", *TOKEN_TYPE_COLUMNS)


def answer_starts(distillation_labels: torch.Tensor) -> torch.Tensor:
    """The position of each example's first scored token, i.e. its prompt length, (B,) int64.

    ``distillation_labels`` (B, T): -100 over the prompt and the padding, the completion's ids in between (a
    right-padded :class:`~hf_msd.data.VisionLanguageCollator` view). A row without a scored token is refused.
    """
    scored = distillation_labels != IGNORE_INDEX
    if not bool(scored.any(dim=1).all()):
        rows = (~scored.any(dim=1)).nonzero().flatten().tolist()
        raise ValueError(
            f"Rows {rows} of the batch have no answer token in {DISTILLATION_LABELS!r}: on-policy batches "
            "need the collator's prompt + answer layout (VisionLanguageCollator)."
        )
    return scored.int().argmax(dim=1)


def _left_pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    width = max(len(row) for row in rows)
    return torch.stack([torch.cat([row.new_full((width - len(row),), value), row]) for row in rows])


def _right_pad(rows: Sequence[torch.Tensor], value: int) -> torch.Tensor:
    return torch.nn.utils.rnn.pad_sequence(list(rows), batch_first=True, padding_value=value)


def prompt_inputs(inputs: Mapping[str, Any], starts: torch.Tensor, pad_token_id: int) -> dict[str, Any]:
    """The left-padded prompts of one view for ``model.generate``.

    ``inputs``: the view's model inputs (``input_ids`` (B, T) right-padded prompt + answer, its
    ``attention_mask``, per-token columns of :data:`~hf_msd.data.generative.TOKEN_TYPE_COLUMNS`, image
    tensors); ``starts`` (B,): each prompt's length (:func:`answer_starts`). Returns ``input_ids`` and
    ``attention_mask`` (B, max prompt length) left-padded with ``pad_token_id`` / 0, the per-token columns
    left-padded with 0, and every other input but the labels as it is.
    """
    ids = inputs["input_ids"]
    lengths = starts.tolist()
    prompts = {
        "input_ids": _left_pad([row[:n] for row, n in zip(ids, lengths)], pad_token_id),
        "attention_mask": _left_pad([ids.new_ones(n) for n in lengths], 0),
    }
    for key, value in inputs.items():
        if key in TOKEN_TYPE_COLUMNS:
            prompts[key] = _left_pad([row[:n] for row, n in zip(value, lengths)], 0)
        elif key not in _SEQUENCE_COLUMNS:
            prompts[key] = value
    return prompts


def generated_answers(
    sequences: torch.Tensor, prompt_width: int, eos_token_ids: int | Sequence[int]
) -> list[torch.Tensor]:
    """Each example's generated answer: ``sequences`` (B, prompt_width + N) from ``model.generate`` on
    left-padded prompts of width ``prompt_width``, cut after the first of ``eos_token_ids`` (kept, as the
    collator keeps the end-of-turn token); an answer that never ends keeps its N tokens. A list of B 1-D
    int64 tensors, each of length >= 1."""
    eos = torch.as_tensor(eos_token_ids, device=sequences.device).reshape(-1)
    answers = []
    for row in sequences[:, prompt_width:]:
        ends = torch.isin(row, eos).nonzero().flatten()
        answers.append(row[: int(ends[0]) + 1] if len(ends) else row)
    if any(len(answer) == 0 for answer in answers):
        raise ValueError("generate() returned no new token: set max_new_tokens >= 1.")
    return answers


def _view_prefixes(batch: Mapping[str, Any]) -> list[str]:
    """``""`` (``x``) and the prefix of each view of ``batch`` that has its own ``distillation_labels``."""
    suffix = f"__{DISTILLATION_LABELS}"
    views = sorted(
        key[: -len(DISTILLATION_LABELS)]
        for key in batch
        if key.startswith(VIEW_PREFIX) and key.endswith(suffix)
    )
    return ["", *views]


def with_answers(
    batch: Mapping[str, Any], answers: Sequence[torch.Tensor], pad_token_id: int
) -> dict[str, Any]:
    """``batch`` with ``answers`` (B 1-D tensors) as the completion of every example, in ``x`` and in every
    view.

    In ``x`` and in each view ``view_<name>__`` the sequence becomes the view's prompt (up to
    :func:`answer_starts` of its ``distillation_labels``) followed by the example's answer, right-padded
    with ``pad_token_id``; ``attention_mask`` is 1 over prompt and answer; ``distillation_labels`` holds the
    answer (-100 elsewhere); per-token columns keep the prompt's values and are 0 over the answer. Images and
    every other column are kept. The gold answers (``labels``, the task term) leave ``x``, whose ``labels``
    become -100 everywhere (no token of the student's answers is gold): when any token is labelled, ``x`` as
    collated (its ids, mask, ``labels``, images...) is kept in the view :data:`GOLD_VIEW` (``view_gold__*``),
    so the task term is the student's loss on the gold answers.
    """
    out = dict(batch)
    labels = batch.get("labels")
    if torch.is_tensor(labels) and bool((labels != IGNORE_INDEX).any()):
        for key, value in batch.items():
            if not key.startswith(VIEW_PREFIX) and key != DISTILLATION_LABELS:
                out[view_key(GOLD_VIEW, key)] = value
    for prefix in _view_prefixes(batch):
        ids = batch[prefix + "input_ids"]
        lengths = answer_starts(batch[prefix + DISTILLATION_LABELS]).tolist()
        answers_here = [answer.to(ids.device) for answer in answers]
        prompts = [row[:n] for row, n in zip(ids, lengths)]
        out[prefix + "input_ids"] = _right_pad(
            [torch.cat([p, a]) for p, a in zip(prompts, answers_here)], pad_token_id
        )
        out[prefix + "attention_mask"] = _right_pad(
            [ids.new_ones(len(p) + len(a)) for p, a in zip(prompts, answers_here)], 0
        )
        out[prefix + DISTILLATION_LABELS] = _right_pad(
            [torch.cat([ids.new_full((len(p),), IGNORE_INDEX), a]) for p, a in zip(prompts, answers_here)],
            IGNORE_INDEX,
        )
        for key in TOKEN_TYPE_COLUMNS:
            if prefix + key in batch:
                values = batch[prefix + key]
                out[prefix + key] = _right_pad(
                    [
                        torch.cat([v[:n], v.new_zeros(len(a))])
                        for v, n, a in zip(values, lengths, answers_here)
                    ],
                    0,
                )
    if torch.is_tensor(labels):
        out["labels"] = torch.full_like(out["input_ids"], IGNORE_INDEX)
    return out


def on_policy_draw(lmbda: float, seed: int, step: int) -> bool:
    """Whether the batch of optimizer step ``step`` is on-policy: a uniform draw < ``lmbda`` from a generator
    seeded by ``(seed, step)`` alone, so every process and every micro-batch of the step draw the same, the
    global random state is untouched, and ``lmbda`` 0 / 1 give never / always without drawing."""
    if lmbda <= 0 or lmbda >= 1:
        return lmbda >= 1
    generator = torch.Generator().manual_seed(derived_seed(seed, step))
    return bool(torch.rand((), generator=generator) < lmbda)


def derived_seed(*keys: int) -> int:
    """A seed (a non-negative int below 2**63) that depends on the integers ``keys`` alone (numpy's
    ``SeedSequence``: well mixed, so (1, 0) and (0, 1) give unrelated streams)."""
    return int(np.random.SeedSequence([key % 2**32 for key in keys]).generate_state(2, np.uint64)[0] >> 1)
