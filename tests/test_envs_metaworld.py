"""Meta-World ML1/ML10/ML45 trials: splits, hidden goals, inner episodes, success, evaluation."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch

pytest.importorskip(
    "metaworld",
    reason="the Meta-World envs need the [metaworld] extra (pip install 'bayes-meta-rl[metaworld]')",
)

from bayes_envs.evaluation import EvaluationResult, evaluate
from bayes_envs.meta_world import MetaWorldTask, get_benchmark
from bayes_envs.references.base import ReferencePolicy

SHORT = 60  # steps per inner episode in these tests (Meta-World's default is 500)


@pytest.fixture(scope="module")
def reach() -> gym.Env:
    return gym.make("MetaWorld-ML1-v0", env_name="reach-v3", max_path_length=SHORT)


def test_benchmarks_are_built_once_per_process() -> None:
    assert get_benchmark("ML1", "reach-v3", 0) is get_benchmark("ML1", "reach-v3", 0)
    with pytest.raises(ValueError, match="env_name"):
        get_benchmark("ML1", "no-such-env", 0)
    with pytest.raises(ValueError, match="kind"):
        get_benchmark("ML2", None, 0)


def test_ml1_train_and_test_goals_are_disjoint(reach: gym.Env) -> None:
    train = reach.unwrapped.batch
    test = gym.make("MetaWorld-ML1-v0", env_name="reach-v3", split="test").unwrapped.batch
    goals = {
        split: np.array(
            [
                batch.task_parameters(MetaWorldTask("reach-v3", split, i))
                for i in range(len(batch.metaworld_tasks))
            ]
        )
        for split, batch in (("train", train), ("test", test))
    }
    assert len(goals["train"]) == len(goals["test"]) == 50
    distances = np.abs(goals["train"][:, None, :] - goals["test"][None, :, :]).max(axis=2)
    assert distances.min() > 1e-6
    rng = np.random.default_rng(0)
    sampled = [test.sample_task(rng) for _ in range(100)]
    assert {task.split for task in sampled} == {"test"} and len({task.index for task in sampled}) > 30
    with pytest.raises(ValueError, match="split"):
        gym.make("MetaWorld-ML1-v0", env_name="reach-v3").reset(options={"task": sampled[0]})


def test_goal_is_hidden_and_inner_episodes_restart_from_the_task_start(reach: gym.Env) -> None:
    task = MetaWorldTask("reach-v3", "train", 3)
    obs, info = reach.reset(seed=0, options={"task": task})
    assert info["task"] == task and reach.unwrapped.task_class == "reach-v3"
    np.testing.assert_array_equal(obs["obs"][-3:], 0.0)  # the goal entries
    start = obs["obs"].copy()
    rng = np.random.default_rng(0)
    for t in range(1, 2 * SHORT + 1):
        obs, reward, terminated, truncated, info = reach.step(rng.uniform(-1, 1, 4).astype(np.float32))
        assert 0.0 <= reward <= 10.0 and info["task_class"] == "reach-v3"
        assert info["inner_done"] == (t % SHORT == 0) and terminated == (t == 2 * SHORT) and not truncated
        if t == SHORT:
            np.testing.assert_allclose(obs["obs"], start, atol=1e-6)
            assert obs["new_episode"][0] == 1.0


def test_hide_objects_zeroes_only_the_object_entries_and_leaves_the_dynamics(reach: gym.Env) -> None:
    from bayes_envs.meta_world import OBJECT_ENTRIES

    hidden = gym.make("MetaWorld-ML1-v0", env_name="reach-v3", max_path_length=SHORT, hide_objects=True)
    task = MetaWorldTask("reach-v3", "train", 5)
    plain_obs, _ = reach.reset(seed=0, options={"task": task})
    hidden_obs, _ = hidden.reset(seed=0, options={"task": task})
    # The plain start observation shows the task's object position (its rand_vec's first entries).
    np.testing.assert_allclose(
        plain_obs["obs"][4:6], reach.unwrapped.batch.task_parameters(task)[:2], atol=1e-3
    )
    kept = np.setdiff1d(np.arange(39), OBJECT_ENTRIES)
    rng = np.random.default_rng(1)
    for _ in range(SHORT + 5):
        np.testing.assert_array_equal(hidden_obs["obs"][OBJECT_ENTRIES], 0.0)
        np.testing.assert_array_equal(hidden_obs["obs"][kept], plain_obs["obs"][kept])
        action = rng.uniform(-1, 1, 4).astype(np.float32)
        plain_obs, plain_reward, *_ = reach.step(action)
        hidden_obs, hidden_reward, *_ = hidden.step(action)
        assert hidden_reward == plain_reward
    with pytest.raises(TypeError, match="hide_objects"):
        gym.make("MetaWorld-ML1-v0", env_name="reach-v3", hide_objects="yes")


class ScriptedReachOracle(ReferencePolicy):
    """Meta-World's scripted reach policy, handed the hidden goal: succeeds in every inner episode."""

    privileged = True

    def __init__(self, split: str) -> None:
        from metaworld.policies.sawyer_reach_v3_policy import SawyerReachV3Policy

        self.batch = gym.make("MetaWorld-ML1-v0", env_name="reach-v3", split=split).unwrapped.batch
        self.scripted = SawyerReachV3Policy()

    def act(self, observation, trial_start, tasks) -> np.ndarray:
        actions = []
        for obs, task in zip(observation["obs"], tasks, strict=True):
            full = obs.astype(np.float64).copy()
            full[-3:] = self.batch.task_parameters(task)[-3:]  # reach's goal is the end of its rand_vec
            actions.append(np.clip(self.scripted.get_action(full), -1, 1))
        return np.array(actions, np.float32)


