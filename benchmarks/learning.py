"""Shared code of the learning benchmarks (``learning_grid.py``, ``learning_bandit.py``).

A benchmark is a sweep file (``examples/configs/learning_<env>.yaml``: the methods as the grid,
seeds 0–4, nothing else but the number of test tasks), so every run is exactly what
``bayes-rl train ENV --method M --seed S`` trains: the CLI's per-env and per-method defaults,
resolved by :mod:`bayes_agents.experiment`. The sweep runs with its local executor
(:func:`bayes_agents.sweep.run_sweep`: finished runs are reused, interrupted ones resume) and
aggregates its score into an IQM with stratified-bootstrap CIs (``OUT/sweep_results.json``).

Then each run's meta-test (``evaluation.json``; for the bandit also ``evaluation_test.json``, the
α = 0.3 split) is read and summarised per method over seeds: per-seed values, their mean with a
95% Student-t interval, the worst seed, and the training wall time of each run (from the
``time/time_elapsed`` records of its ``metrics.jsonl``). With ``--finetune-timesteps N`` each
finished RL² run is also converted to Laplace-VRNN post hoc (:func:`bayes_agents.laplace_from_rl2`,
no training: method ``"laplace post-hoc"``) and the converted model fine-tuned for ``N`` steps on
its own schedule (``"laplace fine-tuned"``). The results file (``benchmarks/results/<name>.json``)
is what ``benchmarks/results_tables.py`` renders into the README and docs/results.md.
"""

from __future__ import annotations

import argparse
import itertools
import json
import multiprocessing
import shlex
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
from scipy import stats

from bayes_agents import experiment, laplace_from_rl2, sweep
from bayes_agents.methods import method_defaults, method_names
from bayes_agents.ppo import LinearDecay
from bayes_envs.evaluation import evaluate

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
CONFIGS = REPO / "examples" / "configs"
#: Marks the results files of this module (earlier learning results files have other layouts).
FORMAT = "learning/v1"
BAYES_OPTIMAL = "Bayes-optimal (exact)"
POST_HOC, FINE_TUNED = "laplace post-hoc", "laplace fine-tuned"
#: The extra meta-test of the envs with a held-out task split (``evaluation_test.json``).
TEST_SPLIT: dict[str, dict[str, Any]] = {"test": {"split": "test"}}


# ------------------------------------------------------------------------------------ statistics
def t_interval(values: Any) -> float | None:
    """Half-width of the 95% Student-t confidence interval of the mean of ``values`` (None if < 2)."""
    values = np.asarray(values, np.float64)
    if len(values) < 2:
        return None
    return float(stats.t.ppf(0.975, len(values) - 1) * values.std(ddof=1) / np.sqrt(len(values)))


def seed_stats(values: dict[int, float], lower_is_better: bool = False) -> dict[str, Any]:
    """``{"per_seed", "mean", "ci95", "worst_seed", "worst"}`` of a value per seed (``per_seed`` in
    the order of ``values``; ``ci95`` is the Student-t half-width, None for one seed)."""
    worst = (max if lower_is_better else min)(values, key=values.__getitem__)
    array = np.array(list(values.values()), np.float64)
    return {
        "per_seed": array.tolist(),
        "mean": float(array.mean()),
        "ci95": t_interval(array),
        "worst_seed": worst,
        "worst": float(values[worst]),
    }


def vector_stats(values: dict[int, list[float]]) -> dict[str, Any]:
    """``{"per_seed", "mean", "ci95"}`` of a vector per seed (e.g. the return per inner episode)."""
    array = np.array(list(values.values()), np.float64)
    return {
        "per_seed": array.tolist(),
        "mean": array.mean(axis=0).tolist(),
        "ci95": [t_interval(column) for column in array.T],
    }


# ------------------------------------------------------------------------------------ run files
def read_report(run_dir: str | Path, split: str | None = None) -> dict[str, Any]:
    """A run's meta-test: ``evaluation.json``, or ``evaluation_<split>.json`` for an extra split."""
    name = experiment.EVALUATION_FILE if split is None else f"evaluation_{split}.json"
    return experiment.read_json(Path(run_dir) / name)


