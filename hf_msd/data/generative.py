"""Chat-style batches for generative vision-language models (image-text-to-text), with their modality views.

Removing a modality from a chat prompt cannot be a mask on fixed tensors: without the image the prompt has no
image tokens and the batch no ``pixel_values``; without the text the question is empty. The
:class:`VisionLanguageCollator` therefore builds three inputs from each raw example ``(image, question,
answer)`` with the model's processor and chat template:

- ``x`` (``input_ids``, ``attention_mask``, ``pixel_values``, ``labels``): image + question -> answer;
- ``x_text`` (``view_text__input_ids``, ``view_text__attention_mask``, ``view_text__distillation_labels``):
  the question alone, a prompt without image tokens and no ``pixel_values``;
- ``x_image`` (``view_image__*``, with the same ``pixel_values``): the image with an empty question.

Each sequence is the tokenised prompt (the chat template with ``add_generation_prompt=True``) followed by the
tokenised completion (the rest of the rendered conversation: the answer and the end-of-turn tokens), the way
the model meets them when it generates, so the answer token ids are identical in all three views.
``labels`` holds the completion tokens of examples with a gold answer (prompt, padding and unlabelled examples
-100), the task term; ``distillation_labels`` (in each view) marks the tokens the distillation terms score:
the completion of the gold answer, or of the example's ``teacher_answer`` (e.g. the teacher's greedy answer)
when it has no gold one. Per-token processor outputs besides the ids (:data:`TOKEN_TYPE_COLUMNS`, e.g.
Qwen2-VL's ``mm_token_type_ids``) are padded with the ids, 0 (text) over the completion and the padding.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch

from ..constants import IGNORE_INDEX
from .validation import validate_examples

#: The modality views a :class:`VisionLanguageCollator` builds besides the full input.
VIEW_NAMES = ("image", "text")
VIEW_PREFIX = "view_"
#: The batch column marking the tokens the distillation terms score (-100 elsewhere).
DISTILLATION_LABELS = "distillation_labels"
#: Processor outputs with one value per prompt token besides ``input_ids`` and ``attention_mask`` (a token's
#: modality: 0 text, 1 image...; Qwen2-VL's ``mm_token_type_ids``): padded like the ids, with 0 (text) over
#: the answer and the padding.
TOKEN_TYPE_COLUMNS = ("mm_token_type_ids", "token_type_ids")


def view_key(view: str, key: str) -> str:
    """The batch column of ``key`` in the modality view ``view``: ``view_<view>__<key>``."""
    return f"{VIEW_PREFIX}{view}__{key}"


def view_inputs(batch: Mapping[str, Any], view: str) -> dict[str, Any]:
    """The inputs of the view ``view`` of a collated batch, under their model names (``input_ids``...)."""
    prefix = view_key(view, "")
    return {key[len(prefix) :]: value for key, value in batch.items() if key.startswith(prefix)}


def has_views(batch: Mapping[str, Any], views: Sequence[str] = VIEW_NAMES) -> bool:
    """Whether ``batch`` carries the input ids of every view in ``views``."""
    return all(view_key(view, "input_ids") in batch for view in views)


def check_same_vocabulary(teacher_tokenizer: Any, student_tokenizer: Any) -> None:
    """Raise a ValueError unless both tokenizers map the same tokens to the same ids: token-level distillation
    compares the two models' distributions id by id (cross-tokenizer distillation is not supported)."""
    teacher_vocab, student_vocab = teacher_tokenizer.get_vocab(), student_tokenizer.get_vocab()
    if teacher_vocab == student_vocab:
        return
    differing = sorted(set(teacher_vocab.items()) ^ set(student_vocab.items()))[:5]
    names = [
        getattr(t, "name_or_path", None) or type(t).__name__ for t in (teacher_tokenizer, student_tokenizer)
    ]
    raise ValueError(
        f"The teacher's tokenizer {names[0]!r} ({len(teacher_vocab)} tokens) and the student's {names[1]!r} "
        f"({len(student_vocab)} tokens) differ (e.g. token/id pairs {differing}): token-level distillation "
        "needs "
        "one vocabulary. Give the student the teacher's tokenizer (cross-tokenizer distillation is not "
        "supported)."
    )


def _image_tensors(encoded: Mapping[str, Any]) -> dict[str, torch.Tensor]:
    """The processor's image outputs (``pixel_values``, ``image_sizes``...; lists of arrays) as tensors."""
    return {
        key: torch.as_tensor(np.stack([np.asarray(v) for v in value]) if isinstance(value, list) else value)
        for key, value in encoded.items()
    }


