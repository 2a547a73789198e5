"""Run configs: the keys a run may set, parsing (``--set``, YAML/JSON files), validation and resolution.

A resolved config (:func:`resolve_config`) is a JSON-ready dict with every run key
(:data:`RUN_KEYS`) and the ``env``, ``ppo`` and ``policy`` sections. Every value is checked here,
before anything touches a run directory: :func:`check_values` checks the types and ranges of the
run keys, of the PPO hyper-parameters and of the activation names; the values only the env or the
policy can judge are checked by building them once (:func:`bayes_agents.experiment.checkpoint.build_model`
in :func:`bayes_agents.experiment.training.train`).
"""

from __future__ import annotations

import contextlib
import inspect
import json
import math
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator

from bayes_agents.defaults import run_settings
from bayes_agents.methods import get_method, method_defaults, method_names
from bayes_agents.policies import BeliefPolicy
from bayes_agents.ppo import BayesPPO

#: Run-level keys of a config and their meaning (the ``--set`` names; ``env.``, ``ppo.`` and
#: ``policy.`` keys are listed by :func:`valid_keys`).
RUN_KEYS: dict[str, str] = {
    "env_id": "registered environment id",
    "method": "belief method (bayes_agents.methods)",
    "seed": "seed of the model and of the training envs (env i: seed + i)",
    "timesteps": "total env steps to train",
    "n_envs": "parallel training envs",
    "device": "torch device (cpu, cuda, cuda:N, mps, auto)",
    "checkpoint_every": "env steps between checkpoints (taken at the next PPO-update boundary)",
    "eval_every": "env steps between meta-test evaluations during training (0: none)",
    "eval_tasks": "test tasks of each periodic evaluation",
    "final_eval_tasks": "test tasks of the final evaluation (bayes-rl evaluate)",
    "eval_seed": "seed of the fixed test tasks (task i: an env seeded eval_seed + i)",
    "eval_deterministic": (
        "evaluations act with the policy's most likely action; false: they sample actions as in "
        "training (torch's generator seeded with eval_seed)"
    ),
    "norm_obs": "normalise obs['obs'] by a running mean/variance (bayes_envs.RL2VecNormalize)",
    "norm_reward": "divide the rewards PPO learns from by the running std of the trial return",
    "norm_prev_reward": (
        "scale the belief's prev_reward input like the rewards (default: norm_reward, but false for "
        "beliefs that model the rewards they read: varibad, glibrl)"
    ),
}
#: Run keys that configs written before they existed lack, and the value those runs used.
#: (``norm_prev_reward`` None: as ``norm_reward``, what RL2VecNormalize did before the key existed;
#: :func:`with_added_keys` resolves it.)
_ADDED_RUN_KEYS = {
    "norm_obs": False,
    "norm_reward": False,
    "norm_prev_reward": None,
    "eval_deterministic": True,
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

#: ``policy.activation_fn`` names (case and ``_`` insensitive) and the ``torch.nn`` modules they build.
ACTIVATIONS: dict[str, str] = {
    "tanh": "Tanh",
    "relu": "ReLU",
    "elu": "ELU",
    "gelu": "GELU",
    "silu": "SiLU",
    "leakyrelu": "LeakyReLU",
    "sigmoid": "Sigmoid",
    "softplus": "Softplus",
    "identity": "Identity",
}
#: Policy keys whose value names an activation module.
_ACTIVATION_KEYS = ("activation_fn",)


class ConfigError(ValueError):
    """A config that cannot be run: unknown env, method or key, a bad value, or a mismatched resume."""


# ------------------------------------------------------------------------------------------ keys
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
    except (ValueError, TypeError, KeyError) as error:
        raise ConfigError(f"unknown method {method!r}; choose one of {method_names()}") from error
    return method


def parameters(function: Callable[..., Any], reserved: frozenset[str]) -> tuple[set[str], bool]:
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
    names, open_ended = parameters(entry.__init__ if isinstance(entry, type) else entry, _ENV_RESERVED)
    if batch_class is not None:
        batch_names, _ = parameters(batch_class.__init__, _ENV_RESERVED)
        names |= batch_names
    return names, open_ended and not names


def valid_keys(env_id: str, method: str) -> dict[str, list[str]]:
    """Every key a config of (``env_id``, ``method``) may set: ``{"run": [...], "env": [...], ...}``.

    ``ppo`` keys are ``BayesPPO`` constructor arguments, ``policy`` keys those of the method's
    policy and belief classes, ``env`` keys the environment's constants. An env whose constructor
    only takes ``**kwargs`` accepts any ``env.`` key (listed as ``["*"]``).
    """
    policy_class = get_method(method).policy_class
    ppo, _ = parameters(BayesPPO.__init__, _PPO_RESERVED)
    policy, _ = parameters(BeliefPolicy.__init__, _POLICY_RESERVED)
    if policy_class.__init__ is not BeliefPolicy.__init__:
        policy |= parameters(policy_class.__init__, _POLICY_RESERVED)[0]
    belief_class = getattr(policy_class, "belief_class", None)
    if belief_class is not None:
        policy |= parameters(belief_class.__init__, _POLICY_RESERVED)[0]
    env, open_ended = _env_parameters(env_id)
    return {
        "run": sorted(RUN_KEYS),
        "env": ["*"] if open_ended else sorted(env),
        "ppo": sorted(ppo),
        "policy": sorted(policy),
    }


# ------------------------------------------------------------------------------------------ parsing
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
    """A config file: ``.json``, or ``.yaml``/``.yml`` (needs PyYAML: ``pip install bayes-meta-rl[cli]``).

    :raises ConfigError: missing, unreadable or malformed file (the message names the file and the line).
    """
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"config file {str(path)!r} does not exist")
    try:
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigError(f"cannot read config file {str(path)!r}: {error}") from error
    if path.suffix.lower() == ".json":
        try:
            data = json.loads(text)
        except json.JSONDecodeError as error:
            raise ConfigError(
                f"config file {str(path)!r} is not valid JSON (line {error.lineno}, column {error.colno}: "
                f"{error.msg}); fix it or write the config in YAML"
            ) from error
    else:
        try:
            import yaml
        except ImportError as error:
            raise ConfigError(
                f"reading {path.name} needs PyYAML (pip install 'bayes-meta-rl[cli]'), or give a .json file"
            ) from error
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as error:
            mark = getattr(error, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
            problem = getattr(error, "problem", None) or type(error).__name__
            raise ConfigError(
                f"config file {str(path)!r} is not valid YAML{where}: {problem}; fix the file"
            ) from error
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"config file {str(path)!r} must hold a mapping of keys, got {type(data).__name__}")
    return data


