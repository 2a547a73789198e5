"""Exact checks of the three core environments against their specification
(docs/specification.md#environments)."""

from __future__ import annotations

import pickle
import warnings

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from gymnasium.utils.seeding import np_random
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import bayes_envs
from bayes_envs import BanditTask, FourierTask, GridTask
from bayes_envs.grid import goal_candidates

ENV_IDS = ["BayesBandit-v0", "BayesGrid-v0", "FourierRegression-v0"]


def random_actions(space: gym.Space, rng: np.random.Generator, n: int) -> np.ndarray:
    if isinstance(space, gym.spaces.Discrete):
        return rng.integers(space.n, size=n)
    return rng.uniform(space.low, space.high, (n, *space.shape)).astype(np.float32)


def run_trial(env: gym.Env, actions) -> tuple[list, list, list, list]:
    observations, rewards, terminations, infos = [], [], [], []
    for action in actions:
        obs, reward, terminated, truncated, info = env.step(action)
        assert not truncated
        observations.append(obs)
        rewards.append(reward)
        terminations.append(terminated)
        infos.append(info)
        if terminated:
            break
    return observations, rewards, terminations, infos


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("rl2_inputs", [True, False])
def test_env_checkers_pass(env_id: str, rl2_inputs: bool) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # advice only (e.g. "normalise the Box action space")
        gym_check_env(gym.make(env_id, rl2_inputs=rl2_inputs).unwrapped)
        sb3_check_env(gym.make(env_id, rl2_inputs=rl2_inputs).unwrapped)


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_registered_with_module_prefix(env_id: str) -> None:
    env = gym.make(f"bayes_envs:{env_id}")
    obs, info = env.reset(seed=0)
    assert set(obs) == {"obs", "prev_action", "prev_reward", "new_episode"}
    assert info["inner_episode"] == 0 and info["task"] == env.unwrapped.task


# ----------------------------------------------------------------------------- grid
def test_grid_goal_set_is_the_21_cells_away_from_start() -> None:
    cells = {tuple(c) for c in goal_candidates(5).tolist()}
    expected = {(x, y) for x in range(5) for y in range(5)} - {(0, 0), (0, 1), (1, 0), (1, 1)}
    assert cells == expected and len(cells) == 21
    env = gym.make("BayesGrid-v0")
    env.reset(seed=0)
    goals = {env.unwrapped.sample_task().goal for _ in range(3000)}
    assert goals == expected


def test_grid_moves_rewards_and_inner_episodes() -> None:
    env = gym.make("BayesGrid-v0")
    obs, _ = env.reset(seed=1, options={"task": GridTask(goal=(2, 0))})
    np.testing.assert_array_equal(obs["obs"], [0, 0])
    # left and down are clipped at the border; right twice reaches the goal, noop stays on it.
    expected = [
        (4, (0, 0), -0.1),
        (3, (0, 0), -0.1),
        (1, (0, 1), -0.1),
        (3, (0, 0), -0.1),
        (2, (1, 0), -0.1),
        (2, (2, 0), 1.0),
        (0, (2, 0), 1.0),
        (1, (2, 1), -0.1),
    ]
    for action, position, reward in expected:
        obs, r, terminated, _, info = env.step(action)
        np.testing.assert_array_equal(obs["obs"], position)
        assert r == pytest.approx(reward) and not terminated and not info["inner_done"]
        assert obs["prev_reward"][0] == pytest.approx(reward)
        np.testing.assert_array_equal(obs["prev_action"], np.eye(5)[action])
        assert obs["new_episode"][0] == 0
    ret = -0.1 * 6 + 2.0
    for step in range(8, 15):  # noop at (2, 1) until the inner episode ends
        obs, r, terminated, _, info = env.step(0)
        ret += r
        assert info["inner_episode"] == 0 and info["inner_done"] == (step == 14)
    assert info["inner_return"] == pytest.approx(ret)
    # the next inner episode starts from its real start observation, flagged, keeping the last reward
    np.testing.assert_array_equal(obs["obs"], [0, 0])
    assert obs["new_episode"][0] == 1 and obs["prev_reward"][0] == pytest.approx(-0.1)
    assert not terminated
    for inner in range(1, 4):
        for step in range(15):
            obs, r, terminated, _, info = env.step(2 if step < 2 else 0)
            assert info["inner_episode"] == inner
            assert terminated == (inner == 3 and step == 14)
        assert info["inner_return"] == pytest.approx(-0.1 + 14 * 1.0)
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)


