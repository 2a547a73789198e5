"""Learning on the MuJoCo meta-RL envs: RL² and Laplace-VRNN with VariBAD's budget and PPO settings.

Defaults are the full budget of the VariBAD paper: 1e8 env steps per run, 10 seeds per env, on
HalfCheetahDir, HalfCheetahVel, AntDir and AntGoal (2 inner episodes of 200 steps), with VariBAD's
MuJoCo PPO hyper-parameters (Appendix E, CheetahDir column: 16 envs × 800 steps per update, 16 epochs,
4 minibatches, clip 0.1, lr 7e-4, entropy 0.01, γ 0.97, λ 0.9; policy layers [128, 128]). VariBAD
also normalises rewards for the policy; ``BayesPPO`` here does not. On a 2-core CPU (~1–3k env steps/s)
that is weeks per run: run it on a cluster, or use ``--timesteps`` for a reduced budget.

Every ``--eval-every`` steps the deterministic policy is evaluated on fixed test tasks (the learning
curve); at the end on ``--final-eval-tasks`` test tasks with the trained 2 inner episodes and with one
more (``test_3_episodes``), and on train tasks. Results, curves and posterior statistics go to
``benchmarks/results/learning_mujoco.json`` (rewritten after each env, so partial runs keep results).

    python benchmarks/learning_mujoco.py [--envs HalfCheetahVel-v0] [--timesteps 100000000] [--seeds 10]
"""

from __future__ import annotations

import argparse
import time

from learning import aggregate, method_seed_jobs, run_jobs, save

from bayes_agents.defaults import LAPLACE_SETTINGS, belief_settings, method_env_settings, ppo_settings

ENV_IDS = ["HalfCheetahDir-v0", "HalfCheetahVel-v0", "AntDir-v0", "AntGoal-v0"]
N_ENVS = 16
#: The VariBAD PPO column and belief sizes of ``bayes_agents.defaults`` (one for the whole family).
PPO = ppo_settings("HalfCheetahDir-v0")
BELIEF = belief_settings("HalfCheetahDir-v0")
METHODS = {
    "rl2": BELIEF,
    "laplace": {
        **BELIEF,
        **LAPLACE_SETTINGS,
        **method_env_settings("HalfCheetahDir-v0", "laplace")["policy"],
    },
}
FINAL_EVALS = {
    "test": {"split": "test"},
    "test_3_episodes": {"split": "test", "episodes_per_trial": 3},
    "train": {"split": "train"},
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--envs", nargs="+", default=ENV_IDS, choices=ENV_IDS)
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--timesteps", type=int, default=100_000_000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--n-envs", type=int, default=N_ENVS)
    parser.add_argument("--n-steps", type=int, default=PPO["n_steps"], help="PPO rollout length per env")
    parser.add_argument("--eval-every", type=int, default=2_000_000)
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--final-eval-tasks", type=int, default=100)
    parser.add_argument("--out", default="learning_mujoco", help="results/<out>.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    ppo = {**PPO, "n_steps": args.n_steps, "batch_size": max(args.n_envs * args.n_steps // 4, 2)}
    payload: dict = {"benchmark": "learning_mujoco", "settings": vars(args), "ppo": ppo, "methods": METHODS}
    payload["envs"] = {}
    for env_id in args.envs:
        start = time.perf_counter()
        jobs = method_seed_jobs(
            env_id,
            METHODS,
            args.methods,
            args.seeds,
            args.timesteps,
            args.n_envs,
            ppo,
            args.eval_every,
            args.eval_tasks,
            args.final_eval_tasks,
            final_evals=FINAL_EVALS,
        )
        results = run_jobs(jobs, args.workers)
        per_episode = aggregate(results, "test", "episode_return_mean")
        beyond = aggregate(results, "test_3_episodes", "episode_return_mean")
        minutes = (time.perf_counter() - start) / 60
        print(f"\n{env_id}: {args.timesteps:,} steps × {args.seeds} seeds in {minutes:.1f} min")
        print(f"{'method':<10}{'test ep 1':>18}{'test ep 2':>18}{'ep 3 (untrained)':>20}{'steps/s':>10}")
        for method, stats in per_episode.items():
            cells = "".join(
                f"{m:>10.1f} ± {c:<5.1f}" for m, c in zip(stats["mean"], stats["ci95"], strict=True)
            )
            third = beyond[method]["mean"][2]
            speed = [r["steps_per_s"] for r in results if r["method"] == method]
            print(f"{method:<10}{cells}{third:>20.1f}{sum(speed) / len(speed):>10,.0f}")
        payload["envs"][env_id] = {"per_episode": per_episode, "beyond_training": beyond, "runs": results}
        path = save(args.out, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
