"""The ``bayes-rl`` CLI: train → evaluate → plot, exact resume, config validation, atomic checkpoints."""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from stable_baselines3.common.callbacks import BaseCallback

import bayes_envs
from bayes_agents import experiment
from bayes_agents.cli import build_parser, main
from bayes_agents.defaults import ppo_settings
from bayes_agents.methods import METHODS

ENV = "BayesGrid-v0"
#: A tiny run: 4 envs × 15 steps = 60 env steps per PPO update.
TINY = [
    "n_envs=4",
    "ppo.n_steps=15",
    "ppo.batch_size=30",
    "ppo.n_epochs=2",
    "policy.hidden_size=16",
    "policy.latent_dim=4",
    "policy.embed_sizes=[8]",
    "policy.net_arch=[8]",
    "eval_every=120",
    "eval_tasks=21",
    "final_eval_tasks=21",
    "checkpoint_every=60",
]


def tiny_config(method: str = "rl2", timesteps: int = 240, **extra: str) -> dict:
    assignments = TINY + [f"{key}={value}" for key, value in extra.items()]
    overrides = experiment.parse_overrides(assignments)
    overrides["timesteps"] = timesteps
    return experiment.resolve_config(ENV, method, overrides=overrides)


def set_args(*extra: str) -> list[str]:
    return [arg for assignment in (*TINY, *extra) for arg in ("--set", assignment)]


@contextlib.contextmanager
def captured_figures():
    """The matplotlib figures saved inside the block, by file name (to read back what was drawn)."""
    from matplotlib.figure import Figure

    figures: dict[str, Figure] = {}
    original = Figure.savefig

    def spy(self, fname, *args, **kwargs):
        figures[Path(fname).name] = self
        return original(self, fname, *args, **kwargs)

    Figure.savefig = spy
    try:
        yield figures
    finally:
        Figure.savefig = original


