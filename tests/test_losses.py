"""hf_msd.distillation.losses against formulas written out here with plain math on small fixed tensors."""

import math
from types import SimpleNamespace

import pytest
import torch

from hf_msd.distillation import losses

STUDENT = torch.tensor([[1.0, -0.5, 0.2], [0.3, 2.0, -1.0]])
TEACHER = torch.tensor([[2.0, 0.1, -0.3], [-1.0, 1.5, 0.5]])
PAIRS = list(zip(STUDENT.tolist(), TEACHER.tolist()))


def softmax(row):
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def sigmoid(v):
    return 1.0 / (1.0 + math.exp(-v))


@pytest.mark.parametrize("temperature", [1.0, 2.0, 4.0])
def test_single_label_kl_matches_hand_formula_with_t_squared(temperature):
    expected = []
    for s_row, t_row in PAIRS:
        p_s = softmax([v / temperature for v in s_row])
        p_t = softmax([v / temperature for v in t_row])
        expected.append(temperature**2 * sum(pt * math.log(pt / ps) for pt, ps in zip(p_t, p_s)))
    got = losses.soft_target_loss(
        STUDENT, TEACHER, problem_type="single_label_classification", temperature=temperature
    )
    assert got.shape == (2,)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_multi_label_binary_kd_matches_hand_formula():
    temperature = 2.0
    expected = []
    for s_row, t_row in PAIRS:
        total = 0.0
        for s, t in zip(s_row, t_row):
            p, q = sigmoid(t / temperature), sigmoid(s / temperature)
            total += p * math.log(p / q) + (1 - p) * math.log((1 - p) / (1 - q))
        expected.append(temperature**2 * total)
    got = losses.soft_target_loss(
        STUDENT, TEACHER, problem_type="multi_label_classification", temperature=temperature
    )
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_mse_kd_on_logits_and_regression():
    expected = [sum((s - t) ** 2 for s, t in zip(sr, tr)) / 3 for sr, tr in PAIRS]
    for problem_type in ("single_label_classification", "multi_label_classification"):
        got = losses.soft_target_loss(
            STUDENT, TEACHER, problem_type=problem_type, loss_type="mse", temperature=3.0
        )
        torch.testing.assert_close(got, torch.tensor(expected))
    # Regression is always MSE to the teacher's output, even with the default loss_type="kl".
    got = losses.soft_target_loss(STUDENT[:, :1], TEACHER[:, :1], problem_type="regression")
    torch.testing.assert_close(got, torch.tensor([(1.0 - 2.0) ** 2, (0.3 + 1.0) ** 2]))


def test_task_losses_match_hand_formulas():
    labels = torch.tensor([0, 1])
    expected = [-math.log(softmax(row)[y]) for row, y in zip(STUDENT.tolist(), labels.tolist())]
    got = losses.task_loss(STUDENT, labels, "single_label_classification")
    torch.testing.assert_close(got, torch.tensor(expected))

    targets = torch.tensor([[1.0, 0.0, 0.3], [0.0, 1.0, 1.0]])
    expected = []
    for s_row, y_row in zip(STUDENT.tolist(), targets.tolist()):
        terms = [
            -(y * math.log(sigmoid(s)) + (1 - y) * math.log(1 - sigmoid(s))) for s, y in zip(s_row, y_row)
        ]
        expected.append(sum(terms) / len(terms))
    got = losses.task_loss(STUDENT, targets, "multi_label_classification")
    torch.testing.assert_close(got, torch.tensor(expected))

    got = losses.task_loss(STUDENT[:, :1], torch.tensor([0.5, 0.0]), "regression")
    torch.testing.assert_close(got, torch.tensor([0.25, 0.09]))


def test_losses_are_float32_for_half_inputs():
    got = losses.soft_target_loss(
        STUDENT.bfloat16(), TEACHER.bfloat16(), problem_type="single_label_classification", temperature=2.0
    )
    assert got.dtype == torch.float32 and (got >= 0).all()


def test_hidden_state_mse_and_cosine_respect_mask():
    student = torch.tensor([[[1.0, 0.0], [0.0, 2.0], [5.0, 5.0]]])
    teacher = torch.tensor([[[0.0, 0.0], [1.0, 1.0], [-5.0, 5.0]]])
    mask = torch.tensor([[1, 1, 0]])
    # mse: per token mean over features, then mean over the 2 real tokens.
    token0 = (1.0**2 + 0.0**2) / 2
    token1 = (1.0**2 + 1.0**2) / 2
    got = losses.hidden_state_loss(student, teacher, attention_mask=mask)
    torch.testing.assert_close(got, torch.tensor([(token0 + token1) / 2]))
    # cosine: 1 - cos per token; token0 has a zero teacher vector (cos = 0 by torch's eps convention).
    cos1 = (0 * 1 + 2 * 1) / (2.0 * math.sqrt(2.0))
    got = losses.hidden_state_loss(student, teacher, attention_mask=mask, loss_type="cosine")
    torch.testing.assert_close(got, torch.tensor([((1 - 0.0) + (1 - cos1)) / 2]))
    # Without a mask, the third token counts too.
    token2 = (10.0**2 + 0.0) / 2
    got = losses.hidden_state_loss(student, teacher)
    torch.testing.assert_close(got, torch.tensor([(token0 + token1 + token2) / 3]))


