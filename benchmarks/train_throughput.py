"""Training throughput: the ratios of the throughput issue in one run (the machines are shared and
noisy: compare ratios measured together, on an idle machine, one torch thread).

Rows (env steps/s of the whole ``learn()``, after a warm-up rollout and update):

* grid defaults (16 native envs, the package's BayesGrid-v0 PPO settings): stock
  ``MultiInputLstmPolicy`` (LSTM 128) under ``RecurrentPPO`` vs RL², VariBAD and GLiBRL under
  ``BayesPPO`` at their grid defaults (:func:`bayes_agents.methods.method_defaults`), and GLiBRL with
  its basis trained in every PPO minibatch (the bandit's setting);
* the same at the ``bayes-rl`` CLI's grid run defaults (``grid64``: 64 envs, minibatches of 960
  steps), what ``bayes-rl train BayesGrid-v0`` runs;
* the design card's call, one env and RecurrentPPO's default settings (n_steps 128, batch 128,
  10 epochs): ``RecurrentPPO(LaplacePolicy, gym.make("BayesGrid-v0")).learn(10_000)`` and the same
  with ``RL2Policy``, wall time of ``learn``;
* acting cost: one fused acting step (:meth:`~bayes_agents.policies.BeliefPolicy.act`) of 16 grid envs,
  Laplace (k=1, full, latent 64) vs RL² (same recurrence);
* HalfCheetahVel-v0: RL² ``learn()`` with 16 in-process envs at the package's MuJoCo PPO settings
  (and with the lighter update of the issue's first measurement, 2 epochs over 200-step rollouts,
  and with the update's sequences cut every 50 steps, ``BayesPPO(sequence_length=50)``) vs the same
  envs stepping random actions.

    python benchmarks/train_throughput.py [--quick] [--threads 1] [--only "grid|grid64|card|acting|mujoco"]

``--quick`` is a smoke run (tiny budgets, MuJoCo with short rollouts): its numbers mean nothing.
Writes ``benchmarks/results/train_throughput.json`` (``--out``): the measurements and the ratios with
their targets.
"""

from __future__ import annotations

import argparse
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3.common.utils import obs_as_tensor

import bayes_envs
from bayes_agents import BayesPPO, GLiBRLPolicy, LaplacePolicy, RL2Policy, VariBADPolicy
from bayes_agents.defaults import ppo_settings, run_settings
from bayes_agents.methods import method_defaults
from bayes_agents.ppo import resolve_schedules

RESULTS = Path(__file__).parent / "results"
GRID = "BayesGrid-v0"
MUJOCO = "HalfCheetahVel-v0"
MUJOCO_SEQUENCE_LENGTH = 50
N_ENVS = 16
#: GLiBRL's basis trained in every PPO minibatch plus 4 steps of its own after the update.
GLIBRL_BASIS_IN_MINIBATCHES = {
    "model_loss_in_policy_update": True,
    "basis_update_timing": "after",
    "basis_updates_per_ppo_update": 4,
    "basis_lr": 1e-3,
}


