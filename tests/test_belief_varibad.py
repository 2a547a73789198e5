"""VariBAD belief against independent references: ELBO terms (explicit loops with torch.distributions),
KL/entropy (closed form), resets only at trial starts, sequence == step loop, the trial buffer, VAE
training, and the policy under BayesPPO (learn, save/load/predict)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from conftest import one_update_grid_model
from torch.distributions import Bernoulli, Independent, Normal, kl_divergence

import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.beliefs import InputLayout
from bayes_agents.beliefs.varibad import VariBADBelief, diagonal_gaussian_kl
from bayes_agents.extractors import VariBADExtractor
from bayes_agents.policies import VariBADPolicy
from bayes_envs.wrappers import TrialHistoryWrapper

GRID = InputLayout(obs_dim=2, action_dim=5, discrete_actions=True)
SMALL = {"latent_dim": 3, "hidden_size": 8, "reward_decoder_sizes": (6,)}
GRID_KWARGS = {**SMALL, "reward_decoder": "per_state", "grid_size": 5}


def make_belief(layout: InputLayout = GRID, seed: int = 0, **kwargs) -> VariBADBelief:
    torch.manual_seed(seed)
    belief = VariBADBelief(layout.input_dim, input_layout=layout, **kwargs).double()
    with torch.no_grad():  # larger weights than the default init: posteriors that move
        for parameter in belief.parameters():
            parameter.mul_(2.0)
    return belief


def grid_trials() -> tuple[torch.Tensor, torch.Tensor]:
    """Two hand-made grid trials (lengths 4 and 3), padded to ``[4, 2, 9]``.

    Trial 0: start (0,0); right → (1,0) r=−0.1; up → (1,1) r=−0.1 *inner-episode boundary* (obs back
    at (0,0)); right → (1,0) r=+1. Trial 1: start; up → (0,1) r=+1; right → (1,1) r=−0.1.
    """

    def step(x: int, y: int, action: int | None, reward: float, new_episode: float) -> list[float]:
        one_hot = [0.0] * 5
        if action is not None:
            one_hot[action] = 1.0
        return [x, y, *one_hot, reward, new_episode]

    trial0 = [
        step(0, 0, None, 0.0, 1.0),
        step(1, 0, 2, -0.1, 0.0),
        step(0, 0, 1, -0.1, 1.0),
        step(1, 0, 2, 1.0, 0.0),
    ]
    trial1 = [step(0, 0, None, 0.0, 1.0), step(0, 1, 1, 1.0, 0.0), step(1, 1, 2, -0.1, 0.0), [0.0] * 9]
    inputs = torch.tensor([trial0, trial1], dtype=torch.float64).transpose(0, 1)
    return inputs, torch.tensor([4, 3])


def posteriors_by_steps(belief: VariBADBelief, inputs: torch.Tensor, length: int) -> list[Normal]:
    """q_0 = N(0, I) and the posterior after each step, from a loop of ``step`` on one trial."""
    state = belief.initial_state(1)
    posteriors = [Normal(torch.zeros(belief.latent_dim, dtype=torch.float64), 1.0)]
    for t in range(length):
        output, state = belief.step(inputs[t : t + 1], state, torch.tensor([t == 0]))
        posteriors.append(Normal(output.mean[0], output.precision[0].rsqrt()))
    return posteriors


@pytest.mark.parametrize(
    "kwargs",
    [
        GRID_KWARGS,
        {**SMALL, "reward_decoder": "bernoulli", "reward_decoder_inputs": ("action",), "kl_weight": 0.3},
        {**SMALL, "reward_decoder": "gaussian", "state_decoder": True, "kl_weight": 0.5},
    ],
    ids=["per_state", "bernoulli_on_action", "gaussian_with_state_decoder"],
)
def test_elbo_terms_match_hand_computation(kwargs) -> None:
    belief = make_belief(**kwargs)
    inputs, lengths = grid_trials()
    noise = torch.randn(
        5, 2, belief.latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(1)
    )
    terms = belief.elbo(inputs, lengths, noise=noise)
    assert terms.reconstruction.shape == terms.kl.shape == (5, 2)
    expected_elbo = []
    with torch.no_grad():
        for n in range(2):
            length = int(lengths[n])
            trial = inputs[:length, n]
            posteriors = posteriors_by_steps(belief, trial, length)
            for j in range(length + 1):
                latent = posteriors[j].mean + posteriors[j].stddev * noise[j, n]
                log_likelihood = torch.zeros((), dtype=torch.float64)
                for t in range(1, length):
                    state, next_state = trial[t - 1, :2], trial[t, :2]
                    action, reward, boundary = trial[t, 2:7], trial[t, 7], trial[t, 8] > 0.5
                    decoder = belief.reward_decoder
                    if decoder == "per_state" and not boundary:
                        cell = int(next_state[0]) * 5 + int(next_state[1])
                        log_likelihood += Bernoulli(logits=belief.reward_net(latent)[cell]).log_prob(
                            (reward > 0.5).double()
                        )
                    elif decoder == "bernoulli":  # conditioned on (m, a): boundaries stay valid
                        logit = belief.reward_net(torch.cat([latent, action]))[0]
                        log_likelihood += Bernoulli(logits=logit).log_prob((reward > 0.5).double())
                    elif decoder == "gaussian" and not boundary:
                        mean = belief.reward_net(torch.cat([latent, state, action, next_state]))[0]
                        log_likelihood += Normal(mean, 1.0).log_prob(reward)
                    if belief.state_net is not None and not boundary:
                        predicted = belief.state_net(torch.cat([latent, state, action]))
                        log_likelihood += Normal(predicted, 1.0).log_prob(next_state).sum()
                kl = (
                    torch.zeros((), dtype=torch.float64)
                    if j == 0
                    else kl_divergence(Independent(posteriors[j], 1), Independent(posteriors[j - 1], 1))
                )
                torch.testing.assert_close(terms.reconstruction[j, n], log_likelihood)
                torch.testing.assert_close(terms.kl[j, n], kl)
                assert bool(terms.mask[j, n])
                expected_elbo.append(log_likelihood - belief.kl_weight * kl)
    assert not bool(terms.mask[4, 1])  # prefix beyond trial 1's end
    torch.testing.assert_close(terms.elbo, torch.stack(expected_elbo).mean())
    torch.testing.assert_close(terms.loss, -terms.elbo)


def test_kl_entropy_closed_form_and_sequence_equals_step_loop() -> None:
    belief = make_belief(**GRID_KWARGS)
    generator = torch.Generator().manual_seed(3)
    steps, batch = 12, 3
    inputs = torch.randn(steps, batch, GRID.input_dim, dtype=torch.float64, generator=generator)
    starts = torch.rand(steps, batch, generator=generator) < 0.25
    starts[0, 0] = True
    state = torch.randn(batch, belief.state_size, dtype=torch.float64, generator=generator)
    output, final = belief.sequence(inputs, state, starts)
    looped_state, previous = state, None
    for t in range(steps):
        step_output, looped_state = belief.step(inputs[t], looped_state, starts[t])
        for name in ("mean", "precision", "entropy", "kl_to_previous"):
            torch.testing.assert_close(getattr(output, name)[t], getattr(step_output, name))
        q = Independent(Normal(step_output.mean, step_output.precision.rsqrt()), 1)
        torch.testing.assert_close(step_output.entropy, q.entropy())
        if previous is None:  # previous posterior of the carried-in state: its hidden's head
            carried = belief.encoder.latent_head(state).chunk(2, dim=-1)
            previous = (carried[0], carried[1].exp().sqrt())
        prior = (torch.zeros_like(step_output.mean), torch.ones_like(step_output.mean))
        p_mean = torch.where(starts[t, :, None], prior[0], previous[0])
        p_std = torch.where(starts[t, :, None], prior[1], previous[1])
        reference = kl_divergence(q, Independent(Normal(p_mean, p_std), 1))
        torch.testing.assert_close(step_output.kl_to_previous, reference)
        previous = (step_output.mean, step_output.precision.rsqrt())
    torch.testing.assert_close(final, looped_state)
    # the helper itself against torch.distributions, with gradients through both arguments
    a, b = torch.randn(2, 4, 6, dtype=torch.float64, generator=generator).unbind(0)
    c, d = torch.randn(2, 4, 6, dtype=torch.float64, generator=generator).unbind(0)
    expected = kl_divergence(
        Independent(Normal(a, (b / 2).exp()), 1), Independent(Normal(c, (d / 2).exp()), 1)
    )
    torch.testing.assert_close(diagonal_gaussian_kl(a, b, c, d), expected)


def test_zero_state_is_the_prior_and_resets_happen_only_at_trial_starts() -> None:
    belief = make_belief(**GRID_KWARGS)
    inputs, _ = grid_trials()
    trial = inputs[:, :1]  # [4, 1, 9] with an inner-episode boundary (new_episode = 1) at t = 2
    zero = belief.initial_state(1)
    with_start, _ = belief.sequence(trial, zero, torch.tensor([[True], [False], [False], [False]]))
    without_start, _ = belief.sequence(trial, zero, torch.zeros(4, 1, dtype=torch.bool))
    torch.testing.assert_close(with_start.mean, without_start.mean)  # zero state == reset state
    # KL of the first posterior is to N(0, I)
    q0 = Independent(Normal(with_start.mean[0], with_start.precision[0].rsqrt()), 1)
    prior = Independent(Normal(torch.zeros_like(with_start.mean[0]), 1.0), 1)
    torch.testing.assert_close(with_start.kl_to_previous[0], kl_divergence(q0, prior))
    assert belief.policy_input(with_start).shape == (4, 1, 2 * belief.latent_dim)
    # The inner-episode boundary keeps the posterior's memory: the suffix from a fresh state differs.
    fresh, _ = belief.sequence(trial[2:], zero, torch.tensor([[True], [False]]))
    assert (fresh.mean - with_start.mean[2:]).abs().max() > 1e-3
    # An SB3 episode (trial) start does reset it.
    restarted, _ = belief.sequence(trial, zero, torch.tensor([[True], [False], [True], [False]]))
    torch.testing.assert_close(restarted.mean[2:], fresh.mean)


def test_trial_buffer_joins_trials_across_rollouts_and_drops_leading_fragments() -> None:
    belief = make_belief(**GRID_KWARGS, buffer_trials=3)
    steps = torch.arange(20, dtype=torch.float32)[:, None].expand(20, GRID.input_dim)
    inputs = torch.stack([steps, 100 + steps])  # [2 envs, 20 steps, D]
    starts = np.zeros((2, 20), bool)
    starts[0, [0, 7, 15]] = True
    starts[1, [4, 12]] = True  # env 1's steps 0..3 precede any trial start: dropped
    assert belief.add_trials(inputs[:, :10], starts[:, :10]) == 1  # env 0: [0, 7)
    assert belief.add_trials(inputs[:, 10:], starts[:, 10:]) == 2  # env 0: [7, 15), env 1: [4, 12)
    stored = sorted((int(trial[0, 0]), len(trial)) for trial in belief._trial_buffer)
    assert stored == [(0, 7), (7, 8), (104, 8)]
    assert belief.add_trials(inputs[:, :3], np.ones((2, 3), bool)) == 2 + 4  # partials + 4 single steps
    # a ring of the latest 3: env 1's completed partial [12, 20) and its two single-step trials
    assert belief.buffered_trials == 3
    padded, lengths = belief.sample_trials(10)
    assert padded.shape == (8, 3, GRID.input_dim) and sorted(lengths.tolist()) == [1, 1, 8]
    assert sorted(int(trial[0, 0]) for trial in belief._trial_buffer) == [100, 101, 112]
    # a trial start right after the rollout completes the running trial at once
    assert belief.add_trials(inputs[:, 3:5], np.zeros((2, 2), bool), next_starts=np.array([True, False])) == 1
    assert belief._trial_buffer[belief._buffer_next - 1][:, 0].tolist() == [2.0, 3.0, 4.0]
    assert 0 not in belief._partial_trials and len(belief._partial_trials[1]) == 3


def test_subsampled_elbo_is_unbiased_and_full_when_large() -> None:
    belief = make_belief(**GRID_KWARGS)
    inputs, lengths = grid_trials()
    noise = torch.randn(
        5, 2, belief.latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(2)
    )
    full = belief.elbo(inputs, lengths, noise=noise)
    belief.decodes_per_elbo = 1
    generator = torch.Generator().manual_seed(0)
    with torch.no_grad():
        draws = torch.stack(
            [
                belief.elbo(inputs, lengths, noise=noise, generator=generator).reconstruction
                for _ in range(400)
            ]
        )
    # trial 0 has 2 valid per-cell targets (one is a boundary), trial 1 has 2: a 2-point average
    torch.testing.assert_close(draws.mean(0), full.reconstruction.detach(), atol=0.15, rtol=0.05)
    assert draws.std(0).max() > 1e-3
    belief.decodes_per_elbo, belief.elbo_times = 50, 2
    few = belief.elbo(inputs, lengths, noise=noise[:2], generator=generator)
    assert few.reconstruction.shape == (2, 2)
    for k in range(2):
        for n in range(2):
            j = int(few.prefix_index[k, n])
            assert j <= int(lengths[n])
            assert abs(float(few.kl[k, n].detach() - full.kl[j, n].detach())) < 1e-9


def collect(env_id: str, policy_kwargs: dict, timesteps: int = 480) -> BayesPPO:
    venv = bayes_envs.make_vec(env_id, 4, seed=0)
    model = BayesPPO(
        VariBADPolicy,
        venv,
        policy_kwargs=policy_kwargs,
        n_steps=60,
        batch_size=120,
        n_epochs=1,
        seed=0,
        device="cpu",
    )
    model.learn(timesteps)
    return model


def test_vae_training_improves_the_elbo_on_a_fixed_batch() -> None:
    model = collect("BayesGrid-v0", {**GRID_KWARGS, "vae_lr": 1e-2})
    belief = model.policy.belief
    assert belief.buffered_trials == 480 // 60  # every trial of 60 steps, the last ones included
    inputs, lengths = belief.sample_trials(8, torch.Generator().manual_seed(0))
    noise = torch.randn(61, 8, belief.latent_dim, generator=torch.Generator().manual_seed(0))
    decoder_before = [p.detach().clone() for p in belief.reward_net.parameters()]
    with torch.no_grad():
        before = float(belief.elbo(inputs, lengths, noise=noise).elbo)
    optimizer = belief.vae_optimizer()
    for _ in range(15):
        optimizer.zero_grad()
        belief.elbo(inputs, lengths, noise=noise).loss.backward()
        optimizer.step()
    with torch.no_grad():
        after = float(belief.elbo(inputs, lengths, noise=noise).elbo)
    assert after > before + 1.0, (before, after)
    assert any(
        not torch.equal(a, b) for a, b in zip(decoder_before, belief.reward_net.parameters(), strict=True)
    )


@pytest.mark.parametrize(
    ("env_id", "kwargs"),
    [
        ("BayesGrid-v0", GRID_KWARGS),
        ("BayesBandit-v0", {**SMALL, "reward_decoder": "per_action"}),
        ("FourierRegression-v0", {**SMALL, "state_decoder": True, "elbo_times": 5, "decodes_per_elbo": 7}),
    ],
)
def test_bayes_ppo_trains_the_vae_and_round_trips(env_id, kwargs, tmp_path) -> None:
    venv = bayes_envs.make_vec(env_id, 4, seed=0)
    model = BayesPPO(
        VariBADPolicy, venv, policy_kwargs=kwargs, n_steps=60, batch_size=120, n_epochs=1, seed=0
    )
    belief = model.policy.belief
    decoder_before = [p.detach().clone() for p in belief.reward_net.parameters()]
    encoder_before = [p.detach().clone() for p in belief.encoder.parameters()]
    model.learn(240)
    assert belief.buffered_trials >= 4
    assert np.isfinite(model.logger.name_to_value["vae/elbo"])
    for before, parameters in [(decoder_before, belief.reward_net), (encoder_before, belief.encoder)]:
        assert any(not torch.equal(a, b) for a, b in zip(before, parameters.parameters(), strict=True))

    def actions(agent) -> np.ndarray:
        env = bayes_envs.make_vec(env_id, 2, seed=7, monitor=False)
        obs, state, start, taken = env.reset(), None, np.ones(2, bool), []
        for _ in range(65):
            action, state = agent.predict(obs, state=state, episode_start=start, deterministic=True)
            obs, _, start, _ = env.step(action)
            taken.append(action)
        return np.array(taken)

    expected = actions(model)
    model.save(tmp_path / "varibad.zip")
    loaded = BayesPPO.load(tmp_path / "varibad.zip", device="cpu")
    assert (
        type(loaded.policy) is VariBADPolicy and loaded.policy.belief.reward_decoder == belief.reward_decoder
    )
    np.testing.assert_array_equal(actions(loaded), expected)


def test_rl_loss_reaches_the_encoder_only_with_backprop_rl_loss() -> None:
    inputs = torch.randn(5, 2, GRID.input_dim, dtype=torch.float64)
    starts = torch.zeros(5, 2, dtype=torch.bool)
    for backprop in (False, True):
        belief = make_belief(**GRID_KWARGS, backprop_rl_loss=backprop)
        output, _ = belief.sequence(inputs, belief.initial_state(2), starts)
        features = belief.policy_input(output)
        assert features.requires_grad is backprop
        if backprop:
            features.sum().backward()
            assert belief.encoder.cell.weight_hh.grad.abs().sum() > 0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latent_dim": 0},
        {"hidden_size": -1},
        {"reward_decoder": "mlp"},
        {"reward_decoder": "per_state"},  # no grid_size
        {"reward_decoder": "gaussian", "grid_size": 5},
        {"reward_decoder_inputs": ("state", "reward")},
        {"reward_decoder_inputs": ("state", "state")},
        {"kl_weight": -0.1},
        {"vae_lr": 0.0},
        {"vae_updates_per_ppo_update": 0},
        {"buffer_trials": 0},
        {"elbo_times": 0},
        {"decodes_per_elbo": -2},
        {"reward_decoder_sizes": (8, 0)},
        {"state_decoder_sizes": (-1,)},
        {"kl_weight": float("inf")},
        {"vae_lr": float("nan")},
        {"vae_lr": "lin_2"},
        {"vae_lr": "exp_1e-3"},
        {"vae_update_timing": "during"},
        {"reward_threshold": float("nan")},
    ],
)
def test_bad_keywords_raise_value_error(kwargs) -> None:
    with pytest.raises(ValueError):
        VariBADBelief(GRID.input_dim, input_layout=GRID, **kwargs)


@pytest.mark.parametrize(
    "kwargs",
    [
        {"latent_dim": 2.0},
        {"kl_weight": "0.1"},
        {"state_decoder": 1},
        {"reward_decoder": None},
        {"reward_decoder_inputs": "state"},
        {"reward_decoder_sizes": 32},
        {"vae_lr": 1j},
        {"vae_update_timing": None},
    ],
)
def test_wrong_types_raise_type_error(kwargs) -> None:
    with pytest.raises(TypeError, match=next(iter(kwargs))):
        VariBADBelief(GRID.input_dim, input_layout=GRID, **kwargs)


def test_per_state_grid_size_must_match_the_observation() -> None:
    """A per_state decoder sized for another grid than the env's is an error at construction (a larger
    one used to train silently), from the layout's observation bounds."""
    bounded = InputLayout(2, 5, True, obs_low=(0.0, 0.0), obs_high=(4.0, 4.0))  # a 5x5 grid
    VariBADBelief(bounded.input_dim, input_layout=bounded, reward_decoder="per_state", grid_size=5)
    for grid_size in (4, 7):
        with pytest.raises(ValueError, match=rf"grid_size={grid_size} .* needs grid_size=5"):
            VariBADBelief(
                bounded.input_dim, input_layout=bounded, reward_decoder="per_state", grid_size=grid_size
            )
    # Through the extractor, whose layout comes from the observation space of a 7x7 grid.
    space = TrialHistoryWrapper(gym.make("BayesGrid-v0", size=7), window=5).observation_space
    with pytest.raises(ValueError, match=r"needs grid_size=7"):
        VariBADExtractor(space, reward_decoder="per_state", grid_size=5, hidden_size=8, latent_dim=2)
    VariBADExtractor(space, reward_decoder="per_state", grid_size=7, hidden_size=8, latent_dim=2)


