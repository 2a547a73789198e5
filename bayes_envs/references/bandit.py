"""Reference (non-learned) agents for the Dirichlet–Bernoulli bandit ``BayesBandit-v0``.

The task is a vector of arm probabilities ``p ~ Dirichlet(alpha·1_K)`` and a pull of arm ``a``
pays ``r ~ Bernoulli(p_a)``. After ``s_k`` successes and ``f_k`` failures on each arm ``k`` the
posterior is

    π(p | s, f) ∝ Dir(p; alpha) · Π_k p_k^{s_k} (1 − p_k)^{f_k},

which is **not** a Dirichlet: successes are conjugate but a failure only says "some *other*
arm", i.e. multiplies by ``1 − p_k = Σ_{j≠k} p_j``. This module provides

* :func:`exact_posterior_mean` — the posterior mean in exact rational arithmetic (ground truth);
* :class:`DirichletBernoulliParticles` — a batched resample-move particle approximation of the
  posterior (importance weights + an exact Gibbs kernel for rejuvenation);
* batched :class:`~bayes_envs.references.base.ReferencePolicy` agents: Thompson sampling,
  greedy posterior mean and the privileged oracle;
* :func:`bandit_bayes_optimal_value` — the Bayes-optimal expected return by dynamic programming
  (tiny problems only) and :func:`bandit_policy_value`, the same recursion for a fixed policy.

The data augmentation behind the particle filter: writing each failure on arm ``k`` as
``(Σ_{j≠k} p_j)`` and expanding the product turns the posterior into a *positive* mixture of
Dirichlets, indexed by attributing every failure on ``k`` to some other arm ``j``. Given ``p``
the attributions of arm ``k``'s failures are ``Multinomial(f_k, p_j / (1 − p_k), j≠k)``; given
the attribution counts ``c`` the arm probabilities are ``Dirichlet(alpha + s + c)``. Alternating
the two draws is a Gibbs sampler whose stationary law is exactly π(p | s, f); it also gives a
Rao-Blackwellised posterior mean, ``E[p_j] = (alpha + s_j + E[c_j]) / (K·alpha + N)`` with
``E[c_j | p] = p_j Σ_{k≠j} f_k / (1 − p_k)`` (``N = Σ s + Σ f``: every pull adds one count).
"""

from __future__ import annotations

import functools
import itertools
import math
from collections.abc import Sequence
from fractions import Fraction
from typing import Any

import numpy as np

from bayes_envs.core import check_int, check_positive_float
from bayes_envs.references.base import ReferencePolicy

#: Default cap on the total number of failures handled by :func:`exact_posterior_mean`.
#: The cost is O(K · F²) big-rational operations (F = Σ f_k); F = 50 takes ~10 ms, F = 200 ~1 s.
MAX_EXACT_TOTAL_FAILURES = 200

#: Default cap on the number of count states visited by :func:`bandit_bayes_optimal_value`.
MAX_DP_STATES = 200_000


# ---------------------------------------------------------------------------------------------
# Exact posterior (rational arithmetic)
# ---------------------------------------------------------------------------------------------
def _alpha_fraction(alpha: Any) -> Fraction:
    """``alpha`` as an exact rational; floats go through ``Fraction.limit_denominator()`` (0.2 -> 1/5)."""
    if isinstance(alpha, Fraction):
        if alpha <= 0:
            raise ValueError(f"alpha must be > 0, got {alpha}")
        return alpha
    return Fraction(check_positive_float("alpha", alpha)).limit_denominator()


def _check_counts(successes: Any, failures: Any) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """Validate per-arm count vectors ``[K]`` (non-negative ints, same length K >= 2)."""
    counts = []
    for name, value in (("successes", successes), ("failures", failures)):
        array = np.asarray(value)
        if array.ndim != 1 or array.shape[0] < 2:
            raise ValueError(
                f"{name} must be a 1-d array of per-arm counts with K >= 2 arms, got {array.shape}"
            )
        if array.dtype.kind not in "iu" and not (
            array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array))
        ):
            raise TypeError(f"{name} must hold integer counts, got dtype {array.dtype}")
        if np.any(array < 0):
            raise ValueError(f"{name} must be >= 0, got {array.tolist()}")
        counts.append(tuple(int(x) for x in array))
    if len(counts[0]) != len(counts[1]):
        raise ValueError(
            f"successes and failures must have the same length, got {len(counts[0])} and {len(counts[1])}"
        )
    return counts[0], counts[1]


def _rising(x: Fraction, n: int) -> Fraction:
    """The rising factorial (x)_n = x (x+1) ... (x+n-1)."""
    result = Fraction(1)
    for i in range(n):
        result *= x + i
    return result


