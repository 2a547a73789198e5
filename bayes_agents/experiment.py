"""Experiment runs of the ``bayes-rl`` CLI: resolved configs, resumable training, meta-test evaluation.

A *run directory* holds everything about one (env, method, seed) training run:

* ``config.json`` — the fully resolved config (every default written out; :func:`resolve_config`);
* ``checkpoint.pkl`` — the latest checkpoint, replaced atomically (:func:`atomic_write_bytes`);
* ``model.zip`` — the final model, loadable with ``BayesPPO.load`` (written when training ends);
* ``metrics.jsonl`` — one JSON line per PPO update: SB3's ``rollout/``/``train/`` values, the return
  of each inner episode (``rollout/inner_return_<k>``), the belief statistics (``belief/``) and
  the periodic meta-test (``eval/``); ``evaluations.jsonl`` — the periodic meta-test summaries;
* ``tensorboard/`` — the same scalars as TensorBoard events, if ``tensorboard`` is installed;
* ``evaluation.json`` — the final meta-test with the environment's references (:func:`evaluate_run`).

**Exact resume.** Checkpoints are taken at PPO-update boundaries (just before a rollout starts),
where the rollout buffer is empty. A checkpoint holds the model (parameters, optimizer, step
counter, last observation and episode starts), the recurrent state of the envs' current
trials, the whole vectorised env (its per-env generators and trial states, pickled) and the
python / numpy / torch random states. Training that resumes from it therefore makes exactly the
same updates as a run that was never interrupted (tested: equal parameters bit for bit on CPU).
Ctrl-C finishes the current update, writes a checkpoint and stops; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import io
import json
import os
import pickle
import random
import signal
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
import torch
from gymnasium.envs.registration import load_env_creator
from stable_baselines3.common.callbacks import BaseCallback, CallbackList
from stable_baselines3.common.logger import KVWriter, Logger, TensorBoardOutputFormat

import bayes_envs
from bayes_agents.defaults import run_settings
from bayes_agents.methods import get_method, method_defaults, method_names
from bayes_agents.policies import BeliefPolicy
from bayes_agents.ppo import BayesPPO
from bayes_envs.evaluation import EvaluationResult, evaluate

CONFIG_FILE = "config.json"
CHECKPOINT_FILE = "checkpoint.pkl"
MODEL_FILE = "model.zip"
METRICS_FILE = "metrics.jsonl"
EVALUATIONS_FILE = "evaluations.jsonl"
EVALUATION_FILE = "evaluation.json"
CHECKPOINT_FORMAT = 1
RUN_FILES = (CONFIG_FILE, CHECKPOINT_FILE, MODEL_FILE, METRICS_FILE, EVALUATIONS_FILE, EVALUATION_FILE)

#: Run-level keys of a config and their meaning (the ``--set`` names; ``env.``, ``ppo.`` and
#: ``policy.`` keys are listed by :func:`valid_keys`).
RUN_KEYS: dict[str, str] = {
    "env_id": "registered environment id",
    "method": "belief method (bayes_agents.methods)",
    "seed": "seed of the model and of the training envs (env i: seed + i)",
    "timesteps": "total env steps to train",
    "n_envs": "parallel training envs",
    "device": "torch device (cpu, cuda, auto)",
    "checkpoint_every": "env steps between checkpoints (taken at the next PPO-update boundary)",
    "eval_every": "env steps between meta-test evaluations during training (0: none)",
    "eval_tasks": "test tasks of each periodic evaluation",
    "final_eval_tasks": "test tasks of the final evaluation (bayes-rl evaluate)",
    "eval_seed": "seed of the fixed test tasks (task i: an env seeded eval_seed + i)",
}
SECTIONS = ("env", "ppo", "policy")
#: Keys that may differ between a checkpoint's config and the config of a ``--resume``.
RESUMABLE_CHANGES = frozenset({"timesteps", "device", "checkpoint_every"})
#: BayesPPO constructor arguments that the run itself sets (not ``ppo.`` keys).
_PPO_RESERVED = frozenset(
    {"policy", "env", "policy_kwargs", "seed", "device", "verbose", "tensorboard_log", "_init_setup_model"}
)
#: BeliefPolicy constructor arguments that SB3 passes itself, or that the belief policies fix.
_POLICY_RESERVED = frozenset(
    {
        "observation_space",
        "action_space",
        "lr_schedule",
        "use_sde",
        "share_features_extractor",
        "features_extractor_class",
        "features_extractor_kwargs",
        "belief_kwargs",
        "input_dim",
        "input_layout",
    }
)
_ENV_RESERVED = frozenset({"self", "render_mode", "rl2_inputs", "batch_size"})


def _file_mode() -> int:
    umask = os.umask(0)
    os.umask(umask)
    return 0o666 & ~umask


_FILE_MODE = _file_mode()


class ConfigError(ValueError):
    """A config that cannot be run: unknown env, method or key, or a resume that does not match."""


class RunDirectoryError(RuntimeError):
    """The run directory is not in the state the command needs (exists, missing, no checkpoint)."""


# ------------------------------------------------------------------------------------------ config
def bayes_env_ids() -> list[str]:
    """The environment ids registered by :mod:`bayes_envs` (and packages that extend it), sorted."""
    ids = []
    for env_id, spec in gym.registry.items():
        entry = spec.entry_point
        module = entry.split(":", 1)[0] if isinstance(entry, str) else getattr(entry, "__module__", "")
        if module.startswith("bayes_envs"):
            ids.append(env_id)
    return sorted(ids)


def check_env_id(env_id: Any) -> str:
    """``env_id`` if gymnasium knows it, else ``ConfigError`` listing the bayes_envs ids."""
    if not isinstance(env_id, str) or not env_id:
        raise ConfigError(f"env_id must be a non-empty string, got {env_id!r}")
    if ":" in env_id:
        with contextlib.suppress(ImportError):
            __import__(env_id.split(":", 1)[0])
    try:
        gym.spec(env_id.split(":", 1)[-1])
    except gym.error.Error as error:
        raise ConfigError(f"unknown env_id {env_id!r}; choose one of {bayes_env_ids()}") from error
    return env_id


def check_method(method: Any) -> str:
    """``method`` if registered in :mod:`bayes_agents.methods`, else ``ConfigError`` listing them."""
    try:
        get_method(method)
    except (ValueError, TypeError) as error:
        raise ConfigError(f"unknown method {method!r}; choose one of {method_names()}") from error
    return method


def _parameters(function: Callable[..., Any], reserved: frozenset[str]) -> tuple[set[str], bool]:
    """Named parameters of ``function`` minus ``reserved``, and whether it takes ``**kwargs``."""
    names, var_keyword = set(), False
    for parameter in inspect.signature(function).parameters.values():
        if parameter.kind is inspect.Parameter.VAR_KEYWORD:
            var_keyword = True
        elif parameter.kind is not inspect.Parameter.VAR_POSITIONAL and parameter.name not in reserved:
            names.add(parameter.name)
    return names - {"self"}, var_keyword


def _env_parameters(env_id: str) -> tuple[set[str], bool]:
    spec = gym.spec(env_id.split(":", 1)[-1])
    entry = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    batch_class = getattr(entry, "batch_class", None)
    names, open_ended = _parameters(entry.__init__ if isinstance(entry, type) else entry, _ENV_RESERVED)
    if batch_class is not None:
        batch_names, _ = _parameters(batch_class.__init__, _ENV_RESERVED)
        names |= batch_names
    return names, open_ended and not names


def valid_keys(env_id: str, method: str) -> dict[str, list[str]]:
    """Every key a config of (``env_id``, ``method``) may set: ``{"run": [...], "env": [...], ...}``.

    ``ppo`` keys are ``BayesPPO`` constructor arguments, ``policy`` keys those of the method's
    policy and belief classes, ``env`` keys the environment's constants. An env whose constructor
    only takes ``**kwargs`` accepts any ``env.`` key (listed as ``["*"]``).
    """
    policy_class = get_method(method).policy_class
    ppo, _ = _parameters(BayesPPO.__init__, _PPO_RESERVED)
    policy, _ = _parameters(BeliefPolicy.__init__, _POLICY_RESERVED)
    if policy_class.__init__ is not BeliefPolicy.__init__:
        policy |= _parameters(policy_class.__init__, _POLICY_RESERVED)[0]
    belief_class = getattr(policy_class, "belief_class", None)
    if belief_class is not None:
        policy |= _parameters(belief_class.__init__, _POLICY_RESERVED)[0]
    env, open_ended = _env_parameters(env_id)
    return {
        "run": sorted(RUN_KEYS),
        "env": ["*"] if open_ended else sorted(env),
        "ppo": sorted(ppo),
        "policy": sorted(policy),
    }


def parse_value(text: str) -> Any:
    """A ``--set`` value: YAML/JSON syntax (``3``, ``1e-3``, ``[64, 64]``, ``true``), else the string."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError:
        try:
            import yaml

            value = yaml.safe_load(text)
        except Exception:  # anything unparsable is a plain string
            value = text
    if isinstance(value, str):
        # YAML 1.1 reads "1e-3" as a string; numbers win.
        for cast in (int, float):
            try:
                return cast(value)
            except ValueError:
                pass
    return value


