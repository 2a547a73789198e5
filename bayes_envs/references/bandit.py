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

import itertools
import math
from collections.abc import Sequence
from fractions import Fraction
from functools import lru_cache
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
            raise ValueError(f"{name} must be a 1-d array of per-arm counts with K >= 2 arms, got {array.shape}")
        if array.dtype.kind not in "iu" and not (
            array.dtype.kind == "f" and np.all(np.isfinite(array)) and np.all(array == np.round(array))
        ):
            raise TypeError(f"{name} must hold integer counts, got dtype {array.dtype}")
        if np.any(array < 0):
            raise ValueError(f"{name} must be >= 0, got {array.tolist()}")
        counts.append(tuple(int(x) for x in array))
    if len(counts[0]) != len(counts[1]):
        raise ValueError(f"successes and failures must have the same length, got {len(counts[0])} and {len(counts[1])}")
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


@lru_cache(maxsize=65_536)
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

    plain = [arm_poly(s, f, 0) for s, f in zip(successes, failures)]
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


def _log_dirichlet(concentration: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """``log p`` for ``p ~ Dirichlet(concentration)``, batched over leading dims ``[..., K]``.

    Uses ``G(a) = G(a+1) · U^{1/a}`` in log space: small concentrations (0.2) give gamma
    variates far below float64's range, which would otherwise underflow to ``p_k = 0``.
    """
    log_gamma = np.log(rng.standard_gamma(concentration + 1.0)) + np.log(rng.random(concentration.shape)) / (
        concentration
    )
    return log_gamma - _logsumexp(log_gamma, axis=-1, keepdims=True)


def _log_complement(log_probs: np.ndarray) -> np.ndarray:
    """``log(1 − p_k) = log Σ_{j≠k} p_j`` ``[..., K]``, summed directly to avoid cancellation near p_k = 1."""
    n_arms = log_probs.shape[-1]
    peak = np.max(log_probs, axis=-1, keepdims=True)
    others = np.exp(log_probs - peak) @ (1.0 - np.eye(n_arms))
    with np.errstate(divide="ignore"):
        return np.log(others) + peak


def _systematic_indices(log_weights: np.ndarray, n_draws: int, rng: np.random.Generator) -> np.ndarray:
    """Systematic resampling for every row of normalised ``log_weights`` ``[N, M]`` -> indices ``[N, n_draws]``."""
    n_rows, n_particles = log_weights.shape
    cumulative = np.cumsum(np.exp(log_weights), axis=1)
    cumulative /= cumulative[:, -1:]
    cumulative[:, -1] = 1.0
    positions = (rng.random((n_rows, 1)) + np.arange(n_draws)) / n_draws
    # One searchsorted for all rows: offset row r into [r, r+1) so the flattened array stays sorted.
    offsets = np.arange(n_rows)[:, None]
    flat = np.searchsorted((cumulative + offsets).ravel(), (positions + offsets).ravel(), side="right")
    return np.minimum(flat.reshape(n_rows, n_draws) - offsets * n_particles, n_particles - 1)


def gibbs_sweep(
    log_probs: np.ndarray,
    successes: np.ndarray,
    failures: np.ndarray,
    alpha: float,
    rng: np.random.Generator,
) -> np.ndarray:
    """One data-augmentation Gibbs sweep leaving π(p | s, f) invariant, batched.

    Draws the attribution counts ``c`` of every arm's failures to the other arms given ``p``,
    then ``p ~ Dirichlet(alpha + s + c)``.

    :param log_probs: ``[N, M, K]`` current ``log p`` of ``M`` chains/particles in ``N`` envs.
    :param successes: ``[N, K]`` success counts; ``failures``: ``[N, K]`` failure counts.
    :return: ``[N, M, K]`` new ``log p``.
    """
    n_arms = log_probs.shape[-1]
    # attribution[n, m, k, j] ∝ p_j for j != k: where the failures of arm k are attributed.
    peak = np.max(log_probs, axis=-1, keepdims=True)
    weights = np.exp(log_probs - peak)[..., None, :] * (1.0 - np.eye(n_arms))
    # Sequential binomial split of Multinomial(f_k, row k), all rows at once; dividing by the
    # suffix sums makes the last non-zero column take exactly the remainder.
    suffix = np.cumsum(weights[..., ::-1], axis=-1)[..., ::-1]
    remaining = np.broadcast_to(failures[:, None, :], log_probs.shape).astype(np.int64)
    attributed = np.zeros(log_probs.shape, np.float64)
    for j in range(n_arms):
        with np.errstate(invalid="ignore", divide="ignore"):
            fraction = np.where(suffix[..., j] > 0, weights[..., j] / suffix[..., j], 0.0)
        draw = rng.binomial(remaining, np.clip(fraction, 0.0, 1.0))
        attributed[..., j] = draw.sum(axis=-1)
        remaining = remaining - draw
    return _log_dirichlet(alpha + successes[:, None, :] + attributed, rng)


class DirichletBernoulliParticles:
    """A batched resample-move particle approximation of the exact bandit posterior.

    Each of ``B`` envs holds ``M`` weighted particles ``p^{(i)}`` (stored as ``log p``,
    ``[B, M, K]``) and normalised log-weights ``[B, M]``, plus its exact counts. A pull reweights
    every particle by its likelihood (``p_a`` or ``1 − p_a``); when the effective sample size
    falls below ``ess_fraction·M`` that env's particles are resampled (systematic) and moved by
    ``n_move_sweeps`` sweeps of the exact data-augmentation Gibbs kernel (:func:`gibbs_sweep`),
    which restores diversity without changing the target. :meth:`from_counts` builds the same
    object in one go for arbitrary counts: importance sampling from the ``Dirichlet(alpha + s)``
    proposal (the conjugate part) with the failure likelihood ``Π(1 − p_k)^{f_k}`` as weights,
    followed by the same resample-move step.

    Why this design (measured on 3,000 count configurations reached by Thompson-sampling pulls
    of 10–50 steps, K=5, alpha=0.2, error = max over arms of |particle mean − exact mean|):

    * plain importance sampling from ``Dirichlet(alpha + s)`` (M=512) collapses once an arm
      has many successes *and* failures (the proposal puts that arm near p=1): median ESS 156,
      10% quantile ESS 6, max error 0.22;
    * the sequential filter with rejuvenation (this class, M=256, 2 sweeps, threshold M/2) keeps
      median ESS 190, 1% quantile 129, min 116; Rao-Blackwellised mean error: mean 0.0018,
      99th percentile 0.0080, max 0.012 (plain weighted mean: mean 0.0047, max 0.026).
      :meth:`from_counts` (same M) gives mean 0.0019, max 0.012.

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
        self.log_probs = np.zeros(shape)
        self.log_weights = np.zeros((self.n_envs, self.n_particles))
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

    def reset(self, env_mask: np.ndarray | None = None) -> None:
        """Forget the data of the envs where ``env_mask`` ``[B]`` is true: prior particles, zero counts."""
        mask = self._check_mask(env_mask)
        n = int(mask.sum())
        if n == 0:
            return
        self.log_probs[mask] = _log_dirichlet(np.full((n, self.n_particles, self.n_arms), self.alpha), self.rng)
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
        n_burn_in_sweeps: int = 20,
        rng: np.random.Generator | None = None,
    ) -> DirichletBernoulliParticles:
        """Particles for given counts ``successes``/``failures`` ``[B, K]``.

        Importance sampling from ``Dirichlet(alpha + s)`` with log-weights ``Σ_k f_k log(1 − p_k)``,
        then, where the ESS is below ``ess_fraction·M``, resampling and ``n_burn_in_sweeps`` Gibbs
        sweeps (the resampled set can be far from the posterior when an arm has many failures:
        the chain then needs ~10–20 sweeps, against 1–2 when tracking the posterior pull by pull).
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
        belief.failures[:] = failures
        concentration = belief.alpha + np.broadcast_to(successes[:, None, :], belief.log_probs.shape)
        belief.log_probs = _log_dirichlet(concentration.astype(np.float64), belief.rng)
        belief.log_weights = belief._failure_log_likelihood(belief.log_probs, failures)
        belief._normalise()
        low_ess = belief.effective_sample_size() < belief.ess_fraction * belief.n_particles
        belief._rejuvenate(low_ess, check_int("n_burn_in_sweeps", n_burn_in_sweeps, 0))
        return belief

    # ------------------------------------------------------------------ updates
    @staticmethod
    def _failure_log_likelihood(log_probs: np.ndarray, failures: np.ndarray) -> np.ndarray:
        log_complement = _log_complement(log_probs)
        with np.errstate(invalid="ignore"):
            terms = np.where(failures[:, None, :] > 0, failures[:, None, :] * log_complement, 0.0)
        return terms.sum(axis=-1)

    def _normalise(self) -> None:
        total = _logsumexp(self.log_weights, axis=1, keepdims=True)
        if np.any(~np.isfinite(total)):
            # Every particle has zero likelihood (numerically): restart those envs from the
            # conjugate proposal via uniform weights; the Gibbs moves then repair them.
            bad = ~np.isfinite(total[:, 0])
            self.log_weights[bad] = 0.0
            total[bad] = math.log(self.n_particles)
        self.log_weights -= total

    def _rejuvenate(self, env_mask: np.ndarray, n_sweeps: int | None = None) -> None:
        if not np.any(env_mask):
            return
        n_sweeps = self.n_move_sweeps if n_sweeps is None else n_sweeps
        indices = _systematic_indices(self.log_weights[env_mask], self.n_particles, self.rng)
        log_probs = np.take_along_axis(self.log_probs[env_mask], indices[..., None], axis=1)
        successes, failures = self.successes[env_mask], self.failures[env_mask]
        for _ in range(n_sweeps):
            log_probs = gibbs_sweep(log_probs, successes, failures, self.alpha, self.rng)
        self.log_probs[env_mask] = log_probs
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
                f"actions and rewards must have shape ({self.n_envs},), got {actions.shape} and {rewards.shape}"
            )
        if np.any((actions[mask] < 0) | (actions[mask] >= self.n_arms)):
            raise ValueError(f"actions must be arm indices in [0, {self.n_arms}), got {actions[mask].tolist()}")
        if np.any((rewards[mask] != 0) & (rewards[mask] != 1)):
            raise ValueError(f"rewards must be 0 or 1, got {rewards[mask].tolist()}")
        rows = np.flatnonzero(mask)
        arms = actions[mask].astype(np.int64)
        success = rewards[mask] == 1
        self.successes[rows[success], arms[success]] += 1
        self.failures[rows[~success], arms[~success]] += 1
        log_pulled = self.log_probs[rows, :, arms]  # [n, M]
        log_miss = _log_complement(self.log_probs[rows])[np.arange(rows.size), :, arms]
        self.log_weights[rows] += np.where(success[:, None], log_pulled, log_miss)
        self._normalise()
        low_ess = mask & (self.effective_sample_size() < self.ess_fraction * self.n_particles)
        self._rejuvenate(low_ess)

    # ------------------------------------------------------------------ read-outs
    def effective_sample_size(self) -> np.ndarray:
        """``[B]`` ESS ``1 / Σ w_i²`` of the normalised weights (M for equal weights)."""
        return 1.0 / np.sum(np.exp(2.0 * self.log_weights), axis=1)

    def posterior_mean(self, rao_blackwellised: bool = True) -> np.ndarray:
        """``[B, K]`` estimate of ``E[p | s, f]``.

        Rao-Blackwellised (default): ``(alpha + s_j + Σ_i w_i E[c_j | p^{(i)}]) / (K·alpha + N)``, the
        expected mean after one more Gibbs step, whose variance is never larger at stationarity
        and is exact when no failures were seen. Otherwise the plain weighted mean ``Σ_i w_i p^{(i)}``.
        """
        if not rao_blackwellised:
            return np.einsum("bm,bmk->bk", np.exp(self.log_weights), np.exp(self.log_probs))
        log_complement = _log_complement(self.log_probs)  # [B, M, K]
        with np.errstate(divide="ignore"):
            log_failures = np.log(self.failures.astype(np.float64))[:, None, :]  # -inf where f_k = 0
        # log of p_j f_k / (1 - p_k), for k != j, weighted by w_i: [B, M, K(j), K(k)]
        terms = (
            self.log_weights[..., None, None]
            + self.log_probs[..., :, None]
            + (log_failures - log_complement)[..., None, :]
        )
        terms = np.where(np.eye(self.n_arms, dtype=bool), -np.inf, terms)
        terms = np.where(np.isnan(terms), -np.inf, terms)
        expected_attributed = np.exp(_logsumexp(terms.reshape(self.n_envs, -1, self.n_arms, self.n_arms).transpose(
            0, 2, 1, 3).reshape(self.n_envs, self.n_arms, -1), axis=-1))
        total = self.n_arms * self.alpha + self.successes.sum(1, keepdims=True) + self.failures.sum(1, keepdims=True)
        return (self.alpha + self.successes + expected_attributed) / total

    def sample(self, rng: np.random.Generator | None = None, refresh: bool = True) -> np.ndarray:
        """Draw one ``p`` per env from the weighted particles: ``[B, K]``.

        :param refresh: move the drawn particle by one Gibbs sweep (exact for the posterior), so
            repeated draws are not limited to the ``M`` stored particle values.
        """
        rng = rng if rng is not None else self.rng
        chosen = _systematic_indices(self.log_weights, 1, rng)  # one draw per row: plain weighted pick
        log_probs = np.take_along_axis(self.log_probs, chosen[..., None], axis=1)  # [B, 1, K]
        if refresh:
            log_probs = gibbs_sweep(log_probs, self.successes, self.failures, self.alpha, rng)
        return np.exp(log_probs[:, 0, :])


