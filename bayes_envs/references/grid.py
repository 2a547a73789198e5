"""Reference agents for the goal grid ``BayesGrid-v0``: known-goal oracle, posterior sampling, Bayes-optimal.

Semantics (the env in :mod:`bayes_envs.grid` implements the same): a ``size``×``size`` grid of
cells ``(x, y)``, start ``(0, 0)``; actions 0 noop, 1 up (y+1), 2 right (x+1), 3 down (y−1),
4 left (x−1), clipped at the border; the goal is uniform over :func:`goal_candidates`; after each
move the reward is ``goal_reward`` (+1) on the goal (repeatable) and ``step_reward`` (−0.1)
elsewhere; a trial holds ``episodes_per_trial`` inner episodes of ``episode_length`` steps, each
starting at ``(0, 0)``.

**Other rewards.** Every reference here needs ``goal_reward > step_reward`` (else the goal is to be
avoided, and staying on the start, which is never the goal, is optimal). A trial of ``T`` steps
with ``B`` of them spent on the goal returns ``step_reward·T + (goal_reward − step_reward)·B``, so
for any such pair of rewards the optimal plans are the ones maximising the expected number of steps
on the goal: the plan solved once with the default rewards is optimal for all of them, and the
expected returns follow from its per-episode goal steps (:func:`bayes_optimal_episode_returns`).

**Why the Bayes-optimal policy is a search plan.** The dynamics are deterministic and, until the
goal is entered, every reward is −0.1, so before the goal is found the observations are a function
of the agent's own actions: the belief is "uniform over the candidates not entered yet" and the only
branching event is finding the goal, after which the known-goal oracle is optimal. The Bayes-optimal
policy is therefore an open-loop *search plan* ``a_1..a_T`` (followed while the goal is unknown)
maximising ``(1/G) Σ_g R_g(τ_g)``, where ``τ_g`` is the trial step at which the plan first enters
cell ``g`` and ``R_g(τ)`` the trial return of "search until step τ, then oracle"
(−0.1 per step before τ, +1 for every remaining step of that inner episode, the oracle return in
each later one; −0.1·T if the plan never enters ``g``). This is solved exactly by
:func:`solve_grid_bayes_optimal` (see there for the algorithm, state count and time).

All returns are computed in integer tenths of a reward unit (+1 → 10, −0.1 → −1), so the dynamic
programme is exact and its ties are exact.
"""

from __future__ import annotations

import os
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from bayes_envs.core import check_finite_float, check_int
from bayes_envs.grid import MOVES as ACTION_MOVES
from bayes_envs.grid import goal_candidates
from bayes_envs.references.base import ReferencePolicy

NOOP, UP, RIGHT, DOWN, LEFT = range(5)
GOAL_REWARD = 1.0
STEP_REWARD = -0.1
#: The same rewards in integer tenths, the unit of every exact computation in this module.
_GOAL_TENTHS = 10
_STEP_TENTHS = -1
#: The exact Bayes-optimal DP keeps a table over all 2^G subsets of candidates (G = 21 for size 5).
MAX_EXACT_CANDIDATES = 21
#: Bump when the DP changes, so stale disk caches are not loaded.
_CACHE_VERSION = 1


def move_positions(positions: np.ndarray, actions: np.ndarray, size: int) -> np.ndarray:
    """Apply grid moves, clipped at the border.

    :param positions: ``[..., 2]`` integer ``(x, y)``.
    :param actions: ``[...]`` integer actions in ``0..4``.
    :return: ``[..., 2]`` int64 positions after the moves.
    """
    return np.clip(np.asarray(positions, np.int64) + ACTION_MOVES[np.asarray(actions, np.int64)], 0, size - 1)


def shortest_path_actions(
    positions: np.ndarray, targets: np.ndarray, rng: np.random.Generator | None = None
) -> np.ndarray:
    """One step of a shortest (Manhattan) path from each position to its target; noop on the target.

    :param positions: ``[B, 2]`` integer ``(x, y)``.
    :param targets: ``[B, 2]`` integer ``(x, y)``.
    :param rng: where both axes need a move, ``None`` moves along x first; a generator picks the
        axis uniformly at random (a uniformly random monotone path, step by step).
    :return: ``[B]`` int64 actions.
    """
    delta = np.asarray(targets, np.int64) - np.asarray(positions, np.int64)
    x_action = np.select([delta[:, 0] > 0, delta[:, 0] < 0], [RIGHT, LEFT], NOOP)
    y_action = np.select([delta[:, 1] > 0, delta[:, 1] < 0], [UP, DOWN], NOOP)
    prefer_x = np.ones(len(delta), bool) if rng is None else rng.random(len(delta)) < 0.5
    both = (x_action != NOOP) & (y_action != NOOP)
    return np.where(both, np.where(prefer_x, x_action, y_action), x_action + y_action).astype(np.int64)


def _check_rewards(goal_reward: Any, step_reward: Any) -> tuple[float, float]:
    """The rewards as floats; ``ValueError`` unless both are finite and ``goal_reward > step_reward``."""
    goal_reward = check_finite_float("goal_reward", goal_reward)
    step_reward = check_finite_float("step_reward", step_reward)
    if not goal_reward > step_reward:
        raise ValueError(
            f"the grid references need goal_reward > step_reward, got goal_reward={goal_reward} and "
            f"step_reward={step_reward} (the oracle, posterior sampling and Bayes-optimal search all walk "
            "to the goal, which is only right when the goal pays more than any other cell)"
        )
    return goal_reward, step_reward


