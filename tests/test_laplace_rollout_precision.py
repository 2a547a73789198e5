"""Laplace posterior terms reused from the rollout (``BayesPPO(reuse_rollout_precision=True)``): with
unchanged weights they must give exactly what recomputing them gives, at the belief level
(``terms_from_states`` + ``sequence(terms=...)``) and through BayesPPO's minibatches; and the cached
path must not recompute the Jacobian precisions."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

import bayes_envs
from bayes_agents import BayesPPO, LaplacePolicy
from bayes_agents.beliefs import COVARIANCES, VARIANTS, LaplaceBelief
from bayes_agents.beliefs.laplace import LaplaceTerms

INPUT_DIM, HIDDEN, LATENT = 4, 6, 3
OUTPUT_FIELDS = ("mean", "precision", "precision_cholesky", "entropy", "kl_to_previous")


def make_belief(**options) -> LaplaceBelief:
    torch.manual_seed(0)
    belief = LaplaceBelief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT, embed_sizes=(7,), **options)
    with torch.no_grad():  # saturating gates, varied Jacobians
        for parameter in belief.parameters():
            parameter.mul_(2.0)
    return belief.double()


@pytest.mark.parametrize(
    ("variant", "covariance", "window", "rnn"),
    [(*combo, "lstm") for combo in itertools.product(VARIANTS, COVARIANCES, (1, 3))]
    + [("sum_precision", "full", 2, "gru"), ("markov", "diag", 1, "gru")],
)
def test_sequence_with_rollout_terms_equals_recompute(variant, covariance, window, rnn, precision_calls):
    belief = make_belief(variant=variant, covariance=covariance, window=window, rnn=rnn)
    steps, batch = 11, 3
    generator = torch.Generator().manual_seed(1)
    inputs = torch.randn(steps, batch, INPUT_DIM, generator=generator, dtype=torch.float64)
    starts = torch.rand(steps, batch, generator=generator) < 0.25
    starts[0, 0], starts[0, 1:] = True, False  # rows 1, 2 carry a state in; resets inside
    starts[4, 1] = True
    with torch.no_grad():  # a carried state that holds data (precision, window, mean)
        _, state = belief.sequence(
            torch.randn(5, batch, INPUT_DIM, generator=generator, dtype=torch.float64),
            belief.initial_state(batch),
            torch.zeros(5, batch),
        )
        states = [state]
        for t in range(steps):  # the rollout: one step at a time, keeping every state
            states.append(belief.step(inputs[t], states[-1], starts[t])[1])
    terms = belief.terms_from_states(torch.stack(states), starts.float())

    recomputed, recomputed_state = belief.sequence(inputs, state, starts)
    calls = len(precision_calls)
    cached, cached_state = belief.sequence(inputs, state, starts, terms=terms)
    assert len(precision_calls) == calls, "the cached path recomputed the Jacobian precision"
    for name in OUTPUT_FIELDS:
        expected = getattr(recomputed, name)
        if expected is None:
            assert covariance == "diag" and name == "precision_cholesky"
            assert cached.precision_cholesky is None
            continue
        torch.testing.assert_close(getattr(cached, name), expected, rtol=1e-9, atol=1e-10, msg=name)
    torch.testing.assert_close(cached_state, recomputed_state, rtol=1e-9, atol=1e-10)

    # The gradients (KL penalty through μ_t, samples z = μ + L^{-T} ε) are the same too.
    noise = torch.randn(2, steps, batch, LATENT, generator=generator, dtype=torch.float64)

    def gradients(output):
        loss = belief.aux_loss(output) + belief.sample(output, 2, noise=noise).sin().sum()
        return torch.autograd.grad(loss, list(belief.parameters()), allow_unused=True)

    for got, expected in zip(gradients(cached), gradients(recomputed), strict=True):
        if expected is None:
            assert got is None
        else:
            torch.testing.assert_close(got, expected, rtol=1e-9, atol=1e-10)
    assert cached.kl_to_previous.requires_grad and not cached.precision.requires_grad


def test_terms_are_checked():
    belief = make_belief(covariance="full", window=2)
    states = torch.zeros(4, 2, belief.state_size, dtype=torch.float64)
    starts = torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match="episode_starts must be"):
        belief.terms_from_states(states, starts[:2])
    with pytest.raises(ValueError, match="states must be"):
        belief.terms_from_states(states[..., 1:], starts)
    terms = belief.terms_from_states(states, starts)
    inputs = torch.zeros(3, 2, INPUT_DIM, dtype=torch.float64)
    with pytest.raises(ValueError, match="terms must hold full precisions"):
        belief.sequence(inputs[:2], states[0], starts[:2], terms=terms)
    with pytest.raises(ValueError, match="Cholesky"):
        no_factor = LaplaceTerms(
            terms.precision, None, terms.previous_precision, terms.entropy, terms.kl_offset
        )
        belief.sequence(inputs, states[0], starts, terms=no_factor)
    with pytest.raises(TypeError, match="LaplaceTerms"):
        belief.sequence(inputs, states[0], starts, terms=terms.precision)
    diag = make_belief(covariance="diag", window=2)
    with pytest.raises(ValueError, match="terms must hold diag precisions"):
        diag.sequence(inputs, diag.initial_state(2).double(), starts, terms=terms)


SMALL = {"hidden_size": 16, "latent_dim": 8, "embed_sizes": (16,), "variant": "sum_precision"}


@pytest.mark.parametrize(
    "kwargs",
    [
        {"covariance": "full", "window": 1, "n_samples": 2},
        {"covariance": "diag", "window": 1, "n_samples": 2},
        {"covariance": "full", "window": 3, "n_samples": 1, "beta": 0.3},
        {"covariance": "diag", "window": 3, "variant": "markov", "n_samples": 2},
        {"covariance": "full", "window": 2, "variant": "stationary", "n_samples": 0, "rnn": "gru"},
    ],
)
def test_bayes_ppo_minibatches_with_rollout_terms_equal_recompute(kwargs, precision_calls):
    """Every minibatch of every epoch of BayesPPO.train() (weights held fixed): the cached terms give
    the recomputed values, log-probabilities, entropies, belief outputs, KL penalty and gradients."""
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=1)  # trials of 60 steps: resets at step 60
    model = BayesPPO(
        LaplacePolicy, venv, policy_kwargs={**SMALL, **kwargs}, n_steps=90, batch_size=100, n_epochs=2, seed=0
    )
    real_train = model.train
    model.train = lambda: None  # collect only, then train once by hand
    model.learn(360)
    del model.train
    assert model.rollout_buffer.episode_starts[1:].any()
    policy = model.policy
    parameters = [p for p in policy.parameters() if p.requires_grad]
    stock_evaluate = policy.evaluate_minibatch
    compared = []

    def evaluate_both(obs, actions, lstm_states, episode_starts, cache=None, belief_output=None):
        assert belief_output is None  # the Laplace belief trains in the update
        assert cache is not None
        mask = torch.zeros(len(episode_starts), dtype=torch.bool).index_fill_(0, cache.valid, True)
        calls = len(precision_calls)
        cached = stock_evaluate(obs, actions, lstm_states, episode_starts, cache)
        assert len(precision_calls) == calls, "the cached path recomputed the Jacobian precision"
        recomputed = stock_evaluate(obs, actions, lstm_states, episode_starts)
        assert len(precision_calls) == calls + 1
        cached_output, recomputed_output = cached[3], recomputed[3]
        for got, expected in zip(cached[:3], recomputed[:3], strict=True):
            torch.testing.assert_close(got[mask], expected[mask])
        for name in ("mean", "entropy", "kl_to_previous"):
            expected = getattr(recomputed_output, name)
            torch.testing.assert_close(getattr(cached_output, name)[mask], expected[mask], msg=name)
        assert cached_output.precision is None and cached_output.precision_cholesky is None  # not formed
        cached_aux = policy._masked_aux_loss(cached_output, mask)
        recomputed_aux = policy._masked_aux_loss(recomputed_output, mask)
        torch.testing.assert_close(cached_aux, recomputed_aux)

        def gradients(evaluated, aux):
            loss = evaluated[1][mask].sum() + evaluated[0].flatten()[mask].sum() + aux
            grads = torch.autograd.grad(loss, parameters, retain_graph=True, allow_unused=True)
            return [torch.zeros_like(p) if g is None else g for p, g in zip(parameters, grads, strict=True)]

        for got, expected in zip(
            gradients(cached, cached_aux), gradients(recomputed, recomputed_aux), strict=True
        ):
            torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-5)
        compared.append(int(mask.sum()))
        return cached  # train on the cached path

    policy.evaluate_minibatch = evaluate_both
    policy.optimizer.step = lambda *args, **kwargs: None  # unchanged weights in every minibatch
    real_train()
    real_train()  # again on the same buffer, whose arrays get() has now flattened env-major
    assert sum(compared) == 2 * 2 * 360  # every buffered step, in both epochs of both updates
    del policy.evaluate_minibatch
    # The buffer's minibatches replay the rollout exactly (stock evaluate_actions, recomputed terms).
    replayed = 0
    for data in model.rollout_buffer.get(100):
        mask = data.mask > 0
        with torch.no_grad():
            _, log_prob, _ = policy.evaluate_actions(
                data.observations, data.actions.long().flatten(), data.lstm_states, data.episode_starts
            )
        torch.testing.assert_close(log_prob[mask], data.old_log_prob[mask], atol=1e-5, rtol=1e-5)
        replayed += int(mask.sum())
    assert replayed == 360


def test_bayes_ppo_learns_with_rollout_terms_and_can_recompute(precision_calls):
    venv = bayes_envs.make_vec("BayesGrid-v0", 4, seed=3)
    kwargs = {**SMALL, "covariance": "full", "window": 2, "n_samples": 2}
    # One minibatch per update: its weights are the rollout's, so the replayed log-probs are the
    # rollout's (ratio 1) only if the cached terms are those of the right steps.
    model = BayesPPO(
        LaplacePolicy, venv, policy_kwargs=kwargs, n_steps=64, batch_size=256, n_epochs=1, seed=0
    )
    assert model.reuse_rollout_precision
    model.learn(3 * 256)
    logged = model.logger.name_to_value
    assert logged["train/approx_kl"] < 1e-8 and logged["train/clip_fraction"] == 0
    assert np.isfinite(logged["belief/entropy"]) and logged["belief/kl_to_previous"] >= 0
    assert logged["belief/aux_loss"] > 0
    assert precision_calls and not any(precision_calls)  # only the rollout (eval mode) computed them

    precision_calls.clear()
    exact = BayesPPO(
        LaplacePolicy,
        venv,
        policy_kwargs=kwargs,
        n_steps=64,
        batch_size=256,
        n_epochs=1,
        seed=0,
        reuse_rollout_precision=False,
    )
    exact.learn(256)
    assert any(precision_calls)  # recomputed in train()
    with pytest.raises(TypeError, match="reuse_rollout_precision"):
        BayesPPO(LaplacePolicy, venv, policy_kwargs=kwargs, reuse_rollout_precision="yes")


@pytest.mark.parametrize("covariance", COVARIANCES)
@pytest.mark.parametrize("window", [1, 3])
def test_rollout_rows_hold_the_recomputed_terms(covariance, window):
    """What train() reuses, the rollout's record and (without one) the buffer's states, holds the terms
    a recompute over the whole rollout gives: precision and Cholesky factor (from the states), the
    previous factor across episode starts, entropy, KL offset and the posterior-sample offsets."""
    n_steps, n_envs = 80, 3
    venv = bayes_envs.make_vec("BayesGrid-v0", n_envs, seed=4)
    kwargs = {**SMALL, "covariance": covariance, "window": window, "n_samples": 2}
    model = BayesPPO(
        LaplacePolicy, venv, policy_kwargs=kwargs, n_steps=n_steps, batch_size=80, n_epochs=1, seed=0
    )
    model.train = lambda: None
    model.learn(n_steps * n_envs * 2)  # two rollouts: the second starts from a carried state
    policy, buffer, belief = model.policy, model.rollout_buffer, model.policy.belief
    observations = {key: torch.as_tensor(value).flatten(0, 1) for key, value in buffer.observations.items()}
    starts = torch.as_tensor(buffer.episode_starts) > 0.5
    assert starts[1:].any() and not starts[0].all()
    with torch.no_grad():  # the whole rollout as one sequence from the state before its first step
        features = policy.extract_features(observations).view(n_steps, n_envs, -1)
        slots = [
            torch.as_tensor(array[:, 0]).transpose(0, 1)
            for array in (buffer.hidden_states_pi, buffer.cell_states_pi)
        ]
        states, _ = policy.unpack_state((slots[0].flatten(0, 1)[None], slots[1].flatten(0, 1)[None]))
        states = states.view(n_envs, n_steps, -1).transpose(0, 1)
        expected, final_state = belief.sequence(features, states[0], starts)
    from_states = belief.terms_from_states(torch.cat([states, final_state[None]]), starts)
    for name in ("precision", "precision_cholesky", "previous_precision", "entropy", "kl_offset"):
        value = getattr(expected, name)
        if value is not None:
            torch.testing.assert_close(getattr(from_states, name), value, rtol=1e-4, atol=1e-4, msg=name)

    from_record = model._rollout_rows()
    model._rollout_record = None
    from_buffer = model._rollout_rows()
    env_major = expected.apply(lambda value: value.swapaxes(0, 1).flatten(0, 1))
    for rows in (from_record, from_buffer):
        for name in ("previous_precision", "kl_offset", "entropy"):
            torch.testing.assert_close(getattr(rows, name), getattr(env_major, name), rtol=1e-4, atol=1e-4)
    assert from_record.sample_offsets.shape == (2, n_envs * n_steps, SMALL["latent_dim"])
    torch.testing.assert_close(from_record.sample_offsets, from_buffer.sample_offsets, rtol=1e-4, atol=1e-4)