def _poly_mul(a: list[Fraction], b: list[Fraction]) -> list[Fraction]:
    out = [Fraction(0)] * (len(a) + len(b) - 1)
    for i, ai in enumerate(a):
        if ai:
            for j, bj in enumerate(b):
                out[i + j] += ai * bj
    return out


@functools.lru_cache(maxsize=65_536)
def _exact_posterior_mean_fractions(
    successes: tuple[int, ...], failures: tuple[int, ...], alpha: Fraction
) -> tuple[Fraction, ...]:
    """Exact posterior mean of ``p`` as Fractions (see :func:`exact_posterior_mean`)."""
    n_arms = len(successes)

    def arm_poly(s: int, f: int, extra: int) -> list[Fraction]:
        # (1-p)^f p^(s+extra) expanded: coefficient of x^j is C(f,j) (-1)^j (alpha)_{s+extra+j};
        # x^j records the extra degree j, which the shared normaliser (K alpha)_{S+J} depends on.
        base = _rising(alpha, s + extra)
        coefficients = []
        for j in range(f + 1):
            coefficients.append((-1) ** j * math.comb(f, j) * base)
            base *= alpha + s + extra + j
        return coefficients

    plain = [arm_poly(s, f, 0) for s, f in zip(successes, failures, strict=True)]
    # Prefix/suffix products so each arm's "times p_m" variant costs two convolutions, not K.
    prefix = [[Fraction(1)]]
    for poly in plain:
        prefix.append(_poly_mul(prefix[-1], poly))
    suffix = [[Fraction(1)]]
    for poly in reversed(plain):
        suffix.append(_poly_mul(poly, suffix[-1]))
    suffix.reverse()

    total_alpha = n_arms * alpha
    total_successes = sum(successes)
    total_failures = sum(failures)
    # inverse_normaliser[d] = 1 / (K alpha)_{S+d}, d = 0 .. F+1
    inverse_normaliser = [1 / _rising(total_alpha, total_successes)]
    for d in range(total_failures + 1):
        inverse_normaliser.append(inverse_normaliser[-1] / (total_alpha + total_successes + d))

    evidence = sum(c * inverse_normaliser[j] for j, c in enumerate(prefix[n_arms]))
    means = []
    for m in range(n_arms):
        shifted = _poly_mul(_poly_mul(prefix[m], arm_poly(successes[m], failures[m], 1)), suffix[m + 1])
        numerator = sum(c * inverse_normaliser[j + 1] for j, c in enumerate(shifted))
        means.append(numerator / evidence)
    return tuple(means)


def exact_posterior_mean(
    successes: Sequence[int] | np.ndarray,
    failures: Sequence[int] | np.ndarray,
    alpha: float | Fraction,
    *,
    max_total_failures: int = MAX_EXACT_TOTAL_FAILURES,
    as_fractions: bool = False,
) -> np.ndarray:
    """Exact posterior mean ``E[p | s, f]`` under the ``Dirichlet(alpha·1_K)`` prior.

    Expanding ``Π_k (1 − p_k)^{f_k}`` binomially turns the posterior into signed Dirichlet
    moments, ``E_Dir(α)[Π_k p_k^{n_k}] = Π_k (α)_{n_k} / (Kα)_N`` (rising factorials). The naive
    sum has ``Π_k (f_k + 1)`` terms; grouping them by their total extra degree (the normaliser
    only depends on it) turns it into a product of K polynomials, O(K·F²) operations for
    ``F = Σ f_k``. Everything is evaluated in exact rationals, because the alternating signs
    cancel catastrophically in floating point. Results are cached.

    :param successes: ``[K]`` non-negative success counts per arm.
    :param failures: ``[K]`` non-negative failure counts per arm.
    :param alpha: the symmetric Dirichlet concentration (> 0); a float is converted with
        ``Fraction(alpha).limit_denominator()`` (0.2 -> 1/5 exactly).
    :param max_total_failures: refuse (``ValueError``) when ``Σ f_k`` exceeds this; the rationals
        grow with the counts (F = 50: ~10 ms, F = 200: ~1 s).
    :param as_fractions: return an object array of ``Fraction`` instead of float64.
    :return: ``[K]`` posterior mean (sums to 1).
    """
    s, f = _check_counts(successes, failures)
    alpha_q = _alpha_fraction(alpha)
    if sum(f) > max_total_failures:
        raise ValueError(
            f"failures must total <= max_total_failures={max_total_failures} for the exact posterior, "
            f"got {sum(f)} (cost grows as K·F² big-rational operations)"
        )
    means = _exact_posterior_mean_fractions(s, f, alpha_q)
    if as_fractions:
        return np.array(means, dtype=object)
    return np.array([float(m) for m in means])


