"""The results tables of README.md, docs/results.md and docs/sb3_integration.md, rendered from the
results files.

Each table sits between two marker comments, ``<!-- results:NAME:begin -->`` and
``<!-- results:NAME:end -->``; everything between them is generated from ``benchmarks/results/``:

* ``main-job``, ``main-job-summary``: ``main_job*.json`` (``benchmarks/main_job.py``);
* ``learning-grid``, ``learning-grid-episodes``: ``learning_grid*.json`` (``benchmarks/learning_grid.py``);
* ``learning-bandit``: ``learning_bandit*.json`` (``benchmarks/learning_bandit.py``);
* ``learning-mujoco``: ``learning_mujoco*.json`` (``benchmarks/learning_mujoco.py``);
* ``learning-metaworld``: ``learning_metaworld*.json`` (``benchmarks/learning_metaworld.py``);
* ``train-throughput``, ``train-throughput-ratios``: ``train_throughput.json``;
* ``extractor-speed``: ``extractors.json`` (``benchmarks/extractors.py``);
* ``learning-extractors-grid``, ``learning-extractors-bandit``: ``learning_extractors_<env>*.json``
  (``benchmarks/learning_extractors.py``).

Learning results files of earlier layouts (without ``"format": "learning/v1"``) are skipped; a
block without any results file says which command would measure it.

    python benchmarks/results_tables.py           # rewrite the blocks
    python benchmarks/results_tables.py --check   # exit 1 listing the blocks that differ
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "benchmarks" / "results"
DOCUMENTS = (REPO / "README.md", REPO / "docs" / "results.md", REPO / "docs" / "sb3_integration.md")
LEARNING_FORMAT = "learning/v1"
MARKER = re.compile(
    r"(?P<begin><!-- results:(?P<name>[a-z0-9-]+):begin -->\n)(?P<body>.*?)"
    r"(?P<end><!-- results:(?P=name):end -->)",
    re.S,
)
METHOD_NAMES = {
    "rl2": "RL²",
    "laplace": "Laplace-VRNN",
    "vrnn": "VRNN",
    "varibad": "VariBAD",
    "glibrl": "GLiBRL",
    "laplace post-hoc": "Laplace, post hoc on RL² (no training)",
    "laplace fine-tuned": "Laplace, post hoc on RL² + fine-tuning",
    "stock PPO": "stock PPO (MLP, no memory)",
}


# ------------------------------------------------------------------------------------ formatting
def _number(value: float | None, digits: int = 2) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _pm(mean: float, ci: float | None, digits: int = 2) -> str:
    """``mean ± ci`` (just the mean without an interval)."""
    return _number(mean, digits) + ("" if ci is None else f" ± {ci:.{digits}f}")


def _steps(steps: float) -> str:
    """Env steps in short form: 1000320 → 1M, 2500000 → 2.5M, 800000 → 800k."""
    for scale, suffix in ((1e6, "M"), (1e3, "k")):
        if steps >= scale:
            return f"{steps / scale:.3g}{suffix}"
    return f"{steps:.0f}"


def _table(header: list[str], align: str, rows: list[list[str]]) -> str:
    """A markdown table; ``align`` holds one letter per column, ``l`` or ``r``."""
    rule = ["---" if a == "l" else "---:" for a in align]
    return "\n".join("| " + " | ".join(cells) + " |" for cells in [header, rule, *rows])


def _load(results_dir: Path, pattern: str, learning: bool = False) -> list[tuple[str, dict[str, Any]]]:
    """``(file name, content)`` of the results files matching ``pattern`` (learning files: only those
    of :data:`LEARNING_FORMAT`)."""
    files = []
    for path in sorted(Path(results_dir).glob(pattern)):
        data = json.loads(path.read_text())
        if not learning or data.get("format") == LEARNING_FORMAT:
            files.append((path.name, data))
    return files


def _missing(command: str, file: str) -> str:
    return (
        f"_Not measured yet: `{command}` writes `benchmarks/results/{file}`, "
        "then `python benchmarks/results_tables.py` fills in this table._"
    )


def _caption(result: dict[str, Any], name: str) -> str:
    git = result.get("git") or {}
    commit = (git.get("commit") or "unknown")[:10] + (" with local changes" if git.get("dirty") else "")
    return f"`{result['command']}` (commit {commit}{_environment_note(result)}; `{name}`):"


def _environment_note(result: dict[str, Any]) -> str:
    """``", torch 2.13.0+cpu, numpy 2.4.6, SB3 2.9.2, AVX512"`` for results that record their
    software environment (``bayes_agents.experiment.software_environment``), ``""`` for older files."""
    environment = result.get("environment")
    if not environment:
        return ""
    packages = environment.get("packages", {})
    parts = [
        f"{label} {packages[package]}"
        for package, label in (("torch", "torch"), ("numpy", "numpy"), ("stable_baselines3", "SB3"))
        if packages.get(package)
    ]
    if environment.get("torch_cpu_capability"):
        parts.append(str(environment["torch_cpu_capability"]))
    return "".join(f", {part}" for part in parts)


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------ main job
def _main_job_files(results_dir: Path) -> list[tuple[str, dict[str, Any]]]:
    files = _load(results_dir, "main_job*.json")
    return sorted(files, key=lambda item: (_main_job_steps(item[1]), item[0]))


def _main_job_steps(result: dict[str, Any]) -> float:
    return _mean([row["num_timesteps"] for row in result["per_seed"].values()])


def render_main_job(results_dir: Path) -> str:
    """Per results file: trial return, % of Bayes-optimal, return per inner episode and wall time of
    each seed, then their mean ± 95% CI with the worst seed."""
    files = _main_job_files(results_dir)
    if not files:
        return _missing("python benchmarks/main_job.py", "main_job.json")
    parts = []
    for name, result in files:
        rows = [
            [
                seed,
                _number(row["trial_return"]),
                f"{row['percent_of_bayes_optimal']:.1f}%",
                " / ".join(f"{value:.2f}" for value in row["episode_returns"]),
                "–" if row["wall_seconds"] is None else f"{row['wall_seconds']:.0f}",
                "–" if row.get("train_seconds") is None else f"{row['train_seconds']:.0f}",
            ]
            for seed, row in result["per_seed"].items()
        ]
        rows.append(
            [
                "mean ± 95% CI",
                f"**{_pm(result['trial_return_mean'], result['trial_return_ci95_over_seeds'])}**",
                f"**{result['percent_of_bayes_optimal_mean']:.1f}%** (worst seed {result['worst_seed']}: "
                f"{result['worst_percent_of_bayes_optimal']:.1f}%)",
                " / ".join(f"{value:.2f}" for value in result["episode_returns_mean"]),
                "",
                "",
            ]
        )
        header = ["seed", "trial return", "% of Bayes-optimal", "per inner episode", "wall s", "training s"]
        caption = (
            f"`{result['command']}`, {_steps(_main_job_steps(result))} env steps, "
            f"Bayes-optimal trial return {result['bayes_optimal_trial_return']:.2f} (`{name}`):"
        )
        parts.append(caption + "\n\n" + _table(header, "rrrlrr", rows))
    return "\n\n".join(parts)


def render_main_job_summary(results_dir: Path) -> str:
    """One row per main-job results file: mean ± 95% CI over seeds, % of Bayes-optimal, worst seed."""
    files = _main_job_files(results_dir)
    if not files:
        return _missing("python benchmarks/main_job.py", "main_job.json")
    rows = []
    for name, result in files:
        walls = [
            row["wall_seconds"] for row in result["per_seed"].values() if row["wall_seconds"] is not None
        ]
        trains = [row["train_seconds"] for row in result["per_seed"].values() if row.get("train_seconds")]
        rows.append(
            [
                f"`{result['command']}`",
                _steps(_main_job_steps(result)),
                str(len(result["per_seed"])),
                _pm(result["trial_return_mean"], result["trial_return_ci95_over_seeds"]),
                f"{result['percent_of_bayes_optimal_mean']:.1f}%",
                f"seed {result['worst_seed']}: {result['worst_percent_of_bayes_optimal']:.1f}%",
                f"{_mean(walls):.0f}" if walls else "–",
                f"{max(trains):.0f}" if trains else "–",
                f"`{name}`",
            ]
        )
    header = [
        "command",
        "env steps",
        "seeds",
        "trial return",
        "% of Bayes-optimal",
        "worst seed",
        "wall s / run",
        "training s / run (max)",
        "results file",
    ]
    return _table(header, "lrrrrrrrl", rows)


def render_main_job_sentence(results_dir: Path) -> str:
    """The README's one-sentence summary of the main job at the CLI's default budget (``main_job.json``):
    mean ± 95% CI over seeds, % of Bayes-optimal, the range over seeds and the longest training time."""
    path = Path(results_dir) / "main_job.json"
    if not path.is_file():
        return _missing("python benchmarks/main_job.py", "main_job.json")
    result = json.loads(path.read_text())
    per_seed = result["per_seed"]
    seeds = ", ".join(str(seed) for seed in per_seed)
    percents = [row["percent_of_bayes_optimal"] for row in per_seed.values()]
    train = [row["train_seconds"] for row in per_seed.values() if row.get("train_seconds") is not None]
    text = (
        f"On seeds {seeds} (`python benchmarks/main_job.py`, two runs at a time on the 2 cores, "
        f"{_steps(_main_job_steps(result))} env steps each): trial return "
        f"**{_pm(result['trial_return_mean'], result['trial_return_ci95_over_seeds'])}** on the "
        f"420 test tasks, **{result['percent_of_bayes_optimal_mean']:.1f}%** of Bayes-optimal "
        f"(seeds from {min(percents):.1f}% to {max(percents):.1f}%)"
    )
    if train:
        text += f", at most {max(train) / 60:.1f} minutes of training per run"
    return text + " (`benchmarks/results/main_job.json`)."


# ------------------------------------------------------------------------------------ learning
def _method_cells(method: str, row: dict[str, Any]) -> list[str]:
    return [METHOD_NAMES.get(method, method), _steps(_mean(row["env_steps"])), str(len(row["seeds"]))]


def _iqm(row: dict[str, Any], digits: int = 2) -> str:
    iqm = row.get("iqm")
    if not iqm:
        return "–"
    low, high = iqm["iqm_ci"]
    return f"{iqm['iqm']:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"


def _speed(row: dict[str, Any]) -> str:
    """Mean env steps/s of the runs timed."""
    timed = [value for value in row["env_steps_per_s"] if value is not None]
    return f"{_mean(timed):,.0f}" if timed else "–"


def _minutes(row: dict[str, Any]) -> str:
    return f"{_mean(row['train_minutes']):.1f}"


def render_grid(result: dict[str, Any], name: str) -> str:
    """Per method: env steps, seeds, trial return mean ± 95% CI, % of Bayes-optimal, worst seed,
    episodes 2–4 as % of the oracle, IQM [95% CI], training minutes per run; then the references."""
    rows = []
    for method, row in result["methods"].items():
        percent, later = row["percent_of_bayes_optimal"], row["later_episodes_percent_of_oracle"]
        rows.append(
            [
                *_method_cells(method, row),
                _pm(row["trial_return"]["mean"], row["trial_return"]["ci95"]),
                f"{percent['mean']:.1f}%",
                f"seed {percent['worst_seed']}: {percent['worst']:.1f}%",
                f"{later['mean']:.1f}%",
                _iqm(row),
                _minutes(row),
            ]
        )
    optimal, oracle = result["bayes_optimal_trial_return"], result["references"][result["oracle"]]
    for label, reference in result["references"].items():
        episodes = reference["episode_return_mean"]
        rows.append(
            [
                f"{label} (reference)",
                "–",
                "–",
                _number(reference["trial_return_mean"]),
                f"{100 * reference['trial_return_mean'] / optimal:.1f}%",
                "",
                f"{100 * sum(episodes[1:]) / sum(oracle['episode_return_mean'][1:]):.1f}%",
                "",
                "",
            ]
        )
    header = [
        "agent",
        "env steps",
        "seeds",
        "trial return",
        "% of Bayes-optimal",
        "worst seed",
        "episodes 2–4, % of oracle",
        "IQM [95% CI]",
        "train min / run",
    ]
    return _caption(result, name) + "\n\n" + _table(header, "lrrrrrrrr", rows)


def render_grid_episodes(result: dict[str, Any], name: str) -> str:
    """Per method and reference: the return of each inner episode and of the trial, mean ± 95% CI."""
    rows = []
    for method, row in result["methods"].items():
        episodes = row["episode_returns"]
        cells = [_pm(m, c) for m, c in zip(episodes["mean"], episodes["ci95"], strict=True)]
        trial = _pm(row["trial_return"]["mean"], row["trial_return"]["ci95"])
        rows.append(
            [f"{METHOD_NAMES.get(method, method)} ({_steps(_mean(row['env_steps']))})", *cells, trial]
        )
    for label, reference in result["references"].items():
        cells = [_number(value) for value in reference["episode_return_mean"]]
        rows.append([f"{label} (reference)", *cells, _number(reference["trial_return_mean"])])
    n_episodes = len(next(iter(result["references"].values()))["episode_return_mean"])
    header = ["agent (env steps)", *(f"ep {e + 1}" for e in range(n_episodes)), "trial"]
    return _caption(result, name) + "\n\n" + _table(header, "l" + "r" * (n_episodes + 1), rows)


def render_bandit(result: dict[str, Any], name: str) -> str:
    """Per method: regret at the horizon on both splits (mean ± 95% CI, worst seed), worst seed /
    Thompson sampling, IQM on the train split, training minutes; then the references."""
    rows = []
    for method, row in result["methods"].items():
        cells = []
        for split in ("train", "test"):
            regret = row["regret"][split]
            cells += [
                _pm(regret["mean"], regret["ci95"]),
                f"seed {regret['worst_seed']}: {regret['worst']:.2f}",
            ]
        ratios = row["worst_vs_thompson"]
        rows.append(
            [
                *_method_cells(method, row),
                *cells,
                f"{ratios['train']:.2f} / {ratios['test']:.2f}",
                _iqm(row),
                _minutes(row),
            ]
        )
    for label, train in result["references"]["train"].items():
        if label.startswith("oracle"):
            continue  # zero regret by definition
        test = result["references"]["test"][label]
        rows.append(
            [
                f"{label} (reference)",
                "–",
                "–",
                _pm(train["final_regret_mean"], train["final_regret_ci95"]),
                "",
                _pm(test["final_regret_mean"], test["final_regret_ci95"]),
                "",
                "",
                "",
                "",
            ]
        )
    header = [
        "agent",
        "env steps",
        "seeds",
        "α = 0.2 (train)",
        "worst seed",
        "α = 0.3 (test)",
        "worst seed",
        "worst seed / Thompson (0.2 / 0.3)",
        "IQM α = 0.2 [95% CI]",
        "train min / run",
    ]
    return _caption(result, name) + "\n\n" + _table(header, "lrrrrrrrrr", rows)


def render_learning(result: dict[str, Any], name: str) -> str:
    """The main table of a learning results file (grid, bandit, MuJoCo or Meta-World)."""
    render = {
        "learning_bandit": render_bandit,
        "learning_extractors_bandit": render_bandit,
        "learning_mujoco": render_mujoco,
        "learning_sac": render_mujoco,
        "learning_metaworld": render_metaworld,
    }
    return render.get(result["benchmark"], render_grid)(result, name)


def _learning_block(
    benchmark: str, render: Callable[[dict[str, Any], str], str], command: str | None = None
) -> Callable[[Path], str]:
    def block(results_dir: Path) -> str:
        files = _load(results_dir, f"{benchmark}*.json", learning=True)
        if not files:
            return _missing(command or f"python benchmarks/{benchmark}.py", f"{benchmark}.json")
        rendered = []
        for name, result in _without_superseded_rows(benchmark, files):
            text = render(result, f"benchmarks/results/{name}")
            for method, newer in result.get("superseded", {}).items():
                label = METHOD_NAMES.get(method, method)
                text += f"\n\nThis file's {label} row (earlier defaults) is superseded by `{newer}`."
            rendered.append(text)
        return "\n\n".join(rendered)

    return block


def _without_superseded_rows(
    benchmark: str, files: list[tuple[str, dict[str, Any]]]
) -> list[tuple[str, dict[str, Any]]]:
    """The files with each method's rows taken from its own file ``<benchmark>_<method>.json`` where
    there is one (a re-run of that method at new defaults): its rows in the other files are dropped,
    and ``result["superseded"]`` maps each dropped method to the file that replaces it. Files left
    without rows are left out."""
    owner = {
        method: name
        for name, result in files
        for method in result.get("methods", {})
        if name == f"{benchmark}_{method}.json"
    }
    kept = []
    for name, result in files:
        methods = result.get("methods", {})
        dropped = {method: owner[method] for method in methods if owner.get(method, name) != name}
        if dropped:
            methods = {key: row for key, row in methods.items() if key not in dropped}
            if not methods:
                continue
            result = {**result, "methods": methods, "superseded": dropped}
        kept.append((name, result))
    return kept


# ------------------------------------------------------------------------------------ training speed
def _ratios_table(result: dict[str, Any]) -> str:
    rows = [
        [label, f"{ratio['value']:.2f}", ratio["target"], "yes" if ratio["met"] else "no"]
        for label, ratio in result["ratios"].items()
    ]
    return _table(["ratio", "value", "target", "met"], "lrrl", rows)


def _speed_rows(result: dict[str, Any]) -> str:
    rows = []
    for group, measurements in result["results"].items():
        for label, row in measurements.items():
            if "env_steps_per_s" in row:
                value = row["env_steps_per_s"]
                rate = f"{value:,.0f} env steps/s" if value >= 100 else f"{value:.1f} env steps/s"
            else:
                rate = f"{row['ms_per_step']:.2f} ms per step"
            seconds = f"{row['seconds']:.1f} s" if "seconds" in row else ""
            rows.append([group, label, rate, seconds])
    return _table(["group", "measurement", "rate", "time"], "llrr", rows)


def _speed_block(benchmark: str, ratios_only: bool = False) -> Callable[[Path], str]:
    """The renderer of a speed benchmark's ``<benchmark>.json`` (``results`` by group and ``ratios``
    with their targets): every measurement (rate and time), then the ratios; or the ratios alone."""

    def block(results_dir: Path) -> str:
        files = _load(results_dir, f"{benchmark}.json")
        if not files:
            return _missing(f"python benchmarks/{benchmark}.py", f"{benchmark}.json")
        result = files[0][1]
        if ratios_only:
            return _ratios_table(result)
        return _speed_rows(result) + "\n\n" + _ratios_table(result)

    return block


def _rate(row: dict[str, Any], episode: int) -> str:
    """Share of test trials whose inner ``episode`` ran the task's way, mean over seeds (worst seed)."""
    rates = row.get("task_direction_rate")
    if rates is None:
        return "–"
    per_seed = [values[episode] for values in rates["per_seed"]]
    return f"{100 * rates['mean'][episode]:.0f}% (worst {100 * min(per_seed):.0f}%)"