def test_grid_oracle_average_is_11_07() -> None:
    env = gym.make("BayesGrid-v0", episodes_per_trial=1)
    returns = []
    for x, y in goal_candidates(5).tolist():
        env.reset(options={"task": GridTask(goal=(x, y))})
        path = [2] * x + [1] * y + [0] * (15 - x - y)
        _, rewards, terminations, _ = run_trial(env, path)
        assert terminations[-1] and len(rewards) == 15
        returns.append(sum(rewards))
    assert np.mean(returns) == pytest.approx(11.0714, abs=1e-3)


# ----------------------------------------------------------------------------- bandit
@pytest.mark.parametrize(("split", "alpha"), [("train", 0.2), ("test", 0.3)])
def test_bandit_task_is_dirichlet_of_the_split(split: str, alpha: float) -> None:
    env = gym.make("BayesBandit-v0", split=split)
    _, info = env.reset(seed=7)
    rng = np_random(7)[0]
    np.testing.assert_array_equal(info["task"].probs, rng.dirichlet(np.full(5, alpha)))
    uniforms = rng.random(50)
    _, rewards, terminations, infos = run_trial(env, [a % 5 for a in range(50)])
    probs = info["task"].probs
    assert len(rewards) == 50 and terminations[-1] and not any(terminations[:-1])
    np.testing.assert_array_equal(rewards, [float(uniforms[t] < probs[t % 5]) for t in range(50)])
    np.testing.assert_allclose([i["regret"] for i in infos], [probs.max() - probs[t % 5] for t in range(50)])
    assert [i["inner_episode"] for i in infos] == list(range(50))
    # moments of the Dirichlet: E p = 1/K, Var p = (K-1)/(K²(Kα+1))
    samples = np.array([env.unwrapped.sample_task().probs for _ in range(4000)])
    np.testing.assert_allclose(samples.sum(1), 1.0)
    assert samples.mean() == pytest.approx(0.2, abs=0.01)
    assert samples.var(axis=0).mean() == pytest.approx(4 / (25 * (5 * alpha + 1)), rel=0.08)


def test_bandit_alpha_override_and_horizon() -> None:
    env = gym.make("BayesBandit-v0", alpha=1.5, horizon=7, n_arms=3)
    env.reset(seed=0)
    assert env.unwrapped.batch.alpha == 1.5
    _, rewards, terminations, _ = run_trial(env, [0] * 10)
    assert len(rewards) == 7 and terminations[-1]


# ----------------------------------------------------------------------------- regression
def hand_fourier(task: FourierTask, x: float) -> float:
    a = task.amplitudes
    total = a[0] / 2
    for k in (1, 2, 3):
        total += a[k] * np.cos((2 * np.pi * k * (x - task.shift) - task.phases[k - 1]) / 2)
    return float(total)


def test_regression_function_observations_and_reward() -> None:
    env = gym.make("FourierRegression-v0")
    obs, info = env.reset(seed=3)
    task = info["task"]
    rng = np_random(3)[0]
    amplitudes = (rng.random(4) * 2 - 1) * np.array([1, 2, 3, 4]) / 3
    np.testing.assert_allclose(task.amplitudes, amplitudes, rtol=1e-14)
    assert task.shift == rng.uniform(0, np.pi)
    np.testing.assert_array_equal(task.phases, rng.uniform(0, np.pi, 3))
    xs = rng.uniform(-1, 1, 50)
    prev = (0.0, 0.0)
    for t in range(50):
        np.testing.assert_allclose(obs["obs"], [xs[t], *prev], rtol=1e-6, atol=1e-6)
        prediction = np.array([0.5], np.float32)
        obs, reward, terminated, _, info = env.step(prediction)
        y = hand_fourier(task, xs[t])
        assert info["y"] == pytest.approx(y, abs=1e-12) and info["x"] == xs[t]
        assert reward == pytest.approx(-((0.5 - y) ** 2), rel=1e-5)
        assert terminated == (t == 49)
        prev = (xs[t], y)
    bound = env.unwrapped.batch.y_bound
    assert bound == pytest.approx(19 / 6)
    grid = np.linspace(-1, 1, 201)
    for _ in range(200):
        assert np.abs(env.unwrapped.sample_task()(grid)).max() <= bound


