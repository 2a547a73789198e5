"""TrialHistoryWrapper and BeliefObservationWrapper against brute-force references built from the raw env."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from stable_baselines3.common.env_checker import check_env
from stable_baselines3.common.env_util import make_vec_env

import bayes_envs
from bayes_agents.beliefs import LaplaceBelief, RL2Belief
from bayes_envs.core import RL2_KEYS
from bayes_envs.wrappers import (
    BeliefObservationWrapper,
    TrialHistory,
    TrialHistoryVecWrapper,
    TrialHistoryWrapper,
)

ENV_IDS = ["BayesGrid-v0", "BayesBandit-v0", "FourierRegression-v0"]
SMALL = {"hidden_size": 8, "latent_dim": 4, "embed_sizes": (8,)}


def raw_inputs_and_actions(env_id: str, seed: int, steps: int, **env_kwargs):
    """Per-step RL² inputs (dicts) of the raw Dict env under random actions, with trial starts."""
    env = gym.make(env_id, **env_kwargs)
    env.action_space.seed(seed)
    obs, _ = env.reset(seed=seed)
    inputs, actions, starts = [obs], [], [True]
    for _ in range(steps):
        action = env.action_space.sample()
        obs, _, terminated, truncated, _ = env.step(action)
        actions.append(action)
        inputs.append(obs)
        starts.append(False)
        if terminated or truncated:
            obs, _ = env.reset()
            actions.append(None)  # marks a reset between steps
            inputs.append(obs)
            starts.append(True)
    return inputs, actions, starts


def replay(wrapper: gym.Env, actions: list, seed: int) -> list:
    """The wrapper's observations under the same actions (``None``: reset)."""
    observations = [wrapper.reset(seed=seed)[0]]
    for action in actions:
        if action is None:
            observations.append(wrapper.reset()[0])
        else:
            observations.append(wrapper.step(action)[0])
    return observations


def expected_history(inputs: list, starts: list, index: int, window: int) -> dict[str, np.ndarray]:
    """Brute force: the inputs since the last trial start, at most ``window`` of them, zero padded."""
    begin = max(i for i in range(index + 1) if starts[i])
    recent = inputs[max(begin, index - window + 1) : index + 1]
    history = {}
    for key in RL2_KEYS:
        values = np.zeros((window, *np.shape(inputs[0][key])), np.float32)
        values[: len(recent)] = [entry[key] for entry in recent]
        history[f"history_{key}"] = values
    mask = np.zeros(window, np.float32)
    mask[: len(recent)] = 1.0
    history["history_mask"] = mask
    history["obs"] = inputs[index]["obs"]
    return history


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("rl2_inputs", [True, False])
def test_history_is_the_last_inputs_of_the_trial_reset_at_trial_start(env_id, rl2_inputs) -> None:
    window = 7
    kwargs = {"n_points": 20, "episodes_per_trial": 2} if env_id == "FourierRegression-v0" else {}
    inputs, actions, starts = raw_inputs_and_actions(env_id, seed=3, steps=130, **kwargs)
    assert sum(starts) >= 3  # several trials, so resets are exercised
    wrapper = TrialHistoryWrapper(gym.make(env_id, rl2_inputs=rl2_inputs, **kwargs), window=window)
    observations = replay(wrapper, actions, seed=3)
    for index, observation in enumerate(observations):
        expected = expected_history(inputs, starts, index, window)
        assert set(observation) == set(expected)
        for key, value in expected.items():
            np.testing.assert_array_equal(observation[key], value, err_msg=f"step {index}, {key}")
        assert wrapper.observation_space.contains(observation)


def test_padding_is_zero_and_masked_and_whole_trial_window() -> None:
    wrapper = TrialHistoryWrapper(gym.make("BayesGrid-v0"))
    assert wrapper.window == 60  # 15 steps x 4 inner episodes
    observation, _ = wrapper.reset(seed=0)
    for step in range(1, 20):
        observation, *_ = wrapper.step(wrapper.action_space.sample())
        assert observation["history_mask"].sum() == step + 1
        assert not observation["history_obs"][step + 1 :].any()
        assert not observation["history_prev_action"][step + 1 :].any()
    # The inner-episode boundary after 15 steps is flagged at entry 15 only (entry 0 is the trial start).
    np.testing.assert_array_equal(np.flatnonzero(observation["history_new_episode"][:, 0]), [0, 15])


