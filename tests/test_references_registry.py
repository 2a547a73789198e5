"""The env → references mapping (:mod:`bayes_envs.references.registry`): every reference reads the
constants of the env built with the run's keyword arguments, or refuses them.

The expected values are computed here independently of the reference module: the grid's
Bayes-optimal value by a naive closed-loop expectimax over (position, candidates not entered yet,
time) with the custom rewards, and the known-goal oracle's returns by hand.
"""

from __future__ import annotations

from functools import cache

import numpy as np
import pytest

import bayes_envs
from bayes_envs import GridTask
from bayes_envs.references import (
    GridBayesOptimal,
    exact_references,
    oracle_return_per_episode,
    reference_policies,
)

MOVES = ((0, 0), (0, 1), (1, 0), (0, -1), (-1, 0))


def goals_of(size: int) -> list[tuple[int, int]]:
    return [(x, y) for x in range(size) for y in range(size) if max(x, y) >= 2]


def expectimax_value(size: int, length: int, episodes: int, goal: float, step: float) -> float:
    """Bayes-optimal expected trial return, by exhaustive recursion over the exact posterior."""
    horizon = length * episodes

    def move(cell, action):
        dx, dy = MOVES[action]
        return (min(max(cell[0] + dx, 0), size - 1), min(max(cell[1] + dy, 0), size - 1))

    @cache
    def known(cell, t, target):
        if t == horizon:
            return 0.0
        best = -np.inf
        for action in range(5):
            entered = move(cell, action)
            following = (0, 0) if (t + 1) % length == 0 else entered
            best = max(best, (goal if entered == target else step) + known(following, t + 1, target))
        return best

    @cache
    def unknown(cell, t, remaining):
        if t == horizon or not remaining:
            return 0.0
        best = -np.inf
        for action in range(5):
            entered = move(cell, action)
            following = (0, 0) if (t + 1) % length == 0 else entered
            if entered in remaining:
                p = 1 / len(remaining)
                q = p * (goal + known(following, t + 1, entered)) + (1 - p) * (
                    step + unknown(following, t + 1, remaining - {entered})
                )
            else:
                q = step + unknown(following, t + 1, remaining)
            best = max(best, q)
        return best

    return unknown((0, 0), 0, frozenset(goals_of(size)))


def rollout_every_goal(policy, size: int, **env_kwargs) -> np.ndarray:
    """One trial of the env per goal cell; the inner-episode returns ``[G, E]`` it paid."""
    goals = goals_of(size)
    venv = bayes_envs.make_vec("BayesGrid-v0", len(goals), seed=0, monitor=False, size=size, **env_kwargs)
    observation = venv.reset()
    for index, goal in enumerate(goals):
        venv.env_method("set_task", GridTask(goal), indices=[index])
    observation = venv.batch.observation()
    trial_start = np.ones(len(goals), bool)
    returns: list[list[float]] = [[] for _ in goals]
    while True:
        actions = policy.act(observation, trial_start, venv.tasks)
        observation, _, dones, infos = venv.step(np.asarray(actions))
        trial_start = np.zeros(len(goals), bool)
        for row, info in zip(returns, infos, strict=True):
            if info["inner_done"]:
                row.append(info["inner_return"])
        if dones.all():
            return np.array(returns)


# (size, episode_length, episodes_per_trial, goal_reward, step_reward)
CUSTOM = [(3, 4, 2, 2.0, -1.0), (3, 3, 3, 5.0, 0.0), (4, 3, 2, 0.5, 0.25), (4, 5, 2, -0.5, -2.0)]


@pytest.mark.parametrize("config", CUSTOM)
def test_exact_grid_reference_is_the_bayes_optimal_value_for_the_env_rewards(config):
    size, length, episodes, goal, step = config
    kwargs = dict(
        size=size, episode_length=length, episodes_per_trial=episodes, goal_reward=goal, step_reward=step
    )
    exact = exact_references("BayesGrid-v0", kwargs)["Bayes-optimal (exact)"]
    assert len(exact) == episodes
    assert sum(exact) == pytest.approx(expectimax_value(size, length, episodes, goal, step), abs=1e-9)
    # The Bayes-optimal policy, told the rewards, earns exactly these per-episode values in the env.
    policy = GridBayesOptimal(size, length, episodes, goal_reward=goal, step_reward=step)
    returns = rollout_every_goal(policy, size, **{k: v for k, v in kwargs.items() if k != "size"})
    np.testing.assert_allclose(returns.mean(axis=0), exact, atol=1e-9)


