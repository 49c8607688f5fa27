"""Agreement between a student's and a teacher's predictions (how faithfully a distilled student copies its
teacher), for single-label class indices or multi-label 0/1 decisions."""

import datasets
import evaluate

_DESCRIPTION = (
    "Single-label ('default' config): fraction of examples where the student's predicted class equals the "
    "teacher's. Multi-label ('multilabel' config): per example, the fraction of labels on which the 0/1 "
    "decisions agree, averaged over examples."
)
_INPUTS = """
Args:
    predictions: the student's predictions: int class indices, or lists of 0/1 per label ('multilabel').
    references: the teacher's predictions, in the same form.
Returns:
    agreement (float): in [0, 1].
"""


class Agreement(evaluate.Metric):
    def _info(self):
        if self.config_name == "multilabel":
            value = datasets.Sequence(datasets.Value("int64"))
        else:
            value = datasets.Value("int64")
        return evaluate.MetricInfo(
            description=_DESCRIPTION,
            citation="",
            inputs_description=_INPUTS,
            features=datasets.Features({"predictions": value, "references": value}),
        )

    def _compute(self, predictions, references):
        if len(predictions) == 0:
            raise ValueError("agreement needs at least one prediction.")
        if self.config_name == "multilabel":
            per_example = [
                sum(int(p == r) for p, r in zip(student, teacher)) / len(student)
                for student, teacher in zip(predictions, references)
            ]
        else:
            per_example = [int(p == r) for p, r in zip(predictions, references)]
        return {"agreement": sum(per_example) / len(per_example)}
