"""The README's main job (``bayes-rl train BayesGrid-v0``) on several seeds, aggregated over seeds.

Each seed runs the CLI exactly as a user would (one torch thread; ``--jobs`` runs at a time, one per
core), then the final meta-test of each run (``evaluation.json``: 420 fixed test tasks) is read and
aggregated: trial return and % of the exact Bayes-optimal return per seed, their mean with a 95%
Student-t interval over seeds, the worst seed, the mean return per inner episode, and the training
wall time of each run.

    python benchmarks/main_job.py [--seeds 0 1 2 3 4] [--timesteps N] [--jobs 2] [--runs DIR]

``--timesteps`` defaults to the CLI's own budget for BayesGrid-v0. Finished seeds (an
``evaluation.json`` in their run directory) are not run again, so an interrupted benchmark resumes.
Writes ``benchmarks/results/main_job.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
from learning import read_report, seed_stats, train_minutes, vector_stats

RESULTS = Path(__file__).resolve().parent / "results"
ENV_ID = "BayesGrid-v0"
BAYES_OPTIMAL = "Bayes-optimal (exact)"


def is_current(run_dir: Path, seed: int, timesteps: int | None) -> bool:
    """Whether ``run_dir`` holds a finished run of what ``bayes-rl train`` would train for ``seed``
    now (a run of older defaults is trained again)."""
    from bayes_agents import experiment

    if not (run_dir / "evaluation.json").is_file():
        return False
    overrides = {"seed": seed, **({} if timesteps is None else {"timesteps": timesteps})}
    expected = experiment.resolve_config(ENV_ID, overrides=overrides)
    return not experiment.config_differences(experiment.read_config(run_dir), expected)


def run_seed(seed: int, run_dir: Path, timesteps: int | None) -> float | None:
    """Train one seed with the CLI (skipped if the run directory holds its evaluation with the CLI's
    current default config); the wall time in seconds."""
    if is_current(run_dir, seed, timesteps):
        return None
    command = [
        sys.executable,
        "-m",
        "bayes_agents",
        "train",
        ENV_ID,
        "--seed",
        str(seed),
        "--out",
        str(run_dir),
    ]
    command += ["--no-progress", "--threads", "1", "--force"]
    if timesteps is not None:
        command += ["--timesteps", str(timesteps)]
    began = time.perf_counter()
    subprocess.run(command, check=True, env={**os.environ, "OMP_NUM_THREADS": "1"}, stdout=subprocess.DEVNULL)
    return time.perf_counter() - began


def summarize(seeds: list[int], runs: Path, wall_times: dict[int, float | None]) -> dict[str, Any]:
    """Per seed and over seeds (mean, 95% Student-t CI, worst seed) from each ``seed<S>/evaluation.json``."""
    per_seed = {}
    for seed in seeds:
        report = read_report(runs / f"seed{seed}")
        optimal_return = float(np.sum(report["exact"][BAYES_OPTIMAL]))  # per inner episode
        agent = report["agent"]
        per_seed[seed] = {
            "trial_return": agent["trial_return_mean"],
            "trial_return_ci95_over_tasks": agent["trial_return_ci95"],
            "percent_of_bayes_optimal": 100 * agent["trial_return_mean"] / optimal_return,
            "episode_returns": agent["episode_return_mean"],
            "num_timesteps": report["num_timesteps"],
            "wall_seconds": wall_times.get(seed),
            "train_seconds": 60 * train_minutes(runs / f"seed{seed}"),
        }
    returns = seed_stats({seed: row["trial_return"] for seed, row in per_seed.items()})
    percents = seed_stats({seed: row["percent_of_bayes_optimal"] for seed, row in per_seed.items()})
    worst = returns["worst_seed"]
    return {
        "trial_return_mean": returns["mean"],
        "trial_return_ci95_over_seeds": float("nan") if returns["ci95"] is None else returns["ci95"],
        "percent_of_bayes_optimal_mean": percents["mean"],
        "worst_seed": worst,
        "worst_percent_of_bayes_optimal": per_seed[worst]["percent_of_bayes_optimal"],
        "best_percent_of_bayes_optimal": max(percents["per_seed"]),
        "train_seconds_max": max(row["train_seconds"] for row in per_seed.values()),
        "episode_returns_mean": vector_stats(
            {seed: row["episode_returns"] for seed, row in per_seed.items()}
        )["mean"],
        "bayes_optimal_trial_return": returns["mean"] * 100 / percents["mean"],
        "per_seed": per_seed,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    parser.add_argument("--timesteps", type=int, default=None, help="default: the CLI's budget")
    parser.add_argument("--jobs", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--runs", type=Path, default=Path("runs/main_job"), help="run directories")
    parser.add_argument("--out", type=Path, default=RESULTS / "main_job.json")
    args = parser.parse_args()
    if args.jobs < 1:
        parser.error(f"--jobs must be >= 1, got {args.jobs}")
    with ThreadPoolExecutor(args.jobs) as pool:
        futures = {
            seed: pool.submit(run_seed, seed, args.runs / f"seed{seed}", args.timesteps)
            for seed in args.seeds
        }
        wall_times = {seed: future.result() for seed, future in futures.items()}
    summary = summarize(args.seeds, args.runs, wall_times)
    result = {
        "benchmark": "main_job",
        "command": f"bayes-rl train {ENV_ID} --seed S --threads 1"
        + (f" --timesteps {args.timesteps}" if args.timesteps else ""),
        "seeds": args.seeds,
        **summary,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1) + "\n")
    print(f"{'seed':>4}  {'trial return':>12}  {'% Bayes-opt':>11}  {'per inner episode':<28} {'wall s':>7}")
    for seed, row in summary["per_seed"].items():
        episodes = " / ".join(f"{value:.2f}" for value in row["episode_returns"])
        wall = "-" if row["wall_seconds"] is None else f"{row['wall_seconds']:.0f}"
        print(
            f"{seed:>4}  {row['trial_return']:>12.2f}  {row['percent_of_bayes_optimal']:>10.1f}%  "
            f"{episodes:<28} {wall:>7}"
        )
    print(
        f"mean {summary['trial_return_mean']:.2f} ± {summary['trial_return_ci95_over_seeds']:.2f} "
        f"({summary['percent_of_bayes_optimal_mean']:.1f}% of Bayes-optimal); worst seed "
        f"{summary['worst_seed']}: {summary['worst_percent_of_bayes_optimal']:.1f}%; wrote {args.out}"
    )


if __name__ == "__main__":
    main()
