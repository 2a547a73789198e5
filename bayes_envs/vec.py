"""Vectorised environments: a native numpy batch for the light envs, SB3 VecEnvs for the others."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import gymnasium as gym
import numpy as np
from gymnasium.envs.registration import load_env_creator
from gymnasium.utils.seeding import np_random
from stable_baselines3.common.vec_env import DummyVecEnv, SubprocVecEnv, VecEnv, VecMonitor
from stable_baselines3.common.vec_env.base_vec_env import VecEnvIndices, VecEnvStepReturn

from bayes_envs.core import MetaEnv, TrialBatch, check_int


def check_seed(seed: Any) -> int | None:
    """``seed`` if it is ``None`` or an int >= 0 (the seeds Gymnasium accepts), else raise naming it."""
    return None if seed is None else check_int("seed", seed, 0)


class BatchedVecEnv(VecEnv):
    """``n_envs`` trials of a :class:`~bayes_envs.core.TrialBatch` family stepped as one numpy batch.

    Env ``i`` seeded with ``s + i`` (SB3's ``VecEnv.seed(s)``) produces exactly the trajectory of a
    single env reset with ``seed=s + i`` under the same actions. Trials restart automatically at
    their end, with the final observation in ``info["terminal_observation"]``, as SB3 expects.
    """

    def __init__(
        self,
        env_class: type[MetaEnv],
        n_envs: int,
        render_mode: str | None = None,
        rl2_inputs: bool = True,
        **constants: Any,
    ) -> None:
        n_envs = check_int("n_envs", n_envs, 1)
        if render_mode is not None and render_mode not in env_class.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {env_class.metadata['render_modes']} or None, "
                f"got {render_mode!r}"
            )
        self.env_class = env_class
        self.render_mode = render_mode
        self.batch: TrialBatch = env_class.batch_class(n_envs, rl2_inputs=rl2_inputs, **constants)
        self._rngs: list[np.random.Generator | None] = [None] * n_envs
        self._actions: np.ndarray | None = None
        super().__init__(n_envs, self.batch.observation_space, self.batch.action_space)

    @property
    def tasks(self) -> list[Any]:
        """The hidden task of each env's current trial."""
        return list(self.batch.tasks)

    def seed(self, seed: int | None = None) -> Sequence[int | None]:
        return super().seed(check_seed(seed))

    def _start(self, indices: Sequence[int]) -> None:
        tasks = []
        for i in indices:
            if self._seeds[i] is not None or self._rngs[i] is None:
                self._rngs[i] = np_random(self._seeds[i])[0]
            task = self._options[i].get("task")
            tasks.append(None if task is None else self.batch.check_task(task))
        self.batch.start_trials(indices, [self._rngs[i] for i in indices], tasks)
        for i in indices:
            self.reset_infos[i] = {"task": self.batch.tasks[i], "inner_episode": 0}

    def reset(self) -> Any:
        for options in self._options:
            unknown = set(options) - {"task"}
            if unknown:
                raise ValueError(f"unknown reset option(s) {sorted(unknown)}; allowed: ['task']")
        self._start(range(self.num_envs))
        self._reset_seeds()
        self._reset_options()
        return self.batch.observation()

    def step_async(self, actions: np.ndarray) -> None:
        self._actions = actions

    def step_wait(self) -> VecEnvStepReturn:
        if self._actions is None:
            raise RuntimeError("step_wait() without step_async()")
        actions, self._actions = self._actions, None
        rewards, dones, infos = self.batch.step(actions)
        observation = self.batch.observation()
        finished = np.flatnonzero(dones).tolist()
        if finished:
            for i in finished:
                if isinstance(observation, dict):
                    infos[i]["terminal_observation"] = {key: value[i] for key, value in observation.items()}
                else:
                    infos[i]["terminal_observation"] = observation[i]
            self._start(finished)
            observation = self.batch.observation()
        return observation, rewards, dones, infos

    def close(self) -> None:
        pass

    def get_images(self) -> Sequence[np.ndarray | None]:
        if self.render_mode != "rgb_array":
            return [None] * self.num_envs
        return [self.batch.render_rgb(i) for i in range(self.num_envs)]

    # The batch plays the role of the sub-envs: attributes are read from and written to it.
    def get_attr(self, attr_name: str, indices: VecEnvIndices = None) -> list[Any]:
        index_list = list(self._get_indices(indices))
        if attr_name == "render_mode":
            return [self.render_mode] * len(index_list)
        if attr_name == "task":
            return [self.batch.tasks[i] for i in index_list]
        value = getattr(self.batch, attr_name)
        return [value] * len(index_list)

    def set_attr(self, attr_name: str, value: Any, indices: VecEnvIndices = None) -> None:
        if attr_name != "task":
            raise AttributeError(f"only 'task' can be set on a {type(self).__name__}, not {attr_name!r}")
        for i in self._get_indices(indices):
            self.batch.set_task(i, value)

    def env_method(
        self, method_name: str, *method_args: Any, indices: VecEnvIndices = None, **method_kwargs: Any
    ) -> list[Any]:
        index_list = list(self._get_indices(indices))
        if method_name == "set_task":
            for i in index_list:
                self.batch.set_task(i, *method_args, **method_kwargs)
            return [None] * len(index_list)
        if method_name == "sample_task":
            rng = method_args[0] if method_args else method_kwargs.get("rng")
            return [self.batch.sample_task(rng if rng is not None else self._rngs[i]) for i in index_list]
        if method_name == "render":
            return [
                self.batch.render_rgb(i) if self.render_mode == "rgb_array" else self.batch.render_ansi(i)
                for i in index_list
            ]
        raise AttributeError(f"{type(self).__name__} has no env method {method_name!r}")

    def env_is_wrapped(self, wrapper_class: type[gym.Wrapper], indices: VecEnvIndices = None) -> list[bool]:
        return [False] * len(list(self._get_indices(indices)))


def _env_class(env_id: str) -> tuple[type | None, dict[str, Any]]:
    spec = gym.spec(env_id.split(":", 1)[-1])
    entry = load_env_creator(spec.entry_point) if isinstance(spec.entry_point, str) else spec.entry_point
    is_batched = isinstance(entry, type) and issubclass(entry, MetaEnv) and hasattr(entry, "batch_class")
    return (entry if is_batched else None), dict(spec.kwargs)


def make_vec(
    env_id: str,
    n_envs: int,
    seed: int | None = None,
    *,
    rl2_inputs: bool = True,
    parallel: bool = False,
    monitor: bool = True,
    render_mode: str | None = None,
    **env_kwargs: Any,
) -> VecEnv:
    """Build a Stable-Baselines3 ``VecEnv`` of ``n_envs`` copies of ``env_id``.

    The light envs (bandit, grid, regression) get the native numpy :class:`BatchedVecEnv` (no
    Python loop over envs per step); other envs a ``DummyVecEnv``, or a ``SubprocVecEnv`` with
    ``parallel=True``. Env ``i`` is seeded with ``seed + i``.

    :param seed: ``None`` (fresh entropy) or an int >= 0; anything else raises (``TypeError`` for a
        ``bool``, ``str`` or ``float``, ``ValueError`` for a negative int).
    :param rl2_inputs: Dict observations with previous action, previous reward and new-episode flag.
    :param monitor: wrap in ``VecMonitor`` so that SB3 logs trial returns (``rollout/ep_rew_mean``).
    :param env_kwargs: the env's constants, e.g. ``size=7`` or ``split="test"``.
    """
    n_envs = check_int("n_envs", n_envs, 1)
    seed = check_seed(seed)
    if ":" in env_id:
        __import__(env_id.split(":", 1)[0])
    env_class, spec_kwargs = _env_class(env_id)
    kwargs = {**spec_kwargs, **env_kwargs}
    venv: VecEnv
    if env_class is not None and not parallel:
        venv = BatchedVecEnv(env_class, n_envs, render_mode=render_mode, rl2_inputs=rl2_inputs, **kwargs)
    else:

        def factory() -> gym.Env:
            # A SubprocVecEnv worker (spawn/forkserver) starts without this package imported, so
            # without its registrations: import it there before making the env.
            import bayes_envs  # noqa: F401

            return gym.make(env_id, render_mode=render_mode, rl2_inputs=rl2_inputs, **env_kwargs)

        venv = (SubprocVecEnv if parallel else DummyVecEnv)([factory] * n_envs)
    venv.seed(seed)
    return VecMonitor(venv) if monitor else venv