def attention(rows):
    return torch.tensor(rows)


def test_attention_kl_and_mse_with_head_mean_and_match():
    # (B=1, h=2, L=2, L=2) row-stochastic maps.
    student = attention([[[[0.5, 0.5], [0.9, 0.1]], [[0.2, 0.8], [0.6, 0.4]]]])
    teacher = attention([[[[0.7, 0.3], [1.0, 0.0]], [[0.4, 0.6], [0.5, 0.5]]]])

    def kl(p, q):
        return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q) if pi > 0)

    s, t = student[0].tolist(), teacher[0].tolist()
    # match: head i vs head i, mean over heads and rows.
    expected = sum(kl(t[h][r], s[h][r]) for h in range(2) for r in range(2)) / 4
    got = losses.attention_map_loss(student, teacher, head_reduction="match")
    torch.testing.assert_close(got, torch.tensor([expected]))
    # mean: average heads first.
    s_mean = [[(s[0][r][k] + s[1][r][k]) / 2 for k in range(2)] for r in range(2)]
    t_mean = [[(t[0][r][k] + t[1][r][k]) / 2 for k in range(2)] for r in range(2)]
    expected = sum(kl(t_mean[r], s_mean[r]) for r in range(2)) / 2
    got = losses.attention_map_loss(student, teacher, head_reduction="mean")
    torch.testing.assert_close(got, torch.tensor([expected]))
    # mse with mean heads, only the first query row is real.
    expected = sum((s_mean[0][k] - t_mean[0][k]) ** 2 for k in range(2)) / 2
    got = losses.attention_map_loss(student, teacher, loss_type="mse", attention_mask=torch.tensor([[1, 0]]))
    torch.testing.assert_close(got, torch.tensor([expected]))


def test_attention_head_mean_allows_different_head_counts_and_match_does_not():
    student = torch.full((1, 2, 3, 3), 1 / 3)
    teacher = torch.full((1, 4, 3, 3), 1 / 3)
    torch.testing.assert_close(losses.attention_map_loss(student, teacher), torch.zeros(1))
    with pytest.raises(ValueError, match="head_reduction='mean'"):
        losses.attention_map_loss(student, teacher, head_reduction="match")


def test_resolve_problem_type_like_transformers():
    assert losses.resolve_problem_type(SimpleNamespace(problem_type=None, num_labels=1)) == "regression"
    config = SimpleNamespace(problem_type=None, num_labels=3)
    assert losses.resolve_problem_type(config, torch.tensor([0, 2])) == "single_label_classification"
    assert losses.resolve_problem_type(config, torch.zeros(2, 3)) == "multi_label_classification"
    explicit = SimpleNamespace(problem_type="multi_label_classification", num_labels=3)
    assert losses.resolve_problem_type(explicit, torch.tensor([0, 2])) == "multi_label_classification"


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(ValueError, match="label space"):
        losses.soft_target_loss(STUDENT, TEACHER[:, :2], problem_type="single_label_classification")
    with pytest.raises(ValueError, match="Unknown kd loss_type 'jsd'"):
        losses.soft_target_loss(STUDENT, TEACHER, problem_type="single_label_classification", loss_type="jsd")
    with pytest.raises(ValueError, match="temperature"):
        losses.soft_target_loss(STUDENT, TEACHER, problem_type="single_label_classification", temperature=0)
    with pytest.raises(ValueError, match="problem_type"):
        losses.task_loss(STUDENT, torch.tensor([0, 1]), "ranking")


def test_register_loss_adds_a_selectable_kind():
    @losses.register_loss("soft_target", "l1_test")
    def l1(student_logits, teacher_logits, *, problem_type, temperature):
        return (student_logits - teacher_logits).abs().sum(dim=-1)

    try:
        got = losses.soft_target_loss(
            STUDENT, TEACHER, problem_type="single_label_classification", loss_type="l1_test"
        )
        expected = [sum(abs(s - t) for s, t in zip(sr, tr)) for sr, tr in PAIRS]
        torch.testing.assert_close(got, torch.tensor(expected))
    finally:
        del losses.SOFT_TARGET_LOSSES["l1_test"]