def render_mujoco(result: dict[str, Any], name: str) -> str:
    """Per env and method, on the test split: return per inner episode and per trial (mean ± 95% CI
    over seeds, worst seed), episode 2 − episode 1, the share of trials run the task's way (direction
    envs), the train-split trial return, training minutes and env steps/s per run."""
    tables = []
    envs = result["envs"] if "envs" in result else {result["env_id"]: result}  # several envs, or one
    for env_id, summary in envs.items():
        rows = []
        for method, row in summary["methods"].items():
            episodes, trial = row["episode_returns"], row["trial_return"]
            rows.append(
                [
                    *_method_cells(method, row),
                    *(_pm(m, c, 1) for m, c in zip(episodes["mean"][:2], episodes["ci95"][:2], strict=True)),
                    f"{_pm(trial['mean'], trial['ci95'], 1)} "
                    f"(seed {trial['worst_seed']}: {trial['worst']:.1f})",
                    _pm(row["second_minus_first"]["mean"], row["second_minus_first"]["ci95"], 1),
                    _rate(row, 0),
                    _rate(row, 1),
                    _number(row["train_trial_return"]["mean"], 1),
                    _minutes(row),
                    _speed(row),
                ]
            )
        header = [
            "agent",
            "env steps",
            "seeds",
            "ep 1",
            "ep 2",
            "trial (worst seed)",
            "ep 2 − ep 1",
            "ep 1 ran the task's way",
            "ep 2 ran the task's way",
            "trial, train split",
            "train min / run",
            "env steps/s",
        ]
        title = f"**{env_id}**, {summary['n_tasks']} fixed {summary['split']} tasks:"
        tables.append(title + "\n\n" + _table(header, "lrrrrrrrrrrr", rows))
    return _caption(result, name) + "\n\n" + "\n\n".join(tables)


