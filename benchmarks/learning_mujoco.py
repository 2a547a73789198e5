"""Learning on the MuJoCo meta-RL envs: RL² and VariBAD as ``bayes-rl train ENV --method M`` trains them,
next to stock PPO (no memory, so it cannot adapt) with the same normalisation and budget.

Runs the sweep ``examples/configs/learning_mujoco.yaml`` (HalfCheetahDir-v0 and HalfCheetahVel-v0 ×
methods rl2, varibad × seeds 0–1, 3M env steps each, at the CLI's defaults: the VariBAD reference's
PPO settings and model sizes with observation and reward normalisation) with the sweep's local
executor: finished runs are reused, interrupted ones resume. Every run is meta-tested on its train
split (``evaluation.json``) and its test split (``evaluation_test.json``), 100 fixed tasks each.

The baseline is Stable-Baselines3's ``PPO("MlpPolicy")`` on the plain observations
(``make_vec(..., rl2_inputs=False)``) in SB3's ``VecNormalize``, with the env's PPO settings (those of
RL²), its number of envs, budget and seeds, meta-tested on the same tasks (label ``stock PPO``).

Writes per env and method: trial return and return per inner episode on the test split per seed,
mean ± 95% Student-t CI, the worst seed; on the direction tasks the share of test trials whose inner
episode ran the task's way (``task_direction_rate``: positive forward progress); the train-split
trial return; training minutes and env steps/s per run; the IQM with stratified-bootstrap CIs. To
``benchmarks/results/learning_mujoco.json`` (then ``python benchmarks/results_tables.py``).

    python benchmarks/learning_mujoco.py [--methods rl2 varibad] [--seeds 0 1] [--timesteps N]
        [--workers 2] [--runs DIR] [--out FILE] [--set KEY=VALUE ...]

AntDir-v0 / AntGoal-v0 run the same way: add them to the sweep file's ``env_id`` list.
"""

from __future__ import annotations

import json
import pickle
import time
from pathlib import Path
from typing import Any

import numpy as np
from learning import (
    CONFIGS,
    TEST_SPLIT,
    Benchmark,
    finished_training,
    read_report,
    run_benchmark,
    run_columns,
    run_in_processes,
    seed_stats,
    vector_stats,
)

from bayes_agents import experiment, sweep

STOCK_PPO = "stock PPO"


# ------------------------------------------------------------------------------------ the baseline
class StockPolicy:
    """A stock SB3 model trained on the plain observations, evaluated on the RL²-input trials of
    :func:`bayes_envs.evaluation.evaluate`: it reads ``observation["obs"]``, normalised with the frozen
    statistics of its ``VecNormalize`` (if it has one), and keeps no state across steps.

    :param name: the name ``evaluate`` reports.
    """

    def __init__(self, model: Any, normalizer: Any = None, name: str = STOCK_PPO) -> None:
        self.model, self.normalizer, self.name = model, normalizer, name

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: Any = None,
        episode_start: Any = None,
        deterministic: bool = True,
    ) -> tuple[np.ndarray, Any]:
        plain = observation["obs"]
        if self.normalizer is not None:
            plain = self.normalizer.normalize_obs(plain)
        action, _ = self.model.predict(plain, deterministic=deterministic)
        return action, state


def stock_config(spec: sweep.SweepSpec, env_id: str, seed: int) -> dict[str, Any]:
    """The resolved RL² config of ``env_id`` in the sweep (budget, envs, PPO, normalisation, tasks)."""
    base = {key: value for key, value in spec.base.items() if key not in ("env_id", "method")}
    return experiment.resolve_config(env_id, "rl2", file_config=base, overrides={"seed": seed})


#: What a finished stock-PPO training leaves in its run directory (before its meta-tests).
TRAINED_FILES = ("model.zip", "vec_normalize.pkl", "train.json")


