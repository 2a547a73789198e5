"""VRNN belief: the RL² recurrence with an amortised Gaussian posterior head (the Laplace-VRNN paper's
VRNN baseline, appendix B.2).

Model (``h_t`` the cell output after ``x_t``, exactly as in :class:`~bayes_agents.beliefs.RL2Belief`):

* ``μ_t = W h_t + b`` — the RL² latent head (``latent_head``), so a trained RL² state dict loads
  into this module and only the covariance heads are new (:meth:`VRNNBelief.from_rl2`).
* ``s_t = bound · tanh((V h_t + c) / bound)`` — log-variances ``[L]``; the smooth bound (default 8)
  keeps ``exp(±s)`` finite without cutting gradients.
* ``covariance="full"``: ``Σ_t = U_t diag(exp s_t) U_tᵀ`` with ``U_t = cayley(A_t) = (I − A_t)(I + A_t)^{-1}``
  orthogonal, ``A_t = L_t − L_tᵀ`` skew-symmetric and ``L_t`` strictly lower triangular with its
  ``L(L−1)/2`` entries an affine function of ``h_t`` (``skew_head``).
  ``covariance="diag"``: ``Σ_t = diag(exp s_t)``.
* ``q_t = N(μ_t, Σ_t)``; at a reset the previous posterior is the prior ``N(0, I)``. As in the paper
  the VRNN does not accumulate means or covariances: the recurrence can learn that itself.

Reported (``BeliefOutput``): ``precision = U diag(exp −s) Uᵀ`` ``[.., L, L]`` (or ``exp −s`` ``[.., L]``),
``precision_cholesky`` (lower; factorised in float64, as the precision's condition number reaches
``exp(2·bound)``),
``entropy`` and ``kl_to_previous = KL(q_t ‖ q_{t−1})`` in closed form in the eigenbases. Unlike the
Laplace belief every field is differentiable through all posterior parameters (mean, rotation and
log-variances); only ``q_{t−1}`` is a constant, so :meth:`VRNNBelief.aux_loss` is ``β·KL(q_t ‖ sg q_{t−1})``.

State layout (``[B, state_size]``, zeros = prior): the RL² carry (``hidden [H]``, ``cell [H]``) and
``started [1]`` (1 once the current episode has a step, so that ``q_{t−1}`` is ``heads(h_{t−1})``
rather than the prior). ``q_{t−1}`` needs no storage of its own: it is the head of the carried ``h``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import torch
from torch import Tensor, nn

from .base import MAX_SCALE, BeliefOutput, StateLayout, check_choice, check_real
from .laplace import COVARIANCES, LaplaceBelief
from .registry import register_belief
from .rl2 import RL2Belief


def cayley(skew: Tensor) -> Tensor:
    """The Cayley map ``U = (I − A)(I + A)^{-1}`` of skew-symmetric ``A`` ``[.., n, n]``: orthogonal
    ``[.., n, n]``.

    ``I + A`` is invertible for every real skew-symmetric ``A`` (its eigenvalues are ``1 + iλ``), and
    ``(I − A)`` commutes with ``(I + A)^{-1}``, so ``U`` is one linear solve. Differentiable.
    """
    if skew.dim() < 2 or skew.shape[-1] != skew.shape[-2]:
        raise ValueError(f"skew must be [.., n, n], got {tuple(skew.shape)}")
    identity = torch.eye(skew.shape[-1], dtype=skew.dtype, device=skew.device)
    return torch.linalg.solve(identity + skew, identity - skew)


def skew_from_lower(entries: Tensor, size: int) -> Tensor:
    """``A = L − Lᵀ`` ``[.., size, size]`` from the ``size(size−1)/2`` strictly-lower entries ``[.., E]``
    of ``L`` (row-major order of ``torch.tril_indices(size, size, -1)``)."""
    expected = size * (size - 1) // 2
    if entries.shape[-1] != expected:
        raise ValueError(f"entries must end in size*(size-1)/2 = {expected}, got {tuple(entries.shape)}")
    rows, columns = torch.tril_indices(size, size, -1, device=entries.device)
    lower = entries.new_zeros(*entries.shape[:-1], size, size)
    lower[..., rows, columns] = entries
    return lower - lower.transpose(-2, -1)


class SpectralGaussian(NamedTuple):
    """``N(mean, rotation diag(exp log_variance) rotationᵀ)``; ``rotation`` is None for a diagonal covariance.

    Shapes: ``mean`` and ``log_variance`` ``[.., L]``, ``rotation`` ``[.., L, L]``.
    """

    mean: Tensor
    log_variance: Tensor
    rotation: Tensor | None


def spectral_gaussian_kl(posterior: SpectralGaussian, reference: SpectralGaussian) -> Tensor:
    """``KL(posterior ‖ reference)`` ``[..]`` in closed form for spectral Gaussians (both full or both
    diagonal).

    With ``M = U_refᵀ U_post`` and ``d = U_refᵀ (μ_post − μ_ref)``:
    ``2 KL = Σ_ij e^{−s_ref,i} M_ij² e^{s_post,j} + Σ_i e^{−s_ref,i} d_i² − L + Σ s_ref − Σ s_post``.
    """
    difference = posterior.mean - reference.mean
    reference_precision = torch.exp(-reference.log_variance)
    posterior_variance = torch.exp(posterior.log_variance)
    if posterior.rotation is None or reference.rotation is None:
        if posterior.rotation is not None or reference.rotation is not None:
            raise ValueError("both Gaussians must be full or both diagonal")
        trace = (reference_precision * posterior_variance).sum(-1)
    else:
        overlap = reference.rotation.transpose(-2, -1) @ posterior.rotation
        trace = (
            (reference_precision.unsqueeze(-1) * overlap.square()) * posterior_variance.unsqueeze(-2)
        ).sum((-2, -1))
        difference = (reference.rotation.transpose(-2, -1) @ difference.unsqueeze(-1)).squeeze(-1)
    mahalanobis = (reference_precision * difference.square()).sum(-1)
    log_det_ratio = (reference.log_variance - posterior.log_variance).sum(-1)
    return 0.5 * (trace + mahalanobis - posterior.mean.shape[-1] + log_det_ratio)


class VRNNBelief(RL2Belief):
    """VRNN baseline belief: RL² recurrence + amortised Gaussian posterior (see the module docstring).

    :param input_dim, hidden_size, latent_dim, rnn, embed_sizes, negative_slope: as
        :class:`~bayes_agents.beliefs.RL2Belief`.
    :param covariance: ``"full"`` (spectral/Cayley) or ``"diag"``.
    :param beta: weight in ``[0, 1e6]`` of the KL penalty in :meth:`aux_loss` (paper: 1e-2).
    :param log_variance_bound: the log-variances lie in ``(−bound, bound)``; ``bound`` in ``(0, 15]``
        (the precision's condition number ``exp(2·bound)`` must stay within float64's Cholesky).
    """

    def __init__(
        self,
        input_dim: int,
        hidden_size: int = 128,
        latent_dim: int = 64,
        rnn: str = "lstm",
        embed_sizes: Sequence[int] = (256, 256),
        negative_slope: float = 0.01,
        *,
        covariance: str = "full",
        beta: float = 1e-2,
        log_variance_bound: float = 8.0,
    ):
        check_choice("covariance", covariance, COVARIANCES)
        beta = check_real("beta", beta, 0.0, MAX_SCALE)
        log_variance_bound = check_real("log_variance_bound", log_variance_bound, 0.0, 15.0, low_open=True)
        self.covariance = covariance
        self.beta = float(beta)
        self.log_variance_bound = float(log_variance_bound)
        super().__init__(input_dim, hidden_size, latent_dim, rnn, embed_sizes, negative_slope)
        self.log_variance_head = nn.Linear(hidden_size, latent_dim)
        self.skew_head = (
            nn.Linear(hidden_size, latent_dim * (latent_dim - 1) // 2) if covariance == "full" else None
        )

    @classmethod
    def from_rl2(cls, rl2_belief: RL2Belief, **vrnn_kwargs) -> VRNNBelief:
        """A VRNN belief on the recurrence and latent head of a trained ``rl2_belief`` (weights copied, same
        device and dtype; the covariance heads keep their fresh initialisation, so fine-tune them).
        ``vrnn_kwargs``: ``covariance``, ``beta``, ``log_variance_bound``."""
        if not isinstance(rl2_belief, RL2Belief) or isinstance(rl2_belief, (VRNNBelief, LaplaceBelief)):
            raise TypeError(f"rl2_belief must be a plain RL2Belief, got {type(rl2_belief).__name__}")
        belief, missing = cls._built_on(rl2_belief, vrnn_kwargs)
        assert all(name.startswith(("log_variance_head", "skew_head")) for name in missing)
        return belief

    def _make_state_layout(self) -> StateLayout:
        return StateLayout([*super()._make_state_layout().shapes.items(), ("started", (1,))])

    # ----------------------------------------------------------------------------------------------
    def posterior(self, hiddens: Tensor) -> SpectralGaussian:
        """The posterior parameters of cell outputs ``hiddens`` ``[.., H]``."""
        bound = self.log_variance_bound
        log_variance = bound * torch.tanh(self.log_variance_head(hiddens) / bound)
        rotation = None
        if self.skew_head is not None:
            rotation = cayley(skew_from_lower(self.skew_head(hiddens), self.latent_dim))
        return SpectralGaussian(self.latent_head(hiddens), log_variance, rotation)

    def sequence(self, inputs: Tensor, state: Tensor, episode_starts: Tensor) -> tuple[BeliefOutput, Tensor]:
        """See :meth:`Belief.sequence`. Outputs ``[T, B, ..]``: ``mean``, ``precision``,
        ``precision_cholesky`` (full), ``entropy``, ``kl_to_previous``."""
        inputs, starts = self._prepare_sequence(inputs, state, episode_starts)
        parts = self.state_layout.unpack(state)
        hidden, cell = self._unpack_carry(parts)
        hiddens, _, final_hidden, final_cell = self.recurrence(
            self.embedding(inputs), hidden, cell, starts, need_cells=False
        )
        current = self.posterior(hiddens)

        with torch.no_grad():
            carried = self.posterior(hidden)  # q_{t-1} of the first step, unless it is the prior
            use_prior = starts.clone()
            use_prior[0] |= parts["started"][:, 0] < 0.5
            previous = SpectralGaussian(
                *(
                    None if now is None else _shift_in_prior(now.detach(), before, use_prior, prior)
                    for now, before, prior in zip(current, carried, self._prior_values(), strict=True)
                )
            )
        kl = spectral_gaussian_kl(current, previous)
        latent = self.latent_dim
        entropy = 0.5 * latent * (1.0 + math.log(2 * math.pi)) + 0.5 * current.log_variance.sum(-1)
        precision_diagonal = torch.exp(-current.log_variance)
        if current.rotation is None:
            output = BeliefOutput(current.mean, precision_diagonal, None, entropy, kl)
        else:
            rotation = current.rotation
            precision = (rotation * precision_diagonal.unsqueeze(-2)) @ rotation.transpose(-2, -1)
            # In float64: the condition number of Λ reaches exp(2·bound), beyond float32's precision.
            cholesky = torch.linalg.cholesky_ex(precision.double()).L.to(precision.dtype)
            output = BeliefOutput(current.mean, precision, cholesky, entropy, kl)

        next_parts = {"hidden": final_hidden, "started": torch.ones_like(parts["started"])}
        if final_cell is not None:
            next_parts["cell"] = final_cell
        return output, self.state_layout.pack(next_parts)

    def _prior_values(self) -> tuple[float, float, Tensor | None]:
        """The prior ``N(0, I)``'s mean, log-variance and rotation (as broadcastable fill values)."""
        reference = self._reference_parameter()
        identity = torch.eye(self.latent_dim, dtype=reference.dtype, device=reference.device)
        return 0.0, 0.0, (identity if self.covariance == "full" else None)

    # ----------------------------------------------------------------------------------------------
    # The same penalty as the Laplace belief: β · mean KL(q_t ‖ sg q_{t−1}).
    aux_loss = LaplaceBelief.aux_loss
    aux_loss_rows = LaplaceBelief.aux_loss_rows
    has_aux_loss = LaplaceBelief.has_aux_loss