def train_minutes(run_dir: str | Path) -> float:
    """Training wall time of a run in minutes: SB3's ``time/time_elapsed`` in ``metrics.jsonl``
    (periodic meta-tests included), added up over the ``learn`` calls of a resumed run (each restarts
    the clock); ``train_seconds`` of the evaluation for the runs of the Laplace protocol."""
    report = read_report(run_dir)
    if "train_seconds" in report:
        return report["train_seconds"] / 60
    elapsed = [
        record["time/time_elapsed"]
        for record in experiment.read_jsonl(Path(run_dir) / experiment.METRICS_FILE)
        if "time/time_elapsed" in record
    ]
    ends = [before for before, after in itertools.pairwise(elapsed) if after < before]
    return (sum(ends) + (elapsed[-1] if elapsed else 0.0)) / 60


def finished_training(run_dir: Path, files: tuple[str, ...], config: dict[str, Any]) -> dict[str, Any] | None:
    """The ``train.json`` of a baseline run (stock SB3) whose run directory holds every file of a
    finished training (``files``) for exactly ``config``, else None (train again)."""
    if not all((run_dir / name).is_file() for name in files):
        return None
    training = experiment.read_json(run_dir / "train.json")
    return training if training["config"] == config else None


def steps_per_second(env_steps: int, minutes: float) -> float | None:
    """Env steps per second of training wall time (None for a run too short to time)."""
    return env_steps / (60 * minutes) if minutes > 0 else None


def _is_current(run_dir: Path, source: Path, splits: dict[str, dict[str, Any]]) -> bool:
    """Whether ``run_dir`` holds every evaluation, written after ``source``'s model."""
    files = [run_dir / experiment.EVALUATION_FILE] + [run_dir / f"evaluation_{s}.json" for s in splits]
    model_time = (source / experiment.MODEL_FILE).stat().st_mtime
    return all(path.is_file() and path.stat().st_mtime >= model_time for path in files)


# ------------------------------------------------------------------------------------ evaluations
def meta_test(
    model: Any, config: dict[str, Any], env_overrides: dict[str, Any] | None = None, references: bool = True
) -> dict[str, Any]:
    """An ``evaluation.json``-shaped report of ``model`` on the run's test tasks (``final_eval_tasks``
    tasks from ``eval_seed``), with ``env_overrides`` on top of the run's env constants (e.g.
    ``{"split": "test"}``), the env's exact references and, with ``references``, its reference
    policies on the same tasks."""
    from bayes_envs.references import exact_references, reference_policies

    env_id, env_kwargs = config["env_id"], {**config["env"], **(env_overrides or {})}
    tasks = {"n_tasks": config["final_eval_tasks"], "seed": config["eval_seed"]}
    report: dict[str, Any] = {
        "config": config,
        "env_kwargs": env_kwargs,
        "num_timesteps": int(model.num_timesteps),
        "agent": evaluate(model, env_id, **tasks, **env_kwargs).summary(),
        "references": {},
        "exact": exact_references(env_id, env_kwargs),
    }
    for label, policy in (reference_policies(env_id, env_kwargs) if references else {}).items():
        report["references"][label] = evaluate(policy, env_id, **tasks, **env_kwargs).summary()
    return experiment.jsonable(report)


def evaluate_splits(run_dir: Path, splits: dict[str, dict[str, Any]]) -> None:
    """Meta-test a finished run on each extra split (``evaluation_<label>.json``, with references);
    evaluations newer than the run's model are kept."""
    model = None
    for label, env_overrides in splits.items():
        path = run_dir / f"evaluation_{label}.json"
        if path.is_file() and path.stat().st_mtime >= (run_dir / experiment.MODEL_FILE).stat().st_mtime:
            continue
        model = model or experiment.load_model(run_dir)
        report = meta_test(model, experiment.read_config(run_dir), env_overrides)
        experiment.atomic_write_text(path, json.dumps(report, indent=2))


