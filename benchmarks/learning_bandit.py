"""Learning on BayesBandit-v0: expected cumulative regret at t = 50 of RL² and Laplace-VRNN.

Trains on the train split (α = 0.2) and evaluates the final models on 1,000 fixed tasks of the
train split and of the harder test split (α = 0.3), next to Thompson sampling with the exact
posterior, greedy posterior mean and uniform random (see benchmarks/references.py).

    python benchmarks/learning_bandit.py [--timesteps 1000000] [--seeds 3] [--workers 2]
"""

from __future__ import annotations

import gymnasium as gym
from learning import aggregate, method_seed_jobs, parse_args, run_jobs, save

from bayes_agents.defaults import LAPLACE_SETTINGS, belief_settings, ppo_settings
from bayes_agents.methods import method_defaults
from bayes_envs.evaluation import evaluate
from bayes_envs.references import BanditGreedyPosteriorMean, BanditThompsonSampling, UniformRandomPolicy

PPO = ppo_settings("BayesBandit-v0")
BELIEF = belief_settings("BayesBandit-v0")
METHODS = {
    "rl2": BELIEF,
    "laplace": {**BELIEF, **LAPLACE_SETTINGS},
    **{name: method_defaults("BayesBandit-v0", name)["policy"] for name in ("varibad", "glibrl", "vrnn")},
}
SPLITS = {"train": {"split": "train"}, "test": {"split": "test"}}


def main() -> None:
    args = parse_args(__doc__, list(METHODS))

    jobs = method_seed_jobs(
        "BayesBandit-v0",
        METHODS,
        args.methods,
        args.seeds,
        args.timesteps,
        16,
        PPO,
        args.eval_every,
        200,
        1000,
        final_evals=SPLITS,
        laplace=LAPLACE_SETTINGS,
        finetune_timesteps=args.finetune_timesteps,
    )
    results = run_jobs(jobs, args.workers)
    learned = {split: aggregate(results, split, "final_regret_mean") for split in SPLITS}
    references = {}
    for split, alpha in (("train", 0.2), ("test", 0.3)):
        policies = {
            "Thompson sampling": BanditThompsonSampling(n_arms=5, alpha=alpha, seed=0),
            "greedy posterior mean": BanditGreedyPosteriorMean(n_arms=5, alpha=alpha, seed=0),
            "uniform random": UniformRandomPolicy(gym.make("BayesBandit-v0").action_space, seed=0),
        }
        for name, policy in policies.items():
            summary = evaluate(policy, "BayesBandit-v0", n_tasks=1000, seed=10_000, split=split).summary()
            references.setdefault(name, {})[split] = (
                summary["final_regret_mean"],
                summary["final_regret_ci95"],
            )

    print(
        f"\nBayesBandit-v0: expected cumulative regret at t=50 after {args.timesteps:,} env steps, "
        f"{args.seeds} seeds (mean ± 95% CI)"
    )
    print(f"{'agent':<24}{'alpha=0.2 (train)':>20}{'alpha=0.3 (test)':>20}{'minutes':>9}")
    for method in learned["train"]:
        cells = "".join(
            f"{learned[s][method]['mean'][0]:>13.2f} ± {learned[s][method]['ci95'][0]:<4.2f}" for s in SPLITS
        )
        minutes = sum(learned["train"][method]["minutes"]) / args.seeds
        print(f"{method:<24}{cells}{minutes:>9.1f}")
    for name, cells in references.items():
        print(f"{name:<24}" + "".join(f"{cells[s][0]:>13.2f} ± {cells[s][1]:<4.2f}" for s in SPLITS))
    path = save(
        args.name or "learning_bandit",
        {
            "benchmark": "learning_bandit",
            "settings": vars(args),
            "ppo": PPO,
            "methods": METHODS,
            "regret": learned,
            "references": references,
            "runs": results,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
