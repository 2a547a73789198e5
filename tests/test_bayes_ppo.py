"""BayesPPO's own train()/collect_rollouts() against the stock RecurrentPPO, and the Laplace rollout
record that makes the stock RecurrentPPO's update reuse the rollout's precisions."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO

import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.policies import LaplacePolicy, RL2Policy

SMALL = {"hidden_size": 16, "latent_dim": 8, "embed_sizes": (16,)}
LAPLACE = {**SMALL, "variant": "sum_precision"}
STOCK_KEYS = (
    "train/loss",
    "train/approx_kl",
    "train/clip_fraction",
    "train/explained_variance",
    "train/entropy_loss",
    "train/policy_gradient_loss",
    "train/value_loss",
    "train/n_updates",
    "train/clip_range",
)


@pytest.mark.parametrize("target_kl", [None, 1e-7])
def test_bayes_ppo_trains_as_stock_recurrent_ppo_without_aux_loss(target_kl) -> None:
    """RL² has no auxiliary loss: BayesPPO (own rollout, buffer and update loop) must then train
    exactly as the stock RecurrentPPO does: same weights, same logged statistics, same early stop."""
    settings = {"n_steps": 64, "batch_size": 64, "n_epochs": 3, "seed": 0, "target_kl": target_kl}
    models = []
    for algorithm in (RecurrentPPO, BayesPPO):  # each seeds the global generators when built
        venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=1)
        models.append(algorithm(RL2Policy, venv, policy_kwargs=SMALL, **settings).learn(2 * 128))
    stock, ours = models
    for (name, expected), got in zip(
        stock.policy.state_dict().items(), ours.policy.state_dict().values(), strict=True
    ):
        torch.testing.assert_close(got, expected, rtol=1e-5, atol=1e-6, msg=name)
    for key in STOCK_KEYS:
        if key == "train/n_updates" and target_kl is not None:
            continue  # sb3-contrib <= 2.7 counts n_epochs even after an early stop; BayesPPO the epochs run
        torch.testing.assert_close(
            float(ours.logger.name_to_value[key]),
            float(stock.logger.name_to_value[key]),
            rtol=1e-4,
            atol=1e-7,
            msg=key,
        )
    if target_kl is not None:  # stopped early: fewer updates than 2 rollouts × 3 epochs
        assert ours.logger.name_to_value["train/n_updates"] < 6


@pytest.mark.parametrize(
    "kwargs",
    [
        {"covariance": "full", "window": 3, "n_samples": 0},
        {"covariance": "full", "window": 1, "n_samples": 2},
        {"covariance": "diag", "window": 2, "n_samples": 1},
        {"covariance": "full", "window": 2, "variant": "markov", "n_samples": 1, "rnn": "gru"},
    ],
)
def test_stock_update_takes_the_rollout_terms(kwargs, precision_calls) -> None:
    """Stock RecurrentPPO: every minibatch of the rollout is found in the policy's record and gives,
    without recomputing the precisions, what the exact recompute gives (weights unchanged); a
    minibatch whose inputs differ from the record's is recomputed."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=1)  # trials of 60 steps: resets at step 60
    model = RecurrentPPO(
        LaplacePolicy, venv, policy_kwargs={**LAPLACE, **kwargs}, n_steps=90, batch_size=100, seed=0
    )
    model.train = lambda: None  # collect only
    model.learn(360)
    policy = model.policy
    record = policy._terms_cache
    assert record is not None and len(record.steps) == 90
    parameters = [p for p in policy.parameters() if p.requires_grad]

    def evaluate(data, cached: bool):
        saved = policy._terms_cache
        policy._terms_cache = saved if cached else None
        try:
            return policy.evaluate_actions(
                data.observations, data.actions.long().flatten(), data.lstm_states, data.episode_starts
            )
        finally:
            policy._terms_cache = saved

    compared = 0
    for data in model.rollout_buffer.get(100):
        mask = data.mask > 0
        calls = len(precision_calls)
        cached = evaluate(data, cached=True)
        assert len(precision_calls) == calls, "a recorded minibatch recomputed the precisions"
        recomputed = evaluate(data, cached=False)
        for got, expected in zip(cached, recomputed, strict=True):
            torch.testing.assert_close(got[mask], expected[mask], rtol=1e-5, atol=1e-6)
        torch.testing.assert_close(cached[1][mask], data.old_log_prob[mask], rtol=1e-5, atol=1e-5)

        def gradients(evaluated, mask=mask):
            loss = evaluated[1][mask].sum() + evaluated[0].flatten()[mask].sum() + evaluated[2][mask].sum()
            grads = torch.autograd.grad(loss, parameters, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads, strict=True)]

        for got, expected in zip(gradients(cached), gradients(recomputed), strict=True):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        compared += int(mask.sum())
    assert compared == 360

    # One recorded input changed: the sequences through it no longer match and are recomputed.
    model.rollout_buffer.observations["prev_reward"][5] += 1.0
    data = next(model.rollout_buffer.get(360))
    calls = len(precision_calls)
    evaluate(data, cached=True)
    assert len(precision_calls) == calls + 1