def _goal_steps_per_episode(
    distance: int, first_visit_step: int, episode_length: int, episodes_per_trial: int
) -> list[int]:
    """Steps on the goal in each inner episode under "search until trial step τ, then oracle".

    Same arguments as :func:`_search_episode_returns_tenths`; an episode's return is
    ``step_reward·L + (goal_reward − step_reward)·steps_on_goal``.
    """
    oracle = max(episode_length - distance + 1, 0)
    if first_visit_step == 0:
        return [0] * episodes_per_trial
    episode = (first_visit_step - 1) // episode_length
    step_in_episode = first_visit_step - episode * episode_length
    return [
        0 if inner < episode else episode_length - step_in_episode + 1 if inner == episode else oracle
        for inner in range(episodes_per_trial)
    ]


def _check_config(size: Any, episode_length: Any, episodes_per_trial: Any) -> tuple[int, int, int]:
    return (
        check_int("size", size, 3),
        check_int("episode_length", episode_length, 1),
        check_int("episodes_per_trial", episodes_per_trial, 1),
    )


def _oracle_episode_return_tenths(distance: int, episode_length: int) -> int:
    """Inner-episode return (tenths) of walking straight to a goal ``distance`` ≥ 1 away, then staying."""
    if distance > episode_length:
        return _STEP_TENTHS * episode_length
    return _STEP_TENTHS * (distance - 1) + _GOAL_TENTHS * (episode_length - distance + 1)


def _search_episode_returns_tenths(
    distance: int, first_visit_step: int, episode_length: int, episodes_per_trial: int
) -> list[int]:
    """Per-inner-episode returns (tenths) of "search until the goal is entered at trial step τ, then oracle".

    :param distance: Manhattan distance of the goal from the start.
    :param first_visit_step: τ in ``1..T`` (1-based trial step of the move entering the goal), 0 = never.
    """
    never = first_visit_step == 0
    episode = episodes_per_trial if never else (first_visit_step - 1) // episode_length
    step_in_episode = first_visit_step - episode * episode_length
    oracle = _oracle_episode_return_tenths(distance, episode_length)
    returns = []
    for inner in range(episodes_per_trial):
        if inner < episode:
            returns.append(_STEP_TENTHS * episode_length)
        elif inner == episode:
            returns.append(
                _STEP_TENTHS * (step_in_episode - 1) + _GOAL_TENTHS * (episode_length - step_in_episode + 1)
            )
        else:
            returns.append(oracle)
    return returns


def oracle_episode_return(
    distance: int,
    episode_length: int = 15,
    *,
    goal_reward: float = GOAL_REWARD,
    step_reward: float = STEP_REWARD,
) -> float:
    """Inner-episode return of the known-goal oracle for a goal at Manhattan ``distance`` ≥ 1 from the start.

    ``16 − d − 0.1(d − 1)`` for the default ``episode_length=15`` and rewards (d ≤ 15); in general
    ``step_reward·(d − 1) + goal_reward·(L − d + 1)`` for ``d ≤ L``, else ``step_reward·L``.
    """
    distance = check_int("distance", distance, 1)
    episode_length = check_int("episode_length", episode_length, 1)
    goal_reward, step_reward = _check_rewards(goal_reward, step_reward)
    if (goal_reward, step_reward) == (GOAL_REWARD, STEP_REWARD):
        return _oracle_episode_return_tenths(distance, episode_length) / 10
    on_goal = max(episode_length - distance + 1, 0)
    return step_reward * (episode_length - on_goal) + goal_reward * on_goal


def oracle_return_per_episode(
    size: int = 5,
    episode_length: int = 15,
    *,
    goal_reward: float = GOAL_REWARD,
    step_reward: float = STEP_REWARD,
) -> float:
    """Expected inner-episode return of the known-goal oracle over the uniform goal (≈ 11.07 by default)."""
    size, episode_length, _ = _check_config(size, episode_length, 1)
    goal_reward, step_reward = _check_rewards(goal_reward, step_reward)
    distances = goal_candidates(size).sum(axis=1)
    if (goal_reward, step_reward) == (GOAL_REWARD, STEP_REWARD):
        return float(np.mean([_oracle_episode_return_tenths(int(d), episode_length) for d in distances]) / 10)
    on_goal = np.maximum(episode_length - distances + 1, 0)
    return float(np.mean(step_reward * episode_length + (goal_reward - step_reward) * on_goal))


# --------------------------------------------------------------------------------------------
# Belief tracking shared by the policies
# --------------------------------------------------------------------------------------------