def test_batched_history_rows_are_independent() -> None:
    shapes = {"obs": (2,), "prev_action": (3,), "prev_reward": (1,), "new_episode": (1,)}
    batch, window, rng = 4, 3, np.random.default_rng(0)
    history = TrialHistory(batch, window, shapes)
    singles = [TrialHistory(1, window, shapes) for _ in range(batch)]
    for step in range(12):
        parts = {key: rng.normal(size=(batch, *shape)).astype(np.float32) for key, shape in shapes.items()}
        restart = rng.random(batch) < 0.3 if step else np.ones(batch, bool)
        history.append(parts, restart)
        for row, single in enumerate(singles):
            single.append({key: value[row : row + 1] for key, value in parts.items()}, restart[row : row + 1])
        observation = history.observation(parts["obs"])
        for row, single in enumerate(singles):
            for key, value in single.observation(parts["obs"][row : row + 1]).items():
                np.testing.assert_array_equal(observation[key][row], value[0])


def brute_force_beliefs(belief, inputs: list, starts: list) -> np.ndarray:
    """The belief's policy features at every step: one ``sequence`` call over all steps."""
    flat = torch.as_tensor(
        np.stack([np.concatenate([entry[key].reshape(-1) for key in RL2_KEYS]) for entry in inputs])
    )
    with torch.no_grad():
        output, _ = belief.sequence(flat[:, None], belief.initial_state(1), torch.tensor(starts)[:, None])
    return belief.policy_input(output)[:, 0].numpy()


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("rl2_inputs", [True, False])
def test_belief_observation_wrapper_appends_the_recurrent_belief(env_id, rl2_inputs) -> None:
    inputs, actions, starts = raw_inputs_and_actions(env_id, seed=1, steps=70)
    input_dim = sum(np.size(inputs[0][key]) for key in RL2_KEYS)
    torch.manual_seed(0)
    belief = LaplaceBelief(input_dim, **SMALL, window=2, variant="markov")
    wrapper = BeliefObservationWrapper(gym.make(env_id, rl2_inputs=rl2_inputs), belief)
    observations = np.stack(replay(wrapper, actions, seed=1))
    expected_features = brute_force_beliefs(belief, inputs, starts)
    obs_dim = np.size(inputs[0]["obs"])
    np.testing.assert_array_equal(observations[:, :obs_dim], np.stack([entry["obs"] for entry in inputs]))
    np.testing.assert_allclose(observations[:, obs_dim:], expected_features, rtol=1e-5, atol=1e-6)
    assert observations.shape[1] == obs_dim + belief.policy_input_dim
    assert wrapper.last_belief_output.precision is not None


def test_belief_observation_wrapper_keeps_rl2_inputs_and_is_frozen() -> None:
    belief = RL2Belief(2 + 5 + 2, **SMALL)
    wrapper = BeliefObservationWrapper(gym.make("BayesGrid-v0"), belief, keep_rl2_inputs=True)
    observation, _ = wrapper.reset(seed=0)
    np.testing.assert_array_equal(observation[:9], [0, 0, 0, 0, 0, 0, 0, 0, 1])  # x_0 = [s_0, 0, 0, 1]
    assert observation.shape == (9 + SMALL["latent_dim"],)
    assert all(not parameter.requires_grad for parameter in wrapper.belief.parameters())
    assert all(parameter.requires_grad for parameter in belief.parameters())  # the caller's belief untouched


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_check_env_passes(env_id) -> None:
    with pytest.warns(UserWarning, match="unconventional shape"):  # [K, D] history entries: expected
        check_env(TrialHistoryWrapper(gym.make(env_id), window=5))
    check_env(TrialHistoryWrapper(gym.make(env_id, rl2_inputs=False), window=1), warn=False)
    env = gym.make(env_id, rl2_inputs=False)
    input_dim = TrialHistoryWrapper(env, window=1).tracker.input_dim
    check_env(BeliefObservationWrapper(env, RL2Belief(input_dim, **SMALL)))


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="window"):
        TrialHistoryWrapper(gym.make("BayesGrid-v0"), window=0)
    with pytest.raises(TypeError, match="window"):
        TrialHistoryWrapper(gym.make("BayesGrid-v0"), window=2.5)
    with pytest.raises(ValueError, match="window=None"):
        TrialHistoryWrapper(gym.make("CartPole-v1"))
    with pytest.raises(TypeError, match="observation_space"):
        TrialHistoryWrapper(gym.make("Blackjack-v1"), window=3)
    with pytest.raises(ValueError, match="input_dim"):
        BeliefObservationWrapper(gym.make("BayesGrid-v0"), RL2Belief(5, **SMALL))
    with pytest.raises(TypeError, match="Belief"):
        BeliefObservationWrapper(gym.make("BayesGrid-v0"), torch.nn.Linear(9, 2))


