"""Meta-test protocol: roll out full trials on a seeded, fixed set of tasks and summarise them."""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Protocol

import numpy as np

from bayes_envs.core import check_int
from bayes_envs.normalize import RL2VecNormalize
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


def _per_class_rates(success: np.ndarray, classes: list[str]) -> dict[str, np.ndarray]:
    """Per task class, the mean over its tasks of ``success`` ``[n_tasks, E]`` → ``[E]``."""
    names = np.asarray(classes)
    return {name: np.nanmean(success[names == name], axis=0) for name in sorted(set(classes))}


@dataclass
class EvaluationResult:
    """Per-task outcomes of one trial on each of ``n_tasks`` fixed test tasks.

    ``episode_returns`` is ``[n_tasks, episodes_per_trial]``; ``step_rewards`` ``[n_tasks, T]``
    (NaN after a trial that ended early); ``cumulative_regret`` ``[n_tasks, T]`` where the env
    reports an expected regret (the bandit). Where the env reports them: ``episode_success``
    ``[n_tasks, episodes_per_trial]`` (Meta-World: 1 if some step of the inner episode succeeded)
    and ``task_classes`` (one name per task). Where the env reports a per-step ``forward_reward``
    (the direction tasks: HalfCheetahDir, AntDir): ``episode_forward`` ``[n_tasks, episodes_per_trial]``,
    its sum over each inner episode — the distance run in the task's direction divided by the control
    timestep, positive when the agent ran the task's way. Where the policy exposes its belief
    (``policy.last_belief_output``): ``belief_entropy`` and ``belief_kl`` ``[n_tasks, T]``, the
    posterior entropy and ``KL(q_t ‖ q_{t−1})`` in nats after each step's input.
    """

    env_id: str
    policy: str
    seed: int
    episode_returns: np.ndarray
    step_rewards: np.ndarray
    cumulative_regret: np.ndarray | None = None
    tasks: list[Any] = field(default_factory=list, repr=False)
    episode_success: np.ndarray | None = None
    task_classes: list[str] | None = None
    episode_forward: np.ndarray | None = None
    belief_entropy: np.ndarray | None = None
    belief_kl: np.ndarray | None = None

    @property
    def trial_returns(self) -> np.ndarray:
        return self.episode_returns.sum(axis=1)

    def success_rate_per_class(self) -> dict[str, np.ndarray]:
        """Task class → success rate per inner episode ``[E]`` (all tasks in one class if unnamed)."""
        if self.episode_success is None:
            raise ValueError(f"{self.env_id} reports no success")
        classes = self.task_classes or ["all"] * len(self.episode_success)
        return _per_class_rates(self.episode_success, classes)

    def success_rate(self) -> np.ndarray:
        """Success rate per inner episode ``[E]``, averaged over task classes (Meta-World's
        ``metalearning_evaluation``: each class counts once, whatever its number of tasks)."""
        return np.mean(np.stack(list(self.success_rate_per_class().values())), axis=0)

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
        if self.episode_success is not None:
            out["success_rate"] = self.success_rate().tolist()
            out["success_rate_per_class"] = {
                name: rates.tolist() for name, rates in self.success_rate_per_class().items()
            }
            # Success within the trial: some inner episode succeeded.
            out["trial_success_rate"] = float(np.mean(np.nanmax(self.episode_success, axis=1)))
        if self.episode_forward is not None:
            # Adaptation on the direction tasks: the share of trials whose inner episode ran the
            # task's way (positive forward progress), per inner episode.
            out["episode_forward_mean"] = self.episode_forward.mean(axis=0).tolist()
            out["task_direction_rate"] = (self.episode_forward > 0).mean(axis=0).tolist()
            # Per task where there are few (HalfCheetahDir / AntDir: forward and backward), to tell an
            # agent that adapts from one that runs one way whatever the task.
            labels = np.asarray([str(task) for task in self.tasks])
            if len(labels) == len(self.episode_forward) and len(set(labels)) <= 8:
                ran = self.episode_forward > 0
                out["task_direction_rate_per_task"] = {
                    label: ran[labels == label].mean(axis=0).tolist() for label in sorted(set(labels))
                }
        for key, values in (("belief_entropy", self.belief_entropy), ("belief_kl", self.belief_kl)):
            if values is not None:
                # Trials that ended early leave NaN: average over the tasks still running.
                with np.errstate(invalid="ignore"):
                    out[f"{key}_mean"] = np.nanmean(values, axis=0).tolist()
        return out

    def to_json(self, path: str | None = None) -> str:
        text = json.dumps(self.summary(), indent=2)
        if path is not None:
            with open(path, "w") as handle:
                handle.write(text)
        return text