# ---------------------------------------------------------------------------------------------
# Batched particle approximation
# ---------------------------------------------------------------------------------------------
def _logsumexp(x: np.ndarray, axis: int, keepdims: bool = False) -> np.ndarray:
    peak = np.max(x, axis=axis, keepdims=True)
    peak = np.where(np.isfinite(peak), peak, 0.0)
    with np.errstate(divide="ignore"):
        out = np.log(np.sum(np.exp(x - peak), axis=axis, keepdims=True)) + peak
    return out if keepdims else np.squeeze(out, axis=axis)


# numpy reduces a short last axis (K = 5 arms) ~10x slower than elementwise work on the same
# array, so the per-particle reductions over arms below use slices or a matrix product.
def _arm_max(x: np.ndarray) -> np.ndarray:
    """``max_k x[..., k]`` with the arm axis kept: ``[..., 1]``."""
    return functools.reduce(np.maximum, [x[..., k] for k in range(x.shape[-1])])[..., None]


def _arm_sum(x: np.ndarray) -> np.ndarray:
    """``Σ_k x[..., k]`` with the arm axis kept: ``[..., 1]``."""
    return x @ np.ones((x.shape[-1], 1))


def _arm_logsumexp(x: np.ndarray) -> np.ndarray:
    peak = _arm_max(x)
    return np.log(_arm_sum(np.exp(x - peak))) + peak