# ---------------------------------------------------------------------------------------------
# Reference policies
# ---------------------------------------------------------------------------------------------
def _check_observation(observation: dict[str, np.ndarray], n_arms: int) -> tuple[np.ndarray, np.ndarray]:
    """Return ``prev_action`` ``[B, K]`` and ``prev_reward`` ``[B]`` of the RL²-input observation."""
    if not isinstance(observation, dict) or "prev_action" not in observation or "prev_reward" not in observation:
        raise TypeError("observation must be the RL²-input dict with 'prev_action' and 'prev_reward'")
    prev_action = np.asarray(observation["prev_action"])
    prev_reward = np.asarray(observation["prev_reward"]).reshape(prev_action.shape[0], -1)[:, 0]
    if prev_action.ndim != 2 or prev_action.shape[1] != n_arms:
        raise ValueError(f"observation['prev_action'] must be [B, {n_arms}] one-hot, got {prev_action.shape}")
    return prev_action, prev_reward


class _BanditBeliefPolicy(ReferencePolicy):
    """Shared bookkeeping: a particle belief per env, updated from the previous pull."""

    def __init__(
        self, n_arms: int = 5, alpha: float = 0.2, n_particles: int = 256, seed: int | None = None
    ) -> None:
        self.n_arms = check_int("n_arms", n_arms, 2)
        self.alpha = check_positive_float("alpha", alpha)
        self.n_particles = check_int("n_particles", n_particles, 1)
        self.rng = np.random.default_rng(seed)
        self.belief: DirichletBernoulliParticles | None = None

    def _observe(self, observation: dict[str, np.ndarray], trial_start: np.ndarray) -> DirichletBernoulliParticles:
        prev_action, prev_reward = _check_observation(observation, self.n_arms)
        batch = prev_action.shape[0]
        trial_start = np.asarray(trial_start, bool).reshape(-1)
        if trial_start.shape != (batch,):
            raise ValueError(f"trial_start must have shape ({batch},), got {trial_start.shape}")
        if self.belief is None or self.belief.n_envs != batch:
            if not np.all(trial_start):
                raise ValueError("the batch size changed (or first call) while some trials were not starting")
            self.belief = DirichletBernoulliParticles(batch, self.n_arms, self.alpha, self.n_particles, rng=self.rng)
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

    def act(self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]) -> np.ndarray:
        belief = self._observe(observation, trial_start)
        return np.argmax(belief.sample(self.rng), axis=1)


class BanditGreedyPosteriorMean(_BanditBeliefPolicy):
    """Greedy (myopic) Bayesian agent: pull ``argmax_k E[p_k | data]``.

    The mean is the particle filter's Rao-Blackwellised estimate; it is exact without failures
    (so the first pull is arm 0: exact float ties go to the lowest index), and arms whose exact
    means tie by symmetry (e.g. all unpulled arms after a failure) are separated by Monte Carlo
    noise of ~1e-3, i.e. effectively uniformly at random among them.
    """

    def act(self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]) -> np.ndarray:
        belief = self._observe(observation, trial_start)
        return np.argmax(belief.posterior_mean(), axis=1)


class BanditOracle(ReferencePolicy):
    """Privileged oracle: pulls ``argmax_k p_k`` of the hidden task (zero regret by construction)."""

    privileged = True

    def __init__(self, n_arms: int = 5) -> None:
        self.n_arms = check_int("n_arms", n_arms, 2)

    def act(self, observation: dict[str, np.ndarray], trial_start: np.ndarray, tasks: Sequence[Any]) -> np.ndarray:
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
            return means[arm] * (1.0 + value(won, remaining - 1)) + (1.0 - means[arm]) * value(lost, remaining - 1)

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
