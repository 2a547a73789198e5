"""Belief extractors under stock SB3 algorithms vs the recurrent belief policies, at equal env steps.

Two rows, each trained once from the same seed for the same number of env steps:

* ``BayesGrid-v0``, Laplace-VRNN: ``BayesPPO`` + ``LaplacePolicy`` (recurrent, posterior mean) vs
  stock ``PPO`` + ``LaplaceExtractor`` on ``TrialHistoryWrapper`` (whole-trial window) +
  ``BeliefAuxLossCallback``; same belief, heads and PPO settings (those of
  ``examples/ppo_laplace_extractor.py``).
* ``HalfCheetahVel-v0``, GLiBRL: ``BayesPPO`` + ``GLiBRLPolicy`` (on-policy, recurrent) vs stock
  ``SAC`` + ``GLiBRLExtractor`` (16-transition window) + ``BeliefAuxLossCallback`` (those of
  ``examples/sac_glibrl_extractor.py``).

Reports the wall time and env steps/s of ``learn()`` and the return per inner episode on fixed test
tasks. The budgets are small (a minute-scale smoke comparison on a shared 2-core machine, not a
learning result): compare the speeds, and read the returns only as "both train and run".

    python benchmarks/extractors.py [--grid-timesteps 9600] [--cheetah-timesteps 800]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env

import bayes_envs
from bayes_agents import BayesPPO, LaplacePolicy
from bayes_agents.callbacks import BeliefAuxLossCallback
from bayes_agents.defaults import ppo_settings
from bayes_agents.extractors import GLiBRLExtractor, HistoryPredictor, LaplaceExtractor
from bayes_agents.policies import GLiBRLPolicy
from bayes_agents.ppo import resolve_schedules
from bayes_envs.evaluation import evaluate
from bayes_envs.wrappers import TrialHistoryWrapper

RESULTS = Path(__file__).parent / "results"
GRID_LAPLACE = {
    "hidden_size": 32,
    "latent_dim": 8,
    "embed_sizes": (32,),
    "window": 1,
    "covariance": "diag",
    "variant": "sum_precision",
}
GRID_PPO = resolve_schedules({**ppo_settings("BayesGrid-v0"), "batch_size": 480, "n_epochs": 2})
CHEETAH_GLIBRL = {"basis_dim": 4, "basis_hidden_sizes": (32,)}


def timed_learn(model: Any, timesteps: int, **learn_kwargs: Any) -> float:
    began = time.perf_counter()
    model.learn(timesteps, **learn_kwargs)
    return time.perf_counter() - began


def summary(result: Any, seconds: float, timesteps: int) -> dict[str, Any]:
    return {
        "train_seconds": round(seconds, 2),
        "steps_per_second": round(timesteps / seconds, 1),
        "episode_return_mean": [round(float(v), 3) for v in result.episode_returns.mean(axis=0)],
        "trial_return_mean": round(float(result.trial_returns.mean()), 3),
    }


def grid_row(timesteps: int, seed: int) -> dict[str, Any]:
    env_id, n_tasks = "BayesGrid-v0", 105
    recurrent = BayesPPO(
        LaplacePolicy,
        bayes_envs.make_vec(env_id, 16, seed=seed),
        policy_kwargs={**GRID_LAPLACE, "n_samples": 0, "net_arch": [32]},
        seed=seed,
        device="cpu",
        **GRID_PPO,
    )
    seconds = timed_learn(recurrent, timesteps)
    recurrent_result = evaluate(recurrent, env_id, n_tasks=n_tasks, seed=10_000, split="test")
    extractor = PPO(
        "MultiInputPolicy",
        make_vec_env(lambda: TrialHistoryWrapper(gym.make(env_id)), n_envs=16, seed=seed),
        policy_kwargs={
            "features_extractor_class": LaplaceExtractor,
            "features_extractor_kwargs": GRID_LAPLACE,
            "net_arch": [32],
        },
        seed=seed,
        device="cpu",
        **GRID_PPO,
    )
    extractor_seconds = timed_learn(extractor, timesteps, callback=BeliefAuxLossCallback(batch_size=128))
    extractor_result = evaluate(
        HistoryPredictor(extractor), env_id, n_tasks=n_tasks, seed=10_000, split="test"
    )
    return {
        "env": env_id,
        "method": "laplace",
        "timesteps": timesteps,
        "test_tasks": n_tasks,
        "recurrent (BayesPPO + LaplacePolicy)": summary(recurrent_result, seconds, timesteps),
        "extractor (PPO + LaplaceExtractor)": summary(extractor_result, extractor_seconds, timesteps),
    }


def cheetah_row(timesteps: int, seed: int) -> dict[str, Any]:
    env_id, n_tasks = "HalfCheetahVel-v0", 4
    recurrent = BayesPPO(
        GLiBRLPolicy,
        bayes_envs.make_vec(env_id, 2, seed=seed),
        policy_kwargs={**CHEETAH_GLIBRL, "net_arch": [64, 64]},
        n_steps=200,
        batch_size=100,
        n_epochs=4,
        seed=seed,
        device="cpu",
    )
    seconds = timed_learn(recurrent, timesteps)
    recurrent_result = evaluate(recurrent, env_id, n_tasks=n_tasks, seed=10_000)
    extractor = SAC(
        "MultiInputPolicy",
        TrialHistoryWrapper(gym.make(env_id), window=16),
        policy_kwargs={
            "features_extractor_class": GLiBRLExtractor,
            "features_extractor_kwargs": CHEETAH_GLIBRL,
            "net_arch": [64, 64],
        },
        buffer_size=10_000,
        learning_starts=200,
        batch_size=64,
        train_freq=8,
        seed=seed,
        device="cpu",
    )
    extractor_seconds = timed_learn(extractor, timesteps, callback=BeliefAuxLossCallback(batch_size=32))
    extractor_result = evaluate(HistoryPredictor(extractor), env_id, n_tasks=n_tasks, seed=10_000)
    return {
        "env": env_id,
        "method": "glibrl",
        "timesteps": timesteps,
        "test_tasks": n_tasks,
        "recurrent (BayesPPO + GLiBRLPolicy)": summary(recurrent_result, seconds, timesteps),
        "extractor (SAC + GLiBRLExtractor, window 16)": summary(
            extractor_result, extractor_seconds, timesteps
        ),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--grid-timesteps", type=int, default=9_600)
    parser.add_argument("--cheetah-timesteps", type=int, default=800)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    torch.set_num_threads(1)

    rows = [grid_row(args.grid_timesteps, args.seed), cheetah_row(args.cheetah_timesteps, args.seed)]
    print(f"{'env / method':<28}{'version':<46}{'steps/s':>9}{'train s':>9}  return per inner episode")
    for row in rows:
        for version, values in row.items():
            if isinstance(values, dict):
                returns = " ".join(f"{value:7.2f}" for value in values["episode_return_mean"])
                print(
                    f"{row['env'] + ' ' + row['method']:<28}{version:<46}"
                    f"{values['steps_per_second']:>9.1f}{values['train_seconds']:>9.1f}  {returns}"
                )
    RESULTS.mkdir(parents=True, exist_ok=True)
    payload = {"benchmark": "extractors", "settings": vars(args), "rows": rows}
    path = RESULTS / "extractors.json"
    path.write_text(json.dumps(payload, indent=2))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
