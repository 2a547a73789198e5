"""``bayes-rl plot``: what the figures show, read back from the matplotlib objects (no images).

The run directories are synthetic but in the real file formats: ``config.json`` is a resolved config,
``evaluations.jsonl`` holds the rows :class:`~bayes_agents.experiment.RunController` appends
(``{"timesteps": ..., **summary}``) and ``evaluation.json`` the report of
:func:`~bayes_agents.experiment.evaluate_run`; every summary is an
:meth:`~bayes_envs.evaluation.EvaluationResult.summary` of made-up per-task returns.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from test_cli import captured_figures, tiny_config

from bayes_agents import experiment
from bayes_agents.cli import main
from bayes_envs.evaluation import EvaluationResult

pytest.importorskip("matplotlib")

#: Two-sided 95% Student-t quantiles, by degrees of freedom (seeds − 1).
T975 = {1: 12.706204736174694, 2: 4.302652729749462}
PERIODIC = [0, 120, 240]
FINAL = 360
EVAL_TASKS, FINAL_TASKS, EPISODES = 21, 50, 4
EXACT = [4.0, 11.0714286, 11.0714286, 11.0714286]


def _summary(rng: np.random.Generator, n_tasks: int, level: float, policy: str) -> dict:
    returns = rng.normal(level, 2.0, size=(n_tasks, EPISODES))
    result = EvaluationResult("BayesGrid-v0", policy, 10000, returns, np.zeros((n_tasks, 60)))
    return experiment.jsonable(result.summary())


def write_run(run: Path, seed: int, *, periodic: bool = True, evaluated: bool = True) -> Path:
    """A run directory with periodic meta-tests at ``PERIODIC`` and a final evaluation at ``FINAL``."""
    rng = np.random.default_rng(seed)
    config = tiny_config(seed=str(seed), timesteps=FINAL)
    run.mkdir(parents=True)
    (run / experiment.CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    with open(run / experiment.METRICS_FILE, "w") as stream:
        for step in (60, 120, 180, 240, 300, 360):
            stream.write(json.dumps({"timesteps": step, "rollout/ep_rew_mean": step / 60 + seed}) + "\n")
    with open(run / experiment.EVALUATIONS_FILE, "w") as stream:
        for step in PERIODIC if periodic else []:
            summary = _summary(rng, EVAL_TASKS, step / 60 + seed, config["method"])
            stream.write(json.dumps({"timesteps": step, **summary}) + "\n")
    if evaluated:
        agent = _summary(rng, FINAL_TASKS, 8.0 + seed, config["method"])
        agent["policy"] = f"{config['method']} (trained, {FINAL:,} steps)"
        report = {
            "run_dir": str(run),
            "config": config,
            "num_timesteps": FINAL,
            "agent": agent,
            "references": {"posterior sampling": _summary(rng, FINAL_TASKS, 9.0, "posterior sampling")},
            "exact": {"Bayes-optimal (exact)": EXACT},
            "belief": None,
            "belief_cells": None,
            "seconds": 0.1,
        }
        (run / experiment.EVALUATION_FILE).write_text(json.dumps(report, indent=2))
    return run


def _plot(tmp_path: Path, runs: list[Path]) -> dict:
    with captured_figures() as figures:
        assert main(["plot", *map(str, runs), "--out", str(tmp_path / "plots")]) == 0
    return figures


def _agent_line(ax):
    (line,) = [line for line in ax.get_lines() if line.get_label().startswith("rl2")]
    return line


def _band(ax) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The x values and lower / upper bounds of the (one) fill_between band of ``ax``."""
    (band,) = ax.collections
    vertices = band.get_paths()[0].vertices
    xs = np.unique(vertices[:, 0])
    lower = np.array([vertices[np.isclose(vertices[:, 0], x), 1].min() for x in xs])
    upper = np.array([vertices[np.isclose(vertices[:, 0], x), 1].max() for x in xs])
    return xs, lower, upper


def _errorbar(ax, prefix: str):
    """x, y and the error-bar half-widths of the errorbar container labelled ``prefix...``."""
    (container,) = [c for c in ax.containers if c.get_label().startswith(prefix)]
    segments = np.array(container.lines[2][0].get_segments())  # [points, 2 ends, (x, y)]
    x, y = segments[:, 0, 0], segments[:, :, 1].mean(axis=1)
    if container.lines[0] is not None:  # the data points themselves (not drawn with fmt="none")
        np.testing.assert_allclose(np.asarray(container.lines[0].get_xdata(), float), x)
        np.testing.assert_allclose(np.asarray(container.lines[0].get_ydata(), float), y)
    return x, y, (segments[:, 1, 1] - segments[:, 0, 1]) / 2


def _assert_legend_outside(figure, ax) -> None:
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    canvas = FigureCanvasAgg(figure)  # the saved figure was closed: draw it again as saved
    canvas.draw()
    renderer = canvas.get_renderer()
    legend = ax.get_legend()
    assert legend is not None
    box, axes_box = legend.get_window_extent(renderer), ax.get_window_extent(renderer)
    assert box.x0 >= axes_box.x1  # right of the axes: over no data
    for other in figure.axes:
        if other is not ax:
            assert not box.overlaps(other.get_window_extent(renderer))


