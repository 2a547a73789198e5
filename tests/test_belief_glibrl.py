"""GLiBRL belief against closed-form and brute-force references: the batch conjugate posterior, the
log marginal likelihood (numerical integration over the noise variance), entropy/KL (scipy/torch
distributions), transition masks, resets, gradients, long-rollout stability and BayesPPO training."""

from __future__ import annotations

import dataclasses
import math

import numpy as np
import pytest
import torch
from conftest import one_update_grid_model
from scipy import integrate, stats
from torch.distributions import Gamma, MultivariateNormal, kl_divergence

import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.beliefs.base import BeliefOutput, InputLayout
from bayes_agents.beliefs.glibrl import GLiBRLBelief, GLiBRLOutput, NIGPosterior, _running_sum
from bayes_agents.beliefs.laplace import segmented_cumsum
from bayes_agents.methods import method_defaults
from bayes_agents.policies import GLiBRLPolicy

OBS, ACTION, BASIS = 2, 3, 3
LAYOUT = InputLayout(obs_dim=OBS, action_dim=ACTION, discrete_actions=False)
PRIOR = {"prior_precision": 0.7, "prior_noise_concentration": 1.5, "prior_noise_rate": 0.8}
PPO_KWARGS = {"n_steps": 32, "batch_size": 64, "n_epochs": 2, "seed": 0, "device": "cpu"}


def make_belief(dtype=torch.float64, seed: int = 0, **options) -> GLiBRLBelief:
    torch.manual_seed(seed)
    options = {"basis_dim": BASIS, "basis_hidden_sizes": (8,), **PRIOR, **options}
    return GLiBRLBelief(LAYOUT.input_dim, input_layout=LAYOUT, **options).to(dtype)


def random_inputs(steps: int, batch: int, seed: int, boundary_rate: float = 0.3, dtype=torch.float64):
    """RL² inputs with random inner-episode boundaries; ``starts`` only at t = 0."""
    generator = torch.Generator().manual_seed(seed)
    inputs = torch.randn(steps, batch, LAYOUT.input_dim, generator=generator, dtype=dtype)
    inputs[..., -1] = (torch.rand(steps, batch, generator=generator) < boundary_rate).to(dtype)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[0] = True
    return inputs, starts


def stacked_transitions(belief: GLiBRLBelief, inputs: torch.Tensor, row: int):
    """Φ, Y and the per-output masks of one trial (row ``row``, trial start at t = 0), by a loop."""
    features, targets, masks = [], [], []
    with torch.no_grad():
        for t in range(1, inputs.shape[0]):
            previous, current = inputs[t - 1, row], inputs[t, row]
            phi = belief.basis(torch.cat([previous[:OBS], current[OBS : OBS + ACTION]]))
            features.append(phi.numpy())
            targets.append(np.append((current[:OBS] - previous[:OBS]).numpy(), current[-2].item()))
            dynamics = float(current[-1] < 0.5)
            masks.append([dynamics] * OBS + [1.0])
    return np.array(features), np.array(targets), np.array(masks, dtype=bool)


def batch_posterior(features, targets, masks):
    """Closed-form NIG posterior of each output from the stacked design (numpy)."""
    lam, a0, b0 = PRIOR["prior_precision"], PRIOR["prior_noise_concentration"], PRIOR["prior_noise_rate"]
    result = []
    for j in range(targets.shape[1]):
        phi, y = features[masks[:, j]], targets[masks[:, j], j]
        precision = lam * np.eye(BASIS) + phi.T @ phi
        mean = np.linalg.solve(precision, phi.T @ y)
        rate = b0 + 0.5 * (y @ y - mean @ precision @ mean)
        result.append((mean, precision, a0 + 0.5 * len(y), rate))
    return result


def assert_posterior_row_matches(posterior, row: int, reference) -> None:
    """Row ``row`` of a belief posterior equals the batch conjugate ``reference`` (one entry per output)."""
    for j, (mean, precision, concentration, rate) in enumerate(reference):
        group = 0 if j < OBS else 1
        cholesky = posterior.group_precision_cholesky[row, group].numpy()
        np.testing.assert_allclose(cholesky @ cholesky.T, precision, rtol=1e-10, atol=1e-10)
        np.testing.assert_allclose(posterior.mean[row, j].numpy(), mean, rtol=1e-8, atol=1e-10)
        assert posterior.concentration[row, j].item() == pytest.approx(concentration, rel=1e-12)
        assert posterior.rate[row, j].item() == pytest.approx(rate, rel=1e-9)


def test_online_posterior_equals_batch_conjugate_posterior():
    belief = make_belief()
    inputs, starts = random_inputs(40, 3, seed=1)
    with torch.no_grad():
        _, state = belief.sequence(inputs, belief.initial_state(3), starts)
        posterior = belief.posterior_from_state(state)
    for row in range(3):
        features, targets, masks = stacked_transitions(belief, inputs, row)
        assert 0 < masks[:, 0].sum() < len(masks)  # both kinds of transition occur
        assert_posterior_row_matches(posterior, row, batch_posterior(features, targets, masks))


def test_transition_masks_trial_start_and_inner_episode_boundaries():
    belief = make_belief()
    inputs, starts = random_inputs(6, 1, seed=2, boundary_rate=0.0)
    inputs[3, 0, -1] = 1.0  # an inner-episode boundary: reward fitted, state difference not
    starts[4, 0] = True  # a trial start: the belief forgets and there is no transition
    with torch.no_grad():
        output, state = belief.sequence(inputs, belief.initial_state(1), starts)
    np.testing.assert_array_equal(output.transition_mask[:, 0].numpy(), [0, 1, 1, 1, 0, 1])
    counts = belief.state_layout.unpack(state)["count"][0]
    np.testing.assert_array_equal(counts.numpy(), [1.0, 1.0])  # only step 5 after the reset
    with torch.no_grad():
        _, before_reset = belief.sequence(inputs[:4], belief.initial_state(1), starts[:4])
    np.testing.assert_array_equal(belief.state_layout.unpack(before_reset)["count"][0].numpy(), [2.0, 3.0])
    # a zero state without an episode start has no previous observation: no transition either
    with torch.no_grad():
        output, _ = belief.sequence(inputs[:2], belief.initial_state(1), torch.zeros(2, 1, dtype=torch.bool))
    np.testing.assert_array_equal(output.transition_mask[:, 0].numpy(), [0, 1])