def test_regression_rejects_nan_inf_and_out_of_range_predictions() -> None:
    env = gym.make("FourierRegression-v0")
    env.reset(seed=0)
    for bad in (np.array([np.nan]), np.array([np.inf]), np.array([-np.inf]), np.array([10.0])):
        with pytest.raises(ValueError, match=r"finite|outside"):
            env.step(bad.astype(np.float32))


# ----------------------------------------------------------------------------- common
@pytest.mark.parametrize("env_id", ENV_IDS)
def test_seeding_reproduces_trials(env_id: str) -> None:
    def trajectory(seed: int) -> list:
        env = gym.make(env_id)
        out = []
        env.reset(seed=seed)
        rng = np.random.default_rng(0)
        for _ in range(3):  # three trials: the task sequence continues from the seed
            obs, info = env.reset()
            out.append(repr(info["task"]))
            for action in random_actions(env.action_space, rng, 200):
                obs, reward, terminated, _, _ = env.step(action)
                out.append((reward, *np.concatenate([v.ravel() for v in obs.values()]).tolist()))
                if terminated:
                    break
        return out

    assert trajectory(11) == trajectory(11)
    assert trajectory(11) != trajectory(12)


@pytest.mark.parametrize("env_id", ENV_IDS)
@pytest.mark.parametrize("rl2_inputs", [True, False])
def test_vectorised_equals_single_envs(env_id: str, rl2_inputs: bool) -> None:
    n_envs, seed = 5, 21
    venv = bayes_envs.make_vec(env_id, n_envs, seed=seed, rl2_inputs=rl2_inputs, monitor=False)
    singles = [gym.make(env_id, rl2_inputs=rl2_inputs) for _ in range(n_envs)]
    obs_v = venv.reset()
    obs_s = [env.reset(seed=seed + i)[0] for i, env in enumerate(singles)]

    def as_dict(o):
        return o if isinstance(o, dict) else {"obs": o}

    rng = np.random.default_rng(1)
    n_dones = 0
    for _ in range(130):
        for i in range(n_envs):
            for key, value in as_dict(obs_v).items():
                np.testing.assert_array_equal(value[i], as_dict(obs_s[i])[key])
            assert venv.get_attr("task", i)[0] == singles[i].unwrapped.task
        actions = random_actions(venv.action_space, rng, n_envs)
        obs_v, rewards, dones, infos = venv.step(actions)
        for i, env in enumerate(singles):
            obs, reward, terminated, _, info = env.step(actions[i])
            assert rewards[i] == np.float32(reward) and dones[i] == terminated
            for key in ("inner_episode", "inner_done", "inner_return", "regret", "y"):
                assert infos[i].get(key) == info.get(key)
            if terminated:
                n_dones += 1
                for key, value in as_dict(infos[i]["terminal_observation"]).items():
                    np.testing.assert_array_equal(value, as_dict(obs)[key])
                obs, _ = env.reset()
            obs_s[i] = obs
    assert n_dones >= n_envs  # the comparison covered automatic resets


def test_tasks_are_printable_picklable_and_pinnable() -> None:
    for env_id in ENV_IDS:
        env = gym.make(env_id)
        env.reset(seed=0)
        task = env.unwrapped.sample_task()
        assert pickle.loads(pickle.dumps(task)) == task and repr(task).startswith(type(task).__name__)
        _, info = env.reset(options={"task": task})
        assert info["task"] == task and env.unwrapped.task == task
        other = env.unwrapped.sample_task()
        env.unwrapped.set_task(other)
        assert env.unwrapped.task == other
    venv = bayes_envs.make_vec("BayesGrid-v0", 3, seed=0)
    venv.set_options({"task": GridTask(goal=(4, 4))})
    venv.reset()
    assert venv.get_attr("task") == [GridTask(goal=(4, 4))] * 3


def test_set_task_changes_the_reward_immediately() -> None:
    env = gym.make("BayesGrid-v0")
    env.reset(options={"task": GridTask(goal=(4, 4))})
    env.unwrapped.set_task(GridTask(goal=(2, 0)))
    env.step(2)
    assert env.step(2)[1] == pytest.approx(1.0)