def parse_overrides(assignments: list[str]) -> dict[str, Any]:
    """``["ppo.learning_rate=3e-4", "seed=1"]`` → a nested override dict; ``ConfigError`` if malformed."""
    overrides: dict[str, Any] = {}
    for assignment in assignments:
        key, separator, text = assignment.partition("=")
        key = key.strip()
        if not separator or not key:
            raise ConfigError(f"--set expects KEY=VALUE (e.g. ppo.learning_rate=3e-4), got {assignment!r}")
        section, dot, name = key.partition(".")
        if dot:
            overrides.setdefault(section, {})
            if not isinstance(overrides[section], dict):
                raise ConfigError(f"--set {key}: {section!r} was already set to a value")
            overrides[section][name] = parse_value(text)
        else:
            overrides[key] = parse_value(text)
    return overrides


def load_config_file(path: str | os.PathLike[str]) -> dict[str, Any]:
    """A config file: ``.json``, or ``.yaml``/``.yml`` (needs PyYAML: ``pip install bayes-meta-rl[cli]``)."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    text = path.read_text()
    if path.suffix.lower() == ".json":
        data = json.loads(text)
    else:
        try:
            import yaml
        except ImportError as error:
            raise ConfigError(
                f"reading {path.name} needs PyYAML (pip install 'bayes-meta-rl[cli]'), or give a .json file"
            ) from error
        data = yaml.safe_load(text)
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping, got {type(data).__name__}")
    return data


def _merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def _jsonable(value: Any) -> Any:
    """Tuples → lists, numpy scalars → Python: the config as it reads back from JSON."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