# ------------------------------------------------------------------------------------ Laplace protocol
def laplace_keywords(config: dict[str, Any]) -> dict[str, Any]:
    """The Laplace keywords of the CLI's ``laplace`` defaults for the run's env (those RL² lacks:
    window, covariance, variant, number of samples)."""
    laplace = method_defaults(config["env_id"], "laplace")["policy"]
    rl2 = method_defaults(config["env_id"], "rl2")["policy"]
    return {key: value for key, value in laplace.items() if key not in rl2}


def finetune(model: Any, config: dict[str, Any], timesteps: int, learning_rate: float) -> None:
    """Train ``model`` in place for ``timesteps`` env steps on the run's training envs, on a schedule
    of its own: learning rate from ``learning_rate`` and clip range from the run's initial value,
    both decaying linearly to 0 over ``timesteps``."""
    venv = experiment.build_env(config)
    trained_statistics = model.get_vec_normalize_env()
    if trained_statistics is not None:  # continue with the RL² run's statistics, not fresh ones
        venv.load_state_dict(trained_statistics.state_dict())
    model.set_env(venv)
    model.learning_rate = model.lr_schedule = LinearDecay(learning_rate)
    model.clip_range = LinearDecay(model.clip_range(1.0))
    model.set_random_seed(config["seed"])
    model.learn(timesteps, reset_num_timesteps=True)


def _write_reports(model: Any, config: dict[str, Any], run_dir: Path, splits: dict, **extra: Any) -> None:
    run_dir.mkdir(parents=True, exist_ok=True)
    for label, env_overrides in {None: {}, **splits}.items():
        report = {**meta_test(model, config, env_overrides, references=False), **extra}
        name = experiment.EVALUATION_FILE if label is None else f"evaluation_{label}.json"
        experiment.atomic_write_text(run_dir / name, json.dumps(report, indent=2))


def laplace_job(job: dict[str, Any]) -> None:
    """Convert one RL² run to Laplace post hoc and evaluate it; then, if ``job["timesteps"]``,
    fine-tune the converted model and evaluate that (evaluations newer than the RL² model are kept)."""
    experiment.set_torch_threads(1)
    source, post_hoc = Path(job["source"]), Path(job["post_hoc"])
    fine_tuned = Path(job["fine_tuned"]) if job["timesteps"] else None
    todo = [d for d in (post_hoc, fine_tuned) if d is not None and not _is_current(d, source, job["splits"])]
    if not todo:
        return
    rl2_config = experiment.read_config(source)
    keywords = laplace_keywords(rl2_config)
    config = {**rl2_config, "method": "laplace", "policy": {**rl2_config["policy"], **keywords}}
    # The KL penalty's weight only matters for fine-tuning (the post-hoc agent is not trained).
    model = laplace_from_rl2(experiment.load_model(source), **{**keywords, "beta": job["beta"]})
    steps = int(model.num_timesteps)
    if post_hoc in todo:
        _write_reports(model, config, post_hoc, job["splits"], source=str(source), train_seconds=0.0)
    if fine_tuned is not None and fine_tuned in todo:
        start = time.perf_counter()
        finetune(model, rl2_config, job["timesteps"], job["learning_rate"])
        seconds = time.perf_counter() - start
        settings = {"timesteps": job["timesteps"], "learning_rate": job["learning_rate"], "beta": job["beta"]}
        _write_reports(
            model,
            {**config, "finetune": settings},
            fine_tuned,
            job["splits"],
            source=str(source),
            train_seconds=seconds,
            num_timesteps=steps + int(model.num_timesteps),
        )
        experiment.atomic_write_bytes(fine_tuned / experiment.MODEL_FILE, experiment.model_bytes(model))