def test_bad_inputs_raise() -> None:
    with pytest.raises(ValueError, match="input_dim"):
        VariBADBelief(GRID.input_dim + 1, input_layout=GRID)
    continuous = InputLayout(obs_dim=3, action_dim=1, discrete_actions=False)
    with pytest.raises(ValueError, match="per_action"):
        VariBADBelief(continuous.input_dim, input_layout=continuous, reward_decoder="per_action")
    with pytest.raises(TypeError):
        VariBADBelief(GRID.input_dim, input_layout=(2, 5, True))
    belief = make_belief(**GRID_KWARGS)
    inputs, lengths = grid_trials()
    with pytest.raises(ValueError, match="integer observations"):
        belief.elbo(inputs + 0.3, lengths)
    with pytest.raises(ValueError, match="lengths"):
        belief.elbo(inputs, torch.tensor([5, 1]))
    with pytest.raises(ValueError, match="n_samples"):
        BayesPPO(
            VariBADPolicy,
            bayes_envs.make_vec("BayesGrid-v0", 2),
            policy_kwargs={**GRID_KWARGS, "n_samples": 2},
        )


def test_running_normalizer_matches_the_statistics_of_all_batches() -> None:
    from bayes_agents.beliefs import RunningNormalizer

    generator = torch.Generator().manual_seed(0)
    batches = [torch.randn(n, 3, generator=generator) * 4 + 2 for n in (1, 7, 50)]
    normalizer = RunningNormalizer(3).double()
    values = torch.randn(5, 3, dtype=torch.float64)
    torch.testing.assert_close(normalizer(values), values)  # identity before any update
    for batch in batches:
        normalizer.update(batch.double().view(-1, 1, 3))  # any leading dims
    everything = torch.cat(batches).double()
    torch.testing.assert_close(normalizer.mean, everything.mean(0))
    torch.testing.assert_close(normalizer.var, everything.var(0, unbiased=False))
    expected = ((values - everything.mean(0)) / (everything.var(0, unbiased=False) + 1e-8).sqrt()).clamp(
        -10, 10
    )
    torch.testing.assert_close(normalizer(values), expected)
    with pytest.raises(ValueError, match="must end in 3"):
        normalizer.update(torch.zeros(2, 4))


