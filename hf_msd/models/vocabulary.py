"""Compact vocabulary: restrict a tokenizer and a model's word embeddings to the tokens a corpus uses.

A small data set uses a tiny part of a pretrained vocabulary (easy-VQA's questions: a few dozen of
MiniLM's 30,522 WordPiece tokens), yet the embedding table dominates a small model's parameters. The
compact vocabulary keeps, in their original order, the tokens that the tokenizer produces on the given
texts plus every special token (``[PAD]``, ``[UNK]``, ``[CLS]``, ``[SEP]``, ``[MASK]``...): token ``k`` of the
new vocabulary is the ``k``-th kept token, and the new embedding row ``k`` is the old row of that token.

The new tokenizer is the same class built from the kept vocabulary (``vocab=`` of transformers' WordPiece
tokenizers such as BERT's), so it saves and reloads like any tokenizer (``tokenizer.json``,
``tokenizer_config.json``) and a model saved with it works with ``AutoProcessor`` / ``pipeline()``. On the
given texts it produces exactly the same tokens as the original (checked; an error otherwise). A word the
texts never contained may tokenize differently: into other kept sub-words, or ``[UNK]``.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

#: init kwargs that describe where the original vocabulary came from, not how the tokenizer behaves.
_SOURCE_KWARGS = (
    "vocab",
    "vocab_file",
    "tokenizer_file",
    "merges",
    "name_or_path",
    "is_local",
    "local_files_only",
    "added_tokens_decoder",
    "backend",
)


def used_token_ids(
    tokenizer: PreTrainedTokenizerBase, texts: Sequence[str], batch_size: int = 1024
) -> list[int]:
    """The sorted ids of every token ``tokenizer`` produces on ``texts`` (special tokens included), plus
    the ids of all its special tokens and of its unknown token."""
    ids = set(tokenizer.all_special_ids)
    if tokenizer.unk_token_id is not None:
        ids.add(tokenizer.unk_token_id)
    for start in range(0, len(texts), batch_size):
        for row in tokenizer(list(texts[start : start + batch_size]))["input_ids"]:
            ids.update(row)
    return sorted(ids)


def compact_tokenizer(tokenizer: PreTrainedTokenizerBase, kept_ids: Sequence[int]) -> PreTrainedTokenizerBase:
    """A tokenizer of ``tokenizer``'s class whose vocabulary is the tokens ``kept_ids`` (new id = position in
    ``kept_ids``), with the original's settings (lower-casing, special tokens, maximum length...)."""
    tokens = tokenizer.convert_ids_to_tokens(list(kept_ids))
    if tokenizer.unk_token is not None and tokenizer.unk_token not in tokens:
        raise ValueError(f"kept_ids must include the unknown token {tokenizer.unk_token!r}.")
    vocab = {token: index for index, token in enumerate(tokens)}
    if len(vocab) != len(tokens):
        raise ValueError("kept_ids must be distinct token ids.")
    kwargs = {k: v for k, v in tokenizer.init_kwargs.items() if k not in _SOURCE_KWARGS}
    try:
        compact = type(tokenizer)(vocab=vocab, **kwargs)
    except TypeError as error:
        raise TypeError(
            f"{type(tokenizer).__name__} cannot be rebuilt from a vocabulary dict (vocab=...); the compact "
            "vocabulary supports WordPiece tokenizers such as BERT's (MiniLM, DistilBERT...)."
        ) from error
    compact.model_max_length = tokenizer.model_max_length
    return compact


def compact_embeddings(
    model: PreTrainedModel, kept_ids: Sequence[int], pad_token_id: int | None = None
) -> None:
    """Keep only the rows ``kept_ids`` of ``model``'s input word embeddings, in place (new row ``k`` = old row
    ``kept_ids[k]``), and set the vocabulary size (and the padding id, given as an OLD id) in its config."""
    embedding = model.get_input_embeddings()
    if embedding is None:
        raise ValueError(f"{type(model).__name__} has no input word embeddings to compact.")
    kept = torch.as_tensor(list(kept_ids), dtype=torch.long)
    if kept.numel() == 0 or kept.max() >= embedding.num_embeddings or kept.min() < 0:
        raise ValueError(f"kept_ids must be ids in [0, {embedding.num_embeddings}).")
    new_pad = list(kept_ids).index(pad_token_id) if pad_token_id is not None else None
    embedding.weight = nn.Parameter(embedding.weight.detach()[kept].clone())
    embedding.num_embeddings = len(kept)
    embedding.padding_idx = new_pad
    configs = [model.config, getattr(model.config, "text_config", None)]
    configs += [module.config for module in model.modules() if isinstance(module, PreTrainedModel)]
    for config in {id(c): c for c in configs if c is not None and hasattr(c, "vocab_size")}.values():
        if config.vocab_size is None:
            continue
        config.vocab_size = len(kept)
        if new_pad is not None and hasattr(config, "pad_token_id"):
            config.pad_token_id = new_pad


def compact_vocabulary(
    model: PreTrainedModel | None, tokenizer: PreTrainedTokenizerBase, texts: Sequence[str]
) -> tuple[PreTrainedModel | None, PreTrainedTokenizerBase]:
    """Restrict ``tokenizer`` and ``model``'s word embeddings (in place; ``model`` may be None) to the
    tokens of ``texts`` plus the special tokens. Returns ``(model, new_tokenizer)``.

    Raises a ValueError if the new tokenizer does not reproduce the original tokens on ``texts``.
    """
    kept = used_token_ids(tokenizer, texts)
    compact = compact_tokenizer(tokenizer, kept)
    check = list(texts[:2048])
    old_tokens = [tokenizer.convert_ids_to_tokens(row) for row in tokenizer(check)["input_ids"]]
    new_tokens = [compact.convert_ids_to_tokens(row) for row in compact(check)["input_ids"]]
    if old_tokens != new_tokens:
        first = next(i for i, (a, b) in enumerate(zip(old_tokens, new_tokens)) if a != b)
        raise ValueError(
            f"The compact tokenizer splits {check[first]!r} into {new_tokens[first]} instead of "
            f"{old_tokens[first]}; this tokenizer cannot be compacted safely."
        )
    if model is not None:
        compact_embeddings(model, kept, pad_token_id=tokenizer.pad_token_id)
    return model, compact