def merge(base: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """``base`` with ``overrides`` on top; the ``env``/``ppo``/``policy`` sections are merged key by key."""
    merged = dict(base)
    for key, value in overrides.items():
        if key in SECTIONS and isinstance(value, dict):
            merged[key] = {**merged.get(key, {}), **value}
        else:
            merged[key] = value
    return merged


def jsonable(value: Any) -> Any:
    """Tuples → lists, numpy scalars → Python: the config as it reads back from JSON."""
    return json.loads(json.dumps(value, default=lambda o: o.item() if hasattr(o, "item") else str(o)))


# ------------------------------------------------------------------------------------------ checks
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


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float, np.integer, np.floating)) and not isinstance(
        value, (bool, np.bool_)
    )


def check_int(key: str, value: Any, minimum: int) -> None:
    """``ConfigError`` unless ``value`` is an int (not a bool) ``>= minimum``."""
    if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise ConfigError(f"{key} must be an int >= {minimum}, got {value!r}")


def _check_float(key: str, value: Any, low: float, high: float = math.inf, *, low_open: bool = False) -> None:
    """``value`` a finite number in ``[low, high]`` (``(low, high]`` with ``low_open``)."""
    bracket = "(" if low_open else "["
    allowed = (
        f"a finite number in {bracket}{low:g}, {high:g}]"
        if math.isfinite(high)
        else (f"a finite number {'>' if low_open else '>='} {low:g}")
    )
    if not _is_number(value) or not math.isfinite(float(value)):
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")
    if float(value) < low or (low_open and float(value) == low) or float(value) > high:
        raise ConfigError(f"{key} must be {allowed}, got {value!r}")


