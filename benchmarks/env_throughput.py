"""Env steps/s with random actions: the native batched VecEnv vs SB3's DummyVecEnv of single envs.

Both are measured in the same run (the machines are shared and noisy: compare the ratio).

The heavy envs (MuJoCo, Meta-World; extras ``[mujoco]``/``[metaworld]``) get their own table, in
the same run: a single Gymnasium env, ``make_vec`` in process (the batch steps its robots one after
the other) and ``make_vec(..., parallel=True)`` (``SubprocVecEnv``) with ``--heavy-n-envs`` (2, 8)
worker processes; each worker builds its own Meta-World benchmark first (not timed).

A third table measures where ``parallel=True`` pays: for each ``--crossover-envs`` env
(HalfCheetahVel-v0 and Meta-World ML1 reach by default) and each N in ``--crossover-n-envs``
(1, 2, 4, 8, 16), the random-action stepping rate of ``make_vec(env_id, N, parallel=False)``
(one process, the robots stepped one after the other) against ``make_vec(env_id, N,
parallel=True)`` (N ``SubprocVecEnv`` workers), interleaved and best of ``--repeats``, with the
machine's core count, so that the crossover (cores vs envs) can be read off.

    python benchmarks/env_throughput.py [--n-envs 256] [--seconds 2] [--heavy-envs ...] [--skip-light]
    python benchmarks/env_throughput.py --quick     # a smoke run: short timings, HalfCheetahVel only
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import gymnasium as gym
import numpy as np
from stable_baselines3.common.vec_env import DummyVecEnv, VecEnv

import bayes_envs

ENV_IDS = ["BayesGrid-v0", "BayesBandit-v0", "FourierRegression-v0"]
HEAVY_ENV_IDS = [
    "HalfCheetahDir-v0",
    "HalfCheetahVel-v0",
    "AntDir-v0",
    "AntGoal-v0",
    "MetaWorld-ML1-v0",
    "MetaWorld-ML10-v0",
    "MetaWorld-ML45-v0",
]
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


def single_env_steps_per_second(env: gym.Env, seconds: float, seed: int = 0) -> float:
    """Steps/s of one Gymnasium env with random actions, restarting trials as they end."""
    env.action_space.seed(seed)
    env.reset(seed=seed)
    n_steps, start = 0, time.perf_counter()
    while time.perf_counter() - start < seconds:
        _, _, terminated, truncated, _ = env.step(env.action_space.sample())
        if terminated or truncated:
            env.reset()
        n_steps += 1
    return n_steps / (time.perf_counter() - start)


def heavy_rows(env_ids: list[str], n_envs_list: list[int], seconds: float) -> list[dict]:
    """Single env, in-process ``make_vec`` and ``SubprocVecEnv`` steps/s of each heavy env."""
    rows = []
    for env_id in env_ids:
        try:
            single = single_env_steps_per_second(gym.make(env_id), seconds)
        except ImportError as error:
            print(f"skipping {env_id}: {error}")
            continue
        row: dict = {"env_id": env_id, "single_steps_per_s": single}
        largest = max(n_envs_list)
        batched = bayes_envs.make_vec(env_id, largest, seed=0, monitor=False)
        row[f"in_process_{largest}_steps_per_s"] = steps_per_second(batched, seconds)
        for n_envs in n_envs_list:
            venv = bayes_envs.make_vec(env_id, n_envs, seed=0, monitor=False, parallel=True)
            row[f"subproc_{n_envs}_steps_per_s"] = steps_per_second(venv, seconds)
            venv.close()
        rows.append(row)
        print(", ".join(f"{k}={v:,.0f}" if isinstance(v, float) else f"{k}={v}" for k, v in row.items()))
    return rows


CROSSOVER_ENV_IDS = ["HalfCheetahVel-v0", "MetaWorld-ML1-v0"]
CROSSOVER_N_ENVS = [1, 2, 4, 8, 16]


def crossover_rows(env_ids: list[str], n_envs_list: list[int], seconds: float, repeats: int) -> list[dict]:
    """In-process vs subprocess ``make_vec`` steps/s of each env for each number of envs.

    The two are measured alternately ``repeats`` times and the best of each is kept (the machine is
    shared: the best is the least disturbed measurement). ``parallel_speedup`` > 1 means that
    ``parallel=True`` pays at that number of envs.
    """
    rows = []
    for env_id in env_ids:
        try:
            gym.make(env_id).close()
        except ImportError as error:
            print(f"skipping {env_id}: {error}")
            continue
        for n_envs in n_envs_list:
            in_process = bayes_envs.make_vec(env_id, n_envs, seed=0, monitor=False, parallel=False)
            parallel = bayes_envs.make_vec(env_id, n_envs, seed=0, monitor=False, parallel=True)
            best_in_process = best_parallel = 0.0
            for _ in range(repeats):
                best_in_process = max(best_in_process, steps_per_second(in_process, seconds))
                best_parallel = max(best_parallel, steps_per_second(parallel, seconds))
            in_process.close()
            parallel.close()
            row = {
                "env_id": env_id,
                "n_envs": n_envs,
                "cores": os.cpu_count(),
                "in_process_steps_per_s": best_in_process,
                "parallel_steps_per_s": best_parallel,
                "parallel_speedup": best_parallel / best_in_process,
            }
            rows.append(row)
            print(
                f"{env_id:<20}{n_envs:>7}{best_in_process:>16,.0f}{best_parallel:>16,.0f}"
                f"{row['parallel_speedup']:>9.2f}x"
            )
    return rows


def crossover(rows: list[dict], env_id: str) -> int | None:
    """The smallest measured number of envs from which ``parallel=True`` is faster, if any."""
    paying = [row["n_envs"] for row in rows if row["env_id"] == env_id and row["parallel_speedup"] > 1]
    return min(paying) if paying else None


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n-envs", type=int, default=256)
    parser.add_argument("--seconds", type=float, default=2.0)
    parser.add_argument("--out", type=Path, default=RESULTS / "env_throughput.json")
    parser.add_argument("--skip-light", action="store_true", help="only the heavy (MuJoCo, Meta-World) table")
    parser.add_argument("--heavy-envs", nargs="*", default=HEAVY_ENV_IDS, help="none: skip the heavy table")
    parser.add_argument("--heavy-n-envs", type=int, nargs="+", default=[2, 8])
    parser.add_argument("--heavy-out", type=Path, default=RESULTS / "env_throughput_heavy.json")
    parser.add_argument(
        "--crossover-envs", nargs="*", default=CROSSOVER_ENV_IDS, help="none: skip the crossover table"
    )
    parser.add_argument("--crossover-n-envs", type=int, nargs="+", default=CROSSOVER_N_ENVS)
    parser.add_argument("--repeats", type=int, default=3, help="crossover: alternating measurements")
    parser.add_argument("--crossover-out", type=Path, default=RESULTS / "env_throughput_crossover.json")
    parser.add_argument(
        "--quick",
        action="store_true",
        help="smoke run: 0.3 s timings, one repeat, only the HalfCheetahVel-v0 crossover table, "
        "written to *_quick.json (the numbers are indicative only)",
    )
    args = parser.parse_args()
    if args.quick:
        args.seconds, args.repeats = 0.3, 1
        args.heavy_envs, args.skip_light = [], True
        if args.crossover_envs == CROSSOVER_ENV_IDS:
            args.crossover_envs = ["HalfCheetahVel-v0"]
        args.crossover_out = args.crossover_out.with_name(args.crossover_out.stem + "_quick.json")

    if args.crossover_envs:
        print(f"{'env':<20}{'n_envs':>7}{'in-process/s':>16}{'parallel/s':>16}{'speed-up':>10}")
        rows = crossover_rows(args.crossover_envs, args.crossover_n_envs, args.seconds, args.repeats)
        for env_id in args.crossover_envs:
            first = crossover(rows, env_id)
            where = "never" if first is None else f"from {first} envs"
            print(f"{env_id}: parallel=True pays {where} on this {os.cpu_count()}-core machine")
        args.crossover_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {
            "benchmark": "env_throughput_crossover",
            "quick": args.quick,
            "seconds": args.seconds,
            "repeats": args.repeats,
            "cores": os.cpu_count(),
            "crossover_n_envs": {env_id: crossover(rows, env_id) for env_id in args.crossover_envs},
            "rows": rows,
        }
        args.crossover_out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.crossover_out} (steps/s, random actions)\n")

    if args.heavy_envs:
        heavy = heavy_rows(args.heavy_envs, args.heavy_n_envs, args.seconds)
        columns = [key for key in heavy[0] if key != "env_id"] if heavy else []
        print(f"\n{'env':<20}" + "".join(f"{c.removesuffix('_steps_per_s'):>16}" for c in columns))
        for row in heavy:
            print(f"{row['env_id']:<20}" + "".join(f"{row[c]:>16,.0f}" for c in columns))
        args.heavy_out.parent.mkdir(parents=True, exist_ok=True)
        payload = {"benchmark": "env_throughput_heavy", "seconds": args.seconds, "rows": heavy}
        args.heavy_out.write_text(json.dumps(payload, indent=2))
        print(f"wrote {args.heavy_out} (steps/s, random actions)\n")
    if args.skip_light:
        return

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
