"""PNG figures of ``bayes-rl`` runs (matplotlib: the ``[plot]`` extra).

Runs are grouped by (env, method) — the seeds of a group give the confidence bands:

* ``learning_curves.png`` — meta-test trial return against env steps: the periodic meta-tests
  (``evaluations.jsonl``) and, as the last point, the final evaluation (``evaluation.json``, at its
  ``num_timesteps``). Several seeds: their mean and a 95% Student-t CI band over seeds; one seed:
  its curve and the 95% CI over the test tasks of each point. Where a run has no periodic
  evaluation, the training trial return (``metrics.jsonl``) with the final evaluation as a marker.
  The exact / reference returns are drawn as horizontal lines.
* ``inner_episode_returns.png`` — return per inner episode of each group (``evaluation.json``) with
  95% CI error bars (over seeds for several seeds, over the test tasks for one) against the
  references (oracle, Bayes-optimal, posterior sampling, ...; sampled ones with their CI over tasks).

Titles name the test tasks and env steps; legends sit outside the axes, right of the data.
* ``cumulative_regret.png`` — bandit: expected cumulative regret over the trial, agent and references.
* ``belief_over_trial.png`` — posterior entropy and KL(q_t ‖ q_{t−1}) at each trial step (methods with
  a posterior), and ``belief_training.png`` — their training averages against env steps.
* ``grid_belief.png`` — the belief over goal cells, for beliefs that expose one (a decoder over cells,
  as VariBAD's): skipped, with a message, for the others.
"""

from __future__ import annotations

import os
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bayes_agents.experiment import (
    EVALUATION_FILE,
    EVALUATIONS_FILE,
    METRICS_FILE,
    read_config,
    read_json,
    read_jsonl,
)


