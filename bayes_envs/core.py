"""Trial logic shared by every environment family.

A meta-RL *trial* (the BAMDP horizon H+) is one Gymnasium episode: a hidden task is drawn at
``reset()``, stays fixed for the whole trial, and the trial holds ``episodes_per_trial`` *inner
episodes* of at most ``episode_length`` steps each. At an inner-episode boundary the agent is put
back at its start state and the env returns that start observation (flagged ``new_episode``);
``terminated`` is only raised at the end of the trial, so recurrent policies, which reset their
memory on ``done``, keep it across inner episodes.

Every family implements its dynamics once, batched over ``B`` independent copies, as a
:class:`TrialBatch` subclass. :class:`MetaEnv` runs a batch of one as a Gymnasium env and
:class:`bayes_envs.vec.BatchedVecEnv` runs ``n_envs`` of them as a Stable-Baselines3 ``VecEnv``,
so the single and the vectorised env cannot drift apart.
"""

from __future__ import annotations

import inspect
from abc import ABC, abstractmethod
from collections.abc import Sequence
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
from gymnasium import spaces

SPLITS = ("train", "test")
RL2_KEYS = ("obs", "prev_action", "prev_reward", "new_episode")


def check_int(name: str, value: Any, minimum: int) -> int:
    """Return ``value`` as an int, or raise ``TypeError``/``ValueError`` naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r} ({type(value).__name__})")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value}")
    return int(value)


def check_bool(name: str, value: Any) -> bool:
    """Return ``value`` if it is a bool, or raise ``TypeError`` naming ``name``."""
    if not isinstance(value, bool):
        raise TypeError(f"{name} must be a bool, got {value!r}")
    return value


def check_positive_float(name: str, value: Any) -> float:
    """Return ``value`` as a finite float > 0, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a finite float > 0, got {value!r} ({type(value).__name__})")
    if not np.isfinite(value) or value <= 0:
        raise ValueError(f"{name} must be a finite float > 0, got {value}")
    return float(value)