def test_reward_only_transitions_are_permutation_invariant():
    """Every step an inner-episode boundary (the bandit case): transition t is (obs_{t-1}, a_t, r_t),
    so re-ordering the (obs, action, reward) triples re-orders the transitions."""
    belief = make_belief()
    steps = 12
    generator = torch.Generator().manual_seed(3)
    states = torch.randn(steps, OBS, generator=generator, dtype=torch.float64)
    actions = torch.randn(steps, ACTION, generator=generator, dtype=torch.float64)
    rewards = torch.randn(steps, generator=generator, dtype=torch.float64)

    def trial(order):
        rows = [torch.cat([states[order[0]], torch.zeros(ACTION + 1), torch.ones(1)])]
        for k, index in enumerate(order):
            next_state = states[order[k + 1]] if k + 1 < len(order) else torch.zeros(OBS)
            rows.append(torch.cat([next_state, actions[index], rewards[index, None], torch.ones(1)]))
        inputs = torch.stack(rows).unsqueeze(1).to(torch.float64)
        starts = torch.zeros(len(rows), 1, dtype=torch.bool)
        starts[0] = True
        with torch.no_grad():
            return belief.sequence(inputs, belief.initial_state(1), starts)

    output, state = trial(list(range(steps)))
    permuted_output, permuted_state = trial(torch.randperm(steps, generator=generator).tolist())
    for field in ("mean", "group_precision_cholesky", "noise_concentration", "noise_rate", "entropy"):
        torch.testing.assert_close(getattr(output, field)[-1], getattr(permuted_output, field)[-1])
    stats_size = belief.statistics_layout.size
    torch.testing.assert_close(state[:, :stats_size], permuted_state[:, :stats_size])
    # the chain-rule increments differ, their sum (the log marginal likelihood) does not
    assert not torch.allclose(output.log_marginal_increment, permuted_output.log_marginal_increment)
    torch.testing.assert_close(
        output.log_marginal_increment.sum(),
        permuted_output.log_marginal_increment.sum(),
        rtol=1e-12,
        atol=1e-12,
    )


def brute_force_log_evidence(features, targets, masks) -> float:
    """Σ_j log ∫ N(y_j; 0, σ²(I + ΦΦᵀ/λ)) InvGamma(σ²; a₀, b₀) dσ² by quadrature over log σ²."""
    lam, a0, b0 = PRIOR["prior_precision"], PRIOR["prior_noise_concentration"], PRIOR["prior_noise_rate"]
    total = 0.0
    for j in range(targets.shape[1]):
        phi, y = features[masks[:, j]], targets[masks[:, j], j]
        kernel = np.eye(len(y)) + phi @ phi.T / lam
        _, log_det_kernel = np.linalg.slogdet(kernel)
        mahalanobis, count = y @ np.linalg.solve(kernel, y), len(y)

        def log_integrand(log_variance, n=count, log_det_kernel=log_det_kernel, mahalanobis=mahalanobis):
            variance = math.exp(log_variance)
            log_normal = -0.5 * (
                n * math.log(2 * math.pi * variance) + log_det_kernel + mahalanobis / variance
            )
            log_inverse_gamma = a0 * math.log(b0) - math.lgamma(a0) - (a0 + 1) * log_variance - b0 / variance
            return log_normal + log_inverse_gamma + log_variance  # dσ² = σ² d log σ²

        peak = max(log_integrand(u) for u in np.linspace(-15, 10, 501))
        value, _ = integrate.quad(
            lambda u, peak=peak: math.exp(log_integrand(u) - peak), -15, 10, limit=200, epsabs=0, epsrel=1e-10
        )
        total += peak + math.log(value)
    return total


def test_log_marginal_likelihood_matches_brute_force():
    belief = make_belief()
    inputs, starts = random_inputs(6, 2, seed=4, boundary_rate=0.4)
    inputs[2, :, -1] = 1.0
    with torch.no_grad():
        output, state = belief.sequence(inputs, belief.initial_state(2), starts)
        closed_form = belief.log_marginal_likelihood(state)
    chain_rule = output.log_marginal_increment.sum(0)
    torch.testing.assert_close(chain_rule, closed_form, rtol=1e-10, atol=1e-10)
    for row in range(2):
        reference = brute_force_log_evidence(*stacked_transitions(belief, inputs, row))
        assert chain_rule[row].item() == pytest.approx(reference, abs=1e-6)
    # the per-transition loss is the negative log evidence over the number of transitions
    loss = belief.aux_loss(output)
    assert loss.item() == pytest.approx(-closed_form.sum().item() / output.transition_mask.sum().item())
    weighted = make_belief(model_loss_weight=0.25)
    with torch.no_grad():
        weighted_output, _ = weighted.sequence(inputs, weighted.initial_state(2), starts)
    assert weighted.aux_loss(weighted_output).item() == pytest.approx(0.25 * loss.item())


def nig_components(output: GLiBRLOutput, index, j: int):
    group = 0 if j < OBS else 1
    cholesky = output.group_precision_cholesky[index][group]
    mean = output.mean[index].view(OBS + 1, BASIS)[j]
    return mean, cholesky @ cholesky.T, output.noise_concentration[index][j], output.noise_rate[index][j]


def test_entropy_and_kl_match_numerical_references():
    belief = make_belief()
    inputs, starts = random_inputs(5, 1, seed=5)
    with torch.no_grad():
        output, _ = belief.sequence(inputs, belief.initial_state(1), starts)
    for t in (1, 4):
        entropy, kl = 0.0, 0.0
        for j in range(OBS + 1):
            mean, precision, a, b = nig_components(output, (t, 0), j)
            mean_prev, precision_prev, a_prev, b_prev = nig_components(output, (t - 1, 0), j)
            covariance = torch.linalg.inv(precision)

            def gaussian_entropy(variance, mean=mean, covariance=covariance):
                return MultivariateNormal(mean, covariance_matrix=variance * covariance).entropy().item()

            def gaussian_kl(
                variance, mean=mean, covariance=covariance, mean_prev=mean_prev, precision_prev=precision_prev
            ):
                current = MultivariateNormal(mean, covariance_matrix=variance * covariance)
                before = MultivariateNormal(
                    mean_prev, covariance_matrix=variance * torch.linalg.inv(precision_prev)
                )
                return kl_divergence(current, before).item()

            noise = stats.invgamma(a.item(), scale=b.item())
            entropy += noise.entropy() + noise.expect(gaussian_entropy)
            # KL of the inverse gammas = KL of the gammas of the precisions 1/σ²
            kl += kl_divergence(Gamma(a, b), Gamma(a_prev, b_prev)).item() + noise.expect(gaussian_kl)
        assert output.entropy[t, 0].item() == pytest.approx(entropy, rel=1e-6)
        assert output.kl_to_previous[t, 0].item() == pytest.approx(kl, rel=1e-6)
    assert output.kl_to_previous[0, 0].item() == pytest.approx(0.0, abs=1e-12)


