"""Meta-World ML1 / ML10 / ML45 as meta-RL trials (extra ``[metaworld]``).

The module is named ``meta_world`` so that ``import metaworld`` inside it is the Meta-World package.

Tasks come straight from ``metaworld.ML1(env_name, seed)`` / ``ML10(seed)`` / ``ML45(seed)``
(``train_classes``/``train_tasks`` or ``test_classes``/``test_tasks``; Gymnasium's
``Meta-World/ML1-train`` id is avoided, see docs/specification.md#meta-world). Building a
benchmark is slow (ML10 ~12 s, ML45 ~20 s), so each ``(kind, env_name, seed)`` is built once per
process and shared by every env (:func:`get_benchmark`).

Splits are Meta-World's: ML1 train and test hold 50 goals each of the same class, drawn with
seeds ``benchmark_seed`` and ``benchmark_seed + 1`` (so ``ML1(seed=s).test`` is
``ML1(seed=s + 1).train``: keep one ``benchmark_seed`` for training and testing); ML10/ML45 train
and test have disjoint task classes (10/5 and 45/5).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from bayes_envs.core import MetaEnv, TrialBatch, check_bool, check_int

#: Meta-World's rewards lie in [0, 10].
REWARD_RANGE = (0.0, 10.0)
KINDS = ("ML1", "ML10", "ML45")
#: Observation entries of the objects' positions and quaternions (Sawyer layout: hand 0:3, gripper
#: 3, two padded objects 4:18, the previous frame's copy of these 18:36, goal 36:39).
OBJECT_ENTRIES = np.r_[4:18, 22:36]

_BENCHMARKS: dict[tuple[str, str | None, int], Any] = {}


def _metaworld() -> Any:
    try:
        import metaworld
    except ImportError as error:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "the Meta-World envs need the metaworld extra: pip install 'bayes-meta-rl[metaworld]'"
        ) from error
    return metaworld


def get_benchmark(kind: str, env_name: str | None = None, seed: int = 0) -> Any:
    """This process's ``metaworld.ML1(env_name, seed)`` / ``ML10(seed)`` / ``ML45(seed)``, built once."""
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {KINDS}, got {kind!r}")
    seed = check_int("benchmark_seed", seed, 0)
    metaworld = _metaworld()
    if kind == "ML1":
        names = list(metaworld.ML1.ENV_NAMES)
        if env_name not in names:
            raise ValueError(
                f"env_name must be a Meta-World v3 env name such as 'reach-v3', got {env_name!r}"
            )
    elif env_name is not None:
        raise ValueError(f"env_name is only for ML1, got env_name={env_name!r} for {kind}")
    key = (kind, env_name, seed)
    if key not in _BENCHMARKS:
        if kind == "ML1":
            _BENCHMARKS[key] = metaworld.ML1(env_name, seed=seed)
        else:
            _BENCHMARKS[key] = getattr(metaworld, kind)(seed=seed)
    return _BENCHMARKS[key]


@dataclass(frozen=True)
class MetaWorldTask:
    """Task ``index`` of the ``split`` task list of a Meta-World benchmark: a class and its goal."""

    env_name: str
    split: str
    index: int