def _read_observation(observation: dict[str, np.ndarray], size: int) -> tuple[np.ndarray, ...]:
    """Validate the batched RL² observation; return positions [B, 2], prev actions [B] (−1 if none),
    prev rewards [B] and new-episode flags [B]."""
    if not isinstance(observation, dict):
        raise TypeError(f"observation must be the RL²-input dict, got {type(observation).__name__}")
    missing = {"obs", "prev_action", "prev_reward", "new_episode"} - set(observation)
    if missing:
        raise ValueError(f"observation is missing the keys {sorted(missing)}")
    raw_positions = np.asarray(observation["obs"], np.float64)
    if raw_positions.ndim != 2 or raw_positions.shape[1] != 2:
        raise ValueError(f"observation['obs'] must be [B, 2] positions, got shape {raw_positions.shape}")
    positions = np.rint(raw_positions).astype(np.int64)
    if (np.abs(positions - raw_positions) > 1e-4).any() or (positions < 0).any() or (positions >= size).any():
        raise ValueError(f"observation['obs'] must hold integer cells of a {size}x{size} grid")
    batch = len(positions)
    prev_action = np.asarray(observation["prev_action"], np.float64).reshape(batch, -1)
    if prev_action.shape[1] != len(ACTION_MOVES):
        raise ValueError(f"observation['prev_action'] must be [B, {len(ACTION_MOVES)}] one-hot")
    prev_action_index = np.where(prev_action.max(axis=1) > 0.5, prev_action.argmax(axis=1), -1)
    prev_reward = np.asarray(observation["prev_reward"], np.float64).reshape(batch)
    new_episode = np.asarray(observation["new_episode"], np.float64).reshape(batch) > 0.5
    return positions, prev_action_index, prev_reward, new_episode


class _GridBelief:
    """Exact per-env posterior over the goal, batched: the candidates not entered yet, or the found goal.

    The reward of a move belongs to the cell the move entered, computed from the previous position
    and the observed previous action (at an inner-episode start the observed position is already the
    start again, so it cannot be read off the observation).
    """

    def __init__(self, size: int, goal_reward: float = GOAL_REWARD, step_reward: float = STEP_REWARD) -> None:
        self.size = size
        #: a previous reward above this paid the goal (halfway between the two rewards).
        self.threshold = (goal_reward + step_reward) / 2
        self.candidates = goal_candidates(size)
        self.candidate_index = np.full((size, size), -1, np.int64)
        self.candidate_index[self.candidates[:, 0], self.candidates[:, 1]] = np.arange(len(self.candidates))
        self.positions: np.ndarray | None = None
        #: [B, G] bool: candidate not ruled out yet.
        self.remaining = np.zeros((0, len(self.candidates)), bool)
        #: [B] candidate index of the found goal, −1 while unknown.
        self.found = np.zeros(0, np.int64)
        #: [B] steps taken in the current trial.
        self.steps = np.zeros(0, np.int64)

    def update(self, observation: dict[str, np.ndarray], trial_start: np.ndarray) -> tuple[np.ndarray, ...]:
        """Fold in the last transition; return the current positions [B, 2] and new-episode flags [B]."""
        positions, prev_action, prev_reward, new_episode = _read_observation(observation, self.size)
        batch = len(positions)
        trial_start = np.asarray(trial_start, bool).reshape(-1)
        if trial_start.shape != (batch,):
            raise ValueError(f"trial_start must be [B] = [{batch}] bools, got shape {trial_start.shape}")
        if self.positions is None or len(self.positions) != batch:
            if not trial_start.all():
                raise ValueError("the batch size changed without trial_start being true for every env")
            self.remaining = np.ones((batch, len(self.candidates)), bool)
            self.found = np.full(batch, -1, np.int64)
            self.steps = np.zeros(batch, np.int64)
        if (positions[trial_start] != 0).any():
            raise ValueError("a trial must start at (0, 0)")
        rows = np.flatnonzero(~trial_start)
        if len(rows):
            if (prev_action[rows] < 0).any():
                raise ValueError("observation['prev_action'] must be one-hot after the first step of a trial")
            entered = move_positions(self.positions[rows], prev_action[rows], self.size)
            expected = np.where(new_episode[rows, None], 0, entered)
            if (expected != positions[rows]).any():
                raise ValueError(
                    "observed positions do not follow the grid dynamics (wrong size, or new_episode flags "
                    "that do not match the env's inner episodes)"
                )
            candidate = self.candidate_index[entered[:, 0], entered[:, 1]]
            paid = prev_reward[rows] > self.threshold
            if (paid & (candidate < 0)).any():
                raise ValueError(
                    "the goal reward was observed on a cell that cannot be the goal (are the policy's "
                    "goal_reward and step_reward the env's?)"
                )
            found_now = paid & (self.found[rows] < 0)
            self.found[rows[found_now]] = candidate[found_now]
            ruled_out = ~paid & (candidate >= 0)
            self.remaining[rows[ruled_out], candidate[ruled_out]] = False
            self.steps[rows] += 1
        self.remaining[trial_start] = True
        self.found[trial_start] = -1
        self.steps[trial_start] = 0
        self.positions = positions
        return positions, new_episode


class _GridReference(ReferencePolicy):
    """A grid reference policy's checked settings: the env's size, episode length, inner episodes
    per trial and rewards."""

    def _set_grid(
        self, size: Any, episode_length: Any, episodes_per_trial: Any, goal_reward: Any, step_reward: Any
    ) -> None:
        self.size, self.episode_length, self.episodes_per_trial = _check_config(
            size, episode_length, episodes_per_trial
        )
        self.goal_reward, self.step_reward = _check_rewards(goal_reward, step_reward)


