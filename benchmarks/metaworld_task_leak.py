"""How much of an ML1 task the agent can read from its first observation, and what that is worth.

In Meta-World's ML1 the hidden goal is drawn together with the object's start position (``rand_vec``
is object position and goal), and the observation shows the object position (reach-v3: entries
4:7) from the first step. With 50 train tasks, the start observation then names the train task,
so a policy can map it to the task's goal without ever searching by reward. This script measures,
from Meta-World's own tasks (no agent involved), per split:

* ``distinct_start_observations``: how many tasks have different start observations, and the
  smallest distance between two of them (the train task is identifiable if all 50 differ);
* ``lookup_success``: success of the policy that goes to the goal of the train task whose start
  observation is nearest: 100% on train tasks by construction, and on test tasks the rate at which
  a memorised train goal lands within Meta-World's success radius of the held-out goal;
* ``constant_point_success``: success of going to one fixed point, the one that covers the most
  train goals (a policy that ignores the task), on both splits;
* ``object_goal_correlation``: correlations between object position and goal coordinates over
  the split's tasks (near 0: the object tells the task's identity, not where its goal is).

    python benchmarks/metaworld_task_leak.py [--env-name reach-v3] [--benchmark-seed 0] [--out FILE]

Writes ``benchmarks/results/metaworld_task_leak.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from learning import git_commit

from bayes_agents.experiment import atomic_write_text
from bayes_envs.meta_world import get_benchmark

RESULTS = Path(__file__).parent / "results"
#: Meta-World's success radius of reach-v3 (``reach_dist <= 0.05``).
SUCCESS_RADIUS = 0.05
#: reach-v3 observation entries of the first object's position.
OBJECT_SLICE = slice(4, 7)


def start_states(benchmark: Any, split: str) -> tuple[np.ndarray, np.ndarray]:
    """Start observations ``[N, 39]`` and goals ``[N, 3]`` of the split's tasks, in task order."""
    classes = benchmark.train_classes if split == "train" else benchmark.test_classes
    tasks = benchmark.train_tasks if split == "train" else benchmark.test_tasks
    envs = {name: cls() for name, cls in classes.items()}
    observations, goals = [], []
    for task in tasks:
        env = envs[task.env_name]
        env.set_task(task)
        observation, _ = env.reset()
        observations.append(np.asarray(observation, np.float64))
        goals.append(np.asarray(env._target_pos, np.float64))
    for env in envs.values():
        env.close()
    return np.stack(observations), np.stack(goals)


def pairwise(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Euclidean distances ``[len(a), len(b)]``."""
    return np.linalg.norm(a[:, None, :] - b[None, :, :], axis=-1)


def best_constant_point(goals: np.ndarray, radius: float, grid: int = 41) -> np.ndarray:
    """The point of a grid over the goals' bounding box (and the goals themselves) within
    ``radius`` of the most ``goals``."""
    axes = [np.linspace(lo, hi, grid) for lo, hi in zip(goals.min(0), goals.max(0), strict=True)]
    candidates = np.concatenate([np.stack(np.meshgrid(*axes), -1).reshape(-1, 3), goals])
    covered = (pairwise(candidates, goals) <= radius).sum(1)
    return candidates[int(covered.argmax())]


def analyse(env_name: str, benchmark_seed: int) -> dict[str, Any]:
    benchmark = get_benchmark("ML1", env_name, benchmark_seed)
    train_obs, train_goals = start_states(benchmark, "train")
    test_obs, test_goals = start_states(benchmark, "test")
    constant = best_constant_point(train_goals, SUCCESS_RADIUS)
    splits: dict[str, Any] = {}
    for split, obs, goals in (("train", train_obs, train_goals), ("test", test_obs, test_goals)):
        start_gaps = pairwise(obs, obs)
        np.fill_diagonal(start_gaps, np.inf)
        # A train task's own start state is its nearest: on the train split the lookup is the identity.
        nearest_train = np.arange(len(obs)) if split == "train" else pairwise(obs, train_obs).argmin(1)
        lookup_error = np.linalg.norm(train_goals[nearest_train] - goals, axis=1)
        objects = obs[:, OBJECT_SLICE]
        varying = objects.std(0) > 1e-9
        correlation = np.corrcoef(objects[:, varying].T, goals.T)[: varying.sum(), varying.sum() :]
        splits[split] = {
            "n_tasks": len(obs),
            "distinct_start_observations": len(np.unique(obs.round(9), axis=0)),
            "min_start_observation_distance": float(start_gaps.min()),
            "start_observation_dims_that_vary": np.flatnonzero(obs.std(0) > 1e-12).tolist(),
            "lookup_success": float((lookup_error <= SUCCESS_RADIUS).mean()),
            "lookup_goal_error_median": float(np.median(lookup_error)),
            "constant_point_success": float(
                (np.linalg.norm(goals - constant, axis=1) <= SUCCESS_RADIUS).mean()
            ),
            "any_train_goal_within_radius": float(
                (pairwise(goals, train_goals).min(1) <= SUCCESS_RADIUS).mean() if split == "test" else 1.0
            ),
            "object_goal_correlation_max_abs": float(np.abs(correlation).max()),
        }
    return {
        "env_name": env_name,
        "benchmark_seed": benchmark_seed,
        "success_radius": SUCCESS_RADIUS,
        "constant_point": constant.tolist(),
        "goal_box": {"low": train_goals.min(0).tolist(), "high": train_goals.max(0).tolist()},
        "splits": splits,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-name", default="reach-v3")
    parser.add_argument("--benchmark-seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "metaworld_task_leak.json")
    args = parser.parse_args(argv)
    if args.env_name != "reach-v3":
        raise ValueError(
            f"--env-name: only 'reach-v3' (its object slice and success radius), got {args.env_name!r}"
        )
    result = {
        "benchmark": "metaworld_task_leak",
        "command": "python benchmarks/metaworld_task_leak.py"
        + ("" if args.benchmark_seed == 0 else f" --benchmark-seed {args.benchmark_seed}"),
        "git": git_commit(),
        **analyse(args.env_name, args.benchmark_seed),
    }
    print(f"ML1 {args.env_name}, benchmark seed {args.benchmark_seed}, success radius {SUCCESS_RADIUS}")
    print(
        "| split | tasks | distinct start obs | min start-obs gap | lookup success | constant point "
        "| any train goal in radius | max abs corr(object, goal) |"
    )
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for split, row in result["splits"].items():
        print(
            f"| {split} | {row['n_tasks']} | {row['distinct_start_observations']} | "
            f"{row['min_start_observation_distance']:.4f} | {row['lookup_success']:.0%} | "
            f"{row['constant_point_success']:.0%} | {row['any_train_goal_within_radius']:.0%} | "
            f"{row['object_goal_correlation_max_abs']:.2f} |"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
