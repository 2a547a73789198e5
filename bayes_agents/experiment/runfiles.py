"""The files of a run directory: names, atomic writes, JSON lines, the logger, and the directory's state.

A *run directory* holds everything about one (env, method, seed) training run:

* ``config.json`` — the fully resolved config (every default written out);
* ``checkpoint.pt`` — the latest checkpoint, replaced atomically (:mod:`.checkpoint`);
* ``model.zip`` — the final model, loadable with ``BayesPPO.load`` (SB3's pickle-based format:
  load only run directories you trust);
* ``metrics.jsonl`` — one JSON line per PPO update; ``evaluations.jsonl`` — the periodic meta-tests;
* ``tensorboard/`` — the same scalars as TensorBoard events, if ``tensorboard`` is installed;
* ``evaluation.json`` — the final meta-test with the environment's references.
"""

from __future__ import annotations

import contextlib
import importlib.metadata
import json
import os
import platform
import sys
import tempfile
import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pt"
#: The checkpoint of earlier versions (a pickle): never loaded; named in errors, removed by --force.
LEGACY_CHECKPOINT_FILE = "checkpoint.pkl"
MODEL_FILE = "model.zip"
METRICS_FILE = "metrics.jsonl"
EVALUATIONS_FILE = "evaluations.jsonl"
EVALUATION_FILE = "evaluation.json"
RUN_FILES = (
    CONFIG_FILE,
    CHECKPOINT_FILE,
    LEGACY_CHECKPOINT_FILE,
    MODEL_FILE,
    METRICS_FILE,
    EVALUATIONS_FILE,
    EVALUATION_FILE,
)
#: Files that ``evaluate --out`` may not replace (everything of the run but its own evaluation).
PROTECTED_FILES = tuple(name for name in RUN_FILES if name != EVALUATION_FILE)


class RunDirectoryError(RuntimeError):
    """The run directory is not in the state the command needs (exists, missing, corrupt file)."""


class RunFileWarning(UserWarning):
    """A run file was repaired on reading (e.g. a partial last line of a JSON-lines file dropped)."""


#: Packages whose versions a run records: its numbers depend on their numerics and random streams (a
#: seed's result need not carry over to other versions, or to a CPU with other kernels).
RECORDED_PACKAGES = ("torch", "numpy", "gymnasium", "stable_baselines3", "sb3_contrib", "mujoco", "metaworld")


def software_environment() -> dict[str, Any]:
    """The Python, package versions (None when not installed), torch's CPU kernel level
    (``torch.backends.cpu.get_cpu_capability()``, e.g. ``"AVX512"``) and machine that produced a
    result; ``evaluation.json`` and the benchmarks' result files record it."""
    versions: dict[str, str | None] = {}
    for package in RECORDED_PACKAGES:
        try:
            versions[package] = importlib.metadata.version(package)
        except importlib.metadata.PackageNotFoundError:
            versions[package] = None
    return {
        "python": platform.python_version(),
        "packages": versions,
        "torch_cpu_capability": torch.backends.cpu.get_cpu_capability(),
        "machine": platform.machine(),
    }


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()
_TEMPORARY_SUFFIX = ".tmp"


# ------------------------------------------------------------------------------------------ writing
def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | Callable[[Any], None]) -> None:
    """Write ``path`` atomically: to a temporary file in the same directory, fsync, then ``os.replace``.

    Readers see the old file or the complete new one, never a partial file; if writing fails the
    temporary file is removed and the old file is untouched. A process killed mid-write leaves a
    ``.NAME.*.tmp`` file, which :func:`remove_stale_temporaries` deletes on the next start.

    :param data: the bytes, or a function that writes them to the open binary file.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=_TEMPORARY_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(handle, "wb") as stream:
            if callable(data):
                data(stream)
            else:
                stream.write(data)
            stream.flush()
            os.fsync(stream.fileno())
        os.chmod(temporary, _FILE_MODE)  # mkstemp makes it private; run files are ordinary files
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise


def atomic_write_text(path: str | os.PathLike[str], text: str) -> None:
    """:func:`atomic_write_bytes` of ``text`` (UTF-8)."""
    atomic_write_bytes(path, text.encode())


def stale_temporaries(run_dir: Path) -> list[Path]:
    """Temporary files of atomic writes that never finished (the writing process was killed)."""
    if not run_dir.is_dir():
        return []
    prefixes = tuple(f".{name}." for name in RUN_FILES)
    return sorted(
        path
        for path in run_dir.iterdir()
        if path.is_file() and path.name.startswith(prefixes) and path.name.endswith(_TEMPORARY_SUFFIX)
    )


def remove_stale_temporaries(run_dir: Path) -> list[Path]:
    """Delete the :func:`stale_temporaries` of ``run_dir``; returns them."""
    removed = stale_temporaries(run_dir)
    for path in removed:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
    return removed


def error_summary(error: BaseException) -> str:
    """The first line of ``error``'s message (its type name if it has none), for one-line errors."""
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


# ------------------------------------------------------------------------------------------ reading
def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The resolved config of a run directory (``RunDirectoryError`` naming the file if unreadable)."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_FILE})")
    config = read_json(path, remedy="restore it, or start the run afresh with --force")
    if not isinstance(config, dict) or not {"env_id", "method", "env", "ppo", "policy"} <= set(config):
        raise RunDirectoryError(
            f"{path} is not a config written by bayes-rl train; start afresh with --force"
        )
    return config


