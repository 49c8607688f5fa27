"""Accuracy of single-label predictions: the fraction of examples whose predicted class is the reference."""

import datasets
import evaluate

_DESCRIPTION = "Fraction of examples where the predicted class index equals the reference class index."
_INPUTS = """
Args:
    predictions (list of int): predicted class indices (e.g. argmax of the logits).
    references (list of int): gold class indices.
Returns:
    accuracy (float): in [0, 1].
"""


class Accuracy(evaluate.Metric):
    def _info(self):
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features(
                {"predictions": datasets.Value("int64"), "references": datasets.Value("int64")}
            ),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("accuracy needs at least one prediction.")
        correct = sum(int(p == r) for p, r in zip(predictions, references))
        return {"accuracy": correct / len(predictions)}