def test_stock_learn_with_the_record(precision_calls) -> None:
    """Stock RecurrentPPO.learn with a Laplace policy: the precisions are computed by the rollout only
    (eval mode), the single minibatch replays the rollout (ratio 1), a new rollout starts a new
    record, loading weights drops it; reuse_rollout_precision=False recomputes in the update."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=3)
    kwargs = {**LAPLACE, "covariance": "full", "window": 2, "n_samples": 1}
    model = RecurrentPPO(LaplacePolicy, venv, policy_kwargs=kwargs, n_steps=64, batch_size=128, n_epochs=1)
    model.learn(3 * 128)
    logged = model.logger.name_to_value
    assert logged["train/approx_kl"] < 1e-8 and logged["train/clip_fraction"] == 0
    assert precision_calls and not any(precision_calls)
    record = model.policy._terms_cache
    assert record.closed and len(record.steps) == 64  # the last rollout only
    model.policy.load_state_dict(model.policy.state_dict())
    assert model.policy._terms_cache is None

    precision_calls.clear()
    exact = RecurrentPPO(
        LaplacePolicy,
        venv,
        policy_kwargs={**kwargs, "reuse_rollout_precision": False},
        n_steps=64,
        batch_size=128,
        n_epochs=1,
    )
    exact.learn(128)
    assert exact.policy._terms_cache is None and any(precision_calls)
    with pytest.raises(TypeError, match="reuse_rollout_precision"):
        RecurrentPPO(LaplacePolicy, venv, policy_kwargs={**kwargs, "reuse_rollout_precision": 1})


def test_design_card_call_runs_with_one_env() -> None:
    """The README's call (one env, RecurrentPPO's defaults but a short budget) trains and the update
    uses the record (single env: sequences split by trials and minibatch boundaries)."""
    model = RecurrentPPO(LaplacePolicy, gym.make("BayesGrid-v0"), policy_kwargs=LAPLACE, n_epochs=2, seed=0)
    model.learn(256)
    assert np.isfinite(model.logger.name_to_value["train/loss"])
    assert model.policy._terms_cache is not None


def test_belief_buffer_minibatches_equal_the_stock_sampler() -> None:
    """BayesPPO's buffer gathers each padded minibatch with one index per field and only the states
    of the sequence starts: the same samples as sb3-contrib's sampler, and ``rows`` maps every padded
    position to its buffer row (-1 at padding)."""
    from sb3_contrib.common.recurrent.buffers import RecurrentDictRolloutBuffer

    model = BayesPPO(
        LaplacePolicy,
        bayes_envs.make_vec("BayesGrid-v0", 3, seed=1),
        policy_kwargs={**LAPLACE, "window": 2},
        n_steps=70,
        batch_size=70,
        seed=0,
    )
    model.train = lambda: None
    model.learn(210)
    buffer = model.rollout_buffer
    assert buffer.hidden_states_vf.size == 0 and buffer.cell_states_vf.size == 0  # one state copy
    list(buffer.get(70))  # flattens the arrays env-major
    env_change = np.zeros((70, 3))
    env_change[0] = 1
    env_change = buffer.swap_and_flatten(env_change)
    batch_inds = np.concatenate([np.arange(150, 210), np.arange(0, 40)])  # wraps around, as get()'s
    ours = buffer._get_samples(batch_inds, env_change)
    stock = RecurrentDictRolloutBuffer._get_samples(buffer, batch_inds, env_change)
    for field in stock._fields:
        expected, got = getattr(stock, field), getattr(ours, field)
        if field == "observations":
            for key in expected:
                torch.testing.assert_close(got[key], expected[key], rtol=0, atol=0)
        elif field == "lstm_states":
            for pair_got, pair_expected in zip(got, expected, strict=True):
                for slot_got, slot_expected in zip(pair_got, pair_expected, strict=True):
                    if slot_expected.shape[-1]:  # the critic's copy is empty in our buffer
                        torch.testing.assert_close(slot_got, slot_expected, rtol=0, atol=0)
        else:
            torch.testing.assert_close(got, expected, rtol=0, atol=0, msg=field)
    mask = ours.mask > 0
    assert (ours.rows[~mask.numpy()] == -1).all()
    np.testing.assert_array_equal(np.sort(ours.rows[mask.numpy()]), np.sort(batch_inds))


def test_bayes_ppo_uses_the_fused_adam_kernel_unless_one_is_chosen(tmp_path) -> None:
    """BayesPPO swaps SB3's default Adam for torch's fused Adam (same hyper-parameters) where torch has
    that kernel; an implementation chosen in optimizer_kwargs is kept; save/load keeps training."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=1)
    settings = {"n_steps": 16, "batch_size": 32, "n_epochs": 1, "seed": 0}
    model = BayesPPO(RL2Policy, venv, policy_kwargs=SMALL, **settings)
    optimizer = model.policy.optimizer
    assert type(optimizer) is torch.optim.Adam
    assert optimizer.defaults["fused"] in (True, None)  # None: a torch without the CPU kernel
    assert optimizer.defaults["eps"] == 1e-5  # SB3's PPO default, kept
    assert [p for group in optimizer.param_groups for p in group["params"]] == list(model.policy.parameters())
    model.learn(64)
    model.save(tmp_path / "model.zip")
    loaded = BayesPPO.load(tmp_path / "model.zip", env=venv)
    assert loaded.policy.optimizer.state_dict()["param_groups"] == optimizer.state_dict()["param_groups"]
    loaded.learn(32)
    chosen = BayesPPO(
        RL2Policy, venv, policy_kwargs={**SMALL, "optimizer_kwargs": {"foreach": False}}, **settings
    )
    defaults = chosen.policy.optimizer.defaults
    assert not defaults["fused"] and defaults["foreach"] is False


