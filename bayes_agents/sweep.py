"""``bayes-rl sweep``: a grid of configs × seeds on Ray Tune, aggregated with rliable.

A sweep file (YAML or JSON)::

    out: runs/grid-sweep          # one run directory per (config, seed): OUT/<config>/seed_<s>
    seeds: [0, 1, 2]
    base:                         # a config as for ``bayes-rl train --config``
      env_id: BayesGrid-v0
      timesteps: 200000
    grid:                         # every combination of these (dotted) keys
      method: [rl2, laplace]
      ppo.learning_rate: [0.001, 0.0003]
    metric: trial_return          # or final_regret (bandit; lower is better)

Every run trains with :func:`bayes_agents.experiment.train` and is meta-tested with
:func:`~bayes_agents.experiment.evaluate_run`; its score is the mean ``metric`` over the test
tasks. Scores are aggregated per config over seeds (and over envs, if ``env_id`` is in the grid:
each env is one rliable *task*, and scores are then normalised per env as
``(score − uniform random) / (best reference − uniform random)``) into the interquartile mean
(IQM) and the mean with stratified-bootstrap 95% confidence intervals.

Runs go to Ray Tune (one CPU each; a local Ray instance, or a cluster with ``address``) or to
a local process pool (``executor="local"``). Finished runs are reused and interrupted ones resume
exactly, so re-running a sweep only computes what is missing.
"""

from __future__ import annotations

import itertools
import json
import multiprocessing
import os
import re
import traceback
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from bayes_agents import experiment
from bayes_agents.experiment import ConfigError

METRICS = {"trial_return": ("trial_return_mean", True), "final_regret": ("final_regret_mean", False)}
SWEEP_KEYS = {"out", "seeds", "base", "grid", "metric"}


@dataclass
class SweepSpec:
    """A parsed sweep file (see the module docstring)."""

    out: Path
    seeds: list[int]
    base: dict[str, Any] = field(default_factory=dict)
    grid: dict[str, list[Any]] = field(default_factory=dict)
    metric: str = "trial_return"


@dataclass
class Job:
    """One run of a sweep: a resolved config, its seed and where it goes."""

    label: str
    env_id: str
    seed: int
    config: dict[str, Any]
    run_dir: str


def load_sweep(
    path: str | os.PathLike[str], out: str | None = None, seeds: list[int] | None = None
) -> SweepSpec:
    """Read and check a sweep file; ``out`` and ``seeds`` override the file's values."""
    data = experiment.load_config_file(path)
    unknown = sorted(set(data) - SWEEP_KEYS)
    if unknown:
        raise ConfigError(f"unknown sweep key(s) {unknown}; valid: {sorted(SWEEP_KEYS)}")
    grid = data.get("grid") or {}
    if not isinstance(grid, dict) or not all(isinstance(v, list) and v for v in grid.values()):
        raise ConfigError("sweep 'grid' must map keys to non-empty lists of values")
    seeds = seeds if seeds is not None else data.get("seeds", [0])
    if not isinstance(seeds, list) or not seeds or not all(isinstance(s, int) and s >= 0 for s in seeds):
        raise ConfigError(f"sweep 'seeds' must be a non-empty list of ints >= 0, got {seeds!r}")
    metric = data.get("metric", "trial_return")
    if metric not in METRICS:
        raise ConfigError(f"sweep 'metric' must be one of {sorted(METRICS)}, got {metric!r}")
    out_dir = out or data.get("out")
    if not out_dir:
        raise ConfigError("the sweep needs an output directory: 'out' in the file or --out")
    return SweepSpec(Path(out_dir).resolve(), list(seeds), dict(data.get("base") or {}), grid, metric)


def _nest(flat: dict[str, Any]) -> dict[str, Any]:
    nested: dict[str, Any] = {}
    for key, value in flat.items():
        section, dot, name = key.partition(".")
        if dot:
            nested.setdefault(section, {})[name] = value
        else:
            nested[key] = value
    return nested


def _slug(text: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.=-]+", "_", text).strip("_") or "base"