def t_interval(values: np.ndarray, axis: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Mean and half-width of the 95% Student-t confidence interval along ``axis`` (NaN for one value)."""
    values = np.asarray(values, np.float64)
    n = values.shape[axis]
    mean = values.mean(axis=axis)
    if n < 2:
        return mean, np.full_like(mean, np.nan)
    try:
        from scipy.stats import t

        quantile = float(t.ppf(0.975, n - 1))
    except ImportError:  # normal quantile: narrower than t for few seeds
        quantile = 1.959963984540054
    return mean, quantile * values.std(axis=axis, ddof=1) / np.sqrt(n)


def _load_run(run_dir: Path) -> dict[str, Any]:
    config = read_config(run_dir)
    evaluation_path = run_dir / EVALUATION_FILE
    return {
        "dir": run_dir,
        "config": config,
        "label": f"{config['env_id']} / {config['method']}",
        "evaluations": read_jsonl(run_dir / EVALUATIONS_FILE),
        "metrics": read_jsonl(run_dir / METRICS_FILE),
        "evaluation": read_json(evaluation_path) if evaluation_path.is_file() else None,
    }


def _flat(config: dict[str, Any]) -> dict[str, Any]:
    flat = {}
    for key, value in config.items():
        if isinstance(value, dict):
            flat.update({f"{key}.{name}": repr(inner) for name, inner in value.items()})
        else:
            flat[key] = repr(value)
    return flat


def group_runs(runs: list[dict[str, Any]]) -> dict[str, list[dict[str, Any]]]:
    """Runs grouped by their config without the seed; labelled "env / method" plus the keys that
    tell groups of the same env and method apart (e.g. ``ppo.learning_rate=0.001``)."""
    by_config: dict[str, list[dict[str, Any]]] = defaultdict(list)
    for run in runs:
        config = {k: v for k, v in run["config"].items() if k not in ("seed", "device", "checkpoint_every")}
        by_config[repr(sorted(_flat(config).items()))].append(run)
    groups: dict[str, list[dict[str, Any]]] = {}
    for members in by_config.values():
        config = members[0]["config"]
        siblings = [
            other[0]["config"]
            for other in by_config.values()
            if other[0]["config"]["env_id"] == config["env_id"]
            and other[0]["config"]["method"] == config["method"]
        ]
        flat = _flat(config)
        differing = [
            key
            for key in flat
            if key not in ("seed", "device", "checkpoint_every")
            and any(_flat(other).get(key) != flat[key] for other in siblings)
        ]
        suffix = ", ".join(f"{key}={flat[key]}" for key in differing[:3])
        label = f"{config['env_id']} / {config['method']}" + (f" ({suffix})" if suffix else "")
        for member in members:
            member["label"] = label
        groups[label] = members
    return groups


def _curve(records: list[dict[str, Any]], key: str) -> tuple[np.ndarray, np.ndarray]:
    points = [(r["timesteps"], r[key]) for r in records if key in r and r[key] is not None]
    if not points:
        return np.zeros(0), np.zeros(0)
    steps, values = zip(*points, strict=False)
    return np.asarray(steps, np.float64), np.asarray(values, np.float64)


def _final_point(run: dict[str, Any]) -> tuple[float, float, float] | None:
    """The final evaluation of a run: ``(num_timesteps, trial return mean, its 95% CI over tasks)``."""
    evaluation = run.get("evaluation") or {}
    agent = evaluation.get("agent") or {}
    if evaluation.get("num_timesteps") is None or agent.get("trial_return_mean") is None:
        return None
    ci = agent.get("trial_return_ci95")
    return float(evaluation["num_timesteps"]), float(agent["trial_return_mean"]), _float(ci)


def _float(value: Any) -> float:
    return float("nan") if value is None else float(value)


def meta_test_curve(run: dict[str, Any]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """A run's meta-test trial return against env steps: the periodic meta-tests and the final
    evaluation (which replaces a periodic one of the same step), sorted by step.

    :param run: a loaded run (``evaluations`` records, ``evaluation`` report or ``None``).
    :return: steps, trial return means and their 95% CI half-widths over the test tasks (NaN if unknown).
    """
    points = {
        float(record["timesteps"]): (
            float(record["trial_return_mean"]),
            _float(record.get("trial_return_ci95")),
        )
        for record in run.get("evaluations") or []
        if record.get("trial_return_mean") is not None and "timesteps" in record
    }
    final = _final_point(run)
    if final is not None:
        points[final[0]] = final[1:]
    steps = np.asarray(sorted(points), np.float64)
    values = np.asarray([points[step][0] for step in steps], np.float64)
    ci = np.asarray([points[step][1] for step in steps], np.float64)
    return steps, values, ci


def _counts(values: Sequence[Any]) -> str:
    """``"21"`` for one distinct value, ``"21/100"`` for several."""
    distinct = sorted({int(value) for value in values if value is not None})
    return "/".join(f"{value:,}" for value in distinct) or "?"


def _legend(ax: Any) -> None:
    """The legend outside the axes, to their right, so that it covers no data."""
    if ax.get_legend_handles_labels()[0]:
        ax.legend(loc="upper left", bbox_to_anchor=(1.02, 1.0), borderaxespad=0.0, fontsize=8)


def _yerr(half: np.ndarray) -> np.ndarray | None:
    """Error-bar half-widths for matplotlib: ``None`` if none is known, unknown ones as 0."""
    half = np.asarray(half, np.float64)
    return np.nan_to_num(half, nan=0.0) if np.isfinite(half).any() else None


def _seed_band(curves: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Mean and CI over seeds on the steps common to all curves (runs of one config share their steps)."""
    common = curves[0][0]
    for steps, _ in curves[1:]:
        common = np.intersect1d(common, steps)
    if not len(common):
        return common, common, common
    stacked = np.stack([np.interp(common, steps, values) for steps, values in curves])
    mean, half = t_interval(stacked)
    return common, mean, half


def plot_runs(
    run_dirs: Sequence[str | os.PathLike[str]], out_dir: str | os.PathLike[str]
) -> tuple[list[Path], list[str]]:
    """Draw every figure the runs have data for into ``out_dir``.

    :return: the PNG files written and a message for each figure that was skipped.
    """
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as error:
        raise ImportError("plotting needs matplotlib: pip install 'bayes-meta-rl[plot]'") from error
    runs = [_load_run(Path(run_dir)) for run_dir in run_dirs]
    groups = group_runs(runs)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    written: list[Path] = []
    skipped: list[str] = []

    def save(figure: Any, name: str) -> None:
        path = out / name
        figure.tight_layout()
        figure.savefig(path, dpi=110, bbox_inches="tight")
        plt.close(figure)
        written.append(path)

    # ------------------------------------------------------------------ learning curves
    envs = sorted({run["config"]["env_id"] for run in runs})
    figure, axes = plt.subplots(1, len(envs), figsize=(9.5 * len(envs), 4.2), squeeze=False)
    for ax, env_id in zip(axes[0], envs, strict=False):
        periodic_tasks: list[Any] = []
        final_tasks: list[Any] = []
        for members in groups.values():
            if members[0]["config"]["env_id"] != env_id:
                continue
            method = members[0]["label"].split(" / ", 1)[1]
            if all(member["evaluations"] for member in members):
                meta = [meta_test_curve(member) for member in members]
                periodic_tasks += [r.get("n_tasks") for m in members for r in m["evaluations"]]
                final_tasks += [(m["evaluation"] or {}).get("agent", {}).get("n_tasks") for m in members]
                steps, mean, half = _seed_band([(curve[0], curve[1]) for curve in meta])
                if not len(steps):
                    continue
                if len(meta) == 1:  # one seed: the CI over the test tasks of each point
                    half = meta[0][2]
                    band = "95% CI over test tasks"
                else:
                    band = "95% CI over seeds"
                seeds = f"{len(meta)} seed{'s' if len(meta) > 1 else ''}"
                (line,) = ax.plot(steps, mean, marker=".", label=f"{method} ({seeds}; band: {band})")
                if np.isfinite(half).any():
                    ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.25)
                continue
            # no periodic meta-test: the training trial return, and the final evaluation as a marker
            curves = [_curve(member["metrics"], "rollout/ep_rew_mean") for member in members]
            curves = [curve for curve in curves if len(curve[0])]
            if not curves:
                continue
            steps, mean, half = _seed_band(curves)
            if not len(steps):
                continue
            (line,) = ax.plot(steps, mean, label=f"{method} (n={len(curves)}, training trials)")
            if len(curves) > 1:
                ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.25)
            finals = [_final_point(member) for member in members]
            if finals and all(final is not None for final in finals) and len({f[0] for f in finals}) == 1:
                final_tasks += [m["evaluation"]["agent"].get("n_tasks") for m in members]
                values = np.array([[final[1]] for final in finals])
                final_mean, final_half = t_interval(values)
                if len(finals) == 1:
                    final_half = np.array([finals[0][2]])
                ax.errorbar(
                    [finals[0][0]],
                    final_mean,
                    yerr=_yerr(final_half),
                    marker="D",
                    capsize=3,
                    color=line.get_color(),
                    label=f"{method} final meta-test (n={len(finals)})",
                )
        _reference_lines(ax, [m for m in runs if m["config"]["env_id"] == env_id], trial=True)
        tasks = []
        if periodic_tasks:
            tasks.append(f"{_counts(periodic_tasks)} test tasks per meta-test")
        if any(count is not None for count in final_tasks):
            tasks.append(f"final: {_counts(final_tasks)}")
        ax.set_title(
            f"{env_id}: meta-test trial return" + (f" ({'; '.join(tasks)})" if tasks else ""), fontsize=10
        )
        ax.set_xlabel("env steps")
        ax.set_ylabel("return per trial (mean, 95% CI)")
        _legend(ax)
    save(figure, "learning_curves.png")

    # ------------------------------------------------------------------ per inner episode
    evaluated = {label: [m for m in members if m["evaluation"]] for label, members in groups.items()}
    evaluated = {label: members for label, members in evaluated.items() if members}
    if evaluated:
        envs_evaluated = sorted({members[0]["config"]["env_id"] for members in evaluated.values()})
        figure, axes = plt.subplots(
            1, len(envs_evaluated), figsize=(9.5 * len(envs_evaluated), 4.2), squeeze=False
        )
        for ax, env_id in zip(axes[0], envs_evaluated, strict=False):
            env_runs = [m for ms in evaluated.values() for m in ms if m["config"]["env_id"] == env_id]
            for members in evaluated.values():
                if members[0]["config"]["env_id"] != env_id:
                    continue
                agents = [m["evaluation"]["agent"] for m in members]
                per_seed = np.array([agent["episode_return_mean"] for agent in agents])
                mean, half = t_interval(per_seed)
                if len(members) == 1:  # one seed: the CI over its test tasks
                    half = np.asarray(
                        agents[0].get("episode_return_ci95") or np.full(len(mean), np.nan), np.float64
                    )
                    what = f"1 seed; 95% CI over {_counts([agents[0].get('n_tasks')])} test tasks"
                else:
                    what = f"{len(members)} seeds; 95% CI over seeds"
                episodes = np.arange(1, per_seed.shape[1] + 1)
                ax.errorbar(
                    episodes,
                    mean,
                    yerr=_yerr(half),
                    marker="o",
                    capsize=3,
                    label=f"{members[0]['label'].split(' / ', 1)[1]} ({what})",
                )
            _reference_lines(ax, env_runs)
            n_tasks = _counts([m["evaluation"]["agent"].get("n_tasks") for m in env_runs])
            env_steps = _counts([m["evaluation"].get("num_timesteps") for m in env_runs])
            ax.set_title(
                f"{env_id}: return per inner episode ({n_tasks} test tasks, after {env_steps} env steps)",
                fontsize=10,
            )
            ax.set_xlabel("inner episode")
            ax.xaxis.get_major_locator().set_params(integer=True)
            ax.set_ylabel("return (mean, 95% CI)")
            _legend(ax)
        save(figure, "inner_episode_returns.png")
    else:
        skipped.append("inner_episode_returns.png: no evaluation.json (run bayes-rl evaluate first)")

    # ------------------------------------------------------------------ bandit regret
    regret_groups = {
        label: members
        for label, members in evaluated.items()
        if "cumulative_regret_mean" in members[0]["evaluation"]["agent"]
    }
    if regret_groups:
        figure, ax = plt.subplots(figsize=(9.5, 4.2))
        for label, members in regret_groups.items():
            per_seed = np.array([m["evaluation"]["agent"]["cumulative_regret_mean"] for m in members])
            mean, half = t_interval(per_seed)
            steps = np.arange(1, per_seed.shape[1] + 1)
            (line,) = ax.plot(steps, mean, label=f"{label} (n={len(members)})")
            if len(members) > 1:
                ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.25)
        first = next(iter(regret_groups.values()))[0]["evaluation"]
        for name, summary in first["references"].items():
            if "cumulative_regret_mean" in summary:
                ax.plot(
                    np.arange(1, len(summary["cumulative_regret_mean"]) + 1),
                    summary["cumulative_regret_mean"],
                    linestyle="--",
                    label=name,
                )
        ax.set_title("expected cumulative regret over a trial", fontsize=10)
        ax.set_xlabel("pull")
        ax.set_ylabel("cumulative regret")
        _legend(ax)
        save(figure, "cumulative_regret.png")
    else:
        skipped.append("cumulative_regret.png: no run with a regret (bandit) evaluation")

    # ------------------------------------------------------------------ belief statistics
    belief_groups = {
        label: [m for m in members if (m["evaluation"] or {}).get("belief")]
        for label, members in groups.items()
    }
    belief_groups = {label: members for label, members in belief_groups.items() if members}
    if belief_groups:
        figure, axes = plt.subplots(1, 2, figsize=(16, 4.2))
        for label, members in belief_groups.items():
            for ax, key in zip(axes, ("entropy", "kl_to_previous"), strict=False):
                per_seed = np.array([m["evaluation"]["belief"][key] for m in members])
                mean, half = t_interval(per_seed)
                steps = np.arange(1, per_seed.shape[1] + 1)
                (line,) = ax.plot(steps, mean, label=f"{label} (n={len(members)})")
                if len(members) > 1:
                    ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.25)
        axes[0].set_title("posterior entropy over a trial (nats)", fontsize=10)
        axes[1].set_title("KL(q_t ‖ q_{t−1}) over a trial (nats)", fontsize=10)
        for ax in axes:
            ax.set_xlabel("trial step")
            _legend(ax)
        save(figure, "belief_over_trial.png")
    else:
        skipped.append("belief_over_trial.png: no run with a posterior (e.g. laplace) and an evaluation.json")

    trained = {
        label: members
        for label, members in groups.items()
        if all(len(_curve(m["metrics"], "belief/entropy")[0]) for m in members)
    }
    if trained:
        figure, axes = plt.subplots(1, 2, figsize=(16, 4.2))
        for label, members in trained.items():
            for ax, key in zip(axes, ("belief/entropy", "belief/kl_to_previous"), strict=False):
                curves = [_curve(m["metrics"], key) for m in members]
                steps, mean, half = _seed_band(curves)
                if not len(steps):
                    continue
                (line,) = ax.plot(steps, mean, label=f"{label} (n={len(members)})")
                if len(members) > 1:
                    ax.fill_between(steps, mean - half, mean + half, color=line.get_color(), alpha=0.25)
        axes[0].set_title("training: mean posterior entropy", fontsize=10)
        axes[1].set_title("training: mean KL(q_t ‖ q_{t−1})", fontsize=10)
        for ax in axes:
            ax.set_xlabel("env steps")
            _legend(ax)
        save(figure, "belief_training.png")

    # ------------------------------------------------------------------ grid belief over cells
    cells = [run for run in runs if (run["evaluation"] or {}).get("belief_cells")]
    if cells:
        _plot_grid_belief(plt, cells[0], out, written)
    else:
        skipped.append(
            "grid_belief.png: needs a grid run whose belief decodes a distribution over cells (VariBAD); "
            "none of the given runs has one"
        )
    return written, skipped


