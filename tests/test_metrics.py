"""hf_msd.metrics: the offline evaluate modules and the compute_metrics factory, against hand counts."""

import os

import numpy as np
import pytest
from transformers import EvalPrediction

from hf_msd.metrics import METRICS_DIR, available_metrics, load_metric, make_compute_metrics


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")


def test_metrics_ship_as_local_evaluate_scripts():
    assert {"accuracy", "agreement", "multilabel"} <= set(available_metrics())
    for name in available_metrics():
        assert os.path.isfile(METRICS_DIR / name / f"{name}.py")


def test_accuracy_counts_correct_predictions():
    # 3 of 5 right.
    result = load_metric("accuracy").compute(predictions=[0, 2, 1, 1, 0], references=[0, 2, 2, 1, 1])
    assert result == {"accuracy": 3 / 5}


def test_agreement_single_and_multi_label():
    result = load_metric("agreement").compute(predictions=[1, 1, 0, 2], references=[1, 0, 0, 2])
    assert result == {"agreement": 3 / 4}
    # Example 1 agrees on 2 of 3 labels, example 2 on 3 of 3.
    result = load_metric("agreement", "multilabel").compute(
        predictions=[[1, 0, 1], [0, 0, 1]], references=[[1, 1, 1], [0, 0, 1]]
    )
    assert result["agreement"] == pytest.approx((2 / 3 + 1) / 2)


def test_multilabel_exact_match_and_micro_f1():
    predictions = [[1, 0, 1], [0, 1, 0], [1, 1, 0]]
    references = [[1, 0, 1], [1, 1, 0], [0, 0, 0]]
    # true positives 3 (two in row 0, one in row 1); predicted positives 2 + 1 + 2 = 5; actual 2 + 2 + 0 = 4.
    result = load_metric("multilabel").compute(predictions=predictions, references=references)
    assert result["exact_match"] == pytest.approx(1 / 3)
    assert result["micro_f1"] == pytest.approx(2 * 3 / (5 + 4))


def test_unknown_metric_names_the_available_ones():
    with pytest.raises(ValueError, match="available"):
        load_metric("bleu")


def test_compute_metrics_factory_for_each_problem_type():
    logits = np.array([[2.0, 0.1, -1.0], [0.0, 3.0, 1.0], [0.5, 0.2, 0.9]])
    single = make_compute_metrics("single_label_classification")
    assert single(EvalPrediction(predictions=logits, label_ids=np.array([0, 1, 1]))) == {"accuracy": 2 / 3}

    multi = make_compute_metrics("multi_label_classification")
    # Decisions (logit > 0): [1,1,0], [0,1,1], [1,1,1]; soft labels binarised at 0.5.
    soft = np.array([[0.9, 0.6, 0.0], [0.3, 1.0, 0.0], [1.0, 1.0, 1.0]])
    result = multi(EvalPrediction(predictions=(logits,), label_ids=soft))
    # Binarised labels: [1,1,0], [0,1,0], [1,1,1]. tp = 2 + 1 + 3 = 6; predicted 2 + 2 + 3 = 7; actual 6.
    assert result["exact_match"] == pytest.approx(2 / 3)
    assert result["micro_f1"] == pytest.approx(2 * 6 / (7 + 6))

    regression = make_compute_metrics("regression")
    result = regression(EvalPrediction(predictions=np.array([[1.0], [2.0]]), label_ids=np.array([0.0, 4.0])))
    assert result["mse"] == pytest.approx((1.0 + 4.0) / 2)
