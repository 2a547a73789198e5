"""Learning on Meta-World: RL² as ``bayes-rl train MetaWorld-ML1-v0 --set env.env_name=reach-v3`` trains
it, success per inner episode on train and test goals (ML1) or classes (ML10 / ML45).

Runs the sweep ``examples/configs/learning_metaworld.yaml`` (ML1 reach-v3, RL², seeds 0–1, 3M env
steps, the CLI's defaults: VariBAD's ML1 PPO column with observation and reward normalisation, 2 inner
episodes of Meta-World's 500 steps) with the sweep's local executor: finished runs are reused,
interrupted ones resume. Each run is meta-tested on 100 fixed tasks of the train split
(``evaluation.json``) and of the test split (``evaluation_test.json``): ML1's 50 held-out goals of the
same class; ML10 / ML45's held-out classes. ``--sweep examples/configs/learning_metaworld_ml10.yaml``
runs ML10 (one run) instead.

Writes per method: success rate per inner episode (Meta-World's protocol: an episode succeeds if some
step does; rates averaged over task classes) on both splits per seed, mean ± 95% Student-t CI, the
worst seed; per-class rates (mean over seeds); trial return; training minutes and env steps/s per run.
To ``benchmarks/results/learning_metaworld.json`` (``--out`` for another file; then
``python benchmarks/results_tables.py``). Published rates to compare with (far larger budgets):
VariBAD on ML1 reach 100% / 100% (episodes 1 / 2, test goals); the Meta-World paper's RL² on ML10
86.9% train / 35.8% test, on ML45 70.0% / 33.3%.

    python benchmarks/learning_metaworld.py [--sweep FILE] [--seeds 0 1] [--timesteps N] [--workers 2]
        [--runs DIR] [--out FILE] [--set KEY=VALUE ...]
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
from learning import (
    CONFIGS,
    TEST_SPLIT,
    Benchmark,
    read_report,
    run_benchmark,
    run_columns,
    seed_stats,
    vector_stats,
)

from bayes_agents import experiment

SPLITS = {"train": None, "test": "test"}


def _per_class(reports: dict[int, dict[str, Any]]) -> dict[str, list[float]]:
    """Class → success rate per inner episode, mean over seeds (classes every seed met)."""
    rates = [report["agent"]["success_rate_per_class"] for report in reports.values()]
    classes = sorted(set.intersection(*(set(r) for r in rates)))
    return {name: np.mean([r[name] for r in rates], axis=0).tolist() for name in classes}


def meta_test_curve(run_dir: Path) -> list[dict[str, Any]]:
    """The run's periodic meta-tests (``evaluations.jsonl``: train-split tasks): env steps, tasks and
    success rate per inner episode of each."""
    return [
        {key: record[key] for key in ("timesteps", "n_tasks", "success_rate")}
        for record in experiment.read_jsonl(run_dir / experiment.EVALUATIONS_FILE)
    ]


def metaworld_summary(runs: dict[str, dict[int, Path]]) -> dict[str, Any]:
    """Per method (``runs``: method → seed → run directory), on each split: success rate per inner
    episode (per seed, mean ± 95% t-CI, worst seed of the last episode), per class, trial success and
    trial return; training minutes and env steps/s per run; each run's periodic meta-tests."""
    methods = {}
    for method, seeds in runs.items():
        reports = {
            split: {s: read_report(d, name) for s, d in seeds.items()} for split, name in SPLITS.items()
        }
        row: dict[str, Any] = run_columns(seeds, reports["train"])
        for split, split_reports in reports.items():
            agents = {s: report["agent"] for s, report in split_reports.items()}
            row[split] = {
                "success_rate": vector_stats({s: a["success_rate"] for s, a in agents.items()}),
                "last_episode_success": seed_stats({s: a["success_rate"][-1] for s, a in agents.items()}),
                "trial_success_rate": seed_stats({s: a["trial_success_rate"] for s, a in agents.items()}),
                "trial_return": seed_stats({s: a["trial_return_mean"] for s, a in agents.items()}),
                "success_rate_per_class": _per_class(split_reports),
            }
        row["meta_test_curve"] = {str(s): meta_test_curve(d) for s, d in seeds.items()}
        methods[method] = row
    report = next(iter(reports["train"].values()))  # every run meets the same tasks
    return {
        "n_tasks": report["agent"]["n_tasks"],
        "env_kwargs": report["config"]["env"],
        "methods": methods,
    }


BENCHMARK = Benchmark(
    "learning_metaworld",
    CONFIGS / "learning_metaworld.yaml",
    metaworld_summary,
    splits=TEST_SPLIT,
    plots=True,
)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv``); the results written."""
    return run_benchmark(BENCHMARK, __doc__, argv)


if __name__ == "__main__":
    main()