# ----------------------------------------------------------------------------- bad input
@pytest.mark.parametrize(
    ("env_id", "kwargs", "name"),
    [
        ("BayesGrid-v0", {"size": 2}, "size"),
        ("BayesGrid-v0", {"episode_length": 0}, "episode_length"),
        ("BayesGrid-v0", {"episodes_per_trial": 0}, "episodes_per_trial"),
        ("BayesGrid-v0", {"split": "validation"}, "split"),
        ("BayesGrid-v0", {"step_reward": float("nan")}, "step_reward"),
        ("BayesBandit-v0", {"alpha": 0.0}, "alpha"),
        ("BayesBandit-v0", {"alpha": -1.0}, "alpha"),
        ("BayesBandit-v0", {"n_arms": 1}, "n_arms"),
        ("BayesBandit-v0", {"horizon": 0}, "horizon"),
        ("FourierRegression-v0", {"n_points": 0}, "n_points"),
        ("FourierRegression-v0", {"n_components": 0}, "n_components"),
        ("BayesGrid-v0", {"render_mode": "svg"}, "render_mode"),
    ],
)
def test_bad_constructor_arguments_name_the_argument(env_id: str, kwargs: dict, name: str) -> None:
    with pytest.raises(ValueError, match=name):
        gym.make(env_id, **kwargs)


def test_bad_types_raise_type_error() -> None:
    with pytest.raises(TypeError, match="size"):
        gym.make("BayesGrid-v0", size=5.5)
    with pytest.raises(TypeError, match="horizon"):
        gym.make("BayesBandit-v0", horizon="50")
    env = gym.make("BayesGrid-v0")
    with pytest.raises(TypeError, match="GridTask"):
        env.reset(options={"task": BanditTask(probs=np.ones(5) / 5)})


def test_bad_actions_and_order_raise() -> None:
    env = gym.make("BayesGrid-v0").unwrapped
    with pytest.raises(RuntimeError, match="reset"):
        env.step(0)
    env.reset(seed=0)
    for bad in (5, -1, np.array([0, 1])):
        with pytest.raises(ValueError, match="action"):
            env.step(bad)
    with pytest.raises(ValueError, match="goal"):
        env.reset(options={"task": GridTask(goal=(1, 1))})
    with pytest.raises(ValueError, match="reset option"):
        env.reset(options={"goal": (3, 3)})
    bandit = gym.make("BayesBandit-v0").unwrapped
    bandit.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        bandit.step(5)
    with pytest.raises(ValueError, match="probs"):
        bandit.reset(options={"task": BanditTask(probs=np.ones(4) / 4)})
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=0)
    venv.reset()
    with pytest.raises(ValueError, match="action"):
        venv.step(np.array([0, 1, 2, 7]))


def test_discrete_actions_must_be_integers_not_floats_bools_or_strings() -> None:
    for env_id in ("BayesGrid-v0", "BayesBandit-v0"):
        env = gym.make(env_id).unwrapped
        env.reset(seed=0)
        for bad in (2.0, 1.5, np.float32(2), np.array(2.0), True, np.bool_(True), "2"):
            with pytest.raises(TypeError, match="discrete actions must be integers"):
                env.step(bad)
        env.step(2)  # ints and integer arrays of any width still work
        env.step(np.int8(1))
    venv = bayes_envs.make_vec("BayesGrid-v0", 3, seed=0)
    venv.reset()
    with pytest.raises(TypeError, match="integers"):
        venv.step(np.array([0.0, 1.0, 2.0]))
    venv.step(np.array([0, 1, 2], np.int32))


def test_continuous_actions_must_be_real_numbers() -> None:
    env = gym.make("FourierRegression-v0").unwrapped
    env.reset(seed=0)
    for bad in ("0.1", np.array(["0.1"]), 1 + 0j, np.array([0.1 + 0j]), True, np.array([None])):
        with pytest.raises(TypeError, match="real numbers"):
            env.step(bad)
    for good in (0.1, np.float32(-0.2), np.array([0.3]), 0):
        env.step(good)
    venv = bayes_envs.make_vec("FourierRegression-v0", 2, seed=0)
    venv.reset()
    with pytest.raises(TypeError, match="real numbers"):
        venv.step(np.array([["0.1"], ["0.2"]]))


def test_make_vec_seed_must_be_a_non_negative_int() -> None:
    for bad in (True, "0", 1.0, [0]):
        with pytest.raises(TypeError, match="seed"):
            bayes_envs.make_vec("BayesGrid-v0", 2, seed=bad)
    with pytest.raises(ValueError, match="seed"):
        bayes_envs.make_vec("BayesGrid-v0", 2, seed=-1)
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=np.int64(3), monitor=False)
    same = bayes_envs.make_vec("BayesGrid-v0", 2, seed=3, monitor=False)
    assert venv.reset()["obs"].tolist() == same.reset()["obs"].tolist() and venv.tasks == same.tasks
    with pytest.raises(TypeError, match="seed"):
        venv.seed("0")


