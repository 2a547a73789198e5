"""Stock Stable-Baselines3 PPO with a Laplace-VRNN task belief, through a features extractor.

No recurrent policy and no custom algorithm: the env is wrapped in ``TrialHistoryWrapper`` (the
observation carries the trial's inputs so far), ``LaplaceExtractor`` recomputes the Laplace-VRNN
posterior from them at every step, and ``BeliefAuxLossCallback`` trains the belief's KL penalty,
which stock PPO knows nothing of. Runs in under a minute on 2 CPU cores:

    python examples/ppo_laplace_extractor.py [--timesteps 7680]

Prints the training speed, the posterior entropy over a trial (it falls as the agent explores and
the posterior concentrates) and the return per inner episode on 105 fixed test tasks before and after
training (a short budget: the learning benchmarks use ~1M steps).
"""

from __future__ import annotations

import argparse
import time

import gymnasium as gym
import numpy as np
from stable_baselines3 import PPO
from stable_baselines3.common.env_util import make_vec_env

import bayes_envs  # noqa: F401  (registers the envs)
from bayes_agents.callbacks import BeliefAuxLossCallback, ProgressCallback
from bayes_agents.defaults import LAPLACE_SETTINGS, belief_settings, ppo_settings
from bayes_agents.experiment import set_torch_threads
from bayes_agents.extractors import HistoryPredictor, LaplaceExtractor
from bayes_agents.ppo import resolve_schedules
from bayes_envs.evaluation import evaluate
from bayes_envs.wrappers import TrialHistoryWrapper

ENV_ID = "BayesGrid-v0"


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timesteps", type=int, default=7_680)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    set_torch_threads()  # as bayes-rl train: $OMP_NUM_THREADS, else 1

    # window=None: the whole 60-step trial, so the extractor's belief is exactly the recurrent one.
    env = make_vec_env(lambda: TrialHistoryWrapper(gym.make(ENV_ID)), n_envs=16, seed=args.seed)
    net_arch = belief_settings(ENV_ID)["net_arch"]
    # The extractor recomputes the belief over the whole history at every step (60x the work of the
    # recurrent policy per step), so the belief is smaller than the recurrent default (128 / 32, full
    # covariance) and PPO takes 2 epochs of 2 minibatches instead of 4 of 4, to stay within a minute.
    laplace = {
        **{key: value for key, value in LAPLACE_SETTINGS.items() if key != "n_samples"},  # mean features
        "hidden_size": 32,
        "latent_dim": 8,
        "embed_sizes": (32,),
        "covariance": "diag",
    }
    model = PPO(
        "MultiInputPolicy",
        env,
        policy_kwargs=dict(
            features_extractor_class=LaplaceExtractor, features_extractor_kwargs=laplace, net_arch=net_arch
        ),
        seed=args.seed,
        device="cpu",
        **resolve_schedules({**ppo_settings(ENV_ID), "batch_size": 480, "n_epochs": 2}),
    )
    predictor = HistoryPredictor(model, name="PPO + LaplaceExtractor")
    before = evaluate(predictor, ENV_ID, n_tasks=105, seed=10_000, split="test")

    began = time.perf_counter()
    model.learn(
        args.timesteps, callback=[BeliefAuxLossCallback(batch_size=128), ProgressCallback(args.timesteps)]
    )
    seconds = time.perf_counter() - began
    after = evaluate(predictor, ENV_ID, n_tasks=105, seed=10_000, split="test")

    print(f"trained {args.timesteps} env steps in {seconds:.1f} s ({args.timesteps / seconds:.0f} steps/s)")
    for name, result in (("untrained", before), ("trained", after)):
        returns = " ".join(f"{value:6.2f}" for value in result.episode_returns.mean(axis=0))
        print(f"{name:<10} return per inner episode: {returns}   trial {result.trial_returns.mean():6.2f}")
    if after.belief_entropy is not None:
        entropy = np.nanmean(after.belief_entropy, axis=0)
        print("posterior entropy (nats) at steps 1, 15, 30, 60:", np.round(entropy[[0, 14, 29, 59]], 2))


if __name__ == "__main__":
    main()