class StillPolicy(ReferencePolicy):
    def act(self, observation, trial_start, tasks) -> np.ndarray:
        return np.zeros((len(trial_start), 4), np.float32)


def test_success_is_reported_per_inner_episode_and_evaluated() -> None:
    oracle = evaluate(
        ScriptedReachOracle("test"),
        "MetaWorld-ML1-v0",
        n_tasks=3,
        seed=0,
        env_name="reach-v3",
        split="test",
        max_path_length=SHORT,
        episodes_per_trial=3,
    )
    assert oracle.episode_success.shape == (3, 3) and oracle.task_classes == ["reach-v3"] * 3
    np.testing.assert_array_equal(oracle.episode_success, 1.0)
    summary = oracle.summary()
    assert summary["success_rate"] == [1.0, 1.0, 1.0] and summary["success_rate_per_class"] == {
        "reach-v3": [1.0, 1.0, 1.0]
    }
    still = evaluate(
        StillPolicy(),
        "MetaWorld-ML1-v0",
        n_tasks=3,
        seed=0,
        env_name="reach-v3",
        split="test",
        max_path_length=SHORT,
    )
    np.testing.assert_array_equal(still.episode_success, 0.0)
    assert still.summary()["trial_success_rate"] == 0.0


def test_success_is_any_successful_step_of_the_inner_episode(reach: gym.Env) -> None:
    oracle = ScriptedReachOracle("train")
    obs, info = reach.reset(seed=1)
    step_success, success = [], []
    for _ in range(2 * SHORT):
        obs, _, _, _, info = reach.step(
            oracle.act({"obs": obs["obs"][None]}, np.ones(1, bool), [info["task"]])[0]
        )
        step_success.append(info["step_success"])
        success.append(info["success"])
        if info["inner_done"]:
            assert info["success"] == max(step_success[-SHORT:]) == 1.0
    step_success, success = np.array(step_success), np.array(success)
    for episode in range(2):
        rows = slice(episode * SHORT, (episode + 1) * SHORT)
        np.testing.assert_array_equal(success[rows], np.maximum.accumulate(step_success[rows]))


def test_success_rate_averages_over_task_classes() -> None:
    # 3 tasks of class a (all succeed), 1 of class b (fails): Meta-World's rate is 0.5, not 0.75.
    result = EvaluationResult(
        env_id="x",
        policy="p",
        seed=0,
        episode_returns=np.zeros((4, 2)),
        step_rewards=np.zeros((4, 3)),
        episode_success=np.array([[1.0, 1.0], [1.0, 1.0], [1.0, 0.0], [0.0, 1.0]]),
        task_classes=["a", "a", "a", "b"],
    )
    np.testing.assert_allclose(result.success_rate(), [0.5, 5 / 6])
    assert result.summary()["success_rate_per_class"] == {"a": [1.0, 2 / 3], "b": [0.0, 1.0]}


def test_seeding_reproduces_tasks(reach: gym.Env) -> None:
    env = gym.make("MetaWorld-ML1-v0", env_name="reach-v3", max_path_length=SHORT)
    tasks_a = [env.reset(seed=5 if i == 0 else None)[1]["task"] for i in range(4)]
    tasks_b = [reach.reset(seed=5 if i == 0 else None)[1]["task"] for i in range(4)]
    assert tasks_a == tasks_b


def test_gymnasium_env_checker_ml1() -> None:
    from gymnasium.utils.env_checker import check_env

    for hide_objects in (False, True):
        env = gym.make("MetaWorld-ML1-v0", env_name="push-v3", max_path_length=5, hide_objects=hide_objects)
        check_env(env.unwrapped, skip_render_check=True)