def test_issue_14_custom_rewards_no_longer_give_the_default_values():
    default = exact_references("BayesGrid-v0", {})["Bayes-optimal (exact)"]
    custom = exact_references("BayesGrid-v0", {"goal_reward": 2.0, "step_reward": -1.0})
    custom = custom["Bayes-optimal (exact)"]
    # An episode of L = 15 steps with b on the goal returns -0.1·15 + 1.1·b by default and -15 + 3·b here.
    steps_on_goal = (np.array(default) + 1.5) / 1.1
    np.testing.assert_allclose(custom, -15 + 3 * steps_on_goal, atol=1e-9)
    assert custom != default


def test_grid_policies_read_size_length_and_rewards_from_the_env():
    kwargs = dict(size=4, episode_length=6, episodes_per_trial=3, goal_reward=3.0, step_reward=0.5)
    policies = reference_policies("BayesGrid-v0", kwargs, seed=1)
    assert set(policies) == {"oracle (known goal)", "posterior sampling", "uniform random"}
    oracle, sampling = policies["oracle (known goal)"], policies["posterior sampling"]
    assert (oracle.size, oracle.episode_length, oracle.episodes_per_trial) == (4, 6, 3)
    assert policies["uniform random"].action_space.n == 5
    env_kwargs = {k: v for k, v in kwargs.items() if k != "size"}
    by_hand = np.array([[0.5 * (x + y - 1) + 3.0 * (6 - (x + y) + 1)] * 3 for x, y in goals_of(4)])
    np.testing.assert_allclose(rollout_every_goal(oracle, 4, **env_kwargs), by_hand, atol=1e-9)
    assert oracle_return_per_episode(4, 6, goal_reward=3.0, step_reward=0.5) == pytest.approx(by_hand.mean())
    # Posterior sampling tells the goal from the (positive) step reward: once it has found the goal,
    # it goes straight back to it in every later episode.
    returns = rollout_every_goal(sampling, 4, **env_kwargs)
    found = returns > 0.5 * 6 + 1e-9
    assert found[:, 0].sum() >= 3
    for row, hand, hits in zip(returns, by_hand, found, strict=True):
        if hits.any():
            first = int(np.argmax(hits))
            np.testing.assert_allclose(row[first + 1 :], hand[first + 1 :], atol=1e-9)


def test_bandit_policies_read_arms_and_prior_from_the_env():
    policies = reference_policies("BayesBandit-v0", {"split": "test", "n_arms": 3, "horizon": 7})
    assert policies["oracle (known arms)"].n_arms == 3
    assert policies["greedy posterior mean"].alpha == 0.3  # the test split's prior, not the default
    assert (policies["Thompson sampling"].n_arms, policies["Thompson sampling"].alpha) == (3, 0.3)
    assert policies["uniform random"].action_space.n == 3
    assert reference_policies("BayesBandit-v0", {"alpha": 0.7})["Thompson sampling"].alpha == 0.7
    assert exact_references("BayesBandit-v0", {"n_arms": 3}) == {}


def test_other_envs_get_the_random_reference_only():
    policies = reference_policies("bayes_envs:FourierRegression-v0", {})
    assert list(policies) == ["uniform random"]
    assert policies["uniform random"].action_space.shape == (1,)
    assert exact_references("FourierRegression-v0", {}) == {}


def test_large_grids_have_policies_but_no_exact_value():
    assert exact_references("BayesGrid-v0", {"size": 6}) == {}
    assert reference_policies("BayesGrid-v0", {"size": 6})["oracle (known goal)"].size == 6


@pytest.mark.parametrize("rewards", [{"goal_reward": -1.0}, {"goal_reward": 0.5, "step_reward": 0.5}])
def test_rewards_the_references_cannot_handle_are_refused(rewards):
    with pytest.raises(ValueError, match="goal_reward > step_reward"):
        exact_references("BayesGrid-v0", rewards)
    with pytest.raises(ValueError, match="goal_reward > step_reward"):
        reference_policies("BayesGrid-v0", rewards)


def test_bad_constants_are_refused_by_the_env():
    with pytest.raises(TypeError):
        exact_references("BayesGrid-v0", {"sise": 5})
    with pytest.raises(TypeError):
        reference_policies("BayesBandit-v0", {"n_arms": 2.5})
    with pytest.raises(TypeError, match="env_kwargs"):
        exact_references("BayesGrid-v0", [("size", 5)])
