"""Multi-label classification metrics: exact match (subset accuracy) and micro-averaged F1 over 0/1
label decisions."""

import datasets
import evaluate

_DESCRIPTION = (
    "exact_match: fraction of examples whose whole 0/1 label vector is right. micro_f1: F1 over all "
    "(example, label) decisions pooled together (0 when there are no positive predictions nor references)."
)
_INPUTS = """
Args:
    predictions (list of list of int): predicted 0/1 per label.
    references (list of list of int): gold 0/1 per label.
Returns:
    exact_match (float), micro_f1 (float): in [0, 1].
"""


class MultiLabel(evaluate.Metric):
    def _info(self):
        vector = datasets.Sequence(datasets.Value("int64"))
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": vector, "references": vector}),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("multilabel needs at least one prediction.")
        exact = sum(int(list(p) == list(r)) for p, r in zip(predictions, references)) / len(predictions)
        pairs = [(p, r) for row_p, row_r in zip(predictions, references) for p, r in zip(row_p, row_r)]
        true_positive = sum(1 for p, r in pairs if p == 1 and r == 1)
        predicted, actual = sum(p for p, _ in pairs), sum(r for _, r in pairs)
        micro_f1 = 2 * true_positive / (predicted + actual) if predicted + actual else 0.0
        return {"exact_match": exact, "micro_f1": micro_f1}