def test_ml10_classes_are_disjoint_and_share_one_observation_space() -> None:
    from gymnasium.utils.env_checker import check_env

    benchmark = get_benchmark("ML10", None, 0)
    assert not set(benchmark.train_classes) & set(benchmark.test_classes)
    assert len(benchmark.train_classes) == 10 and len(benchmark.test_classes) == 5
    env = gym.make("MetaWorld-ML10-v0", split="test", max_path_length=5)
    check_env(gym.make("MetaWorld-ML10-v0", max_path_length=5).unwrapped, skip_render_check=True)
    space = env.observation_space["obs"]
    for cls in [*benchmark.train_classes.values(), *benchmark.test_classes.values()]:
        other = cls().observation_space
        assert other.shape == space.shape
        finite = np.isfinite(space.low)
        np.testing.assert_array_equal(other.low[finite].astype(np.float32), space.low[finite])
    rng = np.random.default_rng(0)
    tasks = [env.unwrapped.sample_task(rng) for _ in range(60)]
    assert {task.env_name for task in tasks} == set(benchmark.test_classes)
    # a trial of each test class runs and reports its class
    for name in benchmark.test_classes:
        index = next(i for i, t in enumerate(env.unwrapped.batch.metaworld_tasks) if t.env_name == name)
        obs, _ = env.reset(options={"task": MetaWorldTask(name, "test", index)})
        assert space.contains(obs["obs"])
        _, _, _, _, info = env.step(np.zeros(4, np.float32))
        assert info["task_class"] == name


@pytest.mark.slow
def test_ml45_classes_are_disjoint() -> None:
    benchmark = get_benchmark("ML45", None, 0)
    assert not set(benchmark.train_classes) & set(benchmark.test_classes)
    from gymnasium.utils.env_checker import check_env

    env = gym.make("MetaWorld-ML45-v0", max_path_length=5).unwrapped
    check_env(env, skip_render_check=True)
    assert env.observation_space["obs"].shape == (39,)
    rng = np.random.default_rng(0)
    assert {env.sample_task(rng).env_name for _ in range(400)} == set(benchmark.train_classes)


def test_varibad_defaults_follow_the_papers_ml1_column_and_train() -> None:
    """VariBAD on Meta-World takes the VariBAD paper's ML1 hyper-parameters (Appendix E; the ELBO
    subsampled and the buffer shortened, as bayes_agents.defaults says), and a run built from them
    fills its VAE buffer with whole trials and takes VAE steps on the subsampled ELBO."""
    from bayes_agents import experiment

    config = experiment.resolve_config("MetaWorld-ML1-v0", "varibad")
    ppo, policy = config["ppo"], config["policy"]
    assert (config["n_envs"], ppo["n_steps"], 16 * ppo["n_steps"] // ppo["batch_size"]) == (16, 200, 8)
    assert (ppo["n_epochs"], ppo["clip_range"], ppo["learning_rate"], ppo["ent_coef"]) == (2, 0.1, 7e-4, 1e-3)
    assert (ppo["gamma"], ppo["gae_lambda"]) == (0.99, 0.9)
    assert policy["net_arch"] == [128, 128, 128] and policy["hidden_size"] == 128
    assert (policy["latent_dim"], policy["kl_weight"], policy["reward_decoder_sizes"]) == (5, 1.0, [64, 32])
    assert policy["reward_decoder_inputs"] == ["next_state"] and policy["state_decoder"] is False
    vae_schedule = (policy["vae_updates_per_ppo_update"], policy["vae_lr"], policy["vae_batch_trials"])
    assert vae_schedule == (3, 1e-3, 15)
    assert (policy["elbo_times"], policy["decodes_per_elbo"]) == (50, 50)

    overrides = {
        "n_envs": 2,
        "ppo": {"n_steps": 8, "batch_size": 16},
        "policy": {"vae_batch_trials": 2},
        "env": {"env_name": "reach-v3", "max_path_length": 4, "hide_objects": True},
    }
    config = experiment.resolve_config("MetaWorld-ML1-v0", "varibad", overrides=overrides)
    model = experiment.build_model(config)
    try:
        belief = model.policy.belief
        assert belief.reward_net[0].in_features == 5 + belief.input_layout.obs_dim  # [m, s']
        before = [parameter.detach().clone() for parameter in belief.reward_net.parameters()]
        model.learn(32)  # 4 rollouts of 2 envs x 8 steps: 4 trials of 2 x 4 steps
        assert belief.buffered_trials >= 2
        # Only the VAE steps move the reward decoder (the policy loss does not reach it).
        after = list(belief.reward_net.parameters())
        assert any(not torch.equal(old, new) for old, new in zip(before, after, strict=True))
    finally:
        model.get_env().close()
