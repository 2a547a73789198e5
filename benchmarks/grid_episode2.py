"""Where grid agents lose return after the first inner episode: episode 2 by what episode 1 found.

On BayesGrid-v0 the exact Bayes-optimal policy searches in episode 1 and, from episode 2 on, walks
to the goal if it was found, or searches the cells episode 1 left out if it was not. For each run
directory this evaluates the agent and the Bayes-optimal policy on the run's fixed test tasks (its
``final_eval_tasks`` and ``eval_seed``: the tasks of its ``evaluation.json``) and splits the tasks by
episode 1's outcome: goal entered before the episode's last step, entered on the last step (its
reward arrives with episode 2's first input, and the cell is never observed), or not entered. Per
group: the share of tasks and the mean return of episodes 2 and 3.

    python benchmarks/grid_episode2.py RUN_DIR [RUN_DIR ...] [--out FILE]

Writes ``benchmarks/results/grid_episode2.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from learning import git_commit, repo_relative

from bayes_agents import experiment
from bayes_agents.experiment.evaluation import load_model
from bayes_envs.evaluation import EvaluationResult, evaluate
from bayes_envs.references.grid import GridBayesOptimal

RESULTS = Path(__file__).parent / "results"
GROUPS = ("found before the last step", "found on the last step", "not found")


def episode1_groups(result: EvaluationResult, goal_reward: float) -> dict[str, np.ndarray]:
    """Task masks ``[N]`` by episode 1's outcome (the goal's reward ``goal_reward`` seen or not)."""
    episodes = result.episode_returns.shape[1]
    rewards = result.step_rewards.reshape(len(result.step_rewards), episodes, -1)[:, 0]
    hits = rewards >= goal_reward - 1e-6
    found = hits.any(axis=1)
    first = np.where(found, hits.argmax(axis=1), -1)
    last = rewards.shape[1] - 1
    return dict(zip(GROUPS, (found & (first < last), found & (first == last), ~found), strict=True))


def split_returns(result: EvaluationResult, goal_reward: float) -> dict[str, dict[str, float | None]]:
    """Per group of :func:`episode1_groups`: share of tasks, mean return of episodes 2 and 3."""
    rows = {}
    for name, mask in episode1_groups(result, goal_reward).items():
        returns = result.episode_returns[mask]
        rows[name] = {
            "share": float(mask.mean()),
            "episode_2": float(returns[:, 1].mean()) if mask.any() else None,
            "episode_3": float(returns[:, 2].mean()) if mask.any() else None,
        }
    return rows


def run_row(run_dir: Path, reference: GridBayesOptimal) -> dict[str, Any]:
    config = experiment.read_json(run_dir / "config.json")
    if config["env_id"] != "BayesGrid-v0":
        raise SystemExit(f"{run_dir}: a {config['env_id']} run; this script reads BayesGrid-v0 runs")
    env_kwargs = config.get("env", {})
    n_tasks, seed = config["final_eval_tasks"], config["eval_seed"]
    goal_reward = float(env_kwargs.get("goal_reward", 1.0))
    agent = evaluate(load_model(run_dir), "BayesGrid-v0", n_tasks=n_tasks, seed=seed, **env_kwargs)
    optimal = evaluate(reference, "BayesGrid-v0", n_tasks=n_tasks, seed=seed, **env_kwargs)
    return {
        "run_dir": repo_relative(run_dir),
        "method": config["method"],
        "seed": config["seed"],
        "timesteps": config["timesteps"],
        "ppo": config.get("ppo", {}),
        "n_tasks": n_tasks,
        "eval_seed": seed,
        "episode_returns": agent.episode_returns.mean(axis=0).tolist(),
        "agent": split_returns(agent, goal_reward),
        "bayes_optimal": split_returns(optimal, goal_reward),
    }


def _number(value: float | None) -> str:
    return "–" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "grid_episode2.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    reference = GridBayesOptimal()
    rows = [run_row(run_dir, reference) for run_dir in args.run_dirs]
    print(f"{'run':<55}{'group':<28}{'share':>7}{'ep 2':>7}{'ep 3':>7}{'B-opt ep 2':>12}")
    for row in rows:
        for name in GROUPS:
            agent, optimal = row["agent"][name], row["bayes_optimal"][name]
            cells = [_number(agent["episode_2"]), _number(agent["episode_3"]), _number(optimal["episode_2"])]
            print(
                f"{row['run_dir']:<55}{name:<28}{agent['share']:>7.1%}{cells[0]:>7}{cells[1]:>7}{cells[2]:>12}"
            )
    payload = {
        "benchmark": "grid_episode2",
        "command": " ".join(["python benchmarks/grid_episode2.py", *map(repo_relative, args.run_dirs)]),
        "git": git_commit(),
        "runs": rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
