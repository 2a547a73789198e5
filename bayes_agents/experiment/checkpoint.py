"""Checkpoints that resume a run exactly and load without executing code.

``checkpoint.pt`` is written with ``torch.save`` and read with ``torch.load(weights_only=True)``,
which accepts only tensors and plain containers: no pickled objects. It holds

* the resolved config (a JSON string) and the run's progress counters;
* the model's tensors (``policy`` and ``policy.optimizer`` state dicts, as ``model.save`` stores them);
* the model's run-time attributes (step counter, last observation, episode starts, recurrent state of
  the running trials, episode-info buffers, ...) and the state of the whole vectorised env (its
  per-env generators and trial states) as plain data (:mod:`.state`);
* the python / numpy / torch random states and the logger's pending values;
* the observation/reward normalisation statistics of a run with ``norm_obs`` / ``norm_reward``
  (:class:`bayes_envs.RL2VecNormalize`), also for envs whose state cannot be stored: a resumed
  MuJoCo run keeps its statistics even though its envs restart.

Checkpoints are taken at PPO-update boundaries (just before a rollout starts), where the rollout
buffer is empty. Resuming rebuilds the model and the env from the config and puts that state back
into them, so training makes exactly the same updates as a run that was never interrupted (tested:
equal parameters bit for bit on CPU). Envs that hold native state (MuJoCo simulators, subprocesses)
have no plain-data state: they resume on freshly reset envs, with a warning.
"""

from __future__ import annotations

import contextlib
import io
import json
import random
import warnings
import zipfile
from collections.abc import Iterator
from operator import attrgetter
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bayes_envs
from bayes_agents.experiment.config import ConfigError, jsonable, policy_kwargs
from bayes_agents.experiment.runfiles import RunDirectoryError, atomic_write_bytes, error_summary
from bayes_agents.experiment.state import Unencodable, encode, is_configuration, restore
from bayes_agents.methods import get_method
from bayes_agents.ppo import BayesPPO

CHECKPOINT_FORMAT = "bayes-rl checkpoint"
CHECKPOINT_VERSION = 2
#: Model attributes that are rebuilt from the config (or are the env / buffers / logger): not stored.
_MODEL_REBUILT = frozenset(
    {
        "policy",
        "env",
        "rollout_buffer",
        "replay_buffer",
        "_vec_normalize_env",
        "_logger",
        "_custom_logger",
        "device",
        "observation_space",
        "action_space",
        "policy_class",
        "policy_kwargs",
        "lr_schedule",
        "clip_range",
        "clip_range_vf",
        "tensorboard_log",
        "verbose",
    }
)
#: Model attributes that describe the running trials: not restored when the env state is missing.
_TRIAL_ATTRIBUTES = frozenset(
    {"_last_obs", "_last_episode_starts", "_last_original_obs", "_last_lstm_states"}
)
#: Attributes of SB3's vec-env wrappers that are derived, not state.
_ENV_SKIPPED = frozenset({"class_attributes"})


# ------------------------------------------------------------------------------------------ RNG
def rng_state() -> dict[str, Any]:
    """The global python, numpy and torch random states."""
    return {"python": random.getstate(), "numpy": np.random.get_state(), "torch": torch.get_rng_state()}


def set_rng_state(state: dict[str, Any]) -> None:
    """Put back a state of :func:`rng_state`."""
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


# ------------------------------------------------------------------------------------------ model
class ModelBuildError(ConfigError):
    """The env or the model of a config could not be built (a value only they can judge is bad)."""


def build_env(config: dict[str, Any]) -> Any:
    """The training ``VecEnv`` of a resolved config; ``ModelBuildError`` naming the ``env.`` values.

    With ``norm_obs`` or ``norm_reward`` it is wrapped in :class:`bayes_envs.RL2VecNormalize`
    (discount: the run's ``ppo.gamma``), which ``BayesPPO`` finds as its ``get_vec_normalize_env()``.
    """
    try:
        venv = bayes_envs.make_vec(config["env_id"], config["n_envs"], seed=config["seed"], **config["env"])
    except Exception as error:  # any failure here is a bad env value: report it on one line
        values = ", ".join(f"env.{key}={value!r}" for key, value in config["env"].items()) or "the defaults"
        raise ModelBuildError(
            f"{config['env_id']} cannot be built with {values}: {type(error).__name__}: {error}"
        ) from error
    return normalized_env(venv, config)


