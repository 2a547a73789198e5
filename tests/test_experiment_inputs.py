"""Bad input to ``bayes-rl``: one clear line naming the file or key, exit status 2, nothing written."""

from __future__ import annotations

import importlib.util
import json
import shutil
import warnings
from pathlib import Path

import pytest
import torch
from test_cli import ENV, TINY, set_args, tiny_config

from bayes_agents import experiment
from bayes_agents.cli import main


def _error(capsys: pytest.CaptureFixture[str], *argv: str) -> str:
    capsys.readouterr()
    try:
        status = main(list(argv))
    except SystemExit as stop:  # argparse's usage errors exit
        status = stop.code
    assert status == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    assert lines[0].startswith("bayes-rl ") and ": error: " in lines[0]
    return lines[0]


def _files(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}


@pytest.mark.parametrize(
    "assignment, expected",
    [
        ("ppo.learning_rate=abc", "ppo.learning_rate must be a finite number > 0"),
        ("ppo.learning_rate=lin_inf", "ppo.learning_rate"),
        ("env.size=two", "env.size='two'"),
        ("device=tpu", "device must be one of cpu, cuda"),
        ("ppo.n_steps=0", "ppo.n_steps must be an int >= 1, got 0"),
        ("ppo.batch_size=7.5", "ppo.batch_size must be an int >= 1, got 7.5"),
        ("ppo.gamma=1.5", "ppo.gamma must be a finite number in [0, 1], got 1.5"),
        ("ppo.ent_coef=inf", "ppo.ent_coef must be finite"),
        ("ppo.vf_coef=.nan", "ppo.vf_coef must be finite"),
        ("policy.hidden_size=-4", "hidden_size must be an int >= 1"),
        ("policy.activation_fn=banana", "policy.activation_fn must be one of"),
        ("seed=-1", "seed must be an int >= 0"),
    ],
)
def test_bad_values_fail_before_the_run_directory_is_touched(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], assignment: str, expected: str
) -> None:
    out = tmp_path / "never"
    message = _error(capsys, "train", ENV, "--out", str(out), "--no-progress", *set_args(assignment))
    assert expected in message, message
    assert not out.exists()


def test_bad_value_leaves_an_existing_run_as_it_was(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    experiment.train(tiny_config(timesteps=60), run, show_progress=False)
    before = _files(run)
    _error(capsys, "train", ENV, "--out", str(run), "--force", *set_args("ppo.batch_size=7.5"))
    _error(capsys, "train", ENV, "--out", str(run), "--force", *set_args("env.size=two"))
    assert _files(run) == before


def test_bad_threads_and_counts_are_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    message = _error(capsys, "train", ENV, "--out", "x", "--threads", "-3")
    assert "--threads: must be an int >= 1, got '-3'" in message
    message = _error(capsys, "evaluate", "somewhere", "--threads", "zero")
    assert "--threads" in message
    with pytest.raises(ValueError, match="threads must be an int >= 1"):
        experiment.set_torch_threads(0)


def test_activation_names_build_torch_modules(tmp_path: Path) -> None:
    for name, module in (("relu", torch.nn.ReLU), ("ReLU", torch.nn.ReLU), ("tanh", torch.nn.Tanh)):
        config = tiny_config(**{"policy.activation_fn": name})
        assert config["policy"]["activation_fn"] == name  # the config stays JSON
        assert experiment.policy_kwargs(config)["activation_fn"] is module
    result = experiment.train(tiny_config(timesteps=60, **{"policy.activation_fn": "ReLU"}), tmp_path / "r")
    assert result.finished
    assert any(isinstance(layer, torch.nn.ReLU) for layer in result.model.policy.modules())
    # the saved model matches its config (the name and the class compare equal)
    assert experiment.load_model(tmp_path / "r").policy_kwargs["activation_fn"] is torch.nn.ReLU


@pytest.mark.parametrize(
    "suffix, text, expected",
    [
        (".yaml", "env_id: BayesGrid-v0\nppo: {learning_rate: 3e-4\n", "is not valid YAML (line"),
        (".yml", "env_id: [BayesGrid-v0\n", "is not valid YAML"),
        (".json", '{"env_id": "BayesGrid-v0",}', "is not valid JSON (line 1"),
        (".json", "[1, 2]", "must hold a mapping"),
    ],
)
def test_malformed_config_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], suffix: str, text: str, expected: str
) -> None:
    path = tmp_path / f"run{suffix}"
    path.write_text(text)
    out = tmp_path / "never"
    message = _error(capsys, "train", "--config", str(path), "--out", str(out))
    assert expected in message and path.name in message
    assert not out.exists()


