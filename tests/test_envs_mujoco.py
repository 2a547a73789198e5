"""MuJoCo locomotion meta-RL envs: rewards recomputed from the simulator, task-independent dynamics,
inner episodes and Ant termination, seeding, splits, Gymnasium's checker, evaluation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

pytest.importorskip(
    "mujoco", reason="the MuJoCo envs need the [mujoco] extra (pip install 'bayes-meta-rl[mujoco]')"
)

import bayes_envs
from bayes_envs.evaluation import evaluate
from bayes_envs.mujoco import (
    AngleTask,
    DirectionTask,
    GoalTask,
    VelocityTask,
    interval_split,
)

ENV_IDS = ["HalfCheetahDir-v0", "HalfCheetahVel-v0", "AntDir-v0", "AntGoal-v0"]
#: Two different tasks per env, for the task-independence checks.
TASK_PAIRS = {
    "HalfCheetahDir-v0": (DirectionTask(1), DirectionTask(-1)),
    "HalfCheetahVel-v0": (VelocityTask(0.5), VelocityTask(2.5)),
    "AntDir-v0": (AngleTask(0.0), AngleTask(np.pi)),
    "AntGoal-v0": (GoalTask(2.0, 1.0), GoalTask(-1.0, -2.5)),
}


def expected_reward(
    env_id: str, task, action: np.ndarray, info: dict, x_before: float, y_before: float, dt: float
):
    """The reward of a step as specified (docs/specification.md#mujoco), from positions before/after
    and the env's contact forces term."""
    v_x = (info["x_position"] - x_before) / dt
    v_y = (info["y_position"] - y_before) / dt
    control = float(np.sum(np.square(action)))
    if env_id == "HalfCheetahDir-v0":
        return task.direction * v_x - 0.05 * control
    if env_id == "HalfCheetahVel-v0":
        return -abs(v_x - task.target_velocity) - 0.05 * control
    if env_id == "AntDir-v0":
        forward = v_x * np.cos(task.angle) + v_y * np.sin(task.angle)
        return forward - 0.5 * control - info["contact_cost"] + 1.0 * info["healthy"]
    distance = abs(info["x_position"] - task.x) + abs(info["y_position"] - task.y)
    return -distance - 0.1 * control - info["contact_cost"]


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_reward_is_the_formula_of_the_simulator_state(env_id: str) -> None:
    env = gym.make(env_id, episode_length=12, episodes_per_trial=2)
    robot = env.unwrapped.batch.envs[0]
    rng = np.random.default_rng(0)
    for task in TASK_PAIRS[env_id]:
        env.reset(seed=1, options={"task": task})
        done = False
        while not done:
            action = rng.uniform(-1, 1, env.action_space.shape).astype(np.float32)
            x_before, y_before = (
                float(robot.data.qpos[0]),
                float(robot.data.qpos[1]) if "Ant" in env_id else 0.0,
            )
            _, reward, done, truncated, info = env.step(action)
            assert not truncated
            if not info["inner_done"]:  # the robot is then still in the state the step reached
                assert info["x_position"] == pytest.approx(robot.data.qpos[0])
                if "Ant" in env_id:
                    contact = 5e-4 * np.sum(np.square(np.clip(robot.data.cfrc_ext, -1, 1)))
                    assert info["contact_cost"] == pytest.approx(contact)
                    z = robot.data.qpos[2]
                    assert info["healthy"] == (0.2 <= z <= 1.0)
            expected = expected_reward(env_id, task, action, info, x_before, y_before, robot.dt)
            assert reward == pytest.approx(expected, rel=1e-5, abs=1e-5)
            assert info["control_cost"] > 0


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_tasks_change_the_reward_not_the_dynamics(env_id: str) -> None:
    first, second = TASK_PAIRS[env_id]
    env_a, env_b = gym.make(env_id), gym.make(env_id)
    obs_a, _ = env_a.reset(seed=7, options={"task": first})
    obs_b, _ = env_b.reset(seed=7, options={"task": second})
    np.testing.assert_array_equal(obs_a["obs"], obs_b["obs"])
    rng = np.random.default_rng(1)
    rewards_a, rewards_b = [], []
    for _ in range(15):
        action = rng.uniform(-1, 1, env_a.action_space.shape).astype(np.float32)
        obs_a, reward_a, *_ = env_a.step(action)
        obs_b, reward_b, *_ = env_b.step(action)
        np.testing.assert_array_equal(obs_a["obs"], obs_b["obs"])
        rewards_a.append(reward_a)
        rewards_b.append(reward_b)
    assert not np.allclose(rewards_a, rewards_b)


def test_inner_episodes_restart_the_robot_and_only_the_trial_end_terminates() -> None:
    env = gym.make("HalfCheetahVel-v0", episode_length=5, episodes_per_trial=3)
    robot = env.unwrapped.batch.envs[0]
    obs, info = env.reset(seed=0)
    assert obs["new_episode"][0] == 1 and info["inner_episode"] == 0
    rng = np.random.default_rng(2)
    for t in range(1, 16):
        obs, _, terminated, truncated, info = env.step(rng.uniform(-1, 1, 6).astype(np.float32))
        boundary = t % 5 == 0
        assert info["inner_done"] == boundary and info["inner_episode"] == (t - 1) // 5
        assert terminated == (t == 15) and not truncated
        assert obs["new_episode"][0] == float(boundary and t < 15)
        if boundary and t < 15:
            # The start state of the next inner episode: Gymnasium's noisy initial pose, at rest in x.
            assert robot.data.qpos[0] == pytest.approx(robot.init_qpos[0], abs=0.1)
            np.testing.assert_allclose(obs["obs"][:8], robot.init_qpos[1:], atol=0.1 + 1e-6)


def test_an_unhealthy_ant_ends_the_inner_episode_not_the_trial() -> None:
    # The torso starts at z = 0.75, outside (0.2, 0.3): every inner episode ends after one step.
    env = gym.make("AntDir-v0", healthy_z_range=(0.2, 0.3), episodes_per_trial=3)
    env.reset(seed=0)
    for step in range(3):
        obs, reward, terminated, _, info = env.step(np.zeros(8, np.float32))
        assert info["inner_done"] and not info["healthy"] and info["inner_episode"] == step
        assert terminated == (step == 2)
        assert obs["new_episode"][0] == float(step < 2)
        # no healthy bonus on the unhealthy step
        assert reward == pytest.approx(info["forward_reward"] - info["contact_cost"], abs=1e-6)
    # AntGoal does not terminate by default.
    env = gym.make("AntGoal-v0", healthy_z_range=(0.2, 0.3), episode_length=4)
    env.reset(seed=0)
    flags = [env.step(np.zeros(8, np.float32))[4]["inner_done"] for _ in range(8)]
    assert flags == [False, False, False, True] * 2


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeding_reproduces_tasks_and_trajectories(env_id: str) -> None:
    def rollout(seed: int) -> tuple[list, np.ndarray]:
        env = gym.make(env_id, episode_length=3)
        tasks, observations = [], []
        for trial in range(2):
            obs, info = env.reset(seed=seed if trial == 0 else None)
            tasks.append(info["task"])
            for _ in range(6):
                obs, *_ = env.step(np.full(env.action_space.shape, 0.3, np.float32))
                observations.append(obs["obs"])
        return tasks, np.array(observations)

    tasks_a, obs_a = rollout(11)
    tasks_b, obs_b = rollout(11)
    assert tasks_a == tasks_b
    np.testing.assert_array_equal(obs_a, obs_b)
    _, obs_c = rollout(12)
    assert not np.array_equal(obs_a, obs_c)


def test_batched_vec_env_matches_single_envs() -> None:
    venv = bayes_envs.make_vec("AntGoal-v0", 2, seed=5, monitor=False, episode_length=4)
    singles = [gym.make("AntGoal-v0", episode_length=4) for _ in range(2)]
    batched = venv.reset()
    for i, env in enumerate(singles):
        obs, info = env.reset(seed=5 + i)
        assert info["task"] == venv.get_attr("task")[i]
        np.testing.assert_array_equal(obs["obs"], batched["obs"][i])
    rng = np.random.default_rng(0)
    for _ in range(10):
        actions = rng.uniform(-1, 1, (2, 8)).astype(np.float32)
        batched, rewards, _, _ = venv.step(actions)
        for i, env in enumerate(singles):
            obs, reward, done, _, _ = env.step(actions[i])
            if done:
                obs, _ = env.reset()
            np.testing.assert_array_equal(obs["obs"], batched["obs"][i])
            assert reward == pytest.approx(rewards[i])


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_gymnasium_env_checker(env_id: str) -> None:
    from gymnasium.utils.env_checker import check_env

    check_env(gym.make(env_id, episode_length=5).unwrapped, skip_render_check=True)


@pytest.mark.parametrize(
    ("env_id", "split_of"),
    [
        ("HalfCheetahVel-v0", lambda task: interval_split(task.target_velocity, 0.0, 3.0, 30, 5)),
        (
            "AntGoal-v0",
            lambda task: interval_split(np.arctan2(task.y, task.x) % (2 * np.pi), 0.0, 2 * np.pi, 30, 5),
        ),
    ],
)
def test_train_and_test_tasks_are_disjoint(env_id: str, split_of) -> None:
    rng = np.random.default_rng(0)
    for split in ("train", "test"):
        batch = gym.make(env_id, split=split).unwrapped.batch
        tasks = [batch.sample_task(rng) for _ in range(300)]
        assert {split_of(task) for task in tasks} == {split}
        assert {batch.task_split(task) for task in tasks} == {split}
    velocities = [
        gym.make("HalfCheetahVel-v0", split="test").unwrapped.batch.sample_task(rng) for _ in range(1)
    ]
    assert 0.0 <= velocities[0].target_velocity < 3.0
    # Test bins are 1 in 5 (width 0.1 of 3): the train tasks still cover the whole range.
    batch = gym.make("HalfCheetahVel-v0").unwrapped.batch
    train = np.array([batch.sample_task(rng).target_velocity for _ in range(2000)])
    assert train.min() < 0.1 and train.max() > 2.9
    hist = np.histogram(train, bins=30, range=(0, 3))[0]
    assert (hist[2::5] == 0).all() and (np.delete(hist, np.arange(2, 30, 5)) > 0).all()
    goals = gym.make("AntGoal-v0").unwrapped.batch
    radii = np.array([np.hypot(t.x, t.y) for t in (goals.sample_task(rng) for _ in range(2000))])
    # r = 3 sqrt(U): P(r < 1.5) = 1/4
    assert radii.max() <= 3.0 and abs(np.mean(radii < 1.5) - 0.25) < 0.04


def test_bad_constants_and_tasks_are_rejected() -> None:
    with pytest.raises(ValueError, match="ctrl_cost_weight"):
        gym.make("HalfCheetahDir-v0", ctrl_cost_weight=-1.0)
    with pytest.raises(ValueError, match="healthy_z_range"):
        gym.make("AntDir-v0", healthy_z_range=(1.0, 0.2))
    with pytest.raises(ValueError, match="test_bin_stride"):
        gym.make("HalfCheetahVel-v0", test_bin_stride=1)
    env = gym.make("HalfCheetahDir-v0")
    with pytest.raises(TypeError, match="DirectionTask"):
        env.reset(options={"task": VelocityTask(1.0)})
    with pytest.raises(ValueError, match="direction"):
        env.reset(options={"task": DirectionTask(0)})
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(np.full(6, 2.0, np.float32))
    with pytest.raises(TypeError, match="real numbers"):
        env.step(np.full(6, "0.1"))


def test_reward_constants_whose_trial_sum_overflows_are_rejected() -> None:
    # A reward term's largest value per step, times the 400 steps of a trial, must fit in float32.
    for env_id, kwargs in [
        ("HalfCheetahVel-v0", {"ctrl_cost_weight": 1e300}),  # times ‖a‖² <= 6
        ("AntDir-v0", {"healthy_reward": 1e308}),
        ("AntGoal-v0", {"contact_cost_weight": 1e37}),
    ]:
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            gym.make(env_id, **kwargs)
    gym.make("AntDir-v0", healthy_reward=1e30).close()  # large but finite over the trial


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_constructor_constants_are_declared_once_by_the_batch(env_id: str) -> None:
    import inspect

    from bayes_envs.core import batch_constants

    env = gym.make(env_id).unwrapped
    parameters = list(inspect.signature(type(env).__init__).parameters.values())
    declared = batch_constants(env.batch_class)
    assert [p.name for p in parameters[:3]] == ["self", "render_mode", "rl2_inputs"]
    assert {p.name: p.default for p in parameters[3:]} == {name: p.default for name, p in declared.items()}
    # The documented defaults (VariBAD's settings) are what the env runs with.
    defaults = {name: p.default for name, p in declared.items()}
    assert defaults["episode_length"] == 200 and defaults["episodes_per_trial"] == 2
    batch = env.batch
    for name in ("ctrl_cost_weight", "reset_noise_scale"):
        assert getattr(batch, name) == defaults[name]
    with pytest.raises(TypeError, match="unexpected keyword argument 'velocity'"):
        gym.make(env_id, velocity=1.0)


class ConstantPolicy:
    """A stateless ``predict`` policy, to check the evaluation bookkeeping."""

    def __init__(self, action: np.ndarray) -> None:
        self.action = action

    def predict(self, observation, state=None, episode_start=None, deterministic=True):
        return np.tile(self.action, (len(observation["obs"]), 1)), state


def test_evaluation_returns_chunks_and_more_inner_episodes() -> None:
    policy = ConstantPolicy(np.full(6, 0.5, np.float32))
    result = evaluate(policy, "HalfCheetahDir-v0", n_tasks=3, seed=4, episode_length=6, episodes_per_trial=3)
    assert result.episode_returns.shape == (3, 3) and result.step_rewards.shape == (3, 18)
    chunked = evaluate(
        policy, "HalfCheetahDir-v0", n_tasks=3, seed=4, episode_length=6, episodes_per_trial=3, n_envs=2
    )
    np.testing.assert_allclose(chunked.episode_returns, result.episode_returns, rtol=1e-6)
    assert chunked.tasks == result.tasks
    # the same returns from a single env rolled out by hand
    for i, task in enumerate(result.tasks):
        env = gym.make("HalfCheetahDir-v0", episode_length=6, episodes_per_trial=3)
        _, info = env.reset(seed=4 + i)
        assert info["task"] == task
        returns, forward = [], np.zeros(3)
        for _ in range(18):
            _, _, _, _, info = env.step(policy.action)
            forward[info["inner_episode"]] += info["forward_reward"]
            if info["inner_done"]:
                returns.append(info["inner_return"])
        np.testing.assert_allclose(result.episode_returns[i], returns, rtol=1e-5)
        # the forward progress per inner episode: the task's direction times the x velocity, summed
        np.testing.assert_allclose(result.episode_forward[i], forward, rtol=1e-5)
    directions = np.array([task.direction for task in result.tasks])
    assert len(set(directions)) == 2, "seed 4 should draw both directions"
    summary = result.summary()
    np.testing.assert_allclose(summary["task_direction_rate"], (result.episode_forward > 0).mean(0))
    per_task = summary["task_direction_rate_per_task"]
    assert sorted(per_task) == sorted({str(task) for task in result.tasks})
    for label, rates in per_task.items():
        rows = [i for i, task in enumerate(result.tasks) if str(task) == label]
        np.testing.assert_allclose(rates, (result.episode_forward[rows] > 0).mean(0))
    # a constant action moves the cheetah one way: the tasks of the other direction score negative
    assert np.all(np.sign(result.episode_forward) == np.sign(result.episode_forward[:, :1]))
    assert len(set(np.sign(result.episode_forward[:, 0]))) == 2
    # an unhealthy ant ends inner episodes early: the step rewards are NaN-padded
    early = evaluate(
        ConstantPolicy(np.zeros(8, np.float32)), "AntDir-v0", n_tasks=2, healthy_z_range=(0.2, 0.3)
    )
    assert early.step_rewards.shape == (2, 2) and early.summary()["n_tasks"] == 2


def test_evaluation_records_the_belief_posterior_over_time() -> None:
    from sb3_contrib import RecurrentPPO

    from bayes_agents import LaplacePolicy
    from bayes_agents.defaults import LAPLACE_SETTINGS

    venv = bayes_envs.make_vec("HalfCheetahVel-v0", 2, seed=0, episode_length=4)
    kwargs = {"hidden_size": 8, "latent_dim": 3, "embed_sizes": (), **LAPLACE_SETTINGS}
    model = RecurrentPPO(LaplacePolicy, venv, policy_kwargs=kwargs, n_steps=8, seed=0, device="cpu")
    result = evaluate(model, "HalfCheetahVel-v0", n_tasks=3, seed=1, episode_length=4)
    assert result.belief_entropy.shape == (3, 8) and result.belief_kl.shape == (3, 8)
    # the same statistics from a hand-run rollout
    venv = bayes_envs.make_vec("HalfCheetahVel-v0", 3, seed=1, monitor=False, episode_length=4)
    obs, state, start, entropies = venv.reset(), None, np.ones(3, bool), []
    for _ in range(8):
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        entropies.append(model.policy.last_belief_output.entropy.numpy())
        obs, _, start, _ = venv.step(action)
    np.testing.assert_allclose(result.belief_entropy, np.array(entropies).T, rtol=1e-5)
    summary = result.summary()
    assert len(summary["belief_entropy_mean"]) == 8 and np.isfinite(summary["belief_kl_mean"]).all()


def test_parallel_make_vec_runs_subprocesses_with_the_same_trials() -> None:
    from stable_baselines3.common.vec_env import SubprocVecEnv

    parallel = bayes_envs.make_vec(
        "HalfCheetahDir-v0", 2, seed=3, monitor=False, parallel=True, episode_length=3
    )
    in_process = bayes_envs.make_vec("HalfCheetahDir-v0", 2, seed=3, monitor=False, episode_length=3)
    try:
        assert isinstance(parallel, SubprocVecEnv)
        obs_p, obs_i = parallel.reset(), in_process.reset()
        assert parallel.get_attr("task") == in_process.get_attr("task")
        actions = np.random.default_rng(0).uniform(-1, 1, (7, 2, 6)).astype(np.float32)
        for step_actions in actions:  # crosses a trial end (6 steps) and the automatic restart
            obs_p, rewards_p, dones_p, _ = parallel.step(step_actions)
            obs_i, rewards_i, dones_i, _ = in_process.step(step_actions)
            np.testing.assert_allclose(obs_p["obs"], obs_i["obs"], rtol=1e-6)
            np.testing.assert_allclose(rewards_p, rewards_i, rtol=1e-5)
            np.testing.assert_array_equal(dones_p, dones_i)
    finally:
        parallel.close()