def expand(spec: SweepSpec) -> list[Job]:
    """Every (grid point, seed) as a :class:`Job`; all configs are resolved (and so validated) here."""
    keys = list(spec.grid)
    jobs = []
    for values in itertools.product(*(spec.grid[key] for key in keys)):
        point = dict(zip(keys, values, strict=True))
        label = ",".join(f"{key}={value}" for key, value in point.items() if key != "env_id") or "base"
        for seed in spec.seeds:
            overrides = experiment.merge(_nest(point), {"seed": seed})
            config = experiment.resolve_config(file_config=spec.base, overrides=overrides)
            run_dir = spec.out / _slug(config["env_id"]) / _slug(label) / f"seed_{seed}"
            jobs.append(Job(label, config["env_id"], seed, config, str(run_dir)))
    return jobs


def run_job(job: Job | dict[str, Any]) -> dict[str, Any]:
    """Train (or reuse / resume) and evaluate one run; returns ``{label, env_id, seed, run_dir, error}``."""
    import torch

    job = Job(**job) if isinstance(job, dict) else job
    torch.set_num_threads(1)
    run_dir = Path(job.run_dir)
    outcome = {
        "label": job.label,
        "env_id": job.env_id,
        "seed": job.seed,
        "run_dir": job.run_dir,
        "error": None,
    }
    try:
        finished = (run_dir / experiment.MODEL_FILE).is_file()
        if finished and experiment.config_differences(experiment.read_config(run_dir), job.config):
            raise ConfigError(f"{run_dir} holds a run of another config; delete it or change 'out'")
        if not finished:
            resume = (run_dir / experiment.CHECKPOINT_FILE).is_file()
            experiment.train(job.config, run_dir, resume=resume, force=not resume, show_progress=False)
        if not (run_dir / experiment.EVALUATION_FILE).is_file():
            experiment.evaluate_run(run_dir)
    except Exception:  # a failed run is reported, the others go on
        outcome["error"] = traceback.format_exc(limit=5)
    return outcome


def _run_ray(jobs: list[Job], address: str | None, workers: int, out: Path) -> list[dict[str, Any]]:
    try:
        import ray
        from ray import tune
    except ImportError as error:
        raise ImportError(
            "the ray executor needs Ray Tune: pip install 'bayes-meta-rl[sweep]' (or --executor local)"
        ) from error

    def trainable(config: dict[str, Any]) -> None:
        outcome = run_job(config["job"])
        tune.report({"failed": float(outcome["error"] is not None)})

    started_here = not ray.is_initialized()
    if started_here:
        os.environ.setdefault("RAY_ACCEPT_CLUSTER_VERSION_MISMATCH", "0")
        if address:
            ray.init(address=address, log_to_driver=False)
        else:
            ray.init(num_cpus=workers, include_dashboard=False, log_to_driver=False)
    try:
        tuner = tune.Tuner(
            tune.with_resources(trainable, {"cpu": 1}),
            param_space={"job": tune.grid_search([vars(job) for job in jobs])},
            tune_config=tune.TuneConfig(max_concurrent_trials=workers),
            run_config=tune.RunConfig(name="tune", storage_path=str(out / "ray"), verbose=0),
        )
        tuner.fit()
    finally:
        if started_here:
            ray.shutdown()
    # The run directories are the source of truth (a trial that crashed has no evaluation).
    return [_outcome_from_disk(job) for job in jobs]


def _outcome_from_disk(job: Job) -> dict[str, Any]:
    done = (Path(job.run_dir) / experiment.EVALUATION_FILE).is_file()
    error = None if done else "no evaluation.json: the run failed (see the Ray Tune logs under OUT/ray)"
    return {
        "label": job.label,
        "env_id": job.env_id,
        "seed": job.seed,
        "run_dir": job.run_dir,
        "error": error,
    }


def _run_local(jobs: list[Job], workers: int) -> list[dict[str, Any]]:
    if workers <= 1 or len(jobs) == 1:
        return [run_job(job) for job in jobs]
    with multiprocessing.get_context("spawn").Pool(workers) as pool:
        return pool.map(run_job, [vars(job) for job in jobs], chunksize=1)


def _score(report: dict[str, Any], metric: str) -> float:
    return float(report["agent"][METRICS[metric][0]])


def _normaliser(report: dict[str, Any], metric: str) -> tuple[float, float] | None:
    """(uniform random, best reference) scores on the report's tasks; None if the env lacks them."""
    key, higher_is_better = METRICS[metric]
    references = {name: s[key] for name, s in report["references"].items() if key in s}
    random_score = references.pop("uniform random", None)
    candidates = [v for name, v in references.items() if "oracle" not in name]
    candidates += [sum(values) for values in report.get("exact", {}).values() if metric == "trial_return"]
    if random_score is None or not candidates:
        return None
    return random_score, max(candidates) if higher_is_better else min(candidates)


