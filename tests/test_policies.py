"""Belief policies under the stock sb3-contrib RecurrentPPO and under BayesPPO."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO

import bayes_envs
from bayes_agents import BayesPPO, LaplacePolicy, RL2Policy, laplace_from_rl2

SMALL = {"hidden_size": 16, "latent_dim": 8, "embed_sizes": (16,)}
LAPLACE = {**SMALL, "window": 2, "covariance": "full", "variant": "sum_precision"}
PPO_KWARGS = {"n_steps": 32, "batch_size": 64, "n_epochs": 2, "seed": 0, "device": "cpu"}


def rollout_actions(model, env_id: str, n_envs: int = 3, seed: int = 5, **env_kwargs) -> np.ndarray:
    torch.manual_seed(seed)  # posterior samples are drawn from torch's generator
    venv = bayes_envs.make_vec(env_id, n_envs, seed=seed, monitor=False, **env_kwargs)
    obs = venv.reset()
    state, start, actions = None, np.ones(n_envs, bool), []
    for _ in range(70):
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        obs, _, dones, _ = venv.step(action)
        start = dones
        actions.append(action)
    return np.array(actions)


@pytest.mark.parametrize("env_id", ["BayesGrid-v0", "BayesBandit-v0", "FourierRegression-v0"])
@pytest.mark.parametrize(
    ("policy", "kwargs"), [(RL2Policy, SMALL), (LaplacePolicy, {**LAPLACE, "n_samples": 2})]
)
def test_stock_recurrent_ppo_learn_save_load_predict(env_id, policy, kwargs, tmp_path) -> None:
    model = RecurrentPPO(policy, gym.make(env_id), policy_kwargs=kwargs, **PPO_KWARGS)
    model.learn(96)
    before = rollout_actions(model, env_id)
    model.save(tmp_path / "model.zip")
    loaded = RecurrentPPO.load(tmp_path / "model.zip", device="cpu")
    assert type(loaded.policy) is policy
    np.testing.assert_array_equal(rollout_actions(loaded, env_id), before)
    # single-env predict with recurrent state (no batch dim)
    env = gym.make(env_id)
    obs, _ = env.reset(seed=0)
    action, state = loaded.predict(obs, episode_start=np.array([True]), deterministic=True)
    assert env.action_space.contains(action if np.ndim(action) else int(action))
    assert state[0].shape == (1, 1, loaded.policy.lstm_actor.hidden_size)


@pytest.mark.parametrize(
    ("algorithm", "policy", "kwargs"),
    [
        (RecurrentPPO, RL2Policy, {**SMALL, "rnn": "gru"}),
        (RecurrentPPO, LaplacePolicy, LAPLACE),
        (RecurrentPPO, LaplacePolicy, {**LAPLACE, "n_samples": 3}),
        (BayesPPO, LaplacePolicy, {**LAPLACE, "covariance": "diag", "n_samples": 2}),
    ],
)
def test_minibatch_replay_reproduces_rollout_log_probs(algorithm, policy, kwargs) -> None:
    """The training path (whole padded sequences through belief.sequence, states from SB3's buffer)
    must give the rollout's log-probabilities and values: the state packing and the sequence path
    agree with the step-by-step rollout, and posterior samples reuse the rollout's noise."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=1)
    model = algorithm(policy, venv, policy_kwargs=kwargs, n_steps=90, batch_size=100, n_epochs=1, seed=0)
    model.train = lambda: None  # collect only
    model.learn(360)
    checked = 0
    for data in model.rollout_buffer.get(100):
        mask = data.mask > 0
        with torch.no_grad():
            values, log_prob, _ = model.policy.evaluate_actions(
                data.observations, data.actions.long().flatten(), data.lstm_states, data.episode_starts
            )
        torch.testing.assert_close(log_prob[mask], data.old_log_prob[mask], atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(values.flatten()[mask], data.old_values[mask], atol=1e-5, rtol=1e-5)
        checked += int(mask.sum())
    assert checked == 360


def test_bayes_ppo_adds_exactly_the_auxiliary_gradient() -> None:
    """BayesPPO's gradient = stock RecurrentPPO's gradient + ∇(β·KL) on the same minibatch."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=2)
    kwargs = {**LAPLACE, "beta": 0.5}
    model = BayesPPO(
        LaplacePolicy,
        venv,
        policy_kwargs=kwargs,
        n_steps=60,
        batch_size=240,
        n_epochs=1,
        max_grad_norm=1e9,
        seed=0,
    )
    real_train = model.train
    model.train = lambda: None
    model.learn(240)
    del model.train
    optimizer = model.policy.optimizer
    params = list(model.policy.belief.parameters())

    def gradients(train) -> list[torch.Tensor]:
        recorded = []

        def record_instead_of_step(*args, **kwargs) -> None:
            if not recorded:
                recorded.extend(p.grad.clone() for p in params)

        optimizer.step = record_instead_of_step
        np.random.seed(0)
        train()
        del optimizer.step
        return recorded

    with_aux = gradients(real_train)
    stock = gradients(lambda: RecurrentPPO.train(model))
    np.random.seed(0)
    data = next(model.rollout_buffer.get(240))
    optimizer.zero_grad()
    *_, output = model.policy.evaluate_minibatch(
        data.observations, data.actions.long().flatten(), data.lstm_states.pi, data.episode_starts
    )
    aux = model.policy._masked_aux_loss(output, data.mask > 0)
    assert aux.item() > 0
    aux.backward()
    for p, g_aux, g_stock, g_bayes in zip(params, [p.grad for p in params], stock, with_aux, strict=True):
        torch.testing.assert_close(g_bayes - g_stock, g_aux, atol=1e-6, rtol=1e-4, msg=str(p.shape))
    assert any(g.abs().sum() > 0 for g in [p.grad for p in params])


def test_bayes_ppo_logs_belief_statistics() -> None:
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=3)
    model = BayesPPO(LaplacePolicy, venv, policy_kwargs=LAPLACE, **PPO_KWARGS)
    model.learn(128)
    logged = model.logger.name_to_value
    assert np.isfinite(logged["belief/entropy"]) and logged["belief/kl_to_previous"] >= 0
    assert logged["belief/aux_loss"] > 0


def test_posthoc_laplace_keeps_rl2_actions_and_reports_posterior() -> None:
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=4)
    rl2 = RecurrentPPO(RL2Policy, venv, policy_kwargs=SMALL, **PPO_KWARGS)
    rl2.learn(128)
    laplace = laplace_from_rl2(rl2, window=3, covariance="full", variant="sum_precision")
    assert isinstance(laplace.policy, LaplacePolicy) and laplace.policy.n_samples == 0
    np.testing.assert_array_equal(
        rollout_actions(laplace, "BayesGrid-v0"), rollout_actions(rl2, "BayesGrid-v0")
    )
    # the posterior over one trial: entropy falls as precision accumulates, KL is finite and >= 0
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=0, monitor=False)
    obs, state, start, entropies, kls = venv.reset(), None, np.ones(2, bool), [], []
    for _ in range(60):
        action, state = laplace.predict(obs, state=state, episode_start=start, deterministic=True)
        output = laplace.policy.last_belief_output
        entropies.append(output.entropy.numpy())
        kls.append(output.kl_to_previous.numpy())
        obs, _, start, _ = venv.step(action)
    entropies, kls = np.array(entropies), np.array(kls)
    assert np.all(np.isfinite(entropies)) and np.all(kls >= -1e-5)
    assert np.all(np.diff(entropies, axis=0) <= 1e-4)  # sum_precision only adds precision within a trial
    with pytest.raises(TypeError, match="RL2Policy"):
        laplace_from_rl2(laplace)
    with pytest.raises(ValueError, match="hidden_size"):
        laplace_from_rl2(rl2, hidden_size=32)


def test_laplace_policy_rollout_stays_finite_and_positive_definite() -> None:
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=6, monitor=False)
    model = RecurrentPPO(LaplacePolicy, venv, policy_kwargs={**LAPLACE, "n_samples": 3}, **PPO_KWARGS)
    obs, state, start = venv.reset(), None, np.ones(4, bool)
    for _ in range(2500):  # 10,000 env steps, 166 trials
        action, state = model.predict(obs, state=state, episode_start=start)
        obs, _, start, _ = venv.step(action)
    output = model.policy.last_belief_output
    assert np.all(np.isfinite(state[0])) and np.all(np.isfinite(state[1]))
    assert torch.linalg.eigvalsh(output.precision).min() > 0


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"window": -1}, "window"),
        ({"window": 0}, "window"),
        ({"variant": "ema"}, "variant"),
        ({"covariance": "low-rank"}, "covariance"),
        ({"n_samples": -1}, "n_samples"),
        ({"damping": 0.0}, "damping"),
        ({"beta": -1.0}, "beta"),
    ],
)
def test_bad_policy_kwargs_raise_value_error(kwargs, message) -> None:
    with pytest.raises(ValueError, match=message):
        RecurrentPPO(LaplacePolicy, gym.make("BayesGrid-v0"), policy_kwargs={**SMALL, **kwargs})


def test_rl2_policy_rejects_unknown_rnn_and_bad_sizes() -> None:
    with pytest.raises(ValueError, match="rnn"):
        RecurrentPPO(RL2Policy, gym.make("BayesGrid-v0"), policy_kwargs={"rnn": "transformer"})
    with pytest.raises(ValueError, match="hidden_size"):
        RecurrentPPO(RL2Policy, gym.make("BayesGrid-v0"), policy_kwargs={"hidden_size": 0})


@pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA device on this machine")
def test_cuda_learn_and_predict() -> None:
    model = BayesPPO(
        LaplacePolicy,
        bayes_envs.make_vec("BayesGrid-v0", 4, seed=0),
        policy_kwargs=LAPLACE,
        n_steps=32,
        batch_size=64,
        n_epochs=1,
        device="cuda",
    )
    model.learn(128)
    assert next(model.policy.belief.parameters()).is_cuda
    rollout_actions(model, "BayesGrid-v0")


def test_noise_keys_and_normals() -> None:
    from bayes_agents.policies import next_noise_keys, standard_normal_from_keys

    keys = torch.tensor([0, 1, 123456], dtype=torch.int64)
    starts = torch.zeros(50, 3, dtype=torch.bool)
    starts[0, 0] = starts[20, 1] = True
    step_keys, final = next_noise_keys(keys, starts)
    # stepping one at a time gives the same keys (the chain only depends on the stored key)
    running, stepped = keys, []
    for t in range(50):
        used, running = next_noise_keys(running, starts[t : t + 1])
        stepped.append(used[0])
    torch.testing.assert_close(torch.stack(stepped), step_keys)
    torch.testing.assert_close(running, final)
    assert len(set(step_keys.flatten().tolist())) == 150  # no repeats in the streams
    draws = standard_normal_from_keys(torch.arange(20_000), 8, torch.float64)
    assert abs(draws.mean().item()) < 0.01 and abs(draws.std().item() - 1) < 0.01
    assert abs(torch.corrcoef(draws[:, :2].T)[0, 1].item()) < 0.03


def test_schedule_strings_decay_linearly_and_bad_ones_raise() -> None:
    from bayes_agents import resolve_schedules
    from bayes_agents.ppo import resolve_schedule

    schedule = resolve_schedule("learning_rate", "lin_1e-3")
    assert [schedule(p) for p in (1.0, 0.5, 0.0)] == pytest.approx([1e-3, 5e-4, 0.0])
    assert resolve_schedule("clip_range", 0.2) == 0.2 and resolve_schedule("clip_range_vf", None) is None
    for bad in ("lin_", "lin_-1", "cos_1e-3", "1e-3"):
        with pytest.raises(ValueError, match="learning_rate"):
            resolve_schedule("learning_rate", bad)
    resolved = resolve_schedules({"learning_rate": "lin_2e-3", "n_steps": 60})
    assert resolved["n_steps"] == 60 and resolved["learning_rate"](0.25) == pytest.approx(5e-4)

    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=0)
    small = dict(hidden_size=8, latent_dim=4, embed_sizes=(8,), net_arch=[8])
    for args, kwargs in [((), {"learning_rate": "lin_1e-3"}), (("lin_1e-3",), {})]:  # keyword, positional
        model = BayesPPO(RL2Policy, venv, *args, n_steps=60, batch_size=60, policy_kwargs=small, **kwargs)
        assert model.lr_schedule(0.5) == pytest.approx(5e-4)
        model.learn(240)  # two updates: at 1/2 of the budget left (lr 5e-4), then at none left
        assert model.policy.optimizer.param_groups[0]["lr"] == 0.0


def test_entropy_coefficient_schedule_is_read_at_each_update(monkeypatch) -> None:
    """``ent_coef="lin_v"``: each update's loss uses ``v`` times the budget left (checked on the
    coefficient the loss multiplies: a zero entropy term at the last update), and bad strings raise."""
    from bayes_agents.experiment import ConfigError, check_values, resolve_config

    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=0)
    small = dict(hidden_size=8, latent_dim=4, embed_sizes=(8,), net_arch=[8])
    model = BayesPPO(RL2Policy, venv, n_steps=60, batch_size=60, ent_coef="lin_0.4", policy_kwargs=small)
    assert model.ent_coef == pytest.approx(0.4) and model.current_ent_coef() == pytest.approx(0.4)
    used = []
    original = BayesPPO.current_ent_coef
    monkeypatch.setattr(BayesPPO, "current_ent_coef", lambda self: used.append(original(self)) or used[-1])
    model.learn(360)  # three updates, at 2/3, 1/3 and 0 of the budget left
    assert used == pytest.approx([0.4 * 2 / 3, 0.4 / 3, 0.0])
    constant = BayesPPO(RL2Policy, venv, n_steps=60, ent_coef=0.01, policy_kwargs=small)
    assert constant.current_ent_coef() == 0.01
    with pytest.raises(ValueError, match="ent_coef"):
        BayesPPO(RL2Policy, venv, n_steps=60, ent_coef="lin_x", policy_kwargs=small)
    config = resolve_config("BayesGrid-v0", "rl2", overrides={"ppo": {"ent_coef": "lin_0.05"}})
    check_values(config)
    for bad in ("lin_0", "lin_-1", "exp_0.1"):
        config["ppo"]["ent_coef"] = bad
        with pytest.raises(ConfigError, match=r"ppo\.ent_coef"):
            check_values(config)


def test_predict_rejects_observations_outside_the_trained_space():
    """A 7×7 grid's coordinates have the 5×5 grid's shape: only a bounds check catches them."""
    import gymnasium as gym

    model = BayesPPO(
        RL2Policy,
        bayes_envs.make_vec("BayesGrid-v0", 2, seed=0),
        n_steps=8,
        batch_size=16,
        policy_kwargs=dict(hidden_size=16, latent_dim=8),
    )
    env = gym.make("BayesGrid-v0", size=7)
    observation, _ = env.reset(seed=0)
    model.predict(observation)  # the corner (0, 0) lies in both grids
    for _ in range(8):
        observation, *_ = env.step(1)
    assert observation["obs"].max() == 6
    with pytest.raises(ValueError, match=r"observation\['obs'\] has a value 6 outside .*\[0, 4\]"):
        model.predict(observation)
    # Batched observations of the trained grid pass.
    batch = {key: np.stack([value, value]) for key, value in env.reset(seed=1)[0].items()}
    model.predict(batch, episode_start=np.ones(2, bool))
