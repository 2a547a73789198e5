"""Checkpoints load without executing code; corrupt, foreign and stale checkpoint files fail cleanly."""

from __future__ import annotations

import collections
import io
import json
import pickle
import signal
from pathlib import Path

import numpy as np
import pytest
import torch
from test_cli import ENV, TINY, set_args, tiny_config

from bayes_agents import experiment
from bayes_agents.cli import main
from bayes_agents.experiment.state import encode, restore

MARKER = "executed.txt"


class _Payload:
    """Unpickling this object writes a file: what a malicious checkpoint would do."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def __reduce__(self):
        return (Path.write_text, (self.path, "code ran"))


def _run(tmp_path: Path, timesteps: int = 60, pause_at: int | None = None) -> Path:
    run = tmp_path / "run"
    experiment.train(tiny_config(timesteps=timesteps), run, show_progress=False, pause_at=pause_at)
    return run


def _files(run: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in run.iterdir() if path.is_file()}


def test_checkpoint_is_plain_data_loadable_with_weights_only(tmp_path: Path) -> None:
    run = _run(tmp_path)
    checkpoint = run / experiment.CHECKPOINT_FILE
    assert checkpoint.name == "checkpoint.pt" and not (run / "checkpoint.pkl").exists()
    payload = torch.load(checkpoint, weights_only=True)  # raises on any pickled object
    assert payload["format"] == experiment.CHECKPOINT_FORMAT
    assert json.loads(payload["config"])["env_id"] == ENV
    assert payload["venv"] is not None  # the grid's state is plain data: exact resume


def test_plain_data_round_trip_keeps_types_and_generators() -> None:
    generator = np.random.default_rng(3)
    generator.random(5)
    value = {
        "array": np.arange(6, dtype=np.int16).reshape(2, 3),
        "scalar": np.float32(1.5),
        "deque": collections.deque([1.0, 2.0], maxlen=4),
        "tuple": (1, "a", None),
        "generator": generator,
        "tensor": torch.ones(2),
        3: [True, 2.5],
    }
    stream = io.BytesIO()
    torch.save(encode(value), stream)
    stream.seek(0)
    back = restore(torch.load(stream, weights_only=True))
    assert back["array"].dtype == np.int16 and np.array_equal(back["array"], value["array"])
    assert type(back["scalar"]) is np.float32 and back["scalar"] == 1.5
    assert back["deque"] == value["deque"] and back["deque"].maxlen == 4
    assert back["tuple"] == (1, "a", None) and back[3] == [True, 2.5]
    assert torch.equal(back["tensor"], value["tensor"])
    assert back["generator"].random() == generator.random()


def test_a_pickled_checkpoint_is_refused_without_running_code(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    run = _run(tmp_path)
    marker = tmp_path / MARKER
    with open(run / experiment.CHECKPOINT_FILE, "wb") as stream:
        pickle.dump({"format": experiment.CHECKPOINT_FORMAT, "x": _Payload(marker)}, stream)
    with pytest.raises(experiment.RunDirectoryError, match=r"checkpoint\.pt is truncated or corrupt"):
        experiment.load_checkpoint(run / experiment.CHECKPOINT_FILE)
    # the same through torch.save: the weights-only unpickler refuses the object
    torch.save({"x": _Payload(marker)}, run / experiment.CHECKPOINT_FILE)
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--no-eval"]) == 2
    assert not marker.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "checkpoint.pt" in err[0] and "--force" in err[0]


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
def test_corrupt_checkpoint_is_one_line_exit_2_nothing_written(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], damage: str
) -> None:
    run = _run(tmp_path)
    (run / "model.zip").unlink()  # evaluate then needs the checkpoint
    checkpoint = run / experiment.CHECKPOINT_FILE
    data = checkpoint.read_bytes()
    checkpoint.write_bytes(
        {"truncated": data[: len(data) // 2], "garbage": b"\x00junk" * 50, "empty": b""}[damage]
    )
    before = _files(run)
    capsys.readouterr()
    for argv in (
        ["train", "--resume", "--out", str(run), "--timesteps", "120", "--no-progress", "--no-eval"],
        ["evaluate", str(run)],
    ):
        assert main(argv) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1, err
        assert "checkpoint.pt is truncated or corrupt" in err[0] and "--force" in err[0]
    assert _files(run) == before


def test_old_pickle_checkpoint_is_not_loaded(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = _run(tmp_path)
    (run / experiment.CHECKPOINT_FILE).rename(run / "checkpoint.pkl")
    assert main(["train", "--resume", "--out", str(run), "--no-progress", "--no-eval"]) == 2
    err = capsys.readouterr().err
    assert "checkpoint.pkl" in err and "--force" in err


def test_resume_below_the_steps_done_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    run = tmp_path / "run"
    assert (
        main(["train", ENV, "-t", "120", "--out", str(run), "--no-progress", "--no-eval", *set_args()]) == 0
    )
    before = _files(run)
    capsys.readouterr()
    assert main(["train", "--resume", "--out", str(run), "--timesteps", "60", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "already done 120 steps" in err and "--timesteps >= 120" in err
    assert _files(run) == before
    assert json.loads((run / "config.json").read_text())["timesteps"] == 120


def test_stale_temporary_of_a_killed_write_is_removed_on_the_next_start(tmp_path: Path) -> None:
    run = _run(tmp_path, timesteps=120, pause_at=60)
    stale = run / ".checkpoint.pt.k1ll3d.tmp"
    stale.write_bytes(b"half a checkpoint")
    assert experiment.stale_temporaries(run) == [stale]
    result = experiment.train(tiny_config(timesteps=120), run, resume=True, show_progress=False)
    assert result.finished and not stale.exists()
    # a directory holding only such a leftover counts as empty for a fresh run
    fresh = tmp_path / "fresh"
    fresh.mkdir()
    (fresh / ".config.json.x.tmp").write_text("{")
    experiment.train(tiny_config(timesteps=60), fresh, show_progress=False)
    assert not experiment.stale_temporaries(fresh) and (fresh / "model.zip").is_file()


def test_interrupt_restores_the_handler_installed_before(tmp_path: Path) -> None:
    """Under nohup SIGINT starts ignored: train() must put SIG_IGN back, not Python's default handler."""
    before = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        experiment.train(tiny_config(timesteps=60), tmp_path / "run", show_progress=False)
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, before)