def test_partial_last_metrics_line_is_dropped_with_a_warning(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = tmp_path / "run"
    experiment.train(tiny_config(timesteps=180), run, show_progress=False, pause_at=100)
    metrics = run / experiment.METRICS_FILE
    intact = experiment.read_jsonl(metrics)
    with open(metrics, "a") as stream:
        stream.write('{"timesteps": 180, "rollout/ep_rew')  # killed mid-write
    with pytest.warns(experiment.RunFileWarning, match=r"metrics\.jsonl: dropped a partial last line"):
        assert experiment.read_jsonl(metrics) == intact
    # plot: the partial line is skipped with a warning
    capsys.readouterr()
    if importlib.util.find_spec("matplotlib") is not None:
        assert main(["plot", str(run), "--out", str(tmp_path / "plots")]) == 0
        assert "dropped a partial last line" in capsys.readouterr().err
        assert metrics.read_text().endswith('"rollout/ep_rew')  # plotting never rewrites run files
    # resume: the partial line is dropped (with a warning on one line) and the run continues
    argv = ["train", "--resume", "--out", str(run), "--no-progress", "--no-eval"]
    assert main(argv) == 0
    err = capsys.readouterr().err
    assert "warning:" in err and "dropped a partial last line" in err
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the rewritten file is clean
        records = experiment.read_jsonl(metrics)
    assert [record["timesteps"] for record in records] == [60, 120, 180]
    # a corrupt line in the middle is an error naming the file and the line
    lines = metrics.read_text().splitlines()
    metrics.write_text("\n".join([lines[0], "{oops", *lines[1:]]) + "\n")
    with pytest.raises(experiment.RunDirectoryError, match=r"metrics\.jsonl line 2 is corrupt"):
        experiment.read_jsonl(metrics)


def test_corrupt_config_json_names_the_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    experiment.train(tiny_config(timesteps=60), run, show_progress=False)
    (run / "config.json").write_text('{"env_id": "BayesGr')
    before = _files(run)
    message = _error(capsys, "evaluate", str(run))
    assert "config.json is corrupt" in message
    message = _error(capsys, "train", "--resume", "--out", str(run))
    assert "config.json is corrupt" in message
    assert _files(run) == before
    # a corrupt evaluation.json: plot names it
    if importlib.util.find_spec("matplotlib") is not None:
        experiment.train(tiny_config(timesteps=60), tmp_path / "other", show_progress=False)
        (tmp_path / "other" / "evaluation.json").write_text('{"agent": ')
        message = _error(capsys, "plot", str(tmp_path / "other"), "--out", str(tmp_path / "plots"))
        assert "evaluation.json is corrupt" in message


def test_evaluate_checks_the_model_against_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    small, wide = tmp_path / "small", tmp_path / "wide"
    experiment.train(tiny_config(timesteps=60), small, show_progress=False)
    experiment.train(tiny_config(timesteps=60, **{"policy.hidden_size": "24"}), wide, show_progress=False)
    shutil.copy(wide / "model.zip", small / "model.zip")
    before = _files(small)
    message = _error(capsys, "evaluate", str(small), "--no-references")
    assert "model.zip does not match" in message and "config.json" in message
    assert "policy.hidden_size: model 24, config 16" in message
    assert _files(small) == before
    # a model of another method
    laplace = tmp_path / "laplace"
    experiment.train(tiny_config("laplace", timesteps=60), laplace, show_progress=False)
    shutil.copy(laplace / "model.zip", small / "model.zip")
    assert "LaplacePolicy" in _error(capsys, "evaluate", str(small), "--no-references")
    # a truncated model.zip
    (small / "model.zip").write_bytes(b"PK\x03\x04 not a zip")
    assert "model.zip cannot be loaded" in _error(capsys, "evaluate", str(small))


def test_evaluate_out_never_overwrites_a_run_file(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    experiment.train(tiny_config(timesteps=60), run, show_progress=False)
    other = tmp_path / "other"
    shutil.copytree(run, other)
    before = _files(run)
    for target in (run / "model.zip", run / "config.json", run / "checkpoint.pt", other / "metrics.jsonl"):
        message = _error(capsys, "evaluate", str(run), "--no-references", "--out", str(target))
        assert "would overwrite a file of a run directory" in message
    assert _files(run) == before
    assert "is a directory" in _error(capsys, "evaluate", str(run), "--out", str(tmp_path))
    # the run's own evaluation.json and files elsewhere are fine
    assert (
        main(
            ["evaluate", str(run), "--no-references", "--n-tasks", "3", "--out", str(run / "evaluation.json")]
        )
        == 0
    )
    message = _error(capsys, "evaluate", str(run), "--n-tasks", "0")
    assert "n_tasks must be an int >= 1" in message


def test_help_warns_to_load_only_trusted_run_directories(capsys: pytest.CaptureFixture[str]) -> None:
    for command in ("train", "evaluate"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert (
            "unpickles Python objects" in text and "evaluate or load only run directories you trust" in text
        )


def test_sweep_says_why_there_is_no_plot_when_every_run_failed(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from bayes_agents import sweep

    def failing_train(*args, **kwargs):
        raise RuntimeError("no memory left")

    monkeypatch.setattr(sweep.experiment, "train", failing_train)
    spec = tmp_path / "sweep.json"
    base = {"env_id": ENV, **experiment.parse_overrides(TINY)}
    spec.write_text(json.dumps({"seeds": [0, 1], "base": base, "out": str(tmp_path / "out")}))
    assert main(["sweep", str(spec), "--executor", "local", "--workers", "1"]) == 1
    out = capsys.readouterr().out
    assert "no plot: all 2 runs failed; the first: RuntimeError: no memory left" in out
    assert "matplotlib" not in out