def test_train_evaluate_plot_end_to_end(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    status = main(["train", ENV, "--method", "rl2", "-t", "180", "--out", str(run), *set_args()])
    assert status == 0
    printed = capsys.readouterr().out
    for name in ("config.json", "checkpoint.pt", "model.zip", "metrics.jsonl", "evaluation.json"):
        assert (run / name).is_file(), name
    config = json.loads((run / "config.json").read_text())
    assert config["ppo"]["n_steps"] == 15 and config["policy"]["embed_sizes"] == [8]
    # the grid defaults survive the overrides
    assert config["ppo"]["gamma"] == ppo_settings(ENV)["gamma"] and config["n_envs"] == 4
    metrics = experiment.read_jsonl(run / "metrics.jsonl")
    assert [record["timesteps"] for record in metrics] == [60, 120, 180]
    # 15 steps per env and update = one inner episode: update k logs the return of inner episode k.
    for k, record in enumerate(metrics, start=1):
        assert [key for key in record if key.startswith("rollout/inner_return_")] == [
            f"rollout/inner_return_{k}"
        ]
        # 15 steps of −0.1 or +1; the goal is ≥ 2 steps away: at most 13 on it.
        assert -1.5 - 1e-9 <= record[f"rollout/inner_return_{k}"] <= 12.8 + 1e-9
    evaluations = experiment.read_jsonl(run / "evaluations.jsonl")
    assert [record["timesteps"] for record in evaluations] == [0, 120]
    report = json.loads((run / "evaluation.json").read_text())
    assert report["agent"]["n_tasks"] == 21 and report["num_timesteps"] == 180
    assert report["environment"] == experiment.software_environment()  # the software that produced it
    assert report["belief_cells"] is None  # RL² decodes no belief over cells
    assert {"oracle (known goal)", "posterior sampling", "uniform random"} <= set(report["references"])
    assert report["exact"]["Bayes-optimal (exact)"] == pytest.approx(
        [4.0, 11.0714286, 11.0714286, 11.0714286]
    )
    assert "posterior sampling" in printed
    # each periodic meta-test was printed as it happened (plain lines: stdout is no terminal), with
    # the % of the exact Bayes-optimal trial return; the rows of evaluations.jsonl record the %
    bayes_optimal = sum(report["exact"]["Bayes-optimal (exact)"])
    meta_tests = [line for line in printed.splitlines() if line.startswith("meta-test @")]
    assert len(meta_tests) == len(evaluations) == 2
    for line, record in zip(meta_tests, evaluations, strict=True):
        percent = 100 * record["trial_return_mean"] / bayes_optimal
        assert record["percent_of_bayes_optimal"] == pytest.approx(percent)
        assert line == (
            f"meta-test @ {record['timesteps']:,} steps: trial return {record['trial_return_mean']:.2f} "
            f"± {record['trial_return_ci95']:.2f} (95% CI, 21 tasks), "
            f"{percent:.1f}% of Bayes-optimal ({bayes_optimal:.2f})"
        )
    assert printed.index(meta_tests[-1]) < printed.index("trained 180 steps")  # before the final table

    # evaluate: other tasks and seed, the agent evaluated exactly as by bayes_envs.evaluation.evaluate
    out = tmp_path / "eval.json"
    assert main(["evaluate", str(run), "--n-tasks", "7", "--seed", "3", "--out", str(out)]) == 0
    again = json.loads(out.read_text())
    model = experiment.load_model(run)
    direct = experiment.evaluate(model, ENV, n_tasks=7, seed=3).summary()
    assert again["agent"]["episode_return_mean"] == pytest.approx(direct["episode_return_mean"])

    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    with captured_figures() as figures:
        assert main(["plot", str(run), "--out", str(plots)]) == 0
    written = {path.name for path in plots.glob("*.png")}
    assert {"learning_curves.png", "inner_episode_returns.png"} <= written == set(figures)
    assert all(path.stat().st_size > 1000 for path in plots.glob("*.png"))
    # The drawn data are the run's: the meta-test curve from evaluations.jsonl, references from
    # evaluation.json (per trial: the sum over inner episodes; per inner episode: the values).
    (curves,) = figures["learning_curves.png"].axes
    lines = {line.get_label(): line for line in curves.get_lines()}
    agent = next(line for label, line in lines.items() if label.startswith("rl2"))
    # the periodic meta-tests, then the final evaluation at its steps
    np.testing.assert_array_equal(agent.get_xdata(), [0, 120, 180])
    np.testing.assert_allclose(
        agent.get_ydata(),
        [*(r["trial_return_mean"] for r in evaluations), report["agent"]["trial_return_mean"]],
    )
    references = {name: summary["episode_return_mean"] for name, summary in report["references"].items()}
    references.update(report["exact"])
    assert set(references) <= set(lines)
    for name, values in references.items():
        np.testing.assert_allclose(lines[name].get_ydata(), sum(values))
    (per_episode,) = figures["inner_episode_returns.png"].axes
    lines = {line.get_label(): line for line in per_episode.get_lines()}
    (errorbar,) = [c for c in per_episode.containers if c.get_label().startswith("rl2")]  # the agent's
    agent = errorbar.lines[0]
    np.testing.assert_array_equal(agent.get_xdata(), [1, 2, 3, 4])
    np.testing.assert_allclose(agent.get_ydata(), report["agent"]["episode_return_mean"])
    for name, values in references.items():
        np.testing.assert_allclose(lines[name].get_ydata(), values)


class _Bar:
    """A stand-in for an active tqdm bar: records what is written above it."""

    def __init__(self) -> None:
        self.written: list[str] = []

    def write(self, line: str) -> None:
        self.written.append(line)

    def close(self) -> None:
        pass


@pytest.mark.parametrize("where", ["plain", "bar", "silent", "no reference"])
def test_each_meta_test_is_printed_with_the_percent_of_bayes_optimal(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    from types import SimpleNamespace

    from stable_baselines3.common.logger import Logger

    from bayes_agents.experiment import training
    from bayes_envs import references
    from bayes_envs.evaluation import EvaluationResult

    # A known reference (trial return 4 + 3 × 12 = 40) and known meta-test results.
    calls = []

    def exact_references(env_id: str, env_kwargs: dict) -> dict:
        calls.append(env_id)
        if where == "no reference":
            raise ValueError("unsupported env constants")
        return {"Bayes-optimal (exact)": [4.0, 12.0, 12.0, 12.0]}

    returns = {
        0: np.full((5, 4), 2.5),
        120: np.array([[1.0, 7.0, 8.0, 9.0]] * 4 + [[1.0, 7.0, 8.0, 9.0 + 5]]),
    }

    def meta_test(model, config, n_tasks, seed):
        result = returns[model.num_timesteps]
        return EvaluationResult(config["env_id"], "rl2", seed, result, np.zeros((5, 60)))

    monkeypatch.setattr(references, "exact_references", exact_references)
    monkeypatch.setattr(training, "meta_test", meta_test)
    controller = training.RunController(tmp_path, tiny_config(), {}, None, show_progress=where != "silent")
    if where == "bar":
        controller.bar = _Bar()
    controller.model = SimpleNamespace(logger=Logger(None, []), num_timesteps=0)
    capsys.readouterr()
    for steps in (0, 120):
        controller.model.num_timesteps = steps
        controller._evaluate(steps)
    assert len(calls) == 1  # the reference is computed once per run
    records = experiment.read_jsonl(tmp_path / experiment.EVALUATIONS_FILE)
    assert [record["timesteps"] for record in records] == [0, 120]
    ci = 1.959963984540054 * np.std([25, 25, 25, 25, 30], ddof=1) / np.sqrt(5)
    expected = [  # trial returns 4 × 2.5 and the mean of 25, 25, 25, 25, 30
        "meta-test @ 0 steps: trial return 10.00 ± 0.00 (95% CI, 5 tasks)",
        f"meta-test @ 120 steps: trial return 26.00 ± {ci:.2f} (95% CI, 5 tasks)",
    ]
    if where == "no reference":  # the % is left out
        assert all("percent_of_bayes_optimal" not in record for record in records)
    else:
        assert [record["percent_of_bayes_optimal"] for record in records] == pytest.approx([25.0, 65.0])
        expected[0] += ", 25.0% of Bayes-optimal (40.00)"
        expected[1] += ", 65.0% of Bayes-optimal (40.00)"
    out = capsys.readouterr().out
    if where == "bar":  # tqdm.write above the bar, nothing printed around it
        assert controller.bar.written == expected and out == ""
    elif where == "silent":  # --no-progress: nothing printed, the rows still written
        assert out == ""
    else:
        assert out.splitlines() == expected


class _CtrlCAt(BaseCallback):
    """Sends SIGINT to this process once ``at`` env steps are done (a user pressing Ctrl-C)."""

    def __init__(self, at: int) -> None:
        super().__init__()
        self.at, self.sent = at, False

    def _on_step(self) -> bool:
        if not self.sent and self.num_timesteps >= self.at:
            self.sent = True
            signal.raise_signal(signal.SIGINT)
        return True


def _state(model) -> dict[str, torch.Tensor]:
    state = {f"policy.{k}": v for k, v in model.policy.state_dict().items()}
    for group, values in model.policy.optimizer.state_dict()["state"].items():
        state |= {f"adam.{group}.{k}": torch.as_tensor(v) for k, v in values.items()}
    return state


def _metrics(run: Path) -> list[dict]:
    return [
        {k: v for k, v in record.items() if not k.startswith("time/")}
        for record in experiment.read_jsonl(run / "metrics.jsonl")
    ]


@pytest.mark.parametrize("method, stop", [("rl2", "ctrl-c"), ("laplace", "pause")])
def test_resume_gives_the_uninterrupted_run(tmp_path: Path, method: str, stop: str) -> None:
    config = tiny_config(method, timesteps=240)
    whole = experiment.train(config, tmp_path / "whole", show_progress=False)
    assert whole.finished and whole.num_timesteps == 240
    if stop == "ctrl-c":
        # Ctrl-C during the second update: it finishes, checkpoints at 120 steps and stops. The test may
        # start with SIGINT ignored (nohup, a background job): install Python's handler for the test,
        # then check that train() puts back whatever handler was installed before it.
        before = signal.signal(signal.SIGINT, signal.default_int_handler)
        try:
            installed = signal.getsignal(signal.SIGINT)
            first = experiment.train(
                config, tmp_path / "split", show_progress=False, callbacks=[_CtrlCAt(70)]
            )
            assert first.interrupted
            assert signal.getsignal(signal.SIGINT) is installed
        finally:
            signal.signal(signal.SIGINT, before)
    else:
        first = experiment.train(config, tmp_path / "split", show_progress=False, pause_at=100)
    assert not first.finished and first.num_timesteps == 120
    assert not (tmp_path / "split" / "model.zip").exists()
    resumed = experiment.train(config, tmp_path / "split", resume=True, show_progress=False)
    assert resumed.finished and resumed.num_timesteps == 240
    expected, actual = _state(whole.model), _state(resumed.model)
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
    # The logs continue as if nothing happened (same per-update values, no duplicated rows).
    assert _metrics(tmp_path / "whole") == _metrics(tmp_path / "split")
    assert experiment.read_jsonl(tmp_path / "whole" / "evaluations.jsonl") == experiment.read_jsonl(
        tmp_path / "split" / "evaluations.jsonl"
    )


def test_resume_with_another_config_or_without_checkpoint_fails(tmp_path: Path) -> None:
    run = tmp_path / "run"
    experiment.train(tiny_config(timesteps=60), run, show_progress=False)
    saved = re.escape(str(ppo_settings(ENV)["gamma"]))
    with pytest.raises(experiment.ConfigError, match=rf"ppo\.gamma: {saved} -> 0\.8"):
        experiment.train(tiny_config(timesteps=120, **{"ppo.gamma": "0.8"}), run, resume=True)
    with pytest.raises(experiment.RunDirectoryError, match=r"no checkpoint\.pt"):
        experiment.train(tiny_config(), tmp_path / "empty", resume=True)
    # a longer budget is a valid resume: training continues from the checkpoint
    longer = experiment.train(tiny_config(timesteps=120), run, resume=True, show_progress=False)
    assert longer.finished and longer.num_timesteps == 120


def test_cli_rejects_bad_input_with_the_valid_choices(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    def error(*argv: str) -> str:
        assert main(list(argv)) == 2
        return capsys.readouterr().err

    out = str(tmp_path / "never")
    message = error("train", "BayesGird-v0", "--out", out)
    assert (
        "unknown env_id 'BayesGird-v0'" in message
        and "BayesGrid-v0" in message
        and "BayesBandit-v0" in message
    )
    message = error("train", ENV, "--method", "rl3", "--out", out)
    assert "unknown method 'rl3'" in message and all(name in message for name in METHODS)
    message = error("train", ENV, "--set", "ppo.learnin_rate=1e-3", "--out", out)
    assert "ppo.learnin_rate" in message and "learning_rate" in message and "n_steps" in message
    message = error("train", ENV, "--set", "policy.windw=3", "--method", "laplace", "--out", out)
    assert "policy.windw" in message and "'window'" in message
    message = error("train", ENV, "--set", "timestep=10", "--out", out)
    assert "['timestep']" in message and "timesteps" in message
    message = error("train", ENV, "--set", "nonsense", "--out", out)
    assert "KEY=VALUE" in message
    assert not Path(out).exists()

    # An existing run is never overwritten without --force.
    run = tmp_path / "run"
    assert main(["train", ENV, "-t", "60", "--out", str(run), "--no-progress", "--no-eval", *set_args()]) == 0
    before = {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}
    message = error("train", ENV, "-t", "60", "--out", str(run), "--no-eval", *set_args("seed=1"))
    assert "exists" in message and "--force" in message
    assert {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()} == before
    capsys.readouterr()
    status = main(
        [
            "train",
            ENV,
            "-t",
            "60",
            "--out",
            str(run),
            "--force",
            "--no-progress",
            "--no-eval",
            *set_args("seed=1"),
        ]
    )
    assert status == 0 and json.loads((run / "config.json").read_text())["seed"] == 1


def test_yaml_config_file_and_value_parsing(tmp_path: Path) -> None:
    assert experiment.parse_value("1e-3") == 0.001
    assert experiment.parse_value("[64, 64]") == [64, 64]
    assert experiment.parse_value("true") is True
    assert experiment.parse_value("lstm") == "lstm"
    yaml = pytest.importorskip("yaml")
    path = tmp_path / "run.yaml"
    path.write_text(yaml.safe_dump({"env_id": ENV, "method": "laplace", "ppo": {"learning_rate": 3e-4}}))
    config = experiment.resolve_config(
        file_config=experiment.load_config_file(path),
        overrides=experiment.parse_overrides(["ppo.n_epochs=1"]),
    )
    assert config["method"] == "laplace" and config["ppo"]["learning_rate"] == 3e-4
    assert config["ppo"]["n_epochs"] == 1 and config["ppo"]["n_steps"] == 60  # file < --set < defaults kept
    # the written config.json is itself a valid config file giving the same config
    (tmp_path / "config.json").write_text(json.dumps(config))
    assert (
        experiment.resolve_config(file_config=experiment.load_config_file(tmp_path / "config.json")) == config
    )


@pytest.mark.parametrize("env_id", ["BayesGrid-v0", "BayesBandit-v0"])
def test_every_registered_method_has_valid_defaults(env_id: str) -> None:
    for name, method in METHODS.items():
        config = experiment.resolve_config(env_id, name)  # would raise on an unknown default key
        keys = experiment.valid_keys(env_id, name)
        assert set(method.policy_kwargs) <= set(keys["policy"])
        assert {"learning_rate", "n_steps", "gamma"} <= set(keys["ppo"])
        assert config["method"] == name and config["timesteps"] > 0


def test_checkpoint_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    target = tmp_path / "file.bin"
    experiment.atomic_write_bytes(target, b"old contents")

    def write_half_then_fail(stream) -> None:
        stream.write(b"partial")
        raise OSError("disk full")

    with pytest.raises(OSError, match="disk full"):
        experiment.atomic_write_bytes(target, write_half_then_fail)
    assert target.read_bytes() == b"old contents"
    assert sorted(path.name for path in tmp_path.iterdir()) == ["file.bin"]

    # A checkpoint that fails while being written leaves the previous checkpoint as it was.
    run = tmp_path / "run"
    result = experiment.train(tiny_config(timesteps=60), run, show_progress=False)
    checkpoint = run / "checkpoint.pt"
    before = checkpoint.read_bytes()

    def failing_fsync(fd: int) -> None:
        raise OSError("I/O error")

    monkeypatch.setattr(os, "fsync", failing_fsync)
    with pytest.raises(OSError, match="I/O error"):
        experiment.save_checkpoint(checkpoint, result.model, result.model and tiny_config(timesteps=60), {})
    monkeypatch.undo()
    assert checkpoint.read_bytes() == before
    assert not [path for path in run.iterdir() if path.name.endswith(".tmp")]
    payload = experiment.load_checkpoint(checkpoint)
    assert payload["num_timesteps"] == 60 and payload["venv"] is not None


def test_help_documents_every_option(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    subparsers = next(action for action in parser._actions if action.dest == "command").choices
    assert set(subparsers) == {"train", "evaluate", "plot", "sweep"}
    for name, subparser in subparsers.items():
        for action in subparser._actions:
            assert action.help, f"{name} {action.option_strings or action.dest} has no help"
    with pytest.raises(SystemExit):
        main(["train", "--help"])
    assert "policy.KEY" in capsys.readouterr().out
    assert os.environ.get("OMP_NUM_THREADS", "1")


def test_sweep_expands_validates_and_aggregates_with_rliable(tmp_path: Path) -> None:
    from bayes_agents import sweep

    spec_file = tmp_path / "sweep.json"
    spec_file.write_text(
        json.dumps(
            {
                "seeds": [0, 1],
                "base": {"env_id": ENV},
                "grid": {"method": ["rl2", "laplace"], "ppo.gamma": [0.9]},
            }
        )
    )
    spec = sweep.load_sweep(spec_file, out=str(tmp_path / "out"))
    jobs = sweep.expand(spec)
    assert [(job.config["method"], job.seed) for job in jobs] == [
        ("rl2", 0),
        ("rl2", 1),
        ("laplace", 0),
        ("laplace", 1),
    ]
    assert all(job.config["ppo"]["gamma"] == 0.9 for job in jobs)
    assert len({job.run_dir for job in jobs}) == 4
    # A bad key anywhere in the grid fails before anything runs.
    spec.grid["ppo.gama"] = [0.9]
    with pytest.raises(experiment.ConfigError, match=r"ppo\.gama"):
        sweep.expand(spec)

    pytest.importorskip("rliable")
    scores = {"a": [1.0, 2.0, 3.0, 4.0, 100.0], "b": [0.0, 0.0, 1.0, 1.0, 1.0]}
    outcomes = []
    for label, values in scores.items():
        for seed, value in enumerate(values):
            run_dir = tmp_path / label / str(seed)
            run_dir.mkdir(parents=True)
            report = {"config": {"env_id": ENV}, "agent": {"trial_return_mean": value}, "references": {}}
            (run_dir / "evaluation.json").write_text(json.dumps(report))
            outcomes.append(
                {"label": label, "env_id": ENV, "seed": seed, "run_dir": str(run_dir), "error": None}
            )
    table = sweep.aggregate(outcomes, "trial_return", reps=200)
    for label, values in scores.items():
        ordered = np.sort(values)
        # rliable's IQM is scipy's trim_mean(0.25): int(0.25 * 5) = 1 value cut at each end.
        iqm = np.mean(ordered[1:4])
        assert table[label]["iqm"] == pytest.approx(iqm)
        assert table[label]["mean"] == pytest.approx(np.mean(values))
        low, high = table[label]["iqm_ci"]
        assert min(values) <= low <= table[label]["iqm"] <= high <= max(values)


def test_sweep_over_envs_without_references_aggregates_each_env_on_its_own(tmp_path: Path) -> None:
    from bayes_agents import sweep

    pytest.importorskip("rliable")
    # Two envs without a best reference (as MuJoCo's): raw scores cannot be normalised across them.
    scores = {"HalfCheetahDir-v0": [1.0, 2.0, 3.0, 4.0], "HalfCheetahVel-v0": [-300.0, -200.0, -100.0, 0.0]}
    outcomes = []
    for env_id, values in scores.items():
        for seed, value in enumerate(values):
            run_dir = tmp_path / env_id / str(seed)
            run_dir.mkdir(parents=True)
            references = {"uniform random": {"trial_return_mean": -5.0}}
            report = {
                "config": {"env_id": env_id},
                "agent": {"trial_return_mean": value},
                "references": references,
            }
            (run_dir / "evaluation.json").write_text(json.dumps(report))
            outcomes.append(
                {"label": "rl2", "env_id": env_id, "seed": seed, "run_dir": str(run_dir), "error": None}
            )
    table = sweep.aggregate(outcomes, "trial_return", reps=200)
    assert sorted(table) == [f"rl2 @ {env_id}" for env_id in sorted(scores)]
    for env_id, values in scores.items():
        row = table[f"rl2 @ {env_id}"]
        assert row["envs"] == [env_id] and not row["normalised"] and row["n_runs"] == 4
        assert row["mean"] == pytest.approx(np.mean(values))
        assert row["iqm"] == pytest.approx(np.mean(np.sort(values)[1:3]))


def test_varibad_run_records_and_plots_the_per_cell_belief(tmp_path: Path) -> None:
    run = tmp_path / "varibad"
    varibad = [a for a in TINY if not a.startswith("policy.")] + [
        "policy.net_arch=[8]",
        "policy.hidden_size=16",
    ]
    args = [arg for assignment in varibad for arg in ("--set", assignment)]
    assert (
        main(["train", ENV, "--method", "varibad", "-t", "60", "--out", str(run), "--no-progress", *args])
        == 0
    )
    report = json.loads((run / "evaluation.json").read_text())
    cells = np.asarray(report["belief_cells"])
    assert cells.shape == (60, 5, 5)  # one 5×5 map per step of the 60-step trial
    # The maps are the decoder's probabilities at the posterior means of the first test trial.
    model = experiment.load_model(run)
    venv = bayes_envs.make_vec(ENV, 1, seed=report["config"]["eval_seed"], monitor=False)
    observation, state, start = venv.reset(), None, np.ones(1, bool)
    for step in range(60):
        action, state = model.predict(observation, state=state, episode_start=start, deterministic=True)
        mean = model.policy.last_belief_output.mean[0]
        with torch.no_grad():  # predict() may act under inference mode
            expected = model.policy.belief.reward_probabilities(mean).view(5, 5).numpy()
        np.testing.assert_allclose(cells[step], expected, rtol=1e-5, atol=1e-6)
        observation, _, _, _ = venv.step(action)
        start = np.zeros(1, bool)
    pytest.importorskip("matplotlib")
    plots = tmp_path / "plots"
    with captured_figures() as figures:
        assert main(["plot", str(run), "--out", str(plots)]) == 0
    assert (plots / "grid_belief.png").stat().st_size > 1000
    # Eight snapshots over the trial, each the recorded 5×5 map (x right, y up: the transpose).
    panels = figures["grid_belief.png"].axes
    steps = np.linspace(0, 59, 8).astype(int)
    assert [ax.get_title() for ax in panels] == [f"t = {step}" for step in steps]
    for ax, step in zip(panels, steps, strict=True):
        (image,) = ax.get_images()
        np.testing.assert_allclose(np.asarray(image.get_array()), cells[step].T)


def test_train_with_an_entropy_schedule_evaluates_and_logs_it(tmp_path: Path) -> None:
    """``ppo.ent_coef=lin_<v>``: the run trains, passes the model/config check of its final
    meta-test and logs the coefficient of each update (v × the budget left)."""
    run = tmp_path / "run"
    status = main(
        ["train", ENV, "--method", "rl2", "-t", "120", "--out", str(run), *set_args("ppo.ent_coef=lin_0.05")]
    )
    assert status == 0 and (run / "evaluation.json").is_file()
    metrics = experiment.read_jsonl(run / "metrics.jsonl")
    # SB3 writes an update's statistics with the next rollout's: the first update's, at half the budget.
    logged = [record["train/ent_coef"] for record in metrics if "train/ent_coef" in record]
    assert logged == pytest.approx([0.05 * 0.5])


def test_sampled_meta_tests_are_seeded_and_leave_the_training_streams_alone() -> None:
    """``eval_deterministic=false``: a meta-test samples actions from torch's generator seeded with the
    task seed. Two meta-tests agree with each other and with ``evaluate(deterministic=False)`` after
    ``torch.manual_seed(seed)``, differ from the most-likely-action meta-test, and the global generator
    is where it was before (a periodic meta-test does not change the training that follows)."""
    from bayes_agents.experiment.evaluation import meta_test
    from bayes_envs.evaluation import evaluate

    assert tiny_config()["eval_deterministic"] is True  # the grid's default
    config = tiny_config(eval_deterministic="false")
    assert config["eval_deterministic"] is False
    model = experiment.build_model(config)
    torch.manual_seed(123)
    before = torch.random.get_rng_state()
    first = meta_test(model, config, 21, 7)
    assert torch.equal(torch.random.get_rng_state(), before)
    second = meta_test(model, config, 21, 7)
    torch.manual_seed(7)
    reference = evaluate(model, ENV, n_tasks=21, seed=7, deterministic=False)
    for result in (first, second):
        np.testing.assert_array_equal(result.step_rewards, reference.step_rewards)
    greedy = meta_test(model, {**config, "eval_deterministic": True}, 21, 7)
    assert not np.array_equal(greedy.step_rewards, reference.step_rewards, equal_nan=True)
    with pytest.raises(experiment.ConfigError, match="eval_deterministic must be true or false"):
        tiny_config(eval_deterministic="1")
