"""Belief extractors under stock PPO, learning next to the recurrent policies at the same budget.

Runs a sweep of recurrent belief policies at the CLI's defaults (``--env grid``:
``examples/configs/learning_extractors_grid.yaml``, RL² and Laplace-VRNN on BayesGrid-v0; ``--env
bandit``: ``examples/configs/learning_extractors_bandit.yaml``, on BayesBandit-v0 trained on
α = 0.2 and also meta-tested on α = 0.3) and, for each of its methods and seeds, stock SB3
``PPO("MultiInputPolicy")`` with the method's features extractor: the same belief and heads
(:func:`bayes_agents.methods.extractor_kwargs` of the run's policy keywords), PPO settings, envs,
budget, seed and observation/reward normalisation (``RL2VecNormalize`` under
``TrialHistoryVecWrapper``, so the history holds the rewards the recurrent belief reads), with
``BeliefAuxLossCallback``. Every run is meta-tested on the same fixed test tasks (the extractor
through :class:`~bayes_agents.extractors.HistoryPredictor`) and summarised as the learning
benchmarks are (grid: % of the exact Bayes-optimal trial return; bandit: regret at t = 50).
Finished runs are reused (an extractor run keeps ``model.zip``, its statistics and ``train.json``).

    python benchmarks/learning_extractors.py [--env grid|bandit] [--seeds 0 1 2] [--timesteps N]
        [--workers 2] [--runs DIR] [--out FILE] [--set KEY=VALUE ...]

The other options are those of the learning benchmarks (``benchmarks/learning.py``). Writes
``benchmarks/results/learning_extractors_<env>.json``.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from learning import (
    CONFIGS,
    TEST_SPLIT,
    Benchmark,
    bandit_summary,
    finished_training,
    grid_summary,
    run_benchmark,
    run_in_processes,
)

from bayes_agents import experiment, sweep

#: What a finished extractor training leaves in its run directory (before its meta-tests).
TRAINED_FILES = ("model.zip", "normalization.json", "train.json")


def extractor_label(method: str) -> str:
    from bayes_agents.extractors import EXTRACTORS

    return f"PPO + {EXTRACTORS[method].__name__}"


def extractor_job(job: dict[str, Any]) -> None:
    """Train (unless its run directory holds this config's trained model) and meta-test one stock-PPO
    run with the extractor of ``config["method"]``; kept as is if its meta-tests are there."""
    from stable_baselines3 import PPO

    import bayes_envs
    from bayes_agents.callbacks import BeliefAuxLossCallback
    from bayes_agents.extractors import HistoryPredictor
    from bayes_agents.methods import extractor_kwargs
    from bayes_agents.ppo import resolve_schedules
    from bayes_envs import RL2VecNormalize
    from bayes_envs.evaluation import evaluate
    from bayes_envs.references import exact_references
    from bayes_envs.wrappers import TrialHistoryVecWrapper

    config, run_dir, splits = job["config"], Path(job["run_dir"]), job["splits"]
    files = {run_dir / experiment.EVALUATION_FILE: {}} | {
        run_dir / f"evaluation_{label}.json": overrides for label, overrides in splits.items()
    }
    training = finished_training(run_dir, TRAINED_FILES, config)
    trained = training is not None
    if trained and all(path.is_file() for path in files):
        return
    experiment.set_torch_threads(1)
    venv = experiment.normalized_env(
        bayes_envs.make_vec(config["env_id"], config["n_envs"], seed=config["seed"], **config["env"]), config
    )
    normalizer = venv if isinstance(venv, RL2VecNormalize) else None
    if trained:
        model = PPO.load(run_dir / "model.zip", device="cpu")
        text = (run_dir / "normalization.json").read_text()
        statistics = None if text == "null" else RL2VecNormalize.state_from_json(text)
        seconds = training["train_seconds"]
    else:
        policy_kwargs = extractor_kwargs(config["method"], experiment.policy_kwargs(config))
        model = PPO(
            "MultiInputPolicy",
            TrialHistoryVecWrapper(venv),
            policy_kwargs=policy_kwargs,
            seed=config["seed"],
            device="cpu",
            **resolve_schedules(config["ppo"]),
        )
        start = time.perf_counter()
        model.learn(config["timesteps"], callback=BeliefAuxLossCallback(seed=config["seed"]))
        seconds = time.perf_counter() - start
        run_dir.mkdir(parents=True, exist_ok=True)
        experiment.atomic_write_bytes(run_dir / "model.zip", model.save)
        statistics = normalizer.state_dict() if normalizer is not None else None
        text = normalizer.to_json() if normalizer is not None else "null"
        experiment.atomic_write_text(run_dir / "normalization.json", text)
        train = {"config": config, "train_seconds": seconds, "num_timesteps": int(model.num_timesteps)}
        experiment.atomic_write_text(run_dir / "train.json", json.dumps(train, indent=2))
    predictor = HistoryPredictor(model, name=extractor_label(config["method"]))
    tasks = {"n_tasks": config["final_eval_tasks"], "seed": config["eval_seed"]}
    for path, overrides in files.items():
        env_kwargs = {**config["env"], **overrides}
        result = evaluate(predictor, config["env_id"], **tasks, normalization=statistics, **env_kwargs)
        report = {
            "config": config,
            "num_timesteps": int(model.num_timesteps),
            "agent": result.summary(),
            "references": {},  # the recurrent runs' meta-tests hold them (same tasks)
            "exact": exact_references(config["env_id"], env_kwargs),
            "train_seconds": seconds,
        }
        experiment.atomic_write_text(path, json.dumps(experiment.jsonable(report), indent=2))


def extractor_baselines(
    spec: sweep.SweepSpec, workers: int, splits: dict[str, dict[str, Any]]
) -> dict[str, dict[str, dict[int, Path]]]:
    """Train (or reuse) PPO + extractor for every method and seed of the sweep (one env)."""
    env_id = spec.base["env_id"]
    methods = spec.grid.get("method") or [spec.base["method"]]
    runs: dict[str, dict[int, Path]] = {}
    jobs = []
    for method in methods:
        runs[extractor_label(method)] = {}
        for job in sweep.expand(sweep.SweepSpec(spec.out, spec.seeds, {**spec.base, "method": method}, {})):
            run_dir = spec.out / env_id / f"ppo_extractor_{method}" / f"seed_{job.seed}"
            runs[extractor_label(method)][job.seed] = run_dir
            jobs.append({"config": job.config, "run_dir": str(run_dir), "splits": splits})
    run_in_processes(extractor_job, jobs, workers)
    return {env_id: runs}


BENCHMARKS = {
    "grid": Benchmark(
        "learning_extractors_grid",
        CONFIGS / "learning_extractors_grid.yaml",
        grid_summary,
        baselines=lambda spec, workers: extractor_baselines(spec, workers, {}),
        script=("benchmarks/learning_extractors.py", "--env", "grid"),
    ),
    "bandit": Benchmark(
        "learning_extractors_bandit",
        CONFIGS / "learning_extractors_bandit.yaml",
        bandit_summary,
        splits=TEST_SPLIT,
        baselines=lambda spec, workers: extractor_baselines(spec, workers, TEST_SPLIT),
        script=("benchmarks/learning_extractors.py", "--env", "bandit"),
    ),
}


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark of ``--env`` with the rest of the command line ``argv`` (default ``sys.argv``)."""
    choice = argparse.ArgumentParser(add_help=False)
    choice.add_argument("--env", choices=sorted(BENCHMARKS), default="grid")
    known, rest = choice.parse_known_args(argv)
    return run_benchmark(BENCHMARKS[known.env], __doc__, rest)


if __name__ == "__main__":
    main()
