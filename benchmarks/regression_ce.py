"""Zero-shot Fourier regression (Laplace-VRNN paper §5.1, Figures 3, 4 and 8): predictive cross-entropy
on held-out tasks vs the number of context points t = 0..100 (trained on trials of 50 points), and the
posterior entropy and KL(q_t ‖ q_{t−1}) over t, for every model and protocol:

* scratch: RNN point estimate, VRNN (full, diag), Laplace-VRNN (stationary, sum_precision; diag);
* finetune: the RNN's snapshot at half of training with a VRNN / Laplace posterior attached, trained for
  the other half of the steps (the same update budget as from scratch; the paper's protocol, B.5);
* posthoc: the fully trained RNN with a Laplace posterior (stationary, sum_precision; full, diag) and
  no training at all.

Every seed trains its own models and evaluates all of them on the same held-out tasks (the seed's test
stream); the table gives the mean over seeds and a Student-t 95% confidence interval across seeds.

    python benchmarks/regression_ce.py [--seeds 5] [--steps 600] [--quick]
    # seeds in parallel processes, then combined:
    python benchmarks/regression_ce.py --seeds 3 --output part_a
    python benchmarks/regression_ce.py --first-seed 3 --seeds 2 --output part_b
    python benchmarks/regression_ce.py --merge benchmarks/results/part_a.json benchmarks/results/part_b.json
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats

from bayes_agents.supervised import (
    RegressionModel,
    attach_posterior,
    evaluate_regression,
    make_regression_model,
    snapshot,
    train_regression,
)

RESULTS = Path(__file__).parent / "results"
REPORT_T = (5, 10, 50, 100)
#: The benchmark's architecture (paper: LSTM 128, latent 64, embedding (256, 256), head (256, 256, 64)).
ARCHITECTURE = {"hidden_size": 64, "latent_dim": 16, "embed_sizes": (64, 64), "head_sizes": (64, 64, 16)}
#: Laplace options: window k = 1 (the paper's fastest setting, "on par"; B.5), prior precision 1.
LAPLACE = {"window": 1, "damping": 1.0, "beta": 1e-2}
VRNN = {"beta": 1e-2}
SCRATCH = {
    "rnn": ("rnn", {}),
    "vrnn_full": ("vrnn", {**VRNN, "covariance": "full"}),
    "vrnn_diag": ("vrnn", {**VRNN, "covariance": "diag"}),
    "laplace_stationary_diag": ("laplace", {**LAPLACE, "variant": "stationary", "covariance": "diag"}),
    "laplace_sum_precision_diag": ("laplace", {**LAPLACE, "variant": "sum_precision", "covariance": "diag"}),
}
FINETUNE = {name: spec for name, spec in SCRATCH.items() if name != "rnn"}
POSTHOC = {
    f"laplace_{variant}_{covariance}": ("laplace", {**LAPLACE, "variant": variant, "covariance": covariance})
    for variant in ("stationary", "sum_precision")
    for covariance in ("full", "diag")
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--seeds", type=int, default=5)
    parser.add_argument("--steps", type=int, default=600, help="updates from scratch (fine-tune: half)")
    parser.add_argument("--batch-size", type=int, default=32, help="tasks per update (paper: 256)")
    parser.add_argument("--learning-rate", type=float, default=3e-3, help="paper: 1e-3")
    parser.add_argument("--eval-tasks", type=int, default=256)
    parser.add_argument("--eval-samples", type=int, default=30)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run (2 seeds, 6 steps)")
    parser.add_argument(
        "--first-seed", type=int, default=0, help="run seeds first-seed .. first-seed+seeds-1"
    )
    parser.add_argument("--output", default="regression_ce")
    parser.add_argument(
        "--merge",
        nargs="+",
        metavar="JSON",
        help="combine the seeds of earlier runs' JSON files (same config) into --output instead of running",
    )
    return parser.parse_args()


def evaluate(model: RegressionModel, seed: int, args: argparse.Namespace) -> dict[str, list[float]]:
    curves = evaluate_regression(
        model, seed, n_tasks=args.eval_tasks, n_points=101, n_samples=args.eval_samples
    )
    result = {name: values.tolist() for name, values in curves.items()}
    result["noise_std"] = float(model.log_std.detach().exp())
    return result


def run_seed(seed: int, args: argparse.Namespace) -> dict[str, dict[str, Any]]:
    """All models of one seed: ``{protocol/name: {curves..., minutes}}``."""
    results: dict[str, dict[str, Any]] = {}
    training = {"batch_size": args.batch_size, "learning_rate": args.learning_rate}
    half = args.steps // 2

    def timed_train(model: RegressionModel, steps: int, data_seed: int, callback=None) -> float:
        start = time.perf_counter()
        train_regression(model, steps, data_seed, callback=callback, **training)
        return (time.perf_counter() - start) / 60

    snapshots: dict[str, RegressionModel] = {}

    def keep_half(update: int, model: RegressionModel) -> None:
        if update == half - 1:
            snapshots["half"] = snapshot(model)

    for name, (kind, options) in SCRATCH.items():
        model = make_regression_model(kind, seed, **ARCHITECTURE, **options)
        minutes = timed_train(model, args.steps, seed, keep_half if kind == "rnn" else None)
        results[f"scratch/{name}"] = {**evaluate(model, seed, args), "train_minutes": minutes}
        if kind == "rnn":
            rnn = model
        print(f"  seed {seed} scratch/{name}: {minutes:.2f} min", flush=True)
    for name, (kind, options) in POSTHOC.items():
        model = attach_posterior(rnn, kind, seed, **options)
        results[f"posthoc/{name}"] = {**evaluate(model, seed, args), "train_minutes": 0.0}
    for name, (kind, options) in FINETUNE.items():
        model = attach_posterior(snapshots["half"], kind, seed, **options)
        # Fresh fine-tuning tasks (a stream of its own), the remaining half of the update budget.
        minutes = timed_train(model, args.steps - half, seed + 100_000)
        results[f"finetune/{name}"] = {**evaluate(model, seed, args), "train_minutes": minutes}
        print(f"  seed {seed} finetune/{name}: {minutes:.2f} min", flush=True)
    return results


def mean_ci_t(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Mean over axis 0 and the half-width of the Student-t 95% interval (NaN for one seed)."""
    n = values.shape[0]
    mean = values.mean(0)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    return mean, stats.t.ppf(0.975, n - 1) * values.std(0, ddof=1) / np.sqrt(n)