def _dirichlet(concentration: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``p ~ Dirichlet(concentration)``, batched over leading dims ``[..., K]``.

    Uses ``G(a) = G(a+1) · U^{1/a}`` in log space: small concentrations (0.2) give gamma variates
    below float64's range (so a naive draw can make every ``p_k`` 0/0); normalised in log space,
    an entry underflows only below 1e-308, which has probability ~1e-60 at alpha = 0.2.
    """
    log_gamma = np.log(rng.standard_gamma(concentration + 1.0)) + np.log(rng.random(concentration.shape)) / (
        concentration
    )
    return np.exp(log_gamma - _arm_logsumexp(log_gamma))


def _exclusive_sums(values: np.ndarray, selector: np.ndarray) -> np.ndarray:
    """``values[..., K] @ selector[K, L]`` as one 2-d GEMM (numpy's batched matmul is slow for tiny K)."""
    flat = values.reshape(-1, values.shape[-1]) @ selector
    return flat.reshape(*values.shape[:-1], selector.shape[-1])


def _complement(probs: np.ndarray) -> np.ndarray:
    """``1 − p_k = Σ_{j≠k} p_j`` ``[..., K]``, summed directly: no cancellation when p_k is near 1."""
    n_arms = probs.shape[-1]
    return _exclusive_sums(probs, 1.0 - np.eye(n_arms))


def _systematic_indices(log_weights: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling of each row of normalised ``log_weights`` ``[N, M]``: indices ``[N, draws]``."""
    n_rows, n_particles = log_weights.shape
    cumulative = np.cumsum(np.exp(log_weights), axis=1)
    cumulative /= cumulative[:, -1:]
    cumulative[:, -1] = 1.0
    positions = (rng.random((n_rows, 1)) + np.arange(n_draws)) / n_draws
    # One searchsorted for all rows: offset row r into [r, r+1) so the flattened array stays sorted.
    offsets = np.arange(n_rows)[:, None]
    flat = np.searchsorted((cumulative + offsets).ravel(), (positions + offsets).ravel(), side="right")
    return np.minimum(flat.reshape(n_rows, n_draws) - offsets * n_particles, n_particles - 1)


@functools.lru_cache(maxsize=16)
def _split_selectors(n_arms: int) -> tuple[np.ndarray, np.ndarray]:
    """Selectors for the sequential multinomial split of arm k's failures over the arms j != k.

    ``suffix[K, K·K]``: column (k, j) sums p_l over l >= j, l != k; ``off_diagonal[K, K]``: 1 where j != k.
    """
    l_index, k_index, j_index = np.meshgrid(
        np.arange(n_arms), np.arange(n_arms), np.arange(n_arms), indexing="ij"
    )
    suffix = ((l_index >= j_index) & (l_index != k_index)).astype(np.float64).reshape(n_arms, n_arms * n_arms)
    return suffix, 1.0 - np.eye(n_arms)


def gibbs_sweep(
    probs: np.ndarray,
    successes: np.ndarray,
    failures: np.ndarray,
    alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One data-augmentation Gibbs sweep leaving π(p | s, f) invariant, batched.

    Draws the attribution counts ``c`` of every arm's failures to the other arms given ``p``,
    then ``p ~ Dirichlet(alpha + s + c)``.

    :param probs: ``[N, M, K]`` current ``p`` of ``M`` chains/particles in each of ``N`` envs.
    :param successes: ``[N, K]`` success counts; ``failures``: ``[N, K]`` failure counts.
    :return: ``[N, M, K]`` new ``p``.
    """
    n_arms = probs.shape[-1]
    suffix_selector, off_diagonal = _split_selectors(n_arms)
    # Arm k's failures go to j != k with probability p_j / (1 - p_k). Split Multinomial(f_k, ·) by
    # sequential binomials over j: P(j | not before j) = p_j / Σ_{l>=j, l≠k} p_l, so the last
    # allowed column takes exactly the remainder. All sums are of positives: no cancellation.
    suffix = _exclusive_sums(probs, suffix_selector).reshape(*probs.shape, n_arms)  # [N, M, K(k), K(j)]
    numerator = probs[..., None, :] * off_diagonal
    remaining = np.broadcast_to(failures[:, None, :], probs.shape).astype(np.int64)
    attributed = np.zeros(probs.shape, np.float64)
    for j in range(n_arms):
        # Binomial draws only where failures are left to split (most arms have few or none).
        active = remaining > 0
        if not np.any(active):
            break
        denominator = suffix[..., j][active]
        fraction = np.divide(
            numerator[..., j][active], denominator, out=np.ones_like(denominator), where=denominator > 0
        )
        draw = np.zeros(remaining.shape, np.int64)
        draw[active] = rng.binomial(remaining[active], np.clip(fraction, 0.0, 1.0))
        attributed[..., j] = _arm_sum(draw.astype(np.float64))[..., 0]
        remaining = remaining - draw
    return _dirichlet(alpha + successes[:, None, :] + attributed, rng)


class DirichletBernoulliParticles:
    """A batched resample-move particle approximation of the exact bandit posterior.

    Each of ``B`` envs holds ``M`` weighted particles ``p^{(i)}`` (``probs`` ``[B, M, K]``, drawn
    in log space so that tiny components do not underflow) with normalised log-weights
    ``[B, M]``, plus its exact counts. A pull reweights every particle by its likelihood (``p_a``
    or ``1 − p_a``); when the effective sample size falls below ``ess_fraction·M`` that env's
    particles are resampled (systematic) and moved by ``n_move_sweeps`` sweeps of the exact
    data-augmentation Gibbs kernel (:func:`gibbs_sweep`), which restores diversity without
    changing the target. :meth:`from_counts` builds the same object for arbitrary counts,
    starting from the conjugate ``Dirichlet(alpha + s)`` and adding the failures one by one.
    Cost per pull is O(B·M·K) numpy work, plus O(B'·M·K·n_move_sweeps) gamma/binomial draws for
    the B' envs that resample; no Python loop over envs or particles (only over the K arms).

    Why this design. Measured on 3,075 count configurations per alpha (75 tasks, Thompson pulls,
    every step from 10 to 50), K=5; error = max over arms of |estimated − exact posterior mean|:

    * one-shot importance sampling from the ``Dirichlet(alpha + s)`` proposal with weights
      ``Π(1 − p_k)^{f_k}`` collapses once an arm has many successes *and* failures (the proposal
      puts that arm near p=1): M=512 gives median ESS 38–41, 10% quantile ESS 2–3, mean error
      0.047–0.051, max 0.27–0.32;
    * this filter, M=256 (default), 2 sweeps, threshold M/2: ESS never below 128 (median ~200);
      error of :meth:`posterior_mean` mean 0.0065 (alpha 0.2 and 0.3), 99th percentile
      0.030–0.036, max 0.039–0.081 (the plain weighted mean: mean 0.0092–0.0097, max 0.087).
      M=512: mean 0.0051, 99th percentile 0.031, max 0.049. :meth:`from_counts`, M=256: mean
      0.0072, 99th percentile 0.033–0.036, max 0.056.
    * The residual error is Monte Carlo variance, not bias, and is dominated by never-pulled
      arms, whose p is heavy-tailed under alpha < 1: in the worst configuration found
      (s=(13,0,0,0,0), f=(13,3,0,2,2)) the estimate's standard deviation is 0.027 for the
      single unpulled arm while the mean of 30 independent estimates is within 0.001 of exact.
      It shrinks as 1/√M; Thompson sampling only needs :meth:`sample`, which is unaffected.

    :param n_envs: ``B``.
    :param n_arms: ``K`` (>= 2).
    :param alpha: prior concentration (> 0).
    :param n_particles: ``M`` (>= 1).
    :param ess_fraction: resample when ESS < ``ess_fraction·M`` (in (0, 1]).
    :param n_move_sweeps: Gibbs sweeps after each resampling (>= 0).
    :param rng: the random generator (owned by the caller).
    """

    def __init__(
        self,
        n_envs: int,
        n_arms: int,
        alpha: float,
        n_particles: int = 256,
        *,
        ess_fraction: float = 0.5,
        n_move_sweeps: int = 2,
        rng: np.random.Generator | None = None,
    ) -> None:
        self.n_envs = check_int("n_envs", n_envs, 1)
        self.n_arms = check_int("n_arms", n_arms, 2)
        self.alpha = check_positive_float("alpha", alpha)
        self.n_particles = check_int("n_particles", n_particles, 1)
        ess_fraction = check_positive_float("ess_fraction", ess_fraction)
        if ess_fraction > 1.0:
            raise ValueError(f"ess_fraction must be in (0, 1], got {ess_fraction}")
        self.ess_fraction = ess_fraction
        self.n_move_sweeps = check_int("n_move_sweeps", n_move_sweeps, 0)
        self.rng = rng if rng is not None else np.random.default_rng()
        shape = (self.n_envs, self.n_particles, self.n_arms)
        #: ``[B, M, K]`` particle values of ``p``, and ``1 − p`` (kept to avoid recomputing it).
        self.probs = np.full(shape, 1.0 / self.n_arms)
        self.complement = 1.0 - self.probs
        #: ``[B, M]`` log-weights, normalised per env (logsumexp 0).
        self.log_weights = np.zeros((self.n_envs, self.n_particles))
        #: ``[B, K]`` exact success / failure counts per arm.
        self.successes = np.zeros((self.n_envs, self.n_arms), np.int64)
        self.failures = np.zeros((self.n_envs, self.n_arms), np.int64)
        self.reset()

    # ------------------------------------------------------------------ construction
    def _check_mask(self, env_mask: np.ndarray | None) -> np.ndarray:
        if env_mask is None:
            return np.ones(self.n_envs, bool)
        env_mask = np.asarray(env_mask)
        if env_mask.shape != (self.n_envs,):
            raise ValueError(f"env_mask must have shape ({self.n_envs},), got {env_mask.shape}")
        return env_mask.astype(bool)

    def _set_particles(self, env_mask: np.ndarray, probs: np.ndarray) -> None:
        self.probs[env_mask] = probs
        self.complement[env_mask] = _complement(probs)

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the data of the envs where ``env_mask`` ``[B]`` is true: prior particles, zero counts."""
        mask = self._check_mask(env_mask)
        n = int(mask.sum())
        if n == 0:
            return
        self._set_particles(
            mask, _dirichlet(np.full((n, self.n_particles, self.n_arms), self.alpha), self.rng)
        )
        self.log_weights[mask] = -math.log(self.n_particles)
        self.successes[mask] = 0
        self.failures[mask] = 0

    @classmethod
    def from_counts(
        cls,
        successes: np.ndarray,
        failures: np.ndarray,
        alpha: float,
        n_particles: int = 256,
        *,
        ess_fraction: float = 0.5,
        n_move_sweeps: int = 2,
        rng: np.random.Generator | None = None,
    ) -> DirichletBernoulliParticles:
        """Particles for given counts ``successes``/``failures`` ``[B, K]`` (the posterior is order-free).

        Starts from ``Dirichlet(alpha + s)`` — the exact posterior of the successes alone, since
        they are conjugate — then adds the failures one at a time (largest remaining count
        first) through :meth:`update`, i.e. reweighting and resample-move. A single importance
        step with the whole failure likelihood ``Π(1 − p_k)^{f_k}`` as weight degenerates (see
        the class docstring), so it is only the first step here.
        """
        successes = np.asarray(successes)
        failures = np.asarray(failures)
        if successes.ndim != 2 or successes.shape != failures.shape:
            raise ValueError(
                f"successes and failures must both be [B, K], got {successes.shape} and {failures.shape}"
            )
        if np.any(successes < 0) or np.any(failures < 0):
            raise ValueError("successes and failures must be >= 0")
        belief = cls(
            successes.shape[0],
            successes.shape[1],
            alpha,
            n_particles,
            ess_fraction=ess_fraction,
            n_move_sweeps=n_move_sweeps,
            rng=rng,
        )
        belief.successes[:] = successes
        concentration = belief.alpha + np.broadcast_to(successes[:, None, :], belief.probs.shape)
        belief._set_particles(
            np.ones(belief.n_envs, bool), _dirichlet(concentration.astype(np.float64), belief.rng)
        )
        remaining = failures.astype(np.int64).copy()
        no_reward = np.zeros(belief.n_envs, np.int64)
        rows = np.arange(belief.n_envs)
        while np.any(remaining > 0):
            pending = remaining.sum(axis=1) > 0
            arms = np.argmax(remaining, axis=1)
            belief.update(arms, no_reward, pending)
            remaining[rows[pending], arms[pending]] -= 1
        return belief

    # ------------------------------------------------------------------ updates
    def _normalise(self) -> None:
        total = _logsumexp(self.log_weights, axis=1, keepdims=True)
        bad = ~np.isfinite(total[:, 0])
        if np.any(bad):
            # Every particle has (numerically) zero likelihood: keep them with equal weights and
            # let the Gibbs moves, which target the exact posterior, repair the set.
            self.log_weights[bad] = 0.0
            total[bad] = math.log(self.n_particles)
        self.log_weights -= total

    def _rejuvenate(self, env_mask: np.ndarray) -> None:
        if not np.any(env_mask):
            return
        indices = _systematic_indices(self.log_weights[env_mask], self.n_particles, self.rng)
        probs = np.take_along_axis(self.probs[env_mask], indices[..., None], axis=1)
        successes, failures = self.successes[env_mask], self.failures[env_mask]
        for _ in range(self.n_move_sweeps):
            probs = gibbs_sweep(probs, successes, failures, self.alpha, self.rng)
        self._set_particles(env_mask, probs)
        self.log_weights[env_mask] = -math.log(self.n_particles)

    def update(self, actions: np.ndarray, rewards: np.ndarray, env_mask: np.ndarray | None = None) -> None:
        """Condition on one pull per env: arm ``actions`` ``[B]`` paid ``rewards`` ``[B]`` (0 or 1).

        Envs where ``env_mask`` ``[B]`` is false are left unchanged.
        """
        mask = self._check_mask(env_mask)
        actions = np.asarray(actions)
        rewards = np.asarray(rewards)
        if actions.shape != (self.n_envs,) or rewards.shape != (self.n_envs,):
            raise ValueError(
                f"actions and rewards must have shape ({self.n_envs},), "
                f"got {actions.shape} and {rewards.shape}"
            )
        if np.any((actions[mask] < 0) | (actions[mask] >= self.n_arms)):
            raise ValueError(
                f"actions must be arm indices in [0, {self.n_arms}), got {actions[mask].tolist()}"
            )
        if np.any((rewards[mask] != 0) & (rewards[mask] != 1)):
            raise ValueError(f"rewards must be 0 or 1, got {rewards[mask].tolist()}")
        rows = np.flatnonzero(mask)
        arms = actions[mask].astype(np.int64)
        success = rewards[mask] == 1
        self.successes[rows[success], arms[success]] += 1
        self.failures[rows[~success], arms[~success]] += 1
        likelihood = np.where(
            success[:, None], self.probs[rows, :, arms], self.complement[rows, :, arms]
        )  # [n, M]
        with np.errstate(divide="ignore"):
            self.log_weights[rows] += np.log(likelihood)
        self._normalise()
        self._rejuvenate(mask & (self.effective_sample_size() < self.ess_fraction * self.n_particles))

    # ------------------------------------------------------------------ read-outs
    def effective_sample_size(self) -> np.ndarray:
        """``[B]`` ESS ``1 / Σ w_i²`` of the normalised weights (M for equal weights)."""
        return 1.0 / np.sum(np.exp(2.0 * self.log_weights), axis=1)

    def posterior_mean(self, rao_blackwellised: bool = True) -> np.ndarray:
        """``[B, K]`` estimate of ``E[p | s, f]``.

        Rao-Blackwellised (default): ``(alpha + s_j + Σ_i w_i E[c_j | p^{(i)}]) / (K·alpha + N)``, the
        expected mean after one more Gibbs step, whose variance is never larger at stationarity
        and which is exact when no failures were seen. Otherwise the plain weighted mean
        ``Σ_i w_i p^{(i)}``. Either way the estimate is then averaged over arms with identical
        counts (e.g. the never-pulled ones), whose exact means are equal by exchangeability.
        """
        weights = np.exp(self.log_weights)
        if rao_blackwellised:
            failures = np.broadcast_to(self.failures[:, None, :].astype(np.float64), self.probs.shape)
            # f_k / (1 - p_k); a particle with p_k = 1 and f_k > 0 has zero weight: its term is dropped.
            failure_rate = np.divide(
                failures,
                self.complement,
                out=np.zeros_like(self.probs),
                where=(failures > 0) & (self.complement > 0),
            )
            # E[c_j | p] = p_j Σ_{k≠j} f_k / (1 - p_k) <= Σ_k f_k, since p_j <= 1 - p_k for j != k.
            expected_given_particle = self.probs * _exclusive_sums(failure_rate, 1.0 - np.eye(self.n_arms))
            expected_attributed = np.einsum("bm,bmk->bk", weights, expected_given_particle)
            total = (
                self.n_arms * self.alpha
                + self.successes.sum(1, keepdims=True)
                + self.failures.sum(1, keepdims=True)
            )
            mean = (self.alpha + self.successes + expected_attributed) / total
        else:
            mean = np.einsum("bm,bmk->bk", weights, self.probs)
        same_counts = (self.successes[:, :, None] == self.successes[:, None, :]) & (
            self.failures[:, :, None] == self.failures[:, None, :]
        )  # [B, K, K]
        return np.einsum("bjk,bk->bj", same_counts, mean) / same_counts.sum(axis=2)

    def sample(self, rng: np.random.Generator | None = None, refresh: bool = True) -> np.ndarray:
        """Draw one ``p`` per env from the weighted particles: ``[B, K]``.

        :param refresh: move the drawn particle by one Gibbs sweep (exact for the posterior), so
            repeated draws are not limited to the ``M`` stored particle values.
        """
        rng = rng if rng is not None else self.rng
        chosen = _systematic_indices(self.log_weights, 1, rng)  # one draw per row: a plain weighted pick
        probs = np.take_along_axis(self.probs, chosen[..., None], axis=1)  # [B, 1, K]
        if refresh:
            probs = gibbs_sweep(probs, self.successes, self.failures, self.alpha, rng)
        return probs[:, 0, :]


# ---------------------------------------------------------------------------------------------
# Reference policies
# ---------------------------------------------------------------------------------------------
def _check_observation(observation: dict[str, np.ndarray], n_arms: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``prev_action`` ``[B, K]`` and ``prev_reward`` ``[B]`` of the RL²-input observation."""
    if (
        not isinstance(observation, dict)
        or "prev_action" not in observation
        or "prev_reward" not in observation
    ):
        raise TypeError("observation must be the RL²-input dict with 'prev_action' and 'prev_reward'")
    prev_action = np.asarray(observation["prev_action"])
    prev_reward = np.asarray(observation["prev_reward"]).reshape(prev_action.shape[0], -1)[:, 0]
    if prev_action.ndim != 2 or prev_action.shape[1] != n_arms:
        raise ValueError(f"observation['prev_action'] must be [B, {n_arms}] one-hot, got {prev_action.shape}")
    return prev_action, prev_reward


class _BanditBeliefPolicy(ReferencePolicy):
    """Shared bookkeeping: a particle belief per env, updated from the previous pull.

    Each :meth:`act` call consumes the pull shown in ``observation["prev_action"]`` /
    ``["prev_reward"]`` (ignored where ``trial_start`` is true or the one-hot is all zeros), so it
    must be called exactly once per env step. The belief (``self.belief``) is created at the first
    call, which must be a trial start for every env.
    """

    def __init__(
        self, n_arms: int = 5, alpha: float = 0.2, n_particles: int = 256, seed: int | None = None
    ) -> None:
        self.n_arms = check_int("n_arms", n_arms, 2)
        self.alpha = check_positive_float("alpha", alpha)
        self.n_particles = check_int("n_particles", n_particles, 1)
        self.rng = np.random.default_rng(seed)
        self.belief: DirichletBernoulliParticles | None = None

    def _observe(
        self, observation: dict[str, np.ndarray], trial_start: np.ndarray
    ) -> DirichletBernoulliParticles:
        prev_action, prev_reward = _check_observation(observation, self.n_arms)
        batch = prev_action.shape[0]
        trial_start = np.asarray(trial_start, bool).reshape(-1)
        if trial_start.shape != (batch,):
            raise ValueError(f"trial_start must have shape ({batch},), got {trial_start.shape}")
        if self.belief is None or self.belief.n_envs != batch:
            if not np.all(trial_start):
                raise ValueError("the batch size changed (or first call) while some trials were not starting")
            self.belief = DirichletBernoulliParticles(
                batch, self.n_arms, self.alpha, self.n_particles, rng=self.rng
            )
        self.belief.reset(trial_start)
        # A pull happened where the one-hot is set (it is all zeros at trial start).
        pulled = ~trial_start & (prev_action.max(axis=1) > 0.5)
        self.belief.update(prev_action.argmax(axis=1), np.round(prev_reward).astype(np.int64), pulled)
        return self.belief


class BanditThompsonSampling(_BanditBeliefPolicy):
    """Thompson sampling with the (particle-approximated) exact posterior: draw ``p``, pull ``argmax p``.

    :param n_arms: ``K`` (>= 2). :param alpha: prior concentration (> 0), the env's split value.
    :param n_particles: particles per env (>= 1). :param seed: seed of the policy's generator.
    """

    def act(
        self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]
    ) -> np.ndarray:
        belief = self._observe(observation, trial_start)
        return np.argmax(belief.sample(self.rng), axis=1)


class BanditGreedyPosteriorMean(_BanditBeliefPolicy):
    """Greedy (myopic) Bayesian agent: pull ``argmax_k E[p_k | data]``.

    The mean is the particle filter's Rao-Blackwellised estimate; it is exact without failures
    (so the first pull is arm 0: exact float ties go to the lowest index), and arms whose exact
    means tie by symmetry (e.g. all unpulled arms after a failure) are separated by Monte Carlo
    noise of ~1e-3, i.e. effectively uniformly at random among them.
    """

    def act(
        self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]
    ) -> np.ndarray:
        belief = self._observe(observation, trial_start)
        return np.argmax(belief.posterior_mean(), axis=1)


class BanditOracle(ReferencePolicy):
    """Privileged oracle: pulls ``argmax_k p_k`` of the hidden task (zero regret by construction)."""

    privileged = True

    def __init__(self, n_arms: int = 5) -> None:
        self.n_arms = check_int("n_arms", n_arms, 2)

    def act(
        self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]
    ) -> np.ndarray:
        probs = np.stack([np.asarray(task.probs, np.float64) for task in tasks])
        if probs.ndim != 2 or probs.shape[1] != self.n_arms:
            raise ValueError(f"tasks must hold probs of shape [{self.n_arms}], got {probs.shape[1:]}")
        return np.argmax(probs, axis=1)


