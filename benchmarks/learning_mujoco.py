"""Learning on the MuJoCo meta-RL envs: RL² and Laplace-VRNN with VariBAD's budget and settings.

Defaults are the full budget of the VariBAD paper: 1e8 env steps per run, 10 seeds per env, on
HalfCheetahDir, HalfCheetahVel, AntDir and AntGoal (2 inner episodes of 200 steps), with each env's
defaults of ``bayes_agents.defaults`` (the VariBAD reference's ``config/mujoco/args_<env>_rl2.py`` PPO
settings and RL² sizes; Laplace-VRNN with its own keywords on top) and, as the reference, observation
and reward normalisation (``bayes_envs.RL2VecNormalize``; ``--no-normalize`` switches it off; the
evaluations use the frozen statistics and report raw returns). On a 2-core CPU (~1–3k env steps/s) that
is weeks per run: run it on a cluster, or use ``--timesteps`` for a reduced budget.

Every ``--eval-every`` steps the deterministic policy is evaluated on fixed test tasks (the learning
curve); at the end on ``--final-eval-tasks`` test tasks with the trained 2 inner episodes and with one
more (``test_3_episodes``), and on train tasks. Results, curves and posterior statistics go to
``benchmarks/results/learning_mujoco.json`` (rewritten after each env, so partial runs keep results).

    python benchmarks/learning_mujoco.py [--envs HalfCheetahVel-v0] [--timesteps 100000000] [--seeds 10]
"""

from __future__ import annotations

import argparse
import time

from learning_jobs import aggregate, method_seed_jobs, run_jobs, save

from bayes_agents.defaults import ppo_settings, run_settings
from bayes_agents.methods import method_defaults

ENV_IDS = ["HalfCheetahDir-v0", "HalfCheetahVel-v0", "AntDir-v0", "AntGoal-v0"]
N_ENVS = 16
#: The benchmarked methods; their ``policy_kwargs`` are each env's defaults (``method_defaults``).
METHOD_NAMES = ["rl2", "laplace"]


def env_methods(env_id: str) -> dict[str, dict]:
    """``policy_kwargs`` of each benchmarked method on ``env_id`` (the CLI's defaults)."""
    return {name: method_defaults(env_id, name)["policy"] for name in METHOD_NAMES}


def env_ppo(env_id: str, n_envs: int, n_steps: int | None) -> dict:
    """The env's PPO defaults, with ``n_steps`` (default: the env's) and the reference's number of
    minibatches kept for ``n_envs`` envs."""
    ppo = ppo_settings(env_id)
    minibatches = max(1, N_ENVS * ppo["n_steps"] // ppo["batch_size"])
    n_steps = ppo["n_steps"] if n_steps is None else n_steps
    return {**ppo, "n_steps": n_steps, "batch_size": max(n_envs * n_steps // minibatches, 2)}


def env_normalize(env_id: str, enabled: bool) -> dict[str, bool]:
    """The env's normalisation defaults (``bayes_agents.defaults.run_settings``), or none."""
    run = run_settings(env_id)
    return {"norm_obs": run["norm_obs"], "norm_reward": run["norm_reward"]} if enabled else {}


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
    parser.add_argument("--methods", nargs="+", default=METHOD_NAMES, choices=METHOD_NAMES)
    parser.add_argument("--timesteps", type=int, default=100_000_000)
    parser.add_argument("--seeds", type=int, default=10)
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--n-envs", type=int, default=N_ENVS)
    parser.add_argument(
        "--n-steps", type=int, default=None, help="PPO rollout length per env (default: the env's)"
    )
    parser.add_argument(
        "--no-normalize", action="store_true", help="train without observation/reward normalisation"
    )
    parser.add_argument("--eval-every", type=int, default=2_000_000)
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--final-eval-tasks", type=int, default=100)
    parser.add_argument("--out", default="learning_mujoco", help="results/<out>.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    payload: dict = {"benchmark": "learning_mujoco", "settings": vars(args), "envs": {}}
    for env_id in args.envs:
        start = time.perf_counter()
        ppo, methods = env_ppo(env_id, args.n_envs, args.n_steps), env_methods(env_id)
        normalize = env_normalize(env_id, not args.no_normalize)
        jobs = method_seed_jobs(
            env_id,
            methods,
            args.methods,
            args.seeds,
            args.timesteps,
            args.n_envs,
            ppo,
            args.eval_every,
            args.eval_tasks,
            args.final_eval_tasks,
            final_evals=FINAL_EVALS,
            normalize=normalize,
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
        payload["envs"][env_id] = {
            "ppo": ppo,
            "methods": methods,
            "normalize": normalize,
            "per_episode": per_episode,
            "beyond_training": beyond,
            "runs": results,
        }
        path = save(args.out, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