def laplace_protocol(
    rl2_runs: dict[int, Path],
    out: Path,
    timesteps: int,
    learning_rate: float,
    splits: dict[str, dict[str, Any]],
    workers: int,
    beta: float = 0.0,
) -> dict[str, dict[int, Path]]:
    """Run :func:`laplace_job` on every RL² run (``workers`` processes); the run directories of the
    two derived methods, ``{"laplace post-hoc": {seed: dir}, "laplace fine-tuned": {...}}``."""
    tuned = out / f"laplace_fine-tuned_{timesteps}_lr{learning_rate:g}_beta{beta:g}"
    runs = {POST_HOC: {s: out / "laplace_post-hoc" / f"seed_{s}" for s in rl2_runs}}
    if timesteps:
        runs[FINE_TUNED] = {s: tuned / f"seed_{s}" for s in rl2_runs}
    jobs = [
        {
            "source": str(run_dir),
            "post_hoc": str(runs[POST_HOC][seed]),
            "fine_tuned": str(tuned / f"seed_{seed}"),
            "timesteps": timesteps,
            "learning_rate": learning_rate,
            "beta": beta,
            "splits": splits,
        }
        for seed, run_dir in rl2_runs.items()
    ]
    run_in_processes(laplace_job, jobs, workers)
    return runs


# ------------------------------------------------------------------------------------ summaries
def run_columns(seeds: dict[int, Path], reports: dict[int, dict[str, Any]]) -> dict[str, Any]:
    """The per-run columns of every summary row: seeds, env steps, training minutes, env steps/s and
    run directories (``seeds``: seed → run directory; ``reports``: seed → its meta-test)."""
    steps = [reports[s]["num_timesteps"] for s in seeds]
    minutes = [train_minutes(seeds[s]) for s in seeds]
    return {
        "seeds": list(seeds),
        "env_steps": steps,
        "train_minutes": minutes,
        "env_steps_per_s": [steps_per_second(n, m) for n, m in zip(steps, minutes, strict=True)],
        "run_dirs": [repo_relative(seeds[s]) for s in seeds],
    }


def run_in_processes(function: Callable[[Any], Any], jobs: list[Any], workers: int) -> None:
    """``function(job)`` for every job, in ``workers`` spawned processes (here if one suffices)."""
    if workers <= 1 or len(jobs) <= 1:
        for job in jobs:
            function(job)
    else:
        with multiprocessing.get_context("spawn").Pool(workers) as pool:
            pool.map(function, jobs, chunksize=1)


def _reference_report(runs: dict[str, dict[int, Path]], split: str | None = None) -> dict[str, Any]:
    """The first evaluation with reference policies (all runs share the test tasks)."""
    for seeds in runs.values():
        for run_dir in seeds.values():
            report = read_report(run_dir, split)
            if report["references"]:
                return report
    raise ValueError("no run has an evaluation with references")


def grid_summary(runs: dict[str, dict[int, Path]]) -> dict[str, Any]:
    """Per method (``runs``: method → seed → run directory): trial return and % of the exact
    Bayes-optimal trial return per seed with mean ± 95% t-CI and worst seed, the return per inner
    episode, episodes 2–4 as % of the oracle on the same tasks; and the references' values."""
    reference = _reference_report(runs)
    oracle_label = next(label for label in reference["references"] if label.startswith("oracle"))
    oracle = reference["references"][oracle_label]["episode_return_mean"]
    optimal = reference["exact"][BAYES_OPTIMAL]
    references = {
        label: {
            key: summary[key] for key in ("episode_return_mean", "trial_return_mean", "trial_return_ci95")
        }
        for label, summary in reference["references"].items()
    }
    references[BAYES_OPTIMAL] = {"episode_return_mean": optimal, "trial_return_mean": float(sum(optimal))}
    methods = {}
    for method, seeds in runs.items():
        reports = {seed: read_report(run_dir) for seed, run_dir in seeds.items()}
        agents = {seed: report["agent"] for seed, report in reports.items()}
        bayes_optimal = {seed: sum(report["exact"][BAYES_OPTIMAL]) for seed, report in reports.items()}
        episodes = {seed: agent["episode_return_mean"] for seed, agent in agents.items()}
        methods[method] = {
            **run_columns(seeds, reports),
            "trial_return": seed_stats({s: a["trial_return_mean"] for s, a in agents.items()}),
            "percent_of_bayes_optimal": seed_stats(
                {s: 100 * a["trial_return_mean"] / bayes_optimal[s] for s, a in agents.items()}
            ),
            "episode_returns": vector_stats(episodes),
            "later_episodes_percent_of_oracle": seed_stats(
                {s: 100 * sum(e[1:]) / sum(oracle[1:]) for s, e in episodes.items()}
            ),
        }
    return {
        "n_tasks": reference["agent"]["n_tasks"],
        "bayes_optimal_trial_return": float(sum(optimal)),
        "oracle": oracle_label,
        "references": references,
        "methods": methods,
    }