def aggregate(per_seed: list[dict[str, dict[str, Any]]]) -> dict[str, dict[str, Any]]:
    summary: dict[str, dict[str, Any]] = {}
    for key in per_seed[0]:
        entry: dict[str, Any] = {}
        for statistic in (
            "cross_entropy",
            "squared_error",
            "entropy",
            "kl_to_previous",
            "noise_std",
            "train_minutes",
        ):
            if statistic not in per_seed[0][key]:
                continue
            values = np.array([seed_results[key][statistic] for seed_results in per_seed], np.float64)
            mean, ci = mean_ci_t(values)
            entry[statistic] = {"mean": np.atleast_1d(mean).tolist(), "ci95": np.atleast_1d(ci).tolist()}
        summary[key] = entry
    return summary


def table(summary: dict[str, dict[str, Any]]) -> str:
    header = f"{'protocol/model':38s}" + "".join(f"{f'CE t={t}':>18s}" for t in REPORT_T)
    header += f"{'H t=5→100':>16s}{'σ':>7s}"
    lines = [header, "-" * len(header)]
    for key, entry in summary.items():
        ce = entry["cross_entropy"]
        row = f"{key:38s}" + "".join(f"{ce['mean'][t]:>10.3f} ± {ce['ci95'][t]:<5.3f}" for t in REPORT_T)
        if "entropy" in entry:
            entropy = entry["entropy"]["mean"]
            row += f"{entropy[5]:>8.1f}→{entropy[100]:<7.1f}"
        else:
            row += f"{'-':>16s}"
        row += f"{entry['noise_std']['mean'][0]:>7.3f}"
        lines.append(row)
    return "\n".join(lines)