def stock_ppo_job(job: dict[str, Any]) -> None:
    """Train (unless its run directory holds this config's trained model) and meta-test one
    stock-PPO run; kept as is if its meta-tests are there."""
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    import bayes_envs
    from bayes_agents.ppo import resolve_schedules
    from bayes_envs.evaluation import evaluate

    config, run_dir = job["config"], Path(job["run_dir"])
    files = [run_dir / experiment.EVALUATION_FILE, run_dir / "evaluation_test.json"]
    training = finished_training(run_dir, TRAINED_FILES, config)
    trained = training is not None
    if trained and all(path.is_file() for path in files):
        return
    experiment.set_torch_threads(1)
    venv = bayes_envs.make_vec(
        config["env_id"], config["n_envs"], seed=config["seed"], rl2_inputs=False, **config["env"]
    )
    if trained:
        model = PPO.load(run_dir / "model.zip", device="cpu")
        normalizer = VecNormalize.load(str(run_dir / "vec_normalize.pkl"), venv)
        seconds = training["train_seconds"]
    else:
        ppo = resolve_schedules(config["ppo"])
        normalizer = VecNormalize(
            venv, norm_obs=config["norm_obs"], norm_reward=config["norm_reward"], gamma=ppo["gamma"]
        )
        model = PPO("MlpPolicy", normalizer, seed=config["seed"], device="cpu", verbose=0, **ppo)
        start = time.perf_counter()
        model.learn(config["timesteps"])
        seconds = time.perf_counter() - start
        run_dir.mkdir(parents=True, exist_ok=True)
        experiment.atomic_write_bytes(run_dir / "model.zip", model.save)
        # VecNormalize.save pickles itself (without its env) to a path; the same into the atomic file
        experiment.atomic_write_bytes(
            run_dir / "vec_normalize.pkl", lambda stream: pickle.dump(normalizer, stream)
        )
        train = {"config": config, "train_seconds": seconds, "num_timesteps": int(model.num_timesteps)}
        experiment.atomic_write_text(run_dir / "train.json", json.dumps(train, indent=2))
    normalizer.training = False
    policy = StockPolicy(model, normalizer)
    tasks = {"n_tasks": config["final_eval_tasks"], "seed": config["eval_seed"]}
    for path, overrides in zip(files, ({}, TEST_SPLIT["test"]), strict=True):
        result = evaluate(policy, config["env_id"], **tasks, **{**config["env"], **overrides})
        report = {
            "config": config,
            "num_timesteps": int(model.num_timesteps),
            "agent": result.summary(),
            "references": {},
            "exact": {},
            "train_seconds": seconds,
        }
        experiment.atomic_write_text(path, json.dumps(experiment.jsonable(report), indent=2))


def stock_ppo_baselines(spec: sweep.SweepSpec, workers: int) -> dict[str, dict[str, dict[int, Path]]]:
    """Train (or reuse) stock PPO on every env of the sweep, for each of its seeds."""
    env_ids = spec.grid.get("env_id") or [spec.base["env_id"]]
    runs = {
        env_id: {STOCK_PPO: {s: spec.out / env_id / "stock_ppo" / f"seed_{s}" for s in spec.seeds}}
        for env_id in env_ids
    }
    jobs = [
        {"config": stock_config(spec, env_id, seed), "run_dir": str(run_dir)}
        for env_id in env_ids
        for seed, run_dir in runs[env_id][STOCK_PPO].items()
    ]
    run_in_processes(stock_ppo_job, jobs, workers)
    return runs


# ------------------------------------------------------------------------------------ the summary
def mujoco_summary(runs: dict[str, dict[int, Path]]) -> dict[str, Any]:
    """Per method (``runs``: method → seed → run directory) on the test split: trial return, return
    per inner episode, episode 2 − episode 1, and where the env has directions the share of trials
    whose inner episode ran the task's way; the train-split trial return; minutes and env steps/s."""
    methods = {}
    for method, seeds in runs.items():
        test = {s: read_report(d, "test") for s, d in seeds.items()}
        train = {s: read_report(d) for s, d in seeds.items()}
        agents = {s: report["agent"] for s, report in test.items()}
        n_tasks = next(iter(agents.values()))["n_tasks"]  # every run meets the same tasks
        row = {
            **run_columns(seeds, test),
            "trial_return": seed_stats({s: a["trial_return_mean"] for s, a in agents.items()}),
            "train_trial_return": seed_stats({s: r["agent"]["trial_return_mean"] for s, r in train.items()}),
            "episode_returns": vector_stats({s: a["episode_return_mean"] for s, a in agents.items()}),
            "second_minus_first": seed_stats(
                {s: a["episode_return_mean"][1] - a["episode_return_mean"][0] for s, a in agents.items()}
            ),
        }
        if all("task_direction_rate" in a for a in agents.values()):
            row["task_direction_rate"] = vector_stats(
                {s: a["task_direction_rate"] for s, a in agents.items()}
            )
            row["second_episode_direction_rate"] = seed_stats(
                {s: a["task_direction_rate"][1] for s, a in agents.items()}
            )
            if all("task_direction_rate_per_task" in a for a in agents.values()):
                per_task = {s: a["task_direction_rate_per_task"] for s, a in agents.items()}
                row["task_direction_rate_per_task"] = {
                    task: vector_stats({s: rates[task] for s, rates in per_task.items()})
                    for task in next(iter(per_task.values()))
                }
        methods[method] = row
    return {"n_tasks": n_tasks, "split": "test", "methods": methods}


BENCHMARK = Benchmark(
    "learning_mujoco",
    CONFIGS / "learning_mujoco.yaml",
    mujoco_summary,
    splits=TEST_SPLIT,
    baselines=stock_ppo_baselines,
    plots=True,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv``); the results written."""
    return run_benchmark(BENCHMARK, __doc__, argv)


if __name__ == "__main__":
    main()
