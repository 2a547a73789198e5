"""Observation and reward normalisation for RL²-input envs: :class:`RL2VecNormalize`.

A ``VecEnv`` wrapper (a subclass of Stable-Baselines3's ``VecNormalize``) that understands the
RL²-input Dict observation ``{"obs", "prev_action", "prev_reward", "new_episode"}``:

* ``obs["obs"]`` is normalised with a running mean and variance of the observations
  (``(x − mean) / sqrt(var + ε)``, clipped to ``±clip_obs``);
* the reward is divided by the running standard deviation of the discounted return (clipped to
  ``±clip_reward``, no mean subtracted), as ``VecNormalize`` does. The return accumulator resets
  where the *trial* ends (the ``dones`` of the vec env), not at inner-episode boundaries
  (``info["inner_done"]``): a trial is one episode of the meta-RL problem;
* ``obs["prev_reward"]`` is the previous step's reward normalised with the same statistics
  (``norm_prev_reward``, on whenever ``norm_reward`` is): the belief reads exactly the reward the
  policy trains on. (VariBAD's reference feeds its encoder the raw reward and normalises only the
  policy's reward and state; here the belief and the policy share one input, so one scale is used
  for both. ``norm_prev_reward=False`` keeps the raw ``prev_reward``.)
* ``prev_action`` and ``new_episode`` are never changed.

The statistics are updated only while ``training`` is true; :meth:`RL2VecNormalize.frozen_copy`
gives an evaluation wrapper whose statistics never move and whose rewards are raw.
:meth:`~RL2VecNormalize.state_dict` / :meth:`~RL2VecNormalize.load_state_dict` give the
statistics as plain data (numpy arrays, floats), and :meth:`~RL2VecNormalize.save_json` /
:meth:`~RL2VecNormalize.load_json` write and read them as JSON (exact: floats round-trip), never
pickled.

With stock ``RecurrentPPO``::

    from sb3_contrib import RecurrentPPO
    import bayes_envs
    from bayes_envs.evaluation import evaluate

    venv = bayes_envs.RL2VecNormalize(bayes_envs.make_vec("HalfCheetahVel-v0", 16, seed=0), gamma=0.97)
    model = RecurrentPPO("MultiInputLstmPolicy", venv, gamma=0.97).learn(100_000)
    venv.save_json("normalization.json")          # next to model.save("model.zip")
    evaluate(model, "HalfCheetahVel-v0", n_tasks=20)  # frozen statistics, raw returns

``evaluate`` finds the statistics through ``model.get_vec_normalize_env()``; for a model loaded
without its env pass ``normalization=RL2VecNormalize.read_json("normalization.json")``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import numpy as np
from gymnasium import spaces
from stable_baselines3.common.running_mean_std import RunningMeanStd
from stable_baselines3.common.vec_env import VecEnv, VecNormalize
from stable_baselines3.common.vec_env.base_vec_env import VecEnvStepReturn

from bayes_envs.core import RL2_KEYS

#: RL²-input keys that are never normalised as observations (``prev_reward`` follows the reward).
_NEVER_NORMALISED = ("prev_action", "prev_reward", "new_episode")
#: Settings stored with the statistics (``state_dict``) and used by ``from_state``.
_SETTINGS = ("norm_obs", "norm_reward", "norm_prev_reward", "clip_obs", "clip_reward", "gamma", "epsilon")


def _is_rl2_space(space: spaces.Space) -> bool:
    return isinstance(space, spaces.Dict) and set(RL2_KEYS) <= set(space.spaces)


def _rms_state(rms: RunningMeanStd) -> dict[str, Any]:
    return {
        "mean": np.array(rms.mean, np.float64),
        "var": np.array(rms.var, np.float64),
        "count": float(rms.count),
    }


def _load_rms(rms: RunningMeanStd, state: dict[str, Any]) -> None:
    mean = np.asarray(state["mean"], np.float64).reshape(np.shape(rms.mean))
    var = np.asarray(state["var"], np.float64).reshape(np.shape(rms.var))
    rms.mean, rms.var, rms.count = mean.copy(), var.copy(), float(state["count"])


class RL2VecNormalize(VecNormalize):
    """``VecNormalize`` for the RL²-input Dict observation (see the module docstring).

    :param venv: the vec env (e.g. :func:`bayes_envs.make_vec`); plain ``Box`` observations (made
        with ``rl2_inputs=False``) are normalised as ``VecNormalize`` does.
    :param training: update the statistics (``False``: frozen).
    :param norm_obs: normalise ``obs["obs"]`` (the ``norm_obs_keys``).
    :param norm_reward: divide rewards by the running std of the discounted return.
    :param gamma: discount of that return (use the PPO ``gamma``).
    :param norm_obs_keys: Dict keys normalised as observations (default ``["obs"]`` for RL² inputs);
        ``prev_action``, ``prev_reward`` and ``new_episode`` are not allowed.
    :param norm_prev_reward: scale ``obs["prev_reward"]`` with the reward statistics (default:
        ``norm_reward``).
    """

    def __init__(
        self,
        venv: VecEnv,
        training: bool = True,
        norm_obs: bool = True,
        norm_reward: bool = True,
        clip_obs: float = 10.0,
        clip_reward: float = 10.0,
        gamma: float = 0.99,
        epsilon: float = 1e-8,
        norm_obs_keys: list[str] | None = None,
        norm_prev_reward: bool | None = None,
    ) -> None:
        rl2 = _is_rl2_space(venv.observation_space)
        if rl2:
            norm_obs_keys = ["obs"] if norm_obs_keys is None else list(norm_obs_keys)
            touched = sorted(set(norm_obs_keys) & set(_NEVER_NORMALISED))
            if touched:
                raise ValueError(
                    f"norm_obs_keys {touched} cannot be normalised as observations: prev_action and "
                    "new_episode are kept, prev_reward follows the reward statistics (norm_prev_reward)"
                )
        super().__init__(
            venv,
            training=training,
            norm_obs=norm_obs,
            norm_reward=norm_reward,
            clip_obs=clip_obs,
            clip_reward=clip_reward,
            gamma=gamma,
            epsilon=epsilon,
            norm_obs_keys=norm_obs_keys,
        )
        # The sub-spaces are configuration that VecNormalize only needs while constructing; dropping
        # the reference keeps the wrapper's state plain data (checkpoints encode it attribute-wise).
        self.__dict__.pop("obs_spaces", None)
        self.rl2_inputs = rl2
        self.norm_prev_reward = bool(norm_reward if norm_prev_reward is None else norm_prev_reward) and rl2
        self.observation_space = self._normalised_space(self.observation_space)

    def _normalised_space(self, space: spaces.Space) -> spaces.Space:
        """The space of what the policy sees: normalised keys lie in ``±clip_obs`` and a scaled
        ``prev_reward`` in ``±clip_reward`` (a new space: the wrapped env's is left as it is), so that a
        policy's bounds check (e.g. ``BeliefPolicy.predict``) holds for normalised observations."""

        def clipped(box: spaces.Space, bound: float) -> spaces.Box:
            return spaces.Box(-bound, bound, shape=box.shape, dtype=np.float32)

        if isinstance(space, spaces.Box):
            return clipped(space, self.clip_obs) if self.norm_obs else space
        if not isinstance(space, spaces.Dict):
            return space
        parts = dict(space.spaces)
        if self.norm_obs:
            for key in self.norm_obs_keys:
                parts[key] = clipped(parts[key], self.clip_obs)
        if self.norm_prev_reward:
            parts["prev_reward"] = clipped(parts["prev_reward"], self.clip_reward)
        return spaces.Dict(parts)

    # ------------------------------------------------------------------ normalisation
    def scale_reward(self, reward: np.ndarray) -> np.ndarray:
        """``reward / sqrt(var(return) + ε)`` clipped to ``±clip_reward`` (float32)."""
        scaled = np.clip(
            np.asarray(reward) / np.sqrt(self.ret_rms.var + self.epsilon), -self.clip_reward, self.clip_reward
        )
        return scaled.astype(np.float32)

    def normalize_obs(self, obs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        """``VecNormalize.normalize_obs`` plus ``prev_reward`` scaled by the reward statistics."""
        normalised = super().normalize_obs(obs)
        if self.norm_prev_reward and isinstance(obs, dict):
            normalised["prev_reward"] = self.scale_reward(obs["prev_reward"])
        return normalised

    def unnormalize_obs(self, obs: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        raw = super().unnormalize_obs(obs)
        if self.norm_prev_reward and isinstance(obs, dict):
            raw["prev_reward"] = np.asarray(obs["prev_reward"]) * np.sqrt(self.ret_rms.var + self.epsilon)
        return raw

    def step_wait(self) -> VecEnvStepReturn:
        """``VecNormalize.step_wait``, with the ``prev_reward`` of the returned observation scaled by
        the statistics *after* this step's update, so that it equals the returned (normalised) reward.

        SB3 normalises the observation before it updates the reward statistics (and the terminal
        observations after), so only that one entry is formed again. The discounted return is reset
        where ``dones`` marks the end of a trial: it runs over the whole trial.
        """
        obs, rewards, dones, infos = super().step_wait()
        if self.norm_prev_reward and isinstance(obs, dict):
            obs["prev_reward"] = self.scale_reward(self.old_obs["prev_reward"])
        return obs, rewards, dones, infos

    # ------------------------------------------------------------------ state
    def state_dict(self) -> dict[str, Any]:
        """The settings and statistics as plain data (numpy arrays, floats, strings); copies."""
        obs_rms: Any = None  # VecNormalize has no obs_rms without norm_obs
        if self.norm_obs and isinstance(self.obs_rms, dict):
            obs_rms = {key: _rms_state(rms) for key, rms in self.obs_rms.items()}
        elif self.norm_obs:
            obs_rms = _rms_state(self.obs_rms)
        return {
            **{name: getattr(self, name) for name in _SETTINGS},
            "norm_obs_keys": list(self.norm_obs_keys) if self.norm_obs_keys is not None else None,
            "obs_rms": obs_rms,
            "ret_rms": _rms_state(self.ret_rms),
        }

    def load_state_dict(self, state: dict[str, Any]) -> None:
        """Put statistics of :meth:`state_dict` back (the settings must match this wrapper's)."""
        for name in _SETTINGS:
            if name in state and state[name] != getattr(self, name):
                raise ValueError(
                    f"normalisation setting {name}: saved {state[name]!r}, wrapper {getattr(self, name)!r}"
                )
        if self.norm_obs:
            if isinstance(self.obs_rms, dict):
                saved = state["obs_rms"]
                if not isinstance(saved, dict) or set(saved) != set(self.obs_rms):
                    raise ValueError(
                        f"saved observation statistics for {saved and sorted(saved)}, "
                        f"wrapper normalises {sorted(self.obs_rms)}"
                    )
                for key, rms in self.obs_rms.items():
                    _load_rms(rms, saved[key])
            else:
                _load_rms(self.obs_rms, state["obs_rms"])
        _load_rms(self.ret_rms, state["ret_rms"])

    @classmethod
    def from_state(cls, state: dict[str, Any], venv: VecEnv, training: bool = False) -> RL2VecNormalize:
        """A wrapper around ``venv`` with the settings and statistics of a :meth:`state_dict`."""
        settings = {name: state[name] for name in _SETTINGS if name in state}
        wrapper = cls(venv, training=training, norm_obs_keys=state.get("norm_obs_keys"), **settings)
        wrapper.load_state_dict(state)
        return wrapper

    @classmethod
    def frozen(cls, state: dict[str, Any], venv: VecEnv) -> RL2VecNormalize:
        """An evaluation wrapper around ``venv`` with the statistics of a :meth:`state_dict`: never
        updated, raw rewards out (``prev_reward`` still scaled as in training)."""
        prev_reward = state.get("norm_prev_reward", state.get("norm_reward", True))
        return cls.from_state({**state, "norm_reward": False, "norm_prev_reward": prev_reward}, venv)

    def frozen_copy(self, venv: VecEnv) -> RL2VecNormalize:
        """:meth:`frozen` with this wrapper's statistics (copies: this wrapper is not touched)."""
        return self.frozen(self.state_dict(), venv)

    def to_json(self) -> str:
        """:meth:`state_dict` as JSON text (floats written exactly)."""

        def plain(value: Any) -> Any:
            if isinstance(value, np.ndarray):
                return {"shape": list(value.shape), "values": value.reshape(-1).tolist()}
            if isinstance(value, dict):
                return {key: plain(item) for key, item in value.items()}
            return value

        return json.dumps(plain(self.state_dict()))

    @staticmethod
    def state_from_json(text: str) -> dict[str, Any]:
        """The :meth:`state_dict` encoded by :meth:`to_json`."""

        def arrays(value: Any) -> Any:
            if isinstance(value, dict) and set(value) == {"shape", "values"}:
                return np.asarray(value["values"], np.float64).reshape(value["shape"])
            if isinstance(value, dict):
                return {key: arrays(item) for key, item in value.items()}
            return value

        return arrays(json.loads(text))

    def save_json(self, path: str | os.PathLike[str]) -> None:
        """Write the settings and statistics to a JSON file (no pickle)."""
        with open(path, "w") as stream:
            stream.write(self.to_json())

    @classmethod
    def read_json(cls, path: str | os.PathLike[str]) -> dict[str, Any]:
        """The :meth:`state_dict` saved by :meth:`save_json`."""
        with open(path) as stream:
            return cls.state_from_json(stream.read())

    @classmethod
    def load_json(cls, path: str | os.PathLike[str], venv: VecEnv, training: bool = False) -> RL2VecNormalize:
        """A wrapper around ``venv`` with the statistics of :meth:`save_json` (frozen unless ``training``)."""
        return cls.from_state(cls.read_json(path), venv, training=training)
