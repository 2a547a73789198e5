"""Meta-test protocol: roll out full trials on a seeded, fixed set of tasks and summarise them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bayes_envs.core import check_int
from bayes_envs.references.base import ReferencePolicy
from bayes_envs.vec import make_vec

#: Two-sided 95% normal quantile; the summaries use mean ± Z95·sem over tasks (n_tasks ≥ 30 advised).
Z95 = 1.959963984540054


class PredictPolicy(Protocol):
    """Anything with Stable-Baselines3's recurrent ``predict`` (e.g. a ``RecurrentPPO`` model)."""

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[np.ndarray, Any]: ...


def mean_ci(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and the half-width of its normal 95% confidence interval along ``axis``."""
    values = np.asarray(values, np.float64)
    n = values.shape[axis]
    sem = (
        values.std(axis=axis, ddof=1) / np.sqrt(n) if n > 1 else np.full(np.mean(values, axis).shape, np.nan)
    )
    return values.mean(axis=axis), Z95 * sem


@dataclass
class EvaluationResult:
    """Per-task outcomes of one trial on each of ``n_tasks`` fixed test tasks.

    ``episode_returns`` is ``[n_tasks, episodes_per_trial]``; ``step_rewards`` ``[n_tasks, T]``;
    ``cumulative_regret`` ``[n_tasks, T]`` where the env reports an expected regret (the bandit).
    """

    env_id: str
    policy: str
    seed: int
    episode_returns: np.ndarray
    step_rewards: np.ndarray
    cumulative_regret: np.ndarray | None = None
    tasks: list[Any] = field(default_factory=list, repr=False)

    @property
    def trial_returns(self) -> np.ndarray:
        return self.episode_returns.sum(axis=1)

    def summary(self) -> dict[str, Any]:
        """Means and 95% CI half-widths, JSON-ready."""
        episode_mean, episode_ci = mean_ci(self.episode_returns)
        trial_mean, trial_ci = mean_ci(self.trial_returns)
        out: dict[str, Any] = {
            "env_id": self.env_id,
            "policy": self.policy,
            "seed": self.seed,
            "n_tasks": int(self.episode_returns.shape[0]),
            "episode_return_mean": episode_mean.tolist(),
            "episode_return_ci95": episode_ci.tolist(),
            "trial_return_mean": float(trial_mean),
            "trial_return_ci95": float(trial_ci),
        }
        if self.cumulative_regret is not None:
            regret_mean, regret_ci = mean_ci(self.cumulative_regret)
            out["cumulative_regret_mean"] = regret_mean.tolist()
            out["cumulative_regret_ci95"] = regret_ci.tolist()
            out["final_regret_mean"] = float(regret_mean[-1])
            out["final_regret_ci95"] = float(regret_ci[-1])
        return out

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.summary(), indent=2)
        if path is not None:
            with open(path, "w") as handle:
                handle.write(text)
        return text


def evaluate(
    policy: ReferencePolicy | PredictPolicy,
    env_id: str,
    n_tasks: int = 100,
    seed: int = 0,
    *,
    deterministic: bool = True,
    **env_kwargs: Any,
) -> EvaluationResult:
    """Roll out one full trial on each of ``n_tasks`` tasks and collect returns (and regret).

    Task ``i`` is the first task drawn by an env seeded ``seed + i``, so every policy evaluated
    with the same ``seed`` meets the same tasks and the same noise.

    :param policy: a :class:`~bayes_envs.references.base.ReferencePolicy` or anything with SB3's
        recurrent ``predict`` (its recurrent state is reset at the trial start).
    :param env_kwargs: the env's constants, e.g. ``split="test"``.
    """
    n_tasks = check_int("n_tasks", n_tasks, 1)
    check_int("seed", seed, 0)
    is_reference = isinstance(policy, ReferencePolicy)
    if not is_reference and not callable(getattr(policy, "predict", None)):
        raise TypeError(f"policy must be a ReferencePolicy or have predict(), got {type(policy).__name__}")
    venv = make_vec(env_id, n_tasks, seed=seed, rl2_inputs=True, monitor=False, **env_kwargs)
    observation = venv.reset()
    tasks = list(venv.get_attr("task"))
    episodes = int(venv.get_attr("episodes_per_trial")[0])
    episode_returns = np.full((n_tasks, episodes), np.nan)
    rewards: list[np.ndarray] = []
    regrets: list[np.ndarray] = []
    trial_start = np.ones(n_tasks, bool)
    done = np.zeros(n_tasks, bool)
    recurrent_state = None
    while not done.all():
        if is_reference:
            actions = policy.act(observation, trial_start, tasks)
        else:
            actions, recurrent_state = policy.predict(
                observation, state=recurrent_state, episode_start=trial_start, deterministic=deterministic
            )
        observation, step_rewards, dones, infos = venv.step(actions)
        live = ~done
        rewards.append(np.where(live, step_rewards, np.nan))
        if "regret" in infos[0]:
            regrets.append(np.where(live, [info["regret"] for info in infos], np.nan))
        for i in np.flatnonzero(live):
            if infos[i]["inner_done"]:
                episode_returns[i, infos[i]["inner_episode"]] = infos[i]["inner_return"]
        done |= dones
        # Envs whose trial ended restart (SB3 auto-reset); their new trials are not recorded.
        trial_start = np.asarray(dones, bool).copy()
    venv.close()
    step_rewards_array = np.stack(rewards, axis=1)
    name = getattr(policy, "name", None) or type(policy).__name__
    return EvaluationResult(
        env_id=env_id,
        policy=name,
        seed=seed,
        episode_returns=episode_returns,
        step_rewards=step_rewards_array,
        cumulative_regret=np.nancumsum(np.stack(regrets, axis=1), axis=1) if regrets else None,
        tasks=tasks,
    )