def _percents(stats: dict[str, Any]) -> list[str]:
    """Per inner episode: ``mean ± ci`` of a rate over seeds, in %."""
    return [
        _pm(100 * m, None if c is None else 100 * c, 0) + "%"
        for m, c in zip(stats["mean"], stats["ci95"], strict=True)
    ]


def render_metaworld(result: dict[str, Any], name: str) -> str:
    """Per method: success rate per inner episode on train and test tasks (mean ± 95% CI over seeds,
    worst seed of the last episode), trial return, training minutes and env steps/s; then the success
    per task class (mean over seeds) where there are several classes."""
    env = result["env_id"] + "".join(f", {k} {v}" for k, v in result.get("env_kwargs", {}).items())
    rows, class_rows = [], []
    for method, row in result["methods"].items():
        cells = []
        for split in ("train", "test"):
            last = row[split]["last_episode_success"]
            cells += [
                *_percents(row[split]["success_rate"]),
                f"seed {last['worst_seed']}: {100 * last['worst']:.0f}%",
            ]
        rows.append(
            [
                *_method_cells(method, row),
                *cells,
                _number(row["test"]["trial_return"]["mean"], 0),
                _minutes(row),
                _speed(row),
            ]
        )
        for split in ("train", "test"):
            per_class = row[split]["success_rate_per_class"]
            if len(per_class) > 1:
                class_rows += [
                    [METHOD_NAMES.get(method, method), split, label, *(f"{100 * v:.0f}%" for v in rates)]
                    for label, rates in per_class.items()
                ]
    n_episodes = len(next(iter(result["methods"].values()))["train"]["success_rate"]["mean"])
    episodes = [f"ep {e + 1}" for e in range(n_episodes)]
    header = [
        "agent",
        "env steps",
        "seeds",
        *(f"train {e}" for e in episodes),
        "worst seed",
        *(f"test {e}" for e in episodes),
        "worst seed",
        "test trial return",
        "train min / run",
        "env steps/s",
    ]
    text = f"{_caption(result, name)} {env}, success rate per inner episode on {result['n_tasks']} "
    text += "fixed tasks per split:"
    text += "\n\n" + _table(header, "l" + "r" * (len(header) - 1), rows)
    if class_rows:
        class_header = ["agent", "split", "task class", *(f"success {e}" for e in episodes)]
        text += "\n\nPer task class (mean over seeds):\n\n" + _table(
            class_header, "lll" + "r" * n_episodes, class_rows
        )
    return text