def test_reward_constants_whose_trial_sum_overflows_are_rejected() -> None:
    # 60 steps per trial by default: |reward|·60 must stay below float32's 3.4e38.
    for kwargs in ({"step_reward": 1e308}, {"goal_reward": 1e37}, {"step_reward": -1e37}):
        with pytest.raises(ValueError, match=next(iter(kwargs))):
            gym.make("BayesGrid-v0", **kwargs)
    with pytest.raises(ValueError, match="step_reward"):  # fine for 60 steps, not for 6000
        gym.make("BayesGrid-v0", step_reward=1e36, episode_length=1500)
    env = gym.make("BayesGrid-v0", goal_reward=5e36, step_reward=-5e36)
    env.reset(seed=0)
    total, done = 0.0, False
    while not done:
        _, reward, done, _, info = env.step(1)
        assert np.isfinite(reward)
        total += reward
        if info["inner_done"]:
            assert np.isfinite(info["inner_return"])
    assert np.isfinite(np.float32(total)) and np.isfinite(env.observation_space["prev_reward"].high).all()


@pytest.mark.parametrize("env_id", ENV_IDS)
def test_env_constructor_constants_are_the_batch_declarations(env_id: str) -> None:
    import inspect

    from bayes_envs.core import batch_constants

    env_class = type(gym.make(env_id).unwrapped)
    parameters = inspect.signature(env_class.__init__).parameters
    assert list(parameters)[:3] == ["self", "render_mode", "rl2_inputs"]
    declared = {name: p.default for name, p in batch_constants(env_class.batch_class).items()}
    assert {name: p.default for name, p in list(parameters.items())[3:]} == declared
    assert all(p.kind is inspect.Parameter.KEYWORD_ONLY for p in list(parameters.values())[3:])
    assert "split" in declared and len(declared) >= 4
    with pytest.raises(TypeError, match="unexpected keyword argument 'not_a_constant'"):
        gym.make(env_id, not_a_constant=1)
    # The defaults are the batch's: an env built with them explicitly equals the default env.
    explicit = gym.make(env_id, **declared).unwrapped
    default = gym.make(env_id).unwrapped
    assert explicit.reset(seed=4)[1]["task"] == default.reset(seed=4)[1]["task"]


# ----------------------------------------------------------------------------- rendering
def test_rendering_rgb_and_ansi() -> None:
    env = gym.make("BayesGrid-v0", render_mode="rgb_array")
    env.reset(options={"task": GridTask(goal=(2, 0))})
    before = env.render()
    assert before.dtype == np.uint8 and before.shape == (160, 160, 3)
    env.step(2)
    env.step(2)  # the goal is found: it is drawn green
    after = env.render()
    assert after.shape == before.shape and (after != before).any()
    assert (after == np.array([80, 200, 80], np.uint8)).all(axis=2).sum() > 100
    text = gym.make("BayesGrid-v0", render_mode="ansi")
    text.reset(options={"task": GridTask(goal=(2, 0))})
    text.step(2)
    text.step(2)
    assert "A" in text.render() and "o" in text.render()
    bandit = gym.make("BayesBandit-v0", render_mode="rgb_array")
    bandit.reset(seed=0)
    frame = bandit.render()
    bandit.step(3)
    assert bandit.render().shape == frame.shape and frame.dtype == np.uint8
    ansi = gym.make("BayesBandit-v0", render_mode="ansi")
    ansi.reset(seed=0)
    ansi.step(1)
    assert "arm 1: pulls   1" in ansi.render()
    regression = gym.make("FourierRegression-v0", render_mode="ansi")
    regression.reset(seed=0)
    assert "query" in regression.render()


@pytest.mark.parametrize("env_id", ["BayesGrid-v0", "BayesBandit-v0"])
def test_record_video_writes_a_file(env_id: str, tmp_path) -> None:
    pytest.importorskip("moviepy", reason="moviepy (in the [test] extra) records the videos")
    from gymnasium.wrappers import RecordVideo

    env = RecordVideo(
        gym.make(env_id, render_mode="rgb_array"),
        str(tmp_path),
        episode_trigger=lambda e: True,
        disable_logger=True,
    )
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(env.action_space.sample())
    env.close()
    videos = list(tmp_path.glob("*.mp4"))
    assert len(videos) == 1 and videos[0].stat().st_size > 1000