def test_plain_gymnasium_env_gets_rl2_inputs() -> None:
    """Any Box-observation env works: one episode is one trial, flagged new at reset only."""
    wrapper = TrialHistoryWrapper(gym.make("CartPole-v1"), window=4)
    observation, _ = wrapper.reset(seed=0)
    observation, reward, *_ = wrapper.step(1)
    np.testing.assert_array_equal(observation["history_prev_action"][:2], [[0, 0], [0, 1]])
    np.testing.assert_array_equal(observation["history_prev_reward"][:2, 0], [0, reward])
    np.testing.assert_array_equal(observation["history_new_episode"][:2, 0], [1, 0])


@pytest.mark.parametrize(
    ("env_id", "window"), [("BayesGrid-v0", None), ("BayesGrid-v0", 7), ("BayesBandit-v0", 12)]
)
def test_vec_wrapper_equals_a_dummy_vec_env_of_wrapped_envs(env_id, window) -> None:
    """The batched envs under TrialHistoryVecWrapper give, step for step, the observations, rewards,
    dones and terminal observations of SB3's DummyVecEnv of TrialHistoryWrapper envs with the same
    seeds and actions, across two trial ends (also with a window shorter than the trial)."""
    n_envs, seed = 3, 5
    batched = TrialHistoryVecWrapper(bayes_envs.make_vec(env_id, n_envs, seed=seed, monitor=False), window)
    single = make_vec_env(
        lambda: TrialHistoryWrapper(gym.make(env_id), window=window), n_envs=n_envs, seed=seed
    )
    assert batched.observation_space == single.observation_space
    trial = batched.get_attr("episode_length")[0] * batched.get_attr("episodes_per_trial")[0]
    assert batched.window == (trial if window is None else window)
    expected, got = single.reset(), batched.reset()
    rng = np.random.default_rng(0)
    ends = 0
    for _ in range(2 * trial + 3):
        for key in expected:
            np.testing.assert_array_equal(got[key], expected[key], err_msg=key)
        actions = rng.integers(batched.action_space.n, size=n_envs)
        expected_step, got_step = single.step(actions), batched.step(actions)
        expected, got = expected_step[0], got_step[0]
        np.testing.assert_array_equal(got_step[1], expected_step[1])
        np.testing.assert_array_equal(got_step[2], expected_step[2])
        for i in np.flatnonzero(expected_step[2]):
            ends += 1
            terminal, expected_terminal = (
                got_step[3][i]["terminal_observation"],
                expected_step[3][i]["terminal_observation"],
            )
            assert set(terminal) == set(expected_terminal)
            for key in expected_terminal:
                np.testing.assert_array_equal(terminal[key], expected_terminal[key], err_msg=key)
            assert batched.observation_space.contains(terminal)
    assert ends == 2 * n_envs


def test_vec_wrapper_needs_rl2_dict_observations() -> None:
    with pytest.raises(TypeError, match="RL² Dict"):
        TrialHistoryVecWrapper(bayes_envs.make_vec("BayesGrid-v0", 2, rl2_inputs=False))
    with pytest.raises(ValueError, match="window"):
        TrialHistoryVecWrapper(bayes_envs.make_vec("BayesGrid-v0", 2), window=0)
