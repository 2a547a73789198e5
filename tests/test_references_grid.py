"""Reference agents of the goal grid: oracle, posterior sampling and the exact Bayes-optimal search.

The grid dynamics are simulated here from the specification (independently of the env module), and
the Bayes-optimal DP is checked against brute force: enumeration of all open-loop search plans and a
naive closed-loop expectimax over (position, remaining candidates, time), both using known-goal values
from their own value iteration.
"""

from __future__ import annotations

import itertools
from dataclasses import dataclass
from functools import cache

import numpy as np
import pytest

from bayes_envs.references.grid import (
    GridBayesOptimal,
    GridOracle,
    GridPosteriorSampling,
    bayes_optimal_episode_returns,
    bayes_optimal_return,
    goal_candidates,
    oracle_return_per_episode,
    solve_grid_bayes_optimal,
)

# noop, up (y+1), right (x+1), down (y-1), left (x-1)
MOVES = np.array([[0, 0], [0, 1], [1, 0], [0, -1], [-1, 0]])
GOAL, STEP = 1.0, -0.1


@dataclass(frozen=True)
class Task:
    goal: tuple[int, int]


def all_goals(size: int) -> list[tuple[int, int]]:
    return [(x, y) for x in range(size) for y in range(size) if max(x, y) >= 2]