def bandit_summary(runs: dict[str, dict[int, Path]]) -> dict[str, Any]:
    """Per method: expected cumulative regret at the horizon (``final_regret_mean``) on the train
    split (``evaluation.json``) and the test split (``evaluation_test.json``) per seed, mean ± 95%
    t-CI, worst seed and worst seed / Thompson sampling; and the references' regret on the same tasks."""
    splits = {"train": None, "test": "test"}
    references = {}
    for split, name in splits.items():
        report = _reference_report(runs, name)
        references[split] = {
            label: {
                key: summary[key] for key in ("final_regret_mean", "final_regret_ci95", "trial_return_mean")
            }
            for label, summary in report["references"].items()
        }
    methods = {}
    for method, seeds in runs.items():
        reports = {
            split: {s: read_report(d, name) for s, d in seeds.items()} for split, name in splits.items()
        }
        regret = {
            split: seed_stats({s: r["agent"]["final_regret_mean"] for s, r in reports[split].items()}, True)
            for split in splits
        }
        methods[method] = {
            **run_columns(seeds, reports["train"]),
            "regret": regret,
            "worst_vs_thompson": {
                split: regret[split]["worst"] / references[split]["Thompson sampling"]["final_regret_mean"]
                for split in splits
            },
        }
    report = _reference_report(runs)
    return {"n_tasks": report["agent"]["n_tasks"], "references": references, "methods": methods}


# ------------------------------------------------------------------------------------ the benchmark
@dataclass
class Benchmark:
    """A learning benchmark: its name (and results file), sweep file, summary and extra splits."""

    name: str
    sweep_file: Path
    summarize: Callable[[dict[str, dict[int, Path]]], dict[str, Any]]
    #: Extra meta-tests of every run: label → env constants on top of the run's (``evaluation_<label>.json``).
    splits: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Runs that are not belief methods, e.g. stock SB3 baselines: called with the sweep and the
    #: number of workers, returns ``env_id → label → seed → run directory`` of finished runs whose
    #: ``evaluation*.json`` have the layout of the belief runs' (``agent``, ``num_timesteps``, ...).
    baselines: Callable[[sweep.SweepSpec, int], dict[str, dict[str, dict[int, Path]]]] | None = None
    #: Also draw the figures of ``bayes-rl plot`` (learning curves with CI bands over seeds, return per
    #: inner episode) of the sweep's runs, per env, next to the results file (``<out stem>/<env_id>/``).
    plots: bool = False
    #: The script and its fixed arguments, as the results file's command quotes them (default
    #: ``benchmarks/<name>.py``), e.g. ``("benchmarks/learning_extractors.py", "--env", "grid")``.
    script: tuple[str, ...] | None = None


def parse_args(benchmark: Benchmark, doc: str, argv: list[str] | None) -> argparse.Namespace:
    """The command line of a learning benchmark (the sweep file's values are the defaults)."""
    parser = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--methods", nargs="+", choices=method_names(), help="default: the sweep file's")
    parser.add_argument("--seeds", nargs="+", type=int, help="default: the sweep file's (0-4)")
    parser.add_argument("--timesteps", type=int, help="env steps per run (default: the CLI's for the env)")
    parser.add_argument("--workers", type=int, default=2, help="runs at a time (one core each)")
    parser.add_argument("--runs", type=Path, help="run directories (default: the sweep file's 'out')")
    parser.add_argument("--out", type=Path, default=RESULTS / f"{benchmark.name}.json", help="results file")
    parser.add_argument("--sweep", type=Path, default=benchmark.sweep_file, help="the sweep file")
    parser.add_argument(
        "--set", nargs="+", default=[], metavar="KEY=VALUE", help="config overrides of every run"
    )
    parser.add_argument(
        "--finetune-timesteps",
        type=int,
        default=0,
        help="convert each RL² run to Laplace post hoc and fine-tune it for this many steps (0: skip)",
    )
    parser.add_argument(
        "--finetune-lr",
        type=float,
        default=3e-5,
        help="initial fine-tuning learning rate (default 3e-5: at 1e-4 one grid seed of five ended below "
        "the post-hoc agent it started from)",
    )
    parser.add_argument(
        "--finetune-beta",
        type=float,
        default=0.0,
        help="weight of Laplace's KL penalty while fine-tuning (default 0: with 0.01 its gradient moved "
        "the RL² recurrence and fine-tuning lost 25 points of Bayes-optimal on the grid)",
    )
    args = parser.parse_args(argv)
    if args.workers < 1:
        parser.error(f"--workers must be >= 1, got {args.workers}")
    return args