# ---------------------------------------------------------------------------------------------
# Bayes-optimal dynamic programming (tiny problems)
# ---------------------------------------------------------------------------------------------
def _check_dp_size(n_arms: int, horizon: int, alpha: float, max_states: int) -> Fraction:
    check_int("n_arms", n_arms, 2)
    check_int("horizon", horizon, 0)
    alpha_q = _alpha_fraction(alpha)
    # Count states (s, f) over 2K cells with total <= horizon (before symmetry reduction).
    n_states = math.comb(horizon + 2 * n_arms, 2 * n_arms)
    if n_states > max_states:
        raise ValueError(
            f"n_arms={n_arms}, horizon={horizon} give {n_states} count states > max_states={max_states}; "
            "the dynamic programme is only feasible for tiny problems"
        )
    return alpha_q


def _canonical(state: tuple[tuple[int, int], ...]) -> tuple[tuple[int, int], ...]:
    # Arms are exchangeable under the symmetric prior: the value only depends on the multiset.
    return tuple(sorted(state))


def bandit_bayes_optimal_value(
    n_arms: int, horizon: int, alpha: float, *, max_states: int = MAX_DP_STATES
) -> float:
    """Expected total reward of the Bayes-optimal policy over ``horizon`` pulls, by exact DP.

    Bellman recursion over count states ``(s_k, f_k)_k`` with the exact posterior predictive
    ``P(r=1 | a) = E[p_a | s, f]`` (rational arithmetic, then float64); states are reduced by arm
    exchangeability. Its expected cumulative regret is ``horizon·E[max p] − value``.
    Feasible only for tiny problems: ``ValueError`` when ``C(horizon + 2K, 2K) > max_states``
    (e.g. K=2 up to horizon ~60, K=3 up to ~18, K=5 up to ~7).
    """
    alpha_q = _check_dp_size(n_arms, horizon, alpha, max_states)
    return _dp_value(n_arms, horizon, alpha_q, None)


