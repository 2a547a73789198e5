"""Reference agents (what no learned agent can beat) rolled out on the envs with ``evaluate``.

Grid: per-inner-episode returns of the known-goal oracle, the exact Bayes-optimal policy,
posterior sampling and uniform random. Bandit: expected cumulative regret at t = 50 of Thompson
sampling (exact-posterior particles), greedy posterior mean, the oracle and uniform random, for
α = 0.2 (train split) and α = 0.3 (test split). Means ± 95% CI over tasks.

    python benchmarks/references.py [--grid-tasks 2100] [--bandit-tasks 2000]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import gymnasium as gym

from bayes_envs.evaluation import evaluate
from bayes_envs.references import (
    BanditGreedyPosteriorMean,
    BanditOracle,
    BanditThompsonSampling,
    GridBayesOptimal,
    GridOracle,
    GridPosteriorSampling,
    UniformRandomPolicy,
    bayes_optimal_episode_returns,
    oracle_return_per_episode,
)

RESULTS = Path(__file__).parent / "results"


def grid_table(n_tasks: int, seed: int) -> list[dict]:
    action_space = gym.make("BayesGrid-v0").action_space
    policies = {
        "oracle (known goal)": GridOracle(),
        "Bayes-optimal": GridBayesOptimal(),
        "posterior sampling": GridPosteriorSampling(seed=seed),
        "uniform random": UniformRandomPolicy(action_space, seed=seed),
    }
    rows = []
    for name, policy in policies.items():
        summary = evaluate(policy, "BayesGrid-v0", n_tasks=n_tasks, seed=seed).summary()
        rows.append({**summary, "policy": name})
    exact = {
        "oracle (known goal)": [oracle_return_per_episode()] * 4,
        "Bayes-optimal": bayes_optimal_episode_returns().tolist(),
    }
    for row in rows:
        row["exact_episode_return"] = exact.get(row["policy"])
    return rows


def bandit_table(n_tasks: int, seed: int) -> list[dict]:
    rows = []
    for split, alpha in (("train", 0.2), ("test", 0.3)):
        action_space = gym.make("BayesBandit-v0").action_space
        policies = {
            "Thompson sampling": BanditThompsonSampling(n_arms=5, alpha=alpha, seed=seed),
            "greedy posterior mean": BanditGreedyPosteriorMean(n_arms=5, alpha=alpha, seed=seed),
            "oracle (known p)": BanditOracle(),
            "uniform random": UniformRandomPolicy(action_space, seed=seed),
        }
        for name, policy in policies.items():
            summary = evaluate(policy, "BayesBandit-v0", n_tasks=n_tasks, seed=seed, split=split).summary()
            rows.append({**summary, "policy": name, "split": split, "alpha": alpha})
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid-tasks", type=int, default=2100)
    parser.add_argument("--bandit-tasks", type=int, default=2000)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, default=RESULTS / "references.json")
    args = parser.parse_args()

    grid = grid_table(args.grid_tasks, args.seed)
    print(f"BayesGrid-v0: return per inner episode, mean ± 95% CI over {args.grid_tasks} tasks")
    print(f"{'policy':<22}" + "".join(f"{'episode ' + str(e + 1):>16}" for e in range(4)) + f"{'trial':>16}")
    for row in grid:
        cells = "".join(
            f"{m:>9.2f} ± {c:<4.2f}"
            for m, c in zip(row["episode_return_mean"], row["episode_return_ci95"], strict=True)
        )
        print(
            f"{row['policy']:<22}{cells}{row['trial_return_mean']:>9.2f} ± {row['trial_return_ci95']:<4.2f}"
        )
        if row["exact_episode_return"]:
            exact = "".join(f"{value:>16.3f}" for value in row["exact_episode_return"])
            print(f"{'  (exact)':<22}{exact}{sum(row['exact_episode_return']):>16.3f}")

    bandit = bandit_table(args.bandit_tasks, args.seed)
    print(
        f"\nBayesBandit-v0: expected cumulative regret at t=50, mean ± 95% CI over {args.bandit_tasks} tasks"
    )
    print(f"{'policy':<24}{'alpha=0.2 (train)':>20}{'alpha=0.3 (test)':>20}")
    for name in dict.fromkeys(row["policy"] for row in bandit):
        cells = [row for row in bandit if row["policy"] == name]
        print(
            f"{name:<24}"
            + "".join(f"{r['final_regret_mean']:>13.2f} ± {r['final_regret_ci95']:<4.2f}" for r in cells)
        )

    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "references", "grid": grid, "bandit": bandit}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