# ------------------------------------------------------------------------------------ blocks
BLOCKS: dict[str, Callable[[Path], str]] = {
    "main-job": render_main_job,
    "main-job-summary": render_main_job_summary,
    "main-job-sentence": render_main_job_sentence,
    "learning-grid": _learning_block("learning_grid", render_grid),
    "learning-grid-episodes": _learning_block("learning_grid", render_grid_episodes),
    "learning-bandit": _learning_block("learning_bandit", render_bandit),
    "learning-mujoco": _learning_block("learning_mujoco", render_mujoco),
    "learning-sac": _learning_block("learning_sac", render_mujoco),
    "learning-metaworld": _learning_block("learning_metaworld", render_metaworld),
    "learning-extractors-grid": _learning_block(
        "learning_extractors_grid", render_grid, "python benchmarks/learning_extractors.py --env grid"
    ),
    "learning-extractors-bandit": _learning_block(
        "learning_extractors_bandit", render_bandit, "python benchmarks/learning_extractors.py --env bandit"
    ),
    "train-throughput": _speed_block("train_throughput"),
    "train-throughput-ratios": _speed_block("train_throughput", ratios_only=True),
    "extractor-speed": _speed_block("extractors"),
}


def render_blocks(results_dir: Path = RESULTS) -> dict[str, str]:
    """Every block's text, by name."""
    return {name: render(Path(results_dir)) for name, render in BLOCKS.items()}


