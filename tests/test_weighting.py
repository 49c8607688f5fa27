import pytest
import torch

from hf_msd.distillation.weighting import (
    InstanceWeighting,
    LearnedWeighting,
    PopulationWeighting,
    UniformWeighting,
    build_weighting,
    saliency_weights,
)

NAMES = ["text", "image"]


def test_saliency_weights_formula_and_zero_rows():
    saliency = torch.tensor([[1.0, 3.0], [0.0, 0.0], [2.0, -1.0]])
    got = saliency_weights(saliency, 0.5)
    # lambda * M * s_m / sum_k s_k; all-zero rows -> lambda; negatives count as 0.
    want = torch.tensor([[0.5 * 2 * 1 / 4, 0.5 * 2 * 3 / 4], [0.5, 0.5], [1.0, 0.0]])
    torch.testing.assert_close(got, want)


def test_uniform():
    torch.testing.assert_close(UniformWeighting(NAMES, 0.3)(3), torch.full((3, 2), 0.3))


def test_population_weights_and_state_dict():
    weighting = PopulationWeighting(NAMES, 2.0)
    with pytest.raises(RuntimeError, match="set_population_saliency"):
        weighting(2)
    weighting.set_population_saliency(torch.tensor([0.3, 0.1]))
    torch.testing.assert_close(weighting(2), torch.tensor([[3.0, 1.0], [3.0, 1.0]]))
    restored = PopulationWeighting(NAMES, 2.0)
    restored.load_state_dict(weighting.state_dict())
    torch.testing.assert_close(restored(1), torch.tensor([[3.0, 1.0]]))


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -0.5])
def test_population_saliency_that_is_not_finite_is_refused_and_leaves_the_weighting_unset(bad):
    weighting = PopulationWeighting(NAMES, 2.0)
    with pytest.raises(FloatingPointError, match=r"population saliency \{'text': 0\.3, 'image': .*\} is not"):
        weighting.set_population_saliency(torch.tensor([0.3, bad]))
    assert not weighting.has_population_saliency
    saved = {"population_saliency": torch.tensor([float("nan")] * 2)}  # the "unset" of older checkpoints
    weighting.load_state_dict(saved)
    assert not weighting.has_population_saliency


def test_instance_weights_per_example():
    saliency = torch.tensor([[1.0, 1.0], [0.2, 0.6]])
    got = InstanceWeighting(NAMES, 1.0)(2, saliency)
    torch.testing.assert_close(got, torch.tensor([[1.0, 1.0], [0.5, 1.5]]))
    with pytest.raises(ValueError, match="saliency"):
        InstanceWeighting(NAMES, 1.0)(2)


def test_learned_starts_uniform_and_network_rows_sum_to_lambda_m():
    torch.testing.assert_close(LearnedWeighting(NAMES, 0.7)(2), torch.full((2, 2), 0.7))
    network = LearnedWeighting(NAMES, 0.7, hidden_size=4)
    assert network.needs_instance_saliency
    weights = network(3, torch.rand(3, 2))
    torch.testing.assert_close(weights.sum(-1), torch.full((3,), 1.4))


def quadratic_meta_step(weighting, theta, inner_lr):
    """Train loss w_0 (theta - a)^2 + w_1 (theta - b)^2, held-out loss (theta' - a)^2."""
    a, b = torch.tensor([1.0, 1.0]), torch.tensor([-1.0, 0.0])

    def train_loss():
        w = weighting(1)[0]
        return w[0] * (theta - a).square().sum() + w[1] * (theta - b).square().sum()

    def val_loss(params):
        return (params["theta"] - a).square().sum()

    return weighting.meta_step(train_loss, val_loss, {"theta": theta}, inner_lr), a, b


def test_meta_step_moves_weight_toward_the_term_that_helps_validation():
    weighting = LearnedWeighting(NAMES, 1.0, learning_rate=0.1)
    theta = torch.zeros(2, requires_grad=True)
    val_loss, a, b = quadratic_meta_step(weighting, theta, inner_lr=0.1)
    # By hand: w = (1, 1); theta' = theta - 0.1 * (2 (theta - a) + 2 (theta - b)) = 0.2 (a + b) = (0, 0.2).
    theta_prime = 0.2 * (a + b)
    assert val_loss.item() == pytest.approx((theta_prime - a).square().sum().item())
    # dL_val/dw_0 = 2 (theta' - a) . (-0.1 * 2 (theta - a)) < 0 and dL_val/dw_1 > 0 -> alpha_0 rises.
    d_w0 = (2 * (theta_prime - a) * (-0.2 * (theta - a))).sum()
    d_w1 = (2 * (theta_prime - a) * (-0.2 * (theta - b))).sum()
    assert d_w0 < 0 < d_w1
    alpha = weighting.alpha.detach()
    # Adam's first step moves each coordinate by lr against the sign of its gradient; with the softmax,
    # d/dalpha_0 = w_0 w_1 / lambda M * (dL/dw_0 - dL/dw_1) * ... has the sign of d_w0 - d_w1 < 0.
    torch.testing.assert_close(alpha, torch.tensor([0.1, -0.1]), rtol=1e-3, atol=1e-4)
    assert theta.grad is None  # the student's gradients are left alone


def test_meta_step_optimizer_state_survives_state_dict():
    weighting = LearnedWeighting(NAMES, 1.0, learning_rate=0.1)
    quadratic_meta_step(weighting, torch.zeros(2, requires_grad=True), 0.1)
    restored = LearnedWeighting(NAMES, 1.0, learning_rate=0.1)
    restored.load_state_dict(weighting.state_dict())
    torch.testing.assert_close(restored.alpha, weighting.alpha)
    assert restored.optimizer.state_dict()["state"][0]["step"] == 1
    quadratic_meta_step(weighting, torch.zeros(2, requires_grad=True), 0.1)
    quadratic_meta_step(restored, torch.zeros(2, requires_grad=True), 0.1)
    torch.testing.assert_close(restored.alpha, weighting.alpha)


def test_build_weighting():
    assert isinstance(build_weighting("learned", NAMES, 1.0, learning_rate=0.5), LearnedWeighting)
    assert isinstance(build_weighting("uniform", NAMES, 1.0, learning_rate=0.5), UniformWeighting)
    with pytest.raises(ValueError, match="modality_weighting 'best'"):
        build_weighting("best", NAMES)