def normalized_env(venv: Any, config: dict[str, Any]) -> Any:
    """``venv`` in the :class:`bayes_envs.RL2VecNormalize` of the config (as is if nothing is normalised)."""
    norm_obs, norm_reward = bool(config.get("norm_obs", False)), bool(config.get("norm_reward", False))
    if not (norm_obs or norm_reward):
        return venv
    return bayes_envs.RL2VecNormalize(
        venv,
        norm_obs=norm_obs,
        norm_reward=norm_reward,
        gamma=float(config["ppo"].get("gamma", 0.99)),
        norm_prev_reward=config.get("norm_prev_reward"),  # None: as norm_reward
    )


def build_model(config: dict[str, Any]) -> BayesPPO:
    """A fresh ``BayesPPO`` model with its training ``VecEnv`` for a resolved config.

    :raises ModelBuildError: the env, the policy or PPO rejects a value (the message says which part).
    """
    method = get_method(config["method"])
    venv = build_env(config)
    try:
        return BayesPPO(
            method.policy_class,
            venv,
            seed=config["seed"],
            device=config["device"],
            policy_kwargs=policy_kwargs(config),
            verbose=0,
            **config["ppo"],
        )
    except ConfigError:
        venv.close()
        raise
    except Exception as error:  # a bad ppo./policy. value found by the constructors: one line
        venv.close()
        raise ModelBuildError(
            f"the {config['method']} model cannot be built from the ppo.* and policy.* values: "
            f"{type(error).__name__}: {error}"
        ) from error


#: The member of ``model.zip`` holding the normalisation statistics (JSON; SB3's loader ignores it).
NORMALIZATION_MEMBER = "normalization.json"


def model_bytes(model: BayesPPO) -> bytes:
    """``model.save`` into bytes (SB3's zip format), with the normalisation statistics of its env
    (:data:`NORMALIZATION_MEMBER`, read back by :func:`read_normalization`) if it has any."""
    buffer = io.BytesIO()
    model.save(buffer)
    normalizer = model.get_vec_normalize_env()
    if isinstance(normalizer, bayes_envs.RL2VecNormalize):
        with zipfile.ZipFile(buffer, "a") as archive:
            archive.writestr(NORMALIZATION_MEMBER, normalizer.to_json())
    return buffer.getvalue()


def read_normalization(path: str | Path) -> dict[str, Any] | None:
    """The normalisation ``state_dict`` stored in a ``model.zip`` by :func:`model_bytes` (``None``: none)."""
    with zipfile.ZipFile(path) as archive:
        if NORMALIZATION_MEMBER not in archive.namelist():
            return None
        return bayes_envs.RL2VecNormalize.state_from_json(archive.read(NORMALIZATION_MEMBER).decode())


# ------------------------------------------------------------------------------------------ env
def env_state(venv: Any) -> Any | None:
    """The state of a ``VecEnv`` and its wrappers as plain data, or ``None`` if it has native state."""
    try:
        return encode(venv, skip=_ENV_SKIPPED)
    except Unencodable:
        # Envs holding simulators or processes (MuJoCo, SubprocVecEnv) have no plain-data state.
        return None


def restore_env_state(venv: Any, state: Any) -> Any:
    """Put a state of :func:`env_state` into a freshly built ``VecEnv`` of the same config; returns it."""
    try:
        return restore(state, venv)
    except (ValueError, TypeError, KeyError, AttributeError) as error:
        raise RunDirectoryError(
            f"the checkpoint's env state does not fit the env of its config: {error}"
        ) from error


# ------------------------------------------------------------------------------------------ policy modules
#: Attributes every ``nn.Module`` has (parameters, buffers, hooks, ...): saved by ``state_dict`` or rebuilt.
_MODULE_INTERNALS = frozenset(vars(torch.nn.Module()))


def _encode_optimizer(optimizer: torch.optim.Optimizer, names: dict[int, str]) -> dict[str, Any]:
    """An optimizer a module keeps of its own (VariBAD's VAE optimizer): class, parameter names, state."""
    groups = [[names[id(parameter)] for parameter in group["params"]] for group in optimizer.param_groups]
    return {"__optimizer__": type(optimizer).__name__, "groups": groups, "state": optimizer.state_dict()}