def plot(summary: dict[str, dict[str, Any]], name: str) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    protocols = ("scratch", "finetune", "posthoc")
    steps = np.arange(len(next(iter(summary.values()))["cross_entropy"]["mean"]))
    shown = steps >= 1
    paths = []
    rows = (
        ("cross_entropy", "predictive CE (nats)"),
        ("entropy", "posterior entropy (nats)"),
        ("kl_to_previous", "KL(q_t ‖ q_t−1) (nats)"),
    )
    figure, axes = plt.subplots(len(rows), len(protocols), figsize=(15, 11), sharex=True, squeeze=False)
    # One colour per model in every panel (the RNN has no entropy/KL, which would shift the cycle).
    models = list(dict.fromkeys(key.split("/", 1)[1] for key in summary))
    colours = {model: f"C{index}" for index, model in enumerate(models)}
    for column, protocol in enumerate(protocols):
        for row, (statistic, label) in enumerate(rows):
            axis = axes[row, column]
            for key, entry in summary.items():
                model = key.split("/", 1)[1]
                include = key.startswith(protocol + "/") or (protocol != "scratch" and key == "scratch/rnn")
                if not include or statistic not in entry:
                    continue
                mean = np.array(entry[statistic]["mean"])[shown]
                ci = np.array(entry[statistic]["ci95"])[shown]
                style = "--" if key == "scratch/rnn" and protocol != "scratch" else "-"
                axis.plot(steps[shown], mean, style, label=model, color=colours[model])
                axis.fill_between(steps[shown], mean - ci, mean + ci, alpha=0.2, color=colours[model])
            axis.axvline(50, color="grey", lw=0.5)
            if statistic == "kl_to_previous":
                axis.set_yscale("log")
                axis.set_xlabel("context points t")
            if column == 0:
                axis.set_ylabel(label)
            if row == 0:
                axis.set_title(protocol)
            axis.legend(fontsize=7)
    figure.tight_layout()
    path = RESULTS / f"{name}.png"
    figure.savefig(path, dpi=90)
    plt.close(figure)
    paths.append(path)
    return paths


def merge(paths: list[str], output: str) -> None:
    """Aggregate the per-seed results of several runs (e.g. seeds run in parallel processes)."""
    runs = [json.loads(Path(path).read_text()) for path in paths]
    configs = [
        {key: value for key, value in run["config"].items() if key not in ("seeds", "seed_list")}
        for run in runs
    ]
    if any(config != configs[0] for config in configs):
        raise ValueError("the runs to merge have different configurations")
    per_seed = [seed_results for run in runs for seed_results in run["per_seed"]]
    seeds = [seed for run in runs for seed in run["config"].get("seed_list", range(run["seeds_done"]))]
    if len(set(seeds)) != len(seeds):
        raise ValueError(f"the runs to merge share seeds: {seeds}")
    summary = aggregate(per_seed)
    config = {**runs[0]["config"], "seeds": len(per_seed), "seed_list": seeds}
    payload = {
        "config": config,
        "seeds_done": len(per_seed),
        "minutes": sum(run["minutes"] for run in runs),
        "merged_from": paths,
        "summary": summary,
        "per_seed": per_seed,
    }
    (RESULTS / f"{output}.json").write_text(json.dumps(payload, indent=1))
    plot(summary, output)
    print(f"{len(per_seed)} seeds {seeds}, {payload['minutes']:.1f} process-minutes; CE mean ± 95% CI:")
    print(table(summary))


def main() -> None:
    args = parse_args()
    if args.merge:
        merge(args.merge, args.output)
        return
    if args.quick:
        args.seeds, args.steps, args.eval_tasks, args.eval_samples = 2, 6, 32, 4
    torch.set_num_threads(1)
    RESULTS.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    per_seed = []
    config = {
        "seeds": args.seeds,
        "steps_scratch": args.steps,
        "steps_finetune": args.steps - args.steps // 2,
        "finetune_from": f"RNN snapshot after {args.steps // 2} updates",
        "batch_size_tasks": args.batch_size,
        "train_points": 50,
        "eval_points": 101,
        "eval_tasks_per_seed": args.eval_tasks,
        "eval_samples": args.eval_samples,
        "learning_rate": args.learning_rate,
        "optimizer": "AdamW(weight_decay=1e-6), clip value 5, clip norm 1",
        "architecture": {
            key: list(value) if isinstance(value, tuple) else value for key, value in ARCHITECTURE.items()
        },
        "laplace": LAPLACE,
        "vrnn": VRNN,
        "ci": "Student-t 95% over seeds",
    }
    seeds = list(range(args.first_seed, args.first_seed + args.seeds))
    config["seed_list"] = []
    for seed in seeds:
        per_seed.append(run_seed(seed, args))
        config["seed_list"].append(seed)
        summary = aggregate(per_seed)
        payload = {
            "config": config,
            "seeds_done": len(per_seed),
            "minutes": (time.perf_counter() - started) / 60,
            "summary": summary,
            "per_seed": per_seed,
        }
        (RESULTS / f"{args.output}.json").write_text(json.dumps(payload, indent=1))
        print(f"seed {seed} done at {payload['minutes']:.1f} min", flush=True)
    plot(summary, args.output)
    print(f"\n{args.seeds} seeds, {payload['minutes']:.1f} min; cross-entropy (nats) mean ± 95% CI:")
    print(table(summary))


if __name__ == "__main__":
    main()
