"""MuJoCo locomotion meta-RL envs (VariBAD §5.2): HalfCheetahDir/Vel, AntDir, AntGoal.

Each env runs Gymnasium's ``HalfCheetah-v5`` / ``Ant-v5`` model (MuJoCo 3 bindings, extra
``[mujoco]``) for the simulation and the observation, and recomputes the reward of its task from
the simulator state (planar velocity and position of the torso, control, external contact forces).
The trial logic (inner episodes, RL² inputs, task API, action checks) is :class:`TrialBatch`'s.

A batch holds one Gymnasium MuJoCo env per trial and steps them one after the other: each copy has
its own ``MjData``, so unlike the light families the physics cannot be one numpy operation.

Train/test splits:

* ``HalfCheetahDir-v0`` / ``AntDir-v0``: there are only two tasks (forward and backward), both in
  both splits; ``split`` is accepted for a uniform API but does not change the distribution.
* ``HalfCheetahVel-v0``: the velocity range is cut into ``split_bins`` equal bins; every
  ``test_bin_stride``-th bin (indices ``k ≡ stride // 2 mod stride``) holds the test velocities and
  the others the train velocities, so the two splits are disjoint and test tasks interpolate.
* ``AntGoal-v0``: the same interleaving over the goal's angle (``split_bins`` sectors).

See :func:`interval_split` for the membership of a value.

Each env's constants and their defaults are declared once, by its batch class; the env's
constructor signature is built from them (:func:`bayes_envs.core.batch_constants`).
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass
from typing import Any, ClassVar

import numpy as np
from gymnasium import spaces

from bayes_envs.core import (
    MetaEnv,
    TrialBatch,
    check_bool,
    check_finite_float,
    check_int,
    check_positive_float,
    check_reward_scale,
)

try:  # the MuJoCo bindings are an optional extra: fail on use, not on `import bayes_envs`
    from gymnasium.envs.mujoco.ant_v5 import AntEnv
    from gymnasium.envs.mujoco.half_cheetah_v5 import HalfCheetahEnv
except ImportError as _error:  # pragma: no cover - exercised only without the extra
    AntEnv = HalfCheetahEnv = None  # type: ignore[assignment,misc]
    _IMPORT_ERROR: ImportError | None = _error
else:
    _IMPORT_ERROR = None


def _require_mujoco() -> None:
    if _IMPORT_ERROR is not None:
        raise ImportError(
            "the MuJoCo envs need the mujoco extra: pip install 'bayes-meta-rl[mujoco]'"
        ) from _IMPORT_ERROR


# ---------------------------------------------------------------------------------------- splits
def _check_split_bins(n_bins: Any, stride: Any) -> tuple[int, int]:
    stride = check_int("test_bin_stride", stride, 2)
    n_bins = check_int("split_bins", n_bins, stride)
    return n_bins, stride


def _test_bins(n_bins: int, stride: int) -> np.ndarray:
    """``[n_bins]`` bool: which bins hold the test tasks."""
    return np.arange(n_bins) % stride == stride // 2


def interval_split(value: float, low: float, high: float, n_bins: int, stride: int) -> str:
    """The split (``"train"``/``"test"``) that ``value`` ∈ [low, high) belongs to.

    ``[low, high)`` is cut into ``n_bins`` equal bins; bin ``k`` is a test bin iff
    ``k % stride == stride // 2``.
    """
    n_bins, stride = _check_split_bins(n_bins, stride)
    k = int(np.clip(np.floor((value - low) / (high - low) * n_bins), 0, n_bins - 1))
    return "test" if _test_bins(n_bins, stride)[k] else "train"


def sample_interval_split(
    rng: np.random.Generator, low: float, high: float, n_bins: int, stride: int, split: str
) -> float:
    """A value uniform over the bins of ``split`` (see :func:`interval_split`)."""
    test = _test_bins(n_bins, stride)
    bins = np.flatnonzero(test if split == "test" else ~test)
    k = bins[rng.integers(len(bins))]
    return float(low + (k + rng.random()) * (high - low) / n_bins)


# ----------------------------------------------------------------------------------------- tasks
@dataclass(frozen=True)
class DirectionTask:
    """Run along ``+x`` (``direction=1``) or ``-x`` (``direction=-1``)."""

    direction: int


@dataclass(frozen=True)
class VelocityTask:
    """Run along ``+x`` at ``target_velocity`` (m/s)."""

    target_velocity: float


@dataclass(frozen=True)
class AngleTask:
    """Run in the plane along the direction ``(cos angle, sin angle)`` (radians)."""

    angle: float


@dataclass(frozen=True)
class GoalTask:
    """Reach the planar position ``(x, y)``."""

    x: float
    y: float


# ------------------------------------------------------------------------------------ base batch
class LocomotionBatch(TrialBatch):
    """``B`` Gymnasium MuJoCo robots whose rewards are recomputed for the hidden task.

    Subclasses set :attr:`robot_class` and :meth:`_robot_kwargs`, and give the task's reward
    through :meth:`_task_reward`. Per step, every env reports in ``info`` the quantities the reward
    is computed from: ``x_position``, ``y_position`` and ``x_velocity``, ``y_velocity`` (torso,
    velocities are ``(position after − position before) / dt``), ``control_cost`` and the family's
    own terms.
    """

    robot_class: ClassVar[Any]
    #: Number of planar coordinates the robot moves in (1: x only, 2: x and y).
    planar_dims: ClassVar[int]

    def __init__(
        self,
        batch_size: int,
        *,
        episode_length: int,
        episodes_per_trial: int,
        split: str,
        rl2_inputs: bool,
        ctrl_cost_weight: float,
        reset_noise_scale: float,
        exclude_current_positions_from_observation: bool,
    ) -> None:
        _require_mujoco()
        super().__init__(
            batch_size,
            episode_length=episode_length,
            episodes_per_trial=episodes_per_trial,
            split=split,
            rl2_inputs=rl2_inputs,
        )
        self.ctrl_cost_weight = self._check_weight("ctrl_cost_weight", ctrl_cost_weight)
        self.reset_noise_scale = self._check_weight("reset_noise_scale", reset_noise_scale)
        check_bool("exclude_current_positions_from_observation", exclude_current_positions_from_observation)
        self.envs = [
            self.robot_class(
                reset_noise_scale=self.reset_noise_scale,
                exclude_current_positions_from_observation=exclude_current_positions_from_observation,
                **self._robot_kwargs(),
            )
            for _ in range(self.batch_size)
        ]
        first = self.envs[0]
        self.dt = float(first.dt)
        self.state_space = spaces.Box(-np.inf, np.inf, first.observation_space.shape, np.float32)
        self.action_space = spaces.Box(
            first.action_space.low.astype(np.float32), first.action_space.high.astype(np.float32)
        )
        self.horizon = self.episode_length * self.episodes_per_trial
        largest_action = np.maximum(np.abs(first.action_space.low), np.abs(first.action_space.high))
        check_reward_scale(
            "ctrl_cost_weight",
            self.ctrl_cost_weight * float(np.square(largest_action.astype(np.float64)).sum()),
            self.horizon,
        )
        self._observations = np.zeros((self.batch_size, *self.state_space.shape), np.float64)
        #: A seed per env, drawn at the trial start, for the start-state noise of the trial.
        self._pending_seeds: list[int | None] = [None] * self.batch_size
        self._renderers: dict[int, Any] = {}

    @staticmethod
    def _check_weight(name: str, value: Any) -> float:
        value = check_finite_float(name, value)
        if value < 0:
            raise ValueError(f"{name} must be a finite float >= 0, got {value}")
        return value

    def _robot_kwargs(self) -> dict[str, Any]:
        return {}

    #: Rewards are unbounded (velocities); the RL² ``prev_reward`` space is the real line.
    reward_range = (-np.inf, np.inf)

    # ------------------------------------------------------------------ TrialBatch hooks
    def _begin_trial(self, index: int, rng: np.random.Generator) -> None:
        self._pending_seeds[index] = int(rng.integers(2**31 - 1))

    def _begin_episode(self, mask: np.ndarray) -> None:
        for i in np.flatnonzero(mask).tolist():
            # The first inner episode of a trial seeds the start-state noise of the whole trial.
            seed, self._pending_seeds[i] = self._pending_seeds[i], None
            self._observations[i], _ = self.envs[i].reset(seed=seed)

    def _observe(self) -> np.ndarray:
        return self._observations

    def _planar_position(self, env: Any) -> np.ndarray:
        return np.array(env.data.qpos[: self.planar_dims], np.float64)

    def _transition(self, actions: np.ndarray) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        b = self.batch_size
        before = np.zeros((b, 2))
        after = np.zeros((b, 2))
        extra = self._state_columns_init()
        for i, env in enumerate(self.envs):
            before[i, : self.planar_dims] = self._planar_position(env)
            self._observations[i] = env.step(actions[i])[0]
            after[i, : self.planar_dims] = self._planar_position(env)
            self._record_state(i, env, extra)
        velocity = (after - before) / self.dt
        columns: dict[str, np.ndarray] = {
            "x_position": after[:, 0],
            "y_position": after[:, 1],
            "x_velocity": velocity[:, 0],
            "y_velocity": velocity[:, 1],
            "control_cost": self.ctrl_cost_weight * np.square(actions).sum(axis=1),
            **extra,
        }
        rewards, early_end, reward_columns = self._task_reward(columns)
        columns.update(reward_columns)
        return rewards, early_end, columns

    def _state_columns_init(self) -> dict[str, np.ndarray]:
        """Per-step state quantities beyond positions and velocities, filled by :meth:`_record_state`."""
        return {}

    def _record_state(self, index: int, env: Any, columns: dict[str, np.ndarray]) -> None:
        """Read env ``index``'s state after its step into ``columns``."""

    @abstractmethod
    def _task_reward(
        self, columns: dict[str, np.ndarray]
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        """Rewards ``[B]``, early inner-episode ends ``[B]`` and reward terms from the step's state."""

    # ------------------------------------------------------------------ rendering
    def render_rgb(self, index: int) -> np.ndarray:
        """An ``[480, 480, 3]`` picture of env ``index`` (needs an OpenGL backend, e.g. ``MUJOCO_GL=egl``)."""
        from gymnasium.envs.mujoco.mujoco_rendering import MujocoRenderer

        if index not in self._renderers:
            env = self.envs[index]
            self._renderers[index] = MujocoRenderer(
                env.model, env.data, {"distance": 6.0, "elevation": -20.0, "trackbodyid": 1}, 480, 480
            )
        return self._renderers[index].render("rgb_array")


# ----------------------------------------------------------------------------------- HalfCheetah
class _CheetahBatch(LocomotionBatch):
    robot_class = HalfCheetahEnv
    planar_dims = 1

    def __init__(
        self,
        batch_size: int,
        *,
        episode_length: int = 200,
        episodes_per_trial: int = 2,
        ctrl_cost_weight: float = 0.05,
        reset_noise_scale: float = 0.1,
        exclude_current_positions_from_observation: bool = True,
        split: str = "train",
        rl2_inputs: bool = True,
    ) -> None:
        super().__init__(
            batch_size,
            episode_length=episode_length,
            episodes_per_trial=episodes_per_trial,
            split=split,
            rl2_inputs=rl2_inputs,
            ctrl_cost_weight=ctrl_cost_weight,
            reset_noise_scale=reset_noise_scale,
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
        )


class HalfCheetahDirBatch(_CheetahBatch):
    """Batched HalfCheetahDir trials; see :class:`HalfCheetahDirEnv`."""

    task_type = DirectionTask

    def __init__(self, batch_size: int, **constants: Any) -> None:
        super().__init__(batch_size, **constants)
        self.direction = np.ones(self.batch_size)

    def sample_task(self, rng: np.random.Generator) -> DirectionTask:
        return DirectionTask(direction=int(rng.choice((-1, 1))))

    def _check_task(self, task: DirectionTask) -> DirectionTask:
        if task.direction not in (-1, 1):
            raise ValueError(f"task direction must be -1 or 1, got {task.direction!r}")
        return task

    def _set_task(self, index: int, task: DirectionTask) -> None:
        self.direction[index] = task.direction

    def _task_reward(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        forward = self.direction * columns["x_velocity"]
        return forward - columns["control_cost"], np.zeros(self.batch_size, bool), {"forward_reward": forward}


class HalfCheetahVelBatch(_CheetahBatch):
    """Batched HalfCheetahVel trials; see :class:`HalfCheetahVelEnv`."""

    task_type = VelocityTask

    def __init__(
        self,
        batch_size: int,
        *,
        velocity_low: float = 0.0,
        velocity_high: float = 3.0,
        split_bins: int = 30,
        test_bin_stride: int = 5,
        **constants: Any,
    ) -> None:
        super().__init__(batch_size, **constants)
        self.velocity_low = check_finite_float("velocity_low", velocity_low)
        self.velocity_high = check_finite_float("velocity_high", velocity_high)
        if self.velocity_high <= self.velocity_low:
            raise ValueError(f"velocity_high must exceed velocity_low, got {velocity_low}, {velocity_high}")
        self.split_bins, self.test_bin_stride = _check_split_bins(split_bins, test_bin_stride)
        self.target_velocity = np.zeros(self.batch_size)

    def task_split(self, task: VelocityTask) -> str:
        """The split ``task`` belongs to."""
        return interval_split(
            task.target_velocity, self.velocity_low, self.velocity_high, self.split_bins, self.test_bin_stride
        )

    def sample_task(self, rng: np.random.Generator) -> VelocityTask:
        velocity = sample_interval_split(
            rng, self.velocity_low, self.velocity_high, self.split_bins, self.test_bin_stride, self.split
        )
        return VelocityTask(target_velocity=velocity)

    def _check_task(self, task: VelocityTask) -> VelocityTask:
        check_finite_float("task.target_velocity", task.target_velocity)
        return task

    def _set_task(self, index: int, task: VelocityTask) -> None:
        self.target_velocity[index] = task.target_velocity

    def _task_reward(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        velocity_error = np.abs(columns["x_velocity"] - self.target_velocity)
        rewards = -velocity_error - columns["control_cost"]
        return rewards, np.zeros(self.batch_size, bool), {"velocity_error": velocity_error}


# ------------------------------------------------------------------------------------------- Ant
class _AntBatch(LocomotionBatch):
    robot_class = AntEnv
    planar_dims = 2

    def __init__(
        self,
        batch_size: int,
        *,
        episode_length: int = 200,
        episodes_per_trial: int = 2,
        ctrl_cost_weight: float,
        contact_cost_weight: float = 5e-4,
        contact_force_range: tuple[float, float] = (-1.0, 1.0),
        healthy_reward: float,
        healthy_z_range: tuple[float, float] = (0.2, 1.0),
        terminate_when_unhealthy: bool,
        reset_noise_scale: float = 0.1,
        exclude_current_positions_from_observation: bool,
        split: str = "train",
        rl2_inputs: bool = True,
    ) -> None:
        self.contact_cost_weight = self._check_weight("contact_cost_weight", contact_cost_weight)
        self.contact_force_range = self._check_range("contact_force_range", contact_force_range)
        self.healthy_reward = check_finite_float("healthy_reward", healthy_reward)
        self.healthy_z_range = self._check_range("healthy_z_range", healthy_z_range)
        self.terminate_when_unhealthy = check_bool("terminate_when_unhealthy", terminate_when_unhealthy)
        super().__init__(
            batch_size,
            episode_length=episode_length,
            episodes_per_trial=episodes_per_trial,
            split=split,
            rl2_inputs=rl2_inputs,
            ctrl_cost_weight=ctrl_cost_weight,
            reset_noise_scale=reset_noise_scale,
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
        )
        check_reward_scale("healthy_reward", self.healthy_reward, self.horizon)
        largest_force = max(abs(bound) for bound in self.contact_force_range)
        check_reward_scale(
            "contact_cost_weight",
            self.contact_cost_weight * self.envs[0].data.cfrc_ext.size * largest_force**2,
            self.horizon,
        )

    @staticmethod
    def _check_range(name: str, value: Any) -> tuple[float, float]:
        try:
            low, high = (check_finite_float(name, v) for v in value)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{name} must be a pair (low, high) of finite floats, got {value!r}") from error
        if high <= low:
            raise ValueError(f"{name} must satisfy low < high, got {value!r}")
        return low, high

    def _robot_kwargs(self) -> dict[str, Any]:
        # Gymnasium's own reward terms are ignored; its observation keeps the clipped contact forces.
        return {"contact_force_range": self.contact_force_range}

    def _state_columns_init(self) -> dict[str, np.ndarray]:
        b = self.batch_size
        return {"contact_cost": np.zeros(b), "torso_z": np.zeros(b), "healthy": np.zeros(b, bool)}

    def _record_state(self, index: int, env: Any, columns: dict[str, np.ndarray]) -> None:
        low, high = self.contact_force_range
        contact = np.clip(env.data.cfrc_ext, low, high)
        columns["contact_cost"][index] = self.contact_cost_weight * np.sum(np.square(contact))
        z = float(env.data.qpos[2])
        finite = bool(np.isfinite(env.data.qpos).all() and np.isfinite(env.data.qvel).all())
        columns["torso_z"][index] = z
        columns["healthy"][index] = finite and self.healthy_z_range[0] <= z <= self.healthy_z_range[1]

    def _ant_reward(
        self, columns: dict[str, np.ndarray], task_reward: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray, dict[str, np.ndarray]]:
        healthy = columns["healthy"]
        rewards = (
            task_reward
            - columns["control_cost"]
            - columns["contact_cost"]
            + self.healthy_reward * healthy.astype(np.float64)
        )
        early_end = ~healthy if self.terminate_when_unhealthy else np.zeros(self.batch_size, bool)
        return rewards, early_end, {}


class AntDirBatch(_AntBatch):
    """Batched AntDir trials; see :class:`AntDirEnv`."""

    task_type = AngleTask

    def __init__(
        self,
        batch_size: int,
        *,
        angles: tuple[float, ...] = (0.0, float(np.pi)),
        ctrl_cost_weight: float = 0.5,
        healthy_reward: float = 1.0,
        terminate_when_unhealthy: bool = True,
        exclude_current_positions_from_observation: bool = True,
        **constants: Any,
    ) -> None:
        super().__init__(
            batch_size,
            ctrl_cost_weight=ctrl_cost_weight,
            healthy_reward=healthy_reward,
            terminate_when_unhealthy=terminate_when_unhealthy,
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
            **constants,
        )
        self.angles = tuple(check_finite_float("angles", a) for a in angles)
        if not self.angles:
            raise ValueError("angles must hold at least one direction angle (radians)")
        self.heading = np.tile([1.0, 0.0], (self.batch_size, 1))

    def sample_task(self, rng: np.random.Generator) -> AngleTask:
        return AngleTask(angle=self.angles[int(rng.integers(len(self.angles)))])

    def _check_task(self, task: AngleTask) -> AngleTask:
        check_finite_float("task.angle", task.angle)
        return task

    def _set_task(self, index: int, task: AngleTask) -> None:
        self.heading[index] = (np.cos(task.angle), np.sin(task.angle))

    def _task_reward(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        velocity = np.stack([columns["x_velocity"], columns["y_velocity"]], axis=1)
        forward = np.einsum("bd,bd->b", velocity, self.heading)
        rewards, early_end, _ = self._ant_reward(columns, forward)
        return rewards, early_end, {"forward_reward": forward}


class AntGoalBatch(_AntBatch):
    """Batched AntGoal trials; see :class:`AntGoalEnv`."""

    task_type = GoalTask

    def __init__(
        self,
        batch_size: int,
        *,
        goal_radius: float = 3.0,
        split_bins: int = 30,
        test_bin_stride: int = 5,
        ctrl_cost_weight: float = 0.1,
        healthy_reward: float = 0.0,
        terminate_when_unhealthy: bool = False,
        exclude_current_positions_from_observation: bool = False,
        **constants: Any,
    ) -> None:
        super().__init__(
            batch_size,
            ctrl_cost_weight=ctrl_cost_weight,
            healthy_reward=healthy_reward,
            terminate_when_unhealthy=terminate_when_unhealthy,
            exclude_current_positions_from_observation=exclude_current_positions_from_observation,
            **constants,
        )
        self.goal_radius = check_positive_float("goal_radius", goal_radius)
        self.split_bins, self.test_bin_stride = _check_split_bins(split_bins, test_bin_stride)
        self.goal = np.zeros((self.batch_size, 2))

    def task_split(self, task: GoalTask) -> str:
        """The split ``task`` belongs to (by the goal's angle)."""
        angle = float(np.arctan2(task.y, task.x) % (2 * np.pi))
        return interval_split(angle, 0.0, 2 * np.pi, self.split_bins, self.test_bin_stride)

    def sample_task(self, rng: np.random.Generator) -> GoalTask:
        angle = sample_interval_split(rng, 0.0, 2 * np.pi, self.split_bins, self.test_bin_stride, self.split)
        # r = R·sqrt(U) makes the goal uniform over the disc of radius R.
        radius = self.goal_radius * np.sqrt(rng.random())
        return GoalTask(x=float(radius * np.cos(angle)), y=float(radius * np.sin(angle)))

    def _check_task(self, task: GoalTask) -> GoalTask:
        check_finite_float("task.x", task.x)
        check_finite_float("task.y", task.y)
        return task

    def _set_task(self, index: int, task: GoalTask) -> None:
        self.goal[index] = (task.x, task.y)

    def _task_reward(self, columns: dict[str, np.ndarray]) -> tuple[np.ndarray, np.ndarray, dict]:
        position = np.stack([columns["x_position"], columns["y_position"]], axis=1)
        distance = np.abs(position - self.goal).sum(axis=1)
        rewards, early_end, _ = self._ant_reward(columns, -distance)
        return rewards, early_end, {"goal_distance": distance}


# ------------------------------------------------------------------------------------------ envs
class _LocomotionEnv(MetaEnv):
    metadata: ClassVar[dict[str, Any]] = {"render_modes": ["rgb_array"], "render_fps": 20}


class HalfCheetahDirEnv(_LocomotionEnv):
    """HalfCheetah running forward or backward (hidden direction), on Gymnasium's ``HalfCheetah-v5``.

    * **Task**: ``DirectionTask(direction)``, ``direction`` ∈ {−1, +1} uniformly; both splits alike.
    * **Reward**: ``direction · v_x − ctrl_cost_weight · ‖a‖²`` (0.05), with ``v_x`` the torso's
      x displacement over the step divided by ``dt`` (0.05 s).
    * **Trial**: ``episodes_per_trial`` (2) inner episodes of ``episode_length`` (200) steps, each
      from Gymnasium's noisy start state (``reset_noise_scale``); no early termination.
    * **Observation**: Gymnasium's 17-dim state (positions without x, velocities), float32.
    * **Info**: ``x_position``, ``x_velocity``, ``control_cost``, ``forward_reward`` per step.
    """

    batch_class = HalfCheetahDirBatch


class HalfCheetahVelEnv(_LocomotionEnv):
    """HalfCheetah running at a hidden target velocity, on Gymnasium's ``HalfCheetah-v5``.

    * **Task**: ``VelocityTask(target_velocity)`` uniform on ``[velocity_low, velocity_high)``
      (0, 3) restricted to the split's bins: the range is cut into ``split_bins`` (30) bins and
      every ``test_bin_stride``-th (5) one holds test tasks (:func:`interval_split`), the rest train.
    * **Reward**: ``−|v_x − target_velocity| − ctrl_cost_weight · ‖a‖²`` (0.05).
    * **Trial**, **Observation**: as :class:`HalfCheetahDirEnv`.
    * **Info**: ``x_position``, ``x_velocity``, ``control_cost``, ``velocity_error`` per step.
    """

    batch_class = HalfCheetahVelBatch


class AntDirEnv(_LocomotionEnv):
    """Ant running in a hidden planar direction, on Gymnasium's ``Ant-v5``.

    * **Task**: ``AngleTask(angle)`` drawn uniformly from ``angles`` (0 and π: forward/backward);
      both splits alike.
    * **Reward**: ``v_xy · (cos angle, sin angle) − ctrl_cost_weight·‖a‖² (0.5)
      − contact_cost_weight·Σ clip(cfrc_ext, contact_force_range)² (5e-4, (−1, 1))
      + healthy_reward (1) · healthy``, healthy = finite state and torso z ∈ ``healthy_z_range``
      (0.2, 1).
    * **Termination**: an unhealthy step ends the *inner episode* (``terminate_when_unhealthy``):
      the ant restarts and the trial goes on with the next inner episode; the trial ends after
      ``episodes_per_trial`` (2) inner episodes of at most ``episode_length`` (200) steps.
    * **Observation**: Gymnasium's 105-dim state (positions without x, y; velocities; clipped
      contact forces), float32.
    * **Info**: ``x/y_position``, ``x/y_velocity``, ``control_cost``, ``contact_cost``,
      ``torso_z``, ``healthy``, ``forward_reward`` per step.
    """

    batch_class = AntDirBatch


class AntGoalEnv(_LocomotionEnv):
    """Ant walking to a hidden goal position, on Gymnasium's ``Ant-v5``.

    * **Task**: ``GoalTask(x, y)`` = r (cos θ, sin θ), θ ~ U[0, 2π) restricted to the split's
      sectors (``split_bins`` (30) sectors, every ``test_bin_stride``-th (5) one for test),
      r = ``goal_radius`` (3) · √U (uniform over the disc).
    * **Reward**: ``−‖xy − goal‖₁ − ctrl_cost_weight·‖a‖² (0.1) − contact_cost_weight·Σ clip(cfrc_ext)²``
      (5e-4) ``+ healthy_reward · healthy`` (0 by default).
    * **Termination**: none by default (``terminate_when_unhealthy=False``); 2 inner episodes of
      200 steps.
    * **Observation**: Gymnasium's Ant state *with* the torso's x, y (107 dims), since the reward
      depends on the position (``exclude_current_positions_from_observation=False``).
    * **Info**: as :class:`AntDirEnv`, with ``goal_distance`` (L1) instead of ``forward_reward``.
    """

    batch_class = AntGoalBatch