#: PPO keys that also take a schedule string: ``"lin_<v>"``, a linear decay from ``v`` to 0
#: (``ent_coef``: :class:`~bayes_agents.BayesPPO` only).
_SCHEDULE_KEYS = ("learning_rate", "clip_range", "clip_range_vf", "ent_coef")


def _check_schedule(key: str, value: str, low: float, high: float, *, low_open: bool) -> None:
    """A ``"lin_<v>"`` schedule string whose start ``v`` is in the key's range."""
    prefix, _, number = value.partition("_")
    try:
        start = float(number)
    except ValueError:
        start = None
    if prefix != "lin" or start is None:
        raise ConfigError(
            f'{key} must be a finite number > 0 or "lin_<number>" (a linear decay), got {value!r}'
        )
    _check_float(f"{key} (start of {value!r})", start, low, high, low_open=low_open)


def _non_finite(value: Any, path: str) -> str | None:
    """The dotted path of the first NaN/inf number inside ``value``, else ``None``."""
    if _is_number(value) and not math.isfinite(float(value)):
        return path
    if isinstance(value, dict):
        for key, item in value.items():
            found = _non_finite(item, f"{path}.{key}")
            if found:
                return found
    if isinstance(value, (list, tuple)):
        for index, item in enumerate(value):
            found = _non_finite(item, f"{path}[{index}]")
            if found:
                return found
    return None


def check_device(device: Any) -> str:
    """``device`` if torch knows it (``cpu``, ``cuda``, ``cuda:N``, ``mps``, ``auto``) and it is available."""
    import torch

    if device == "auto":
        return device
    if not isinstance(device, str):
        raise ConfigError(f"device must be one of cpu, cuda, cuda:N, mps, auto; got {device!r}")
    try:
        parsed = torch.device(device)
    except (RuntimeError, ValueError) as error:
        raise ConfigError(f"device must be one of cpu, cuda, cuda:N, mps, auto; got {device!r}") from error
    if parsed.type == "cuda" and not torch.cuda.is_available():
        raise ConfigError(f"device {device!r}: CUDA is not available on this machine; use device=cpu")
    if parsed.type == "mps" and not torch.backends.mps.is_available():
        raise ConfigError(f"device {device!r}: MPS is not available on this machine; use device=cpu")
    if parsed.type not in ("cpu", "cuda", "mps"):
        raise ConfigError(f"device must be one of cpu, cuda, cuda:N, mps, auto; got {device!r}")
    return device


def activation_module(name: Any, key: str = "policy.activation_fn") -> type:
    """The ``torch.nn`` activation class of a config name (``"tanh"``, ``"relu"``, ``"ReLU"``, ...)."""
    from torch import nn

    if isinstance(name, type) and issubclass(name, nn.Module):
        return name
    normalised = name.lower().replace("_", "") if isinstance(name, str) else None
    if normalised not in ACTIVATIONS:
        raise ConfigError(f"{key} must be one of {sorted(ACTIVATIONS)} (any case), got {name!r}")
    return getattr(nn, ACTIVATIONS[normalised])


def policy_kwargs(config: dict[str, Any]) -> dict[str, Any]:
    """The ``policy`` section as policy constructor arguments (activation names → ``torch.nn`` classes)."""
    kwargs = dict(config["policy"])
    for key in _ACTIVATION_KEYS:
        if key in kwargs:
            kwargs[key] = activation_module(kwargs[key], f"policy.{key}")
    return kwargs


#: PPO hyper-parameters checked before a run starts: (kind, low, high, low_open, optional).
_PPO_RANGES: dict[str, tuple[str, float, float, bool, bool]] = {
    "learning_rate": ("float", 0.0, math.inf, True, False),
    "n_steps": ("int", 1, math.inf, False, False),
    "batch_size": ("int", 1, math.inf, False, False),
    "n_epochs": ("int", 1, math.inf, False, False),
    "gamma": ("float", 0.0, 1.0, False, False),
    "gae_lambda": ("float", 0.0, 1.0, False, False),
    "clip_range": ("float", 0.0, math.inf, True, False),
    "clip_range_vf": ("float", 0.0, math.inf, True, True),
    "ent_coef": ("float", 0.0, math.inf, False, False),
    "vf_coef": ("float", 0.0, math.inf, False, False),
    "max_grad_norm": ("float", 0.0, math.inf, True, False),
    "target_kl": ("float", 0.0, math.inf, True, True),
    "stats_window_size": ("int", 1, math.inf, False, False),
    "sde_sample_freq": ("int", -1, math.inf, False, False),
}


