"""VRNN belief against closed-form references: Cayley map (orthogonality, gradients), the spectral
covariance, entropy and KL (torch.distributions), sampling moments, sequence == step loop, post-hoc
attachment to RL², and the VRNN policy under BayesPPO."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.beliefs import RL2Belief
from bayes_agents.beliefs.vrnn import VRNNBelief, cayley, skew_from_lower, spectral_gaussian_kl
from bayes_agents.policies import VRNNPolicy

INPUT_DIM, HIDDEN, LATENT, EMBED = 4, 6, 3, (7,)


def make_belief(covariance: str, seed: int = 0, **options) -> VRNNBelief:
    torch.manual_seed(seed)
    belief = VRNNBelief(
        INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT, embed_sizes=EMBED, covariance=covariance, **options
    )
    with torch.no_grad():  # larger weights than the default init: varied rotations and variances
        for parameter in belief.parameters():
            parameter.mul_(2.0)
    return belief.double()


def random_starts(steps: int, batch: int, seed: int) -> torch.Tensor:
    starts = torch.rand(steps, batch, generator=torch.Generator().manual_seed(seed)) < 0.25
    starts[0] = True
    return starts


def run(belief: VRNNBelief, steps: int = 9, batch: int = 4, seed: int = 1):
    inputs = torch.randn(
        steps, batch, INPUT_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(seed)
    )
    starts = random_starts(steps, batch, seed)
    output, state = belief.sequence(inputs, belief.initial_state(batch), starts)
    return inputs, starts, output, state


def reference_distributions(belief: VRNNBelief, inputs: torch.Tensor, starts: torch.Tensor):
    """q_t from the cell outputs of torch's own LSTM cell, stepped in Python, and the matching q_{t-1}."""
    batch = inputs.shape[1]
    hidden = torch.zeros(batch, HIDDEN, dtype=torch.float64)
    cell = torch.zeros_like(hidden)
    hiddens = []
    for step_inputs, step_starts in zip(inputs, starts, strict=True):
        keep = (~step_starts).double().unsqueeze(-1)
        hidden, cell = belief.cell(belief.embedding(step_inputs), (hidden * keep, cell * keep))
        hiddens.append(hidden)
    hiddens = torch.stack(hiddens)
    mean = belief.latent_head(hiddens)
    log_variance = belief.log_variance_bound * torch.tanh(
        belief.log_variance_head(hiddens) / belief.log_variance_bound
    )
    if belief.covariance == "full":
        rows, columns = torch.tril_indices(LATENT, LATENT, -1)
        lower = torch.zeros(*hiddens.shape[:2], LATENT, LATENT, dtype=torch.float64)
        lower[..., rows, columns] = belief.skew_head(hiddens)
        skew = lower - lower.transpose(-2, -1)
        identity = torch.eye(LATENT, dtype=torch.float64)
        rotation = (identity - skew) @ torch.linalg.inv(identity + skew)
        covariance = rotation @ torch.diag_embed(log_variance.exp()) @ rotation.transpose(-2, -1)
        current = MultivariateNormal(mean, covariance_matrix=covariance)
        prior = MultivariateNormal(
            torch.zeros(LATENT, dtype=torch.float64), torch.eye(LATENT, dtype=torch.float64)
        )
    else:
        covariance = log_variance.exp()
        current = Independent(Normal(mean, covariance.sqrt()), 1)
        prior = Independent(
            Normal(torch.zeros(LATENT, dtype=torch.float64), torch.ones(LATENT, dtype=torch.float64)), 1
        )
    return current, prior, mean, covariance


