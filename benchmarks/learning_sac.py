"""Stock SB3 SAC with a belief extractor on HalfCheetahDir-v0: does the agent adapt to the hidden direction?

For each seed, stock ``SAC("MultiInputPolicy")`` with the method's features extractor
(:func:`~bayes_agents.methods.extractor_defaults`: the package's MuJoCo belief; SAC's own 256×256
heads) over the last ``--window`` steps of the trial (:class:`~bayes_envs.wrappers.TrialHistoryVecWrapper`
of ``--n-envs`` batched envs), SAC's defaults otherwise (``train_freq`` 1 and ``gradient_steps`` 1
per vector step, batch 256, automatic entropy), the belief trained by SAC's losses (and by
``BeliefAuxLossCallback`` where it has an auxiliary loss); next to it, as the baseline that cannot
adapt, the same SAC on the plain observation (no history, no belief). Every ``--eval-every`` env
steps the agent is meta-tested on ``--curve-tasks`` fixed test tasks (the learning curve), and at the
end on ``--tasks`` test tasks and the same number of train tasks: return per inner episode and the
share of trials whose inner episode ran the task's direction (``task_direction_rate``: positive
forward progress). Finished runs are reused (``model.zip`` and ``train.json`` of the same config).

    python benchmarks/learning_sac.py [--methods rl2 none] [--seeds 0 1] [--timesteps 500000]
        [--n-envs 8] [--window 8] [--share-features-extractor] [--workers 2] [--runs DIR] [--out FILE]

``--share-features-extractor`` passes SB3's ``share_features_extractor=True``: one extractor for
actor and critic, trained by the actor loss only (SB3 then runs the critic's features without
gradients, and the extractor reuses the actor's pass for them): ~1.7x the env steps/s
(``benchmarks/extractors.py``), but RL² did not adapt in 200k steps where the default (one
extractor per network) had by 150k (``benchmarks/results/sweeps/learning-sac-shared-200k.log``).
Its runs live under ``method=M,shared``.

Writes ``benchmarks/results/learning_sac.json`` and the curves ``learning_sac.png``; prints a table.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
from learning import (
    FORMAT,
    REPO,
    RESULTS,
    git_commit,
    repo_relative,
    run_in_processes,
    seed_stats,
    vector_stats,
)
from learning_mujoco import StockPolicy

from bayes_agents import experiment

ENV_ID = "HalfCheetahDir-v0"
#: The method name of the baseline: SAC on the plain observation, without a belief.
NO_BELIEF = "none"
TRAINED_FILES = ("model.zip", "train.json")
EVAL_SEED = 10_000


def label(method: str, shared: bool = False) -> str:
    from bayes_agents.extractors import EXTRACTORS

    if method == NO_BELIEF:
        return "SAC, no belief"
    return f"SAC + {EXTRACTORS[method].__name__}" + (" (shared extractor)" if shared else "")


def build(config: dict[str, Any]) -> tuple[Any, Any]:
    """The SAC model of ``config`` and the adapter that meta-tests it through ``evaluate``."""
    from stable_baselines3 import SAC

    import bayes_envs
    from bayes_agents.extractors import HistoryPredictor
    from bayes_agents.methods import extractor_defaults
    from bayes_envs.wrappers import TrialHistoryVecWrapper

    method, seed = config["method"], config["seed"]
    common = {"buffer_size": config["buffer_size"], "seed": seed, "device": "cpu", "verbose": 0}
    if method == NO_BELIEF:
        venv = bayes_envs.make_vec(ENV_ID, config["n_envs"], seed=seed, rl2_inputs=False)
        model = SAC("MlpPolicy", venv, **common)
        return model, StockPolicy(model, name=label(method))  # no memory: it cannot adapt
    venv = TrialHistoryVecWrapper(
        bayes_envs.make_vec(ENV_ID, config["n_envs"], seed=seed), window=config["window"]
    )
    # SAC's own heads (256, 256), as in the baseline; the belief at the package's MuJoCo settings.
    policy_kwargs = {
        key: value for key, value in extractor_defaults(ENV_ID, method).items() if key != "net_arch"
    }
    shared = bool(config.get("share_features_extractor"))
    model = SAC(
        "MultiInputPolicy",
        venv,
        policy_kwargs={**policy_kwargs, "share_features_extractor": shared},
        **common,
    )
    return model, HistoryPredictor(model, name=label(method, shared))


def meta_test(policy: Any, n_tasks: int, split: str) -> dict[str, Any]:
    from bayes_envs.evaluation import evaluate

    return evaluate(policy, ENV_ID, n_tasks=n_tasks, seed=EVAL_SEED, split=split).summary()


def train_job(job: dict[str, Any]) -> None:
    """Train (unless the run directory holds this config's trained model) and meta-test one run."""
    from stable_baselines3.common.callbacks import BaseCallback

    from bayes_agents.callbacks import BeliefAuxLossCallback

    config, run_dir = job["config"], Path(job["run_dir"])
    train_file, evaluation_file = run_dir / "train.json", run_dir / "evaluation.json"
    trained = all((run_dir / name).is_file() for name in TRAINED_FILES) and (
        experiment.read_json(train_file)["config"] == config
    )
    if trained and evaluation_file.is_file() and experiment.read_json(evaluation_file)["config"] == config:
        return
    experiment.set_torch_threads(1)
    model, policy = build(config)
    if trained:
        training = experiment.read_json(train_file)
        model.set_parameters(str(run_dir / "model.zip"), device="cpu")
    else:
        curve: list[dict[str, Any]] = []

        class Curve(BaseCallback):
            """Meta-tests the agent every ``eval_every`` env steps (the learning curve)."""

            def __init__(self) -> None:
                super().__init__()
                self.next_eval = config["eval_every"]

            def _on_step(self) -> bool:
                if self.num_timesteps >= self.next_eval:
                    self.next_eval += config["eval_every"]
                    summary = meta_test(policy, config["curve_tasks"], "test")
                    curve.append({"env_steps": int(self.num_timesteps), **_curve_point(summary)})
                    name = label(config["method"], bool(config.get("share_features_extractor")))
                    print(f"  {name} seed {config['seed']}: {curve[-1]}", flush=True)
                return True

        callbacks: list[BaseCallback] = [Curve()]
        extractor = getattr(model.actor, "features_extractor", None)
        if getattr(getattr(extractor, "belief", None), "has_aux_loss", False):
            callbacks.append(BeliefAuxLossCallback())
        began = time.perf_counter()
        model.learn(config["timesteps"], callback=callbacks)
        seconds = time.perf_counter() - began
        run_dir.mkdir(parents=True, exist_ok=True)
        experiment.atomic_write_bytes(run_dir / "model.zip", model.save)
        training = {
            "config": config,
            "train_seconds": seconds,
            "num_timesteps": int(model.num_timesteps),
            "curve": curve,
        }
        experiment.atomic_write_text(train_file, json.dumps(training, indent=2))
    report = {
        "config": config,
        "train_seconds": training["train_seconds"],
        "num_timesteps": training["num_timesteps"],
        "curve": training["curve"],
        "test": meta_test(policy, config["tasks"], "test"),
        "train": meta_test(policy, config["tasks"], "train"),
    }
    experiment.atomic_write_text(evaluation_file, json.dumps(experiment.jsonable(report), indent=2))


def _curve_point(summary: dict[str, Any]) -> dict[str, Any]:
    return {
        "trial_return": summary["trial_return_mean"],
        "episode_returns": summary["episode_return_mean"],
        "task_direction_rate": summary["task_direction_rate"],
    }


def summarise(runs: dict[str, dict[int, Path]], shared: bool = False) -> dict[str, Any]:
    """Per method: test/train trial return, return and direction rate per inner episode (mean, CI
    and worst seed over seeds), episode 2 − episode 1, training minutes and env steps/s, the curves."""
    methods = {}
    for method, seeds in runs.items():
        reports = {seed: experiment.read_json(path / "evaluation.json") for seed, path in seeds.items()}
        test = {seed: report["test"] for seed, report in reports.items()}
        methods[label(method, shared)] = {
            "method": method,
            "share_features_extractor": shared and method != NO_BELIEF,
            "seeds": list(seeds),
            "run_dirs": [repo_relative(path) for path in seeds.values()],
            "env_steps": [reports[s]["num_timesteps"] for s in seeds],
            "train_minutes": [reports[s]["train_seconds"] / 60 for s in seeds],
            "env_steps_per_s": [reports[s]["num_timesteps"] / reports[s]["train_seconds"] for s in seeds],
            "trial_return": seed_stats({s: a["trial_return_mean"] for s, a in test.items()}),
            "train_trial_return": seed_stats(
                {s: r["train"]["trial_return_mean"] for s, r in reports.items()}
            ),
            "episode_returns": vector_stats({s: a["episode_return_mean"] for s, a in test.items()}),
            "second_minus_first": seed_stats(
                {s: a["episode_return_mean"][1] - a["episode_return_mean"][0] for s, a in test.items()}
            ),
            "task_direction_rate": vector_stats({s: a["task_direction_rate"] for s, a in test.items()}),
            "second_episode_direction_rate": seed_stats(
                {s: a["task_direction_rate"][1] for s, a in test.items()}
            ),
            "curves": {s: reports[s]["curve"] for s in seeds},
        }
    return methods


def plot(methods: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, (returns, rates) = plt.subplots(1, 2, figsize=(11, 4))
    for (name, row), color in zip(
        methods.items(), plt.rcParams["axes.prop_cycle"].by_key()["color"], strict=False
    ):
        for index, curve in enumerate(row["curves"].values()):
            if not curve:
                continue
            steps = [point["env_steps"] for point in curve]
            tag = {"label": name} if index == 0 else {}
            returns.plot(steps, [p["trial_return"] for p in curve], color=color, alpha=0.8, **tag)
            rates.plot(steps, [p["task_direction_rate"][1] for p in curve], color=color, alpha=0.8, **tag)
    returns.set(xlabel="env steps", ylabel="trial return (2 inner episodes)", title=f"{ENV_ID}, test tasks")
    rates.set(
        xlabel="env steps",
        ylabel="share of trials",
        ylim=(-0.02, 1.02),
        title="2nd inner episode runs the task's direction",
    )
    rates.axhline(0.9, color="grey", linestyle=":", linewidth=1)
    returns.legend(loc="best", fontsize=8)
    figure.suptitle("stock SAC with and without a belief extractor (one line per seed)", fontsize=10)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--methods", nargs="+", default=["rl2", NO_BELIEF])
    parser.add_argument("--seeds", nargs="+", type=int, default=[0, 1])
    parser.add_argument("--timesteps", type=int, default=500_000)
    parser.add_argument("--n-envs", type=int, default=8)
    parser.add_argument("--window", type=int, default=8)
    parser.add_argument(
        "--share-features-extractor",
        action="store_true",
        help="one extractor for actor and critic (SB3's share_features_extractor=True)",
    )
    parser.add_argument("--eval-every", type=int, default=50_000)
    parser.add_argument("--curve-tasks", type=int, default=20)
    parser.add_argument(
        "--tasks", type=int, default=100, help="test (and train) tasks of the final meta-test"
    )
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--runs", type=Path, default=REPO / "runs" / "learning_sac")
    parser.add_argument("--out", type=Path, default=RESULTS / "learning_sac.json")
    args = parser.parse_args(argv)
    from bayes_agents.extractors import EXTRACTORS

    for name, value, low in (
        ("--timesteps", args.timesteps, 1),
        ("--n-envs", args.n_envs, 1),
        ("--window", args.window, 1),
        ("--eval-every", args.eval_every, 1),
        ("--curve-tasks", args.curve_tasks, 1),
        ("--tasks", args.tasks, 1),
    ):
        if value < low:
            parser.error(f"{name} must be >= {low}, got {value}")
    unknown = sorted(set(args.methods) - set(EXTRACTORS) - {NO_BELIEF})
    if unknown:
        parser.error(f"--methods: unknown {unknown}; choose from {[*EXTRACTORS, NO_BELIEF]}")
    shared = args.share_features_extractor
    runs = {
        m: {
            s: args.runs
            / ENV_ID
            / (f"method={m},shared" if shared and m != NO_BELIEF else f"method={m}")
            / f"seed_{s}"
            for s in args.seeds
        }
        for m in args.methods
    }
    jobs = []
    for method, seeds in runs.items():
        for seed, run_dir in seeds.items():
            config = {
                "env_id": ENV_ID,
                "method": method,
                "seed": seed,
                "timesteps": args.timesteps,
                "n_envs": args.n_envs,
                "window": None if method == NO_BELIEF else args.window,
                "share_features_extractor": None if method == NO_BELIEF else shared,
                "buffer_size": min(args.timesteps, 1_000_000),
                "eval_every": args.eval_every,
                "curve_tasks": args.curve_tasks,
                "tasks": args.tasks,
            }
            jobs.append({"config": config, "run_dir": str(run_dir)})
    run_in_processes(train_job, jobs, args.workers)
    methods = summarise(runs, shared)
    command = "python benchmarks/learning_sac.py " + " ".join(sys.argv[1:] if argv is None else argv)
    results = {
        "format": FORMAT,
        "benchmark": "learning_sac",
        "env_id": ENV_ID,
        "n_tasks": args.tasks,
        "split": "test",
        "command": command.strip(),
        "git": git_commit(),
        "settings": {
            key: (str(value) if isinstance(value, Path) else value) for key, value in vars(args).items()
        },
        "eval_seed": EVAL_SEED,
        "methods": methods,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(experiment.jsonable(results), indent=2) + "\n")
    plot(methods, args.out.with_suffix(".png"))
    print(
        f"\n{'agent':<26}{'seeds':>6}{'test trial return':>22}{'ep 1 / ep 2':>20}{'ep 2 direction':>16}"
        f"{'worst seed':>12}{'steps/s':>9}"
    )
    for name, row in methods.items():
        trial, episodes, rate = (
            row["trial_return"],
            row["episode_returns"]["mean"],
            row["second_episode_direction_rate"],
        )
        ci = f" ± {trial['ci95']:.1f}" if trial["ci95"] is not None else ""
        print(
            f"{name:<26}{len(row['seeds']):>6}{trial['mean']:>14.1f}{ci:>8}"
            f"{episodes[0]:>10.1f} /{episodes[1]:>8.1f}{rate['mean']:>15.0%}{rate['worst']:>12.0%}"
            f"{np.mean(row['env_steps_per_s']):>9.0f}"
        )
    print(f"wrote {args.out} and {args.out.with_suffix('.png')}")
    return results


if __name__ == "__main__":
    main()