def learn_rate(model: Any, timesteps: int, warmup: int) -> dict[str, float]:
    """Env steps/s of ``model.learn(timesteps)`` after a warm-up ``learn(warmup)``."""
    model.learn(warmup)
    start = time.perf_counter()
    model.learn(timesteps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    return {"env_steps_per_s": timesteps / seconds, "seconds": seconds, "timesteps": timesteps}


def grid_defaults(args: argparse.Namespace, n_envs: int = N_ENVS) -> dict[str, dict[str, float]]:
    """Stock LSTM, RL², VariBAD and GLiBRL at the package's grid PPO settings, ``n_envs`` envs."""
    ppo = ppo_settings(GRID)
    rollout = ppo["n_steps"] * n_envs
    ppo["batch_size"] = rollout // 4  # four minibatches per epoch, as the defaults' 64 envs have
    # About 5 s per measurement on an idle core (the stock policy is ~8x slower per step).
    timesteps = rollout * (1 if args.quick else max(2, 8 * N_ENVS // n_envs))
    belief_timesteps = rollout * (1 if args.quick else 48 * N_ENVS // n_envs)
    rows = {}
    venv = bayes_envs.make_vec(GRID, n_envs, seed=0)
    stock = RecurrentPPO(
        "MultiInputLstmPolicy",
        venv,
        policy_kwargs={"lstm_hidden_size": 128},
        seed=0,
        device="cpu",
        **resolve_schedules(ppo),
    )
    rows["stock MultiInputLstmPolicy"] = learn_rate(stock, timesteps, rollout)
    variants = [
        (f"{policy.__name__} (BayesPPO, grid defaults)", policy, name, {})
        for name, policy in (("rl2", RL2Policy), ("varibad", VariBADPolicy), ("glibrl", GLiBRLPolicy))
    ]
    # What GLiBRL's grid default saves: the basis stepped by the PPO optimizer in every minibatch (the
    # bandit's setting, and the grid's before) runs the belief with gradients in each of them.
    variants.append(
        (
            "GLiBRLPolicy (BayesPPO, basis in every minibatch)",
            GLiBRLPolicy,
            "glibrl",
            GLIBRL_BASIS_IN_MINIBATCHES,
        )
    )
    for label, policy, name, changes in variants:
        defaults = method_defaults(GRID, name)
        venv = bayes_envs.make_vec(GRID, n_envs, seed=0)
        model = BayesPPO(
            policy,
            venv,
            policy_kwargs={**defaults["policy"], **changes},
            seed=0,
            device="cpu",
            **defaults["ppo"],
        )
        rows[label] = learn_rate(model, belief_timesteps, rollout)
    return rows


def design_card(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """The README's first snippet as written (one env, RecurrentPPO's defaults), wall time of learn."""
    timesteps = 256 if args.quick else 10_000
    rows = {}
    for policy in (RL2Policy, LaplacePolicy):
        model = RecurrentPPO(policy, gym.make(GRID))
        start = time.perf_counter()
        model.learn(timesteps)
        seconds = time.perf_counter() - start
        rows[f"RecurrentPPO({policy.__name__}) learn({timesteps})"] = {
            "seconds": seconds,
            "env_steps_per_s": timesteps / seconds,
            "timesteps": timesteps,
        }
    return rows


def acting_cost(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """Milliseconds per fused acting step of 16 grid envs (no env stepping)."""
    steps = 50 if args.quick else 2000
    venv = bayes_envs.make_vec(GRID, N_ENVS, seed=0, monitor=False)
    obs = obs_as_tensor(venv.reset(), "cpu")
    rows = {}
    for name, policy_class, kwargs in (
        ("RL2Policy", RL2Policy, {}),
        ("LaplacePolicy k=1 full latent 64", LaplacePolicy, {"window": 1, "covariance": "full"}),
    ):
        policy = policy_class(venv.observation_space, venv.action_space, lambda _: 3e-4, **kwargs).eval()
        zeros = torch.zeros(1, N_ENVS, policy.lstm_actor.hidden_size)
        slots, starts = (zeros, zeros), torch.zeros(N_ENVS)
        for _ in range(10):
            _, _, _, slots = policy.act(obs, slots, starts)
        start = time.perf_counter()
        for _ in range(steps):
            _, _, _, slots = policy.act(obs, slots, starts)
        rows[name] = {"ms_per_step": 1e3 * (time.perf_counter() - start) / steps}
    return rows


def mujoco(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """RL² learn() on HalfCheetahVel-v0 (16 in-process envs) vs their random-action stepping rate."""
    ppo = ppo_settings(MUJOCO)
    venv = bayes_envs.make_vec(MUJOCO, N_ENVS, seed=0)
    steps = 50 if args.quick else 2000
    venv.reset()
    actions = np.stack([venv.action_space.sample() for _ in range(N_ENVS)])
    start = time.perf_counter()
    for _ in range(steps):
        venv.step(actions)
    raw = {"env_steps_per_s": steps * N_ENVS / (time.perf_counter() - start)}
    defaults = method_defaults(MUJOCO, "rl2")
    rows = {"random actions (16 envs)": raw}
    # The package's MuJoCo settings (the VariBAD reference's, bayes_agents.defaults), and the lighter
    # update the first measurement used (2 epochs over 200-step rollouts).
    light = {**ppo, "n_steps": 200, "batch_size": 800, "n_epochs": 2}
    # Truncated backpropagation through time: the update's sequences cut every 50 steps (BayesPPO's
    # sequence_length), so the recurrence runs [50, 64] batches instead of [400, 8].
    chunked = {**ppo, "sequence_length": MUJOCO_SEQUENCE_LENGTH}
    for name, settings in (
        ("MuJoCo defaults", ppo),
        ("n_steps 200, 2 epochs", light),
        (f"MuJoCo defaults, sequence_length {MUJOCO_SEQUENCE_LENGTH}", chunked),
    ):
        if args.quick:
            settings = {**settings, "n_steps": 16, "batch_size": 64, "n_epochs": 1}
        model = BayesPPO(RL2Policy, venv, policy_kwargs=defaults["policy"], seed=0, device="cpu", **settings)
        rollout = settings["n_steps"] * N_ENVS
        rows[f"RL2Policy learn (BayesPPO, 16 envs, {name})"] = learn_rate(
            model, rollout * (1 if args.quick else 6), rollout
        )
    return rows


def grid_run_defaults(args: argparse.Namespace) -> dict[str, dict[str, float]]:
    """:func:`grid_defaults` with the CLI's number of grid envs (64)."""
    return grid_defaults(args, run_settings(GRID)["n_envs"])


MEASUREMENTS: dict[str, Callable[[argparse.Namespace], dict[str, dict[str, float]]]] = {
    "grid": grid_defaults,
    "grid64": grid_run_defaults,
    "card": design_card,
    "acting": acting_cost,
    "mujoco": mujoco,
}


def ratios(results: dict[str, dict[str, dict[str, float]]]) -> dict[str, dict[str, Any]]:
    """The issue's targets from whatever was measured: ``{name: {value, target, met}}``."""

    def rate(group: str, row: str) -> float | None:
        return results.get(group, {}).get(row, {}).get("env_steps_per_s")

    out: dict[str, dict[str, Any]] = {}

    def add(name: str, value: float | None, target: float, at_least: bool = True) -> None:
        if value is not None:
            met = value >= target if at_least else value <= target
            out[name] = {"value": value, "target": f"{'>=' if at_least else '<='} {target:.3g}", "met": met}

    for group, label in (("grid", "grid defaults"), ("grid64", "CLI grid defaults, 64 envs")):
        grid_rl2 = rate(group, "RL2Policy (BayesPPO, grid defaults)")
        grid_stock = rate(group, "stock MultiInputLstmPolicy")
        if grid_rl2 and grid_stock:
            add(f"RL2 BayesPPO vs stock LSTM ({label})", grid_rl2 / grid_stock, 8.0)
        for method in ("VariBADPolicy", "GLiBRLPolicy"):
            value = rate(group, f"{method} (BayesPPO, grid defaults)")
            if value and grid_rl2:
                add(f"{method} vs RL2 learn ({label})", value / grid_rl2, 0.5)
    card = results.get("card", {})
    laplace = next((row for name, row in card.items() if "LaplacePolicy" in name), None)
    rl2 = next((row for name, row in card.items() if "RL2Policy" in name), None)
    if laplace and rl2:
        laplace_vs_rl2 = laplace["env_steps_per_s"] / rl2["env_steps_per_s"]
        add("stock RecurrentPPO Laplace vs RL2 (design card)", laplace_vs_rl2, 0.5)
        add("design card Laplace learn wall time (s)", laplace["seconds"], 60.0, at_least=False)
        add("design card RL2 learn wall time (s) vs Laplace's", rl2["seconds"], laplace["seconds"], False)
    acting = results.get("acting", {})
    if len(acting) == 2:
        rl2_ms, laplace_ms = (row["ms_per_step"] for row in acting.values())
        add("Laplace k=1 full acting cost vs RL2", laplace_ms / rl2_ms, 1.5, at_least=False)
    cheetah = results.get("mujoco", {})
    raw = cheetah.get("random actions (16 envs)", {}).get("env_steps_per_s")
    for name, row in cheetah.items():
        if raw and name.startswith("RL2Policy learn"):
            setting = name[name.index("envs, ") + 6 : -1]
            ratio = row["env_steps_per_s"] / raw
            add(f"HalfCheetahVel RL2 learn vs random-action env rate ({setting})", ratio, 0.5)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--quick", action="store_true", help="smoke run: tiny budgets, meaningless numbers")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--only", default=None, help=f"|-separated subset of {'|'.join(MEASUREMENTS)}")
    parser.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    chosen = args.only.split("|") if args.only else list(MEASUREMENTS)
    unknown = sorted(set(chosen) - set(MEASUREMENTS))
    if unknown:
        parser.error(f"--only: unknown measurements {unknown}; choose from {list(MEASUREMENTS)}")

    results: dict[str, dict[str, dict[str, float]]] = {}
    for name in chosen:
        started = time.perf_counter()
        results[name] = MEASUREMENTS[name](args)
        print(f"  measured {name} in {time.perf_counter() - started:.0f} s", flush=True)

    targets = ratios(results)
    labels = [f"{group}: {name}" for group, rows in results.items() for name in rows]
    width = max(len(label) for label in [*labels, *targets, "measurement"]) + 2
    print(f"\n{'measurement':<{width}}{'env steps/s':>13}{'seconds':>10}{'ms/step':>9}")
    for group, rows in results.items():
        for name, row in rows.items():
            steps = f"{row['env_steps_per_s']:,.0f}" if "env_steps_per_s" in row else "-"
            seconds = f"{row['seconds']:.1f}" if "seconds" in row else "-"
            per_step = f"{row['ms_per_step']:.3f}" if "ms_per_step" in row else "-"
            print(f"{group + ': ' + name:<{width}}{steps:>13}{seconds:>10}{per_step:>9}")
    print(f"\n{'ratio':<{width}}{'value':>9}{'target':>10}{'met':>6}")
    for name, row in targets.items():
        print(f"{name:<{width}}{row['value']:>9.2f}{row['target']:>10}{'yes' if row['met'] else 'NO':>6}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()}
    payload = {"benchmark": "train_throughput", "settings": settings, "results": results, "ratios": targets}
    args.out.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