def build_spec(args: argparse.Namespace) -> sweep.SweepSpec:
    """The sweep file with the command line's overrides (methods, seeds, budget, ``--set``)."""
    spec = sweep.load_sweep(args.sweep, out=str(args.runs) if args.runs else None, seeds=args.seeds)
    if args.methods:
        spec.grid["method"] = list(args.methods)
    if args.timesteps is not None:
        spec.base["timesteps"] = args.timesteps
    spec.base = experiment.merge(spec.base, experiment.parse_overrides(args.set))
    return spec


def git_commit() -> dict[str, Any]:
    """``{"commit", "dirty"}`` of the repository (tracked files only; None outside git)."""
    try:
        run = {"cwd": REPO, "capture_output": True, "text": True, "check": True}
        commit = subprocess.run(["git", "rev-parse", "HEAD"], **run).stdout.strip()
        status = subprocess.run(["git", "status", "--porcelain", "--untracked-files=no"], **run).stdout
    except (OSError, subprocess.CalledProcessError):
        return {"commit": None, "dirty": None}
    return {"commit": commit, "dirty": bool(status.strip())}


def _iqm(row: dict[str, Any] | None) -> dict[str, Any] | None:
    return row and {key: row[key] for key in ("iqm", "iqm_ci", "mean", "mean_ci", "n_runs")}