def test_cayley_is_orthogonal_differentiable_and_skew_from_lower_is_skew() -> None:
    entries = torch.randn(5, 6, dtype=torch.float64) * 2
    skew = skew_from_lower(entries, 4)
    torch.testing.assert_close(skew, -skew.transpose(-2, -1))
    rows, columns = torch.tril_indices(4, 4, -1)
    torch.testing.assert_close(skew[:, rows, columns], entries)
    rotation = cayley(skew)
    identity = torch.eye(4, dtype=torch.float64).expand(5, 4, 4)
    torch.testing.assert_close(rotation.transpose(-2, -1) @ rotation, identity)
    torch.testing.assert_close(rotation @ (identity + skew), identity - skew)  # the defining equation
    assert torch.all(torch.linalg.det(rotation) > 0)  # Cayley images are rotations
    assert torch.autograd.gradcheck(
        lambda values: cayley(skew_from_lower(values, 4)), entries.requires_grad_()
    )
    with pytest.raises(ValueError, match="entries"):
        skew_from_lower(entries, 5)


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_posterior_matches_spectral_covariance_entropy_and_kl(covariance) -> None:
    belief = make_belief(covariance)
    inputs, starts, output, _ = run(belief)
    current, prior, mean, reference_covariance = reference_distributions(belief, inputs, starts)
    torch.testing.assert_close(output.mean, mean)
    if covariance == "full":
        torch.testing.assert_close(torch.linalg.inv(output.precision), reference_covariance)
        assert torch.all(torch.linalg.eigvalsh(output.precision) > 0)
        cholesky = output.precision_cholesky
        torch.testing.assert_close(cholesky @ cholesky.transpose(-2, -1), output.precision)
        torch.testing.assert_close(cholesky, torch.tril(cholesky))
    else:
        assert output.precision_cholesky is None
        torch.testing.assert_close(output.precision, 1 / reference_covariance)
    torch.testing.assert_close(output.entropy, current.entropy())
    # KL(q_t || q_{t-1}) with the prior N(0, I) at resets, term by term.
    expected = torch.empty_like(output.kl_to_previous)
    steps, batch = starts.shape
    for t in range(steps):
        for b in range(batch):
            if covariance == "full":
                now = MultivariateNormal(current.loc[t, b], current.covariance_matrix[t, b])
                before = (
                    prior
                    if starts[t, b]
                    else MultivariateNormal(current.loc[t - 1, b], current.covariance_matrix[t - 1, b])
                )
            else:
                base = current.base_dist
                now = Independent(Normal(base.loc[t, b], base.scale[t, b]), 1)
                before = (
                    prior
                    if starts[t, b]
                    else Independent(Normal(base.loc[t - 1, b], base.scale[t - 1, b]), 1)
                )
            expected[t, b] = kl_divergence(now, before)
    torch.testing.assert_close(output.kl_to_previous, expected)
    assert torch.all(output.kl_to_previous >= -1e-12)


def test_kl_is_differentiable_through_the_current_posterior_only() -> None:
    """β·KL(q_t ‖ sg q_{t−1}): the gradient of KL_t equals that of the closed form with q_{t−1} constant."""
    belief = make_belief("full")
    inputs, starts, output, _ = run(belief, steps=3, batch=1)
    starts[:] = False
    starts[0] = True
    output, _ = belief.sequence(inputs, belief.initial_state(1), starts)
    gradients = torch.autograd.grad(output.kl_to_previous[2].sum(), belief.skew_head.weight)[0]
    hiddens = belief.recurrence(
        belief.embedding(inputs),
        torch.zeros(1, HIDDEN, dtype=torch.float64),
        torch.zeros(1, HIDDEN, dtype=torch.float64),
        starts,
        need_cells=False,
    )[0]
    now, before = belief.posterior(hiddens[2]), belief.posterior(hiddens[1])
    constant = type(before)(*(value.detach() for value in before))
    expected = torch.autograd.grad(spectral_gaussian_kl(now, constant).sum(), belief.skew_head.weight)[0]
    torch.testing.assert_close(gradients, expected)
    assert gradients.abs().sum() > 0
    torch.testing.assert_close(belief.aux_loss(output), belief.beta * output.kl_to_previous.mean())


@pytest.mark.parametrize("covariance", ["full", "diag"])
def test_sample_moments_and_given_noise(covariance) -> None:
    belief = make_belief(covariance)
    _, _, output, _ = run(belief, steps=2, batch=2)
    output = output.apply(lambda value: value[1, 0].detach())
    samples = belief.sample(output, 200_000, generator=torch.Generator().manual_seed(0))
    covariance_matrix = (
        torch.linalg.inv(output.precision) if covariance == "full" else torch.diag(1 / output.precision)
    )
    scale = covariance_matrix.diagonal().sqrt()
    torch.testing.assert_close(
        samples.mean(0), output.mean, atol=float(4 * scale.max() / 200_000**0.5), rtol=0
    )
    empirical = torch.cov(samples.t())
    relative = (empirical - covariance_matrix) / torch.outer(scale, scale)
    assert relative.abs().max() < 0.02
    noise = torch.randn(3, LATENT, dtype=torch.float64)
    given = belief.sample(output, 3, noise=noise)
    assert given.shape == (3, LATENT)
    # z − μ = L^{-T} ε exactly, with L L^T = precision (full) or ε / sqrt(precision) (diag).
    if covariance == "full":
        torch.testing.assert_close(output.precision_cholesky.t() @ (given - output.mean).t(), noise.t())
    else:
        torch.testing.assert_close((given - output.mean) * output.precision.sqrt(), noise)
    with pytest.raises(ValueError, match="noise"):
        belief.sample(output, 2, noise=noise)