class MetaWorldBatch(TrialBatch):
    """Batched Meta-World trials; see :class:`MetaWorldML1Env` for the specification.

    Each env slot keeps up to ``env_cache_size`` Meta-World envs, one per task class it met last
    (least recently used dropped): building one takes ~0.2 s and ~15 MB.
    """

    task_type = MetaWorldTask
    kind: ClassVar[str]

    def __init__(
        self,
        batch_size: int,
        *,
        env_name: str | None = None,
        benchmark_seed: int = 0,
        max_path_length: int = 500,
        episodes_per_trial: int = 2,
        env_cache_size: int = 10,
        split: str = "train",
        rl2_inputs: bool = True,
        hide_objects: bool = False,
    ) -> None:
        super().__init__(
            batch_size,
            episode_length=check_int("max_path_length", max_path_length, 1),
            episodes_per_trial=episodes_per_trial,
            split=split,
            rl2_inputs=rl2_inputs,
        )
        self.max_path_length = self.episode_length
        self.env_cache_size = check_int("env_cache_size", env_cache_size, 1)
        self.hide_objects = check_bool("hide_objects", hide_objects)
        self.benchmark_seed = check_int("benchmark_seed", benchmark_seed, 0)
        self.env_name = env_name
        self.benchmark = get_benchmark(self.kind, env_name, self.benchmark_seed)
        train = self.split == "train"
        self.classes: dict[str, type] = dict(
            self.benchmark.train_classes if train else self.benchmark.test_classes
        )
        self.metaworld_tasks: list[Any] = list(
            self.benchmark.train_tasks if train else self.benchmark.test_tasks
        )
        self.class_names = list(self.classes)
        self._caches: list[OrderedDict[str, Any]] = [OrderedDict() for _ in range(self.batch_size)]
        self.envs: list[Any] = [None] * self.batch_size
        first = self._env_for(0, self.metaworld_tasks[0].env_name)
        first.set_task(self.metaworld_tasks[0])
        observation_space = first.observation_space
        # Every class shares the Sawyer observation layout (hand, gripper, objects, goal). The hidden
        # goal entries are always 0 (low == high), which Gymnasium's checker warns about: unbound them.
        low, high = observation_space.low.copy(), observation_space.high.copy()
        fixed = low == high
        low[fixed], high[fixed] = -np.inf, np.inf
        self.state_space = spaces.Box(low.astype(np.float32), high.astype(np.float32))
        self.action_space = spaces.Box(-1.0, 1.0, (4,), np.float32)
        self.reward_range = REWARD_RANGE
        self._observations = np.zeros((self.batch_size, *self.state_space.shape), np.float64)
        self._episode_success = np.zeros(self.batch_size, bool)
        self._renderers: dict[int, Any] = {}

    # ------------------------------------------------------------------ envs
    def _env_for(self, index: int, env_name: str) -> Any:
        cache = self._caches[index]
        if env_name in cache:
            cache.move_to_end(env_name)
        else:
            if len(cache) >= self.env_cache_size:
                cache.popitem(last=False)[1].close()
            env = self.classes[env_name]()
            env.max_path_length = self.max_path_length
            if hasattr(self, "state_space") and env.observation_space.shape != self.state_space.shape:
                raise RuntimeError(
                    f"{env_name} observes {env.observation_space.shape}, the benchmark "
                    f"{self.state_space.shape}"
                )
            cache[env_name] = env
        return cache[env_name]

    def metaworld_task(self, task: MetaWorldTask) -> Any:
        """The ``metaworld.Task`` behind ``task``."""
        return self.metaworld_tasks[task.index]

    def task_parameters(self, task: MetaWorldTask) -> np.ndarray:
        """The goal/object vector (Meta-World's ``rand_vec``) of ``task``, hidden from the agent."""
        import pickle

        return np.asarray(pickle.loads(self.metaworld_task(task).data)["rand_vec"], np.float64)

    # ------------------------------------------------------------------ TrialBatch hooks
    def sample_task(self, rng: np.random.Generator) -> MetaWorldTask:
        index = int(rng.integers(len(self.metaworld_tasks)))
        return MetaWorldTask(env_name=self.metaworld_tasks[index].env_name, split=self.split, index=index)

    def _check_task(self, task: MetaWorldTask) -> MetaWorldTask:
        if task.split != self.split:
            raise ValueError(f"task of the {task.split!r} split given to a {self.split!r} env: {task}")
        n = len(self.metaworld_tasks)
        if (
            isinstance(task.index, bool)
            or not isinstance(task.index, (int, np.integer))
            or not 0 <= task.index < n
        ):
            raise ValueError(f"task.index must be an int in [0, {n}), got {task.index!r}")
        if self.metaworld_tasks[task.index].env_name != task.env_name:
            raise ValueError(
                f"task {task} names {task.env_name!r}, but task {task.index} of the {self.split} split is "
                f"{self.metaworld_tasks[task.index].env_name!r}"
            )
        return task

    def _set_task(self, index: int, task: MetaWorldTask) -> None:
        env = self._env_for(index, task.env_name)
        env.set_task(self.metaworld_task(task))
        self.envs[index] = env
        if self.active[index]:  # changed mid-trial: the new task's env starts from its start state
            self._observations[index], _ = env.reset()

    def _begin_episode(self, mask: np.ndarray) -> None:
        for i in np.flatnonzero(mask).tolist():
            # Meta-World's reset is deterministic once a task (goal) is set: no seed is needed.
            self._observations[i], _ = self.envs[i].reset()
        self._episode_success[mask] = False

    def _observe(self) -> np.ndarray:
        if not self.hide_objects:
            return self._observations
        observations = self._observations.copy()
        observations[:, OBJECT_ENTRIES] = 0.0
        return observations

    def _transition(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        b = self.batch_size
        rewards = np.zeros(b)
        step_success = np.zeros(b, bool)
        for i, env in enumerate(self.envs):
            self._observations[i], rewards[i], _, _, info = env.step(actions[i])
            step_success[i] = info["success"] > 0
        self._episode_success |= step_success
        columns = {
            "task_class": np.array([task.env_name for task in self.tasks]),
            "step_success": step_success.astype(np.float64),
            # Meta-World's success of an episode: some step of it succeeded (so far).
            "success": self._episode_success.astype(np.float64),
        }
        return rewards, np.zeros(b, bool), columns

    def render_rgb(self, index: int) -> np.ndarray:
        """An ``[480, 480, 3]`` picture of env ``index`` (needs an OpenGL backend, e.g. ``MUJOCO_GL=egl``)."""
        from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

        env = self.envs[index]
        key = id(env)
        if key not in self._renderers:
            self._renderers[key] = MujocoRenderer(env.model, env.data, None, 480, 480)
        return self._renderers[key].render("rgb_array")


class ML1Batch(MetaWorldBatch):
    kind = "ML1"

    def __init__(self, batch_size: int, *, env_name: str = "reach-v3", **constants: Any) -> None:
        super().__init__(batch_size, env_name=env_name, **constants)


class ML10Batch(MetaWorldBatch):
    kind = "ML10"


class ML45Batch(MetaWorldBatch):
    kind = "ML45"


class _MetaWorldEnv(MetaEnv):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 80}

    @property
    def task_class(self) -> str | None:
        """The Meta-World env name of the current task (``None`` before the first reset)."""
        return None if self.task is None else self.task.env_name


