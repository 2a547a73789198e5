"""Quick start: meta-train RL² on BayesGrid-v0, put a Laplace posterior on it, compare with the references.

Runs in a few minutes on 2 CPU cores:

    python examples/quickstart.py [--timesteps 2000000]

1. Meta-trains an RL² agent with ``BayesPPO`` at the settings ``bayes-rl train BayesGrid-v0`` uses
   (``bayes_agents.defaults``: 64 batched grid envs, rewards normalised by ``RL2VecNormalize``).
2. Turns it into a Laplace-VRNN agent post hoc (same weights, no training): same actions, but now
   with a task posterior whose entropy can be read at every step.
3. Evaluates the untrained agent, the trained agent and the references on the same 210 fixed
   test tasks and prints the return per inner episode and the posterior entropy over a trial.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bayes_envs
from bayes_agents import BayesPPO, RL2Policy, laplace_from_rl2
from bayes_agents.callbacks import ProgressCallback
from bayes_agents.defaults import belief_settings, ppo_settings, run_settings
from bayes_agents.experiment import set_torch_threads
from bayes_envs import RL2VecNormalize
from bayes_envs.evaluation import evaluate
from bayes_envs.references import (
    GridPosteriorSampling,
    bayes_optimal_episode_returns,
    oracle_return_per_episode,
)

ENV_ID = "BayesGrid-v0"
TEST_TASKS, TEST_SEED = 210, 10_000


def row(name: str, values: list[float]) -> str:
    return f"{name:<30}" + "".join(f"{v:>8.2f}" for v in values) + f"{sum(values):>9.2f}"


def posterior_entropy_over_a_trial(model, seed: int = 0) -> np.ndarray:
    """Mean posterior entropy over 16 test trials at each of the 60 steps."""
    venv = bayes_envs.make_vec(ENV_ID, 16, seed=TEST_SEED + seed, monitor=False)
    venv = model.get_vec_normalize_env().frozen_copy(venv)  # the inputs the agent was trained on
    obs, state, start, entropies = venv.reset(), None, np.ones(16, bool), []
    for _ in range(60):
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        entropies.append(model.policy.last_belief_output.entropy.mean().item())
        obs, _, start, _ = venv.step(action)
    return np.array(entropies)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    run = run_settings(ENV_ID)
    parser.add_argument("--timesteps", type=int, default=run["timesteps"])
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_torch_threads()  # as bayes-rl train: $OMP_NUM_THREADS, else 1

    ppo = ppo_settings(ENV_ID)
    env = bayes_envs.make_vec(ENV_ID, n_envs=run["n_envs"], seed=args.seed)
    # Rewards divided by the running std of the trial return (the evaluations report raw returns).
    env = RL2VecNormalize(env, norm_obs=run["norm_obs"], norm_reward=run["norm_reward"], gamma=ppo["gamma"])
    model = BayesPPO(
        RL2Policy, env, seed=args.seed, device="cpu", policy_kwargs=belief_settings(ENV_ID), **ppo
    )
    untrained = evaluate(model, ENV_ID, n_tasks=TEST_TASKS, seed=TEST_SEED).summary()
    start = time.perf_counter()
    model.learn(args.timesteps, callback=ProgressCallback(args.timesteps))
    minutes = (time.perf_counter() - start) / 60
    trained = evaluate(model, ENV_ID, n_tasks=TEST_TASKS, seed=TEST_SEED).summary()
    laplace = laplace_from_rl2(model, window=1, covariance="full", variant="sum_precision")
    posthoc = evaluate(laplace, ENV_ID, n_tasks=TEST_TASKS, seed=TEST_SEED).summary()
    sampling = evaluate(GridPosteriorSampling(seed=0), ENV_ID, n_tasks=TEST_TASKS, seed=TEST_SEED).summary()

    print(
        f"\nRL² on {ENV_ID}: {args.timesteps:,} env steps in {minutes:.1f} min "
        f"({args.timesteps / minutes / 60:,.0f} steps/s); {TEST_TASKS} fixed test tasks"
    )
    print(
        f"{'return per inner episode':<30}"
        + "".join(f"{'ep ' + str(e + 1):>8}" for e in range(4))
        + f"{'trial':>9}"
    )
    print(row("untrained agent", untrained["episode_return_mean"]))
    print(row("trained RL² agent", trained["episode_return_mean"]))
    print(row("  + post-hoc Laplace (mean)", posthoc["episode_return_mean"]))
    print(row("posterior sampling", sampling["episode_return_mean"]))
    print(row("Bayes-optimal (exact)", bayes_optimal_episode_returns().tolist()))
    print(row("oracle, known goal (exact)", [oracle_return_per_episode()] * 4))
    entropy = posterior_entropy_over_a_trial(laplace)
    steps = [0, 5, 14, 15, 30, 45, 59]
    print(
        "\npost-hoc Laplace posterior entropy (nats) at trial step "
        + ", ".join(f"t={t}: {entropy[t]:.1f}" for t in steps)
    )


if __name__ == "__main__":
    main()