def _shift_in_prior(sequence: Tensor, carry: Tensor, use_prior: Tensor, prior: float | Tensor) -> Tensor:
    """Previous element of ``sequence`` ``[T, B, *E]`` (``carry`` ``[B, *E]`` before ``t = 0``), replaced by
    ``prior`` (a scalar or a ``[*E]`` tensor) where ``use_prior`` ``[T, B]``."""
    shifted = torch.cat([carry.unsqueeze(0), sequence[:-1]], dim=0)
    mask = use_prior.reshape(*use_prior.shape, *([1] * (sequence.dim() - 2)))
    prior = torch.as_tensor(prior, dtype=sequence.dtype, device=sequence.device)
    return torch.where(mask, prior, shifted)


register_belief(
    "vrnn",
    VRNNBelief,
    prefix="VRNN",
    # The Laplace-VRNN paper's RL baseline: amortised full-covariance posterior on the RL² recurrence.
    policy_kwargs=dict(covariance="full", n_samples=1),
    policy_doc="""VRNN (the Laplace-VRNN paper's variational baseline): RL²'s recurrence with an amortised
    Gaussian task posterior whose mean and covariance are predicted from the cell output.

    Belief keywords (``policy_kwargs``): those of :class:`RL2Policy` plus ``covariance`` (``"full"``:
    ``Σ = U diag(exp s) Uᵀ`` with ``U`` a Cayley map; ``"diag"``), ``beta`` (KL penalty
    ``β·KL(q_t ‖ sg q_{t−1})``, applied by :class:`~bayes_agents.BayesPPO`) and ``log_variance_bound``;
    ``n_samples`` posterior samples are averaged in the action head (0: posterior mean). See
    :class:`~bayes_agents.beliefs.vrnn.VRNNBelief`.
    """,
    extractor_doc="""VRNN belief (posterior mean as features); keywords of
    :class:`~bayes_agents.beliefs.vrnn.VRNNBelief`.""",
)