def _belief_statistics(policy: Any, n: int) -> tuple[np.ndarray, np.ndarray] | None:
    """Entropy and KL ``[n]`` of the last forward pass of ``policy`` (or its ``.policy``), if exposed."""
    source = getattr(policy, "policy", policy)
    output = getattr(source, "last_belief_output", None)
    if output is None or output.entropy is None:
        return None
    entropy = output.entropy.detach().cpu().numpy().astype(np.float64).reshape(-1)
    if output.kl_to_previous is None:
        kl = np.full(n, np.nan)
    else:
        kl = output.kl_to_previous.detach().cpu().numpy().astype(np.float64).reshape(-1)
    if entropy.shape != (n,) or kl.shape != (n,):
        return None
    return entropy, kl


def _pad_columns(arrays: list[np.ndarray]) -> np.ndarray:
    """Stack ``[n_i, T_i]`` blocks into ``[Σ n_i, max T_i]``, NaN-padded."""
    width = max(array.shape[1] for array in arrays)
    return np.concatenate(
        [np.pad(a, ((0, 0), (0, width - a.shape[1])), constant_values=np.nan) for a in arrays], axis=0
    )


def _rollout(
    policy: Any,
    is_reference: bool,
    env_id: str,
    n_tasks: int,
    seed: int,
    deterministic: bool,
    parallel: bool,
    env_kwargs: dict[str, Any],
    normalization: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """One trial on each of ``n_tasks`` envs seeded ``seed + i``, stepped together."""
    venv = make_vec(
        env_id, n_tasks, seed=seed, rl2_inputs=True, monitor=False, parallel=parallel, **env_kwargs
    )
    if normalization is not None:
        # Frozen statistics: observations (and prev_reward) as in training, raw rewards out.
        venv = RL2VecNormalize.frozen(normalization, venv)
    observation = venv.reset()
    tasks = list(venv.get_attr("task"))
    episodes = int(venv.get_attr("episodes_per_trial")[0])
    episode_returns = np.full((n_tasks, episodes), np.nan)
    episode_success = np.full((n_tasks, episodes), np.nan)
    episode_forward = np.zeros((n_tasks, episodes))
    has_forward = False
    task_classes: list[str | None] = [None] * n_tasks
    rewards: list[np.ndarray] = []
    regrets: list[np.ndarray] = []
    entropies: list[np.ndarray] = []
    kls: list[np.ndarray] = []
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
            statistics = _belief_statistics(policy, n_tasks)
            if statistics is not None:
                entropies.append(np.where(done, np.nan, statistics[0]))
                kls.append(np.where(done, np.nan, statistics[1]))
        observation, step_rewards, dones, infos = venv.step(actions)
        live = ~done
        rewards.append(np.where(live, step_rewards, np.nan))
        if "regret" in infos[0]:
            regrets.append(np.where(live, [info["regret"] for info in infos], np.nan))
        for i in np.flatnonzero(live):
            info = infos[i]
            if "task_class" in info:
                task_classes[i] = info["task_class"]
            if "forward_reward" in info:
                has_forward = True
                episode_forward[i, info["inner_episode"]] += info["forward_reward"]
            if info["inner_done"]:
                episode_returns[i, info["inner_episode"]] = info["inner_return"]
                if "success" in info:
                    episode_success[i, info["inner_episode"]] = float(info["success"])
        done |= dones
        # Envs whose trial ended restart (SB3 auto-reset); their new trials are not recorded.
        trial_start = np.asarray(dones, bool).copy()
    venv.close()
    has_success = not np.isnan(episode_success).all()
    return {
        "tasks": tasks,
        "episode_returns": episode_returns,
        "step_rewards": np.stack(rewards, axis=1),
        "cumulative_regret": np.nancumsum(np.stack(regrets, axis=1), axis=1) if regrets else None,
        "episode_success": episode_success if has_success else None,
        "task_classes": task_classes if all(name is not None for name in task_classes) else None,
        "episode_forward": episode_forward if has_forward else None,
        "belief_entropy": np.stack(entropies, axis=1) if entropies else None,
        "belief_kl": np.stack(kls, axis=1) if kls else None,
    }


def evaluate(
    policy: ReferencePolicy | PredictPolicy,
    env_id: str,
    n_tasks: int = 100,
    seed: int = 0,
    *,
    deterministic: bool = True,
    episodes_per_trial: int | None = None,
    n_envs: int | None = None,
    parallel: bool = False,
    normalization: RL2VecNormalize | dict[str, Any] | None = None,
    **env_kwargs: Any,
) -> EvaluationResult:
    """Roll out one full trial on each of ``n_tasks`` tasks and collect returns (regret, success,
    belief statistics where available).

    Task ``i`` is the first task drawn by an env seeded ``seed + i``, so every policy evaluated
    with the same ``seed`` meets the same tasks and the same noise.

    :param policy: a :class:`~bayes_envs.references.base.ReferencePolicy` or anything with SB3's
        recurrent ``predict`` (its recurrent state is reset at the trial start). If it (or its
        ``.policy``) has ``last_belief_output`` with an ``entropy``, the posterior entropy and
        ``KL(q_t ‖ q_{t−1})`` are recorded at every step.
    :param episodes_per_trial: run this many inner episodes per trial instead of the env's
        default, e.g. more than the agent was trained with (envs with that constant only).
    :param n_envs: step at most this many trials at once (default: all ``n_tasks``), to bound the
        memory of heavy envs (MuJoCo, Meta-World); the tasks do not depend on it.
    :param parallel: step the envs in subprocesses (``make_vec(..., parallel=True)``).
    :param normalization: observation/reward statistics the policy was trained with: an
        :class:`~bayes_envs.normalize.RL2VecNormalize` or its ``state_dict()``. Default: the
        policy's ``get_vec_normalize_env()`` (SB3 models trained on such a wrapper). They are
        frozen (a copy is used, never updated) and the returns reported are raw.
    :param env_kwargs: the env's constants, e.g. ``split="test"``.
    """
    n_tasks = check_int("n_tasks", n_tasks, 1)
    check_int("seed", seed, 0)
    n_envs = n_tasks if n_envs is None else min(check_int("n_envs", n_envs, 1), n_tasks)
    if episodes_per_trial is not None:
        env_kwargs["episodes_per_trial"] = check_int("episodes_per_trial", episodes_per_trial, 1)
    is_reference = isinstance(policy, ReferencePolicy)
    if not is_reference and not callable(getattr(policy, "predict", None)):
        raise TypeError(f"policy must be a ReferencePolicy or have predict(), got {type(policy).__name__}")
    if (
        normalization is None
        and not is_reference
        and callable(getattr(policy, "get_vec_normalize_env", None))
    ):
        normalization = policy.get_vec_normalize_env()
    if normalization is not None and is_reference:
        raise TypeError(
            "normalization is for learned policies: a ReferencePolicy reads the env's raw observations "
            "and rewards (its posterior thresholds are in reward units)"
        )
    if normalization is not None and not isinstance(normalization, dict):
        if not isinstance(normalization, RL2VecNormalize):
            kind = type(normalization).__name__
            raise TypeError(f"normalization must be an RL2VecNormalize or its state_dict(), got {kind}")
        normalization = normalization.state_dict()
    chunks = [
        _rollout(
            policy,
            is_reference,
            env_id,
            min(n_envs, n_tasks - start),
            seed + start,
            deterministic,
            parallel,
            env_kwargs,
            normalization,
        )
        for start in range(0, n_tasks, n_envs)
    ]

    def joined(key: str, pad: bool = False) -> np.ndarray | None:
        if any(chunk[key] is None for chunk in chunks):
            return None
        blocks = [chunk[key] for chunk in chunks]
        return _pad_columns(blocks) if pad else np.concatenate(blocks, axis=0)

    classes = (
        None
        if any(c["task_classes"] is None for c in chunks)
        else [name for chunk in chunks for name in chunk["task_classes"]]
    )
    name = getattr(policy, "name", None) or type(policy).__name__
    return EvaluationResult(
        env_id=env_id,
        policy=name,
        seed=seed,
        episode_returns=joined("episode_returns"),
        step_rewards=joined("step_rewards", pad=True),
        cumulative_regret=joined("cumulative_regret", pad=True),
        tasks=[task for chunk in chunks for task in chunk["tasks"]],
        episode_success=joined("episode_success"),
        task_classes=classes,
        episode_forward=joined("episode_forward"),
        belief_entropy=joined("belief_entropy", pad=True),
        belief_kl=joined("belief_kl", pad=True),
    )