def test_zero_state_is_the_prior():
    belief = make_belief()
    lam, a0, b0 = PRIOR["prior_precision"], PRIOR["prior_noise_concentration"], PRIOR["prior_noise_rate"]
    posterior = belief.posterior_from_state(belief.initial_state(2))
    assert torch.count_nonzero(posterior.mean) == 0
    cholesky = posterior.group_precision_cholesky
    torch.testing.assert_close(
        cholesky @ cholesky.mT, lam * torch.eye(BASIS, dtype=torch.float64).expand(2, 2, -1, -1)
    )
    assert torch.all(posterior.concentration == a0) and torch.all(posterior.rate == b0)
    torch.testing.assert_close(
        belief.log_marginal_likelihood(belief.initial_state(2)), torch.zeros(2, dtype=torch.float64)
    )
    inputs, starts = random_inputs(1, 2, seed=6)
    output, _ = belief.step(inputs[0], belief.initial_state(2), starts[0])
    prior_entropy = (OBS + 1) * (
        stats.invgamma(a0, scale=b0).entropy()
        + 0.5 * BASIS * math.log(2 * math.pi * math.e / lam)
        + 0.5 * BASIS * (math.log(b0) - float(torch.digamma(torch.tensor(a0, dtype=torch.float64))))
    )
    torch.testing.assert_close(output.entropy, torch.full((2,), prior_entropy, dtype=torch.float64))
    assert torch.all(output.log_marginal_increment == 0) and torch.all(output.kl_to_previous.abs() < 1e-12)


def test_sequence_equals_loop_of_step_with_resets():
    belief = make_belief()
    steps, batch = 30, 4
    inputs, _ = random_inputs(steps, batch, seed=7)
    starts = torch.rand(steps, batch, generator=torch.Generator().manual_seed(8)) < 0.15
    with torch.no_grad():
        # a carried-in state from an earlier trial (every step of it a trial start but the last)
        _, carried = belief.sequence(
            inputs[:5], belief.initial_state(batch), (torch.arange(5)[:, None] < 4).expand(5, batch)
        )
        output, final = belief.sequence(inputs, carried, starts)
        looped, state = [], carried
        for t in range(steps):
            step_output, state = belief.step(inputs[t], state, starts[t])
            looped.append(step_output)
        # splitting the sequence anywhere gives the same result
        first, middle = belief.sequence(inputs[:13], carried, starts[:13])
        second, end = belief.sequence(inputs[13:], middle, starts[13:])
    torch.testing.assert_close(final, state, rtol=1e-10, atol=1e-10)
    for name, value in vars(output).items():
        if value is not None:  # the action predictions are off
            torch.testing.assert_close(value, torch.stack([getattr(o, name) for o in looped]), msg=name)
    torch.testing.assert_close(end, final)
    torch.testing.assert_close(torch.cat([first.mean, second.mean]), output.mean)


def test_gradients_reach_the_basis_only_through_the_model_loss():
    belief = make_belief()
    inputs, starts = random_inputs(10, 2, seed=9)
    output, _ = belief.sequence(inputs, belief.initial_state(2), starts)
    assert not belief.policy_input(output).requires_grad  # detached by default
    belief.aux_loss(output).backward()
    for name, parameter in belief.named_parameters():
        assert parameter.grad is not None and parameter.grad.abs().sum() > 0, name
    attached = make_belief(detach_policy_input=False)
    output, _ = attached.sequence(inputs, attached.initial_state(2), starts)
    attached.policy_input(output).square().sum().backward()
    assert all(p.grad.abs().sum() > 0 for p in attached.parameters())


def test_policy_input_and_sampling():
    lam, a0, b0 = PRIOR["prior_precision"], PRIOR["prior_noise_concentration"], PRIOR["prior_noise_rate"]
    belief = make_belief()
    raw_belief = make_belief(normalize_policy_input=False)
    inputs, starts = random_inputs(8, 2, seed=10)
    with torch.no_grad():
        output, _ = belief.sequence(inputs, belief.initial_state(2), starts)
    features, raw = belief.policy_input(output), raw_belief.policy_input(output)
    assert features.shape == raw.shape == (8, 2, belief.policy_input_dim)
    t, row = 6, 1
    covariance = torch.linalg.inv(output.dense_precision()[t, row])
    cholesky = output.group_precision_cholesky[t, row]
    expected_log_diag = torch.cat([torch.linalg.inv(c @ c.T).diagonal().log() for c in cholesky])
    expected_log_noise = (output.noise_rate / output.noise_concentration)[t, row].log()
    expected = torch.cat([output.mean[t, row], expected_log_diag, expected_log_noise])
    torch.testing.assert_close(raw[t, row], expected)
    # normalised: relative to the prior (w in units of sqrt(b0 / (a0 λ)), λ Λ⁻¹, (b/a) / (b0/a0))
    expected = torch.cat(
        [
            output.mean[t, row] * math.sqrt(lam * a0 / b0),
            expected_log_diag + math.log(lam),
            expected_log_noise - math.log(b0 / a0),
        ]
    )
    torch.testing.assert_close(features[t, row], expected)
    # at the prior (the first step has no transition) the normalised input is exactly 0
    torch.testing.assert_close(features[0], torch.zeros_like(features[0]), atol=1e-12, rtol=0)
    torch.testing.assert_close(output.precision_cholesky @ output.precision_cholesky.mT, output.precision)
    samples = belief.sample(
        output.apply(lambda x: x[t, row]), 40_000, generator=torch.Generator().manual_seed(0)
    )
    torch.testing.assert_close(
        samples.mean(0), output.mean[t, row], atol=0.05 * covariance.diagonal().sqrt().max().item(), rtol=0
    )
    torch.testing.assert_close(
        torch.cov(samples.T), covariance, atol=0.05 * covariance.diagonal().max().item(), rtol=0
    )


