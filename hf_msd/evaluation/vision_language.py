"""Whether a generative vision-language model uses the image: exact-match accuracy of its greedy answers on
three inputs, image + question, the question alone, and another row's image with the question (the
swapped-image control), overall and per question type.

A model that scores the same with another row's image as with its own answers from the question alone; the
question-only input by itself cannot tell, since a model never trained without image tokens may fail on it
for reasons unrelated to vision.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import torch

#: The inputs :func:`three_input_accuracy` scores: name -> the collator view (``None``: image + question).
INPUTS = {"image+question": None, "question only": "text", "swapped image": None}


def group_derangement(groups: Sequence[Any], seed: int) -> list[int]:
    """A seeded permutation ``p`` of ``range(len(groups))`` with ``groups[p[i]] != groups[i]`` for every ``i``
    (each row gets a row of another group, e.g. another image; rows of one image share a group).

    Raises a ValueError when no such permutation exists (a group holding more than half of the rows)."""
    n = len(groups)
    largest = max((list(groups).count(g) for g in set(groups)), default=0)
    if n and 2 * largest > n:
        raise ValueError(f"No derangement: one group holds {largest} of the {n} rows (more than half).")
    generator = torch.Generator().manual_seed(seed)
    permutation = torch.randperm(n, generator=generator).tolist()
    clashes = [i for i in range(n) if groups[permutation[i]] == groups[i]]
    while clashes:
        i = clashes.pop()
        if groups[permutation[i]] != groups[i]:
            continue
        for j in torch.randperm(n, generator=generator).tolist():
            if groups[permutation[j]] != groups[i] and groups[permutation[i]] != groups[j]:
                permutation[i], permutation[j] = permutation[j], permutation[i]
                break
    return permutation


class SwappedImages(Sequence):
    """``rows`` (a dataset or a list of mappings) with row ``i``'s image replaced by row ``permutation[i]``'s,
    read lazily."""

    def __init__(self, rows: Any, permutation: Sequence[int], image_column: str = "image"):
        if sorted(permutation) != list(range(len(rows))):
            raise ValueError(f"permutation must be a permutation of range({len(rows)}).")
        self.rows, self.permutation, self.image_column = rows, list(permutation), image_column

    def __len__(self) -> int:
        return len(self.rows)

    def __getitem__(self, index: int) -> dict:
        return {**self.rows[index], self.image_column: self.rows[self.permutation[index]][self.image_column]}


@torch.no_grad()
def generate_answers(
    model, collator, rows, view: str | None, batch_size: int, max_new_tokens: int = 3
) -> list:
    """The model's greedy answer (decoded, stripped) to every row of ``rows`` on the collator's ``view``
    (``None``: image + question; ``"text"``: the question alone)."""
    model.eval()
    answers = []
    for start in range(0, len(rows), batch_size):
        batch = [rows[i] for i in range(start, min(start + batch_size, len(rows)))]
        inputs = collator.generation_inputs(batch, view=view)
        output = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
        new = output[:, inputs["input_ids"].shape[1] :]
        answers += [text.strip() for text in collator.tokenizer.batch_decode(new, skip_special_tokens=True)]
    return answers


def accuracy_by_type(
    predicted: Sequence[str], gold: Sequence[str], question_types: Mapping[str, Sequence[str]]
) -> dict[str, float]:
    """Exact match overall (``"all"``) and per question type, a question's type being the type whose answers
    hold its gold answer (``question_types``: type -> answers); a type without questions scores 0."""
    kind_of = {answer: kind for kind, answers in question_types.items() for answer in answers}
    hits = [p == g for p, g in zip(predicted, gold, strict=True)]
    scores = {"all": sum(hits) / max(len(hits), 1)}
    for kind in question_types:
        mine = [hit for hit, answer in zip(hits, gold) if kind_of[answer] == kind]
        scores[kind] = sum(mine) / max(len(mine), 1)
    return scores


def three_input_accuracy(
    model,
    collator,
    rows,
    swapped_rows,
    question_types: Mapping[str, Sequence[str]],
    batch_size: int,
    answer_column: str = "answer",
) -> dict[str, dict[str, float]]:
    """``{input: accuracy_by_type}`` for the inputs of :data:`INPUTS`: ``rows`` with their image, ``rows``
    without it, and ``swapped_rows`` (e.g. :class:`SwappedImages` of ``rows``); the gold answers are
    ``rows``'."""
    gold = [rows[i][answer_column] for i in range(len(rows))]
    sources = {"image+question": rows, "question only": rows, "swapped image": swapped_rows}
    return {
        name: accuracy_by_type(
            generate_answers(model, collator, sources[name], view, batch_size), gold, question_types
        )
        for name, view in INPUTS.items()
    }
