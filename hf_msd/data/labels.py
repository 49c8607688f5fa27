"""A trained classifier's label order checked against the data's label names, by name.

A model's logits column ``i`` means ``config.id2label[i]``; the data's label id ``j`` means the ``j``-th of
its label names. A model trained elsewhere may list the same names in another order: used as it is, every
score and distillation target would compare column ``i`` with data id ``i`` and be silently wrong.
:func:`align_label_order` compares the two orders by name and, when they are a permutation of each other,
reorders the model's classifier rows (weight and bias of its last ``Linear`` with ``num_labels`` outputs)
and rewrites ``id2label`` / ``label2id``, so the model's logits columns follow the data's order, and a
student made from it carries that order too. Different label sets are refused, naming both orders.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import torch
from transformers import PreTrainedModel
from transformers.utils import logging

logger = logging.get_logger(__name__)


def model_label_names(model: PreTrainedModel) -> list[str]:
    """``config.id2label`` as a list ordered by id (the meaning of each logits column)."""
    id2label = {int(k): str(v) for k, v in model.config.id2label.items()}
    return [id2label[i] for i in range(model.config.num_labels)]


def _is_default(names: Sequence[str]) -> bool:
    return all(name == f"LABEL_{i}" for i, name in enumerate(names))


def _classifier_head(model: PreTrainedModel) -> torch.nn.Linear:
    num_labels = model.config.num_labels
    heads = [m for m in model.modules() if isinstance(m, torch.nn.Linear) and m.out_features == num_labels]
    if not heads:
        raise ValueError(
            f"{type(model).__name__} has no Linear layer with num_labels={num_labels} outputs to reorder."
        )
    return heads[-1]


def _permute_head(head: torch.nn.Linear, order: Sequence[int]) -> None:
    with torch.no_grad():
        head.weight.copy_(head.weight[list(order)])
        if head.bias is not None:
            head.bias.copy_(head.bias[list(order)])


def align_label_order(
    model: PreTrainedModel,
    label_names: Sequence[str],
    name: str = "model",
    check_inputs: Mapping[str, torch.Tensor] | None = None,
) -> PreTrainedModel:
    """Make ``model``'s logits columns follow ``label_names`` (the data's label order), in place.

    Args:
        model: a sequence classifier whose ``config.id2label`` names its logits columns.
        label_names: the data's label names, by label id.
        name: how errors and logs call the model (e.g. ``"--teacher_name_or_path"``).
        check_inputs: a batch of model inputs; when given, the reordered model's logits are checked to be
            the old logits with their columns permuted (so a head the model does not end with is refused
            instead of silently half-reordered).

    Returns:
        ``model``: unchanged when its names are in the data's order (or are transformers' defaults
        ``LABEL_<i>`` with as many labels as the data: nothing to compare by name, a warning says so),
        otherwise with its classifier rows permuted and ``id2label`` / ``label2id`` rewritten.

    Raises:
        ValueError: the model's label names differ from the data's as sets (both orders named), or the
            reordering did not permute the logits.
    """
    label_names = [str(label) for label in label_names]
    names = model_label_names(model)
    if _is_default(names) and len(names) == len(label_names):
        logger.warning(
            f"{name} has no label names (id2label is LABEL_0, LABEL_1, ...): assuming its logits follow the "
            f"data's label order {label_names}."
        )
        return model
    if sorted(names) != sorted(label_names):
        raise ValueError(
            f"{name} predicts the labels {names} (id2label order), but the data's label names are "
            f"{label_names}: not the same set, so its logits cannot be matched to the data's labels. "
            "Use a model trained on these labels (or set class_names to the model's label names)."
        )
    if names == label_names:
        return model
    order = [names.index(label) for label in label_names]  # new column j = old column order[j]
    head = _classifier_head(model)
    if check_inputs is not None:
        was_training = model.training
        model.eval()
        with torch.no_grad():
            before = model(**check_inputs).logits
            _permute_head(head, order)
            after = model(**check_inputs).logits
        model.train(was_training)
        if not torch.allclose(after, before[:, order], rtol=1e-4, atol=1e-5):
            _permute_head(head, [order.index(i) for i in range(len(order))])  # undo
            raise ValueError(
                f"{name} lists the data's labels in another order ({names}; the data's: {label_names}), and "
                f"reordering its last {head.out_features}-output Linear layer did not reorder its logits. "
                "Relabel the model in the data's order (or set class_names to the model's order)."
            )
    else:
        _permute_head(head, order)
    model.config.id2label = dict(enumerate(label_names))
    model.config.label2id = {label: i for i, label in enumerate(label_names)}
    logger.warning(
        f"{name} lists the labels in another order than the data ({names}); its classifier rows were "
        f"reordered to the data's order {label_names}."
    )
    return model