def test_reward_only_model_fits_the_reward_and_gives_its_features():
    """``fit_dynamics=False``: the dynamics outputs stay at the prior, the reward posterior is the
    batch conjugate one over all transitions, and the policy input is the reward output's part."""
    lam, a0, b0 = PRIOR["prior_precision"], PRIOR["prior_noise_concentration"], PRIOR["prior_noise_rate"]
    belief = make_belief(fit_dynamics=False)
    inputs, starts = random_inputs(30, 2, seed=21)
    with torch.no_grad():
        output, state = belief.sequence(inputs, belief.initial_state(2), starts)
        posterior = belief.posterior_from_state(state)
    assert belief.policy_input_dim == 2 * BASIS + 1
    for row in range(2):
        features, targets, masks = stacked_transitions(belief, inputs, row)
        masks[:, :OBS] = False  # no state-difference target is fitted
        reference = batch_posterior(features, targets, masks)
        assert_posterior_row_matches(posterior, row, reference)
        assert reference[0][2] == a0 and reference[0][3] == b0  # the dynamics outputs are the prior
        mean, precision, concentration, rate = reference[-1]
        expected = np.concatenate(
            [
                mean * math.sqrt(lam * a0 / b0),
                np.log(lam * np.diag(np.linalg.inv(precision))),
                [math.log((rate / concentration) / (b0 / a0))],
            ]
        )
        np.testing.assert_allclose(
            belief.policy_input(output)[-1, row].numpy(), expected, rtol=1e-8, atol=1e-10
        )
    # the log marginal likelihood is the reward output's alone (the dynamics terms are 0 at the prior)
    full = make_belief()
    with torch.no_grad():
        full_output, _ = full.sequence(inputs, full.initial_state(2), starts)
    reward_only = output.log_marginal_increment.sum(0)
    torch.testing.assert_close(reward_only, belief.log_marginal_likelihood(state))
    assert not torch.allclose(reward_only, full_output.log_marginal_increment.sum(0))


def test_action_predictions_are_the_reward_predictive_of_each_action():
    """Mean ``μ_Oᵀφ(obs_t, a)`` and log variance ``log((b/a)(1 + φᵀΛ_rew⁻¹φ))`` (the Student-t
    predictive's scale², i.e. its variance times (a−1)/a) of every one-hot action, from the batch
    posterior after step t; appended to the policy input."""
    a0, b0 = PRIOR["prior_noise_concentration"], PRIOR["prior_noise_rate"]
    layout = InputLayout(obs_dim=OBS, action_dim=ACTION, discrete_actions=True)
    torch.manual_seed(0)
    belief = GLiBRLBelief(
        layout.input_dim,
        input_layout=layout,
        basis_dim=BASIS,
        basis_hidden_sizes=(8,),
        action_predictions=True,
        **PRIOR,
    ).double()
    inputs, starts = random_inputs(12, 2, seed=31)
    generator = torch.Generator().manual_seed(32)
    actions = torch.randint(ACTION, (12, 2), generator=generator)
    inputs[..., OBS : OBS + ACTION] = torch.nn.functional.one_hot(actions, ACTION).double()
    with torch.no_grad():
        output, _ = belief.sequence(inputs, belief.initial_state(2), starts)
    assert belief.policy_input_dim == (OBS + 1) * BASIS + 2 * BASIS + OBS + 1 + 2 * ACTION
    t, row = 9, 0
    features, targets, masks = stacked_transitions(belief, inputs[: t + 1], row)
    mean, precision, concentration, rate = batch_posterior(features, targets, masks)[-1]
    with torch.no_grad():
        phi = belief.basis(
            torch.cat([inputs[t, row, :OBS].expand(ACTION, OBS), torch.eye(ACTION).double()], -1)
        )
    phi = phi.numpy()
    expected_mean = phi @ mean
    leverage = np.einsum("ad,de,ae->a", phi, np.linalg.inv(precision), phi)
    expected_log_variance = np.log(rate / concentration * (1 + leverage))
    np.testing.assert_allclose(
        output.action_reward_mean[t, row].numpy(), expected_mean, rtol=1e-8, atol=1e-12
    )
    np.testing.assert_allclose(
        output.action_reward_log_variance[t, row].numpy(), expected_log_variance, rtol=1e-8
    )
    tail = belief.policy_input(output)[t, row, -2 * ACTION :].numpy()
    np.testing.assert_allclose(
        tail, np.concatenate([expected_mean, expected_log_variance - math.log(b0 / a0)])
    )
    with pytest.raises(ValueError, match="discrete"):
        make_belief(action_predictions=True)


def test_model_update_raises_the_marginal_likelihood():
    belief = make_belief(basis_lr=1e-2)
    inputs, starts = random_inputs(20, 4, seed=41)
    starts[0] = False  # model_update starts every column from the prior anyway

    def loss() -> float:
        with torch.no_grad():
            output, _ = belief.sequence(
                inputs, belief.initial_state(4), starts | (torch.arange(20) == 0)[:, None]
            )
        return belief.aux_loss(output).item()

    before = loss()
    assert belief.model_update(inputs, starts, n_updates=1) == pytest.approx(before, rel=1e-9)
    belief.model_update(inputs, starts, n_updates=30)
    assert loss() < before - 0.05


@pytest.mark.parametrize("fit_dynamics", [True, False])
def test_model_loss_is_the_sum_of_the_per_step_log_predictives(fit_dynamics):
    """The model loss of ``model_update`` telescopes the per-step Student-t log predictives of every
    trial into its closed-form log marginal likelihood: the same value and the same basis gradients
    as :meth:`aux_loss` of the step-by-step pass, with trial starts inside the columns, inner-episode
    boundaries (reward-only targets) and a column made of one step."""
    belief = make_belief(fit_dynamics=fit_dynamics, model_loss_weight=0.7)
    inputs, starts = random_inputs(17, 4, seed=23)
    starts[6, 1] = starts[11, 1] = starts[16, 2] = True  # trials inside a column, one of a single step
    output, _ = belief.sequence(inputs, belief.initial_state(4), starts)
    step_loss = belief.aux_loss(output)
    loss = belief.model_loss(inputs, starts)
    torch.testing.assert_close(loss, step_loss, rtol=1e-12, atol=0)
    parameters = list(belief.basis.parameters())
    for mine, theirs in zip(
        torch.autograd.grad(loss, parameters), torch.autograd.grad(step_loss, parameters), strict=True
    ):
        torch.testing.assert_close(mine, theirs, rtol=1e-9, atol=1e-12)
    # per trial, the log predictives sum to the closed form of the statistics at its last step
    trial, _ = belief.sequence(inputs[6:11, 1:2], belief.initial_state(1), starts[6:11, 1:2])
    _, state = belief.sequence(inputs[6:11, 1:2], belief.initial_state(1), starts[6:11, 1:2])
    assert trial.log_marginal_increment.sum().item() == pytest.approx(
        belief.log_marginal_likelihood(state).item(), rel=1e-12
    )


