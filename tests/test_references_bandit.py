"""Reference agents of the Dirichlet–Bernoulli bandit against closed forms and brute force."""

from __future__ import annotations

import itertools
import math
from fractions import Fraction
from types import SimpleNamespace

import mpmath
import numpy as np
import pytest

from bayes_envs.bandit import BanditBatch
from bayes_envs.references.bandit import (
    BanditGreedyPosteriorMean,
    BanditOracle,
    BanditThompsonSampling,
    DirichletBernoulliParticles,
    bandit_bayes_optimal_value,
    bandit_policy_value,
    exact_posterior_mean,
    gibbs_sweep,
)
from bayes_envs.references.base import ReferencePolicy, UniformRandomPolicy

# Documented in DirichletBernoulliParticles for the default 256 particles, over Thompson-reached
# count configurations: max |error| of the posterior mean up to 0.081, mean 0.0065.
PARTICLE_MEAN_TOLERANCE = 0.1
PARTICLE_MEAN_AVERAGE_TOLERANCE = 0.015


# ------------------------------------------------------------------------------------- helpers
def brute_force_posterior_mean(successes, failures, alpha: Fraction) -> list[Fraction]:
    """The naive signed expansion over all Π(f_k + 1) binomial terms (independent of the module)."""
    n_arms = len(successes)

    def moment(powers) -> Fraction:
        # E_Dir(alpha)[Π p_k^{n_k}] = Π (alpha)_{n_k} / (K alpha)_{N}
        value = Fraction(1)
        for n in powers:
            for i in range(n):
                value *= alpha + i
        for i in range(sum(powers)):
            value /= n_arms * alpha + i
        return value

    evidence = Fraction(0)
    numerators = [Fraction(0)] * n_arms
    for extra in itertools.product(*(range(f + 1) for f in failures)):
        sign_and_binomial = math.prod(
            (-1) ** j * math.comb(f, j) for j, f in zip(extra, failures, strict=True)
        )
        powers = [s + j for s, j in zip(successes, extra, strict=True)]
        evidence += sign_and_binomial * moment(powers)
        for m in range(n_arms):
            bumped = list(powers)
            bumped[m] += 1
            numerators[m] += sign_and_binomial * moment(bumped)
    return [n / evidence for n in numerators]


def exact_posterior_samples(successes, failures, alpha, n_samples, rng) -> np.ndarray:
    """Exact posterior draws by rejection: propose Dirichlet(alpha + s), accept w.p. Π(1 − p_k)^{f_k}."""
    successes, failures = np.asarray(successes), np.asarray(failures)
    accepted = []
    total = 0
    while total < n_samples:
        proposals = rng.dirichlet(alpha + successes, size=4 * n_samples)
        keep = rng.random(len(proposals)) < np.prod((1.0 - proposals) ** failures, axis=1)
        accepted.append(proposals[keep])
        total += int(keep.sum())
    return np.concatenate(accepted)[:n_samples]


def dirichlet_expected_max(n_arms: int, alpha: float) -> float:
    """E[max_k p_k] for p ~ Dirichlet(alpha·1_K).

    With p = g / Σg, g_k ~ Gamma(alpha) iid and p independent of Σg:
    E[max p] = P(Y >= max of K−1 Gamma(alpha) variates), Y ~ Gamma(alpha + 1), a 1-d integral.
    """

    def gamma_cdf(shape, x):
        return mpmath.gammainc(shape, 0, x, regularized=True)

    def integrand(x):
        density = x**alpha * mpmath.exp(-x) / mpmath.gamma(alpha + 1)
        return density * gamma_cdf(alpha, x) ** (n_arms - 1)

    return float(mpmath.quad(integrand, [0, 1, 10, mpmath.inf]))


def rl2_observation(prev_action: np.ndarray, prev_reward: np.ndarray, n_arms: int) -> dict[str, np.ndarray]:
    batch = prev_action.shape[0]
    one_hot = np.zeros((batch, n_arms), np.float32)
    pulled = prev_action >= 0
    one_hot[np.flatnonzero(pulled), prev_action[pulled]] = 1.0
    return {
        "obs": np.zeros((batch, 1), np.float32),
        "prev_action": one_hot,
        "prev_reward": prev_reward.astype(np.float32).reshape(batch, 1),
        "new_episode": np.ones((batch, 1), np.float32),
    }