def _normalised(report: dict[str, Any], metric: str) -> float:
    """(score − uniform random) / (best reference − uniform random), references from the same tasks."""
    normaliser = _normaliser(report, metric)
    if normaliser is None:
        raise ConfigError(f"{report['config']['env_id']} has no references to normalise {metric} across envs")
    random_score, best = normaliser
    return (report["agent"][METRICS[metric][0]] - random_score) / (best - random_score)


def aggregate(
    outcomes: list[dict[str, Any]], metric: str, reps: int = 2000, seed: int = 0
) -> dict[str, dict[str, Any]]:
    """Per config label: IQM and mean over (seeds × envs) with stratified-bootstrap 95% CIs (rliable).

    Scores of several envs are normalised by each env's references (uniform random → 0, best
    reference → 1). Where some env has no such references (e.g. the MuJoCo envs, which have no
    Bayes-optimal reference), each env gets its own rows, labelled ``"<label> @ <env_id>"``, in raw units.

    :return: ``{label: {"iqm", "iqm_ci", "mean", "mean_ci", "n_runs", "envs", "scores"}}``.
    """
    try:
        from rliable import library as rly
        from rliable import metrics as rly_metrics
    except ImportError as error:
        raise ImportError("aggregation needs rliable: pip install 'bayes-meta-rl[sweep]'") from error
    done = [outcome for outcome in outcomes if outcome["error"] is None]
    reports = {
        o["run_dir"]: experiment.read_json(Path(o["run_dir"]) / experiment.EVALUATION_FILE) for o in done
    }
    envs = sorted({o["env_id"] for o in done})
    normalise = len(envs) > 1
    if normalise and any(_normaliser(reports[o["run_dir"]], metric) is None for o in done):
        table = {}
        for env_id in envs:
            rows = aggregate([o for o in done if o["env_id"] == env_id], metric, reps=reps, seed=seed)
            table.update({f"{label} @ {env_id}": row for label, row in rows.items()})
        return table
    table: dict[str, dict[str, Any]] = {}
    score_dict: dict[str, np.ndarray] = {}
    for label in dict.fromkeys(o["label"] for o in done):
        columns = []
        for env_id in envs:
            runs = sorted(
                (o for o in done if o["label"] == label and o["env_id"] == env_id), key=lambda o: o["seed"]
            )
            scorer = _normalised if normalise else _score
            columns.append([scorer(reports[o["run_dir"]], metric) for o in runs])
        if len({len(column) for column in columns}) != 1 or not columns[0]:
            continue  # a config missing runs on some env cannot be stratified
        score_dict[label] = np.array(columns, np.float64).T  # [runs, envs]
    if not score_dict:
        return table

    def iqm_and_mean(scores: np.ndarray) -> np.ndarray:
        return np.array([rly_metrics.aggregate_iqm(scores), rly_metrics.aggregate_mean(scores)])

    with warnings.catch_warnings():
        # arch warns that random_state will change type; a seeded RandomState keeps the CIs reproducible.
        warnings.simplefilter("ignore", FutureWarning)
        point, intervals = rly.get_interval_estimates(
            score_dict, iqm_and_mean, reps=reps, random_state=np.random.RandomState(seed)
        )
    for label, scores in score_dict.items():
        table[label] = {
            "iqm": float(point[label][0]),
            "iqm_ci": [float(v) for v in intervals[label][:, 0]],
            "mean": float(point[label][1]),
            "mean_ci": [float(v) for v in intervals[label][:, 1]],
            "n_runs": int(scores.shape[0]),
            "envs": envs,
            "normalised": normalise,
            "scores": scores.tolist(),
        }
    return table