def check_values(config: dict[str, Any]) -> None:
    """``ConfigError`` naming the first bad value of a config and the allowed range.

    Checks the run keys, the device, the PPO hyper-parameters (:data:`_PPO_RANGES`), the activation
    names and that no ``env``/``ppo``/``policy`` number is NaN or infinite. Values only the env and
    the policy can judge are checked by building them (``train`` does that before writing anything).
    """
    for key in ("seed", "eval_every", "eval_seed"):
        check_int(key, config[key], 0)
    for key in ("timesteps", "n_envs", "checkpoint_every", "eval_tasks", "final_eval_tasks"):
        check_int(key, config[key], 1)
    for key in ("norm_obs", "norm_reward", "eval_deterministic"):
        if not isinstance(config.get(key, False), bool):
            raise ConfigError(f"{key} must be true or false, got {config[key]!r}")
    if not isinstance(config.get("norm_prev_reward"), (bool, type(None))):
        raise ConfigError(f"norm_prev_reward must be true, false or null, got {config['norm_prev_reward']!r}")
    check_device(config["device"])
    for section in SECTIONS:
        found = _non_finite(config.get(section, {}), section)
        if found:
            raise ConfigError(f"{found} must be finite, got a NaN or infinite value")
    ppo = config["ppo"]
    for key, (kind, low, high, low_open, optional) in _PPO_RANGES.items():
        if key not in ppo or (optional and ppo[key] is None):
            continue
        if kind == "int":
            check_int(f"ppo.{key}", ppo[key], int(low))
        elif key in _SCHEDULE_KEYS and isinstance(ppo[key], str):
            _check_schedule(f"ppo.{key}", ppo[key], low, high, low_open=True)  # decays from v > 0
        else:
            _check_float(f"ppo.{key}", ppo[key], low, high, low_open=low_open)
    for key in ("normalize_advantage", "use_sde"):
        if key in ppo and not isinstance(ppo[key], bool):
            raise ConfigError(f"ppo.{key} must be true or false, got {ppo[key]!r}")
    if "n_steps" in ppo and ppo["n_steps"] * config["n_envs"] < 2:
        raise ConfigError(
            f"ppo.n_steps * n_envs must be > 1 (PPO normalises advantages over a rollout), "
            f"got {ppo['n_steps']} * {config['n_envs']}"
        )
    for key in _ACTIVATION_KEYS:
        if key in config["policy"]:
            activation_module(config["policy"][key], f"policy.{key}")


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
    :raises ConfigError: unknown env, method or key, or a bad value (the message lists the valid ones).
    """
    layered = merge(file_config or {}, overrides or {})
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
        "eval_deterministic": run["eval_deterministic"],
        "norm_obs": run["norm_obs"],
        "norm_reward": run["norm_reward"],
        "norm_prev_reward": None,
        "env": {},
        "ppo": defaults["ppo"],
        "policy": defaults["policy"],
    }
    config = merge(base, layered)
    config["env_id"], config["method"] = env_id, method
    check_keys(config)
    if config["norm_prev_reward"] is None and isinstance(config["norm_reward"], bool):
        models_rewards = get_method(method).policy_class.belief_class.models_rewards
        config["norm_prev_reward"] = config["norm_reward"] and not models_rewards
    if config["eval_every"] is None:
        check_int("timesteps", config["timesteps"], 1)
        config["eval_every"] = max(1, int(config["timesteps"]) // 10)
    check_values(config)
    return jsonable(config)


def with_added_keys(config: dict[str, Any]) -> dict[str, Any]:
    """A saved config with the run keys added since it was written, at the values its run used."""
    config = {**_ADDED_RUN_KEYS, **config}
    if config["norm_prev_reward"] is None:  # before the key: prev_reward scaled iff the rewards were
        config["norm_prev_reward"] = config["norm_reward"]
    return config


def config_differences(saved: dict[str, Any], requested: dict[str, Any]) -> list[str]:
    """Dotted keys whose values differ between two resolved configs (ignoring resumable changes)."""
    saved, requested = with_added_keys(saved), with_added_keys(requested)
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
