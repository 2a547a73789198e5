"""The interface every reference policy (oracle, posterior sampling, Bayes-optimal, ...) implements."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any

import numpy as np


class ReferencePolicy(ABC):
    """A batched, non-learned policy acting on the RL²-input observation of a trial env.

    Reference policies see exactly what a learned agent sees (the Dict observation
    ``{"obs", "prev_action", "prev_reward", "new_episode"}``, batched over ``B`` envs),
    except *privileged* ones (oracles), which are also handed the hidden tasks.
    They keep their own belief, which they reset where ``trial_start`` is true.
    """

    #: True if :meth:`act` reads the hidden ``tasks`` (an oracle, not a Bayesian agent).
    privileged: bool = False

    @abstractmethod
    def act(
        self,
        observation: dict[str, np.ndarray],
        trial_start: np.ndarray,
        tasks: Sequence[Any],
    ) -> np.ndarray:
        """Choose actions for a batch of envs.

        :param observation: the batched RL²-input observation, each entry ``[B, ...]``.
        :param trial_start: ``[B]`` bool, true at the first step of a new trial
            (forget everything learned about the previous task).
        :param tasks: the ``B`` current hidden tasks; only privileged policies may read them.
        :return: actions ``[B]`` (discrete) or ``[B, action_dim]`` (continuous).
        """


class UniformRandomPolicy(ReferencePolicy):
    """Uniformly random actions: the floor every learned agent should clear."""

    def __init__(self, action_space: Any, seed: int | None = None) -> None:
        self.action_space = action_space
        self.rng = np.random.default_rng(seed)

    def act(
        self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]
    ) -> np.ndarray:
        space = self.action_space
        batch = len(trial_start)
        if hasattr(space, "n"):
            return self.rng.integers(space.n, size=batch)
        return self.rng.uniform(space.low, space.high, (batch, *space.shape)).astype(np.float32)