def rollout_regret(
    policy: ReferencePolicy, probs: np.ndarray, horizon: int, rng: np.random.Generator
) -> np.ndarray:
    """Run one trial per row of ``probs`` ``[B, K]``; return the expected regret per step ``[T, B]``."""
    batch, n_arms = probs.shape
    tasks = [SimpleNamespace(probs=p) for p in probs]
    prev_action = np.full(batch, -1)
    prev_reward = np.zeros(batch)
    regrets = np.zeros((horizon, batch))
    for t in range(horizon):
        actions = policy.act(rl2_observation(prev_action, prev_reward, n_arms), np.full(batch, t == 0), tasks)
        pulled = probs[np.arange(batch), actions]
        regrets[t] = probs.max(axis=1) - pulled
        prev_action = actions
        prev_reward = (rng.random(batch) < pulled).astype(np.float64)
    return regrets


def feed_history(policy: ReferencePolicy, history, batch: int, n_arms: int) -> np.ndarray:
    """Feed the same (arm, reward) history to ``batch`` envs; return the actions chosen after it."""
    prev_action = np.full(batch, -1)
    prev_reward = np.zeros(batch)
    tasks = [None] * batch
    for t, (arm, reward) in enumerate([*history, (None, None)]):
        actions = policy.act(rl2_observation(prev_action, prev_reward, n_arms), np.full(batch, t == 0), tasks)
        prev_action = np.full(batch, arm if arm is not None else -1)
        prev_reward = np.full(batch, reward if reward is not None else 0.0)
    return actions


# ------------------------------------------------------------------------------------- exact posterior
@pytest.mark.parametrize("alpha", [0.2, 0.3, 1.7])
def test_exact_mean_without_failures_is_the_dirichlet_posterior_mean(alpha):
    rng = np.random.default_rng(0)
    for n_arms in (2, 3, 5):
        successes = rng.integers(0, 9, size=n_arms)
        expected = (alpha + successes) / (n_arms * alpha + successes.sum())
        np.testing.assert_allclose(
            exact_posterior_mean(successes, np.zeros(n_arms, int), alpha), expected, rtol=1e-12
        )


def test_exact_mean_matches_brute_force_expansion_exactly():
    rng = np.random.default_rng(1)
    alpha = Fraction(1, 5)
    for _ in range(6):
        successes = rng.integers(0, 4, size=3)
        failures = rng.integers(0, 4, size=3)
        exact = exact_posterior_mean(successes, failures, 0.2, as_fractions=True)
        assert list(exact) == brute_force_posterior_mean(successes.tolist(), failures.tolist(), alpha)
        assert sum(exact) == 1


@pytest.mark.parametrize(("successes", "failures", "alpha"), [((2, 1), (3, 4), 0.3), ((0, 0), (5, 0), 0.2)])
def test_exact_mean_two_arms_matches_quadrature(successes, failures, alpha):
    # K=2: p2 = 1 − p1; integrate the unnormalised posterior over p1 numerically.
    def density(p1, p2):
        return (
            p1 ** (alpha - 1) * p2 ** (alpha - 1)
            * p1 ** successes[0] * p2 ** successes[1]
            * (1 - p1) ** failures[0] * (1 - p2) ** failures[1]
        )  # fmt: skip

    def integrate(function):
        # p^(alpha−1) is singular at both ends: substitute p1 = t^(1/alpha) near 0 and p2 = t^(1/alpha)
        # near 1 (handing the small coordinate over exactly, not as 1 − (1 − x)).
        def half(small_is_first):
            def integrand(t):
                x = t ** (1 / alpha)
                return (
                    function(*((x, 1 - x) if small_is_first else (1 - x, x))) * t ** (1 / alpha - 1) / alpha
                )

            return mpmath.quad(integrand, [0, 0.5**alpha])

        return half(True) + half(False)

    evidence = integrate(density)
    mean_p1 = integrate(lambda p1, p2: p1 * density(p1, p2)) / evidence
    exact = exact_posterior_mean(successes, failures, alpha)
    np.testing.assert_allclose(exact, [float(mean_p1), 1 - float(mean_p1)], rtol=1e-9)


