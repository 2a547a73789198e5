"""The fused acting step (``BeliefPolicy.act``, used by ``forward``, ``predict`` and BayesPPO's rollout)
gives exactly what the generic SB3 path gives: ``get_distribution`` (actions drawn from the same torch
generator state, their log-probabilities) and ``predict_values``, and the same next state slots, for
every belief, discrete and continuous actions, with and without posterior samples."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.utils import obs_as_tensor

import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.policies import (
    GLiBRLPolicy,
    LaplacePolicy,
    RL2Policy,
    VariBADPolicy,
    VRNNPolicy,
)

SMALL = {"hidden_size": 16, "latent_dim": 4, "embed_sizes": (16,)}
LAPLACE = {**SMALL, "window": 3, "variant": "sum_precision"}
VARIBAD = {"hidden_size": 16, "latent_dim": 3, "reward_decoder_sizes": (6,)}
GLIBRL = {"basis_dim": 4, "basis_hidden_sizes": (8,)}
POLICIES = [
    pytest.param(RL2Policy, SMALL, id="rl2"),
    pytest.param(RL2Policy, {**SMALL, "rnn": "gru"}, id="rl2-gru"),
    pytest.param(LaplacePolicy, {**LAPLACE, "covariance": "full", "n_samples": 0}, id="laplace-full-0"),
    pytest.param(LaplacePolicy, {**LAPLACE, "covariance": "full", "n_samples": 1}, id="laplace-full-1"),
    pytest.param(LaplacePolicy, {**LAPLACE, "covariance": "diag", "n_samples": 0}, id="laplace-diag-0"),
    pytest.param(LaplacePolicy, {**LAPLACE, "covariance": "diag", "n_samples": 1}, id="laplace-diag-1"),
    pytest.param(VRNNPolicy, {**SMALL, "n_samples": 0}, id="vrnn-0"),
    pytest.param(VRNNPolicy, {**SMALL, "n_samples": 2}, id="vrnn-2"),
    pytest.param(VariBADPolicy, VARIBAD, id="varibad"),
    pytest.param(GLiBRLPolicy, GLIBRL, id="glibrl"),
]
EXACT = {"rtol": 0.0, "atol": 0.0}


def make_policy(policy_class, venv, kwargs):
    torch.manual_seed(0)
    policy = policy_class(venv.observation_space, venv.action_space, lambda _: 3e-4, **kwargs)
    with torch.no_grad():  # a non-trivial policy: larger weights, a non-unit action scale
        for parameter in policy.parameters():
            parameter.mul_(1.5)
        if hasattr(policy, "log_std"):
            policy.log_std.fill_(-0.4)
    return policy.eval()


def reference_step(policy, obs, slots, starts, deterministic):
    """The generic SB3 path: a Distribution object, its actions and log-probabilities, then the value."""
    with torch.no_grad():
        distribution, next_slots = policy.get_distribution(obs, slots, starts)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        values = policy.predict_values(obs, slots, starts)
    return actions.reshape((-1, *policy.action_space.shape)), values, log_prob, next_slots


@pytest.mark.parametrize("env_id", ["BayesGrid-v0", "FourierRegression-v0"])
@pytest.mark.parametrize(("policy_class", "kwargs"), POLICIES)
def test_act_equals_the_generic_path(env_id, policy_class, kwargs) -> None:
    n_envs = 3
    venv = bayes_envs.make_vec(env_id, n_envs, seed=2, monitor=False)
    policy = make_policy(policy_class, venv, kwargs)
    generator = torch.Generator().manual_seed(1)
    zeros = torch.zeros(1, n_envs, policy.lstm_actor.hidden_size)
    slots = policy.randomize_noise_keys((zeros, zeros), generator)  # distinct noise streams per env
    obs, starts = venv.reset(), np.ones(n_envs, dtype=bool)
    starts_seen = 0
    for step in range(70 if env_id == "BayesGrid-v0" else 25):  # grid trials end at step 60
        obs_t = obs_as_tensor(obs, policy.device)
        starts_t = torch.as_tensor(starts, dtype=torch.float32)
        deterministic = step % 5 == 4
        torch.manual_seed(100 + step)
        actions, values, log_prob, next_slots = policy.act(obs_t, slots, starts_t, deterministic)
        torch.manual_seed(100 + step)
        expected = reference_step(policy, obs_t, slots, starts_t, deterministic)
        for name, got, want in zip(
            ("actions", "values", "log_prob", "hidden", "cell"),
            (actions, values, log_prob, *next_slots),
            (*expected[:3], *expected[3]),
            strict=True,
        ):
            torch.testing.assert_close(got, want, **EXACT, msg=f"{name} at step {step}")
        # forward (what the stock RecurrentPPO rollout calls) is the same step.
        torch.manual_seed(100 + step)
        forwarded = policy(obs_t, RNNStates(slots, slots), starts_t, deterministic)
        for got, want in zip(forwarded[:3], (actions, values, log_prob), strict=True):
            torch.testing.assert_close(got, want, **EXACT)
        torch.testing.assert_close(forwarded[3].pi[0], next_slots[0], **EXACT)
        assert not forwarded[3].pi[0].is_inference()  # the algorithm may keep and reuse it
        obs, _, dones, _ = venv.step(actions.numpy())
        starts, slots = dones, next_slots
        starts_seen += int(dones.any())
    if env_id == "BayesGrid-v0":
        assert starts_seen > 0


@pytest.mark.parametrize(("policy_class", "kwargs"), [POLICIES[0], POLICIES[3], POLICIES[7]])
def test_predict_uses_the_acting_path(policy_class, kwargs) -> None:
    """``predict`` (SB3's wrapper around ``_predict``) gives the generic path's actions and states."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=3, monitor=False)
    policy = make_policy(policy_class, venv, kwargs)
    obs, state, start = venv.reset(), None, np.ones(2, dtype=bool)
    for step in range(65):
        torch.manual_seed(step)
        action, next_state = policy.predict(obs, state=state, episode_start=start)
        slots = (
            (torch.zeros(1, 2, policy.lstm_actor.hidden_size),) * 2
            if state is None
            else tuple(torch.as_tensor(array) for array in state)
        )
        torch.manual_seed(step)
        expected_actions, _, _, expected_slots = reference_step(
            policy, obs_as_tensor(obs, "cpu"), slots, torch.as_tensor(start, dtype=torch.float32), False
        )
        np.testing.assert_array_equal(action, expected_actions.numpy())
        np.testing.assert_array_equal(next_state[0], expected_slots[0].numpy())
        obs, _, start, _ = venv.step(action)
        state = next_state


@pytest.mark.parametrize(("policy_class", "kwargs"), [POLICIES[0], POLICIES[3], POLICIES[5]])
def test_bayes_ppo_rollout_stores_the_generic_path(policy_class, kwargs) -> None:
    """BayesPPO's rollout (the acting path, batched bootstrap of time-limit truncations) stores the
    log-probabilities and values the generic path gives for the stored observations and states."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 3, seed=4)
    model = BayesPPO(policy_class, venv, policy_kwargs=kwargs, n_steps=70, batch_size=70, seed=0)
    model.train = lambda: None  # collect only
    model.learn(210)
    buffer, policy = model.rollout_buffer, model.policy
    assert buffer.hidden_states_vf.shape[-1] == 0  # one copy of the belief state
    obs = {key: torch.as_tensor(value).flatten(0, 1) for key, value in buffer.observations.items()}
    slots = tuple(
        torch.as_tensor(array[:, 0]).flatten(0, 1)[None]
        for array in (buffer.hidden_states_pi, buffer.cell_states_pi)
    )
    starts = torch.as_tensor(buffer.episode_starts).flatten()
    with torch.no_grad():  # every stored step on its own, from its stored state
        distribution, _ = policy.get_distribution(obs, slots, starts)
        log_prob = distribution.log_prob(torch.as_tensor(buffer.actions).flatten().long())
        values = policy.predict_values(obs, slots, starts)
    torch.testing.assert_close(log_prob, torch.as_tensor(buffer.log_probs).flatten(), atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(
        values.flatten(), torch.as_tensor(buffer.values).flatten(), atol=1e-6, rtol=1e-6
    )
    assert buffer.episode_starts[1:].any()


@pytest.mark.parametrize(
    ("policy_class", "kwargs"),
    [
        *POLICIES[2:6],
        pytest.param(
            GLiBRLPolicy, {**GLIBRL, "fit_dynamics": False, "action_predictions": True}, id="glibrl"
        ),
    ],
)
def test_lean_acting_statistics_are_formed_when_read(policy_class, kwargs) -> None:
    """A Laplace or GLiBRL acting step forms only what the action needs; ``last_belief_output`` (read
    e.g. by the evaluation) is then the generic path's whole output: entropy, KL, the Laplace previous
    precision, the GLiBRL log predictive and precision blocks."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 3, seed=5, monitor=False)
    policy = make_policy(policy_class, venv, kwargs)
    zeros = torch.zeros(1, 3, policy.lstm_actor.hidden_size)
    slots = policy.randomize_noise_keys((zeros, zeros), torch.Generator().manual_seed(2))
    obs, starts = venv.reset(), np.ones(3, dtype=bool)
    for step in range(8):
        obs_t, starts_t = obs_as_tensor(obs, policy.device), torch.as_tensor(starts, dtype=torch.float32)
        torch.manual_seed(step)
        actions, _, _, next_slots = policy.act(obs_t, slots, starts_t)
        acted = policy.last_belief_output
        with torch.no_grad():
            policy.get_distribution(obs_t, slots, starts_t)
        expected = policy.last_belief_output
        assert type(acted) is type(expected)
        for field in dataclasses.fields(expected):
            theirs = getattr(expected, field.name)
            if theirs is not None:
                torch.testing.assert_close(getattr(acted, field.name), theirs, **EXACT, msg=field.name)
        assert acted.entropy is not None and acted.kl_to_previous is not None
        obs, _, starts, _ = venv.step(actions.numpy())
        slots = next_slots