def _reference_lines(ax: Any, runs: list[dict[str, Any]], trial: bool = False) -> None:
    """Dashed reference lines from the first evaluated run: per inner episode, or per trial."""
    evaluations = [run["evaluation"] for run in runs if run["evaluation"]]
    if not evaluations:
        return
    evaluation = evaluations[0]
    references = {name: summary["episode_return_mean"] for name, summary in evaluation["references"].items()}
    references.update(evaluation.get("exact", {}))
    for index, (name, values) in enumerate(references.items()):
        style = dict(linestyle="--", color=f"C{(index + 5) % 10}", linewidth=1)
        if trial:
            ax.axhline(sum(values), label=name, **style)
            continue
        episodes = np.arange(1, len(values) + 1)
        ax.plot(episodes, values, marker=".", label=name, **style)
        ci = (evaluation["references"].get(name) or {}).get("episode_return_ci95")
        if ci is not None and _yerr(ci) is not None:  # sampled references: their CI over the tasks
            ax.errorbar(
                episodes,
                values,
                yerr=_yerr(ci),
                fmt="none",
                capsize=2,
                color=style["color"],
                label=f"_{name} CI",
            )


def _plot_grid_belief(plt: Any, run: dict[str, Any], out: Path, written: list[Path]) -> None:
    """``belief_cells``: ``[T, size, size]`` decoded reward probability per cell at each trial step."""
    cells = np.asarray(run["evaluation"]["belief_cells"], np.float64)
    steps = np.linspace(0, len(cells) - 1, min(8, len(cells))).astype(int)
    figure, axes = plt.subplots(1, len(steps), figsize=(2.2 * len(steps), 2.6), squeeze=False)
    for ax, step in zip(axes[0], steps, strict=False):
        ax.imshow(cells[step].T, origin="lower", cmap="viridis", vmin=0)
        ax.set_title(f"t = {step}", fontsize=9)
        ax.set_xticks([])
        ax.set_yticks([])
    figure.suptitle(f"{run['label']}: p(reward at cell | posterior mean) over the trial", fontsize=10)
    path = out / "grid_belief.png"
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    plt.close(figure)
    written.append(path)