@pytest.mark.parametrize("fit_dynamics", [True, False])
def test_training_sequence_gives_the_model_loss_gradients_through_the_statistics(fit_dynamics):
    """A PPO minibatch's pass (``training_sequence``, rows flattened sequence-major as ``BeliefPolicy``
    does) gives every field of ``sequence`` (detached) and, through ``aux_loss_rows``, the model loss
    of the masked rows with the gradients of the step-by-step pass: for SB3's padding (a valid
    prefix per sequence), for masks with holes, a trial start inside a sequence and sequences that
    continue carried statistics."""
    belief = make_belief(fit_dynamics=fit_dynamics, model_loss_weight=0.7)
    inputs, starts = random_inputs(11, 5, seed=31)
    starts[0, 1:4] = False  # continuing carried statistics
    starts[6, 2] = True  # a trial starts inside a sequence
    warm, _ = random_inputs(7, 5, seed=32)
    _, state = belief.sequence(warm, belief.initial_state(5), torch.ones(7, 5, dtype=torch.bool))
    flat = lambda output: output.apply(lambda value: value.swapaxes(0, 1).flatten(0, 1))  # noqa: E731
    reference, reference_state = belief.sequence(inputs, state, starts)
    training, training_state = belief.training_sequence(inputs, state, starts)
    torch.testing.assert_close(training_state, reference_state, rtol=0, atol=0)
    left_out = {"precision", "precision_cholesky", "group_precision_cholesky"}
    for field in dataclasses.fields(GLiBRLOutput):
        expected = getattr(reference, field.name)
        if field.name in left_out:
            assert getattr(training, field.name) is None, field.name
        elif expected is not None:
            actual = getattr(training, field.name)
            torch.testing.assert_close(actual, expected, rtol=0, atol=1e-12, msg=field.name)
            assert not getattr(training, field.name).requires_grad, field.name
    assert training.statistics.requires_grad
    with pytest.raises(ValueError, match="aux_loss_rows"):
        belief.aux_loss(training)
    lengths = torch.tensor([11, 4, 9, 1, 7])  # SB3's padding: the valid steps come first
    prefix = (torch.arange(11)[None, :] < lengths[:, None]).flatten()
    generator = torch.Generator().manual_seed(5)
    holes = torch.rand(55, generator=generator) < 0.7
    parameters = list(belief.basis.parameters())
    for mask in (prefix, holes, torch.ones(55, dtype=torch.bool)):
        expected = belief.aux_loss(flat(reference).apply(lambda value, mask=mask: value[mask]))
        loss = belief.aux_loss_rows(flat(training), mask)
        torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
        for mine, theirs in zip(
            torch.autograd.grad(loss, parameters, retain_graph=True),
            torch.autograd.grad(expected, parameters, retain_graph=True),
            strict=True,
        ):
            torch.testing.assert_close(mine, theirs, rtol=1e-8, atol=1e-12)


def test_long_rollout_stays_finite_and_positive_definite():
    steps = 2000
    belief32 = make_belief(dtype=torch.float32, seed=11, basis_dim=8)
    belief64 = make_belief(dtype=torch.float64, seed=11, basis_dim=8)
    inputs, starts = random_inputs(steps, 2, seed=12, boundary_rate=0.05, dtype=torch.float64)
    inputs[..., -2] = -40 * torch.rand(steps, 2, dtype=torch.float64)  # FourierRegression-sized rewards
    with torch.no_grad():
        state = belief32.initial_state(2)
        for begin in range(0, steps, 100):  # as PPO rollouts: chunks with the state carried over
            output, state = belief32.sequence(
                inputs[begin : begin + 100].float(), state, starts[begin : begin + 100]
            )
            for name, value in vars(output).items():
                assert value is None or torch.isfinite(value).all(), name
        _, state64 = belief64.sequence(inputs, belief64.initial_state(2), starts)
    assert torch.isfinite(state).all()
    assert torch.linalg.eigvalsh(output.precision[-1].double()).min() > 0
    assert torch.all(output.noise_rate >= PRIOR["prior_noise_rate"])
    reference = belief64.posterior_from_state(state64)
    posterior = belief32.posterior_from_state(state)
    torch.testing.assert_close(posterior.mean.double(), reference.mean, rtol=1e-3, atol=1e-3)
    torch.testing.assert_close(posterior.rate.double(), reference.rate, rtol=1e-3, atol=0)


def rollout_actions(model, env_id: str, n_envs: int = 3, seed: int = 5) -> np.ndarray:
    venv = bayes_envs.make_vec(env_id, n_envs, seed=seed, monitor=False)
    obs, state, start, actions = venv.reset(), None, np.ones(n_envs, bool), []
    for _ in range(70):
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        obs, _, start, _ = venv.step(action)
        actions.append(action)
    return np.array(actions)


@pytest.mark.parametrize("env_id", ["BayesGrid-v0", "BayesBandit-v0", "FourierRegression-v0"])
def test_bayes_ppo_learn_save_load_predict(env_id, tmp_path):
    kwargs = {
        "basis_dim": 4,
        "basis_hidden_sizes": (16,),
        "net_arch": [16],
        "basis_updates_per_ppo_update": 2,
    }
    if env_id != "FourierRegression-v0":  # discrete actions: the grid/bandit settings of the defaults
        kwargs.update(fit_dynamics=False, action_predictions=True)
    model = BayesPPO(GLiBRLPolicy, bayes_envs.make_vec(env_id, 4, seed=0), policy_kwargs=kwargs, **PPO_KWARGS)
    basis_before = [p.detach().clone() for p in model.policy.belief.basis.parameters()]
    model.learn(128)
    logged = model.logger.name_to_value
    assert np.isfinite(logged["belief/aux_loss"]) and logged["belief/kl_to_previous"] >= 0
    assert np.isfinite(logged["belief/basis_loss"])  # the extra basis steps of after_policy_update
    assert any(
        not torch.equal(a, b)
        for a, b in zip(basis_before, model.policy.belief.basis.parameters(), strict=True)
    )
    before = rollout_actions(model, env_id)
    model.save(tmp_path / "model.zip")
    loaded = BayesPPO.load(tmp_path / "model.zip", device="cpu")
    assert type(loaded.policy) is GLiBRLPolicy and loaded.policy.belief.basis_dim == 4
    np.testing.assert_array_equal(rollout_actions(loaded, env_id), before)