def _restore_optimizer(
    data: dict[str, Any], parameters: dict[str, torch.nn.Parameter]
) -> torch.optim.Optimizer:
    optimizer_class = getattr(torch.optim, data["__optimizer__"], None)
    if not isinstance(optimizer_class, type) or not issubclass(optimizer_class, torch.optim.Optimizer):
        raise ValueError(f"unknown optimizer {data['__optimizer__']!r}")
    optimizer = optimizer_class(
        [{"params": [parameters[name] for name in group]} for group in data["groups"]]
    )
    optimizer.load_state_dict(data["state"])
    return optimizer


def _module_states(model: BayesPPO) -> dict[str, dict[str, Any]]:
    """The run-time state the policy's modules keep outside their ``state_dict`` (trial buffers,
    generators, optimizers of their own), by module name; configuration and unencodable values left out."""
    names = {id(parameter): name for name, parameter in model.policy.named_parameters()}
    states: dict[str, dict[str, Any]] = {}
    for module_name, module in model.policy.named_modules():
        attributes = {}
        for name, value in vars(module).items():
            if (
                name in _MODULE_INTERNALS
                or (module is model.policy and name == "optimizer")
                or is_configuration(value)
            ):
                continue
            if isinstance(value, torch.optim.Optimizer):
                with contextlib.suppress(KeyError):  # over parameters outside the policy: not restorable
                    attributes[name] = _encode_optimizer(value, names)
                continue
            with contextlib.suppress(Unencodable):
                attributes[name] = encode(value)
        if attributes:
            states[module_name] = attributes
    return states


def _restore_module_states(model: BayesPPO, states: dict[str, dict[str, Any]]) -> None:
    parameters = dict(model.policy.named_parameters())
    for module_name, attributes in states.items():
        try:
            module = model.policy.get_submodule(module_name)
        except AttributeError as error:
            raise RunDirectoryError(
                f"the checkpoint's policy has a module {module_name!r} the model lacks"
            ) from error
        current = vars(module)
        for name, data in attributes.items():
            try:
                if isinstance(data, dict) and "__optimizer__" in data:
                    current[name] = _restore_optimizer(data, parameters)
                else:
                    current[name] = restore(data, current.get(name))
            except (ValueError, TypeError, KeyError, AttributeError) as error:
                raise RunDirectoryError(
                    f"the checkpoint's state {module_name or 'policy'}.{name} does not fit the model: {error}"
                ) from error


# ------------------------------------------------------------------------------------------ checkpoints
def _normalization_state(model: BayesPPO) -> Any:
    normalizer = model.get_vec_normalize_env()
    if not isinstance(normalizer, bayes_envs.RL2VecNormalize):
        return None
    return encode(normalizer.state_dict())


def _model_attributes(model: BayesPPO) -> dict[str, Any]:
    attributes = {}
    for name, value in vars(model).items():
        if name in _MODEL_REBUILT:
            continue
        with contextlib.suppress(Unencodable):  # functions, schedules: rebuilt from the config
            attributes[name] = encode(value)
    return attributes


def save_checkpoint(path: Path, model: BayesPPO, config: dict[str, Any], progress: dict[str, Any]) -> None:
    """Atomically write a checkpoint of ``model`` at an update boundary (see the module docstring)."""
    names, _ = model._get_torch_save_params()
    payload = {
        "format": CHECKPOINT_FORMAT,
        "version": CHECKPOINT_VERSION,
        "config": json.dumps(jsonable(config)),
        "num_timesteps": int(model.num_timesteps),
        "parameters": {name: attrgetter(name)(model).state_dict() for name in names},
        "attributes": _model_attributes(model),
        "modules": _module_states(model),
        "venv": env_state(model.get_env()),
        # Also apart from the env state, which envs with native state (MuJoCo) cannot give.
        "normalization": _normalization_state(model),
        "rng": encode(rng_state()),
        "progress": encode(dict(progress)),
        "logger": encode(
            {
                "values": dict(model.logger.name_to_value),
                "counts": dict(model.logger.name_to_count),
                "excluded": dict(model.logger.name_to_excluded),
            }
        ),
    }

    def write(stream: Any) -> None:
        torch.save(payload, stream)

    atomic_write_bytes(path, write)


