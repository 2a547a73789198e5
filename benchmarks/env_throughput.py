"""Env steps/s with random actions: the native batched VecEnv vs SB3's DummyVecEnv of single envs.

Both are measured in the same run (the machines are shared and noisy: compare the ratio).

    python benchmarks/env_throughput.py [--n-envs 256] [--seconds 2]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

import bayes_envs

ENV_IDS = ["BayesGrid-v0", "BayesBandit-v0", "FourierRegression-v0"]
RESULTS = Path(__file__).parent / "results"


def steps_per_second(venv: VecEnv, seconds: float, seed: int = 0) -> float:
    """Env steps/s (``n_envs`` per ``step``) over at least ``seconds`` of stepping, random actions."""
    rng = np.random.default_rng(seed)
    n_envs = venv.num_envs
    space = venv.action_space
    batches = [
        rng.integers(space.n, size=n_envs)
        if isinstance(space, gym.spaces.Discrete)
        else rng.uniform(space.low, space.high, (n_envs, *space.shape)).astype(np.float32)
        for _ in range(16)
    ]
    venv.reset()
    for actions in batches[:4]:  # warm-up
        venv.step(actions)
    n_calls, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        venv.step(batches[n_calls % len(batches)])
        n_calls += 1
    return n_calls * n_envs / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-envs", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "env_throughput.json")
    args = parser.parse_args()

    rows = []
    for env_id in ENV_IDS:
        batched = bayes_envs.make_vec(env_id, args.n_envs, seed=0, monitor=False)
        dummy = DummyVecEnv([lambda env_id=env_id: gym.make(env_id)] * args.n_envs)
        dummy.seed(0)
        native = steps_per_second(batched, args.seconds)
        looped = steps_per_second(dummy, args.seconds)
        rows.append(
            {
                "env_id": env_id,
                "n_envs": args.n_envs,
                "batched_steps_per_s": native,
                "dummy_vec_env_steps_per_s": looped,
                "speedup": native / looped,
            }
        )

    print(f"{'env':<22}{'n_envs':>7}{'batched steps/s':>18}{'DummyVecEnv steps/s':>22}{'speed-up':>10}")
    for row in rows:
        print(
            f"{row['env_id']:<22}{row['n_envs']:>7}{row['batched_steps_per_s']:>18,.0f}"
            f"{row['dummy_vec_env_steps_per_s']:>22,.0f}{row['speedup']:>9.1f}x"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"benchmark": "env_throughput", "rows": rows}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