def run_benchmark(benchmark: Benchmark, doc: str, argv: list[str] | None = None) -> dict[str, Any]:
    """Run a learning benchmark from its command line (see the module docstring) and write its results.

    :return: the results written to ``--out``.
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(benchmark, doc, argv)
    experiment.set_torch_threads()
    try:
        spec = build_spec(args)
        sweep.run_sweep(spec, executor="local", workers=args.workers)
    except experiment.ConfigError as error:  # a bad sweep file or override: one line, nothing run
        raise SystemExit(f"error: {error}") from None
    swept = experiment.read_json(spec.out / "sweep_results.json")
    # env_id → label → seed → run directory (a sweep may vary the env as well as the method). The
    # label is the method, or "method (sweep label)" where the sweep runs a method in several configs.
    runs_by_env: dict[str, dict[str, dict[int, Path]]] = {}
    outcomes_by_env: dict[str, list[dict[str, Any]]] = {}
    finished = [outcome for outcome in swept["runs"] if outcome["error"] is None]
    configs = [experiment.read_config(Path(outcome["run_dir"])) for outcome in finished]
    sweep_labels: dict[tuple[str, str], set[str]] = {}
    for outcome, config in zip(finished, configs, strict=True):
        sweep_labels.setdefault((config["env_id"], config["method"]), set()).add(outcome["label"])
    for outcome, config in zip(finished, configs, strict=True):
        run_dir, method = Path(outcome["run_dir"]), config["method"]
        label = (
            method if len(sweep_labels[config["env_id"], method]) == 1 else f"{method} ({outcome['label']})"
        )
        runs = runs_by_env.setdefault(config["env_id"], {})
        if outcome["seed"] in runs.get(label, {}):
            raise SystemExit(f"{args.sweep}: two runs of {label} with seed {outcome['seed']}")
        evaluate_splits(run_dir, benchmark.splits)
        runs.setdefault(label, {})[outcome["seed"]] = run_dir
        outcomes_by_env.setdefault(config["env_id"], []).append({**outcome, "label": label})
    if not runs_by_env:
        raise SystemExit(f"every run failed; see {spec.out / 'sweep_results.json'}")
    if args.finetune_timesteps:
        if len(runs_by_env) > 1:
            raise SystemExit("--finetune-timesteps needs a sweep of one env")
        env_id, runs = next(iter(runs_by_env.items()))
        if "rl2" not in runs:
            print("--finetune-timesteps: no finished rl2 run to convert; the Laplace protocol is skipped")
        else:
            derived = laplace_protocol(
                runs["rl2"],
                spec.out / env_id,
                args.finetune_timesteps,
                args.finetune_lr,
                benchmark.splits,
                args.workers,
                beta=args.finetune_beta,
            )
            runs.update(derived)
            outcomes_by_env[env_id] += _outcomes(env_id, derived)
    # The state of the code that trained and evaluated, taken before this script rewrites its own
    # tracked plots (which would otherwise always read as local changes).
    git = git_commit()
    if benchmark.plots:
        from bayes_agents import plotting

        for env_id, runs in runs_by_env.items():
            run_dirs = [run_dir for seeds in runs.values() for run_dir in seeds.values()]
            plotting.plot_runs(run_dirs, args.out.parent / args.out.stem / env_id)
    if benchmark.baselines is not None:
        for env_id, baseline_runs in benchmark.baselines(spec, args.workers).items():
            runs_by_env.setdefault(env_id, {}).update(baseline_runs)
            outcomes_by_env.setdefault(env_id, []).extend(_outcomes(env_id, baseline_runs))
    summaries = {}
    for env_id, runs in runs_by_env.items():
        summaries[env_id] = benchmark.summarize(runs)
        table = sweep.aggregate(outcomes_by_env[env_id], spec.metric)  # IQM per method over seeds
        for method, row in summaries[env_id]["methods"].items():
            row["iqm"] = _iqm(table.get(method))
    # One env: its summary at the top level (the grid and bandit files); several: under "envs".
    env_ids = list(summaries)
    summary = summaries[env_ids[0]] if len(env_ids) == 1 else {"envs": summaries}
    results = {
        "format": FORMAT,
        "benchmark": benchmark.name,
        "env_id": env_ids[0] if len(env_ids) == 1 else env_ids,
        "metric": spec.metric,
        "higher_is_better": sweep.METRICS[spec.metric][1],
        "command": shlex.join(["python", *(benchmark.script or (f"benchmarks/{benchmark.name}.py",)), *argv]),
        "git": git,
        "environment": experiment.software_environment(),
        "sweep_file": repo_relative(args.sweep),
        "runs_dir": repo_relative(spec.out),
        "settings": {
            "seeds": spec.seeds,
            "timesteps": args.timesteps,
            "set": args.set,
            "finetune_timesteps": args.finetune_timesteps,
            "finetune_lr": args.finetune_lr,
            "finetune_beta": args.finetune_beta,
        },
        **summary,
        "failed": [
            {"label": o["label"], "seed": o["seed"], "error": o["error"].strip().splitlines()[-1]}
            for o in swept["failed"]
        ],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    experiment.atomic_write_text(args.out, json.dumps(results, indent=1) + "\n")
    from results_tables import render_learning

    print(render_learning(results, repo_relative(args.out)))
    for failure in results["failed"]:
        print(f"FAILED {failure['label']} seed {failure['seed']}: {failure['error']}")
    print(f"wrote {args.out}")
    return results


def _outcomes(env_id: str, runs: dict[str, dict[int, Path]]) -> list[dict[str, Any]]:
    """Sweep outcomes (as :func:`bayes_agents.sweep.aggregate` reads them) of finished runs."""
    return [
        {"label": label, "env_id": env_id, "seed": seed, "run_dir": str(run_dir), "error": None}
        for label, seeds in runs.items()
        for seed, run_dir in seeds.items()
    ]


def repo_relative(path: Path) -> str:
    """``path`` relative to the repository if inside it (results files do not name the machine)."""
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)