def update_text(text: str, blocks: dict[str, str]) -> tuple[str, list[str]]:
    """``text`` with each marker block's body replaced by its rendering, and the names of the blocks
    that changed. ``ValueError`` for an unknown block name or a begin marker without its end."""
    changed = []

    def replace(match: re.Match[str]) -> str:
        name = match["name"]
        if name not in blocks:
            raise ValueError(f"unknown results block {name!r}; known: {sorted(blocks)}")
        body = blocks[name].strip("\n") + "\n"
        if match["body"] != body:
            changed.append(name)
        return match["begin"] + body + match["end"]

    updated = MARKER.sub(replace, text)
    begins = re.findall(r"<!-- results:([a-z0-9-]+):begin -->", text)
    matched = [m["name"] for m in MARKER.finditer(text)]
    if begins != matched:
        raise ValueError(
            f"results blocks without a matching end marker: {sorted(set(begins) - set(matched))}"
        )
    return updated, changed


def check(documents: tuple[Path, ...] = DOCUMENTS, results_dir: Path = RESULTS) -> list[str]:
    """``"FILE: BLOCK"`` for every block of ``documents`` that differs from its rendering."""
    blocks = render_blocks(results_dir)
    differences = []
    for path in documents:
        _, changed = update_text(Path(path).read_text(), blocks)
        differences += [f"{_display(path)}: {name}" for name in changed]
    return differences