def test_one_run_curve_ends_with_the_final_evaluation_and_has_task_bands(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", seed=0)
    figures = _plot(tmp_path, [run])
    evaluations = experiment.read_jsonl(run / experiment.EVALUATIONS_FILE)
    report = json.loads((run / experiment.EVALUATION_FILE).read_text())

    (ax,) = figures["learning_curves.png"].axes
    line = _agent_line(ax)
    np.testing.assert_array_equal(line.get_xdata(), [*PERIODIC, FINAL])
    assert line.get_xdata()[-1] == report["num_timesteps"]
    assert line.get_ydata()[-1] == pytest.approx(report["agent"]["trial_return_mean"])
    np.testing.assert_allclose(line.get_ydata()[:-1], [r["trial_return_mean"] for r in evaluations])
    # one seed: the band is each point's 95% CI over its test tasks
    half = [*(r["trial_return_ci95"] for r in evaluations), report["agent"]["trial_return_ci95"]]
    xs, lower, upper = _band(ax)
    np.testing.assert_array_equal(xs, [*PERIODIC, FINAL])
    np.testing.assert_allclose(lower, line.get_ydata() - half)
    np.testing.assert_allclose(upper, line.get_ydata() + half)
    assert "over test tasks" in line.get_label()
    assert f"{EVAL_TASKS} test tasks" in ax.get_title() and f"final: {FINAL_TASKS}" in ax.get_title()
    assert ax.get_xlabel() == "env steps"
    _assert_legend_outside(figures["learning_curves.png"], ax)

    # per inner episode: error bars are the CI over the test tasks, per episode
    (ax,) = figures["inner_episode_returns.png"].axes
    x, y, half = _errorbar(ax, "rl2")
    np.testing.assert_array_equal(x, np.arange(1, EPISODES + 1))
    np.testing.assert_allclose(y, report["agent"]["episode_return_mean"])
    np.testing.assert_allclose(half, report["agent"]["episode_return_ci95"])
    reference = report["references"]["posterior sampling"]
    x, y, half = _errorbar(ax, "_posterior sampling")
    np.testing.assert_allclose(y, reference["episode_return_mean"])
    np.testing.assert_allclose(half, reference["episode_return_ci95"])
    lines = {line.get_label(): line for line in ax.get_lines()}
    np.testing.assert_allclose(lines["Bayes-optimal (exact)"].get_ydata(), EXACT)
    assert f"{FINAL_TASKS} test tasks" in ax.get_title() and f"{FINAL} env steps" in ax.get_title()
    _assert_legend_outside(figures["inner_episode_returns.png"], ax)


@pytest.mark.parametrize("n_seeds", [2, 3])
def test_seeds_give_the_mean_curve_and_a_student_t_band(tmp_path: Path, n_seeds: int) -> None:
    runs = [write_run(tmp_path / f"run-{seed}", seed=seed) for seed in range(n_seeds)]
    figures = _plot(tmp_path, runs)
    per_seed = []
    for run in runs:
        records = experiment.read_jsonl(run / experiment.EVALUATIONS_FILE)
        final = json.loads((run / experiment.EVALUATION_FILE).read_text())["agent"]["trial_return_mean"]
        per_seed.append([*(r["trial_return_mean"] for r in records), final])
    per_seed = np.array(per_seed)
    mean = per_seed.mean(axis=0)
    half = T975[n_seeds - 1] * per_seed.std(axis=0, ddof=1) / np.sqrt(n_seeds)

    (ax,) = figures["learning_curves.png"].axes
    line = _agent_line(ax)
    np.testing.assert_array_equal(line.get_xdata(), [*PERIODIC, FINAL])
    np.testing.assert_allclose(line.get_ydata(), mean)
    xs, lower, upper = _band(ax)
    np.testing.assert_array_equal(xs, [*PERIODIC, FINAL])
    np.testing.assert_allclose(lower, mean - half)
    np.testing.assert_allclose(upper, mean + half)
    assert f"{n_seeds} seeds" in line.get_label() and "over seeds" in line.get_label()

    # per inner episode, several seeds: the t interval over the seeds' means
    (ax,) = figures["inner_episode_returns.png"].axes
    episodes = np.array(
        [
            json.loads((run / experiment.EVALUATION_FILE).read_text())["agent"]["episode_return_mean"]
            for run in runs
        ]
    )
    _, y, bars = _errorbar(ax, "rl2")
    np.testing.assert_allclose(y, episodes.mean(axis=0))
    np.testing.assert_allclose(bars, T975[n_seeds - 1] * episodes.std(axis=0, ddof=1) / np.sqrt(n_seeds))


def test_without_periodic_meta_tests_the_final_evaluation_is_a_marker(tmp_path: Path) -> None:
    run = write_run(tmp_path / "run", seed=0, periodic=False)
    figures = _plot(tmp_path, [run])
    report = json.loads((run / experiment.EVALUATION_FILE).read_text())
    (ax,) = figures["learning_curves.png"].axes
    training = _agent_line(ax)
    assert "training trials" in training.get_label()
    np.testing.assert_array_equal(training.get_xdata(), [60, 120, 180, 240, 300, 360])
    x, y, half = _errorbar(ax, "rl2 final meta-test")
    assert list(x) == [FINAL] and y[0] == pytest.approx(report["agent"]["trial_return_mean"])
    assert half[0] == pytest.approx(report["agent"]["trial_return_ci95"])


def test_meta_test_curve_final_evaluation_replaces_a_periodic_one_of_its_step() -> None:
    from bayes_agents.plotting import meta_test_curve

    run = {
        "evaluations": [
            {"timesteps": 0, "trial_return_mean": 1.0, "trial_return_ci95": 0.5},
            {"timesteps": 100, "trial_return_mean": 2.0, "trial_return_ci95": 0.5},
        ],
        "evaluation": {"num_timesteps": 100, "agent": {"trial_return_mean": 3.0, "trial_return_ci95": 0.1}},
    }
    steps, values, ci = meta_test_curve(run)
    np.testing.assert_array_equal(steps, [0, 100])
    np.testing.assert_array_equal(values, [1.0, 3.0])
    np.testing.assert_array_equal(ci, [0.5, 0.1])
    run["evaluation"] = None
    assert list(meta_test_curve(run)[1]) == [1.0, 2.0]