class GridOracle(_GridReference):
    """Known-goal oracle (privileged): a shortest path to ``tasks[i].goal``, then noop on it.

    Its expected return per inner episode is :func:`oracle_return_per_episode`.
    """

    privileged = True

    def __init__(
        self,
        size: int = 5,
        episode_length: int = 15,
        episodes_per_trial: int = 4,
        *,
        goal_reward: float = GOAL_REWARD,
        step_reward: float = STEP_REWARD,
    ) -> None:
        self._set_grid(size, episode_length, episodes_per_trial, goal_reward, step_reward)

    def act(
        self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]
    ) -> np.ndarray:
        positions = _read_observation(observation, self.size)[0]
        if len(tasks) != len(positions):
            raise ValueError(f"tasks must hold one task per env ({len(positions)}), got {len(tasks)}")
        goals = np.array([task.goal for task in tasks], np.int64).reshape(len(positions), 2)
        return shortest_path_actions(positions, goals)


class GridPosteriorSampling(_GridReference):
    """Posterior sampling: walk to a goal sampled from the exact posterior, resample when it is ruled out.

    The posterior is uniform over the candidates not entered yet (every cell a walk passes through is
    ruled out too), or the goal once it has been found, to which the policy then goes straight back in
    every later inner episode. The sampled goal is kept across inner-episode resets. Where a shortest
    path can move along either axis, the axis is drawn uniformly.

    :param seed: seed of the policy's own generator (goal samples and path choices).
    :param goal_reward, step_reward: the env's rewards (read to tell when the goal was entered).
    """

    def __init__(
        self,
        seed: int | None = None,
        size: int = 5,
        episode_length: int = 15,
        episodes_per_trial: int = 4,
        *,
        goal_reward: float = GOAL_REWARD,
        step_reward: float = STEP_REWARD,
    ) -> None:
        self._set_grid(size, episode_length, episodes_per_trial, goal_reward, step_reward)
        self.rng = np.random.default_rng(seed)
        self.belief = _GridBelief(self.size, self.goal_reward, self.step_reward)
        #: [B] candidate index of the currently sampled goal, −1 if none.
        self.target = np.zeros(0, np.int64)

    def act(
        self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]
    ) -> np.ndarray:
        positions, _ = self.belief.update(observation, trial_start)
        belief = self.belief
        if len(self.target) != len(positions):
            self.target = np.full(len(positions), -1, np.int64)
        self.target[np.asarray(trial_start, bool).reshape(-1)] = -1
        rows = np.arange(len(positions))
        known = belief.found >= 0
        self.target[known] = belief.found[known]
        target_alive = (self.target >= 0) & belief.remaining[rows, np.maximum(self.target, 0)]
        resample = ~known & ~target_alive
        if resample.any():
            weights = belief.remaining[resample].astype(np.float64)
            counts = weights.sum(axis=1)
            # Uniform draw over the remaining candidates by inverting the cumulative count.
            draw = self.rng.random(len(counts)) * counts
            sampled = (np.cumsum(weights, axis=1) <= draw[:, None]).sum(axis=1)
            self.target[resample] = np.where(counts > 0, np.minimum(sampled, weights.shape[1] - 1), -1)
        has_target = self.target >= 0
        targets = np.where(has_target[:, None], belief.candidates[np.maximum(self.target, 0)], positions)
        return shortest_path_actions(positions, targets, self.rng)


# --------------------------------------------------------------------------------------------
# Exact Bayes-optimal search
# --------------------------------------------------------------------------------------------


class _GridGeometry:
    """Cell numbering ``p = x·size + y``, candidate bits and per-goal search returns for one configuration."""

    def __init__(self, size: int, episode_length: int, episodes_per_trial: int) -> None:
        self.size, self.episode_length, self.episodes_per_trial = size, episode_length, episodes_per_trial
        self.horizon = episode_length * episodes_per_trial
        self.num_cells = size * size
        self.candidates = goal_candidates(size)
        self.num_candidates = len(self.candidates)
        cells = np.stack(np.divmod(np.arange(self.num_cells), size), axis=1)  # [cells, 2] (x, y)
        self.cells = cells
        #: [cells, 5] cell entered by each action.
        entered = move_positions(cells[:, None, :], np.arange(len(ACTION_MOVES))[None, :], size)
        self.next_cell = entered @ np.array([size, 1])
        #: candidate bit of each cell, −1 for the cells that cannot be the goal.
        self.candidate_bit = np.full(self.num_cells, -1, np.int64)
        candidate_cells = self.candidates[:, 0] * size + self.candidates[:, 1]
        self.candidate_bit[candidate_cells] = np.arange(self.num_candidates)
        #: [cells, T + 1] trial return (tenths) of a goal on that cell first entered at step τ (column τ).
        self.search_return = np.zeros((self.num_cells, self.horizon + 1), np.int64)
        for cell in np.flatnonzero(self.candidate_bit >= 0):
            distance = int(cells[cell].sum())
            for step in range(1, self.horizon + 1):
                self.search_return[cell, step] = sum(
                    _search_episode_returns_tenths(distance, step, episode_length, episodes_per_trial)
                )
        #: trial return (tenths) of a goal never entered.
        self.never_return = _STEP_TENTHS * self.horizon


