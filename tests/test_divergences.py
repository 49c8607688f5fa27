"""Forward KL, reverse KL and the generalized JSD (``beta``) against sums written out here in plain math.

The reference of ``beta`` is TRL's ``generalized_jsd_loss``: teacher ``P``, student ``Q``, mixture
``M = beta * P + (1 - beta) * Q``, divergence ``beta * KL(P || M) + (1 - beta) * KL(Q || M)``; 0 is
``KL(P || Q)``, 1 is ``KL(Q || P)``; hf_msd multiplies each by ``T**2``.
"""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from hf_msd.data import VisionLanguageCollator
from hf_msd.data.generative import DISTILLATION_LABELS, view_inputs
from hf_msd.distillation import losses
from hf_msd.trainers import DistillationTrainingArguments, MSDTrainer
from tests.helpers import vlm
from tests.test_token_level import batch, make_trainer, tiny_llama

STUDENT = torch.tensor([[1.0, -0.5, 0.2, 0.7], [0.3, 2.0, -1.0, 0.0], [-2.0, 0.4, 1.1, 0.9]])
TEACHER = torch.tensor([[2.0, 0.1, -0.3, 0.5], [-1.0, 1.5, 0.5, 0.2], [0.6, -0.8, 1.9, -0.4]])
BETAS = [0.0, 0.5, 1.0, 0.3]


def softmax(row: list[float]) -> list[float]:
    exps = [math.exp(v) for v in row]
    return [e / sum(exps) for e in exps]


def sigmoid(v: float) -> float:
    return 1.0 / (1.0 + math.exp(-v))


def kl(p: list[float], q: list[float]) -> float:
    return sum(pi * math.log(pi / qi) for pi, qi in zip(p, q))


def hand_divergence(p_teacher: list[float], q_student: list[float], beta: float) -> float:
    if beta == 0:
        return kl(p_teacher, q_student)
    if beta == 1:
        return kl(q_student, p_teacher)
    mixture = [beta * p + (1 - beta) * q for p, q in zip(p_teacher, q_student)]
    return beta * kl(p_teacher, mixture) + (1 - beta) * kl(q_student, mixture)


@pytest.mark.parametrize("beta", BETAS)
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_single_label_divergence_matches_hand_sums(beta, temperature):
    expected = [
        temperature**2
        * hand_divergence(softmax([v / temperature for v in t]), softmax([v / temperature for v in s]), beta)
        for s, t in zip(STUDENT.tolist(), TEACHER.tolist())
    ]
    got = losses.soft_target_loss(
        STUDENT, TEACHER, problem_type=losses.SINGLE_LABEL, temperature=temperature, beta=beta
    )
    assert got.dtype == torch.float32 and got.shape == (3,)
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_multi_label_divergence_is_the_sum_of_bernoulli_divergences(beta):
    temperature = 2.0
    expected = []
    for s_row, t_row in zip(STUDENT.tolist(), TEACHER.tolist()):
        total = 0.0
        for s, t in zip(s_row, t_row):
            p, q = sigmoid(t / temperature), sigmoid(s / temperature)
            total += hand_divergence([p, 1 - p], [q, 1 - q], beta)
        expected.append(temperature**2 * total)
    got = losses.soft_target_loss(
        STUDENT, TEACHER, problem_type=losses.MULTI_LABEL, temperature=temperature, beta=beta
    )
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("beta", BETAS)
def test_token_level_divergence_sums_the_scored_positions_after_the_causal_shift(beta):
    generator = torch.Generator().manual_seed(0)
    student, teacher = torch.randn(2, 5, 6, generator=generator), torch.randn(2, 5, 6, generator=generator)
    labels = torch.tensor([[-100, -100, 3, 4, -100], [-100, 1, 2, 5, 0]])
    temperature = 1.5
    expected = []
    for b in range(2):
        total = 0.0
        for t in range(1, 5):  # the logits at t - 1 predict the label at t
            if labels[b, t] != -100:
                p = softmax((teacher[b, t - 1] / temperature).tolist())
                q = softmax((student[b, t - 1] / temperature).tolist())
                total += temperature**2 * hand_divergence(p, q, beta)
        expected.append(total)
    got = losses.token_soft_target_loss(
        student, teacher, labels=labels, causal=True, temperature=temperature, beta=beta
    )
    torch.testing.assert_close(got, torch.tensor(expected), rtol=1e-5, atol=1e-6)


def test_beta_0_is_bit_identical_to_the_forward_kl_formula():
    """beta = 0 keeps the forward KL as it was computed before beta existed, to the bit."""
    generator = torch.Generator().manual_seed(1)
    student, teacher = torch.randn(64, 50, generator=generator), torch.randn(64, 50, generator=generator)
    temperature = 3.0
    log_q, log_p = F.log_softmax(student / temperature, dim=-1), F.log_softmax(teacher / temperature, dim=-1)
    before = temperature**2 * F.kl_div(log_q, log_p, reduction="none", log_target=True).sum(dim=-1)
    got = losses.soft_target_loss(
        student, teacher, problem_type=losses.SINGLE_LABEL, temperature=temperature, beta=0.0
    )
    assert torch.equal(got, before)