def check_finite_float(name: str, value: Any) -> float:
    """Return ``value`` as a finite float, or raise naming ``name``."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating, np.integer)):
        raise TypeError(f"{name} must be a finite float, got {value!r} ({type(value).__name__})")
    if not np.isfinite(value):
        raise ValueError(f"{name} must be a finite float, got {value}")
    return float(value)


#: The rewards' dtype is float32 (SB3's buffers, the RL² ``prev_reward`` input): its largest value.
FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_reward_scale(name: str, per_step: float, horizon: int) -> None:
    """Raise ``ValueError`` unless ``per_step`` (the largest ``|reward|`` the constant ``name`` adds
    in one step) over a trial of ``horizon`` steps stays finite in float32, so that no reward, inner
    return or trial return overflows to ``inf``."""
    if not abs(per_step) * horizon <= FLOAT32_MAX:  # also false for NaN
        raise ValueError(
            f"{name} is too large: its reward term reaches {per_step:g} per step, which over a trial of "
            f"{horizon} steps overflows float32, the rewards' dtype (that term times the trial's steps "
            f"must be <= {FLOAT32_MAX:.3g})"
        )


def check_split(split: Any) -> str:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def action_feature_space(action_space: spaces.Space) -> spaces.Box:
    """The space of the ``prev_action`` input: one-hot for ``Discrete``, the raw action for ``Box``."""
    if isinstance(action_space, spaces.Discrete):
        return spaces.Box(0.0, 1.0, (int(action_space.n),), np.float32)
    if isinstance(action_space, spaces.Box):
        return spaces.Box(action_space.low, action_space.high, action_space.shape, np.float32)
    raise TypeError(f"unsupported action space {action_space}")


def rl2_observation_space(
    state_space: spaces.Box, action_space: spaces.Space, reward_range: tuple[float, float]
) -> spaces.Dict:
    """The Dict observation ``{"obs", "prev_action", "prev_reward", "new_episode"}`` of RL²-style agents."""
    # prev_reward is 0 before the first step of a trial, so 0 must be inside its bounds.
    low, high = min(reward_range[0], 0.0), max(reward_range[1], 0.0)
    return spaces.Dict(
        {
            "obs": state_space,
            "prev_action": action_feature_space(action_space),
            "prev_reward": spaces.Box(np.float32(low), np.float32(high), (1,), np.float32),
            "new_episode": spaces.Box(0.0, 1.0, (1,), np.float32),
        }
    )


class TrialBatch(ABC):
    """``B`` independent trials of one environment family, stepped together with numpy.

    Subclasses give the family's spaces, task distribution and batched dynamics through the
    ``_``-prefixed hooks; this class owns the trial clock (inner episodes, returns), the RL²
    inputs, the task API and the validation of actions, once for every family.

    Attributes readable by subclasses: ``trial_step`` ``[B]`` (steps since trial start) and
    ``episode_step`` ``[B]`` (steps since inner-episode start).
    """

    #: The dataclass of this family's tasks.
    task_type: ClassVar[type]

    def __init__(
        self,
        batch_size: int,
        *,
        episode_length: int,
        episodes_per_trial: int,
        split: str = "train",
        rl2_inputs: bool = True,
    ) -> None:
        self.batch_size = check_int("batch_size", batch_size, 1)
        self.episode_length = check_int("episode_length", episode_length, 1)
        self.episodes_per_trial = check_int("episodes_per_trial", episodes_per_trial, 1)
        self.split = check_split(split)
        self.rl2_inputs = check_bool("rl2_inputs", rl2_inputs)
        b = self.batch_size
        self.tasks: list[Any] = [None] * b
        self.trial_step = np.zeros(b, np.int64)
        self.episode_step = np.zeros(b, np.int64)
        self.inner_episode = np.zeros(b, np.int64)
        self.episode_return = np.zeros(b, np.float64)
        self.active = np.zeros(b, bool)
        self._prev_action: np.ndarray | None = None
        self.prev_reward = np.zeros(b, np.float32)
        self.new_episode = np.ones(b, np.float32)

    # ------------------------------------------------------------------ family hooks
    #: The space of one env's plain observation (its state); set by subclasses.
    state_space: spaces.Box
    #: The space of one env's action; set by subclasses.
    action_space: spaces.Space
    #: Bounds ``(low, high)`` of one step's reward; set by subclasses.
    reward_range: tuple[float, float]

    @abstractmethod
    def sample_task(self, rng: np.random.Generator) -> Any:
        """Draw a task from this batch's split of the task distribution."""

    @abstractmethod
    def _check_task(self, task: Any) -> Any:
        """Return the task if it is valid for these constants, else raise ``TypeError``/``ValueError``."""

    @abstractmethod
    def _set_task(self, index: int, task: Any) -> None:
        """Store the (checked) task parameters of env ``index``."""

    def _begin_trial(self, index: int, rng: np.random.Generator) -> None:  # noqa: B027
        """Draw the per-trial randomness of env ``index`` (noise, inputs); the default draws none."""

    @abstractmethod
    def _begin_episode(self, mask: np.ndarray) -> None:
        """Put the envs where ``mask`` ``[B]`` is true at the start state of an inner episode."""

    @abstractmethod
    def _observe(self) -> np.ndarray:
        """The plain observations ``[B, *state_space.shape]`` of all envs."""

    @abstractmethod
    def _transition(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Apply checked ``actions`` to all envs.

        :return: rewards ``[B]``, an early inner-episode end ``[B]`` bool (e.g. a fall), and
            extra per-env info columns, each ``[B]`` or ``[B, ...]``.
        """

    # ------------------------------------------------------------------ shared logic
    @property
    def observation_space(self) -> spaces.Space:
        if self.rl2_inputs:
            return rl2_observation_space(self.state_space, self.action_space, self.reward_range)
        return self.state_space

    def check_task(self, task: Any) -> Any:
        if not isinstance(task, self.task_type):
            raise TypeError(f"task must be a {self.task_type.__name__}, got {type(task).__name__}")
        return self._check_task(task)

    def set_task(self, index: int, task: Any) -> None:
        """Replace the hidden task of env ``index`` for the rest of its current trial."""
        task = self.check_task(task)
        self._set_task(index, task)
        self.tasks[index] = task

    def start_trials(
        self, indices: Sequence[int], rngs: Sequence[np.random.Generator], tasks: Sequence[Any]
    ) -> None:
        """Start a new trial in each env of ``indices``, drawing its task from ``rngs[i]`` unless given."""
        if self._prev_action is None:
            self._prev_action = np.zeros((self.batch_size, *self._action_features_shape), np.float32)
        for index, rng, task in zip(indices, rngs, tasks, strict=True):
            # The task is drawn before the trial noise so that pinning a task leaves the noise unchanged.
            task = self.sample_task(rng) if task is None else task
            self.set_task(index, task)
            self._begin_trial(index, rng)
        idx = np.asarray(indices, np.int64)
        self.trial_step[idx] = 0
        self.episode_step[idx] = 0
        self.inner_episode[idx] = 0
        self.episode_return[idx] = 0.0
        self._prev_action[idx] = 0.0
        self.prev_reward[idx] = 0.0
        self.new_episode[idx] = 1.0
        self.active[idx] = True
        mask = np.zeros(self.batch_size, bool)
        mask[idx] = True
        self._begin_episode(mask)

    @property
    def _action_features_shape(self) -> tuple[int, ...]:
        return action_feature_space(self.action_space).shape

    def observation(self) -> np.ndarray | dict[str, np.ndarray]:
        """The current batched observation (fresh arrays, safe to keep)."""
        state = self._observe().astype(np.float32, copy=True)
        if not self.rl2_inputs:
            return state
        return {
            "obs": state,
            "prev_action": self._prev_action.copy(),
            "prev_reward": self.prev_reward[:, None].copy(),
            "new_episode": self.new_episode[:, None].copy(),
        }

    def check_actions(self, actions: Any) -> np.ndarray:
        """Validate a batch of actions against the action space: ``TypeError`` for actions of the wrong
        kind (a float, bool or string for a ``Discrete`` space; a string, complex or bool for a ``Box``),
        ``ValueError`` for a wrong shape or a value outside the space (or NaN/inf)."""
        space = self.action_space
        b = self.batch_size
        arr = np.asarray(actions)
        if isinstance(space, spaces.Discrete):
            arr = arr.reshape(-1) if arr.size == b else arr
            if arr.shape != (b,):
                raise ValueError(f"expected {b} discrete action(s), got shape {np.shape(actions)}")
            if not np.issubdtype(arr.dtype, np.integer):
                # Floats (even 2.0), bools, strings...: a float action is a caller's mistake (e.g. a
                # continuous policy on a discrete env), so it is not silently rounded.
                raise TypeError(
                    f"discrete actions must be integers (an int or an integer array) in "
                    f"[{space.start}, {space.start + space.n}), got {actions!r} of dtype {arr.dtype}"
                )
            arr = arr.astype(np.int64)
            bad = (arr < space.start) | (arr >= space.start + space.n)
            if bad.any():
                raise ValueError(
                    f"action {arr[bad][0]} outside the action space: allowed integers "
                    f"{space.start}..{space.start + space.n - 1}"
                )
            return arr - space.start
        assert isinstance(space, spaces.Box)
        if not (np.issubdtype(arr.dtype, np.floating) or np.issubdtype(arr.dtype, np.integer)):
            # Strings ("0.1"), complex numbers (1+0j), bools and objects would be cast silently.
            raise TypeError(
                f"continuous actions must be real numbers (a float or a float/int array), "
                f"got {actions!r} of dtype {arr.dtype}"
            )
        try:
            arr = arr.astype(np.float64).reshape((b, *space.shape))
        except (ValueError, TypeError) as error:
            raise ValueError(
                f"expected actions of shape {(b, *space.shape)} for {b} env(s), got shape {np.shape(actions)}"
            ) from error
        if not np.all(np.isfinite(arr)):
            raise ValueError(f"actions must be finite (no NaN/inf), got {actions!r}")
        if np.any(arr < space.low) or np.any(arr > space.high):
            raise ValueError(
                f"action outside the action space [{space.low.min()}, {space.high.max()}]: {actions!r}"
            )
        return arr

    def _action_features(self, actions: np.ndarray) -> np.ndarray:
        space = self.action_space
        if isinstance(space, spaces.Discrete):
            return np.eye(int(space.n), dtype=np.float32)[actions]
        return actions.astype(np.float32)

    def step(self, actions: Any) -> tuple[np.ndarray, np.ndarray, list[dict[str, Any]]]:
        """Step every env once.

        :return: rewards ``[B]`` float32, trial end ``[B]`` bool and one info dict per env with the
            task, ``inner_episode`` (index of the inner episode the step belongs to), ``inner_done``,
            ``inner_return`` (where ``inner_done``) and the family's extra columns. Envs whose trial
            ended must be restarted with :meth:`start_trials` before the next step.
        """
        if not self.active.all():
            raise RuntimeError(
                "step() called on a trial that has not started or has ended: call reset() first"
            )
        actions = self.check_actions(actions)
        rewards, early_end, columns = self._transition(actions)
        rewards = np.asarray(rewards, np.float64)
        self.trial_step += 1
        self.episode_step += 1
        self.episode_return += rewards
        inner_done = np.asarray(early_end, bool) | (self.episode_step >= self.episode_length)
        trial_done = inner_done & (self.inner_episode == self.episodes_per_trial - 1)
        next_episode = inner_done & ~trial_done

        infos = [
            {"task": task, "inner_episode": episode, "inner_done": done}
            for task, episode, done in zip(
                self.tasks, self.inner_episode.tolist(), inner_done.tolist(), strict=True
            )
        ]
        for i in np.flatnonzero(inner_done).tolist():
            infos[i]["inner_return"] = float(self.episode_return[i])
        for key, column in columns.items():
            for info, value in zip(infos, np.asarray(column).tolist(), strict=True):
                info[key] = value

        self._prev_action = self._action_features(actions)
        self.prev_reward = rewards.astype(np.float32)
        self.new_episode = next_episode.astype(np.float32)
        if next_episode.any():
            self.inner_episode[next_episode] += 1
            self.episode_step[next_episode] = 0
            self.episode_return[next_episode] = 0.0
            self._begin_episode(next_episode)
        self.active &= ~trial_done
        return rewards.astype(np.float32), trial_done, infos

    # ------------------------------------------------------------------ rendering hooks
    def render_rgb(self, index: int) -> np.ndarray:
        """An ``[H, W, 3]`` uint8 picture of env ``index``."""
        raise NotImplementedError(f"{type(self).__name__} has no rgb_array rendering")

    def render_ansi(self, index: int) -> str:
        """A text picture of env ``index``."""
        raise NotImplementedError(f"{type(self).__name__} has no ansi rendering")


def batch_constants(batch_class: type[TrialBatch]) -> dict[str, inspect.Parameter]:
    """The constants of a :class:`TrialBatch` family: its constructor's keywords with their defaults.

    Read from the ``__init__`` of ``batch_class`` and, while an ``__init__`` forwards ``**constants``,
    of its bases (a keyword a subclass declares overrides the base's). ``batch_size`` and
    ``rl2_inputs`` are not constants. This is the one declaration of a family's constants and
    defaults: the env's constructor signature is built from it (:class:`MetaEnv`).

    :raises TypeError: a constant without a default.
    """
    constants: dict[str, inspect.Parameter] = {}
    for klass in batch_class.__mro__:
        if "__init__" not in vars(klass):
            continue
        forwards = False
        for parameter in list(inspect.signature(vars(klass)["__init__"]).parameters.values())[1:]:
            if parameter.kind is inspect.Parameter.VAR_KEYWORD:
                forwards = True
            elif parameter.kind is inspect.Parameter.VAR_POSITIONAL:
                continue
            elif parameter.name not in ("batch_size", "rl2_inputs") and parameter.name not in constants:
                if parameter.default is inspect.Parameter.empty:
                    raise TypeError(f"{batch_class.__name__} constant {parameter.name!r} has no default")
                constants[parameter.name] = parameter.replace(kind=inspect.Parameter.KEYWORD_ONLY)
        if not forwards:
            break
    return constants


def _constants_init(batch_class: type[TrialBatch]) -> Any:
    """``__init__(self, render_mode=None, rl2_inputs=True, *, <constants of batch_class>)`` for an env."""
    signature = inspect.Signature(
        [
            inspect.Parameter("self", inspect.Parameter.POSITIONAL_OR_KEYWORD),
            inspect.Parameter("render_mode", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None),
            inspect.Parameter("rl2_inputs", inspect.Parameter.POSITIONAL_OR_KEYWORD, default=True),
            *batch_constants(batch_class).values(),
        ]
    )

    def __init__(
        self: MetaEnv, render_mode: str | None = None, rl2_inputs: bool = True, **constants: Any
    ) -> None:
        try:
            signature.bind(self, render_mode, rl2_inputs, **constants)
        except TypeError as error:
            names = list(signature.parameters)[3:]
            raise TypeError(f"{type(self).__name__}: {error}; its constants are {names}") from None
        MetaEnv.__init__(self, render_mode=render_mode, rl2_inputs=rl2_inputs, **constants)

    __init__.__signature__ = signature  # type: ignore[attr-defined]
    __init__.__doc__ = f"The constants and defaults are those of :class:`{batch_class.__name__}`."
    __init__._constants_of = batch_class  # type: ignore[attr-defined]
    return __init__


class MetaEnv(gym.Env):
    """A Gymnasium env running one trial at a time of a :class:`TrialBatch` family.

    Subclasses set :attr:`batch_class`; their constructor keywords are the family's constants. A
    subclass that does not define ``__init__`` gets one whose signature lists the constants and
    defaults declared by the batch class (:func:`batch_constants`), so they are declared once.

    Task API: :meth:`sample_task`, :meth:`set_task`, :attr:`task`, and ``reset(options={"task": task})``
    to pin the task of the next trial. ``reset(seed=s)`` makes the task sequence and all
    randomness reproducible.
    """

    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array", "ansi"], "render_fps": 4}
    batch_class: ClassVar[type[TrialBatch]]

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        inherited = cls.__init__
        generated = getattr(inherited, "_constants_of", None) is not None
        if "batch_class" in vars(cls) and (inherited is MetaEnv.__init__ or generated):
            init = _constants_init(cls.batch_class)
            init.__qualname__, init.__module__ = f"{cls.__qualname__}.__init__", cls.__module__
            cls.__init__ = init  # type: ignore[method-assign]

    def __init__(self, render_mode: str | None = None, rl2_inputs: bool = True, **constants: Any) -> None:
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(
                f"render_mode must be one of {self.metadata['render_modes']} or None, got {render_mode!r}"
            )
        self.render_mode = render_mode
        self.batch = self.batch_class(1, rl2_inputs=rl2_inputs, **constants)
        self.observation_space = self.batch.observation_space
        self.action_space = self.batch.action_space

    @property
    def task(self) -> Any:
        """The hidden task of the current trial (``None`` before the first reset)."""
        return self.batch.tasks[0]

    @property
    def split(self) -> str:
        return self.batch.split

    @property
    def episode_length(self) -> int:
        return self.batch.episode_length

    @property
    def episodes_per_trial(self) -> int:
        return self.batch.episodes_per_trial

    def sample_task(self, rng: np.random.Generator | None = None) -> Any:
        """Draw a task of this env's split (from ``rng``, or from the env's own generator)."""
        return self.batch.sample_task(self.np_random if rng is None else rng)

    def set_task(self, task: Any) -> None:
        """Replace the hidden task for the rest of the current trial (``reset(options=...)``: the next)."""
        if self.batch.tasks[0] is None:
            raise RuntimeError("set_task() before reset(): call reset(options={'task': task}) instead")
        self.batch.set_task(0, task)

    def _single(self, batched: np.ndarray | dict[str, np.ndarray]) -> np.ndarray | dict[str, np.ndarray]:
        if isinstance(batched, dict):
            return {key: value[0] for key, value in batched.items()}
        return batched[0]

    def reset(
        self, *, seed: int | None = None, options: dict[str, Any] | None = None
    ) -> tuple[Any, dict[str, Any]]:
        super().reset(seed=seed)
        options = options or {}
        unknown = set(options) - {"task"}
        if unknown:
            raise ValueError(f"unknown reset option(s) {sorted(unknown)}; allowed: ['task']")
        task = options.get("task")
        if task is not None:
            task = self.batch.check_task(task)
        self.batch.start_trials([0], [self.np_random], [task])
        return self._single(self.batch.observation()), {"task": self.task, "inner_episode": 0}

    def step(self, action: Any) -> tuple[Any, float, bool, bool, dict[str, Any]]:
        if self.batch.tasks[0] is None:
            raise RuntimeError("step() called before reset(): call reset() first")
        rewards, trial_done, infos = self.batch.step(np.asarray(action)[None])
        return self._single(self.batch.observation()), float(rewards[0]), bool(trial_done[0]), False, infos[0]

    def render(self) -> np.ndarray | str | None:
        if self.render_mode is None:
            gym.logger.warn("render() called without a render_mode; pass render_mode='rgb_array' or 'ansi'")
            return None
        if self.batch.tasks[0] is None:
            raise RuntimeError("render() called before reset(): call reset() first")
        if self.render_mode == "ansi":
            return self.batch.render_ansi(0)
        return self.batch.render_rgb(0)
