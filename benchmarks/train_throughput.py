"""Training throughput of ``learn()`` on BayesGrid-v0: stock MlpLstmPolicy vs the belief policies
(RL², Laplace-VRNN, VRNN, VariBAD, GLiBRL).

Every row uses the same env batch (16 native envs), n_steps, batch size, epochs and recurrent
hidden size, in one run (the machines are shared and noisy: compare the ratios). Reports env
steps/s of the whole ``learn()`` and the seconds per PPO update (``train()``) alone.

    python benchmarks/train_throughput.py [--timesteps 8192] [--threads 1] [--only "RL2Policy|k=1"]
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import torch
from sb3_contrib import RecurrentPPO

import bayes_envs
from bayes_agents import BayesPPO, GLiBRLPolicy, LaplacePolicy, RL2Policy, VariBADPolicy, VRNNPolicy
from bayes_agents.methods import method_defaults

RESULTS = Path(__file__).parent / "results"


Row = tuple[str, type, Any, dict[str, Any], dict[str, Any]]


def configurations(hidden_size: int, latent_dim: int) -> list[Row]:
    """(name, algorithm, policy, policy_kwargs, algorithm_kwargs) rows.

    The stock policy feeds the flattened observation straight into its LSTMs, so the belief rows
    use no input embedding (``embed_sizes=()``) for an equal-architecture comparison; one RL² row
    adds the paper's (256, 256) embedding to show its cost. The Laplace rows reuse the rollout's
    precisions in the update (BayesPPO's default); the "recompute" rows recompute them for every
    minibatch (``reuse_rollout_precision=False``, what stock ``RecurrentPPO`` does).
    """
    belief = {"hidden_size": hidden_size, "latent_dim": latent_dim, "embed_sizes": ()}
    rows: list[Row] = [
        (
            "stock MultiInputLstmPolicy",
            RecurrentPPO,
            "MultiInputLstmPolicy",
            {"lstm_hidden_size": hidden_size},
            {},
        ),
        ("RL2Policy", RecurrentPPO, RL2Policy, belief, {}),
        ("RL2Policy embed (256, 256)", RecurrentPPO, RL2Policy, {**belief, "embed_sizes": (256, 256)}, {}),
    ]
    for window in (1, 15):
        for covariance in ("full", "diag"):
            laplace = {**belief, "window": window, "covariance": covariance, "variant": "sum_precision"}
            name = f"LaplacePolicy k={window} {covariance}"
            rows.append((name, BayesPPO, LaplacePolicy, {**laplace, "n_samples": 1}, {}))
            if window == 1:
                recompute = {"reuse_rollout_precision": False}
                rows.append(
                    (f"{name} recompute", BayesPPO, LaplacePolicy, {**laplace, "n_samples": 1}, recompute)
                )
    rows.append(
        ("VRNNPolicy full", BayesPPO, VRNNPolicy, {**belief, "covariance": "full", "n_samples": 1}, {})
    )
    # VariBAD and GLiBRL have their own encoders: the grid defaults of bayes_agents.methods (VariBAD:
    # GRU 64, latent 5, per-cell reward decoder, 3 VAE updates per PPO update; GLiBRL: basis 16),
    # plus a VariBAD row with the recurrence and latent sizes of the other rows.
    for name, policy in (("varibad", VariBADPolicy), ("glibrl", GLiBRLPolicy)):
        kwargs = method_defaults("BayesGrid-v0", name)["policy"]
        kwargs.pop("net_arch", None)
        rows.append((f"{policy.__name__} (grid defaults)", BayesPPO, policy, kwargs, {}))
        if name == "varibad":
            sized = {**kwargs, "hidden_size": hidden_size, "latent_dim": latent_dim}
            rows.append(
                (f"{policy.__name__} GRU {hidden_size}, latent {latent_dim}", BayesPPO, policy, sized, {})
            )
    return rows


class TimedTrain:
    """Accumulates the wall time spent in ``model.train()`` (the PPO update)."""

    def __init__(self, model: Any) -> None:
        self.seconds, self.updates = 0.0, 0
        stock_train = model.train

        def timed() -> None:
            start = time.perf_counter()
            stock_train()
            self.seconds += time.perf_counter() - start
            self.updates += 1

        model.train = timed


def measure(
    name: str,
    algorithm: type,
    policy: Any,
    policy_kwargs: dict[str, Any],
    algorithm_kwargs: dict[str, Any],
    args: argparse.Namespace,
) -> dict:
    venv = bayes_envs.make_vec("BayesGrid-v0", args.n_envs, seed=0)
    model = algorithm(
        policy,
        venv,
        n_steps=args.n_steps,
        batch_size=args.batch_size,
        n_epochs=args.n_epochs,
        policy_kwargs=policy_kwargs,
        seed=0,
        device="cpu",
        **algorithm_kwargs,
    )
    model.learn(args.n_steps * args.n_envs)  # warm-up rollout + update
    timer = TimedTrain(model)
    start = time.perf_counter()
    model.learn(args.timesteps, reset_num_timesteps=False)
    seconds = time.perf_counter() - start
    return {
        "policy": name,
        "env_steps_per_s": args.timesteps / seconds,
        "seconds_per_update": timer.seconds / max(timer.updates, 1),
        "updates": timer.updates,
        "parameters": sum(p.numel() for p in model.policy.parameters()),
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--timesteps", type=int, default=8192)
    parser.add_argument("--n-envs", type=int, default=16)
    parser.add_argument("--n-steps", type=int, default=128)
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--n-epochs", type=int, default=4)
    parser.add_argument("--hidden-size", type=int, default=128)
    parser.add_argument("--latent-dim", type=int, default=64)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument(
        "--only",
        default=None,
        help="run only the rows whose name contains one of these |-separated substrings",
    )
    parser.add_argument("--out", type=Path, default=RESULTS / "train_throughput.json")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)

    rows = []
    for name, algorithm, policy, kwargs, algorithm_kwargs in configurations(
        args.hidden_size, args.latent_dim
    ):
        if args.only and not any(part in name for part in args.only.split("|")):
            continue
        rows.append(measure(name, algorithm, policy, kwargs, algorithm_kwargs, args))
        print(f"  measured {name}", flush=True)
    reference = {row["policy"]: row for row in rows}
    stock, rl2 = reference.get("stock MultiInputLstmPolicy"), reference.get("RL2Policy")
    print(
        f"\n{'policy':<30}{'env steps/s':>12}{'s/update':>10}{'vs stock':>10}"
        f"{'update vs RL2':>15}{'params':>10}"
    )
    for row in rows:
        row["speedup_vs_stock"] = row["env_steps_per_s"] / stock["env_steps_per_s"] if stock else None
        row["update_cost_vs_rl2"] = row["seconds_per_update"] / rl2["seconds_per_update"] if rl2 else None
        vs_stock = f"{row['speedup_vs_stock']:.1f}x" if stock else "-"
        vs_rl2 = f"{row['update_cost_vs_rl2']:.2f}x" if rl2 else "-"
        print(
            f"{row['policy']:<30}{row['env_steps_per_s']:>12,.0f}{row['seconds_per_update']:>10.2f}"
            f"{vs_stock:>10}{vs_rl2:>15}{row['parameters']:>10,}"
        )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    settings = {key: value for key, value in vars(args).items() if key != "out"}
    args.out.write_text(
        json.dumps(
            {"benchmark": "train_throughput", "env_id": "BayesGrid-v0", "settings": settings, "rows": rows},
            indent=2,
        )
    )
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