def write(documents: tuple[Path, ...] = DOCUMENTS, results_dir: Path = RESULTS) -> list[str]:
    """Rewrite the blocks of ``documents``; returns ``"FILE: BLOCK"`` for each block changed."""
    blocks = render_blocks(results_dir)
    changes = []
    for path in documents:
        text, changed = update_text(Path(path).read_text(), blocks)
        if changed:
            Path(path).write_text(text)
        changes += [f"{_display(path)}: {name}" for name in changed]
    return changes


def _display(path: Path) -> str:
    path = Path(path).resolve()
    return str(path.relative_to(REPO)) if path.is_relative_to(REPO) else str(path)


def main(argv: list[str] | None = None) -> int:
    """Command line: rewrite the blocks, or with ``--check`` exit 1 listing those that differ."""
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--check", action="store_true", help="only compare; exit 1 if a block differs")
    parser.add_argument("--results", type=Path, default=RESULTS, help="results directory")
    parser.add_argument("documents", nargs="*", type=Path, default=list(DOCUMENTS), help="markdown files")
    args = parser.parse_args(argv)
    documents = tuple(args.documents)
    if args.check:
        differences = check(documents, args.results)
        for difference in differences:
            print(f"differs from the results files: {difference}")
        if differences:
            print("run: python benchmarks/results_tables.py")
        return 1 if differences else 0
    for change in write(documents, args.results):
        print(f"updated {change}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