def rollout(policy, goals, size, length, episodes, prefix_actions=(), on_step=None) -> np.ndarray:
    """Run one trial per goal; return the inner-episode returns ``[B, episodes]``.

    ``prefix_actions[t]`` overrides every env's action at step ``t`` (the policy still observes).
    ``on_step(t, positions, actions)`` is called after each ``act``.
    """
    goals = np.asarray(goals)
    batch = len(goals)
    tasks = [Task((int(x), int(y))) for x, y in goals]
    positions = np.zeros((batch, 2), np.int64)
    prev_action = np.zeros((batch, 5), np.float32)
    prev_reward = np.zeros((batch, 1), np.float32)
    new_episode = np.ones((batch, 1), np.float32)
    trial_start = np.ones(batch, bool)
    returns = np.zeros((batch, episodes))
    for step in range(length * episodes):
        observation = {
            "obs": positions.astype(np.float32),
            "prev_action": prev_action.copy(),
            "prev_reward": prev_reward.copy(),
            "new_episode": new_episode.copy(),
        }
        actions = np.asarray(policy.act(observation, trial_start, tasks))
        assert actions.shape == (batch,) and ((actions >= 0) & (actions < 5)).all()
        if on_step is not None:
            on_step(step, positions, actions)
        if step < len(prefix_actions):
            actions = np.full(batch, prefix_actions[step])
        positions = np.clip(positions + MOVES[actions], 0, size - 1)
        reward = np.where((positions == goals).all(axis=1), GOAL, STEP)
        returns[:, step // length] += reward
        prev_action = np.eye(5, dtype=np.float32)[actions]
        prev_reward = reward[:, None].astype(np.float32)
        trial_start = np.zeros(batch, bool)
        end_of_episode = (step + 1) % length == 0
        new_episode = np.full((batch, 1), float(end_of_episode), np.float32)
        if end_of_episode:
            positions = np.zeros((batch, 2), np.int64)
    return returns


def known_goal_values(size, length, episodes, goal) -> np.ndarray:
    """Value iteration on the known-goal MDP: ``V[t, x, y]`` = optimal return from step t at (x, y)."""
    horizon = length * episodes
    values = np.zeros((horizon + 1, size, size))
    for step in range(horizon - 1, -1, -1):
        for x, y in itertools.product(range(size), repeat=2):
            best = -np.inf
            for dx, dy in MOVES:
                nx, ny = min(max(x + dx, 0), size - 1), min(max(y + dy, 0), size - 1)
                reward = GOAL if (nx, ny) == goal else STEP
                if (step + 1) % length == 0:
                    nx, ny = 0, 0
                best = max(best, reward + values[step + 1, nx, ny])
            values[step, x, y] = best
    return values


def brute_force_open_loop(size, length, episodes) -> float:
    """Max over all 5^T open-loop search plans of the mean over goals of "plan until found, then optimal"."""
    horizon = length * episodes
    plans = np.array(list(itertools.product(range(5), repeat=horizon)))  # [N, T]
    positions = np.zeros((len(plans), 2), np.int64)
    visits = np.zeros((len(plans), horizon, 2), np.int64)  # cell entered by each step
    for step in range(horizon):
        positions = np.clip(positions + MOVES[plans[:, step]], 0, size - 1)
        visits[:, step] = positions
        if (step + 1) % length == 0:
            positions = np.zeros_like(positions)
    total = np.zeros(len(plans))
    for goal in all_goals(size):
        values = known_goal_values(size, length, episodes, goal)
        hit = (visits == goal).all(axis=2)
        first = np.where(hit.any(axis=1), hit.argmax(axis=1), -1)  # 0-based step index
        after = np.array(
            [
                values[s + 1, 0, 0] if (s + 1) % length == 0 else values[s + 1, goal[0], goal[1]]
                for s in range(horizon)
            ]
        )
        found_return = STEP * first + GOAL + after[np.maximum(first, 0)]
        total += np.where(first >= 0, found_return, STEP * horizon)
    return float(total.max() / len(all_goals(size)))


def naive_bamdp_value(size, length, episodes):
    """The closed-loop Bayes-optimal recursion V(pos, S, t) over the exact posterior, written directly."""
    horizon = length * episodes
    found_values = {goal: known_goal_values(size, length, episodes, goal) for goal in all_goals(size)}

    @cache
    def value(position, remaining, step):
        if step == horizon:
            return 0.0
        best = -np.inf
        for dx, dy in MOVES:
            cell = (min(max(position[0] + dx, 0), size - 1), min(max(position[1] + dy, 0), size - 1))
            following = (0, 0) if (step + 1) % length == 0 else cell
            if cell in remaining:
                p_goal = 1 / len(remaining)
                rest = remaining - {cell}
                found = GOAL + found_values[cell][step + 1][following]
                q = p_goal * found + (1 - p_goal) * (STEP + value(following, rest, step + 1) if rest else 0.0)
            else:
                q = STEP + value(following, remaining, step + 1)
            best = max(best, q)
        return best

    return value


@pytest.fixture(scope="module")
def default_solution():
    return solve_grid_bayes_optimal()


def test_goal_candidates_exclude_the_start_neighbourhood():
    for size in (3, 4, 5, 7):
        cells = goal_candidates(size)
        assert cells.shape == (size * size - 4, 2)
        assert {tuple(c) for c in cells.tolist()} == set(all_goals(size))
    assert {(0, 0), (0, 1), (1, 0), (1, 1)}.isdisjoint(map(tuple, goal_candidates(5).tolist()))


@pytest.mark.parametrize("length", [15, 5])
def test_oracle_matches_the_closed_form_and_simulation(length):
    size, episodes = 5, 2
    goals = all_goals(size)
    returns = rollout(GridOracle(size, length, episodes), goals, size, length, episodes)
    for goal, row in zip(goals, returns, strict=True):
        d = sum(goal)
        expected = (length + 1 - d) * GOAL + STEP * (d - 1) if d <= length else STEP * length
        np.testing.assert_allclose(row, expected, atol=1e-9)
    np.testing.assert_allclose(returns.mean(), oracle_return_per_episode(size, length), atol=1e-9)
    if length == 15:
        assert oracle_return_per_episode() == pytest.approx(16.1 - 1.1 * 96 / 21)  # ≈ 11.07


@pytest.mark.parametrize("config", [(3, 3, 2), (3, 4, 2), (3, 2, 3), (4, 3, 2)])
def test_bayes_optimal_matches_open_loop_brute_force(config):
    assert bayes_optimal_return(*config) == pytest.approx(brute_force_open_loop(*config), abs=1e-9)


@pytest.mark.parametrize("config", [(3, 4, 2), (3, 6, 2), (4, 7, 2), (5, 4, 2), (4, 3, 3)])
def test_bayes_optimal_matches_naive_closed_loop_recursion(config):
    value = naive_bamdp_value(*config)
    expected = value((0, 0), frozenset(all_goals(config[0])), 0)
    assert bayes_optimal_return(*config) == pytest.approx(expected, abs=1e-9)


@pytest.mark.parametrize("config", [(4, 5, 3), (5, 6, 2)])
def test_bayes_optimal_policy_achieves_its_exact_value(config):
    size, length, episodes = config
    returns = rollout(GridBayesOptimal(*config), all_goals(size), size, length, episodes)
    np.testing.assert_allclose(returns.mean(axis=0), bayes_optimal_episode_returns(*config), atol=1e-9)
    assert returns.sum(axis=1).mean() == pytest.approx(bayes_optimal_return(*config), abs=1e-9)


def test_off_plan_action_values_and_continuation_are_exact():
    """From states the plan never visits, the look-ahead values and the policy's continuation are exact."""
    size, length, episodes = 4, 4, 2
    value = naive_bamdp_value(size, length, episodes)
    policy = GridBayesOptimal(size, length, episodes)
    search = policy._search
    candidates = [tuple(c) for c in goal_candidates(size).tolist()]
    rng = np.random.default_rng(0)
    for _ in range(40):
        step = int(rng.integers(0, length * episodes))
        cell = (0, 0) if step % length == 0 else tuple(int(v) for v in rng.integers(0, size, 2))
        remaining = {c for c in candidates if rng.random() < 0.6 and c != cell} or {candidates[-1]}
        mask = sum(1 << candidates.index(c) for c in remaining)
        q_values = search.action_values(cell[0] * size + cell[1], mask, step) / 10
        # Full-trial accounting over the remaining goals: their past steps paid STEP each.
        expected = len(remaining) * (value(cell, frozenset(remaining), step) + STEP * step)
        assert q_values.max() == pytest.approx(expected, abs=1e-9)

    # Drive the policy off its plan with a fixed prefix, then let it continue: the mean return from
    # there over the goals the prefix did not enter is the closed-loop optimum at that state.
    prefix = [1, 1, 1, 2, 2, 2, 3]
    goals = all_goals(size)
    returns = rollout(policy, goals, size, length, episodes, prefix_actions=prefix)
    cell, entered = np.zeros(2, np.int64), set()
    for step, action in enumerate(prefix):
        cell = np.clip(cell + MOVES[action], 0, size - 1)
        entered.add(tuple(int(v) for v in cell))
        if (step + 1) % length == 0:
            cell = np.zeros(2, np.int64)
    unseen = [i for i, g in enumerate(goals) if g not in entered]
    prefix_return = STEP * len(prefix)
    continuation = returns[unseen].sum(axis=1) - prefix_return
    state_value = value(tuple(int(v) for v in cell), frozenset(goals[i] for i in unseen), len(prefix))
    assert continuation.mean() == pytest.approx(state_value, abs=1e-9)


def test_default_config_ordering(default_solution):
    """Oracle ≥ Bayes-optimal ≥ posterior sampling ≥ random, per the default 5×5, 15 × 4 config."""
    size, length, episodes = 5, 15, 4
    goals = all_goals(size)
    bayes = rollout(GridBayesOptimal(), goals, size, length, episodes)
    np.testing.assert_allclose(bayes.mean(axis=0), default_solution.episode_returns, atol=1e-9)
    oracle = oracle_return_per_episode(size, length)
    assert (default_solution.episode_returns <= oracle + 1e-9).all()
    assert default_solution.expected_return <= episodes * oracle
    # The search plan enters every candidate by the end of the second inner episode.
    assert (default_solution.first_visit_steps > 0).all()

    many_goals = goals * 20  # 420 trials, every goal equally often
    sampling = rollout(GridPosteriorSampling(seed=1), many_goals, size, length, episodes).sum(axis=1)

    class Random:
        rng = np.random.default_rng(2)

        def act(self, observation, trial_start, tasks):
            return self.rng.integers(0, 5, len(tasks))

    random = rollout(Random(), many_goals, size, length, episodes).sum(axis=1)
    sampling_ci = 3 * sampling.std() / np.sqrt(len(sampling))
    assert sampling.mean() + sampling_ci < default_solution.expected_return
    assert random.mean() + 3 * random.std() / np.sqrt(len(random)) < sampling.mean() - sampling_ci


def test_posterior_sampling_belief_targets_and_exploitation():
    size, length, episodes = 5, 15, 4
    goals = np.array(all_goals(size) * 10)
    candidates = goal_candidates(size)
    policy = GridPosteriorSampling(seed=3)
    entered = np.zeros((len(goals), len(candidates)), bool)
    goal_index = np.array([candidates.tolist().index(list(g)) for g in goals])

    def check(step, positions, actions):
        # The tracked belief is the exact posterior: candidates not entered yet, or the goal once entered.
        found = entered[np.arange(len(goals)), goal_index]
        np.testing.assert_array_equal(policy.belief.found, np.where(found, goal_index, -1))
        np.testing.assert_array_equal(policy.belief.remaining[~found], ~entered[~found])
        # The walked-to target is never a ruled-out cell.
        target = policy.target
        assert (target >= 0).all() and policy.belief.remaining[np.arange(len(goals)), target].all()
        nxt = np.clip(positions + MOVES[actions], 0, size - 1)
        hit = (nxt[:, None, :] == candidates[None]).all(axis=2)
        entered[hit] = True

    returns = rollout(policy, goals, size, length, episodes, on_step=check)
    # Once the goal was found, every later inner episode earns exactly the oracle's return.
    found_episode = np.full(len(goals), episodes)
    oracle = (length + 1 - goals.sum(axis=1)) * GOAL + STEP * (goals.sum(axis=1) - 1)
    for episode in range(episodes):
        finds = (returns[:, episode] > STEP * length + 1e-9) & (found_episode == episodes)
        found_episode[finds] = episode
    later = np.arange(episodes)[None, :] > found_episode[:, None]
    assert later.any()
    oracle_per_episode = np.broadcast_to(oracle[:, None], returns.shape)
    np.testing.assert_allclose(returns[later], oracle_per_episode[later], atol=1e-9)


def test_posterior_sampling_first_target_is_uniform():
    policy = GridPosteriorSampling(seed=4)
    batch = 21 * 400
    observation = {
        "obs": np.zeros((batch, 2), np.float32),
        "prev_action": np.zeros((batch, 5), np.float32),
        "prev_reward": np.zeros((batch, 1), np.float32),
        "new_episode": np.ones((batch, 1), np.float32),
    }
    policy.act(observation, np.ones(batch, bool), [Task((4, 4))] * batch)
    counts = np.bincount(policy.target, minlength=21)
    sd = np.sqrt(batch * (1 / 21) * (20 / 21))
    assert np.abs(counts - 400).max() < 5 * sd


@pytest.mark.parametrize("cls", [GridOracle, GridPosteriorSampling, GridBayesOptimal])
@pytest.mark.parametrize(
    ("kwargs", "name"),
    [
        ({"size": 2}, "size"),
        ({"episode_length": 0}, "episode_length"),
        ({"episodes_per_trial": 0}, "episodes_per_trial"),
    ],
)
def test_constructor_validation(cls, kwargs, name):
    with pytest.raises(ValueError, match=name):
        cls(**kwargs)
    with pytest.raises(TypeError, match=name):
        cls(**{name: 3.0})


def test_function_validation_and_size_limit():
    with pytest.raises(ValueError, match="size"):
        bayes_optimal_return(size=2)
    with pytest.raises(ValueError, match="episode_length"):
        oracle_return_per_episode(5, 0)
    with pytest.raises(ValueError, match="size must be <= 5"):
        solve_grid_bayes_optimal(size=6, use_disk_cache=False)
    GridPosteriorSampling(size=6)  # the sampling agent has no table to build


def test_inconsistent_inputs_are_rejected():
    policy = GridBayesOptimal(4, 3, 2)
    observation = {
        "obs": np.zeros((2, 2), np.float32),
        "prev_action": np.zeros((2, 5), np.float32),
        "prev_reward": np.zeros((2, 1), np.float32),
        "new_episode": np.ones((2, 1), np.float32),
    }
    tasks = [Task((3, 3))] * 2
    policy.act(observation, np.ones(2, bool), tasks)
    with pytest.raises(ValueError, match="batch size"):
        policy.act({k: np.concatenate([v, v]) for k, v in observation.items()}, np.zeros(4, bool), tasks * 2)
    moved_up = dict(
        observation,
        prev_action=np.eye(5, dtype=np.float32)[[1, 1]],
        prev_reward=np.full((2, 1), -0.1, np.float32),
    )
    with pytest.raises(ValueError, match="new_episode"):
        policy.act(moved_up, np.zeros(2, bool), tasks)  # claims a new inner episode after one step
    with pytest.raises(ValueError, match="dynamics"):  # up from (0, 0) cannot reach (1, 1)
        policy.act(
            dict(moved_up, new_episode=np.zeros((2, 1), np.float32), obs=np.ones((2, 2), np.float32)),
            np.zeros(2, bool),
            tasks,
        )