def read_json(
    path: str | os.PathLike[str],
    remedy: str = "delete it and write it again (e.g. bayes-rl evaluate RUN_DIR)",
) -> Any:
    """A JSON run file (e.g. ``evaluation.json``); ``RunDirectoryError`` naming it (and ``remedy``) if
    it cannot be read or is corrupt."""
    path = Path(path)
    try:
        return json.loads(path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as error:
        raise RunDirectoryError(f"{path} is corrupt ({error}); {remedy}") from error


def _parse_jsonl(path: Path) -> tuple[list[dict[str, Any]], bool]:
    """The records of a JSON-lines file and whether a partial last line was dropped."""
    lines = path.read_text(errors="replace").splitlines()
    records, dropped = [], False
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            if not isinstance(record, dict):
                raise ValueError("not a JSON object")
        except ValueError as error:
            if number == len(lines):  # a write cut short (killed process, full disk): drop it
                dropped = True
                continue
            raise RunDirectoryError(
                f"{path} line {number} is corrupt ({error}); delete that line to use the run"
            ) from error
        records.append(record)
    return records, dropped


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] if it does not exist).

    A partial last line (a write cut short) is dropped with a :class:`RunFileWarning`; a corrupt
    line before it raises ``RunDirectoryError`` naming the file and the line.
    """
    path = Path(path)
    if not path.is_file():
        return []
    records, dropped = _parse_jsonl(path)
    if dropped:
        warnings.warn(
            f"{path}: dropped a partial last line (an interrupted write)", RunFileWarning, stacklevel=2
        )
    return records


def truncate_jsonl(path: Path, key: str, last_step: int) -> None:
    """Drop records after ``last_step`` (a resumed run writes them again) and a partial last line."""
    if not path.is_file():
        return
    records = [record for record in read_jsonl(path) if record.get(key, 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


# ------------------------------------------------------------------------------------------ logging
class JsonLinesWriter(KVWriter):
    """An SB3 logger output that appends one JSON line ``{"timesteps": step, key: value, ...}`` per dump."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)

    def write(self, key_values: dict[str, Any], key_excluded: dict[str, Any], step: int = 0) -> None:
        record: dict[str, Any] = {"timesteps": int(step)}
        for key, value in sorted(key_values.items()):
            if isinstance(value, (bool, str)) or value is None:
                continue
            with contextlib.suppress(TypeError, ValueError):
                record[key] = float(value)
        with open(self.path, "a") as stream:
            stream.write(json.dumps(record) + "\n")

    def close(self) -> None:
        pass


def _tensorboard_output(folder: Path, purge_step: int | None) -> KVWriter | None:
    """A TensorBoard output if ``tensorboard`` is installed (events past ``purge_step`` are dropped)."""
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        return None
    # SB3's output with our own writer: a resumed run purges the events logged after its checkpoint.
    output = TensorBoardOutputFormat.__new__(TensorBoardOutputFormat)
    output.writer = SummaryWriter(log_dir=str(folder), purge_step=purge_step)
    output._is_closed = False
    return output


def make_logger(run_dir: Path, verbose: bool, resume_step: int | None) -> Logger:
    """SB3 logger writing ``metrics.jsonl``, TensorBoard events if available, and stdout if ``verbose``."""
    from stable_baselines3.common.logger import HumanOutputFormat

    outputs: list[KVWriter] = [JsonLinesWriter(run_dir / METRICS_FILE)]
    tensorboard = _tensorboard_output(run_dir / "tensorboard", resume_step)
    if tensorboard is not None:
        outputs.append(tensorboard)
    if verbose:
        outputs.append(HumanOutputFormat(sys.stdout))
    return Logger(str(run_dir), outputs)


# ------------------------------------------------------------------------------------------ run directory
def check_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Check (without changing anything) that ``run_dir`` suits a fresh run or a resume."""
    if resume and force:
        raise RunDirectoryError("--resume and --force exclude each other (--force starts the run afresh)")
    if run_dir.exists() and not run_dir.is_dir():
        raise RunDirectoryError(f"{str(run_dir)!r} is a file, not a run directory; choose another --out")
    if resume:
        if not (run_dir / CHECKPOINT_FILE).is_file():
            if (run_dir / LEGACY_CHECKPOINT_FILE).is_file():
                raise RunDirectoryError(
                    f"cannot resume: {str(run_dir)!r} has only a {LEGACY_CHECKPOINT_FILE} "
                    "of an earlier version, "
                    "a pickle that is not loaded because unpickling can run code; start afresh with --force"
                )
            raise RunDirectoryError(f"cannot resume: {str(run_dir)!r} has no {CHECKPOINT_FILE}")
        return
    stale = set(stale_temporaries(run_dir))
    if run_dir.exists() and any(path not in stale for path in run_dir.iterdir()) and not force:
        raise RunDirectoryError(
            f"run directory {str(run_dir)!r} exists and is not empty; use --resume to continue it "
            "or --force to overwrite it"
        )


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Check, then create or clear the run directory (only the run's own files, and only with ``force``).

    Also removes the temporary files of an atomic write that a killed process left behind.
    """
    check_run_dir(run_dir, resume, force)
    if not resume and force and run_dir.is_dir():
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        tensorboard = run_dir / "tensorboard"
        if tensorboard.is_dir():
            for event_file in tensorboard.iterdir():
                event_file.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)
    remove_stale_temporaries(run_dir)