@pytest.mark.parametrize(
    "method, cheap",
    [
        # 60-step updates: the first one completes trials, so the VAE trains from its buffer after resuming
        (
            "varibad",
            [
                "policy.vae_updates_per_ppo_update=2",
                "policy.vae_batch_trials=4",
                "ppo.n_steps=60",
                "n_envs=2",
            ],
        ),
        ("glibrl", ["policy.basis_updates_per_ppo_update=2"]),
    ],
)
def test_resume_is_exact_for_beliefs_with_their_own_model(
    tmp_path: Path, method: str, cheap: list[str]
) -> None:
    """VariBAD/GLiBRL keep a trial buffer and an optimizer of their own outside the state dicts:
    the checkpoint holds them too, so a paused run resumes bit for bit."""
    keys = experiment.valid_keys(ENV, method)["policy"]
    assignments = [a for a in TINY if not a.startswith("policy.") or a.split("=")[0][7:] in keys]
    overrides = experiment.parse_overrides([*assignments, *cheap, "eval_every=0"])
    config = experiment.resolve_config(ENV, method, overrides=overrides)
    update = config["ppo"]["n_steps"] * config["n_envs"]
    config["timesteps"] = 2 * update  # pause after the first update, resume for the second
    whole = experiment.train(config, tmp_path / "whole", show_progress=False)
    experiment.train(config, tmp_path / "split", show_progress=False, pause_at=update)
    resumed = experiment.train(config, tmp_path / "split", resume=True, show_progress=False)
    expected, actual = whole.model.policy.state_dict(), resumed.model.policy.state_dict()
    assert expected.keys() == actual.keys()
    for key in expected:
        assert torch.equal(expected[key], actual[key]), key
