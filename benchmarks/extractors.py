"""Belief extractors under stock SB3 algorithms: env steps/s against the recurrent belief policies.

One run, one torch thread; every rate is env steps per second of a whole ``learn()`` after a
warm-up ``learn()`` (compare rates measured in one run: the machines are shared and noisy).

* ``grid`` (BayesGrid-v0, 16 envs, the package's grid belief and PPO settings for the method, 16
  envs instead of the CLI's 64, so minibatches of 240 steps): ``BayesPPO`` with the recurrent policy
  against stock ``PPO("MultiInputPolicy")`` with the method's extractor over whole-trial histories
  (:func:`~bayes_agents.methods.extractor_defaults`: the same belief and heads),
  on the batched envs (``TrialHistoryVecWrapper(bayes_envs.make_vec(...))``) and on SB3's
  ``make_vec_env`` of ``TrialHistoryWrapper`` envs, for RL² and Laplace-VRNN (the latter with
  ``BeliefAuxLossCallback``).
* ``sac`` (HalfCheetahDir-v0, one env): stock ``SAC("MultiInputPolicy")`` at SB3's defaults
  (``train_freq`` 1, ``gradient_steps`` 1, batch 256) with an extractor over the last 16 steps
  (``TrialHistoryWrapper(window=16)``) and the package's MuJoCo belief settings
  (:func:`~bayes_agents.methods.extractor_defaults`, SAC's own 256×256 heads), and plain SAC on the
  env's plain observation (no belief) for reference; then RL² at the settings of
  ``benchmarks/learning_sac.py``: a window of 8, on one env and on 8 batched envs
  (``TrialHistoryVecWrapper``; SB3's ``train_freq`` counts steps of the VecEnv, so one gradient step
  per 8 env steps), with plain SAC on 8 envs for reference; and on 8 envs with SB3's
  ``share_features_extractor=True`` (one extractor, trained by the actor loss; the critic's features
  run without gradients and reuse the actor's pass), for RL² and Laplace-VRNN.

Ratios with the throughput issue's targets: PPO + extractor (batched envs) ≥ 0.5× ``BayesPPO`` with
the same belief; SAC + extractor ≥ 100 env steps/s.

    python benchmarks/extractors.py [--quick] [--only "grid|sac"] [--out FILE]

Writes ``benchmarks/results/extractors.json``; ``--quick`` is a smoke run (meaningless numbers).
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import torch
from learning import git_commit
from stable_baselines3 import PPO, SAC
from stable_baselines3.common.env_util import make_vec_env

import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.callbacks import BeliefAuxLossCallback
from bayes_agents.experiment import atomic_write_text
from bayes_agents.extractors import EXTRACTORS
from bayes_agents.methods import extractor_defaults, get_method, method_defaults
from bayes_agents.ppo import resolve_schedules
from bayes_envs.wrappers import TrialHistoryVecWrapper, TrialHistoryWrapper

RESULTS = Path(__file__).parent / "results"
GRID = "BayesGrid-v0"
CHEETAH = "HalfCheetahDir-v0"
N_ENVS = 16
SAC_WINDOW = 16
SAC_SHORT_WINDOW = 8
SAC_VEC_ENVS = 8


def rate(
    model: Any, timesteps: int, warmup: int, callback: Callable[[], Any] | None = None
) -> dict[str, float]:
    """Env steps/s of ``model.learn(timesteps)`` after ``learn(warmup)`` (a fresh callback each)."""
    model.learn(warmup, callback=None if callback is None else callback())
    began = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False, callback=None if callback is None else callback())
    seconds = time.perf_counter() - began
    return {"env_steps_per_s": timesteps / seconds, "seconds": seconds, "timesteps": timesteps}


def grid(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    rows = {}
    for method in ("rl2", "laplace"):
        defaults = method_defaults(GRID, method)
        ppo = dict(defaults["ppo"])
        ppo["batch_size"] = ppo["n_steps"] * N_ENVS // 4  # four minibatches, as at the CLI's 64 envs
        if args.quick:
            ppo.update(n_steps=16, batch_size=64, n_epochs=1)
        rollout = ppo["n_steps"] * N_ENVS
        timesteps = rollout * (1 if args.quick else 8)
        policy_kwargs = dict(defaults["policy"])
        if method == "laplace":
            policy_kwargs["n_samples"] = 0  # the extractor gives the posterior mean to the heads
        callback = (lambda: BeliefAuxLossCallback(batch_size=128)) if method == "laplace" else None
        label = get_method(method).policy_class.__name__
        recurrent = BayesPPO(
            get_method(method).policy_class,
            bayes_envs.make_vec(GRID, N_ENVS, seed=0),
            policy_kwargs=policy_kwargs,
            seed=0,
            device="cpu",
            **ppo,
        )
        rows[f"BayesPPO + {label}"] = rate(recurrent, timesteps, rollout)
        extractor_kwargs = extractor_defaults(GRID, method)
        envs = {
            "batched envs": lambda: TrialHistoryVecWrapper(bayes_envs.make_vec(GRID, N_ENVS, seed=0)),
            "make_vec_env": lambda: make_vec_env(
                lambda: TrialHistoryWrapper(gym.make(GRID)), n_envs=N_ENVS, seed=0
            ),
        }
        for env_name, make_env in envs.items():
            model = PPO(
                "MultiInputPolicy",
                make_env(),
                policy_kwargs=extractor_kwargs,
                seed=0,
                device="cpu",
                **resolve_schedules(ppo),
            )
            name = f"PPO + {EXTRACTORS[method].__name__} ({env_name})"
            rows[name] = rate(model, timesteps, rollout, callback)
    return rows


def sac_callback(method: str) -> Callable[[], BeliefAuxLossCallback] | None:
    """A fresh ``BeliefAuxLossCallback`` per ``learn()`` for beliefs with an auxiliary loss (not RL²)."""
    return None if method == "rl2" else (lambda: BeliefAuxLossCallback(batch_size=64))


def sac(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    timesteps, warmup = (20, 120) if args.quick else (150, 150)  # SAC learns from step 100
    rows = {
        "SAC, no belief (plain observation)": rate(
            SAC("MlpPolicy", gym.make(CHEETAH, rl2_inputs=False), seed=0, device="cpu"), timesteps, warmup
        )
    }

    def with_extractor(method: str, env: Any, shared: bool = False) -> SAC:
        policy_kwargs = {  # SAC's own heads (256, 256), as in the plain SAC row
            key: value for key, value in extractor_defaults(CHEETAH, method).items() if key != "net_arch"
        }
        return SAC(
            "MultiInputPolicy",
            env,
            policy_kwargs={**policy_kwargs, "share_features_extractor": shared},
            buffer_size=50_000,
            seed=0,
            device="cpu",
        )

    for method in ("rl2", "laplace", "glibrl"):
        model = with_extractor(method, TrialHistoryWrapper(gym.make(CHEETAH), window=SAC_WINDOW))
        callback = sac_callback(method)
        rows[f"SAC + {EXTRACTORS[method].__name__} (window {SAC_WINDOW})"] = rate(
            model, timesteps, warmup, callback
        )
    # The settings of benchmarks/learning_sac.py: a window of 8 steps, and 8 envs, where SB3's default
    # train_freq (1 step of the VecEnv) and gradient_steps (1) make one gradient step per 8 env steps.
    model = with_extractor("rl2", TrialHistoryWrapper(gym.make(CHEETAH), window=SAC_SHORT_WINDOW))
    rows[f"SAC + RL2Extractor (window {SAC_SHORT_WINDOW})"] = rate(model, timesteps, warmup)
    n_envs = SAC_VEC_ENVS
    venv = TrialHistoryVecWrapper(bayes_envs.make_vec(CHEETAH, n_envs, seed=0), window=SAC_SHORT_WINDOW)
    rows[f"SAC + RL2Extractor (window {SAC_SHORT_WINDOW}, {n_envs} envs)"] = rate(
        with_extractor("rl2", venv), timesteps * n_envs // 2, warmup * n_envs // 2
    )
    for method in ("rl2", "laplace"):
        venv = TrialHistoryVecWrapper(bayes_envs.make_vec(CHEETAH, n_envs, seed=0), window=SAC_SHORT_WINDOW)
        callback = sac_callback(method)
        settings = f"window {SAC_SHORT_WINDOW}, {n_envs} envs, shared extractor"
        name = f"SAC + {EXTRACTORS[method].__name__} ({settings})"
        rows[name] = rate(
            with_extractor(method, venv, shared=True), timesteps * n_envs // 2, warmup * n_envs // 2, callback
        )
    plain = SAC(
        "MlpPolicy", bayes_envs.make_vec(CHEETAH, n_envs, seed=0, rl2_inputs=False), seed=0, device="cpu"
    )
    rows[f"SAC, no belief ({n_envs} envs)"] = rate(plain, timesteps * n_envs // 2, warmup * n_envs // 2)
    return rows


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], dict[str, dict[str, float]]]] = {
    "grid": grid,
    "sac": sac,
}


def ratios(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """The issue's targets from what was measured: ``{name: {value, target, met}}``."""
    out = {}
    rows = results.get("grid", {})
    for method in ("rl2", "laplace"):
        label = get_method(method).policy_class.__name__
        recurrent = rows.get(f"BayesPPO + {label}")
        extractor = rows.get(f"PPO + {EXTRACTORS[method].__name__} (batched envs)")
        if recurrent and extractor:
            value = extractor["env_steps_per_s"] / recurrent["env_steps_per_s"]
            out[f"PPO + {EXTRACTORS[method].__name__} vs BayesPPO + {label}"] = {
                "value": value,
                "target": ">= 0.5",
                "met": value >= 0.5,
            }
    for name, row in results.get("sac", {}).items():
        if "Extractor" in name:  # one gradient step per env step, or per 8 env steps with 8 envs
            value = row["env_steps_per_s"]
            out[f"{name} env steps/s"] = {"value": value, "target": ">= 100", "met": value >= 100}
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, meaningless numbers")
    parser.add_argument("--only", default=None, help=f"|-separated subset of {'|'.join(MEASUREMENTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "extractors.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    chosen = args.only.split("|") if args.only else list(MEASUREMENTS)
    unknown = sorted(set(chosen) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"--only: unknown measurements {unknown}; choose from {list(MEASUREMENTS)}")
    results = {}
    for name in chosen:
        began = time.perf_counter()
        results[name] = MEASUREMENTS[name](args)
        print(f"  measured {name} in {time.perf_counter() - began:.0f} s", flush=True)
    targets = ratios(results)
    width = max(len(f"{group}: {name}") for group, rows in results.items() for name in rows) + 2
    print(f"\n{'measurement':<{width}}{'env steps/s':>13}{'seconds':>10}")
    for group, rows in results.items():
        for name, row in rows.items():
            print(f"{group + ': ' + name:<{width}}{row['env_steps_per_s']:>13,.1f}{row['seconds']:>10.1f}")
    print(f"\n{'ratio':<{width}}{'value':>9}{'target':>10}{'met':>6}")
    for name, row in targets.items():
        print(f"{name:<{width}}{row['value']:>9.2f}{row['target']:>10}{'yes' if row['met'] else 'NO':>6}")
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    payload = {
        "benchmark": "extractors",
        "git": git_commit(),
        "settings": settings,
        "results": results,
        "ratios": targets,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