@pytest.mark.parametrize(
    ("policy", "kwargs"), [(RL2Policy, {**SMALL, "rnn": "gru"}), (LaplacePolicy, {**LAPLACE, "window": 2})]
)
def test_sequence_length_cuts_sequences_that_start_from_the_stored_states(policy, kwargs) -> None:
    """With ``sequence_length`` every training sequence has at most that many steps and starts at an
    episode start, a minibatch start or a multiple of it within its env's rollout; from the states the
    rollout stored there, the unchanged policy gives the rollout's log-probabilities and values."""
    n_envs, n_steps, length = 3, 70, 16
    model = BayesPPO(
        policy,
        bayes_envs.make_vec("BayesGrid-v0", n_envs, seed=1),
        policy_kwargs=kwargs,
        n_steps=n_steps,
        batch_size=105,
        seed=0,
        sequence_length=length,
    )
    model.train = lambda: None
    model.learn(2 * n_steps * n_envs)
    buffer = model.rollout_buffer
    starts = buffer.episode_starts.T.reshape(-1).copy()  # env-major rows, as get() flattens them
    rows_seen = []
    for data in buffer.get(105):
        valid = data.mask.numpy() > 0
        per_sequence = data.rows.reshape(data.lstm_states.pi[0].shape[1], -1)
        assert per_sequence.shape[1] <= length
        first_rows = per_sequence[:, 0]
        for row, following in zip(first_rows, per_sequence, strict=True):
            assert row >= 0 and (following[following >= 0] == row + np.arange((following >= 0).sum())).all()
        rows_seen.extend(data.rows[valid].tolist())
        cuts = ((first_rows % n_steps) % length == 0) | (starts[first_rows] > 0.5)
        assert cuts[1:].all()  # the first sequence may begin at the minibatch's own start
        with torch.no_grad():
            values, log_prob, _, _ = model.policy.evaluate_minibatch(
                data.observations,
                data.actions.long().flatten(),
                data.lstm_states.pi,
                data.episode_starts,
                None
                if not isinstance(model.policy, LaplacePolicy)
                else model._rollout_rows().minibatch(data.rows),
            )
        torch.testing.assert_close(log_prob[data.valid], data.old_log_prob[data.valid], rtol=1e-4, atol=1e-5)
        torch.testing.assert_close(
            values.flatten()[data.valid], data.old_values[data.valid], rtol=1e-4, atol=1e-5
        )
    assert sorted(rows_seen) == list(range(n_envs * n_steps))


@pytest.mark.parametrize(
    ("value", "error"), [(0, ValueError), (-3, ValueError), (2.5, TypeError), (True, TypeError)]
)
def test_sequence_length_validation(value, error) -> None:
    venv = bayes_envs.make_vec("BayesGrid-v0", 2, seed=1)
    with pytest.raises(error, match="sequence_length"):
        BayesPPO(RL2Policy, venv, policy_kwargs=SMALL, sequence_length=value)