def test_exact_mean_is_equivariant_under_arm_permutation():
    rng = np.random.default_rng(2)
    successes, failures = np.array([3, 0, 1, 0, 2]), np.array([1, 4, 0, 2, 3])
    base = exact_posterior_mean(successes, failures, 0.2)
    for _ in range(4):
        perm = rng.permutation(5)
        np.testing.assert_allclose(
            exact_posterior_mean(successes[perm], failures[perm], 0.2), base[perm], rtol=1e-12
        )


def test_exact_mean_rejects_bad_input():
    with pytest.raises(ValueError, match="max_total_failures"):
        exact_posterior_mean([0, 0], [30, 30], 0.2, max_total_failures=50)
    with pytest.raises(ValueError, match="alpha"):
        exact_posterior_mean([0, 0], [1, 0], 0.0)
    with pytest.raises(ValueError, match="failures"):
        exact_posterior_mean([0, 0], [1, -1], 0.2)
    with pytest.raises(ValueError, match="same length"):
        exact_posterior_mean([0, 0, 1], [1, 0], 0.2)


# ------------------------------------------------------------------------------------- particles
def thompson_counts(n_envs: int, n_steps: int, alpha: float, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Count configurations reached by pulling arms with Thompson sampling (realistic, not uniform)."""
    rng = np.random.default_rng(seed)
    probs = rng.dirichlet(np.full(5, alpha), size=n_envs)
    belief = DirichletBernoulliParticles(n_envs, 5, alpha, 64, rng=rng)
    for _ in range(n_steps):
        arms = np.argmax(belief.sample(), axis=1)
        belief.update(arms, (rng.random(n_envs) < probs[np.arange(n_envs), arms]).astype(int))
    return belief.successes, belief.failures


def test_gibbs_sweep_leaves_the_exact_posterior_invariant():
    successes, failures = np.array([[1, 0, 2]]), np.array([[2, 3, 1]])
    rng = np.random.default_rng(3)
    start = exact_posterior_samples(successes[0], failures[0], 0.3, 20_000, rng)
    moved = gibbs_sweep(start[None], successes, failures, 0.3, rng)[0]
    exact = exact_posterior_mean(successes[0], failures[0], 0.3)
    # one sweep from exact samples must stay exact (4 standard errors)
    standard_error = moved.std(axis=0) / math.sqrt(len(moved))
    assert np.all(np.abs(moved.mean(axis=0) - exact) < 4 * standard_error + 1e-4)
    # and from a far start it converges to the same mean
    far = np.tile([[[0.98, 0.01, 0.01]]], (1, 4000, 1))
    for _ in range(30):
        far = gibbs_sweep(far, successes, failures, 0.3, rng)
    assert np.abs(far[0].mean(axis=0) - exact).max() < 0.02


def test_sequential_particle_mean_matches_exact_on_thompson_counts():
    alpha, n_envs = 0.2, 48
    rng = np.random.default_rng(4)
    probs = rng.dirichlet(np.full(5, alpha), size=n_envs)
    belief = DirichletBernoulliParticles(n_envs, 5, alpha, rng=np.random.default_rng(5))
    errors, ess = [], []
    for step in range(1, 41):
        arms = np.argmax(belief.sample(), axis=1)
        belief.update(arms, (rng.random(n_envs) < probs[np.arange(n_envs), arms]).astype(int))
        if step % 10 == 0:
            exact = np.stack(
                [
                    exact_posterior_mean(s, f, alpha)
                    for s, f in zip(belief.successes, belief.failures, strict=True)
                ]
            )
            errors.append(np.abs(belief.posterior_mean() - exact).max(axis=1))
            ess.append(belief.effective_sample_size())
            np.testing.assert_allclose(belief.posterior_mean().sum(axis=1), 1.0, rtol=1e-9)
    errors = np.concatenate(errors)
    assert errors.max() < PARTICLE_MEAN_TOLERANCE
    assert errors.mean() < PARTICLE_MEAN_AVERAGE_TOLERANCE
    assert np.concatenate(ess).min() >= belief.ess_fraction * belief.n_particles


def test_from_counts_matches_exact_and_is_exact_without_failures():
    successes, failures = thompson_counts(32, 30, 0.3, seed=6)
    belief = DirichletBernoulliParticles.from_counts(successes, failures, 0.3, rng=np.random.default_rng(7))
    exact = np.stack([exact_posterior_mean(s, f, 0.3) for s, f in zip(successes, failures, strict=True)])
    errors = np.abs(belief.posterior_mean() - exact).max(axis=1)
    assert errors.max() < PARTICLE_MEAN_TOLERANCE
    assert errors.mean() < PARTICLE_MEAN_AVERAGE_TOLERANCE
    no_failures = DirichletBernoulliParticles.from_counts(successes, 0 * failures, 0.3, n_particles=8)
    np.testing.assert_allclose(
        no_failures.posterior_mean(), (0.3 + successes) / (1.5 + successes.sum(1))[:, None]
    )
    np.testing.assert_allclose(no_failures.effective_sample_size(), 8)


def test_particle_sample_matches_exact_posterior_distribution():
    successes, failures = np.array([2, 0, 1, 0, 0]), np.array([1, 2, 0, 1, 0])
    batch = 20_000
    belief = DirichletBernoulliParticles.from_counts(
        np.tile(successes, (batch, 1)), np.tile(failures, (batch, 1)), 0.2, 32, rng=np.random.default_rng(8)
    )
    drawn = belief.sample()
    reference = exact_posterior_samples(successes, failures, 0.2, 100_000, np.random.default_rng(9))
    for quantile in (0.1, 0.5, 0.9):
        np.testing.assert_allclose(
            np.quantile(drawn, quantile, axis=0), np.quantile(reference, quantile, axis=0), atol=0.02
        )


def test_particle_constructor_validates_arguments():
    with pytest.raises(ValueError, match="n_particles"):
        DirichletBernoulliParticles(2, 5, 0.2, 0)
    with pytest.raises(ValueError, match="alpha"):
        DirichletBernoulliParticles(2, 5, -1.0)
    with pytest.raises(ValueError, match="ess_fraction"):
        DirichletBernoulliParticles(2, 5, 0.2, ess_fraction=1.5)
    belief = DirichletBernoulliParticles(2, 3, 0.2, 8)
    with pytest.raises(ValueError, match="actions"):
        belief.update(np.array([0, 3]), np.array([1, 0]))
    with pytest.raises(ValueError, match="rewards"):
        belief.update(np.array([0, 1]), np.array([1, 2]))


# ------------------------------------------------------------------------------------- policies
@pytest.mark.parametrize("policy_class", [BanditThompsonSampling, BanditGreedyPosteriorMean])
def test_policies_validate_arguments(policy_class):
    with pytest.raises(ValueError, match="alpha"):
        policy_class(alpha=0.0)
    with pytest.raises(ValueError, match="n_arms"):
        policy_class(n_arms=1)
    with pytest.raises(ValueError, match="n_particles"):
        policy_class(n_particles=0)


def test_thompson_action_frequencies_match_posterior_probability_of_being_best():
    history = [(0, 1), (1, 0), (0, 0), (2, 1), (1, 0), (3, 0), (0, 1)]
    successes, failures = np.zeros(5, int), np.zeros(5, int)
    for arm, reward in history:
        (successes if reward else failures)[arm] += 1
    reference = exact_posterior_samples(successes, failures, 0.2, 200_000, np.random.default_rng(10))
    probability_best = np.bincount(reference.argmax(axis=1), minlength=5) / len(reference)

    batch = 6000
    policy = BanditThompsonSampling(n_arms=5, alpha=0.2, n_particles=32, seed=11)
    actions = feed_history(policy, history, batch, 5)
    frequencies = np.bincount(actions, minlength=5) / batch
    np.testing.assert_array_equal(policy.belief.successes[0], successes)
    np.testing.assert_array_equal(policy.belief.failures[0], failures)
    tolerance = 4 * np.sqrt(probability_best * (1 - probability_best) / batch) + 0.01
    assert np.all(np.abs(frequencies - probability_best) < tolerance), (frequencies, probability_best)


def test_greedy_pulls_argmax_of_exact_posterior_mean():
    rng = np.random.default_rng(12)
    checked = 0
    for _ in range(12):
        history = [(int(rng.integers(5)), int(rng.random() < 0.4)) for _ in range(int(rng.integers(1, 12)))]
        successes, failures = np.zeros(5, int), np.zeros(5, int)
        for arm, reward in history:
            (successes if reward else failures)[arm] += 1
        exact = exact_posterior_mean(successes, failures, 0.2)
        top_two = np.sort(exact)[-2:]
        if top_two[1] - top_two[0] < 0.08:
            continue  # a near-tie: the particle estimate may order them either way
        policy = BanditGreedyPosteriorMean(n_arms=5, alpha=0.2, seed=13)
        actions = feed_history(policy, history, 4, 5)
        assert np.all(actions == np.argmax(exact))
        checked += 1
    assert checked >= 5
    # exact ties at trial start (all means 1/K) go to the lowest index
    assert np.all(feed_history(BanditGreedyPosteriorMean(seed=0), [], 3, 5) == 0)


def test_counts_reset_at_trial_start_only_where_flagged():
    policy = BanditThompsonSampling(n_arms=3, alpha=0.3, n_particles=16, seed=14)
    feed_history(policy, [(0, 1), (1, 0), (0, 1)], 4, 3)
    np.testing.assert_array_equal(policy.belief.successes, [[2, 0, 0]] * 4)
    trial_start = np.array([True, False, True, False])
    prev_action = np.array([-1, 2, -1, 2])
    observation = rl2_observation(prev_action, np.array([0.0, 1.0, 0.0, 1.0]), 3)
    policy.act(observation, trial_start, [None] * 4)
    np.testing.assert_array_equal(policy.belief.successes, [[0, 0, 0], [2, 0, 1], [0, 0, 0], [2, 0, 1]])
    np.testing.assert_array_equal(policy.belief.failures, [[0, 0, 0], [0, 1, 0], [0, 0, 0], [0, 1, 0]])
    # the reset envs are back at the prior (equal weights, prior particles)
    np.testing.assert_allclose(policy.belief.effective_sample_size()[[0, 2]], 16)
    with pytest.raises(ValueError, match="trial_start"):
        policy.act(observation, np.array([True, False]), [None] * 4)


def test_policies_track_the_counts_of_the_real_bandit_env():
    batch = BanditBatch(16, split="test")
    rngs = [np.random.default_rng(i) for i in range(16)]
    batch.start_trials(range(16), rngs, [None] * 16)
    policy = BanditThompsonSampling(alpha=batch.alpha, n_particles=32, seed=23)
    trial_start = np.ones(16, bool)
    for _ in range(batch.horizon):
        batch.step(policy.act(batch.observation(), trial_start, batch.tasks))
        trial_start = np.zeros(16, bool)
    policy.act(batch.observation(), trial_start, batch.tasks)
    np.testing.assert_array_equal(policy.belief.successes, batch.successes)
    np.testing.assert_array_equal(policy.belief.failures, batch.failures)
    # a new trial in half of the envs resets exactly those
    batch.start_trials(range(8), rngs[:8], [None] * 8)
    policy.act(batch.observation(), np.arange(16) < 8, batch.tasks)
    assert policy.belief.successes[:8].sum() + policy.belief.failures[:8].sum() == 0
    assert np.all(
        BanditOracle().act(batch.observation(), trial_start, batch.tasks) == batch.probs.argmax(axis=1)
    )


def test_oracle_pulls_best_arm():
    probs = np.random.default_rng(15).dirichlet(np.full(5, 0.2), size=64)
    regrets = rollout_regret(BanditOracle(5), probs, 5, np.random.default_rng(16))
    assert np.all(regrets == 0.0)
    assert BanditOracle.privileged and not BanditThompsonSampling.privileged


def test_thompson_regret_far_below_uniform_random_and_oracle_zero():
    alpha, n_arms, horizon, n_tasks = 0.2, 5, 50, 256
    rng = np.random.default_rng(17)
    probs = rng.dirichlet(np.full(n_arms, alpha), size=n_tasks)
    random_regret_formula = horizon * (dirichlet_expected_max(n_arms, alpha) - 1 / n_arms)

    random_regret = rollout_regret(
        UniformRandomPolicy(SimpleNamespace(n=n_arms), 18), probs, horizon, rng
    ).sum(axis=0)
    standard_error = random_regret.std() / math.sqrt(n_tasks)
    # the rollout loop and the E[max p] integral agree with each other
    assert abs(random_regret.mean() - random_regret_formula) < 4 * standard_error

    thompson_per_step = rollout_regret(BanditThompsonSampling(seed=19), probs, horizon, rng)
    thompson_regret = thompson_per_step.sum(axis=0)
    upper = thompson_regret.mean() + 3 * thompson_regret.std() / math.sqrt(n_tasks)
    assert upper < 0.25 * random_regret_formula, (thompson_regret.mean(), random_regret_formula)
    # it learns: the second half of the trial costs much less than the first
    assert thompson_per_step[25:].sum() < 0.5 * thompson_per_step[:25].sum()
    assert rollout_regret(BanditOracle(), probs, horizon, rng).sum() == 0.0


def test_dirichlet_expected_max_matches_monte_carlo():
    samples = np.random.default_rng(20).dirichlet(np.full(5, 0.3), size=400_000)
    assert abs(dirichlet_expected_max(5, 0.3) - samples.max(axis=1).mean()) < 0.002


# ------------------------------------------------------------------------------------- Bayes-optimal DP
@pytest.mark.parametrize(("n_arms", "alpha"), [(2, 0.2), (3, 0.3), (5, 1.0)])
def test_bayes_optimal_value_short_horizons_closed_form(n_arms, alpha):
    assert bandit_bayes_optimal_value(n_arms, 0, alpha) == 0.0
    assert bandit_bayes_optimal_value(n_arms, 1, alpha) == pytest.approx(1 / n_arms)
    # horizon 2: pull any arm; stay on a success, else switch to an unpulled arm, whose posterior
    # mean after the failure is (alpha + 1/(K−1)) / (K alpha + 1) by symmetry.
    stay = (alpha + 1) / (n_arms * alpha + 1)
    switch = (alpha + 1 / (n_arms - 1)) / (n_arms * alpha + 1)
    expected = 1 / n_arms + stay / n_arms + (1 - 1 / n_arms) * switch
    assert bandit_bayes_optimal_value(n_arms, 2, alpha) == pytest.approx(expected, rel=1e-12)


def test_bayes_optimal_dominates_greedy_and_thompson_and_is_below_oracle():
    n_arms, horizon, alpha = 2, 8, 0.3
    optimal = bandit_bayes_optimal_value(n_arms, horizon, alpha)
    greedy = bandit_policy_value(n_arms, horizon, alpha, lambda s, f, means: int(np.argmax(means)))
    stay_on_first = bandit_policy_value(n_arms, horizon, alpha, lambda s, f, means: 0)
    oracle = horizon * dirichlet_expected_max(n_arms, alpha)
    assert stay_on_first == pytest.approx(horizon / n_arms)
    assert stay_on_first < greedy <= optimal + 1e-12 < oracle

    n_tasks = 6000
    rng = np.random.default_rng(21)
    probs = rng.dirichlet(np.full(n_arms, alpha), size=n_tasks)
    regret = rollout_regret(
        BanditThompsonSampling(n_arms, alpha, n_particles=32, seed=22), probs, horizon, rng
    )
    thompson_reward = probs.max(axis=1) * horizon - regret.sum(axis=0)
    # the optimal value is an expectation over tasks: compare with Thompson's mean reward (3 SE)
    assert thompson_reward.mean() - 3 * thompson_reward.std() / math.sqrt(n_tasks) < optimal
    assert thompson_reward.mean() > stay_on_first


def test_bayes_optimal_refuses_large_problems():
    with pytest.raises(ValueError, match="max_states"):
        bandit_bayes_optimal_value(5, 50, 0.2)
