"""Learning on Meta-World ML1 (reach, push, pick-place): RL² and Laplace-VRNN, success per inner episode.

Defaults follow the VariBAD paper's ML1 experiments (§5.4, Appendix E, ML1-Push column): 2 inner
episodes per trial (VariBAD optimises the return of 2 episodes), 16 envs × 200 steps per update, 2
epochs, 8 minibatches, clip 0.1, lr 7e-4, entropy 0.001, γ 0.99, λ 0.9, policy layers [128, 128, 128];
observation and reward normalisation (``bayes_envs.RL2VecNormalize``, the default of
``bayes_agents.defaults``; ``--no-normalize`` switches it off; evaluations use the frozen statistics and
report raw returns); 20 seeds. Two choices are this benchmark's own, both keywords: inner episodes last
Meta-World's ``max_path_length`` = 500 steps (docs/specification.md#meta-world; VariBAD used 150–200),
and the budget is 5e7 env steps per run (the paper's text gives no ML1 frame count). VariBAD's reference
success rates (episode 1/2, test tasks; docs/specification.md#published-results): reach 100, push 100,
pick-place 29.

Every ``--eval-every`` steps the deterministic policy is evaluated on fixed test tasks (learning curve
of return and success rate per inner episode); at the end on ``--final-eval-tasks`` test tasks with 2
and with 3 inner episodes, and on train tasks. ``--benchmark ML10``/``ML45`` runs those benchmarks
instead (success averaged over task classes, Meta-World's protocol). Results go to
``benchmarks/results/learning_metaworld.json``, rewritten after each env.

    python benchmarks/learning_metaworld.py [--envs reach-v3 push-v3 pick-place-v3] [--timesteps 50000000]
"""

from __future__ import annotations

import argparse
import time

from learning_jobs import aggregate, method_seed_jobs, run_jobs, save

from bayes_agents.defaults import (
    LAPLACE_SETTINGS,
    belief_settings,
    method_env_settings,
    ppo_settings,
    run_settings,
)

ML1_ENVS = ["reach-v3", "push-v3", "pick-place-v3"]
N_ENVS = 16
#: The VariBAD PPO column and belief sizes of ``bayes_agents.defaults`` (one for the whole family).
PPO = ppo_settings("MetaWorld-ML1-v0")
BELIEF = belief_settings("MetaWorld-ML1-v0")
METHODS = {
    "rl2": BELIEF,
    "laplace": {**BELIEF, **LAPLACE_SETTINGS, **method_env_settings("MetaWorld-ML1-v0", "laplace")["policy"]},
}
VARIBAD_SUCCESS = {"reach-v3": [100, 100], "push-v3": [100, 100], "pick-place-v3": [29, 29]}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--benchmark", default="ML1", choices=["ML1", "ML10", "ML45"])
    parser.add_argument("--envs", nargs="+", default=ML1_ENVS, help="ML1 env names")
    parser.add_argument("--methods", nargs="+", default=list(METHODS), choices=list(METHODS))
    parser.add_argument("--timesteps", type=int, default=50_000_000)
    parser.add_argument("--seeds", type=int, default=20)
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--n-envs", type=int, default=N_ENVS)
    parser.add_argument("--n-steps", type=int, default=PPO["n_steps"], help="PPO rollout length per env")
    parser.add_argument(
        "--no-normalize", action="store_true", help="train without observation/reward normalisation"
    )
    parser.add_argument("--max-path-length", type=int, default=500, help="steps per inner episode")
    parser.add_argument("--episodes-per-trial", type=int, default=2)
    parser.add_argument("--eval-every", type=int, default=1_000_000)
    parser.add_argument("--eval-tasks", type=int, default=20)
    parser.add_argument("--final-eval-tasks", type=int, default=100)
    parser.add_argument("--eval-batch", type=int, default=25, help="evaluation envs at once (memory)")
    parser.add_argument("--out", default="learning_metaworld", help="results/<out>.json")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    ppo = {**PPO, "n_steps": args.n_steps, "batch_size": max(args.n_envs * args.n_steps // 8, 2)}
    env_kwargs = {"max_path_length": args.max_path_length, "episodes_per_trial": args.episodes_per_trial}
    runs = (
        [(f"MetaWorld-ML1-v0:{name}", "MetaWorld-ML1-v0", {"env_name": name}) for name in args.envs]
        if args.benchmark == "ML1"
        else [(f"MetaWorld-{args.benchmark}-v0", f"MetaWorld-{args.benchmark}-v0", {})]
    )
    payload: dict = {
        "benchmark": "learning_metaworld",
        "settings": vars(args),
        "ppo": ppo,
        "methods": METHODS,
    }
    payload["varibad_success_reference"] = VARIBAD_SUCCESS
    payload["envs"] = {}
    for label, env_id, extra in runs:
        start = time.perf_counter()
        run = run_settings(env_id)
        normalize = (
            {} if args.no_normalize else {"norm_obs": run["norm_obs"], "norm_reward": run["norm_reward"]}
        )
        train_kwargs = {**env_kwargs, **extra}
        evaluation = {**train_kwargs, "n_envs": args.eval_batch}
        final_evals = {
            "test": {**evaluation, "split": "test"},
            "test_3_episodes": {
                **evaluation,
                "split": "test",
                "episodes_per_trial": args.episodes_per_trial + 1,
            },
            "train": {**evaluation, "split": "train"},
        }
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
            env_kwargs=train_kwargs,
            final_evals=final_evals,
            normalize=normalize,
        )
        results = run_jobs(jobs, args.workers)
        success = aggregate(results, "test", "success_rate")
        beyond = aggregate(results, "test_3_episodes", "success_rate")
        returns = aggregate(results, "test", "episode_return_mean")
        minutes = (time.perf_counter() - start) / 60
        print(f"\n{label}: {args.timesteps:,} steps × {args.seeds} seeds in {minutes:.1f} min")
        header = "".join(f"{'success ep ' + str(e + 1) + ' (%)':>20}" for e in range(args.episodes_per_trial))
        print(f"{'method':<10}{header}{'one more (%)':>14}{'return ep 1':>14}")
        for method, stats in success.items():
            cells = "".join(
                f"{100 * m:>12.1f} ± {100 * c:<5.1f}"
                for m, c in zip(stats["mean"], stats["ci95"], strict=True)
            )
            print(
                f"{method:<10}{cells}{100 * beyond[method]['mean'][-1]:>14.1f}"
                f"{returns[method]['mean'][0]:>14.1f}"
            )
        payload["envs"][label] = {
            "normalize": normalize,
            "success_rate": success,
            "success_rate_3_episodes": beyond,
            "episode_return": returns,
            "runs": results,
        }
        path = save(args.out, payload)
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
