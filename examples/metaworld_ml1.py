"""Meta-World ML1 in a few minutes: RL² and Laplace-VRNN on reach-v3, success per inner episode.

    python examples/metaworld_ml1.py [--env-name push-v3] [--timesteps 30000] [--parallel]

1. Meta-trains RL² and Laplace-VRNN agents with ``BayesPPO`` on ``MetaWorld-ML1-v0`` (8 envs;
   ``--parallel``: subprocesses): each trial draws one of the 50 train goals, hidden from the agent,
   and runs 2 inner episodes of ``--max-path-length`` steps (Meta-World's 500 by default; 150 here,
   as in VariBAD, to keep the example short).
2. Evaluates on 10 fixed *test* goals (held out by Meta-World) with 3 inner episodes, and prints the
   success rate (1 if some step of the inner episode succeeded) and return per inner episode.

VariBAD reaches 100% success on reach after ~1e7 steps (``benchmarks/learning_metaworld.py``); this
budget only shows the API.
"""

from __future__ import annotations

import argparse
import time

import bayes_envs
from bayes_agents import BayesPPO, LaplacePolicy, RL2Policy
from bayes_agents.callbacks import ProgressCallback
from bayes_agents.defaults import LAPLACE_SETTINGS
from bayes_agents.experiment import set_torch_threads
from bayes_envs.evaluation import evaluate

BELIEF = dict(hidden_size=64, latent_dim=16, embed_sizes=(32,), net_arch=[64, 64])
POLICIES = {"RL²": (RL2Policy, BELIEF), "Laplace": (LaplacePolicy, {**BELIEF, **LAPLACE_SETTINGS})}
TEST_TASKS, TEST_SEED = 10, 10_000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env-name", default="reach-v3")
    parser.add_argument("--timesteps", type=int, default=30_000)
    parser.add_argument("--max-path-length", type=int, default=150)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--parallel", action="store_true", help="step the envs in subprocesses")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_torch_threads()  # as bayes-rl train: $OMP_NUM_THREADS, else 1
    env_id = "MetaWorld-ML1-v0"
    constants = dict(env_name=args.env_name, max_path_length=args.max_path_length)

    rows = []
    for name, (policy_class, policy_kwargs) in POLICIES.items():
        env = bayes_envs.make_vec(env_id, args.n_envs, seed=args.seed, parallel=args.parallel, **constants)
        model = BayesPPO(
            policy_class,
            env,
            n_steps=200,
            batch_size=args.n_envs * 50,
            n_epochs=2,
            learning_rate=7e-4,
            clip_range=0.1,
            ent_coef=0.001,
            gamma=0.99,
            gae_lambda=0.9,
            policy_kwargs=policy_kwargs,
            seed=args.seed,
            device="cpu",
        )
        start = time.perf_counter()
        model.learn(args.timesteps, callback=ProgressCallback(args.timesteps))
        minutes = (time.perf_counter() - start) / 60
        result = evaluate(
            model, env_id, n_tasks=TEST_TASKS, seed=TEST_SEED, split="test", episodes_per_trial=3, **constants
        )
        env.close()
        summary = result.summary()
        rows.append((f"{name} ({minutes:.1f} min)", summary["success_rate"], summary["episode_return_mean"]))

    print(f"\nML1 {args.env_name}: {args.timesteps:,} training steps per agent; {TEST_TASKS} test goals")
    print(f"{'agent':<22}" + "".join(f"{'success ep ' + str(e + 1):>14}" for e in range(3)) + "   returns")
    for label, success, returns in rows:
        print(
            f"{label:<22}"
            + "".join(f"{100 * s:>13.0f}%" for s in success)
            + "   "
            + ", ".join(f"{r:.0f}" for r in returns)
        )


if __name__ == "__main__":
    main()