def bandit_policy_value(
    n_arms: int,
    horizon: int,
    alpha: float,
    policy: Any,
    *,
    max_states: int = MAX_DP_STATES,
) -> float:
    """Exact expected total reward of a deterministic count-based policy (same recursion, no max).

    :param policy: ``policy(successes[K], failures[K], means[K]) -> arm``, with ``means`` the exact
        posterior means (float64), e.g. ``lambda s, f, m: int(np.argmax(m))`` for greedy.
    """
    alpha_q = _check_dp_size(n_arms, horizon, alpha, max_states)
    return _dp_value(n_arms, horizon, alpha_q, policy)


def _dp_value(n_arms: int, horizon: int, alpha: Fraction, policy: Any) -> float:
    memo: dict[tuple[Any, int], float] = {}

    def value(state: tuple[tuple[int, int], ...], remaining: int) -> float:
        if remaining == 0:
            return 0.0
        key = (state if policy is not None else _canonical(state), remaining)
        if key in memo:
            return memo[key]
        successes = tuple(sf[0] for sf in state)
        failures = tuple(sf[1] for sf in state)
        means = [float(m) for m in _exact_posterior_mean_fractions(successes, failures, alpha)]

        def q_value(arm: int) -> float:
            won = tuple((s + 1, f) if k == arm else (s, f) for k, (s, f) in enumerate(state))
            lost = tuple((s, f + 1) if k == arm else (s, f) for k, (s, f) in enumerate(state))
            return means[arm] * (1.0 + value(won, remaining - 1)) + (1.0 - means[arm]) * value(
                lost, remaining - 1
            )

        if policy is None:
            # Only one representative per group of identical arms needs to be tried.
            first_of_kind = {sf: k for k, sf in reversed(list(enumerate(state)))}
            result = max(q_value(arm) for arm in sorted(first_of_kind.values()))
        else:
            result = q_value(int(policy(np.array(successes), np.array(failures), np.array(means))))
        memo[key] = result
        return result

    start = tuple(itertools.repeat((0, 0), n_arms))
    return value(start, horizon)