def test_policy_input_is_standardised_by_the_posteriors_of_the_added_trials() -> None:
    inputs, lengths = grid_trials()
    belief = make_belief(**GRID_KWARGS)
    trials = [inputs[: lengths[n], n] for n in range(2)]
    belief.update_policy_input_statistics(trials)
    raw = []
    for trial in trials:  # the step loop, one trial at a time
        state = belief.initial_state(1)
        for t, x in enumerate(trial):
            output, state = belief.step(x.unsqueeze(0), state, torch.tensor([t == 0]))
            raw.append(torch.cat([output.mean[0], -output.precision[0].log()]))
    raw = torch.stack(raw)
    mean, var = raw.mean(0), raw.var(0, unbiased=False)
    torch.testing.assert_close(belief.policy_input_normalizer.mean, mean)
    torch.testing.assert_close(belief.policy_input_normalizer.var, var)
    output, _ = belief.sequence(
        inputs[:, :1], belief.initial_state(1), torch.tensor([[True]] + [[False]] * 3)
    )
    torch.testing.assert_close(
        belief.policy_input(output), ((raw[:4] - mean) / (var + 1e-8).sqrt()).clamp(-10, 10).unsqueeze(1)
    )
    plain = make_belief(**GRID_KWARGS, normalize_policy_input=False)
    plain.update_policy_input_statistics(trials)  # statistics are kept but not applied
    output, _ = plain.sequence(inputs[:, :1], plain.initial_state(1), torch.tensor([[True]] + [[False]] * 3))
    torch.testing.assert_close(plain.policy_input(output), raw[:4].unsqueeze(1))