def _backward_search_values(geometry: _GridGeometry) -> tuple[int, dict[int, np.ndarray], int]:
    """Exact backward DP over (time, position, remaining candidate set), vectorised over all 2^G sets.

    ``W_t(p, S)`` = max over search plans of ``Σ_{g∈S} R_g(τ_g)`` from step ``t`` at cell ``p`` with
    candidates ``S`` not entered yet (tenths). ``W_t(p, S) = max_a A_{t+1}(p'_a, S)`` with the arrival
    value ``A_τ(q, S) = [q∈S]·R_q(τ) + W_τ(q, S∖{q})`` (``q`` replaced by the start at the end of an
    inner episode, and ``W_T(·, S) = −T·|S|``). For a candidate ``p`` only sets without ``p`` occur, so
    its table is stored compactly over ``2^(G−1)`` sets; bit-removal is a reshape view, not a gather.

    :return: the root value ``W_0(start, all)``, the inner-episode start tables
        ``{e: W_{e·L}(start, ·)}`` for ``e = 1..E−1`` (index = candidate bitmask), and the number of
        ``(position, set)`` entries evaluated over all steps.
    """
    num_sets = 1 << geometry.num_candidates
    bound = geometry.num_candidates * _GOAL_TENTHS * geometry.horizon
    dtype = np.int16 if bound < np.iinfo(np.int16).max else np.int32
    remaining_count = np.zeros(num_sets, dtype)
    for bit in range(geometry.num_candidates):
        remaining_count[1 << bit : 2 << bit] = remaining_count[: 1 << bit] + 1

    def without_bit(table: np.ndarray, bit: int) -> np.ndarray:
        """View ``[hi, lo]`` of a full-set table at the sets without ``bit``, in compact order."""
        return table.reshape(num_sets >> (bit + 1), 2, 1 << bit)[:, 0, :]

    length, horizon = geometry.episode_length, geometry.horizon
    following: list[np.ndarray] = []  # W_{t+1}(p, ·) per cell (compact for candidate cells)
    episode_start_values: dict[int, np.ndarray] = {}
    evaluated = 0
    for step in range(horizon - 1, -1, -1):
        arrival_step = step + 1
        # Value of the state after the move, as a full-set table or as a compact one.
        if arrival_step == horizon:
            reset_table = (geometry.never_return * remaining_count).astype(dtype)
        elif arrival_step % length == 0:
            reset_table = following[0]
        else:
            reset_table = None
        arrival: list[np.ndarray] = []
        for cell in range(geometry.num_cells):
            bit = int(geometry.candidate_bit[cell])
            if bit < 0:
                arrival.append(reset_table if reset_table is not None else following[cell])
                continue
            after = (
                without_bit(reset_table, bit)
                if reset_table is not None
                else following[cell].reshape(num_sets >> (bit + 1), 1 << bit)
            )
            table = np.empty((num_sets >> (bit + 1), 2, 1 << bit), dtype)
            table[:, 0, :] = after
            np.add(after, dtype(geometry.search_return[cell, arrival_step]), out=table[:, 1, :])
            arrival.append(table.reshape(num_sets))
        current: list[np.ndarray] = []
        for cell in range(geometry.num_cells):
            bit = int(geometry.candidate_bit[cell])
            successors = sorted(set(geometry.next_cell[cell].tolist()))
            views = [arrival[q] if bit < 0 else without_bit(arrival[q], bit) for q in successors]
            best = views[0].copy()
            for view in views[1:]:
                np.maximum(best, view, out=best)
            current.append(best.reshape(-1))
            evaluated += best.size
        following = current
        del arrival
        if step % length == 0 and step > 0:
            episode_start_values[step // length] = current[0]
    root = int(following[0][num_sets - 1])
    return root, episode_start_values, evaluated


class _SearchValue:
    """Exact value and greedy actions at any search state, from the inner-episode start tables.

    Within an inner episode the value is computed by a memoised recursion over *discoveries*: from
    ``(p, S, t)`` the next candidate entered is some ``c ∈ S`` reached by a shortest path through
    cells outside ``S`` (a breadth-first search over those cells), or, if none is reachable before the
    episode ends, nothing more this episode. This equals the step-wise DP because (i) any plan's
    segment between two discoveries is such a path, and reaching ``c`` earlier within the same inner
    episode is never worse (the plan can wait there; ``R_c`` falls by 1.1 per step), and (ii) idling
    while a candidate is reachable is dominated: entering it earlier raises ``R_c`` (a goal found in an
    earlier inner episode is worth at least ``1.1`` more, and found beats never found) and leaves the
    other goals' entry times unchanged. The tests check it against the backward DP and brute force.
    """

    def __init__(self, geometry: _GridGeometry, episode_start_values: dict[int, np.ndarray]) -> None:
        self.geometry = geometry
        self.episode_start_values = episode_start_values
        size, full = geometry.size, (1 << geometry.num_cells) - 1
        self._full = full
        self._y_zero = sum(1 << (x * size) for x in range(size))
        self._y_top = sum(1 << (x * size + size - 1) for x in range(size))
        self._bit_of_cell = geometry.candidate_bit.tolist()
        self._search_return = geometry.search_return.tolist()
        self._memo: dict[tuple[int, int, int], int] = {}

    @property
    def num_states(self) -> int:
        """Search states whose value has been computed so far."""
        return len(self._memo)

    def cell_mask(self, remaining: int) -> int:
        """Cell bitmask of a candidate bitmask."""
        mask, bit = 0, 0
        candidates = self.geometry.candidates
        while remaining:
            if remaining & 1:
                mask |= 1 << int(candidates[bit, 0] * self.geometry.size + candidates[bit, 1])
            remaining >>= 1
            bit += 1
        return mask

    def _grow(self, mask: int) -> int:
        size = self.geometry.size
        return (
            ((mask << 1) & ~self._y_zero) | ((mask >> 1) & ~self._y_top) | (mask << size) | (mask >> size)
        ) & self._full

    def _after_step(self, remaining: int, step: int) -> int:
        """Value at an inner-episode start (or trial end) with candidates ``remaining`` (candidate bits)."""
        if step == self.geometry.horizon:
            return self.geometry.never_return * remaining.bit_count()
        return int(self.episode_start_values[step // self.geometry.episode_length][remaining])

    def value(self, cell: int, remaining_cells: int, remaining: int, step: int) -> int:
        """``W_step(cell, S)`` in tenths; ``S`` given both as a cell mask and as a candidate mask."""
        geometry = self.geometry
        if remaining == 0:
            return 0
        if (step % geometry.episode_length == 0 and step > 0) or step == geometry.horizon:
            return self._after_step(remaining, step)
        key = (cell, remaining_cells, step)
        cached = self._memo.get(key)
        if cached is not None:
            return cached
        episode_end = (step // geometry.episode_length + 1) * geometry.episode_length
        best = None
        reached = layer = 1 << cell
        free = ~remaining_cells
        arrival_step = step
        while layer and arrival_step < episode_end:
            arrival_step += 1
            frontier = self._grow(layer) & ~reached
            reached |= frontier
            hits = frontier & remaining_cells
            while hits:
                lowest = hits & -hits
                hits ^= lowest
                target = lowest.bit_length() - 1
                candidate_bit = 1 << self._bit_of_cell[target]
                value = self._search_return[target][arrival_step] + (
                    self.value(target, remaining_cells ^ lowest, remaining ^ candidate_bit, arrival_step)
                    if arrival_step < episode_end
                    else self._after_step(remaining ^ candidate_bit, arrival_step)
                )
                if best is None or value > best:
                    best = value
            layer = frontier & free
        if best is None:
            best = self._after_step(remaining, episode_end)
        self._memo[key] = best
        return best

    def action_values(self, cell: int, remaining: int, step: int) -> np.ndarray:
        """``[5]`` exact action values (tenths, full-trial accounting over the remaining candidates)."""
        geometry = self.geometry
        if not 0 <= step < geometry.horizon:
            raise ValueError(f"step must be in [0, {geometry.horizon}), got {step}")
        remaining_cells = self.cell_mask(remaining)
        values = np.zeros(len(ACTION_MOVES), np.int64)
        arrival_step = step + 1
        for action, target in enumerate(geometry.next_cell[cell].tolist()):
            gain, cells_after, after = 0, remaining_cells, remaining
            if (remaining_cells >> target) & 1:
                gain = self._search_return[target][arrival_step]
                cells_after ^= 1 << target
                after ^= 1 << self._bit_of_cell[target]
            if arrival_step % geometry.episode_length == 0:
                values[action] = gain + self._after_step(after, arrival_step)
            else:
                values[action] = gain + self.value(target, cells_after, after, arrival_step)
        return values

    def best_action(self, cell: int, remaining: int, step: int) -> int:
        """An optimal search action (the lowest-numbered one among ties)."""
        return int(np.argmax(self.action_values(cell, remaining, step)))


@dataclass(frozen=True)
class GridBayesOptimalSolution:
    """The exact Bayes-optimal search on one grid configuration.

    ``plan_*`` describe the search plan, followed while the goal has not been found (after which the
    policy acts as the oracle): ``plan_actions[t]`` is taken at step ``t`` from cell
    ``plan_positions[t]`` with candidates ``plan_remaining[t]`` (bitmask over :func:`goal_candidates`)
    not entered yet.
    """

    size: int
    episode_length: int
    episodes_per_trial: int
    #: expected trial return, exact.
    expected_return: float
    #: ``[E]`` expected return of each inner episode, exact.
    episode_returns: np.ndarray
    #: ``[T]`` search-plan actions.
    plan_actions: np.ndarray
    #: ``[T, 2]`` position before each search-plan step.
    plan_positions: np.ndarray
    #: ``[T]`` int64 candidate bitmask before each search-plan step.
    plan_remaining: np.ndarray
    #: ``[G]`` trial step (1-based) at which the plan first enters each candidate, 0 if never.
    first_visit_steps: np.ndarray
    #: ``(position, remaining set)`` entries evaluated by the backward DP, summed over steps.
    dp_states: int
    #: wall time of the backward DP in seconds (measured when it ran, also if loaded from the cache).
    dp_seconds: float
    #: discovery states evaluated to extract the plan.
    search_states: int


def default_cache_dir() -> Path:
    """``$BAYES_META_RL_CACHE_DIR`` if set, else ``~/.cache/bayes_meta_rl``."""
    return Path(os.environ.get("BAYES_META_RL_CACHE_DIR", Path.home() / ".cache" / "bayes_meta_rl"))


def _cache_path(cache_dir: str | os.PathLike[str] | None, use_disk_cache: bool) -> Path | None:
    if not use_disk_cache:
        return None
    return Path(cache_dir) if cache_dir is not None else default_cache_dir()


_SOLVED: dict[tuple[int, int, int], tuple[GridBayesOptimalSolution, _SearchValue]] = {}


def _load_or_run_backward(
    geometry: _GridGeometry, cache_dir: Path | None
) -> tuple[int, dict[int, np.ndarray], int, float]:
    key = (
        f"grid_bayes_optimal_v{_CACHE_VERSION}_size{geometry.size}_L{geometry.episode_length}"
        f"_E{geometry.episodes_per_trial}.npz"
    )
    path = None if cache_dir is None else Path(cache_dir) / key
    if path is not None and path.exists():
        try:
            with np.load(path) as stored:
                tables = {e: stored[f"start_{e}"] for e in range(1, geometry.episodes_per_trial)}
                if all(t.shape == (1 << geometry.num_candidates,) for t in tables.values()):
                    return int(stored["root"]), tables, int(stored["dp_states"]), float(stored["dp_seconds"])
        except (OSError, KeyError, ValueError):
            pass  # unreadable or stale cache: solve again and overwrite it
    started = time.perf_counter()
    root, tables, dp_states = _backward_search_values(geometry)
    seconds = time.perf_counter() - started
    if path is not None:
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            partial = path.with_suffix(f".{os.getpid()}.tmp.npz")
            np.savez_compressed(
                partial,
                root=root,
                dp_states=dp_states,
                dp_seconds=seconds,
                **{f"start_{e}": table for e, table in tables.items()},
            )
            os.replace(partial, path)
        except OSError:
            pass  # a read-only home only costs recomputation
    return root, tables, dp_states, seconds


def _solve(
    size: int, episode_length: int, episodes_per_trial: int, cache_dir: Path | None
) -> tuple[GridBayesOptimalSolution, _SearchValue]:
    key = (size, episode_length, episodes_per_trial)
    if key in _SOLVED:
        return _SOLVED[key]
    geometry = _GridGeometry(size, episode_length, episodes_per_trial)
    if geometry.num_candidates > MAX_EXACT_CANDIDATES:
        raise ValueError(
            f"size must be <= 5 for the exact Bayes-optimal search (its tables hold 2^G entries, "
            f"G = size² − 4 = {geometry.num_candidates} > {MAX_EXACT_CANDIDATES}), got {size}"
        )
    root, tables, dp_states, dp_seconds = _load_or_run_backward(geometry, cache_dir)
    search = _SearchValue(geometry, tables)

    horizon, length = geometry.horizon, episode_length
    plan_actions = np.zeros(horizon, np.int64)
    plan_positions = np.zeros((horizon, 2), np.int64)
    plan_remaining = np.zeros(horizon, np.int64)
    first_visit = np.zeros(geometry.num_candidates, np.int64)
    cell, remaining = 0, (1 << geometry.num_candidates) - 1
    for step in range(horizon):
        action = search.best_action(cell, remaining, step)
        plan_actions[step], plan_remaining[step] = action, remaining
        plan_positions[step] = geometry.cells[cell]
        cell = int(geometry.next_cell[cell, action])
        bit = int(geometry.candidate_bit[cell])
        if bit >= 0 and (remaining >> bit) & 1:
            first_visit[bit] = step + 1
            remaining ^= 1 << bit
        if (step + 1) % length == 0:
            cell = 0
    distances = geometry.candidates.sum(axis=1)
    per_goal = np.array(
        [
            _search_episode_returns_tenths(int(d), int(tau), length, episodes_per_trial)
            for d, tau in zip(distances, first_visit, strict=True)
        ]
    )  # [G, E] tenths
    if int(per_goal.sum()) != root:
        raise RuntimeError(f"internal error: the extracted plan is worth {per_goal.sum()} != DP value {root}")
    solution = GridBayesOptimalSolution(
        size=size,
        episode_length=episode_length,
        episodes_per_trial=episodes_per_trial,
        expected_return=root / 10 / geometry.num_candidates,
        episode_returns=per_goal.mean(axis=0) / 10,
        plan_actions=plan_actions,
        plan_positions=plan_positions,
        plan_remaining=plan_remaining,
        first_visit_steps=first_visit,
        dp_states=dp_states,
        dp_seconds=dp_seconds,
        search_states=search.num_states,
    )
    _SOLVED[key] = (solution, search)
    return solution, search


def solve_grid_bayes_optimal(
    size: int = 5,
    episode_length: int = 15,
    episodes_per_trial: int = 4,
    cache_dir: str | os.PathLike[str] | None = None,
    use_disk_cache: bool = True,
) -> GridBayesOptimalSolution:
    """Solve the grid's Bayes-optimal search exactly (memoised per process, cached on disk).

    Algorithm: an exact backward DP over (step, position, set of candidates not entered yet),
    vectorised with numpy over all ``2^G`` sets in integer tenths (for the default 5×5, 15×4 config:
    ≈ 30.4 M (position, set) entries per step, 1.8 G over the 60 steps, ~16 s on one core, < 0.5 GB),
    keeping the value tables at inner-episode starts. The search plan is then read off by exact one-step
    look-ahead within each inner episode (:class:`_SearchValue`), and checked to be worth the DP value.

    :param cache_dir: directory of the on-disk cache, default :func:`default_cache_dir`.
    :param use_disk_cache: load/store the episode-start tables (a few MB) there.
    :raises ValueError: bad configuration, or ``size > 5`` (the tables would not fit).
    """
    size, episode_length, episodes_per_trial = _check_config(size, episode_length, episodes_per_trial)
    return _solve(size, episode_length, episodes_per_trial, _cache_path(cache_dir, use_disk_cache))[0]


def bayes_optimal_return(
    size: int = 5,
    episode_length: int = 15,
    episodes_per_trial: int = 4,
    *,
    goal_reward: float = GOAL_REWARD,
    step_reward: float = STEP_REWARD,
) -> float:
    """Exact expected trial return of the Bayes-optimal policy (goal uniform over :func:`goal_candidates`)."""
    goal_reward, step_reward = _check_rewards(goal_reward, step_reward)
    if (goal_reward, step_reward) == (GOAL_REWARD, STEP_REWARD):
        return solve_grid_bayes_optimal(size, episode_length, episodes_per_trial).expected_return
    return float(
        bayes_optimal_episode_returns(
            size, episode_length, episodes_per_trial, goal_reward=goal_reward, step_reward=step_reward
        ).sum()
    )


def bayes_optimal_episode_returns(
    size: int = 5,
    episode_length: int = 15,
    episodes_per_trial: int = 4,
    *,
    goal_reward: float = GOAL_REWARD,
    step_reward: float = STEP_REWARD,
) -> np.ndarray:
    """Exact expected return of each inner episode (``[E]``) under the Bayes-optimal policy.

    Any ``goal_reward > step_reward`` shares the default rewards' optimal plan (module docstring);
    the returns are ``step_reward·L + (goal_reward − step_reward)·E[steps on the goal]`` per episode.
    """
    goal_reward, step_reward = _check_rewards(goal_reward, step_reward)
    solution = solve_grid_bayes_optimal(size, episode_length, episodes_per_trial)
    if (goal_reward, step_reward) == (GOAL_REWARD, STEP_REWARD):
        return solution.episode_returns.copy()
    distances = goal_candidates(solution.size).sum(axis=1)
    on_goal = np.array(
        [
            _goal_steps_per_episode(int(d), int(tau), solution.episode_length, solution.episodes_per_trial)
            for d, tau in zip(distances, solution.first_visit_steps, strict=True)
        ],
        np.float64,
    )  # [G, E]
    return step_reward * solution.episode_length + (goal_reward - step_reward) * on_goal.mean(axis=0)


class GridBayesOptimal(_GridReference):
    """The exact Bayes-optimal policy: the optimal search plan until the goal is found, then the oracle.

    Solving happens at construction (see :func:`solve_grid_bayes_optimal`; ~20 s once for the default
    configuration, then loaded from the disk cache). Envs on the plan take the plan's action
    (vectorised); a state off the plan (e.g. after actions chosen by someone else) gets an exact
    one-step look-ahead action. The trial must have exactly ``episodes_per_trial`` inner episodes of
    ``episode_length`` steps. The plan is optimal for any ``goal_reward > step_reward`` (module
    docstring); the rewards are only read to tell when the goal was entered.
    """

    def __init__(
        self,
        size: int = 5,
        episode_length: int = 15,
        episodes_per_trial: int = 4,
        cache_dir: str | os.PathLike[str] | None = None,
        use_disk_cache: bool = True,
        *,
        goal_reward: float = GOAL_REWARD,
        step_reward: float = STEP_REWARD,
    ) -> None:
        self._set_grid(size, episode_length, episodes_per_trial, goal_reward, step_reward)
        self.solution, self._search = _solve(
            self.size, self.episode_length, self.episodes_per_trial, _cache_path(cache_dir, use_disk_cache)
        )
        self.belief = _GridBelief(self.size, self.goal_reward, self.step_reward)
        self._candidate_bits = np.int64(1) << np.arange(len(self.belief.candidates), dtype=np.int64)
        self._plan_cells = self.solution.plan_positions[:, 0] * self.size + self.solution.plan_positions[:, 1]

    def act(
        self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]
    ) -> np.ndarray:
        positions, new_episode = self.belief.update(observation, trial_start)
        belief, solution = self.belief, self.solution
        steps = belief.steps
        horizon = self.episode_length * self.episodes_per_trial
        if (steps >= horizon).any():
            raise ValueError(
                f"the trial is longer than episodes_per_trial*episode_length = {horizon} steps; "
                "construct the policy with the env's episodes_per_trial and episode_length"
            )
        if (new_episode != (steps % self.episode_length == 0)).any():
            raise ValueError(
                f"new_episode flags do not match episode_length={self.episode_length}; "
                "construct the policy with the env's episode_length"
            )
        actions = np.zeros(len(positions), np.int64)
        known = belief.found >= 0
        actions[known] = shortest_path_actions(positions[known], belief.candidates[belief.found[known]])
        remaining = belief.remaining.astype(np.int64) @ self._candidate_bits
        cells = positions[:, 0] * self.size + positions[:, 1]
        on_plan = ~known & (cells == self._plan_cells[steps]) & (remaining == solution.plan_remaining[steps])
        actions[on_plan] = solution.plan_actions[steps[on_plan]]
        for row in np.flatnonzero(~known & ~on_plan):  # only reached off the plan: rare, exact, memoised
            actions[row] = self._search.best_action(int(cells[row]), int(remaining[row]), int(steps[row]))
        return actions
