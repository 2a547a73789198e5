"""Quick start: train a Laplace-VRNN agent on BayesGrid-v0 and compare it with the references.

Runs in a few minutes on 2 CPU cores:

    python examples/quickstart.py [--timesteps 300000] [--method laplace|rl2]

It evaluates the untrained and the trained agent on the same 210 fixed test tasks and prints the
return per inner episode next to the known-goal oracle, the exact Bayes-optimal policy and
posterior sampling (see benchmarks/references.py).
"""

from __future__ import annotations

import argparse
import time

import torch

import bayes_envs
from bayes_agents import BayesPPO, LaplacePolicy, RL2Policy
from bayes_envs.evaluation import evaluate
from bayes_envs.references import (
    GridPosteriorSampling,
    bayes_optimal_episode_returns,
    oracle_return_per_episode,
)

#: PPO settings after VariBAD's gridworld configuration (16 envs, 60-step rollouts, γ = 0.95).
PPO_SETTINGS = dict(
    n_steps=60,
    batch_size=240,
    n_epochs=2,
    learning_rate=7e-4,
    gamma=0.95,
    gae_lambda=0.95,
    ent_coef=0.01,
    clip_range=0.1,
    policy_kwargs={},
)


def row(name: str, values) -> str:
    return f"{name:<28}" + "".join(f"{v:>9.2f}" for v in values) + f"{sum(values):>10.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timesteps", type=int, default=300_000)
    parser.add_argument("--method", choices=["laplace", "rl2"], default="laplace")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(2)

    policy = LaplacePolicy if args.method == "laplace" else RL2Policy
    policy_kwargs = {"hidden_size": 64, "latent_dim": 32, "embed_sizes": (64,)}
    if args.method == "laplace":
        policy_kwargs.update(window=1, covariance="full", variant="sum_precision", n_samples=1)
    env = bayes_envs.make_vec("BayesGrid-v0", n_envs=16, seed=args.seed)
    settings = {**PPO_SETTINGS, "policy_kwargs": policy_kwargs}
    model = BayesPPO(policy, env, seed=args.seed, device="cpu", **settings)

    untrained = evaluate(model, "BayesGrid-v0", n_tasks=210, seed=10_000).summary()
    start = time.perf_counter()
    model.learn(args.timesteps, progress_bar=False)
    minutes = (time.perf_counter() - start) / 60
    trained = evaluate(model, "BayesGrid-v0", n_tasks=210, seed=10_000).summary()
    sampling = evaluate(GridPosteriorSampling(seed=0), "BayesGrid-v0", n_tasks=210, seed=10_000).summary()

    print(
        f"\n{policy.__name__} on BayesGrid-v0: {args.timesteps:,} env steps in {minutes:.1f} min "
        f"({args.timesteps / minutes / 60:,.0f} steps/s)"
    )
    print(
        f"{'return per inner episode':<28}"
        + "".join(f"{'ep ' + str(e + 1):>9}" for e in range(4))
        + f"{'trial':>10}"
    )
    print(row("untrained agent", untrained["episode_return_mean"]))
    print(row("trained agent", trained["episode_return_mean"]))
    print(row("posterior sampling", sampling["episode_return_mean"]))
    print(row("Bayes-optimal (exact)", bayes_optimal_episode_returns().tolist()))
    print(row("oracle, known goal (exact)", [oracle_return_per_episode()] * 4))


if __name__ == "__main__":
    main()
