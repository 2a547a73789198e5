"""The meta-test protocol: fixed seeded tasks, per-inner-episode returns, regret, JSON."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import bayes_envs
from bayes_envs.evaluation import evaluate, mean_ci
from bayes_envs.references import BanditOracle, GridOracle, UniformRandomPolicy


def test_grid_oracle_returns_match_the_closed_form_per_task() -> None:
    result = evaluate(GridOracle(), "BayesGrid-v0", n_tasks=40, seed=3)
    distances = np.array([sum(task.goal) for task in result.tasks])
    expected = 16 - distances - 0.1 * (distances - 1)
    np.testing.assert_allclose(result.episode_returns, np.repeat(expected[:, None], 4, axis=1), atol=1e-9)
    assert result.step_rewards.shape == (40, 60)
    np.testing.assert_allclose(result.step_rewards.sum(1), result.trial_returns, atol=1e-5)


def test_tasks_are_the_first_tasks_of_envs_seeded_seed_plus_i() -> None:
    result = evaluate(GridOracle(), "BayesGrid-v0", n_tasks=5, seed=11)
    for i, task in enumerate(result.tasks):
        _, info = gym.make("BayesGrid-v0").reset(seed=11 + i)
        assert info["task"] == task


def test_bandit_regret_curves() -> None:
    oracle = evaluate(BanditOracle(), "BayesBandit-v0", n_tasks=20, seed=0)
    np.testing.assert_array_equal(oracle.cumulative_regret, 0.0)
    policy = UniformRandomPolicy(gym.make("BayesBandit-v0").action_space, seed=1)
    result = evaluate(policy, "BayesBandit-v0", n_tasks=20, seed=0, split="test")
    # recompute the expected regret of the same pulls by replaying the actions on single envs
    policy = UniformRandomPolicy(gym.make("BayesBandit-v0").action_space, seed=1)
    venv = bayes_envs.make_vec("BayesBandit-v0", 20, seed=0, monitor=False, split="test")
    obs, regrets = venv.reset(), []
    for t in range(50):
        actions = policy.act(obs, np.full(20, t == 0), venv.get_attr("task"))
        obs, _, _, infos = venv.step(actions)
        regrets.append([info["regret"] for info in infos])
    np.testing.assert_allclose(result.cumulative_regret, np.cumsum(np.array(regrets).T, axis=1))
    summary = result.summary()
    assert summary["final_regret_mean"] == pytest.approx(result.cumulative_regret[:, -1].mean())
    json.loads(result.to_json())


class ScriptedStatefulPolicy:
    """A ``predict`` policy whose action is ``script[k]``, ``k`` the steps since its recurrent state
    was last reset: its state is the per-env step counter, reset where ``episode_start`` is true
    (and when ``state`` is ``None``). It records the ``episode_start`` flags it receives."""

    def __init__(self, script: np.ndarray) -> None:
        self.script = script
        self.starts: list[np.ndarray] = []

    def predict(self, observation, state=None, episode_start=None, deterministic=False):
        n = len(observation["obs"])
        starts = np.asarray(episode_start, bool).reshape(n)
        self.starts.append(starts.copy())
        counts = np.zeros(n, np.int64) if state is None else np.where(starts, 0, state[0])
        return self.script[np.minimum(counts, len(self.script) - 1)], (counts + 1,)


def replay(script_of_step, n_tasks: int, seed: int) -> np.ndarray:
    """Inner-episode returns ``[n, E]`` of the grid trials of envs seeded ``seed + i`` under an
    open-loop action sequence, stepped here without :func:`evaluate`."""
    venv = bayes_envs.make_vec("BayesGrid-v0", n_tasks, seed=seed, monitor=False)
    venv.reset()
    returns = np.zeros((n_tasks, 4))
    for t in range(60):
        _, _, _, infos = venv.step(np.full(n_tasks, script_of_step(t)))
        for i, info in enumerate(infos):
            if info["inner_done"]:
                returns[i, info["inner_episode"]] = info["inner_return"]
    return returns


def test_predict_policies_get_their_recurrent_state_back_and_a_reset_only_at_trial_start() -> None:
    script = np.random.default_rng(5).integers(0, 5, 60)
    policy = ScriptedStatefulPolicy(script)
    result = evaluate(policy, "BayesGrid-v0", n_tasks=6, seed=2, n_envs=3)
    # State carried from step to step, reset at the trial start only: the script, step by step.
    np.testing.assert_allclose(result.episode_returns, replay(lambda t: script[t], 6, 2), atol=1e-9)
    # What a broken evaluation would give (state dropped, or reset every step): script[0] throughout.
    assert not np.allclose(result.episode_returns, replay(lambda t: script[0], 6, 2))
    starts = np.array(policy.starts)  # [2 chunks x 60 steps, 3 envs]
    assert starts.shape == (120, 3)
    assert starts[[0, 60]].all() and not starts[1:60].any() and not starts[61:].any()


class RecordingModel:
    """An SB3 model whose ``predict`` records the actions it returns."""

    def __init__(self, model) -> None:
        self.model, self.policy, self.actions = model, model.policy, []

    def predict(self, *args, **kwargs):
        action, state = self.model.predict(*args, **kwargs)
        self.actions.append(np.array(action))
        return action, state


def test_sb3_models_are_evaluated_with_their_recurrent_state() -> None:
    from sb3_contrib import RecurrentPPO

    from bayes_agents import RL2Policy

    model = RecurrentPPO(
        RL2Policy,
        bayes_envs.make_vec("BayesGrid-v0", 2, seed=0),
        policy_kwargs={"hidden_size": 8, "latent_dim": 4, "embed_sizes": ()},
        n_steps=8,
        seed=0,
    )
    recorder = RecordingModel(model)
    first = evaluate(recorder, "BayesGrid-v0", n_tasks=6, seed=2)
    second = evaluate(model, "BayesGrid-v0", n_tasks=6, seed=2)
    np.testing.assert_array_equal(first.episode_returns, second.episode_returns)
    assert np.isfinite(first.episode_returns).all() and first.episode_returns.shape == (6, 4)

    def manual_actions(carry_state: bool) -> np.ndarray:
        """The same trials stepped here with model.predict, its state carried (reset at the trial
        start) or dropped every step."""
        venv = bayes_envs.make_vec("BayesGrid-v0", 6, seed=2, monitor=False)
        observation, state, start, actions = venv.reset(), None, np.ones(6, bool), []
        for _ in range(60):
            action, next_state = model.predict(
                observation, state=state, episode_start=start, deterministic=True
            )
            state = next_state if carry_state else None
            actions.append(action)
            observation, _, _, _ = venv.step(action)
            start = np.zeros(6, bool)
        return np.array(actions)

    np.testing.assert_array_equal(np.array(recorder.actions), manual_actions(carry_state=True))
    # This model's actions do depend on its state, so the check above would see a dropped state.
    assert (manual_actions(carry_state=False) != manual_actions(carry_state=True)).mean() > 0.2


def test_mean_ci_is_the_normal_interval() -> None:
    values = np.array([1.0, 2.0, 3.0, 4.0])
    mean, half_width = mean_ci(values)
    assert mean == 2.5 and half_width == pytest.approx(1.959964 * np.std(values, ddof=1) / 2)


def test_bad_arguments() -> None:
    with pytest.raises(ValueError, match="n_tasks"):
        evaluate(GridOracle(), "BayesGrid-v0", n_tasks=0)
    with pytest.raises(TypeError, match="predict"):
        evaluate(object(), "BayesGrid-v0", n_tasks=2)
    with pytest.raises(gym.error.Error):
        evaluate(GridOracle(), "NoSuchEnv-v0", n_tasks=2)


def test_training_defaults_cover_the_core_envs_and_reject_others() -> None:
    from bayes_agents.defaults import belief_settings, ppo_settings

    for env_id in ("BayesGrid-v0", "BayesBandit-v0"):
        settings = ppo_settings(env_id)
        settings["n_steps"] = -1  # a fresh dict each call
        assert ppo_settings(env_id)["n_steps"] > 0 and belief_settings(env_id)["hidden_size"] > 0
    with pytest.raises(ValueError, match="BayesGrid-v0"):
        ppo_settings("CartPole-v1")