@pytest.mark.parametrize(("env_id", "actions"), [("BayesGrid-v0", 5), ("BayesBandit-v0", 5)])
def test_grid_and_bandit_defaults_fit_the_reward_with_action_predictions(env_id, actions):
    policy_kwargs = method_defaults(env_id, "glibrl")["policy"]
    model = BayesPPO(
        GLiBRLPolicy, bayes_envs.make_vec(env_id, 2, seed=0), policy_kwargs=policy_kwargs, device="cpu"
    )
    belief = model.policy.belief
    assert not belief.fit_dynamics and belief.action_predictions and belief.basis_updates_per_ppo_update > 0
    assert (belief.prior_precision, belief.prior_noise_rate) == (0.01, 0.01)
    # [μ_O, log diag Λ_rew⁻¹, log(b/a)] and the mean and log scale² of each action's reward
    assert belief.policy_input_dim == 2 * belief.basis_dim + 1 + 2 * actions


def test_after_policy_update_trains_on_the_rollout_in_time_order():
    """The hook hands model_update the rollout time-major: on the grid (one 60-step trial per env and
    rollout) each column starts a trial and consecutive positions differ by the clipped move."""
    kwargs = {"basis_dim": 4, "basis_hidden_sizes": (8,), "net_arch": [8], "basis_updates_per_ppo_update": 1}
    kwargs["basis_lr"] = "lin_1e-2"
    ppo = {**PPO_KWARGS, "n_steps": 60, "batch_size": 120, "n_epochs": 1}
    model = BayesPPO(
        GLiBRLPolicy, bayes_envs.make_vec("BayesGrid-v0", 3, seed=0), policy_kwargs=kwargs, **ppo
    )
    belief = model.policy.belief
    calls = []
    stock_update = belief.model_update
    belief.model_update = lambda inputs, starts, n, progress: (
        calls.append((inputs, starts, n, progress)) or stock_update(inputs, starts, n, progress)
    )
    model.learn(720)  # four updates, at 3/4, 1/2, 1/4 and 0 of the budget left
    assert [call[3] for call in calls] == [0.75, 0.5, 0.25, 0.0]
    assert belief._basis_optimizer.param_groups[0]["lr"] == 0.0  # "lin_1e-2" at the end
    calls[:] = calls[:1]
    ((inputs, starts, n_updates, _),) = calls
    assert inputs.shape == (60, 3, belief.input_dim) and n_updates == 1
    np.testing.assert_array_equal(starts.numpy() > 0.5, np.arange(60)[:, None].repeat(3, 1) == 0)
    obs, action, _, new_episode = belief.input_layout.split(inputs)
    moves = torch.tensor([[0, 0], [0, 1], [1, 0], [0, -1], [-1, 0]], dtype=obs.dtype)
    expected = (obs[:-1] + action[1:] @ moves).clamp(0, 4)
    inside = new_episode[1:] < 0.5
    torch.testing.assert_close(obs[1:][inside], expected[inside])
    assert inside.sum() == 3 * (60 - 4)  # the other steps start an inner episode


def test_basis_trained_after_the_update_only_is_fixed_during_it():
    """With ``model_loss_in_policy_update=False`` the PPO update does not reach the basis: BayesPPO
    runs the belief once per update (one belief pass in ``train``, not one per minibatch of every
    epoch) with the same update to rounding as the per-minibatch recompute, the heads move
    and the basis moves only by ``after_policy_update``'s steps."""
    kwargs = {
        "basis_dim": 4,
        "basis_hidden_sizes": (8,),
        "prior_precision": 0.01,
        "prior_noise_rate": 0.01,
        "fit_dynamics": False,
        "action_predictions": True,
        "model_loss_in_policy_update": False,
        "basis_updates_per_ppo_update": 3,
    }
    models = []
    for reuse in (True, False):
        model = one_update_grid_model(GLiBRLPolicy, kwargs, reuse)
        belief = model.policy.belief
        assert belief.fixed_during_policy_update
        initial = {name: value.detach().clone() for name, value in model.policy.named_parameters()}
        calls, train = [], model.train
        passes = {name: getattr(belief, name) for name in ("sequence", "training_sequence")}
        model.train = lambda train=train, belief=belief, passes=passes, calls=calls: (
            [
                setattr(belief, name, lambda *a, run=run: calls.append(1) or run(*a))
                for name, run in passes.items()
            ],
            train(),
            [setattr(belief, name, run) for name, run in passes.items()],
        )
        after = belief.after_policy_update
        basis_before_hook = {}
        belief.after_policy_update = lambda m, after=after, belief=belief, saved=basis_before_hook: (
            saved.update({n: p.detach().clone() for n, p in belief.basis.named_parameters()}),
            after(m),
        )
        model.learn(90 * 3)  # one rollout, one update
        n_minibatches = model.n_epochs * len(list(model.rollout_buffer.get(model.batch_size)))
        assert len(calls) == (1 if reuse else n_minibatches)
        for name, parameter in belief.basis.named_parameters():
            unchanged = initial[f"belief.basis.{name}"]
            torch.testing.assert_close(basis_before_hook[name], unchanged, rtol=0, atol=0)
            assert not torch.equal(parameter, basis_before_hook[name]), name
        models.append((model, initial))
    (fixed, initial), (recomputed, _) = models
    recomputed_parameters = dict(recomputed.policy.named_parameters())
    for name, parameter in fixed.policy.named_parameters():
        torch.testing.assert_close(parameter, recomputed_parameters[name], rtol=1e-4, atol=1e-6, msg=name)
    assert not torch.equal(fixed.policy.action_net.weight, initial["action_net.weight"])
    assert not make_belief().fixed_during_policy_update  # the default trains it in the update
    assert not make_belief(
        detach_policy_input=False, model_loss_in_policy_update=False, basis_updates_per_ppo_update=1
    ).fixed_during_policy_update  # the RL loss reaches it