def _pad_rows(values: Sequence[Any]) -> torch.Tensor:
    """Per-example arrays (A_i, ...) -> (B, max A_i, ...): float32 padded with NaN, integers (int64) with 0 (a
    valid index)."""
    tensors = [torch.as_tensor(np.asarray(value)) for value in values]
    floating = tensors[0].is_floating_point()
    tensors = [t.float() if floating else t.long() for t in tensors]
    return torch.nn.utils.rnn.pad_sequence(
        tensors, batch_first=True, padding_value=float("nan") if floating else 0
    )


@dataclass
class VisionLanguageCollator:
    """Collates raw ``(image, question, answer)`` examples into ``x`` and, with ``views=True``, ``x_text`` and
    ``x_image`` (see the module docstring), right-padded.

    Args:
        processor: the model's processor (a `LlavaProcessor` or another image-text-to-text processor with a
            chat template); the chat template supplies the special tokens, so text is tokenised with
            ``add_special_tokens=False``.
        image_column, question_column, answer_column: the example fields (the answer a string, or ``None`` for
            an unlabelled example).
        teacher_answer_column: the field of the answer distilled on for an example without a gold answer.
        views: whether to build the modality views (MSD); plain distillation needs only ``x``.
        passthrough_columns: example fields named so, or starting with one of them plus "_" (by default the
            cached teacher outputs of :func:`~hf_msd.teacher_outputs.cache.precompute_teacher_outputs`: one
            row per
            answer token), are collated as (B, A, ...) tensors, the rows past an example's own padded with NaN
            (0 for integer columns) so a reader can count each example's rows.

    Example ``{"image": PIL image, "question": "what shape is in the image?", "answer": "circle"}`` becomes
    ``<s>USER : <image>... what shape is in the image ? ASSISTANT :`` + ``circle </s>`` with ``labels`` on
    ``circle </s>``.
    """

    processor: Any
    image_column: str = "image"
    question_column: str = "question"
    answer_column: str = "answer"
    teacher_answer_column: str = "teacher_answer"
    views: bool = True
    passthrough_columns: tuple[str, ...] = ("teacher_logits",)

    @property
    def tokenizer(self):
        return getattr(self.processor, "tokenizer", self.processor)

    @staticmethod
    def messages(question: str, with_image: bool, answer: str | None = None) -> list[dict]:
        """The chat of one example: a user turn (the image part first, then the question) and, with
        ``answer``, the assistant's turn."""
        content = ([{"type": "image"}] if with_image else []) + [{"type": "text", "text": question}]
        chat = [{"role": "user", "content": content}]
        if answer is not None:
            chat.append({"role": "assistant", "content": [{"type": "text", "text": answer}]})
        return chat

    def prompt_text(self, question: str, with_image: bool) -> str:
        """The rendered prompt, ending with the generation prompt."""
        return self.processor.apply_chat_template(
            self.messages(question, with_image), add_generation_prompt=True, tokenize=False
        )

    def completion_ids(self, question: str, answer: str) -> list[int]:
        """The token ids of the completion: the rendered conversation minus the rendered prompt."""
        prompt = self.prompt_text(question, with_image=True)
        full = self.processor.apply_chat_template(self.messages(question, True, answer), tokenize=False)
        if not full.startswith(prompt):
            raise ValueError(
                "The chat template renders the conversation with another prefix than the prompt with "
                f"add_generation_prompt=True ({full!r} vs {prompt!r}): the answer tokens cannot be told "
                "apart."
            )
        return self.tokenizer(full[len(prompt) :], add_special_tokens=False)["input_ids"]

    def _answers(self, example: Mapping[str, Any], index: int) -> tuple[str | None, str]:
        gold = example.get(self.answer_column)
        target = gold if gold is not None else example.get(self.teacher_answer_column)
        if target is None:
            raise ValueError(
                f"Example {index} has neither {self.answer_column!r} nor {self.teacher_answer_column!r}: "
                "give it "
                "a gold answer, or the teacher's answer to distil on."
            )
        return gold, target

    def _values(self, examples: Sequence[Mapping[str, Any]], column: str) -> list[Any]:
        """``column`` of every example, refusing a missing (None or absent) value by column and index."""
        values = [example.get(column) for example in examples]
        missing = [i for i, value in enumerate(values) if value is None]
        if missing:
            raise ValueError(
                f"Example(s) {missing} of this batch have no {column!r} (None or absent): give every example "
                f"one, or remove those rows (e.g. dataset.filter(lambda row: row[{column!r}] is not None))."
            )
        return values

    def _encode_prompts(self, examples: Sequence[Mapping[str, Any]], view: str | None) -> dict[str, Any]:
        """Unpadded prompt ids (lists) of every example in ``view`` (``None``: the full input), their
        per-token columns (:data:`TOKEN_TYPE_COLUMNS`), and the image tensors when the view has the image."""
        with_image = view != "text"
        questions = [""] * len(examples) if view == "image" else self._values(examples, self.question_column)
        texts = [self.prompt_text(question, with_image) for question in questions]
        kwargs = {"images": self._values(examples, self.image_column)} if with_image else {}
        return dict(self.processor(text=texts, add_special_tokens=False, **kwargs))

    @staticmethod
    def _split_prompts(encoded: dict) -> tuple[list[list[int]], dict[str, list[list[int]]]]:
        """Remove from ``encoded`` the prompt ids, their attention mask and per-token columns; return the ids
        and the per-token columns (what stays in ``encoded`` is the images')."""
        prompts = encoded.pop("input_ids")
        encoded.pop("attention_mask", None)
        return prompts, {key: encoded.pop(key) for key in TOKEN_TYPE_COLUMNS if key in encoded}

    def _pad(self, sequences: list[list[int]], value: int, left: bool = False) -> torch.Tensor:
        length = max(len(sequence) for sequence in sequences)
        rows = [
            [value] * (length - len(s)) + list(s) if left else list(s) + [value] * (length - len(s))
            for s in sequences
        ]
        return torch.tensor(rows, dtype=torch.long)

    def _sequences(self, encoded: dict, completions: list[list[int]], golds: list[bool]) -> dict[str, Any]:
        """``encoded`` prompts followed by the completions, right-padded; images kept as they are."""
        pad = self.tokenizer.pad_token_id
        prompts, token_types = self._split_prompts(encoded)
        ids = [list(p) + c for p, c in zip(prompts, completions)]
        scored = [[IGNORE_INDEX] * len(p) + c for p, c in zip(prompts, completions)]
        batch = {
            "input_ids": self._pad(ids, pad),
            "attention_mask": self._pad([[1] * len(s) for s in ids], 0),
            DISTILLATION_LABELS: self._pad(scored, IGNORE_INDEX),
        }
        for key, values in token_types.items():
            batch[key] = self._pad([list(v) + [0] * len(c) for v, c in zip(values, completions)], 0)
        labels = batch[DISTILLATION_LABELS].clone()
        labels[~torch.tensor(golds)] = IGNORE_INDEX
        batch["labels"] = labels
        batch.update(_image_tensors(encoded))
        return batch

    def __call__(self, examples: Sequence[Mapping[str, Any]]) -> dict[str, torch.Tensor]:
        answers = [self._answers(example, i) for i, example in enumerate(examples)]
        golds = [gold is not None for gold, _ in answers]
        completions = [
            self.completion_ids(example[self.question_column], target)
            for example, (_, target) in zip(examples, answers)
        ]
        batch = self._sequences(self._encode_prompts(examples, None), completions, golds)
        for key in examples[0]:
            if any(key == name or key.startswith(f"{name}_") for name in self.passthrough_columns):
                batch[key] = _pad_rows([example[key] for example in examples])
        if not self.views:
            return batch
        for view in VIEW_NAMES:
            view_batch = self._sequences(self._encode_prompts(examples, view), completions, golds)
            view_batch.pop("labels")  # the task term is on x only
            for key, value in view_batch.items():
                batch[view_key(view, key)] = value
        return batch

    def validate(
        self, dataset: Any, num_labels: int | None = None, multi_label: bool = False, name: str = ""
    ) -> None:
        """Check, before training, that ``dataset`` (a `datasets.Dataset` or a list of dicts) has the columns
        this collator reads (the image, the question, and the answer or the teacher's answer), and that every
        row has a readable image and a non-empty question, naming the bad rows
        (:func:`~hf_msd.data.validation.validate_examples`). The trainers' ``check_data`` calls this."""
        columns = getattr(dataset, "column_names", None)
        if columns is None and isinstance(dataset, list) and dataset:
            columns = list(dataset[0])
        if columns is None:
            return
        missing = [c for c in (self.image_column, self.question_column) if c not in columns]
        if self.answer_column not in columns and self.teacher_answer_column not in columns:
            missing.append(f"{self.answer_column} (or {self.teacher_answer_column})")
        if missing:
            raise ValueError(
                f"{name or 'The dataset'} lacks the column(s) {missing} that VisionLanguageCollator reads "
                "(it has "
                f"{columns}): rename them, or set image_column / question_column / answer_column."
            )
        validate_examples(
            dataset, text_column=self.question_column, image_column=self.image_column, name=name or "dataset"
        )

    def generation_inputs(self, examples: Sequence[Mapping[str, Any]], view: str | None = None) -> dict:
        """Left-padded prompts (no answer) of ``view`` (``None``: image + question; ``"text"``; ``"image"``)
        for ``model.generate``."""
        encoded = self._encode_prompts(examples, view)
        prompts, token_types = self._split_prompts(encoded)
        batch = {
            "input_ids": self._pad(prompts, self.tokenizer.pad_token_id, left=True),
            "attention_mask": self._pad([[1] * len(p) for p in prompts], 0, left=True),
        }
        batch.update({key: self._pad(values, 0, left=True) for key, values in token_types.items()})
        batch.update(_image_tensors(encoded))
        return batch
