"""When in a bandit trial an agent's regret accrues, next to the references on the same tasks.

Reads the ``evaluation.json`` of finished BayesBandit-v0 run directories (``bayes-rl train`` or a
sweep: the agent's and the references' cumulative regret per pull on the run's fixed test tasks)
and reports, per run, the cumulative regret at a few pulls and the regret per pull over the
trial's last stretch (``--late``, pulls 30 → 50 by default), with the same for each reference
(greedy posterior mean, Thompson sampling, ...). A run close to a reference early and far from it
late loses in exploitation, not in exploration.

    python benchmarks/bandit_regret_profile.py RUN_DIR [RUN_DIR ...] [--out FILE]

Writes ``benchmarks/results/bandit_regret_profile.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from learning import git_commit, repo_relative

RESULTS = Path(__file__).parent / "results"
PULLS = (1, 5, 10, 20, 30, 40, 50)


def profile(cumulative_regret: list[float], pulls: tuple[int, ...], late: tuple[int, int]) -> dict[str, Any]:
    """Cumulative regret at ``pulls`` (1-based); mean regret per pull from ``late[0]`` to ``late[1]``."""
    regret = np.asarray(cumulative_regret, np.float64)
    if not 1 <= late[0] < late[1] <= len(regret):
        raise ValueError(f"--late must satisfy 1 <= start < end <= {len(regret)} (the trial), got {late}")
    return {
        "at_pull": {str(t): float(regret[t - 1]) for t in pulls if t <= len(regret)},
        "late_regret_per_pull": float((regret[late[1] - 1] - regret[late[0] - 1]) / (late[1] - late[0])),
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--late", nargs=2, type=int, default=(30, 50), metavar=("START", "END"))
    parser.add_argument("--out", type=Path, default=RESULTS / "bandit_regret_profile.json")
    args = parser.parse_args(argv)
    late = tuple(args.late)
    runs, references = {}, {}
    for run_dir in args.run_dirs:
        path = run_dir / "evaluation.json"
        if not path.is_file():
            raise ValueError(f"run_dirs: {run_dir} has no evaluation.json (an unfinished or unevaluated run)")
        evaluation = json.loads(path.read_text())
        if evaluation["agent"].get("env_id") != "BayesBandit-v0":
            raise ValueError(f"run_dirs: {run_dir} is not a BayesBandit-v0 run")
        runs[repo_relative(run_dir.resolve())] = {
            "seed": evaluation["config"]["seed"],
            "config": {key: evaluation["config"][key] for key in ("ppo", "policy", "norm_prev_reward")},
            "final_regret": evaluation["agent"]["final_regret_mean"],
            **profile(evaluation["agent"]["cumulative_regret_mean"], PULLS, late),
        }
        for name, reference in evaluation["references"].items():
            # The references are evaluated on the run's fixed tasks: the same for every run of one
            # eval_seed and task count, so the first run's are kept.
            references.setdefault(name, profile(reference["cumulative_regret_mean"], PULLS, late))
    result = {
        "benchmark": "bandit_regret_profile",
        "command": "python benchmarks/bandit_regret_profile.py " + " ".join(runs),
        "git": git_commit(),
        "late": list(late),
        "runs": runs,
        "references": references,
    }
    header = " ".join(f"{t:>6}" for t in PULLS)
    print(f"{'cumulative regret at pull':<64}{header}  per pull {late[0]}→{late[1]}")
    for name, row in [*runs.items(), *((f"{k} (reference)", v) for k, v in references.items())]:
        cells = " ".join(f"{row['at_pull'].get(str(t), float('nan')):6.2f}" for t in PULLS)
        print(f"{name[-63:]:<64}{cells}  {row['late_regret_per_pull']:.3f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    tmp = args.out.with_suffix(".tmp")
    tmp.write_text(json.dumps(result, indent=1) + "\n")
    tmp.replace(args.out)
    return result


if __name__ == "__main__":
    main()
