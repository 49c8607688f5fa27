"""hf_msd.distillation.objective against hand computations on small tensors."""

import pytest
import torch
import torch.nn.functional as F

from hf_msd.distillation import objective

X = -100


def test_sequence_level_counts_leave_unlabelled_examples_out_of_the_labelled_count():
    batch = {"labels": torch.tensor([2, X, 0, X, 1]), "input_ids": torch.ones(5, 3, dtype=torch.long)}
    counts = objective.count_batch(batch, None, None, "single_label_classification", library_task=True)
    assert counts.tolist() == [5, 3, 0, 0]
    # The model computes its own task loss: no labelled count for the library.
    assert objective.count_batch(batch, None, None, "single_label_classification", False).tolist() == [
        5,
        0,
        0,
        0,
    ]


def test_causal_counts_shift_the_labels_and_count_the_distilled_tokens_apart():
    labels = torch.tensor([[X, X, 7, 8], [X, X, X, X]])  # after the shift: 2 and 0 labelled tokens
    distilled = torch.tensor([[X, X, 7, 8], [X, 5, 6, X]])  # 2 and 2 distilled tokens
    batch = {"input_ids": torch.ones(2, 4, dtype=torch.long), "labels": labels}
    assert objective.count_batch(batch, distilled, "causal", None, True).tolist() == [2, 0, 2, 4]
    assert objective.count_batch(batch, None, "causal", None, True).tolist() == [2, 0, 2, 2]


def test_reduce_terms_divides_each_term_by_its_count():
    terms = {
        "task": torch.tensor([1.0, 0.0, 3.0]),
        "kd": torch.tensor([2.0, 4.0, 6.0]),
        "hidden": torch.tensor([0.5, 0.5, 2.0]),
        "modality_text": torch.tensor([3.0, 3.0, 3.0]),
    }
    counts = torch.tensor([3.0, 2.0, 5.0, 4.0])  # examples, labelled, tokens, distilled
    sequence = objective.reduce_terms(terms, counts, None)
    assert sequence.item() == pytest.approx(4 / 2 + 12 / 3 + 3 / 3 + 9 / 3)
    token = objective.reduce_terms(terms, counts, "causal")
    assert token.item() == pytest.approx(4 / 5 + 12 / 4 + 3 / 3 + 9 / 4)
    # No labelled example: the task term's sum (0) is divided by 1, not 0.
    none = objective.reduce_terms({"task": torch.zeros(3)}, torch.tensor([3.0, 0.0, 0.0, 0.0]), None)
    assert none.item() == 0.0
    means = objective.term_means({"task": torch.tensor(4.0), "kd": torch.tensor(12.0)}, counts, "causal")
    assert means == pytest.approx({"task": 4 / 5, "kd": 12 / 4})


def test_soft_target_dispatches_on_the_token_level():
    generator = torch.Generator().manual_seed(0)
    s, t, temperature = torch.randn(3, 4, generator=generator), torch.randn(3, 4, generator=generator), 2.0
    log_p, log_q = F.log_softmax(t / temperature, -1), F.log_softmax(s / temperature, -1)
    hand = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(-1)
    common = dict(temperature=temperature, loss_type="kl", attention_mask=None)
    sequence = objective.soft_target(
        s, t, distilled_labels=None, token_level=None, problem_type="single_label_classification", **common
    )
    torch.testing.assert_close(sequence, hand)
    # Token level, causal: the logits at position t score the label at t + 1; per example a sum.
    s3, t3 = torch.randn(2, 3, 4, generator=generator), torch.randn(2, 3, 4, generator=generator)
    labels = torch.tensor([[X, 1, 2], [X, X, 3]])
    token = objective.soft_target(
        s3,
        t3,
        distilled_labels=labels,
        token_level="causal",
        problem_type="single_label_classification",
        **common,
    )
    log_p, log_q = F.log_softmax(t3 / temperature, -1), F.log_softmax(s3 / temperature, -1)
    per_position = temperature**2 * (log_p.exp() * (log_p - log_q)).sum(-1)  # (2, 3)
    expected = torch.stack([per_position[0, 0] + per_position[0, 1], per_position[1, 1]])
    torch.testing.assert_close(token, expected)


def test_teacher_agreement_per_problem_type():
    s = torch.tensor([[2.0, -1.0], [0.5, 1.0]])
    t = torch.tensor([[1.0, 0.0], [3.0, -2.0]])
    assert objective.teacher_agreement(s, t, "single_label_classification").tolist() == [1.0, 0.0]
    assert objective.teacher_agreement(s, t, "multi_label_classification").tolist() == [1.0, 0.5]
    assert objective.teacher_agreement(s, t, "regression") is None