def load_checkpoint(path: str | Path) -> dict[str, Any]:
    """A checkpoint written by :func:`save_checkpoint`, read without executing code.

    :return: the payload with ``config`` (a dict), ``num_timesteps``, ``progress`` and the states.
    :raises RunDirectoryError: missing, truncated, corrupt or foreign file (the message names it).
    """
    path = Path(path)
    advice = "delete it and start the run afresh with --force, or restore the file from a copy"
    if not path.is_file():
        raise RunDirectoryError(f"{path} does not exist")
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as error:  # truncated zip, foreign pickle, bad bytes: all "corrupt" to the user
        reason = error_summary(error)
        raise RunDirectoryError(f"{path} is truncated or corrupt ({reason[:200]}); {advice}") from error
    if not isinstance(payload, dict) or payload.get("format") != CHECKPOINT_FORMAT:
        raise RunDirectoryError(f"{path} is not a bayes-rl checkpoint; {advice}")
    if payload.get("version") != CHECKPOINT_VERSION:
        raise RunDirectoryError(
            f"{path} has checkpoint version {payload.get('version')}, "
            f"this bayes-rl reads {CHECKPOINT_VERSION}; {advice}"
        )
    try:
        payload = dict(payload)
        payload["config"] = json.loads(payload["config"])
        payload["progress"] = restore(payload["progress"])
        payload["num_timesteps"] = int(payload["num_timesteps"])
    except (KeyError, TypeError, ValueError) as error:
        raise RunDirectoryError(f"{path} is incomplete ({error}); {advice}") from error
    return payload


def restore_model(payload: dict[str, Any], device: str | None = None) -> BayesPPO:
    """The model of a checkpoint with its env, recurrent state and random states restored exactly.

    :param device: where to put the model (default: the checkpoint config's device).
    """
    config = dict(payload["config"])
    if device is not None:
        config["device"] = device
    model = build_model(config)
    try:
        for name, state in payload["parameters"].items():
            attrgetter(name)(model).load_state_dict(state)
    except (RuntimeError, ValueError, KeyError, AttributeError) as error:
        raise RunDirectoryError(
            f"the checkpoint's tensors do not fit the model of its config: {error}"
        ) from error
    _restore_module_states(model, payload.get("modules", {}))
    has_env_state = payload["venv"] is not None
    normalizer = model.get_vec_normalize_env()
    if payload.get("normalization") is not None and isinstance(normalizer, bayes_envs.RL2VecNormalize):
        try:
            normalizer.load_state_dict(restore(payload["normalization"]))
        except (ValueError, TypeError, KeyError) as error:
            raise RunDirectoryError(
                f"the checkpoint's normalisation statistics do not fit the env of its config: {error}"
            ) from error
    for name, value in payload["attributes"].items():
        if not has_env_state and name in _TRIAL_ATTRIBUTES:
            continue
        try:
            setattr(model, name, restore(value, getattr(model, name, None)))
        except (ValueError, TypeError, KeyError) as error:
            raise RunDirectoryError(
                f"the checkpoint's model attribute {name!r} does not fit: {error}"
            ) from error
    if not has_env_state:
        warnings.warn(
            "the checkpoint holds no env state (the env has native state): resuming on freshly reset envs, "
            "which does not continue the interrupted run exactly",
            stacklevel=2,
        )
        model._last_obs = None  # learn() resets the envs
    else:
        restore_env_state(model.get_env(), payload["venv"])
    # Building the model re-seeds the global generators; the checkpoint's streams go back in last
    # (also without env state: the run continues its streams instead of restarting them from the seed).
    set_rng_state(restore(payload["rng"]))
    return model


def restore_logger(logger: Any, payload: dict[str, Any]) -> None:
    """Put the checkpoint's pending logger values back (values recorded before the checkpoint)."""
    state = restore(payload["logger"])
    logger.name_to_value.update(state["values"])
    logger.name_to_count.update(state["counts"])
    logger.name_to_excluded.update(state["excluded"])
