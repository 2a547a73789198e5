"""BayesGrid-v0: find a hidden goal cell on a small grid, then exploit it (VariBAD's gridworld)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
from gymnasium import spaces

from bayes_envs.core import MetaEnv, TrialBatch, check_finite_float, check_int, check_reward_scale
from bayes_envs.render import Canvas

#: Position change of the actions noop, up, right, down, left.
MOVES = np.array([[0, 0], [0, 1], [1, 0], [0, -1], [-1, 0]], np.int64)
ACTION_NAMES = ("noop", "up", "right", "down", "left")


def goal_candidates(size: int) -> np.ndarray:
    """The cells a goal can be on: all but those within one (Chebyshev) step of the start (0, 0).

    :return: ``[G, 2]`` int64 array of (x, y), in row-major order of (x, y); ``G = size² − 4``.
    """
    size = check_int("size", size, 3)
    xs, ys = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
    cells = np.stack([xs.ravel(), ys.ravel()], axis=1)
    return cells[(cells[:, 0] > 1) | (cells[:, 1] > 1)]


@dataclass(frozen=True)
class GridTask:
    """A goal cell ``(x, y)``."""

    goal: tuple[int, int]


class GridBatch(TrialBatch):
    """Batched goal-grid dynamics; see :class:`BayesGridEnv` for the specification."""

    task_type = GridTask

    def __init__(
        self,
        batch_size: int,
        *,
        size: int = 5,
        episode_length: int = 15,
        episodes_per_trial: int = 4,
        goal_reward: float = 1.0,
        step_reward: float = -0.1,
        split: str = "train",
        rl2_inputs: bool = True,
    ) -> None:
        super().__init__(
            batch_size,
            episode_length=episode_length,
            episodes_per_trial=episodes_per_trial,
            split=split,
            rl2_inputs=rl2_inputs,
        )
        self.size = check_int("size", size, 3)
        self.goal_reward = check_finite_float("goal_reward", goal_reward)
        self.step_reward = check_finite_float("step_reward", step_reward)
        horizon = self.episode_length * self.episodes_per_trial
        check_reward_scale("goal_reward", self.goal_reward, horizon)
        check_reward_scale("step_reward", self.step_reward, horizon)
        self.candidates = goal_candidates(self.size)
        self.position = np.zeros((batch_size, 2), np.int64)
        self.goal = np.zeros((batch_size, 2), np.int64)
        self.visited = np.zeros((batch_size, self.size, self.size), bool)
        self.goal_found = np.zeros(batch_size, bool)
        self.state_space = spaces.Box(0.0, float(self.size - 1), (2,), np.float32)
        self.action_space = spaces.Discrete(len(MOVES))

    @property
    def reward_range(self) -> tuple[float, float]:
        return (min(self.goal_reward, self.step_reward), max(self.goal_reward, self.step_reward))

    def sample_task(self, rng: np.random.Generator) -> GridTask:
        x, y = self.candidates[rng.integers(len(self.candidates))]
        return GridTask(goal=(int(x), int(y)))

    def _check_task(self, task: GridTask) -> GridTask:
        goal = np.asarray(task.goal)
        if goal.shape != (2,) or not (self.candidates == goal).all(axis=1).any():
            raise ValueError(
                f"goal {task.goal} is not a goal cell of the {self.size}x{self.size} grid "
                "(cells within one step of the start (0, 0) are excluded)"
            )
        return task

    def _set_task(self, index: int, task: GridTask) -> None:
        self.goal[index] = task.goal

    def _begin_trial(self, index: int, rng: np.random.Generator) -> None:
        self.visited[index] = False
        self.goal_found[index] = False

    def _begin_episode(self, mask: np.ndarray) -> None:
        self.position[mask] = 0
        self.visited[mask, 0, 0] = True

    def _observe(self) -> np.ndarray:
        return self.position

    def _transition(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        self.position = np.clip(self.position + MOVES[actions], 0, self.size - 1)
        on_goal = (self.position == self.goal).all(axis=1)
        self.visited[np.arange(self.batch_size), self.position[:, 0], self.position[:, 1]] = True
        self.goal_found |= on_goal
        rewards = np.where(on_goal, self.goal_reward, self.step_reward)
        return rewards, np.zeros(self.batch_size, bool), {}

    def render_ansi(self, index: int) -> str:
        rows = []
        for y in reversed(range(self.size)):
            row = []
            for x in range(self.size):
                cell = "."
                if self.visited[index, x, y]:
                    cell = "o"
                if self.goal_found[index] and (x, y) == tuple(self.goal[index]):
                    cell = "G"
                if (x, y) == tuple(self.position[index]):
                    cell = "A"
                row.append(cell)
            rows.append(" ".join(row))
        rows.append(
            f"inner episode {int(self.inner_episode[index]) + 1}/{self.episodes_per_trial}, "
            f"step {int(self.episode_step[index])}/{self.episode_length}"
        )
        return "\n".join(rows) + "\n"

    def render_rgb(self, index: int) -> np.ndarray:
        cell = 32
        canvas = Canvas(self.size * cell, self.size * cell, background=(245, 245, 245))
        for x in range(self.size):
            for y in range(self.size):
                # Image rows grow downwards; grid y grows upwards.
                top, left = (self.size - 1 - y) * cell, x * cell
                color = (200, 220, 255) if self.visited[index, x, y] else (255, 255, 255)
                if self.goal_found[index] and (x, y) == tuple(self.goal[index]):
                    color = (80, 200, 80)
                canvas.rect(top + 1, left + 1, cell - 2, cell - 2, color)
        ax, ay = self.position[index]
        canvas.disc((self.size - 1 - ay) * cell + cell // 2, ax * cell + cell // 2, cell // 3, (220, 60, 60))
        return canvas.pixels


class BayesGridEnv(MetaEnv):
    """A ``size``×``size`` grid with a hidden goal cell (VariBAD's gridworld).

    * **Task**: the goal, uniform over the ``size² − 4`` cells not within one step of the start
      (0, 0) (:func:`goal_candidates`); the same distribution for both splits, as in VariBAD.
    * **Actions**: ``Discrete(5)``: 0 noop, 1 up (y+1), 2 right (x+1), 3 down (y−1), 4 left (x−1);
      moves off the grid are clipped.
    * **Reward**: after the move, ``goal_reward`` (+1) on the goal cell, ``step_reward`` (−0.1)
      elsewhere. Reaching the goal does not end the inner episode; staying on it keeps paying.
    * **Trial**: ``episodes_per_trial`` (4) inner episodes of ``episode_length`` (15) steps, each
      starting at (0, 0); the goal stays fixed for the trial.
    * **Observation**: the position ``(x, y)`` as float32 in ``Box(0, size−1, (2,))``; with
      ``rl2_inputs=True`` (default) the Dict ``{"obs", "prev_action" (one-hot), "prev_reward",
      "new_episode"}``.
    * **Info**: ``task``, ``inner_episode``, ``inner_done`` and ``inner_return`` at inner-episode end.
    * **Rendering**: ``"rgb_array"`` (agent red, visited cells blue, goal green once found) and ``"ansi"``.
    """

    batch_class = GridBatch
