"""Supervised Fourier regression: data against the environment's prior, the Monte Carlo predictive
cross-entropy against a direct computation, the trainer (loss decreases, reproducible), protocols."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from scipy import stats

from bayes_agents.beliefs import LaplaceBelief, RL2Belief
from bayes_agents.beliefs.vrnn import VRNNBelief
from bayes_agents.supervised import (
    RegressionModel,
    attach_posterior,
    evaluate_regression,
    make_regression_model,
    regression_inputs,
    sample_fourier_data,
    task_rng,
    train_regression,
)
from bayes_envs.regression import FourierBatch

TINY = {"hidden_size": 8, "latent_dim": 3, "embed_sizes": (8,), "head_sizes": (8,)}


def test_sampled_data_follow_the_environment_prior() -> None:
    xs, ys = sample_fourier_data(3000, 2, np.random.default_rng(0))
    assert xs.shape == ys.shape == (3000, 2)
    assert np.all(np.abs(xs) <= 1)
    batch = FourierBatch(1)
    rng = np.random.default_rng(1)
    reference = []
    for _ in range(3000):  # the environment's own sampler, one task at a time
        task = batch.sample_task(rng)
        reference.append(task(rng.uniform(-1, 1, 1))[0])
    assert np.all(np.abs(ys) <= batch.y_bound)
    assert stats.ks_2samp(ys[:, 0], np.array(reference)).pvalue > 1e-3
    again = sample_fourier_data(3000, 2, np.random.default_rng(0))
    np.testing.assert_array_equal(again[1], ys)
    # The train and test streams of a seed differ; the same stream repeats.
    assert not np.array_equal(
        sample_fourier_data(4, 3, task_rng(0, 0))[0], sample_fourier_data(4, 3, task_rng(0, 1))[0]
    )
    np.testing.assert_array_equal(
        sample_fourier_data(4, 3, task_rng(5, 1))[0], sample_fourier_data(4, 3, task_rng(5, 1))[0]
    )


def test_regression_inputs_pair_each_query_with_the_previous_point() -> None:
    xs = np.array([[0.1, 0.2, 0.3]])
    ys = np.array([[1.0, 2.0, 3.0]])
    inputs, targets = regression_inputs(xs, ys)
    expected = torch.tensor([[0.1, 0.0, 0.0], [0.2, 0.1, 1.0], [0.3, 0.2, 2.0]]).unsqueeze(1)
    torch.testing.assert_close(inputs, expected)
    torch.testing.assert_close(targets, torch.tensor([[1.0], [2.0], [3.0]]))


@pytest.mark.parametrize(
    ("kind", "options"),
    [
        ("rnn", {}),
        ("vrnn", {"covariance": "full"}),
        ("vrnn", {"covariance": "diag"}),
        ("laplace", {"variant": "sum_precision", "covariance": "diag"}),
    ],
)
def test_monte_carlo_cross_entropy_matches_the_closed_form_predictive(kind, options) -> None:
    """With a linear head ``g([z, x]) = wᵀz + a·x + c`` and the posterior ``q_t = N(μ_t, Λ_t⁻¹)``, the
    predictive is Gaussian in closed form, ``N(y; wᵀμ_t + a·x_t + c, σ² + wᵀΛ_t⁻¹w)`` (``σ²`` alone for a
    point estimate): the Monte Carlo cross-entropy (sampling, head, log-mean-exp) must converge to
    its negative log-density, and the squared error to that of its mean."""
    model = make_regression_model(kind, 0, **{**TINY, "head_sizes": ()}, **options).double()
    w, a, c, log_std = torch.tensor([0.6, -0.4, 0.5], dtype=torch.float64), 0.8, -0.3, -0.7
    with torch.no_grad():
        (linear,) = model.head
        linear.weight.copy_(torch.cat([w, torch.tensor([a], dtype=torch.float64)])[None])
        linear.bias.fill_(c)
        model.log_std.fill_(log_std)
    xs, ys = sample_fourier_data(2, 4, np.random.default_rng(3))
    inputs, targets = (value.double() for value in regression_inputs(xs, ys))
    with torch.no_grad():
        output = model.beliefs(inputs)
    n_samples = 40_000 if output.is_distribution else 1
    statistics = model.predictive_statistics(
        inputs, targets, n_samples=n_samples, generator=torch.Generator().manual_seed(7)
    )
    # The closed form, from the posterior's mean and precision only (numpy).
    mu = output.mean.detach().numpy()
    queries, y = inputs[..., 0].numpy(), targets.numpy()
    mean = mu @ w.numpy() + a * queries + c
    spread = np.zeros_like(mean)
    if output.is_distribution:
        precision = output.precision.detach().numpy()
        if precision.ndim == mu.ndim + 1:  # full [T, B, L, L]
            covariance_w = np.linalg.solve(precision, np.broadcast_to(w.numpy(), mu.shape)[..., None])[..., 0]
        else:  # diagonal [T, B, L]
            covariance_w = w.numpy() / precision
        spread = covariance_w @ w.numpy()
    sigma2 = math.exp(2 * log_std)

    def negative_log_density(variance):
        return 0.5 * np.log(2 * np.pi * variance) + (y - mean) ** 2 / (2 * variance)

    expected = negative_log_density(sigma2 + spread)
    if not output.is_distribution:
        np.testing.assert_allclose(statistics["cross_entropy"].numpy(), expected, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(statistics["squared_error"].numpy(), (mean - y) ** 2, rtol=1e-12)
        return
    # The posterior spread matters here (as much as σ² or more), so a sampler that ignored it would fail.
    assert (spread > sigma2).all()
    # Tolerances of five Monte Carlo standard errors, also in closed form: the density
    # d = N(y; wᵀz + a·x + c, σ²) has E[d²] = N(y; ·, σ²/2 + wᵀΣw) / (2σ√π), and the mean's
    # estimate has standard deviation sqrt(wᵀΣw / m).
    second_moment = np.exp(-negative_log_density(sigma2 / 2 + spread)) / (2 * math.sqrt(sigma2 * math.pi))
    relative_error = np.sqrt(second_moment / np.exp(-expected) ** 2 - 1) / math.sqrt(n_samples)
    cross_entropy = statistics["cross_entropy"].numpy()
    assert (np.abs(cross_entropy - expected) <= 5 * relative_error).all()
    mean_error = 5 * np.sqrt(spread / n_samples)
    squared_error = statistics["squared_error"].numpy()
    bound = 2 * np.abs(mean - y) * mean_error + mean_error**2
    assert (np.abs(squared_error - (mean - y) ** 2) <= bound).all()
    assert np.abs(expected - negative_log_density(sigma2)).max() > 0.3


@pytest.mark.parametrize(
    ("kind", "options"),
    [("rnn", {}), ("vrnn", {"covariance": "full"}), ("laplace", {"variant": "stationary", "window": 2})],
)
def test_trainer_decreases_the_loss_and_is_reproducible(kind, options) -> None:
    """The negative ELBO on fixed held-out tasks drops after 60 updates (from the untrained model's ≈1.2
    nats towards the data's marginal ≈1.11), and the same seed repeats every loss."""
    inputs, targets = regression_inputs(*sample_fourier_data(64, 8, task_rng(9, 1)))

    def held_out_loss(model: RegressionModel) -> float:
        with torch.no_grad():
            return float(model.loss(inputs, targets, 8, torch.Generator().manual_seed(0))[0])

    def trained(steps: int) -> tuple[float, float, list[float]]:
        model = make_regression_model(kind, 1, **TINY, **options)
        before = held_out_loss(model)
        log = train_regression(model, steps, 2, batch_size=16, n_points=8, learning_rate=1e-2)
        return before, held_out_loss(model), log.loss

    before, after, losses = trained(60)
    assert after < before - 0.05
    assert trained(4)[2] == losses[:4]


@torch.no_grad()
def test_loss_is_nll_plus_beta_kl() -> None:
    model = make_regression_model("vrnn", 0, **TINY, covariance="diag", beta=0.3).double()
    inputs, targets = (
        value.double() for value in regression_inputs(*sample_fourier_data(3, 5, np.random.default_rng(0)))
    )
    loss, parts = model.loss(inputs, targets, n_samples=4, generator=torch.Generator().manual_seed(1))
    output = model.beliefs(inputs)
    latents = model.belief.sample(output, 4, generator=torch.Generator().manual_seed(1))
    means = model.predicted_means(latents, inputs[..., 0])
    nll = -torch.distributions.Normal(means, model.log_std.exp()).log_prob(targets).mean()
    assert parts["nll"] == pytest.approx(float(nll))
    assert parts["kl_penalty"] == pytest.approx(0.3 * float(output.kl_to_previous.mean()))
    assert float(loss) == pytest.approx(float(nll) + 0.3 * float(output.kl_to_previous.mean()))


def test_attached_posteriors_keep_the_pretrained_predictions() -> None:
    rnn = make_regression_model("rnn", 0, **TINY)
    train_regression(rnn, 3, 0, batch_size=4, n_points=5)
    inputs, _ = regression_inputs(*sample_fourier_data(3, 6, np.random.default_rng(4)))
    expected = rnn.beliefs(inputs).mean
    for kind, options in (("laplace", {"variant": "sum_precision", "covariance": "full"}), ("vrnn", {})):
        attached = attach_posterior(rnn, kind, **options)
        assert isinstance(attached.belief, LaplaceBelief if kind == "laplace" else VRNNBelief)
        torch.testing.assert_close(attached.beliefs(inputs).mean, expected)
        torch.testing.assert_close(attached.head(torch.ones(2, 4)), rnn.head(torch.ones(2, 4)))
        assert float(attached.log_std.detach()) == float(rnn.log_std.detach())
    with pytest.raises(TypeError, match="RL2Belief"):
        attach_posterior(attached, "laplace")


def test_evaluation_curves_are_reproducible_and_shaped() -> None:
    model = make_regression_model("laplace", 0, **TINY, variant="sum_precision", covariance="diag", window=1)
    curves = evaluate_regression(model, 3, n_tasks=10, n_points=7, n_samples=3, chunk_size=4)
    assert set(curves) == {"cross_entropy", "squared_error", "entropy", "kl_to_previous"}
    assert all(values.shape == (7,) for values in curves.values())
    again = evaluate_regression(model, 3, n_tasks=10, n_points=7, n_samples=3, chunk_size=10)
    np.testing.assert_allclose(again["entropy"], curves["entropy"], rtol=1e-6)
    # sum_precision: the posterior entropy never increases within a trial.
    assert np.all(np.diff(curves["entropy"]) <= 1e-6)


def test_bad_arguments_raise() -> None:
    with pytest.raises(ValueError, match="kind"):
        make_regression_model("gp", 0)
    with pytest.raises(ValueError, match="posterior options"):
        make_regression_model("rnn", 0, covariance="full")
    with pytest.raises(ValueError, match="input_dim"):
        RegressionModel(RL2Belief(4, hidden_size=4, latent_dim=2, embed_sizes=()))
    model = make_regression_model("rnn", 0, **TINY)
    with pytest.raises(ValueError, match="steps"):
        train_regression(model, 0, 0)
    with pytest.raises(ValueError, match="learning_rate"):
        train_regression(model, 1, 0, learning_rate=-1.0)
    with pytest.raises(ValueError, match="n_samples"):
        evaluate_regression(model, 0, n_tasks=2, n_samples=0)
    with pytest.raises(ValueError, match="batch_size"):
        sample_fourier_data(0, 3, np.random.default_rng(0))
