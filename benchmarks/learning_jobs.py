"""The job runner of the MuJoCo and Meta-World learning benchmarks (``learning_mujoco.py``,
``learning_metaworld.py``), which build ``BayesPPO`` with their own settings.

The grid and bandit benchmarks do not use it: they run the CLI's own configs through the sweep
runner (``learning.py``, ``bayes_agents.sweep``).

A *job* trains one (method, seed) with ``BayesPPO`` for a budget of env steps, evaluating the
deterministic policy on a fixed, seeded set of test tasks every ``eval_every`` steps (the learning
curve) and once more at the end with more tasks. Jobs run in parallel processes, one torch thread
each; results aggregate over seeds as mean ± 95% CI (normal approximation over seeds).
"""

from __future__ import annotations

import json
import multiprocessing
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from stable_baselines3.common.callbacks import BaseCallback

import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.experiment import normalized_env
from bayes_agents.methods import get_method
from bayes_envs.evaluation import evaluate, mean_ci

RESULTS = Path(__file__).parent / "results"
#: Test tasks are drawn from seeds 10,000+ (training envs use seeds below), identical for every job.
TEST_SEED = 10_000


@dataclass
class Job:
    env_id: str
    method: str
    seed: int
    timesteps: int
    n_envs: int
    ppo: dict[str, Any]
    policy_kwargs: dict[str, Any]
    eval_every: int
    eval_tasks: int
    final_eval_tasks: int
    env_kwargs: dict[str, Any] = field(default_factory=dict)
    #: Final evaluations, label → env keywords (e.g. ``{"test": {"split": "test"}}``); the learning
    #: curve uses the first one.
    final_evals: dict[str, dict[str, Any]] = field(default_factory=lambda: {"test": {}})
    #: ``{"norm_obs": bool, "norm_reward": bool}``: train on an ``RL2VecNormalize``-wrapped env (its
    #: statistics are frozen in the evaluations, which report raw returns); empty: no normalisation.
    normalize: dict[str, bool] = field(default_factory=dict)


def method_seed_jobs(
    env_id: str,
    methods: dict[str, dict[str, Any]],
    names: list[str],
    seeds: int,
    timesteps: int,
    n_envs: int,
    ppo: dict[str, Any],
    eval_every: int,
    eval_tasks: int,
    final_eval_tasks: int,
    **job_fields: Any,
) -> list[Job]:
    """One job per (method in ``names``, seed < ``seeds``); ``methods[name]`` is its ``policy_kwargs``."""
    return [
        Job(
            env_id,
            name,
            seed,
            timesteps,
            n_envs,
            ppo,
            methods[name],
            eval_every,
            eval_tasks,
            final_eval_tasks,
            **job_fields,
        )
        for name in names
        for seed in range(seeds)
    ]


class PeriodicEvaluation(BaseCallback):
    def __init__(self, job: Job) -> None:
        super().__init__()
        self.job = job
        self.curve: list[dict[str, Any]] = []
        self.next_eval = 0

    def _on_training_start(self) -> None:
        # A fine-tuning run continues the step count: evaluate at its start, then every eval_every.
        self.next_eval = self.num_timesteps

    def _on_step(self) -> bool:
        if self.num_timesteps >= self.next_eval:
            env_kwargs = next(iter(self.job.final_evals.values()))
            summary = evaluate(
                self.model, self.job.env_id, n_tasks=self.job.eval_tasks, seed=TEST_SEED, **env_kwargs
            ).summary()
            self.curve.append({"timesteps": self.num_timesteps, **summary})
            self.next_eval += self.job.eval_every
        return True


def _final_evaluations(model: Any, job: Job) -> dict[str, Any]:
    return {
        label: evaluate(
            model, job.env_id, n_tasks=job.final_eval_tasks, seed=TEST_SEED, **env_kwargs
        ).summary()
        for label, env_kwargs in job.final_evals.items()
    }


def _train(model: Any, job: Job, timesteps: int, method: str) -> dict[str, Any]:
    callback = PeriodicEvaluation(job)
    start = time.perf_counter()
    model.learn(timesteps, callback=callback, reset_num_timesteps=False)
    minutes = (time.perf_counter() - start) / 60
    return {
        "method": method,
        "seed": job.seed,
        "minutes": minutes,
        "steps_per_s": timesteps / minutes / 60,
        "curve": callback.curve,
        "final": _final_evaluations(model, job),
    }


def run_job(job: Job) -> list[dict[str, Any]]:
    """Train ``job.method`` and evaluate it (a one-element list)."""
    torch.set_num_threads(1)
    venv = bayes_envs.make_vec(job.env_id, job.n_envs, seed=job.seed * 1000, **job.env_kwargs)
    venv = normalized_env(venv, {**job.normalize, "ppo": job.ppo})
    model = BayesPPO(
        get_method(job.method.split(":")[0]).policy_class,  # "name:variant" labels a variant
        venv,
        seed=job.seed,
        device="cpu",
        policy_kwargs=job.policy_kwargs,
        **job.ppo,
    )
    return [_train(model, job, job.timesteps, job.method)]


def run_jobs(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    if workers <= 1:
        nested = [run_job(job) for job in jobs]
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            nested = pool.map(run_job, jobs, chunksize=1)
    return [result for results in nested for result in results]


def aggregate(results: list[dict[str, Any]], label: str, key: str) -> dict[str, dict[str, Any]]:
    """Per method: mean ± 95% CI over seeds of ``final[label][key]`` (a number or a list)."""
    out: dict[str, dict[str, Any]] = {}
    for method in dict.fromkeys(r["method"] for r in results):
        values = np.array([r["final"][label][key] for r in results if r["method"] == method], np.float64)
        mean, ci = mean_ci(values)
        out[method] = {
            "mean": np.atleast_1d(mean).tolist(),
            "ci95": np.atleast_1d(ci).tolist(),
            "n_seeds": len(values),
            "per_seed": values.tolist(),
            "minutes": [r["minutes"] for r in results if r["method"] == method],
        }
    return out


def save(name: str, payload: dict[str, Any]) -> Path:
    path = RESULTS / f"{name}.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2))
    return path