@pytest.mark.parametrize(("covariance", "rnn"), [("full", "lstm"), ("diag", "gru")])
def test_sequence_equals_step_loop_with_resets_and_zero_state_is_prior(covariance, rnn) -> None:
    belief = make_belief(covariance, rnn=rnn)
    inputs, starts, output, final_state = run(belief, steps=8, batch=3)
    state = belief.initial_state(3)
    stepped = []
    for t in range(8):
        step_output, state = belief.step(inputs[t], state, starts[t])
        stepped.append(step_output)
    for field in ("mean", "precision", "precision_cholesky", "entropy", "kl_to_previous"):
        if getattr(output, field) is None:
            continue
        torch.testing.assert_close(torch.stack([getattr(o, field) for o in stepped]), getattr(output, field))
    torch.testing.assert_close(state, final_state)
    # Two halves with the state carried over equal the whole sequence (no episode start at the cut).
    first, middle = belief.sequence(inputs[:4], belief.initial_state(3), starts[:4])
    second, _ = belief.sequence(inputs[4:], middle, starts[4:])
    torch.testing.assert_close(
        torch.cat([first.kl_to_previous, second.kl_to_previous]), output.kl_to_previous
    )
    # The all-zero state without an episode start is the prior, as with one.
    no_start, _ = belief.sequence(inputs[:2], belief.initial_state(3), torch.zeros(2, 3, dtype=torch.bool))
    with_start, _ = belief.sequence(inputs[:2], belief.initial_state(3), torch.tensor([[1] * 3, [0] * 3]) > 0)
    torch.testing.assert_close(no_start.kl_to_previous, with_start.kl_to_previous)


def test_from_rl2_keeps_the_rl2_mean_and_rejects_bad_arguments() -> None:
    torch.manual_seed(3)
    rl2 = RL2Belief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT, embed_sizes=EMBED).double()
    belief = VRNNBelief.from_rl2(rl2, covariance="diag", beta=0.5)
    inputs = torch.randn(5, 2, INPUT_DIM, dtype=torch.float64)
    starts = random_starts(5, 2, 0)
    expected, _ = rl2.sequence(inputs, rl2.initial_state(2), starts)
    output, _ = belief.sequence(inputs, belief.initial_state(2), starts)
    torch.testing.assert_close(output.mean, expected.mean)
    assert belief.beta == 0.5 and belief.covariance == "diag"
    with pytest.raises(TypeError, match="architecture"):
        VRNNBelief.from_rl2(rl2, hidden_size=3)
    with pytest.raises(TypeError, match="RL2Belief"):
        VRNNBelief.from_rl2(belief)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"covariance": "banded"}, "covariance"),
        ({"beta": -1.0}, "beta"),
        ({"beta": float("inf")}, "beta"),
        ({"log_variance_bound": 0.0}, "log_variance_bound"),
        ({"log_variance_bound": float("nan")}, "log_variance_bound"),
        ({"log_variance_bound": 100.0}, "log_variance_bound"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"negative_slope": float("nan")}, "negative_slope"),
    ],
)
def test_bad_kwargs_raise_value_error(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        VRNNBelief(INPUT_DIM, **kwargs)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [({"beta": "big"}, "beta"), ({"covariance": None}, "covariance"), ({"hidden_size": 8.0}, "hidden_size")],
)
def test_wrong_types_raise_type_error(kwargs, message) -> None:
    with pytest.raises(TypeError, match=message):
        VRNNBelief(INPUT_DIM, **kwargs)


def test_bayes_ppo_vrnn_policy_learns_and_round_trips(tmp_path) -> None:
    kwargs = {"hidden_size": 16, "latent_dim": 4, "embed_sizes": (16,), "covariance": "full", "n_samples": 2}
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=0)
    model = BayesPPO(
        VRNNPolicy, venv, policy_kwargs=kwargs, n_steps=32, batch_size=32, n_epochs=2, seed=0, device="cpu"
    )
    before = [parameter.detach().clone() for parameter in model.policy.belief.skew_head.parameters()]
    model.learn(64)
    after = list(model.policy.belief.skew_head.parameters())
    assert any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))
    assert np.isfinite(model.logger.name_to_value.get("belief/kl_to_previous", 0.0))
    model.save(tmp_path / "vrnn.zip")
    loaded = BayesPPO.load(tmp_path / "vrnn.zip", device="cpu")
    assert type(loaded.policy) is VRNNPolicy and loaded.policy.belief.covariance == "full"
    observations = venv.reset()
    starts = np.ones(2, bool)
    for a, b in zip(model.policy.state_dict().values(), loaded.policy.state_dict().values(), strict=True):
        torch.testing.assert_close(a, b)
    actions, _ = model.predict(observations, episode_start=starts, deterministic=True)
    loaded_actions, _ = loaded.predict(observations, episode_start=starts, deterministic=True)
    np.testing.assert_array_equal(actions, loaded_actions)