@pytest.mark.parametrize("timing", ["after", "before"])
def test_basis_update_timing(timing):
    """``basis_update_timing`` puts the basis steps after the PPO update or before it, then before the
    one belief pass of the update (whose features are thus those of the stepped basis)."""
    kwargs = {
        "basis_dim": 4,
        "basis_hidden_sizes": (8,),
        "model_loss_in_policy_update": False,
        "basis_updates_per_ppo_update": 2,
        "basis_update_timing": timing,
    }
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=0)
    model = BayesPPO(GLiBRLPolicy, venv, policy_kwargs=kwargs, **PPO_KWARGS)
    belief, events = model.policy.belief, []
    update, belief_pass, step = belief.model_update, model._rollout_belief_output, model.policy.optimizer.step
    belief.model_update = lambda *args: events.append("basis") or update(*args)
    model._rollout_belief_output = lambda: events.append("belief pass") or belief_pass()
    model.policy.optimizer.step = lambda *args, **kw: events.append("ppo step") or step(*args, **kw)
    model.learn(64)  # one rollout, one update
    ppo_steps = ["ppo step"] * model.n_epochs  # one minibatch of 64 steps per epoch
    if timing == "before":
        assert events == ["basis", "belief pass", *ppo_steps]
    else:
        assert events == ["belief pass", *ppo_steps, "basis"]


@pytest.mark.parametrize(
    ("kwargs", "error", "message"),
    [
        ({"basis_dim": 0}, ValueError, "basis_dim"),
        ({"basis_dim": 2.0}, TypeError, "basis_dim"),
        ({"basis_hidden_sizes": (8, 0)}, ValueError, "basis_hidden_sizes"),
        ({"basis_hidden_sizes": 8}, TypeError, "basis_hidden_sizes"),
        ({"prior_precision": 0.0}, ValueError, "prior_precision"),
        ({"prior_precision": 1e300}, ValueError, "prior_precision"),
        ({"prior_precision": "1"}, TypeError, "prior_precision"),
        ({"prior_noise_concentration": -1.0}, ValueError, "prior_noise_concentration"),
        ({"prior_noise_rate": float("nan")}, ValueError, "prior_noise_rate"),
        ({"prior_noise_rate": float("inf")}, ValueError, "prior_noise_rate"),
        ({"model_loss_weight": -0.5}, ValueError, "model_loss_weight"),
        ({"detach_policy_input": "yes"}, TypeError, "detach_policy_input"),
        ({"fit_dynamics": 1}, TypeError, "fit_dynamics"),
        ({"normalize_policy_input": None}, TypeError, "normalize_policy_input"),
        ({"action_predictions": "no"}, TypeError, "action_predictions"),
        ({"basis_updates_per_ppo_update": -1}, ValueError, "basis_updates_per_ppo_update"),
        ({"basis_lr": 0.0}, ValueError, "basis_lr"),
        ({"basis_lr": 1j}, TypeError, "basis_lr"),
        ({"basis_lr": "lin_2"}, ValueError, "basis_lr"),
        ({"basis_lr": "exp_1e-3"}, ValueError, "basis_lr"),
        ({"model_loss_in_policy_update": 0}, TypeError, "model_loss_in_policy_update"),
        ({"basis_update_timing": "during"}, ValueError, "basis_update_timing"),
        ({"basis_update_timing": None}, TypeError, "basis_update_timing"),
        ({"model_loss_in_policy_update": False}, ValueError, "basis_updates_per_ppo_update"),
    ],
)
def test_bad_kwargs_raise(kwargs, error, message):
    """TypeError for a wrong type, ValueError for a wrong value, naming the argument."""
    with pytest.raises(error, match=message):
        make_belief(**kwargs)
    with pytest.raises(error, match=message):
        BayesPPO(GLiBRLPolicy, bayes_envs.make_vec("BayesBandit-v0", 1), policy_kwargs=kwargs, device="cpu")


def test_bad_construction_and_inputs():
    with pytest.raises(ValueError, match="input_dim"):
        GLiBRLBelief(LAYOUT.input_dim + 1, input_layout=LAYOUT)
    with pytest.raises(TypeError, match="input_layout"):
        GLiBRLBelief(LAYOUT.input_dim, input_layout=(OBS, ACTION))
    with pytest.raises(ValueError, match="n_samples"):
        BayesPPO(
            GLiBRLPolicy,
            bayes_envs.make_vec("BayesBandit-v0", 1),
            policy_kwargs={"n_samples": 1},
            device="cpu",
        )
    belief = make_belief()
    with pytest.raises(TypeError, match="GLiBRLOutput"):
        belief.aux_loss(BeliefOutput(mean=torch.zeros(2, belief.latent_dim)))


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_learn_and_predict():
    kwargs = {"basis_dim": 4, "basis_hidden_sizes": (16,), "net_arch": [16]}
    model = BayesPPO(
        GLiBRLPolicy,
        bayes_envs.make_vec("BayesGrid-v0", 4, seed=0),
        policy_kwargs=kwargs,
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        device="cuda",
    )
    model.learn(128)
    assert next(model.policy.belief.parameters()).is_cuda
    assert np.isfinite(model.logger.name_to_value["belief/aux_loss"])
    rollout_actions(model, "BayesGrid-v0")


# ---------------------------------------------------------------------------------- reference path
def generic_posterior(belief: GLiBRLBelief, statistics: dict) -> NIGPosterior:
    """The NIG posterior with both groups factorised and solved (no special case for an unfitted
    dynamics group): the reference for the reward-only shortcut of :meth:`GLiBRLBelief.posterior`."""
    gram, cross = statistics["gram"], statistics["cross"]
    eye = torch.eye(belief.basis_dim, dtype=gram.dtype)
    cholesky = torch.linalg.cholesky(gram + belief.prior_precision * eye)
    mean = torch.cat(
        [
            torch.cholesky_solve(cross[..., :OBS], cholesky[..., 0, :, :]),
            torch.cholesky_solve(cross[..., OBS:], cholesky[..., 1, :, :]),
        ],
        dim=-1,
    ).transpose(-1, -2)
    explained = (cross.transpose(-1, -2) * mean).sum(-1)
    rate = belief.prior_noise_rate + 0.5 * (statistics["square"] - explained).clamp(min=0.0)
    concentration = belief.prior_noise_concentration + 0.5 * statistics["count"][..., belief.output_group]
    log_det = 2.0 * torch.diagonal(cholesky, dim1=-2, dim2=-1).log().sum(-1)
    return NIGPosterior(mean, cholesky, log_det, concentration, rate)


