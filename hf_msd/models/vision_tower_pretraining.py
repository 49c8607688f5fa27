"""Pretraining a vision-language model's vision tower as an image classifier, before the projector and the
language model are trained (the first stage of a LLaVA-style recipe when no pretrained tower exists).

A tiny tower trained end to end with a language model learns the question prior, not the image: training it
alone on attributes of the images (on easy-VQA the shape and the colour, read off the training questions'
answers) gives patch features that name what is in the image. :class:`VisionTowerClassifier` puts one linear
head per attribute on the mean of the tower's last-layer patch tokens (the tokens the projector receives);
:func:`pretrain_vision_tower` trains it with AdamW and returns the per-attribute accuracy on held-out images.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

#: The label of an attribute no answer names: cross-entropy's default ``ignore_index``.
IGNORE_INDEX = -100


def image_attribute_labels(
    image_ids: Sequence[int], answers: Sequence[str], attributes: Mapping[str, Sequence[str]]
) -> dict[int, dict[str, int]]:
    """The attribute labels of each image, read off its questions' answers.

    Args:
        image_ids: the image of each question.
        answers: each question's answer (a string).
        attributes: attribute name -> its values (e.g. ``{"shape": ["circle", ...], "color": [...]}``); an
            answer that is one of an attribute's values labels the question's image with that value's index.

    Returns:
        ``{image_id: {attribute: index}}`` with ``-100`` (ignored) for an attribute no answer names. An image
        whose answers name two values of one attribute raises a ValueError.
    """
    index = {value: (name, i) for name, values in attributes.items() for i, value in enumerate(values)}
    labels: dict[int, dict[str, int]] = {}
    for image_id, answer in zip(image_ids, answers):
        row = labels.setdefault(image_id, dict.fromkeys(attributes, IGNORE_INDEX))
        if answer not in index:
            continue
        name, value = index[answer]
        if row[name] not in (IGNORE_INDEX, value):
            raise ValueError(f"Image {image_id} has two {name} answers: {row[name]} and {value}.")
        row[name] = value
    return labels


def clip_patch_tokens(tower: nn.Module, pixel_values: torch.Tensor) -> torch.Tensor:
    """The patch tokens (B, P, H) of a tower whose ``last_hidden_state`` (B, 1 + P, H) starts with a CLS
    token (CLIP), on images ``pixel_values`` (B, 3, S, S)."""
    return tower(pixel_values=pixel_values).last_hidden_state[:, 1:]


class VisionTowerClassifier(nn.Module):
    """A vision tower with one linear head per attribute on its mean-pooled last-layer patch tokens.

    Args:
        tower: a transformers vision model.
        num_classes: attribute name -> number of values.
        patch_tokens: ``(tower, pixels) -> (B, P, H)``, the tower's patch tokens on a batch of ``B`` images'
            pixels (one row per image); default :func:`clip_patch_tokens`. Each family's is in
            :data:`hf_msd.models.vision_language_parts.VLM_LAYOUTS`.
        hidden_size: ``H``; default ``tower.config.hidden_size``.
    """

    def __init__(
        self,
        tower: nn.Module,
        num_classes: Mapping[str, int],
        patch_tokens: Callable[[nn.Module, torch.Tensor], torch.Tensor] = clip_patch_tokens,
        hidden_size: int | None = None,
    ):
        super().__init__()
        self.tower = tower
        self.patch_tokens = patch_tokens
        hidden = tower.config.hidden_size if hidden_size is None else hidden_size
        self.heads = nn.ModuleDict({name: nn.Linear(hidden, n) for name, n in num_classes.items()})

    def forward(self, pixel_values: torch.Tensor) -> dict[str, torch.Tensor]:
        """``{attribute: logits (B, num_classes)}`` of ``B`` images' pixels ``pixel_values`` (one row per
        image, e.g. (B, 3, S, S))."""
        pooled = self.patch_tokens(self.tower, pixel_values).mean(dim=1)
        return {name: head(pooled) for name, head in self.heads.items()}

    def loss(self, pixel_values: torch.Tensor, labels: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """The sum over attributes of the mean cross-entropy over the images labelled with it."""
        logits = self(pixel_values)
        terms = [
            nn.functional.cross_entropy(logits[name], labels[name], ignore_index=IGNORE_INDEX)
            for name in logits
            if (labels[name] != IGNORE_INDEX).any()
        ]
        if not terms:  # no image of the batch is labelled: a zero loss that still reaches every head
            return sum(values.sum() for values in logits.values()) * 0.0
        return torch.stack(terms).sum()

    @torch.no_grad()
    def accuracy(
        self, pixel_values: torch.Tensor, labels: Mapping[str, torch.Tensor], batch_size: int = 256
    ) -> dict[str, float]:
        """Per attribute, the fraction of labelled images whose argmax is the label."""
        self.eval()
        hits = dict.fromkeys(self.heads, 0)
        counts = dict.fromkeys(self.heads, 0)
        for start in range(0, len(pixel_values), batch_size):
            logits = self(pixel_values[start : start + batch_size])
            for name, values in logits.items():
                gold = labels[name][start : start + batch_size]
                known = gold != IGNORE_INDEX
                hits[name] += int((values.argmax(-1)[known] == gold[known]).sum())
                counts[name] += int(known.sum())
        return {name: hits[name] / max(counts[name], 1) for name in hits}


def pretrain_vision_tower(
    classifier: VisionTowerClassifier,
    pixel_values: torch.Tensor,
    labels: Mapping[str, torch.Tensor],
    *,
    epochs: int,
    learning_rate: float,
    batch_size: int = 64,
    weight_decay: float = 0.01,
    seed: int = 0,
) -> list[float]:
    """Train ``classifier`` (tower and heads) on images ``pixel_values`` (N, ...: one row per image) and
    their ``labels`` (``{attribute: (N,) long}``, -100 where unknown) with AdamW and a cosine schedule;
    returns the mean loss of each epoch."""
    if epochs < 1 or learning_rate <= 0:
        raise ValueError(f"epochs must be >= 1 and learning_rate > 0, got {epochs} and {learning_rate}.")
    generator = torch.Generator().manual_seed(seed)
    optimizer = torch.optim.AdamW(classifier.parameters(), lr=learning_rate, weight_decay=weight_decay)
    steps = epochs * -(-len(pixel_values) // batch_size)
    schedule = torch.optim.lr_scheduler.OneCycleLR(
        optimizer, max_lr=learning_rate, total_steps=steps, pct_start=0.1, anneal_strategy="cos"
    )
    losses = []
    for _ in range(epochs):
        classifier.train()
        order = torch.randperm(len(pixel_values), generator=generator)
        total, batches = 0.0, 0
        for start in range(0, len(order), batch_size):
            rows = order[start : start + batch_size]
            loss = classifier.loss(pixel_values[rows], {name: value[rows] for name, value in labels.items()})
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
            schedule.step()
            total, batches = total + loss.item(), batches + 1
        losses.append(total / batches)
    classifier.eval()
    return losses
