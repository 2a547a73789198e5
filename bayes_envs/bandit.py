"""BayesBandit-v0: a Bernoulli bandit whose arm probabilities are drawn from a Dirichlet prior."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
from gymnasium import spaces

from bayes_envs.core import MetaEnv, TrialBatch, check_int, check_positive_float
from bayes_envs.render import Canvas

#: The Dirichlet concentration of each split (the Laplace-VRNN paper: 0.2 to train, 0.3 to test).
SPLIT_ALPHA = {"train": 0.2, "test": 0.3}


@dataclass(frozen=True)
class BanditTask:
    """The arms' success probabilities ``probs`` ``[K]`` (a point of the simplex)."""

    probs: np.ndarray = field(repr=False)

    def __repr__(self) -> str:
        return f"BanditTask(probs={np.array2string(np.asarray(self.probs), precision=3)})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, BanditTask) and np.array_equal(self.probs, other.probs)

    def __hash__(self) -> int:
        return hash(np.asarray(self.probs).tobytes())


class BanditBatch(TrialBatch):
    """Batched Dirichlet-Bernoulli bandit; see :class:`BayesBanditEnv` for the specification."""

    task_type = BanditTask

    def __init__(
        self,
        batch_size: int,
        *,
        n_arms: int = 5,
        alpha: float | None = None,
        horizon: int = 50,
        split: str = "train",
        rl2_inputs: bool = True,
    ) -> None:
        super().__init__(
            batch_size,
            episode_length=1,
            episodes_per_trial=check_int("horizon", horizon, 1),
            split=split,
            rl2_inputs=rl2_inputs,
        )
        self.n_arms = check_int("n_arms", n_arms, 2)
        self.alpha = SPLIT_ALPHA[split] if alpha is None else check_positive_float("alpha", alpha)
        self.horizon = self.episodes_per_trial
        self.probs = np.zeros((batch_size, self.n_arms))
        # Uniform draws fixed at trial start: pull t pays 1 iff uniforms[t] < p(arm); this keeps a
        # batch and a loop of single envs on identical random streams with no per-env loop per step.
        self.uniforms = np.zeros((batch_size, self.horizon))
        self.successes = np.zeros((batch_size, self.n_arms), np.int64)
        self.failures = np.zeros((batch_size, self.n_arms), np.int64)
        self.state_space = spaces.Box(0.0, 1.0, (1,), np.float32)
        self.action_space = spaces.Discrete(self.n_arms)

    @property
    def reward_range(self) -> tuple[float, float]:
        return (0.0, 1.0)

    def sample_task(self, rng: np.random.Generator) -> BanditTask:
        return BanditTask(probs=rng.dirichlet(np.full(self.n_arms, self.alpha)))

    def _check_task(self, task: BanditTask) -> BanditTask:
        probs = np.asarray(task.probs, np.float64)
        if probs.shape != (self.n_arms,) or not np.all(np.isfinite(probs)):
            raise ValueError(f"task.probs must be {self.n_arms} finite probabilities, got {task.probs!r}")
        if np.any(probs < 0) or np.any(probs > 1):
            raise ValueError(f"task.probs must lie in [0, 1], got {task.probs!r}")
        return task

    def _set_task(self, index: int, task: BanditTask) -> None:
        self.probs[index] = task.probs

    def _begin_trial(self, index: int, rng: np.random.Generator) -> None:
        self.uniforms[index] = rng.random(self.horizon)
        self.successes[index] = 0
        self.failures[index] = 0

    def _begin_episode(self, mask: np.ndarray) -> None:
        pass  # a bandit has no state to reset

    def _observe(self) -> np.ndarray:
        return np.zeros((self.batch_size, 1), np.float32)

    def _transition(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        rows = np.arange(self.batch_size)
        arm_probs = self.probs[rows, actions]
        rewards = (self.uniforms[rows, self.trial_step] < arm_probs).astype(np.float64)
        self.successes[rows, actions] += rewards.astype(np.int64)
        self.failures[rows, actions] += 1 - rewards.astype(np.int64)
        regret = self.probs.max(axis=1) - arm_probs
        return rewards, np.zeros(self.batch_size, bool), {"regret": regret}

    def display_posterior_means(self, index: int) -> np.ndarray:
        """Per-arm posterior means shown by the renderers.

        Each arm's marginal prior under Dirichlet(α·1_K) is Beta(α, (K−1)α); this is the posterior
        mean of that marginal given the arm's own outcomes (it ignores the coupling of the arms
        through the simplex, so it is a display aid, not the exact posterior of
        :mod:`bayes_envs.references.bandit`).
        """
        pulls = self.successes[index] + self.failures[index]
        return (self.alpha + self.successes[index]) / (self.n_arms * self.alpha + pulls)

    def render_ansi(self, index: int) -> str:
        means = self.display_posterior_means(index)
        lines = [f"pull {int(self.trial_step[index])}/{self.horizon}"]
        for arm in range(self.n_arms):
            pulls = int(self.successes[index, arm] + self.failures[index, arm])
            lines.append(
                f"arm {arm}: pulls {pulls:3d}  wins {int(self.successes[index, arm]):3d}  "
                f"posterior mean {means[arm]:.3f}"
            )
        return "\n".join(lines) + "\n"

    def render_rgb(self, index: int) -> np.ndarray:
        bar, gap, height = 24, 8, 120
        canvas = Canvas(2 * height + 3 * gap, self.n_arms * (bar + gap) + gap)
        pulls = self.successes[index] + self.failures[index]
        pull_scale = max(int(pulls.max()), 1)
        means = self.display_posterior_means(index)
        for arm in range(self.n_arms):
            left = gap + arm * (bar + gap)
            pull_height = round(height * pulls[arm] / pull_scale)
            canvas.rect(gap + height - pull_height, left, pull_height, bar, (90, 120, 200))
            mean_height = round(height * means[arm])
            canvas.rect(2 * gap + 2 * height - mean_height, left, mean_height, bar, (230, 150, 60))
        return canvas.pixels


class BayesBanditEnv(MetaEnv):
    """A ``n_arms``-armed Bernoulli bandit with arm probabilities ``p ~ Dirichlet(alpha·1)``.

    * **Task**: ``p ~ Dirichlet(alpha·1_K)``, ``K = n_arms`` (5); ``alpha`` defaults to 0.2 for
      ``split="train"`` and 0.3 for ``split="test"`` (higher is harder).
    * **Actions**: ``Discrete(n_arms)``, the arm to pull.
    * **Reward**: ``r ~ Bernoulli(p_a)``.
    * **Trial**: ``horizon`` (50) pulls, each its own inner episode of one step (γ = 0 within).
    * **Observation**: the bandit has no state: ``Box(0, 1, (1,)) (always 0)``; with ``rl2_inputs=True``
      (default) the Dict ``{"obs", "prev_action" (one-hot), "prev_reward", "new_episode"}``.
    * **Info**: ``task``, ``inner_episode`` (the pull index), ``inner_done``, ``inner_return`` and
      ``regret`` = ``max(p) − p_a``, the expected regret of the pull.
    * **Rendering**: ``"rgb_array"`` (pull counts, top; per-arm posterior means, bottom) and ``"ansi"``.
    """

    batch_class = BanditBatch