def test_bayes_ppo_updates_the_policy_input_statistics_after_each_vae_round() -> None:
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=0)
    model = BayesPPO(VariBADPolicy, venv, policy_kwargs=GRID_KWARGS, n_steps=60, batch_size=120, n_epochs=1)
    normalizer = model.policy.belief.policy_input_normalizer
    model.learn(480)
    # Two rollouts of 4 envs × one 60-step trial each, every step counted once.
    assert float(normalizer.count) == 2 * 4 * 60
    assert not torch.equal(normalizer.var, torch.ones_like(normalizer.var))


@pytest.mark.parametrize("timing", ["after", "before"])
def test_vae_update_timing(timing) -> None:
    """``vae_update_timing`` puts the VAE round (and the policy-input statistics it updates) after the
    PPO update or before it, then before the update's one belief pass, whose posteriors are thus those
    of the stepped encoder; the round trains on the trials of the rollout the update uses."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=0)
    kwargs = {**GRID_KWARGS, "vae_updates_per_ppo_update": 2, "vae_update_timing": timing}
    model = BayesPPO(VariBADPolicy, venv, policy_kwargs=kwargs, n_steps=60, batch_size=120, n_epochs=2)
    belief, events = model.policy.belief, []
    vae_update, belief_pass = belief.vae_update, model._rollout_belief_output
    step = model.policy.optimizer.step
    belief.vae_update = lambda **kw: events.append(("vae", belief.buffered_trials)) or vae_update(**kw)
    model._rollout_belief_output = lambda: events.append("belief pass") or belief_pass()
    model.policy.optimizer.step = lambda *args, **kw: events.append("ppo step") or step(*args, **kw)
    model.learn(120)  # one rollout (one 60-step trial per env), one update of 2 epochs × 1 minibatch
    vae = [("vae", 2)]  # both trials of the rollout are buffered before the round
    expected = [*vae, "belief pass", "ppo step", "ppo step"]
    assert events == (expected if timing == "before" else [*expected[1:], *vae])
    assert float(belief.policy_input_normalizer.count) == 2 * 60


def test_vae_lr_decays_linearly_over_the_budget() -> None:
    """``vae_lr="lin_<v>"``: each VAE round runs at ``v`` times the fraction of the budget left when
    it starts (as BayesPPO's ``lin_`` schedules), through BayesPPO's hook and ``update_trial_model``."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=0)
    kwargs = {**GRID_KWARGS, "vae_updates_per_ppo_update": 1, "vae_lr": "lin_1e-2"}
    model = BayesPPO(VariBADPolicy, venv, policy_kwargs=kwargs, n_steps=60, batch_size=120, n_epochs=1)
    belief, rates = model.policy.belief, []
    vae_update = belief.vae_update

    def recorded(**kw):
        stats = vae_update(**kw)
        rates.append(belief.vae_optimizer().param_groups[0]["lr"])
        return stats

    belief.vae_update = recorded
    model.learn(480)  # four updates, at 3/4, 1/2, 1/4 and 0 of the budget left
    np.testing.assert_allclose(rates, [7.5e-3, 5e-3, 2.5e-3, 0.0])
    belief.update_trial_model(progress_remaining=0.4)
    assert rates[-1] == pytest.approx(4e-3)
    assert belief.vae_lr == "lin_1e-2"  # the config value is kept (saved with the policy)
    constant = make_belief(**GRID_KWARGS, vae_lr=2e-3)
    assert constant._vae_rate.at(0.1) == 2e-3


def test_policy_reward_beliefs_append_the_decoder_probabilities_at_the_mean() -> None:
    inputs, _ = grid_trials()
    belief = make_belief(**GRID_KWARGS, policy_reward_beliefs=True, normalize_policy_input=False)
    assert belief.policy_input_dim == 2 * belief.latent_dim + 25
    output, _ = belief.sequence(
        inputs, belief.initial_state(2), torch.tensor([[True, True]] + [[False] * 2] * 3)
    )
    features = belief.policy_input(output)
    expected = torch.sigmoid(belief.reward_net(output.mean))
    torch.testing.assert_close(features[..., 2 * belief.latent_dim :], expected)
    torch.testing.assert_close(features[..., : belief.latent_dim], output.mean)
    assert not features.requires_grad
    with pytest.raises(ValueError, match="policy_reward_beliefs"):
        VariBADBelief(
            GRID.input_dim, input_layout=GRID, reward_decoder="gaussian", policy_reward_beliefs=True
        )


def random_grid_trials(n_trials: int, steps: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Random grid trials ``[steps, n_trials, 9]`` (cells, one-hot actions, rewards −0.1/+1, random
    inner-episode boundaries) of random lengths, zero-padded."""
    generator = torch.Generator().manual_seed(seed)
    cells = torch.randint(0, 5, (steps, n_trials, 2), generator=generator).double()
    actions = torch.nn.functional.one_hot(torch.randint(0, 5, (steps, n_trials), generator=generator), 5)
    rewards = torch.where(torch.rand(steps, n_trials, generator=generator) < 0.3, 1.0, -0.1).double()
    boundaries = (torch.rand(steps, n_trials, generator=generator) < 0.2).double()
    inputs = torch.cat([cells, actions.double(), rewards[..., None], boundaries[..., None]], dim=-1)
    inputs[0, :, 2:] = 0.0
    inputs[0, :, -1] = 1.0
    lengths = torch.randint(2, steps + 1, (n_trials,), generator=generator)
    lengths[0] = steps
    inputs = inputs * (torch.arange(steps)[:, None] < lengths[None]).double()[..., None]
    return inputs, lengths


def reference_reconstruction(belief: VariBADBelief, inputs: torch.Tensor, lengths, latent) -> torch.Tensor:
    """``Σ_t log p(r_t [, s'_t] | m)`` ``[K, N]`` by a loop over trials and transitions, one decoder call
    per (prefix, transition): the per-transition form that the head-count form must equal."""
    rows = []
    for k in range(latent.shape[0]):
        row = []
        for n in range(latent.shape[1]):
            total = latent.new_zeros(())
            logits = belief.reward_net(latent[k, n])
            for t in range(1, int(lengths[n])):
                state, next_state = inputs[t - 1, n, :2], inputs[t, n, :2]
                action, reward, boundary = inputs[t, n, 2:7], inputs[t, n, 7], bool(inputs[t, n, 8] > 0.5)
                target = (reward > belief.reward_threshold).double()
                if belief.reward_decoder == "per_state" and not boundary:
                    head = int(next_state[0]) * 5 + int(next_state[1])
                    total = total + Bernoulli(logits=logits[head]).log_prob(target)
                elif belief.reward_decoder == "per_action":
                    total = total + Bernoulli(logits=logits[int(action.argmax())]).log_prob(target)
                if belief.state_net is not None and not boundary:
                    predicted = belief.state_net(torch.cat([latent[k, n], state, action]))
                    total = total + Normal(predicted, 1.0).log_prob(next_state).sum()
            row.append(total)
        rows.append(torch.stack(row))
    return torch.stack(rows)


@pytest.mark.parametrize(
    "kwargs",
    [
        GRID_KWARGS,
        {**GRID_KWARGS, "state_decoder": True},
        {**SMALL, "reward_decoder": "per_action"},
    ],
    ids=["per_state", "per_state_with_state_decoder", "per_action"],
)
def test_multi_head_reconstruction_equals_the_per_transition_sum_with_gradients(kwargs) -> None:
    """The full-decode ELBO of the multi-head decoders sums log-likelihoods by head counts; its values
    and its gradients (every parameter) equal the per-transition reference in float64."""
    belief = make_belief(**kwargs)
    inputs, lengths = random_grid_trials(n_trials=4, steps=7, seed=3)
    noise = torch.randn(
        8, 4, belief.latent_dim, dtype=torch.float64, generator=torch.Generator().manual_seed(4)
    )
    terms = belief.elbo(inputs, lengths, noise=noise)
    parameters = [p for p in belief.parameters() if p.requires_grad]
    gradients = torch.autograd.grad(terms.loss, parameters, allow_unused=True)

    starts = torch.zeros(inputs.shape[:2], dtype=torch.bool)
    starts[0] = True
    mean, log_variance, previous, _ = belief.posterior_parameters(
        inputs, inputs.new_zeros(4, belief.hidden_size), starts
    )
    prefix_mean = torch.cat([mean.new_zeros(1, 4, belief.latent_dim), mean])
    prefix_log_variance = torch.cat([mean.new_zeros(1, 4, belief.latent_dim), log_variance])
    latent = prefix_mean + torch.exp(0.5 * prefix_log_variance) * noise
    reconstruction = reference_reconstruction(belief, inputs, lengths, latent)
    kl = torch.cat(
        [
            mean.new_zeros(1, 4),
            diagonal_gaussian_kl(mean, log_variance, *previous.chunk(2, dim=-1)),
        ]
    )
    exists = torch.arange(8)[:, None] <= lengths[None]
    reference_loss = -((reconstruction - belief.kl_weight * kl) * exists).sum() / exists.sum()
    reference_gradients = torch.autograd.grad(reference_loss, parameters, allow_unused=True)

    torch.testing.assert_close(terms.reconstruction * exists, reconstruction * exists, rtol=0, atol=1e-6)
    torch.testing.assert_close(terms.loss, reference_loss, rtol=0, atol=1e-6)
    for gradient, reference in zip(gradients, reference_gradients, strict=True):
        if reference is None:
            assert gradient is None or not gradient.abs().any()
        else:
            torch.testing.assert_close(gradient, reference, rtol=0, atol=1e-6)


def test_vae_update_statistics_are_the_means_of_the_steps() -> None:
    """``vae_update`` accumulates its statistics as tensors (one host transfer): the same means as
    the ELBO terms of each step taken before that step."""
    belief = make_belief(**GRID_KWARGS)
    inputs, _ = random_grid_trials(n_trials=6, steps=6, seed=5)
    added = belief.add_trials(
        inputs.transpose(0, 1).float(), np.eye(1, 6, dtype=bool).repeat(6, 0), next_starts=np.ones(6, bool)
    )
    assert added == 6
    twin = make_belief(**GRID_KWARGS)
    twin.load_state_dict(belief.state_dict())
    twin._trial_buffer = list(belief._trial_buffer)
    stats = belief.vae_update(3, generator=torch.Generator().manual_seed(0))
    generator, expected = torch.Generator().manual_seed(0), []
    optimizer = twin.vae_optimizer()
    for _ in range(3):
        terms = twin.elbo(*twin.sample_trials(twin.vae_batch_trials, generator), generator=generator)
        optimizer.zero_grad()
        terms.loss.backward()
        optimizer.step()
        mask = terms.mask.double()
        expected.append(
            [
                float(terms.elbo.detach()),
                float((terms.reconstruction.detach() * mask).sum() / mask.sum()),
                float((terms.kl.detach() * mask).sum() / mask.sum()),
            ]
        )
    for index, name in enumerate(("elbo", "reconstruction", "kl")):
        assert stats[name] == pytest.approx(np.mean([row[index] for row in expected]), abs=1e-9)
    for mine, theirs in zip(belief.parameters(), twin.parameters(), strict=True):
        torch.testing.assert_close(mine, theirs)


def test_update_runs_the_fixed_encoder_once_and_equals_the_minibatch_recompute(monkeypatch) -> None:
    """VariBAD's encoder gets no gradient in the PPO update: BayesPPO runs it once over the rollout
    (through the trials' resets) instead of per minibatch of every epoch, with the same update to
    rounding."""
    models = []
    for reuse in (True, False):
        model = one_update_grid_model(VariBADPolicy, GRID_KWARGS, reuse)
        belief = model.policy.belief
        assert belief.fixed_during_policy_update
        initial = {name: value.detach().clone() for name, value in model.policy.named_parameters()}
        calls = _count_calls_in_train(monkeypatch, model, belief, "sequence")
        model.learn(90 * 3)  # one rollout, one update
        n_minibatches = model.n_epochs * len(list(model.rollout_buffer.get(model.batch_size)))
        assert len(calls) == (1 if reuse else n_minibatches)
        models.append((model, initial))
    (fixed, initial), (recomputed, _) = models
    recomputed_parameters = dict(recomputed.policy.named_parameters())
    moved = 0
    for name, parameter in fixed.policy.named_parameters():
        torch.testing.assert_close(parameter, recomputed_parameters[name], rtol=1e-4, atol=1e-6, msg=name)
        moved += not torch.equal(parameter, initial[name])
    assert moved > 0


def test_rollout_belief_output_is_the_same_before_and_after_the_buffer_is_flattened() -> None:
    model = collect("BayesGrid-v0", GRID_KWARGS, timesteps=240)
    model.collect_rollouts(model.env, _NoCallback(), model.rollout_buffer, model.n_steps)
    as_stored = model._rollout_belief_output()
    list(model.rollout_buffer.get(model.batch_size))  # SB3 flattens the arrays env-major
    flattened = model._rollout_belief_output()
    for name in ("mean", "precision"):
        torch.testing.assert_close(getattr(flattened, name), getattr(as_stored, name), rtol=0, atol=0)
    assert as_stored.mean.shape[0] == model.n_steps * model.n_envs


def _count_calls_in_train(monkeypatch, model: BayesPPO, owner, name: str) -> list[int]:
    """A list that grows by one per call of ``owner.<name>`` made inside ``model.train()``."""
    calls: list[int] = []
    training = [False]
    method, train = getattr(owner, name), model.train

    def counted(*args):
        if training[0]:
            calls.append(1)
        return method(*args)

    def counted_train():
        training[0] = True
        try:
            train()
        finally:
            training[0] = False

    monkeypatch.setattr(owner, name, counted)
    monkeypatch.setattr(model, "train", counted_train)
    return calls


class _NoCallback:
    """The callback protocol collect_rollouts calls, doing nothing."""

    def __getattr__(self, name):
        return lambda *args, **kwargs: True