def plot_table(table: dict[str, dict[str, Any]], metric: str, path: Path) -> Path | None:
    """A horizontal IQM chart with its bootstrap CIs (``None`` without matplotlib)."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return None
    labels = list(table)
    iqm = np.array([table[label]["iqm"] for label in labels])
    low = np.array([table[label]["iqm_ci"][0] for label in labels])
    high = np.array([table[label]["iqm_ci"][1] for label in labels])
    figure, ax = plt.subplots(figsize=(7, 0.6 * len(labels) + 1.5))
    positions = np.arange(len(labels))
    ax.barh(positions, high - low, left=low, color="C0", alpha=0.35, height=0.6)
    ax.vlines(iqm, positions - 0.3, positions + 0.3, color="C0", linewidth=2)
    ax.set_yticks(positions, labels, fontsize=8)
    normalised = next(iter(table.values()))["normalised"]
    ax.set_xlabel(("normalised " if normalised else "") + f"{metric}: IQM with 95% stratified-bootstrap CI")
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    return path


def run_sweep(
    spec: SweepSpec, executor: str = "ray", address: str | None = None, workers: int = 2, reps: int = 2000
) -> dict[str, Any]:
    """Run every job of ``spec`` and aggregate; writes ``OUT/sweep_results.json`` and ``OUT/sweep_iqm.png``.

    :raises ConfigError: a bad spec or any invalid config of the grid (before anything runs).
    """
    if executor not in ("ray", "local"):
        raise ConfigError(f"executor must be 'ray' or 'local', got {executor!r}")
    if isinstance(workers, bool) or not isinstance(workers, int) or workers < 1:
        raise ConfigError(f"workers must be an int >= 1, got {workers!r}")
    jobs = expand(spec)
    spec.out.mkdir(parents=True, exist_ok=True)
    print(
        f"sweep: {len(jobs)} runs ({len(jobs) // len(spec.seeds)} configs x {len(spec.seeds)} seeds) "
        f"on {executor}"
    )
    outcomes = _run_ray(jobs, address, workers, spec.out) if executor == "ray" else _run_local(jobs, workers)
    failed = [o for o in outcomes if o["error"] is not None]
    table = aggregate(outcomes, spec.metric, reps=reps) if len(failed) < len(outcomes) else {}
    result = {
        "metric": spec.metric,
        "higher_is_better": METRICS[spec.metric][1],
        "executor": executor,
        "table": table,
        "runs": outcomes,
        "failed": failed,
        "table_path": str(spec.out / "sweep_results.json"),
    }
    plot_path = plot_table(table, spec.metric, spec.out / "sweep_iqm.png") if table else None
    result["plot_path"] = str(plot_path) if plot_path else None
    result["plot_note"] = _plot_note(outcomes, failed, table, plot_path)
    experiment.atomic_write_text(spec.out / "sweep_results.json", json.dumps(result, indent=2))
    return result


def _last_line(error: str) -> str:
    lines = error.strip().splitlines()
    return lines[-1] if lines else "unknown error"


def _plot_note(
    outcomes: list[dict[str, Any]], failed: list[dict[str, Any]], table: dict[str, Any], plot_path: Any
) -> str | None:
    """Why there is no plot (``None`` if there is one)."""
    if plot_path:
        return None
    if outcomes and len(failed) == len(outcomes):
        return f"all {len(outcomes)} runs failed; the first: {_last_line(failed[0]['error'])}"
    if not table:
        return "no config has finished runs on every env to aggregate"
    return "matplotlib is missing (pip install 'bayes-meta-rl[plot]')"


def format_table(result: dict[str, Any]) -> str:
    """The aggregated table as text (one row per config)."""
    table = result["table"]
    lines = [
        f"{'config':<44}{'runs':>5}{'IQM':>9}  {'95% CI':<18}{'mean':>9}  {'95% CI':<18}",
    ]
    for label, row in sorted(
        table.items(), key=lambda item: -item[1]["iqm"] * (1 if result["higher_is_better"] else -1)
    ):
        iqm_ci = f"[{row['iqm_ci'][0]:.2f}, {row['iqm_ci'][1]:.2f}]"
        mean_ci = f"[{row['mean_ci'][0]:.2f}, {row['mean_ci'][1]:.2f}]"
        lines.append(
            f"{label[:43]:<44}{row['n_runs']:>5}{row['iqm']:>9.2f}  {iqm_ci:<18}"
            f"{row['mean']:>9.2f}  {mean_ci:<18}"
        )
    for failed in result["failed"]:
        lines.append(f"FAILED {failed['label']} seed {failed['seed']}: {_last_line(failed['error'])}")
    return "\n".join(lines)