def check_keys(config: dict[str, Any]) -> None:
    """``ConfigError`` naming each key unknown to the config's (env, method), listing the valid ones."""
    keys = valid_keys(config["env_id"], config["method"])
    unknown_run = sorted(set(config) - set(RUN_KEYS) - set(SECTIONS))
    if unknown_run:
        raise ConfigError(
            f"unknown config key(s) {unknown_run}; valid keys: {keys['run']} and the sections "
            f"{list(SECTIONS)} (env.KEY, ppo.KEY, policy.KEY)"
        )
    for section in SECTIONS:
        values = config.get(section, {})
        if not isinstance(values, dict):
            raise ConfigError(f"config section {section!r} must be a mapping, got {values!r}")
        if keys[section] == ["*"]:
            continue
        unknown = sorted(set(values) - set(keys[section]))
        if unknown:
            raise ConfigError(
                f"unknown {section} key(s) {[f'{section}.{k}' for k in unknown]} for "
                f"{config['env_id']} / {config['method']}; valid {section} keys: {keys[section]}"
            )


def resolve_config(
    env_id: str | None = None,
    method: str | None = None,
    *,
    file_config: dict[str, Any] | None = None,
    overrides: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The fully resolved config of a run: defaults ← config file ← overrides (later wins).

    :param env_id, method: from the command line (``None``: taken from the file/overrides;
        the method defaults to ``"rl2"``).
    :param file_config: a loaded config file (:func:`load_config_file`).
    :param overrides: nested overrides (:func:`parse_overrides`, and the CLI's flags).
    :return: a JSON-ready dict with every run key and the ``env``, ``ppo``, ``policy`` sections.
    :raises ConfigError: unknown env, method or key (the message lists the valid ones).
    """
    layered = _merge(file_config or {}, overrides or {})
    env_id = check_env_id(env_id or layered.get("env_id"))
    method = check_method(method or layered.get("method", "rl2"))
    run = run_settings(env_id)
    defaults = method_defaults(env_id, method)
    base: dict[str, Any] = {
        "env_id": env_id,
        "method": method,
        "seed": 0,
        "timesteps": run["timesteps"],
        "n_envs": run["n_envs"],
        "device": "cpu",
        "checkpoint_every": 50_000,
        "eval_every": None,
        "eval_tasks": run["eval_tasks"],
        "final_eval_tasks": run["final_eval_tasks"],
        "eval_seed": 10_000,
        "env": {},
        "ppo": defaults["ppo"],
        "policy": defaults["policy"],
    }
    config = _merge(base, layered)
    config["env_id"], config["method"] = env_id, method
    check_keys(config)
    if config["eval_every"] is None:
        config["eval_every"] = max(1, int(config["timesteps"]) // 10)
    for key in ("seed", "eval_every", "eval_seed"):
        _check_int(config, key, 0)
    for key in ("timesteps", "n_envs", "checkpoint_every", "eval_tasks", "final_eval_tasks"):
        _check_int(config, key, 1)
    return _jsonable(config)


def _check_int(config: dict[str, Any], key: str, minimum: int) -> None:
    value = config[key]
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{key} must be an int >= {minimum}, got {value!r}")


def config_differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (ignoring resumable changes)."""
    differences = []
    for key in sorted(set(saved) | set(requested)):
        if key in RESUMABLE_CHANGES:
            continue
        old, new = saved.get(key), requested.get(key)
        if key in SECTIONS and isinstance(old, dict) and isinstance(new, dict):
            differences += [
                f"{key}.{name}: {old.get(name)!r} -> {new.get(name)!r}"
                for name in sorted(set(old) | set(new))
                if old.get(name) != new.get(name)
            ]
        elif old != new:
            differences.append(f"{key}: {old!r} -> {new!r}")
    return differences


# ------------------------------------------------------------------------------------------ files
def atomic_write_bytes(path: str | os.PathLike[str], data: bytes | Callable[[Any], None]) -> None:
    """Write ``path`` atomically: to a temporary file in the same directory, fsync, then ``os.replace``.

    Readers see the old file or the complete new one, never a partial file; if writing fails the
    temporary file is removed and the old file is untouched.

    :param data: the bytes, or a function that writes them to the open binary file.
    """
    path = Path(path)
    handle, temporary = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
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
    atomic_write_bytes(path, text.encode())


def read_config(run_dir: str | os.PathLike[str]) -> dict[str, Any]:
    """The resolved config of a run directory."""
    path = Path(run_dir) / CONFIG_FILE
    if not path.is_file():
        raise RunDirectoryError(f"{str(run_dir)!r} is not a run directory (no {CONFIG_FILE})")
    return json.loads(path.read_text())


def read_jsonl(path: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The records of a JSON-lines file ([] if it does not exist)."""
    path = Path(path)
    if not path.is_file():
        return []
    return [json.loads(line) for line in path.read_text().splitlines() if line.strip()]


def _truncate_jsonl(path: Path, key: str, last_step: int) -> None:
    """Drop records written after ``last_step`` (a resumed run writes them again)."""
    records = [record for record in read_jsonl(path) if record.get(key, 0) <= last_step]
    atomic_write_text(path, "".join(json.dumps(record) + "\n" for record in records))


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


# ------------------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    """The global python, numpy and torch random states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    random.setstate(state["python"])
    np.random.set_state(state["numpy"])
    torch.set_rng_state(state["torch"])


@contextlib.contextmanager
def preserved_rng_state() -> Iterator[None]:
    """Run a block (e.g. an evaluation) without moving the global random streams of training."""
    state = rng_state()
    try:
        yield
    finally:
        set_rng_state(state)


# ------------------------------------------------------------------------------------------ training
class _PauseTraining(Exception):
    """Raised at an update boundary, after a checkpoint, to stop ``learn`` (pause or Ctrl-C)."""


def build_model(config: dict[str, Any]) -> BayesPPO:
    """A fresh ``BayesPPO`` model with its training ``VecEnv`` for a resolved config."""
    method = get_method(config["method"])
    venv = bayes_envs.make_vec(config["env_id"], config["n_envs"], seed=config["seed"], **config["env"])
    return BayesPPO(
        method.policy_class,
        venv,
        seed=config["seed"],
        device=config["device"],
        policy_kwargs=dict(config["policy"]),
        verbose=0,
        **config["ppo"],
    )


def _model_bytes(model: BayesPPO) -> bytes:
    buffer = io.BytesIO()
    model.save(buffer)
    return buffer.getvalue()


def env_state(venv: Any) -> dict[str, Any] | None:
    """The picklable state of a ``VecEnv`` and its wrappers, or ``None`` if the base env does not pickle.

    SB3's ``VecEnvWrapper`` holds an unpicklable ``class_attributes`` map, so each wrapper's other
    attributes are kept by name and the innermost (base) env is pickled whole: for
    :class:`~bayes_envs.vec.BatchedVecEnv` that is every trial's state and per-env generator.
    """
    from stable_baselines3.common.vec_env import VecEnvWrapper

    wrappers = []
    while isinstance(venv, VecEnvWrapper):
        wrappers.append({k: v for k, v in vars(venv).items() if k not in ("venv", "class_attributes")})
        venv = venv.venv
    try:
        base = pickle.dumps(venv, protocol=pickle.HIGHEST_PROTOCOL)
        wrapper_bytes = pickle.dumps(wrappers, protocol=pickle.HIGHEST_PROTOCOL)
    except (pickle.PicklingError, TypeError, AttributeError):
        # Envs holding simulators or processes (MuJoCo, SubprocVecEnv) do not pickle.
        return None
    return {"base": base, "wrappers": wrapper_bytes}


def restore_env_state(venv: Any, state: dict[str, Any]) -> Any:
    """Put a state of :func:`env_state` into a freshly built ``VecEnv`` of the same config; returns it."""
    from stable_baselines3.common.vec_env import VecEnvWrapper

    base = pickle.loads(state["base"])
    layers, layer = [], venv
    while isinstance(layer, VecEnvWrapper):
        layers.append(layer)
        layer = layer.venv
    wrappers = pickle.loads(state["wrappers"])
    if len(wrappers) != len(layers):
        raise RunDirectoryError(f"the checkpoint has {len(wrappers)} env wrappers, the env {len(layers)}")
    for wrapper, attributes in zip(layers, wrappers, strict=False):
        vars(wrapper).update(attributes)
    if not layers:
        return base
    layers[-1].venv = base
    return venv


def save_checkpoint(path: Path, model: BayesPPO, config: dict[str, Any], progress: dict[str, Any]) -> None:
    """Atomically write a checkpoint of ``model`` at an update boundary (see the module docstring)."""
    env = model.get_env()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "config": config,
        "num_timesteps": int(model.num_timesteps),
        "model": _model_bytes(model),
        # RecurrentPPO leaves the recurrent state of the running trials out of model.save().
        "last_lstm_states": copy.deepcopy(model._last_lstm_states),
        "venv": env_state(env),
        "rng": rng_state(),
        "progress": dict(progress),
        "logger": {
            "values": dict(model.logger.name_to_value),
            "counts": dict(model.logger.name_to_count),
            "excluded": dict(model.logger.name_to_excluded),
        },
    }
    atomic_write_bytes(path, pickle.dumps(payload, protocol=pickle.HIGHEST_PROTOCOL))


def load_checkpoint(path: Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint` (pickle: only load checkpoints you wrote)."""
    with open(path, "rb") as stream:
        payload = pickle.load(stream)
    if payload.get("format") != CHECKPOINT_FORMAT:
        raise RunDirectoryError(
            f"{path} has checkpoint format {payload.get('format')}, need {CHECKPOINT_FORMAT}"
        )
    return payload


def restore_model(payload: dict[str, Any], device: str) -> BayesPPO:
    """The model of a checkpoint with its env, recurrent state and random states restored exactly."""
    model = BayesPPO.load(io.BytesIO(payload["model"]), env=None, device=device)
    config = payload["config"]
    venv = bayes_envs.make_vec(config["env_id"], config["n_envs"], seed=config["seed"], **config["env"])
    if payload["venv"] is None:
        warnings.warn(
            "the checkpoint holds no env state (the env does not pickle): resuming on freshly reset envs, "
            "which does not continue the interrupted run exactly",
            stacklevel=2,
        )
        model.set_env(venv, force_reset=True)
        return model
    model.set_env(restore_env_state(venv, payload["venv"]), force_reset=False)
    model._last_lstm_states = copy.deepcopy(payload["last_lstm_states"])
    # Loading re-seeds the global generators; the checkpoint's streams go back in last.
    set_rng_state(payload["rng"])
    return model


class InnerEpisodeReturns(BaseCallback):
    """Logs the mean return of each inner episode over the rollout (``rollout/inner_return_<k>``, 1-based)."""

    def __init__(self) -> None:
        super().__init__()
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def _on_rollout_start(self) -> None:
        self.sums, self.counts = {}, {}

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if info.get("inner_done"):
                episode = int(info["inner_episode"]) + 1
                self.sums[episode] = self.sums.get(episode, 0.0) + float(info["inner_return"])
                self.counts[episode] = self.counts.get(episode, 0) + 1
        return True

    def _on_rollout_end(self) -> None:
        for episode in sorted(self.sums):
            self.logger.record(f"rollout/inner_return_{episode}", self.sums[episode] / self.counts[episode])


class RunController(BaseCallback):
    """At each update boundary: periodic meta-test, checkpoint, pause / Ctrl-C handling, progress."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        progress: dict[str, Any],
        pause_at: int | None,
        show_progress: bool,
    ) -> None:
        super().__init__()
        self.run_dir, self.config, self.progress = run_dir, config, progress
        self.pause_at = pause_at
        self.show_progress = show_progress
        self.interrupted = False
        self.paused_at: int | None = None
        self.bar: Any = None
        self._last_print = 0.0

    # progress output
    def _on_training_start(self) -> None:
        if not self.show_progress:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        # disable=None: no bar when stdout is not a terminal (logs, CI); plain lines then.
        self.bar = tqdm(
            total=self.config["timesteps"],
            initial=self.model.num_timesteps,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5,
            disable=None,
        )
        if self.bar.disable:
            self.bar = None

    def _progress(self, force: bool = False) -> None:
        if not self.show_progress:
            return
        returns = [info["r"] for info in self.model.ep_info_buffer or []]
        trial = f"trial return {np.mean(returns):.2f}" if returns else "trial return -"
        now = time.monotonic()
        if not force and now - self._last_print < (0.5 if self.bar is not None else 10.0):
            return
        self._last_print = now
        if self.bar is not None:
            self.bar.n = min(self.model.num_timesteps, self.bar.total)
            self.bar.set_postfix_str(trial, refresh=True)
        else:
            self._last_print = time.monotonic()
            steps = f"{self.model.num_timesteps:>10,} / {self.config['timesteps']:,} steps"
            print(f"{steps}  {trial}", flush=True)

    def _on_training_end(self) -> None:
        self._progress(force=True)
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # update boundaries
    def _on_rollout_start(self) -> None:
        steps = int(self.model.num_timesteps)
        eval_every = self.config["eval_every"]
        if eval_every and steps >= self.progress["next_eval"]:
            self._evaluate(steps)
            self.progress["next_eval"] = (steps // eval_every + 1) * eval_every
        stop = self.interrupted or (self.pause_at is not None and steps >= self.pause_at)
        if stop or steps - self.progress["last_checkpoint"] >= self.config["checkpoint_every"]:
            self.progress["last_checkpoint"] = steps
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.model, self.config, self.progress)
        if stop:
            self.paused_at = steps
            raise _PauseTraining

    def _evaluate(self, steps: int) -> None:
        with preserved_rng_state():
            summary = evaluate(
                self.model,
                self.config["env_id"],
                n_tasks=self.config["eval_tasks"],
                seed=self.config["eval_seed"],
                **self.config["env"],
            ).summary()
        self.logger.record("eval/trial_return", summary["trial_return_mean"])
        for episode, value in enumerate(summary["episode_return_mean"], start=1):
            self.logger.record(f"eval/inner_return_{episode}", value)
        if "final_regret_mean" in summary:
            self.logger.record("eval/final_regret", summary["final_regret_mean"])
        with open(self.run_dir / EVALUATIONS_FILE, "a") as stream:
            stream.write(json.dumps({"timesteps": steps, **_jsonable(summary)}) + "\n")

    def _on_step(self) -> bool:
        self._progress()
        return True


@contextlib.contextmanager
def _graceful_interrupt(controller: RunController) -> Iterator[None]:
    """First Ctrl-C: finish the update, checkpoint, stop. Second Ctrl-C: the usual KeyboardInterrupt."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if controller.interrupted:
            raise KeyboardInterrupt
        controller.interrupted = True
        print(
            "\ninterrupted: finishing the current update, then writing a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TrainResult:
    """What :func:`train` did: the run directory, steps done, and whether it finished or paused."""

    run_dir: Path
    num_timesteps: int
    finished: bool
    interrupted: bool
    seconds: float
    model: BayesPPO


def prepare_run_dir(run_dir: Path, resume: bool, force: bool) -> None:
    """Check (and create) the run directory; nothing is deleted unless ``force``."""
    if resume and force:
        raise ConfigError("--resume and --force exclude each other (--force starts the run afresh)")
    if resume:
        if not (run_dir / CHECKPOINT_FILE).is_file():
            raise RunDirectoryError(f"cannot resume: {str(run_dir)!r} has no {CHECKPOINT_FILE}")
        return
    if run_dir.exists() and any(run_dir.iterdir()):
        if not force:
            raise RunDirectoryError(
                f"run directory {str(run_dir)!r} exists and is not empty; use --resume to continue it "
                "or --force to overwrite it"
            )
        for name in RUN_FILES:
            with contextlib.suppress(FileNotFoundError):
                (run_dir / name).unlink()
        tensorboard = run_dir / "tensorboard"
        if tensorboard.is_dir():
            for event_file in tensorboard.iterdir():
                event_file.unlink()
    run_dir.mkdir(parents=True, exist_ok=True)


def train(
    config: dict[str, Any],
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    force: bool = False,
    pause_at: int | None = None,
    show_progress: bool = True,
    verbose: bool = False,
    callbacks: list[BaseCallback] | None = None,
) -> TrainResult:
    """Train (or resume) one run of a resolved config into ``run_dir``.

    :param config: from :func:`resolve_config`. With ``resume`` it must equal the checkpoint's
        config except for ``timesteps``, ``device`` and ``checkpoint_every``.
    :param resume: continue from ``run_dir/checkpoint.pkl``, exactly (see the module docstring).
    :param force: start afresh in a non-empty ``run_dir`` (its run files are deleted).
    :param pause_at: checkpoint and stop at the first update boundary at or after this many steps
        (``--resume`` continues): for time-sliced jobs.
    :param callbacks: extra SB3 callbacks (called after the run's own).
    :raises ConfigError: the resume config differs (the message lists the differences).
    :raises RunDirectoryError: existing run without ``force``, or nothing to resume.
    """
    run_dir = Path(run_dir)
    prepare_run_dir(run_dir, resume, force)
    resume_step = None
    if resume:
        payload = load_checkpoint(run_dir / CHECKPOINT_FILE)
        differences = config_differences(payload["config"], config)
        if differences:
            raise ConfigError(
                f"cannot resume {str(run_dir)!r} with another config; differences (saved -> requested): "
                + "; ".join(differences)
                + f". Only {sorted(RESUMABLE_CHANGES)} may change on resume."
            )
        model = restore_model(payload, config["device"])
        progress = dict(payload["progress"])
        resume_step = payload["num_timesteps"]
        _truncate_jsonl(run_dir / METRICS_FILE, "timesteps", resume_step)
        _truncate_jsonl(run_dir / EVALUATIONS_FILE, "timesteps", resume_step)
        logger_state = payload["logger"]
    else:
        model = build_model(config)
        progress = {"last_checkpoint": 0, "next_eval": 0}
        logger_state = None
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    logger = make_logger(run_dir, verbose, resume_step)
    if logger_state is not None:
        logger.name_to_value.update(logger_state["values"])
        logger.name_to_count.update(logger_state["counts"])
        logger.name_to_excluded.update(logger_state["excluded"])
    model.set_logger(logger)
    controller = RunController(run_dir, config, progress, pause_at, show_progress)
    callback = CallbackList([InnerEpisodeReturns(), controller, *(callbacks or [])])
    remaining = config["timesteps"] - model.num_timesteps
    start = time.perf_counter()
    finished = False
    try:
        if remaining > 0:
            with _graceful_interrupt(controller):
                model.learn(remaining, callback=callback, reset_num_timesteps=False)
        finished = True
    except _PauseTraining:
        pass
    finally:
        controller.close()
        logger.close()
    seconds = time.perf_counter() - start
    if finished:
        progress["last_checkpoint"] = int(model.num_timesteps)
        save_checkpoint(run_dir / CHECKPOINT_FILE, model, config, progress)
        atomic_write_bytes(run_dir / MODEL_FILE, _model_bytes(model))
    return TrainResult(run_dir, int(model.num_timesteps), finished, controller.interrupted, seconds, model)


# ------------------------------------------------------------------------------------------ evaluation
def reference_policies(env_id: str, env_kwargs: dict[str, Any], seed: int = 0) -> dict[str, Any]:
    """The environment's reference policies by label (oracle, Bayesian references, random)."""
    from bayes_envs import references as refs

    def fitting(cls: type, **fixed: Any) -> Any:
        accepted, _ = _parameters(cls.__init__, frozenset())
        return cls(**fixed, **{key: value for key, value in env_kwargs.items() if key in accepted})

    name = env_id.split(":", 1)[-1]
    policies: dict[str, Any] = {}
    if name == "BayesGrid-v0":
        policies["oracle (known goal)"] = fitting(refs.GridOracle)
        policies["posterior sampling"] = fitting(refs.GridPosteriorSampling, seed=seed)
    elif name == "BayesBandit-v0":
        alpha = env_kwargs.get("alpha")
        fixed = {} if alpha is None else {"alpha": alpha}
        policies["oracle (known arms)"] = fitting(refs.BanditOracle)
        policies["greedy posterior mean"] = fitting(refs.BanditGreedyPosteriorMean, seed=seed, **fixed)
        policies["Thompson sampling"] = fitting(refs.BanditThompsonSampling, seed=seed, **fixed)
    venv = bayes_envs.make_vec(env_id, 1, seed=0, monitor=False, **env_kwargs)
    policies["uniform random"] = refs.UniformRandomPolicy(venv.action_space, seed=seed)
    venv.close()
    return policies


def exact_references(env_id: str, env_kwargs: dict[str, Any]) -> dict[str, list[float]]:
    """Exact expected returns per inner episode where known (grid: Bayes-optimal, from its cached DP)."""
    if env_id.split(":", 1)[-1] != "BayesGrid-v0":
        return {}
    from bayes_envs.references import bayes_optimal_episode_returns

    accepted = {"size", "episode_length", "episodes_per_trial"}
    kwargs = {key: value for key, value in env_kwargs.items() if key in accepted}
    try:
        return {"Bayes-optimal (exact)": bayes_optimal_episode_returns(**kwargs).tolist()}
    except (ValueError, MemoryError):  # the DP is only feasible for small grids
        return {}


def load_model(run_dir: str | os.PathLike[str], device: str = "cpu") -> BayesPPO:
    """The trained model of a run (``model.zip``, else the latest checkpoint's model)."""
    run_dir = Path(run_dir)
    if (run_dir / MODEL_FILE).is_file():
        return BayesPPO.load(run_dir / MODEL_FILE, device=device)
    if (run_dir / CHECKPOINT_FILE).is_file():
        return BayesPPO.load(io.BytesIO(load_checkpoint(run_dir / CHECKPOINT_FILE)["model"]), device=device)
    raise RunDirectoryError(f"{str(run_dir)!r} has no {MODEL_FILE} or {CHECKPOINT_FILE} to evaluate")


def belief_cells_over_trial(model: BayesPPO, env_id: str, seed: int, env_kwargs: dict[str, Any]):
    """The decoder's per-cell reward belief ``p(reward at cell | μ_t)`` at each step of one trial
    (the first test task), ``[T, size, size]`` as nested lists, for beliefs that decode one over
    grid cells (VariBAD's ``per_state`` decoder); ``None`` otherwise."""
    belief = model.policy.belief
    size = getattr(belief, "grid_size", None)
    if not callable(getattr(belief, "reward_probabilities", None)) or size is None:
        return None
    venv = bayes_envs.make_vec(env_id, 1, seed=seed, monitor=False, **env_kwargs)
    observation, state, start, cells = venv.reset(), None, np.ones(1, bool), []
    with torch.no_grad():
        while True:
            action, state = model.predict(observation, state=state, episode_start=start, deterministic=True)
            mean = model.policy.last_belief_output.mean[0]
            cells.append(belief.reward_probabilities(mean).view(size, size).cpu().numpy().tolist())
            observation, _, dones, _ = venv.step(action)
            if dones[0]:
                break
            start = np.zeros(1, bool)
    venv.close()
    return cells


def _belief_curves(summary: dict[str, Any]) -> dict[str, list[float]] | None:
    """Posterior entropy / KL per trial step from the evaluation summary (``None`` for point estimates,
    whose evaluation records none)."""
    if "belief_entropy_mean" not in summary:
        return None
    return {"entropy": summary["belief_entropy_mean"], "kl_to_previous": summary.get("belief_kl_mean")}


def evaluate_run(
    run_dir: str | os.PathLike[str],
    n_tasks: int | None = None,
    seed: int | None = None,
    *,
    references: bool = True,
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Meta-test a trained run and the environment's references on the same fixed tasks.

    :param n_tasks: test tasks (default: the config's ``final_eval_tasks``).
    :param seed: task seed (default: the config's ``eval_seed``).
    :return: ``{"config", "agent", "references", "exact", "belief"}`` and written to
        ``run_dir/evaluation.json`` (or ``out``): summaries of
        :meth:`~bayes_envs.evaluation.EvaluationResult.summary`.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    n_tasks = config["final_eval_tasks"] if n_tasks is None else n_tasks
    seed = config["eval_seed"] if seed is None else seed
    env_id, env_kwargs = config["env_id"], config["env"]
    model = load_model(run_dir, device=config["device"] if config["device"] != "auto" else "cpu")
    start = time.perf_counter()
    agent: EvaluationResult = evaluate(model, env_id, n_tasks=n_tasks, seed=seed, **env_kwargs)
    agent_summary = agent.summary()
    agent_summary["policy"] = f"{config['method']} (trained, {model.num_timesteps:,} steps)"
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "config": config,
        "num_timesteps": int(model.num_timesteps),
        "agent": agent_summary,
        "references": {},
        "exact": {},
        "belief": _belief_curves(agent_summary),
        "belief_cells": belief_cells_over_trial(model, env_id, seed, env_kwargs),
    }
    if references:
        for label, policy in reference_policies(env_id, env_kwargs).items():
            summary = evaluate(policy, env_id, n_tasks=n_tasks, seed=seed, **env_kwargs).summary()
            summary["policy"] = label
            report["references"][label] = summary
        report["exact"] = exact_references(env_id, env_kwargs)
    report["seconds"] = time.perf_counter() - start
    report = _jsonable(report)
    path = Path(out) if out is not None else run_dir / EVALUATION_FILE
    atomic_write_text(path, json.dumps(report, indent=2))
    return report


def format_evaluation(report: dict[str, Any]) -> str:
    """A text table: return per inner episode and per trial (and final regret) of agent and references."""
    agent = report["agent"]
    shown = min(len(agent["episode_return_mean"]), 8)
    has_regret = "final_regret_mean" in agent
    header = f"{'return per inner episode':<34}" + "".join(f"{'ep ' + str(e + 1):>8}" for e in range(shown))
    header += f"{'trial (± 95% CI)':>18}" + (f"{'regret@T':>10}" if has_regret else "")
    config = report["config"]
    lines = [
        f"{config['env_id']}, method {config['method']}, seed {config['seed']}: "
        f"{agent['n_tasks']} fixed test tasks (seed {agent['seed']})",
        header,
    ]

    def row(label: str, values: list[float], summary: dict[str, Any] | None) -> str:
        text = f"{label[:33]:<34}" + "".join(f"{value:>8.2f}" for value in values[:shown])
        if summary is None:
            return text + f"{sum(values):>10.2f}" + " (exact)"
        text += f"{summary['trial_return_mean']:>10.2f} ± {summary['trial_return_ci95']:<5.2f}"
        if has_regret:
            text += f"{summary.get('final_regret_mean', float('nan')):>10.2f}"
        return text

    lines.append(row(agent["policy"], agent["episode_return_mean"], agent))
    for label, summary in report["references"].items():
        lines.append(row(label, summary["episode_return_mean"], summary))
    for label, values in report["exact"].items():
        lines.append(row(label, values, None))
    if "success_rate" in agent:
        rates = ", ".join(f"{rate:.2f}" for rate in agent["success_rate"][:shown])
        lines.append(f"success rate per inner episode (agent): {rates}")
    return "\n".join(lines)
