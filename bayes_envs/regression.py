"""FourierRegression-v0: predict a hidden random Fourier function at new inputs (Laplace-VRNN §5.1)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gymnasium import spaces

from bayes_envs.core import MetaEnv, TrialBatch, check_int


@dataclass(frozen=True)
class FourierTask:
    """``f(x) = a0/2 + Σ_k a_k cos((2πk(x − shift) − φ_k)/2)``, ``k = 1..K``.

    ``amplitudes`` is ``[K + 1]`` (a0..aK), ``phases`` is ``[K]`` (φ_1..φ_K).
    """

    amplitudes: np.ndarray = field(repr=False)
    shift: float
    phases: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        return (
            f"FourierTask(amplitudes={np.array2string(np.asarray(self.amplitudes), precision=3)}, "
            f"shift={self.shift:.3f}, phases={np.array2string(np.asarray(self.phases), precision=3)})"
        )

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FourierTask)
            and np.array_equal(self.amplitudes, other.amplitudes)
            and self.shift == other.shift
            and np.array_equal(self.phases, other.phases)
        )

    def __hash__(self) -> int:
        return hash((np.asarray(self.amplitudes).tobytes(), self.shift, np.asarray(self.phases).tobytes()))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """Evaluate ``f`` elementwise."""
        return fourier_values(
            np.asarray(self.amplitudes)[None],
            np.asarray([self.shift]),
            np.asarray(self.phases)[None],
            np.asarray(x, np.float64)[None],
        )[0]


def fourier_values(
    amplitudes: np.ndarray, shifts: np.ndarray, phases: np.ndarray, x: np.ndarray
) -> np.ndarray:
    """Batched ``f_b(x_{b,n})``: amplitudes ``[B, K+1]``, shifts ``[B]``, phases ``[B, K]``, x ``[B, N]``."""
    k = np.arange(1, phases.shape[1] + 1)
    angles = (2 * np.pi * k[None, None, :] * (x[:, :, None] - shifts[:, None, None]) - phases[:, None, :]) / 2
    return amplitudes[:, None, 0] / 2 + np.einsum("bnk,bk->bn", np.cos(angles), amplitudes[:, 1:])


def amplitude_bounds(n_components: int) -> np.ndarray:
    """``|a_i| < (i + 1)/3``, ``i = 0..K`` (the reference implementation's amplitude ranges)."""
    return (np.arange(n_components + 1) + 1) / 3


class FourierBatch(TrialBatch):
    """Batched Fourier-regression trials; see :class:`FourierRegressionEnv` for the specification."""

    task_type = FourierTask

    def __init__(
        self,
        batch_size: int,
        *,
        n_points: int = 50,
        episodes_per_trial: int = 1,
        n_components: int = 3,
        split: str = "train",
        rl2_inputs: bool = True,
    ) -> None:
        super().__init__(
            batch_size,
            episode_length=check_int("n_points", n_points, 1),
            episodes_per_trial=episodes_per_trial,
            split=split,
            rl2_inputs=rl2_inputs,
        )
        self.n_points = self.episode_length
        self.n_components = check_int("n_components", n_components, 1)
        bounds = amplitude_bounds(self.n_components)
        #: Largest possible |f(x)|: the action (prediction) space is [-y_bound, y_bound].
        self.y_bound = float(bounds[0] / 2 + bounds[1:].sum())
        horizon = self.n_points * self.episodes_per_trial
        self.amplitudes = np.zeros((batch_size, self.n_components + 1))
        self.shifts = np.zeros(batch_size)
        self.phases = np.zeros((batch_size, self.n_components))
        self.xs = np.zeros((batch_size, horizon))
        self.ys = np.zeros((batch_size, horizon))
        self.state_space = spaces.Box(
            np.array([-1, -1, -self.y_bound], np.float32),
            np.array([1, 1, self.y_bound], np.float32),
            (3,),
            np.float32,
        )
        self.action_space = spaces.Box(-self.y_bound, self.y_bound, (1,), np.float32)

    @property
    def reward_range(self) -> tuple[float, float]:
        return (-((2 * self.y_bound) ** 2), 0.0)

    def sample_task(self, rng: np.random.Generator) -> FourierTask:
        amplitudes = (rng.random(self.n_components + 1) * 2 - 1) * amplitude_bounds(self.n_components)
        shift = float(rng.uniform(0.0, np.pi))
        phases = rng.uniform(0.0, np.pi, self.n_components)
        return FourierTask(amplitudes=amplitudes, shift=shift, phases=phases)

    def _check_task(self, task: FourierTask) -> FourierTask:
        amplitudes, phases = np.asarray(task.amplitudes, np.float64), np.asarray(task.phases, np.float64)
        k = self.n_components
        if amplitudes.shape != (k + 1,) or phases.shape != (k,):
            raise ValueError(
                f"task needs {k + 1} amplitudes and {k} phases, got shapes "
                f"{amplitudes.shape} and {phases.shape}"
            )
        values = np.concatenate([amplitudes, phases, [task.shift]])
        if not np.all(np.isfinite(values)):
            raise ValueError(f"task parameters must be finite, got {task!r}")
        if np.any(np.abs(amplitudes) > amplitude_bounds(k)):
            raise ValueError(f"amplitudes must satisfy |a_i| <= (i + 1)/3, got {amplitudes}")
        return task

    def _set_task(self, index: int, task: FourierTask) -> None:
        self.amplitudes[index] = task.amplitudes
        self.shifts[index] = task.shift
        self.phases[index] = task.phases
        self._evaluate_targets(index)

    def _begin_trial(self, index: int, rng: np.random.Generator) -> None:
        self.xs[index] = rng.uniform(-1.0, 1.0, self.xs.shape[1])
        self._evaluate_targets(index)

    def _evaluate_targets(self, index: int) -> None:
        rows = slice(index, index + 1)
        self.ys[index] = fourier_values(
            self.amplitudes[rows], self.shifts[rows], self.phases[rows], self.xs[rows]
        )[0]

    def _begin_episode(self, mask: np.ndarray) -> None:
        pass  # the query inputs were drawn for the whole trial at its start

    def _observe(self) -> np.ndarray:
        rows = np.arange(self.batch_size)
        t = self.trial_step
        horizon = self.xs.shape[1]
        has_query, has_previous = t < horizon, t > 0
        query = np.where(has_query, self.xs[rows, np.minimum(t, horizon - 1)], 0.0)
        previous_x = np.where(has_previous, self.xs[rows, np.maximum(t - 1, 0)], 0.0)
        previous_y = np.where(has_previous, self.ys[rows, np.maximum(t - 1, 0)], 0.0)
        return np.stack([query, previous_x, previous_y], axis=1)

    def _transition(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        rows = np.arange(self.batch_size)
        x, y = self.xs[rows, self.trial_step], self.ys[rows, self.trial_step]
        rewards = -((actions[:, 0] - y) ** 2)
        return rewards, np.zeros(self.batch_size, bool), {"x": x, "y": y}

    def render_ansi(self, index: int) -> str:
        t = int(self.trial_step[index])
        seen = " ".join(
            f"({x:+.2f},{y:+.2f})"
            for x, y in zip(self.xs[index, max(t - 5, 0) : t], self.ys[index, max(t - 5, 0) : t], strict=True)
        )
        query = f"{self.xs[index, t]:+.3f}" if t < self.xs.shape[1] else "-"
        return f"point {t}/{self.xs.shape[1]}  query x={query}  last points {seen}\n"


class FourierRegressionEnv(MetaEnv):
    """Online regression of a hidden random Fourier function (the Laplace-VRNN paper's §5.1 prior).

    * **Task**: ``f(x) = a0/2 + Σ_{k=1..K} a_k cos((2πk(x − s) − φ_k)/2)`` with
      ``a_i = (U[0,2) − 1)·(i+1)/3``, ``s, φ_k ~ U[0, π)``, ``K = n_components`` (3); the same
      distribution for both splits.
    * **Trial**: ``n_points`` (50) inputs ``x_t ~ U[−1, 1]``, in ``episodes_per_trial`` (1) inner episodes.
    * **Observation**: ``(x_t, x_{t−1}, y_{t−1})`` (the previous pair is (0, 0) at trial start);
      with ``rl2_inputs=True`` (default) inside the Dict
      ``{"obs", "prev_action", "prev_reward", "new_episode"}``.
    * **Action**: the prediction ``ŷ_t`` in ``Box(−y_bound, y_bound, (1,))``, ``y_bound`` the largest
      possible ``|f|`` (19/6 for K = 3). NaN/inf or out-of-range predictions raise ``ValueError``.
    * **Reward**: ``−(ŷ_t − f(x_t))²``. **Info**: ``x``, ``y`` = ``f(x_t)``, ``task``, ``inner_*``.
    """

    batch_class = FourierBatch
    metadata = {"render_modes": ["ansi"], "render_fps": 4}  # noqa: RUF012
