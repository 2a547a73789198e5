"""MuJoCo meta-RL in a few minutes: RL² and Laplace-VRNN on HalfCheetahVel-v0, then the meta-test protocol.

    python examples/mujoco_meta_rl.py [--env AntGoal-v0] [--timesteps 50000] [--parallel]

1. Meta-trains an RL² agent and a Laplace-VRNN agent with ``BayesPPO`` on 8 envs (``--parallel``: in
   8 subprocesses), each trial = 2 inner episodes of 200 steps with a hidden target velocity.
2. Evaluates both, untrained and trained, on 20 fixed *test* tasks (velocities held out from
   training, see ``bayes_envs.mujoco``) with one inner episode more than trained, and prints the
   return per inner episode and the Laplace posterior's entropy and KL over the trial.

The budget here is tiny (VariBAD trains for 1e8 steps: ``benchmarks/learning_mujoco.py``), so expect
small improvements only; the point is the API.
"""

from __future__ import annotations

import argparse
import time

import numpy as np

import bayes_envs
from bayes_agents import BayesPPO, LaplacePolicy, RL2Policy
from bayes_agents.callbacks import ProgressCallback
from bayes_agents.defaults import LAPLACE_SETTINGS
from bayes_agents.experiment import set_torch_threads
from bayes_envs.evaluation import evaluate

BELIEF = dict(hidden_size=64, latent_dim=16, embed_sizes=(32,), net_arch=[64, 64])
POLICIES = {"RL²": (RL2Policy, BELIEF), "Laplace": (LaplacePolicy, {**BELIEF, **LAPLACE_SETTINGS})}
TEST_TASKS, TEST_SEED = 20, 10_000


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--env", default="HalfCheetahVel-v0")
    parser.add_argument("--timesteps", type=int, default=50_000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--parallel", action="store_true", help="step the envs in subprocesses")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_torch_threads()  # as bayes-rl train: $OMP_NUM_THREADS, else 1

    rows, laplace_result = [], None
    for name, (policy_class, policy_kwargs) in POLICIES.items():
        env = bayes_envs.make_vec(args.env, args.n_envs, seed=args.seed, parallel=args.parallel)
        model = BayesPPO(
            policy_class,
            env,
            n_steps=400,  # one trial per env per update
            batch_size=args.n_envs * 100,
            n_epochs=4,
            learning_rate=7e-4,
            clip_range=0.1,
            ent_coef=0.01,
            gamma=0.97,
            gae_lambda=0.9,
            policy_kwargs=policy_kwargs,
            seed=args.seed,
            device="cpu",
        )
        protocol = dict(n_tasks=TEST_TASKS, seed=TEST_SEED, split="test", episodes_per_trial=3)
        untrained = evaluate(model, args.env, **protocol)
        start = time.perf_counter()
        model.learn(args.timesteps, callback=ProgressCallback(args.timesteps))
        minutes = (time.perf_counter() - start) / 60
        trained = evaluate(model, args.env, **protocol)
        env.close()
        rows.append((f"{name} untrained", untrained.summary()["episode_return_mean"]))
        rows.append((f"{name} trained ({minutes:.1f} min)", trained.summary()["episode_return_mean"]))
        if name == "Laplace":
            laplace_result = trained

    print(f"\n{args.env}: {args.timesteps:,} training steps per agent; {TEST_TASKS} test tasks, 3 episodes")
    print(f"{'return per inner episode':<30}" + "".join(f"{'ep ' + str(e + 1):>10}" for e in range(3)))
    for label, values in rows:
        print(f"{label:<30}" + "".join(f"{v:>10.1f}" for v in values))
    entropy, kl = laplace_result.belief_entropy, laplace_result.belief_kl
    steps = [0, 1, 10, 100, 199, 200, 399, 599]
    print("\nLaplace posterior over the trial (mean over test tasks):")
    print("  entropy (nats): " + ", ".join(f"t={t}: {np.nanmean(entropy[:, t]):.1f}" for t in steps))
    print("  KL(q_t‖q_t−1):  " + ", ".join(f"t={t}: {np.nanmean(kl[:, t]):.3f}" for t in steps))


if __name__ == "__main__":
    main()
