"""Property-based checks: every accepted input stays inside the declared spaces, every rejected one raises."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

import bayes_envs  # noqa: F401  (registers the envs)

SETTINGS = settings(max_examples=40, deadline=None)

# Each env's constructor arguments, drawn over valid and invalid values alike.
GRID_KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "size": st.integers(-2, 8),
        "episode_length": st.integers(-1, 20),
        "episodes_per_trial": st.integers(-1, 5),
        "split": st.sampled_from(["train", "test", "val", ""]),
        "goal_reward": st.floats(-5, 5) | st.just(float("inf")),
        "step_reward": st.floats(-5, 5) | st.just(float("nan")),
    },
)
BANDIT_KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "n_arms": st.integers(-1, 8),
        "alpha": st.none() | st.floats(-1, 5) | st.just(float("nan")),
        "horizon": st.integers(-1, 60),
        "split": st.sampled_from(["train", "test", "TEST"]),
    },
)
REGRESSION_KWARGS = st.fixed_dictionaries(
    {},
    optional={
        "n_points": st.integers(-1, 60),
        "episodes_per_trial": st.integers(-1, 3),
        "n_components": st.integers(-1, 5),
    },
)


def grid_valid(kw: dict) -> bool:
    return (
        kw.get("size", 5) >= 3
        and kw.get("episode_length", 15) >= 1
        and kw.get("episodes_per_trial", 4) >= 1
        and kw.get("split", "train") in ("train", "test")
        and np.isfinite(kw.get("goal_reward", 1.0))
        and np.isfinite(kw.get("step_reward", -0.1))
    )


def bandit_valid(kw: dict) -> bool:
    alpha = kw.get("alpha")
    return (
        kw.get("n_arms", 5) >= 2
        and kw.get("horizon", 50) >= 1
        and kw.get("split", "train") in ("train", "test")
        and (alpha is None or (np.isfinite(alpha) and alpha > 0))
    )


def regression_valid(kw: dict) -> bool:
    return (
        kw.get("n_points", 50) >= 1
        and kw.get("episodes_per_trial", 1) >= 1
        and kw.get("n_components", 3) >= 1
    )


def check_rollout(env_id: str, kwargs: dict, valid: bool, seed: int, n_steps: int) -> None:
    if not valid:
        try:
            gym.make(env_id, **kwargs)
        except (ValueError, TypeError):
            return
        raise AssertionError(f"{env_id}{kwargs} was accepted")
    env = gym.make(env_id, **kwargs)
    obs, _ = env.reset(seed=seed)
    assert env.observation_space.contains(obs)
    low, high = env.unwrapped.batch.reward_range
    for _ in range(n_steps):
        obs, reward, terminated, _, _info = env.step(env.action_space.sample())
        assert env.observation_space.contains(obs), obs
        assert np.isfinite(reward) and low - 1e-6 <= reward <= high + 1e-6
        if terminated:
            obs, _ = env.reset()


@SETTINGS
@given(kwargs=GRID_KWARGS, seed=st.integers(0, 2**31 - 1))
def test_grid_arguments(kwargs: dict, seed: int) -> None:
    check_rollout("BayesGrid-v0", kwargs, grid_valid(kwargs), seed, 80)


@SETTINGS
@given(kwargs=BANDIT_KWARGS, seed=st.integers(0, 2**31 - 1))
def test_bandit_arguments(kwargs: dict, seed: int) -> None:
    check_rollout("BayesBandit-v0", kwargs, bandit_valid(kwargs), seed, 80)


@SETTINGS
@given(kwargs=REGRESSION_KWARGS, seed=st.integers(0, 2**31 - 1))
def test_regression_arguments(kwargs: dict, seed: int) -> None:
    check_rollout("FourierRegression-v0", kwargs, regression_valid(kwargs), seed, 80)


@SETTINGS
@given(
    actions=st.lists(st.integers(-3, 8) | st.floats(-2, 7) | st.just(float("nan")), min_size=1, max_size=70)
)
def test_grid_action_sequences(actions: list) -> None:
    env = gym.make("BayesGrid-v0")
    env.reset(seed=0)
    for action in actions:
        # Only ints are actions of a discrete env: floats are refused even when integral (2.0).
        valid = isinstance(action, int) and 0 <= action < 5
        if not valid:
            try:
                env.step(action)
            except TypeError:
                assert isinstance(action, float)
                continue
            except ValueError:
                assert isinstance(action, int)
                continue
            raise AssertionError(f"action {action!r} was accepted")
        obs, reward, terminated, _, _ = env.step(action)
        assert env.observation_space.contains(obs) and reward in (1.0, np.float32(-0.1), -0.1)
        if terminated:
            env.reset()


@SETTINGS
@given(
    predictions=st.lists(st.floats(allow_nan=True, allow_infinity=True, width=32), min_size=1, max_size=60)
)
def test_regression_prediction_sequences(predictions: list) -> None:
    env = gym.make("FourierRegression-v0")
    env.reset(seed=1)
    bound = env.unwrapped.batch.y_bound
    for prediction in predictions:
        action = np.array([prediction], np.float32)
        if not (np.isfinite(prediction) and abs(prediction) <= np.float32(bound)):
            try:
                env.step(action)
            except ValueError:
                continue
            raise AssertionError(f"prediction {prediction!r} was accepted")
        obs, reward, terminated, _, info = env.step(action)
        assert np.isfinite(reward) and reward <= 0 and env.observation_space.contains(obs)
        assert reward == np.float32(-((np.float64(action[0]) - info["y"]) ** 2))
        if terminated:
            env.reset()