def test_the_mixture_stays_finite_where_probabilities_underflow():
    """Logits 200 apart: the student's probability of the teacher's class is exp(-200) (0 in float32), and
    the log-space mixture still gives a finite divergence with finite gradients."""
    student = torch.tensor([[100.0, -100.0]], requires_grad=True)
    teacher = torch.tensor([[-100.0, 100.0]])
    loss = losses.soft_target_loss(student, teacher, problem_type=losses.SINGLE_LABEL, beta=0.3)
    loss.sum().backward()
    # Both distributions are one-hot on different classes: M = (0.7, 0.3), the divergence is
    # 0.3 * log(1 / 0.3) + 0.7 * log(1 / 0.7).
    assert loss.item() == pytest.approx(0.3 * math.log(1 / 0.3) + 0.7 * math.log(1 / 0.7), rel=1e-5)
    assert torch.isfinite(student.grad).all()


@pytest.mark.parametrize("beta", [-0.1, 1.5, float("nan")])
def test_beta_outside_0_1_is_refused_by_name(tmp_path, beta):
    with pytest.raises(ValueError, match=r"^beta must be in \[0, 1\]"):
        DistillationTrainingArguments(output_dir=str(tmp_path), beta=beta)
    with pytest.raises(ValueError, match=r"^beta must be in \[0, 1\]"):
        losses.soft_target_loss(STUDENT, TEACHER, problem_type=losses.SINGLE_LABEL, beta=beta)


def test_beta_with_a_loss_type_other_than_kl_is_refused(tmp_path):
    with pytest.raises(ValueError, match="set kd_loss_type='kl' or beta=0"):
        DistillationTrainingArguments(output_dir=str(tmp_path), beta=0.5, kd_loss_type="mse")


@pytest.mark.parametrize("beta", [1.0, 0.3])
def test_the_trainer_distils_with_the_chosen_divergence(tmp_path, beta):
    """DistillationTrainer's KD term of a causal LM is the mean over the labelled tokens of T^2 times the
    hand divergence of the chosen beta."""
    student, teacher = tiny_llama(16, 1, seed=1), tiny_llama(32, 2, seed=2)
    inputs = batch()
    trainer = make_trainer(tmp_path, student, teacher, hard_label_weight=0.0, kd_loss_weight=1.0, beta=beta)
    student.eval()
    loss = trainer.compute_loss(student, dict(inputs))
    with torch.no_grad():
        s = student(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
        t = teacher(input_ids=inputs["input_ids"], attention_mask=inputs["attention_mask"]).logits
    labels = inputs["labels"]
    per_token = [
        4.0 * hand_divergence(softmax((t[b, i - 1] / 2).tolist()), softmax((s[b, i - 1] / 2).tolist()), beta)
        for b in range(labels.shape[0])
        for i in range(1, labels.shape[1])
        if labels[b, i] != -100
    ]
    assert loss.item() == pytest.approx(sum(per_token) / len(per_token), rel=1e-4)


def test_msd_trainer_distils_every_view_with_the_chosen_divergence(tmp_path):
    """A generative MSD step with beta = 1: the KD term on x and the modality terms on x_text and x_image
    are T^2 reverse KL summed over the answer tokens (uniform weights 0.5 each), as written out here."""
    teacher, student = vlm.teacher_and_student()
    collator = VisionLanguageCollator(vlm.processor())
    batch = collator(vlm.raw_examples(4, unlabelled=(1, 2)))
    args = vlm.msd_args(tmp_path, modality_weighting="uniform", beta=1.0)
    trainer = MSDTrainer(model=student, teacher_model=teacher, args=args, data_collator=collator)
    student.eval()
    loss = trainer.compute_loss(student, dict(batch))

    def logits(model, inputs):
        with torch.no_grad():
            return model(
                **{k: v for k, v in inputs.items() if k not in ("labels", DISTILLATION_LABELS)}
            ).logits

    def reverse_kd_sum(view):
        """Per example: sum over its answer tokens of T^2 KL(p_S || p_T) at T = 2, (B,)."""
        scored = view[DISTILLATION_LABELS][:, 1:] != -100
        s = torch.log_softmax(logits(student, view)[:, :-1] / 2, dim=-1)
        t = torch.log_softmax(logits(teacher, view)[:, :-1] / 2, dim=-1)
        return (4 * (s.exp() * (s - t)).sum(-1) * scored).sum(-1)

    labels = batch["labels"]
    gold = labels[:, 1:] != -100
    task = torch.nn.functional.cross_entropy(logits(student, batch)[:, :-1][gold], labels[:, 1:][gold])
    tokens = (batch[DISTILLATION_LABELS][:, 1:] != -100).sum()
    expected = 0.3 * task + 0.7 * reverse_kd_sum(batch).sum() / tokens
    for name in ("image", "text"):
        expected = expected + 0.5 * reverse_kd_sum(view_inputs(batch, name)).sum() / tokens
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)