def generic_action_predictions(belief: GLiBRLBelief, posterior: NIGPosterior, obs: torch.Tensor):
    """Action reward predictions with one triangular solve per (row, action) against a broadcast factor."""
    actions = belief.input_layout.action_dim
    inputs = torch.cat(
        [
            obs.unsqueeze(-2).expand(*obs.shape[:-1], actions, OBS),
            torch.eye(actions).to(obs).expand(*obs.shape[:-1], -1, -1),
        ],
        dim=-1,
    )
    features = belief.basis(inputs)
    mean = (features * posterior.mean[..., -1, :].unsqueeze(-2)).sum(-1)
    cholesky = posterior.group_precision_cholesky[..., 1, :, :].unsqueeze(-3)
    whitened = torch.linalg.solve_triangular(cholesky, features.unsqueeze(-1), upper=False)
    leverage = whitened.squeeze(-1).square().sum(-1)
    noise_scale = posterior.rate[..., -1] / posterior.concentration[..., -1]
    return mean, noise_scale.log().unsqueeze(-1) + torch.log1p(leverage)


def reference_belief(belief: GLiBRLBelief) -> GLiBRLBelief:
    """A copy of ``belief`` whose posterior, group solves, KL trace and action predictions take the
    generic (unspecialised, per-matrix) path."""
    twin = GLiBRLBelief(belief.input_dim, input_layout=belief.input_layout, **REFERENCE_OPTIONS[id(belief)])
    twin = twin.to(torch.float64)
    twin.load_state_dict(belief.state_dict())
    twin.posterior = lambda statistics: generic_posterior(twin, statistics)
    twin._solve_groups = lambda cholesky, right: torch.linalg.solve_triangular(cholesky, right, upper=False)
    twin._action_reward_predictions = lambda posterior, obs: generic_action_predictions(twin, posterior, obs)

    def generic_kl(current, previous, inverse_cholesky):
        twin.fit_dynamics = True  # the full ‖L_cur⁻¹ L_prev‖_F² trace for both groups
        try:
            return GLiBRLBelief._kl(twin, current, previous, inverse_cholesky)
        finally:
            twin.fit_dynamics = False

    twin._kl = generic_kl
    return twin


REFERENCE_OPTIONS: dict[int, dict] = {}


@pytest.mark.parametrize("action_predictions", [False, True])
def test_reward_only_shortcuts_equal_the_generic_computation_with_gradients(action_predictions):
    """``fit_dynamics=False`` factorises only the reward group, takes ``(a/b)Λ_g`` as the precision
    blocks and solves the action predictions with the actions as columns; ``model_update``'s loss
    (:meth:`GLiBRLBelief.model_loss`) skips the per-step posteriors. Every output and the model-loss
    gradients equal the generic path."""
    layout = InputLayout(obs_dim=OBS, action_dim=ACTION, discrete_actions=True)
    options = {"basis_dim": BASIS, "basis_hidden_sizes": (8,), **PRIOR}
    options.update(fit_dynamics=False, action_predictions=action_predictions)
    torch.manual_seed(0)
    belief = GLiBRLBelief(layout.input_dim, input_layout=layout, **options).to(torch.float64)
    REFERENCE_OPTIONS[id(belief)] = options
    reference = reference_belief(belief)
    inputs, starts = random_inputs(9, 3, seed=11)
    starts[5, 1] = True  # a reset inside the sequence
    state = belief.initial_state(3).double()
    output, next_state = belief.sequence(inputs, state, starts)
    expected, expected_state = reference.sequence(inputs, state, starts)
    torch.testing.assert_close(next_state, expected_state, rtol=0, atol=1e-10)
    for field in dataclasses.fields(GLiBRLOutput):
        mine, theirs = getattr(output, field.name), getattr(expected, field.name)
        assert (mine is None) == (theirs is None), field.name
        if mine is not None:
            torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-8, msg=field.name)
    torch.testing.assert_close(
        output.precision, output.precision_cholesky @ output.precision_cholesky.mT, rtol=0, atol=1e-8
    )
    # the continuation from the carried state as well
    carried, _ = belief.sequence(inputs, next_state, torch.zeros_like(starts))
    carried_expected, _ = reference.sequence(inputs, expected_state, torch.zeros_like(starts))
    torch.testing.assert_close(carried.kl_to_previous, carried_expected.kl_to_previous, rtol=0, atol=1e-8)

    parameters = list(belief.basis.parameters())
    gradients = torch.autograd.grad(belief.aux_loss(output), parameters)
    lean_loss = belief.model_loss(inputs, starts)  # the state is the prior: the same trials
    lean_gradients = torch.autograd.grad(lean_loss, parameters)
    reference_gradients = torch.autograd.grad(
        reference.aux_loss(expected), list(reference.basis.parameters())
    )
    torch.testing.assert_close(lean_loss, belief.aux_loss(output), rtol=0, atol=1e-12)
    for mine, lean_gradient, theirs in zip(gradients, lean_gradients, reference_gradients, strict=True):
        torch.testing.assert_close(mine, theirs, rtol=0, atol=1e-6)
        torch.testing.assert_close(lean_gradient, theirs, rtol=0, atol=1e-6)


@pytest.mark.parametrize("first_start", [True, False])
def test_running_sum_without_inner_resets_equals_the_segmented_sum(first_start):
    """Without resets after ``t = 0`` the statistics are summed by one ``torch.cumsum``: equal to the
    segmented indicator-product sum (and, with inner resets, it is that sum)."""
    generator = torch.Generator().manual_seed(7)
    values = torch.randn(23, 4, 6, dtype=torch.float64, generator=generator)
    carry = torch.randn(4, 6, dtype=torch.float64, generator=generator)
    starts = torch.zeros(23, 4, dtype=torch.bool)
    starts[0] = torch.tensor([first_start, False, first_start, True])
    torch.testing.assert_close(
        _running_sum(values, starts, carry), segmented_cumsum(values, starts, carry), rtol=0, atol=1e-12
    )
    starts[9, 2] = True
    torch.testing.assert_close(
        _running_sum(values, starts, carry), segmented_cumsum(values, starts, carry), rtol=0, atol=0
    )