class MetaWorldML1Env(_MetaWorldEnv):
    """One Meta-World task class with hidden goals (``metaworld.ML1(env_name, benchmark_seed)``).

    * **Task**: ``MetaWorldTask(env_name, split, index)``: one of the 50 goals of the split, uniform;
      a new one each trial. The goal is not observed (Meta-World's partially observable mode).
    * **Trial**: ``episodes_per_trial`` (2) inner episodes of ``max_path_length`` (500) steps, each
      from the task's (deterministic) start state.
    * **Reward**: Meta-World's (v2 reward functions, in [0, 10]).
    * **Observation**: the 39-dim Sawyer observation (goal entries zero), float32. Meta-World draws
      each task's object start position together with its goal, so the object entries name a train
      task from the first step (``benchmarks/metaworld_task_leak.py``): ``hide_objects=True`` zeroes
      them (entries 4:18 and 22:36), which leaves reach-v3 solvable (its object is a distractor) and
      the goal to be found from rewards only. Classes that manipulate an object need them.
    * **Info**: ``task_class`` (e.g. ``"reach-v3"``), ``step_success`` (Meta-World's ``success`` of
      the step) and ``success``: 1 if any step of the current inner episode succeeded, so at
      ``inner_done`` it is the inner episode's success.
    """

    batch_class = ML1Batch


class MetaWorldML10Env(_MetaWorldEnv):
    """Meta-World ML10: 10 train classes, 5 held-out test classes, 50 goals each; as :class:`MetaWorldML1Env`
    otherwise (a trial samples class and goal uniformly over the split's tasks)."""

    batch_class = ML10Batch

    def __init__(
        self,
        render_mode: str | None = None,
        rl2_inputs: bool = True,
        *,
        benchmark_seed: int = 0,
        max_path_length: int = 500,
        episodes_per_trial: int = 2,
        env_cache_size: int = 10,
        split: str = "train",
        hide_objects: bool = False,
    ) -> None:
        super().__init__(
            render_mode=render_mode,
            rl2_inputs=rl2_inputs,
            benchmark_seed=benchmark_seed,
            max_path_length=max_path_length,
            episodes_per_trial=episodes_per_trial,
            env_cache_size=env_cache_size,
            split=split,
            hide_objects=hide_objects,
        )


class MetaWorldML45Env(MetaWorldML10Env):
    """Meta-World ML45: 45 train classes, 5 held-out test classes; as :class:`MetaWorldML10Env`."""

    batch_class = ML45Batch
