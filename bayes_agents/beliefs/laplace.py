"""Laplace-VRNN belief: the RL² recurrence with a Laplace-approximated Gaussian posterior.

Model (Laplace-VRNN paper, section 4 and appendix A.3, as specified in docs/specification.md#laplace-vrnn):

* ``h_t`` is the recurrent carry after processing ``x_t`` and ``φ_t = W h_t + b`` the RL² latent.
  The "hidden state" the Jacobians are taken with respect to is the full Markov state of the cell:
  ``(h_t, c_t)`` for the LSTM (``J ∈ R^{L×2H}``; ``c`` carries information ``h`` alone does not),
  ``h_t`` for the GRU (``J ∈ R^{L×H}``).
* Window ``k``: ``J_i = ∂ μ(f(s, x_i)) / ∂s |_{s = s_t}`` for the last ``k`` inputs
  ``x_{t-k+1..t}`` since the last reset, where ``f`` is the cell and ``μ(s) = W h(s) + b``.
  ``P_t = Σ_i J_i J_i^T`` (``[L, L]``), or its diagonal for ``covariance="diag"``; ``P_t`` is computed
  without gradient (stop-gradient). The Jacobian is in closed form (no autograd): see
  :meth:`LaplaceBelief.next_step_jacobian`.
* Variants (``Λ`` is the precision, ``damping·I`` the prior precision, ``0`` the prior mean):

  - ``stationary``:    ``Λ_t = damping·I + P_t``,           ``μ_t = φ_t``
  - ``sum_precision``: ``Λ_t = Λ_{t-1} + P_t``,             ``μ_t = φ_t``
  - ``markov``:        ``Λ_t = Λ_{t-1} + P_t``,             ``μ_t = φ_t + sg(μ_{t-1})``

  with ``Λ_{-1} = damping·I`` and ``μ_{-1} = 0`` at a reset (the prior). Only ``stationary`` and
  ``sum_precision`` keep the RL² mean, so only they are exact post-hoc conversions of an RL² agent.
* For a full covariance the reported precision includes a numerical floor: ``precision =
  Λ_t + jitter·I`` (``jitter = 1e-6``, so ``L = cholesky(Λ_t + 1e-6·I)`` as in the paper's sampler)
  and sampling, entropy and KL all use that matrix; a diagonal precision is ``Λ_t`` itself. Since
  ``damping > 0`` every precision is positive definite by construction.
  ``kl_to_previous = KL(q_t || q_{t-1})`` with ``q_{t-1}`` the prior ``N(0, prior_precision^{-1}·I)``
  at a reset; it is differentiable through ``μ_t`` only (``q_{t-1}`` and ``Λ_t`` are constants), so
  :meth:`LaplaceBelief.aux_loss` is ``β·mean KL(q_t || sg q_{t-1})``.
* Cost: the Jacobians are formed as ``W_out ∂h'/∂h`` from the gate derivatives (one batched matrix
  product), in cache-sized blocks of rows of at most ``jacobian_block_elements`` floats of scratch.

Stop-gradient terms: everything but the mean (precision, Cholesky factor, ``Λ_{t-1}``, entropy and
the mean-independent part of the KL) is a :class:`LaplaceTerms`; outputs are :class:`LaplaceOutput`
and carry all of it. A trainer that already has the terms of some steps (a rollout computed them
at every step; or :meth:`LaplaceBelief.terms_from_states` rebuilds them from the states a rollout
stored, which hold each step's ``data_precision``) re-evaluates those steps without recomputing them:
``sequence(..., terms=terms)``, or :meth:`LaplaceBelief.mean_sequence` plus
:meth:`LaplaceBelief.kl_to_previous` on any rows. The terms are those of the weights they were
computed with (see :class:`~bayes_agents.BayesPPO`, which reuses the rollout's for its update).

State layout (all zeros = prior): ``hidden [H]``, ``cell [H]`` (LSTM), ``window_inputs [k-1, D]``
(the previous raw inputs, oldest first), ``window_count [1]`` (how many of the last ``k`` inputs,
current one included, belong to the current episode), ``data_precision [L, L]`` or ``[L]``
(``Λ_t`` without the prior precision) and ``mean [L]`` (``μ_t``, detached).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor

from bayes_agents.defaults import LAPLACE_SETTINGS

from .base import (
    MAX_SCALE,
    BeliefOutput,
    EntryIndex,
    StateLayout,
    check_choice,
    check_positive_int,
    check_real,
    gaussian_offsets,
)
from .registry import register_belief
from .rl2 import RL2Belief

VARIANTS = ("stationary", "sum_precision", "markov")
#: Up to this many rows (e.g. one acting step of a few envs) the Jacobian products take a path
#: with less per-call overhead (same values up to rounding).
_FEW_ROWS = 16
COVARIANCES = ("full", "diag")


def segmented_cumsum(values: Tensor, starts: Tensor, carry: Tensor, block_steps: int = 128) -> Tensor:
    """``out_t = values_t + (0 if starts_t else out_{t-1})`` with ``out_{-1} = carry``, batched over time.

    Each block of ``block_steps`` steps is one batched product with the ``[B, T, T]`` indicator of
    "same episode segment and not later", which on CPU is several times faster than
    ``torch.cumsum`` over a leading dim of large ``[.., L, L]`` entries plus a gather, and has no
    cancellation error; blocks keep the cost linear in ``T``.

    :param values: ``[T, B, *E]``; :param starts: ``[T, B]`` bool; :param carry: ``[B, *E]``.
    :return: ``[T, B, *E]``.
    """
    steps, batch = starts.shape
    if steps == 1:  # one step (acting): the same values without the indicator product
        keep = (~starts[0]).to(values.dtype).view(batch, *(1,) * (values.dim() - 2))
        return values.addcmul(keep, carry.unsqueeze(0))
    flat_values = values.reshape(steps, batch, -1)
    running = carry.reshape(batch, -1)
    blocks = []
    for begin in range(0, steps, block_steps):
        block_values = flat_values[begin : begin + block_steps]
        segment = torch.cumsum(starts[begin : begin + block_steps].long(), dim=0).t()  # [B, n]
        time_index = torch.arange(segment.shape[1], device=values.device)
        same_segment = (segment.unsqueeze(2) == segment.unsqueeze(1)) & (time_index[:, None] >= time_index)
        block_sum = torch.einsum("bts,sbe->tbe", same_segment.to(values.dtype), block_values)
        # Rows before the first start of the block continue the running sum.
        block_sum.addcmul_((segment.t() == 0).to(values.dtype).unsqueeze(-1), running.unsqueeze(0))
        running = block_sum[-1]
        blocks.append(block_sum)
    summed = blocks[0] if len(blocks) == 1 else torch.cat(blocks)
    return summed.reshape(values.shape)


def _shift_in(sequence: Tensor, carry: Tensor, starts: Tensor, reset_value: float) -> Tensor:
    """Previous element of ``sequence`` ``[T, B, *E]``: ``carry`` at ``t=0``, ``reset_value`` at starts."""
    previous = torch.cat([carry.unsqueeze(0), sequence[:-1]], dim=0)
    return torch.where(starts.view(*starts.shape, *(1,) * (sequence.dim() - 2)), reset_value, previous)


def _shift_in_matrices(sequence: Tensor, carry: Tensor, starts: Tensor, diagonal: float) -> Tensor:
    """Previous element of ``sequence`` ``[T, B, L, L]``: ``carry`` at ``t=0``, ``diagonal·I`` at starts."""
    previous = torch.cat([carry.unsqueeze(0), sequence[:-1]])
    previous.mul_((~starts).to(previous.dtype)[..., None, None])
    previous.diagonal(dim1=-2, dim2=-1).add_(starts.to(previous.dtype).unsqueeze(-1) * diagonal)
    return previous


def _lower_column_outer(weight: Tensor) -> tuple[Tensor, Tensor]:
    """For ``W`` ``[L, H]``: the lower triangles of the outer products of its columns ``[H, L(L+1)/2]``
    and the index ``[L·L]`` that mirrors such a triangle into a full (symmetric) ``[L, L]`` matrix."""
    latent = weight.shape[0]
    rows, columns = torch.tril_indices(latent, latent, device=weight.device)
    outer = (weight[rows] * weight[columns]).t().contiguous()
    mirror = torch.empty(latent, latent, dtype=torch.long, device=weight.device)
    entries = torch.arange(rows.shape[0], device=weight.device)
    mirror[rows, columns] = entries
    mirror[columns, rows] = entries
    return outer, mirror.flatten()


def _mapped_fields(instance: object, function: Callable[[Tensor], Tensor]) -> dict[str, Tensor | None]:
    """``function`` of every tensor field of a dataclass ``instance`` (None stays None), by name."""
    values = {}
    for field in fields(instance):
        value = getattr(instance, field.name)
        values[field.name] = None if value is None else function(value)
    return values


@dataclass
class LaplaceTerms:
    """The stop-gradient part of Laplace posteriors ``q_t = N(μ_t, Λ_t^{-1})`` at steps ``[..]``
    (``[T, B]`` in :meth:`LaplaceBelief.sequence`): everything except the mean.

    :param precision: ``Λ_t`` as reported (full: ``+ jitter·I``), ``[.., L, L]`` or ``[.., L]`` (diag).
    :param precision_cholesky: lower Cholesky factor ``L_t`` of ``precision`` (full), else None.
    :param previous_precision: the precision ``Λ_{t-1}`` of ``q_{t-1}`` (the prior's at a reset), as
        reported (full: with the jitter), ``[.., L, L]`` or ``[.., L]`` (diag).
    :param entropy: entropy of ``q_t`` in nats ``[..]``.
    :param kl_offset: the mean-independent part of ``KL(q_t || q_{t-1})``,
        ``½(tr(Λ_{t-1} Λ_t^{-1}) - L + log det Λ_t - log det Λ_{t-1})`` ``[..]``; the KL is
        ``kl_offset + ½ (μ_t - μ_{t-1})^T Λ_{t-1} (μ_t - μ_{t-1})``.
    """

    precision: Tensor
    precision_cholesky: Tensor | None
    previous_precision: Tensor
    entropy: Tensor
    kl_offset: Tensor

    def apply(self, function: Callable[[Tensor], Tensor]) -> LaplaceTerms:
        """New terms with ``function`` applied to every tensor field (None stays None)."""
        return LaplaceTerms(**_mapped_fields(self, function))


@dataclass
class LaplaceOutput(BeliefOutput):
    """A :class:`BeliefOutput` that also carries the rest of the Laplace terms (see :class:`LaplaceTerms`):
    ``previous_precision`` and ``kl_offset``, so that a rollout's outputs hold everything a trainer needs
    to re-evaluate the steps later at new means."""

    previous_precision: Tensor | None = None
    kl_offset: Tensor | None = None


class _SymmetricQuadraticForm(torch.autograd.Function):
    """``x^T A x`` ``[..]`` for ``x`` ``[.., L]`` and a constant symmetric ``A`` ``[.., L, L]``, with the
    gradient ``2 A x`` taken from the forward product (one batched matrix product in all, where
    autograd's ``x^T A x`` or ``||L^T x||²`` needs a second one, on a transposed matrix, backward)."""

    @staticmethod
    def forward(ctx: Any, x: Tensor, matrix: Tensor) -> Tensor:
        product = (x.unsqueeze(-2) @ matrix).squeeze(-2)  # x^T A = (A x)^T: the faster batched product
        ctx.save_for_backward(product)
        return (x * product).sum(-1)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, None]:
        (product,) = ctx.saved_tensors
        return 2 * grad.unsqueeze(-1) * product, None


class LaplaceBelief(RL2Belief):
    """Laplace-VRNN belief (see the module docstring for the exact model).

    Parameters as :class:`~bayes_agents.beliefs.rl2.RL2Belief` (identical parameter names, so an RL²
    state dict loads unchanged), plus:

    :param window: number ``k >= 1`` of most recent inputs whose Jacobians form ``P_t``. Default 1, the
        package's tuned grid setting and the cheaper one (a precision term per step instead of k:
        ``RecurrentPPO(LaplacePolicy, gym.make("BayesGrid-v0"))`` trains at ~0.58× RL²'s env steps/s
        with k = 1 and ~0.49× with k = 15, ``benchmarks/train_throughput.py``); the paper uses 15.
    :param covariance: ``"full"`` (``[L, L]`` precision) or ``"diag"``.
    :param variant: ``"stationary"``, ``"sum_precision"`` or ``"markov"``.
    :param damping: prior precision in ``(0, 1e6]`` added on the diagonal at a reset (beyond
        :data:`~.base.MAX_SCALE` the float32 posterior terms lose the data precision or overflow).
    :param beta: weight in ``[0, 1e6]`` of the KL penalty in :meth:`aux_loss`.
    :param jitter: in ``[0, 1]``, added to the diagonal of a full precision (a numerical floor for its
        Cholesky factorisation); part of the reported ``precision``.
    :param jacobian_block_elements: scratch size (floats) of the blocked Jacobian products: rows are
        processed in blocks of ``jacobian_block_elements / (k·H·(H + L))`` (at least 1). The default
        2**22 (16 MB) stays below glibc's mmap threshold, so the scratch is not page-faulted in afresh,
        and bounds memory for large windows (blocks of ~170 rows for k = 1, ~11 for k = 15).
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
        window: int = 1,
        covariance: str = "full",
        variant: str = "stationary",
        damping: float = 1.0,
        beta: float = 1e-2,
        jitter: float = 1e-6,
        jacobian_block_elements: int = 2**22,
    ):
        check_positive_int("window", window)
        check_choice("covariance", covariance, COVARIANCES)
        check_choice("variant", variant, VARIANTS)
        damping = check_real("damping", damping, 0.0, MAX_SCALE, low_open=True)
        beta = check_real("beta", beta, 0.0, MAX_SCALE)
        jitter = check_real("jitter", jitter, 0.0, 1.0)
        check_positive_int("jacobian_block_elements", jacobian_block_elements)
        # Set before RL2Belief.__init__, which builds the state layout through _make_state_layout.
        self.window = window
        self.covariance = covariance
        self.variant = variant
        self.damping = float(damping)
        self.beta = float(beta)
        self.jitter = float(jitter)
        self.jacobian_block_elements = jacobian_block_elements
        super().__init__(input_dim, hidden_size, latent_dim, rnn, embed_sizes, negative_slope)

    @classmethod
    def from_rl2(cls, rl2_belief: RL2Belief, **laplace_kwargs) -> LaplaceBelief:
        """A Laplace belief on the recurrence of a trained ``rl2_belief`` (weights copied, same
        device and dtype). With ``variant`` ``"stationary"`` or ``"sum_precision"`` its ``mean`` equals
        the RL² latent exactly. ``laplace_kwargs``: ``window``, ``covariance``, ``variant``, ...
        """
        if not isinstance(rl2_belief, RL2Belief):
            raise TypeError(f"rl2_belief must be an RL2Belief, got {type(rl2_belief).__name__}")
        belief, missing = cls._built_on(rl2_belief, laplace_kwargs)
        assert not missing  # Laplace adds no parameters to the RL² recurrence
        return belief

    # ----------------------------------------------------------------------------------------------
    def _make_state_layout(self) -> StateLayout:
        parts = list(super()._make_state_layout().shapes.items())
        precision_shape = (
            (self.latent_dim, self.latent_dim) if self.covariance == "full" else (self.latent_dim,)
        )
        parts += [
            ("window_inputs", (self.window - 1, self.input_dim)),
            ("window_count", (1,)),
            ("data_precision", precision_shape),
            ("mean", (self.latent_dim,)),
        ]
        return StateLayout(parts)

    def _cell_derivatives(
        self, hidden: Tensor, cell: Tensor | None, window_gates: Tensor, mask: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor | None]:
        """Derivative factors of one cell step from carry ``(hidden, cell)`` ``[N, H]`` on each of
        ``k`` inputs (input gate pre-activations ``window_gates`` ``[N, k, G·H]``), zeroed where
        ``mask`` ``[N, k]`` is false.

        ``∂h'/∂h = diag(hidden_diagonal) + Σ_g diag(gate_factors[:, :, g]) W_hh[g]`` and, for the LSTM,
        ``∂h'/∂c = diag(cell_diagonal)``.

        :return: ``gate_factors`` ``[N, k, G, H]``, ``hidden_diagonal`` ``[N, k, H]`` (GRU) or None,
            ``cell_diagonal`` ``[N, k, H]`` (LSTM) or None.
        """
        weight = mask.to(hidden.dtype).unsqueeze(-1)
        if self.rnn == "lstm":
            gates = window_gates + (hidden @ self.cell.weight_hh.t()).unsqueeze(1)
            in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=-1)
            in_gate, forget_gate, out_gate = in_gate.sigmoid(), forget_gate.sigmoid(), out_gate.sigmoid()
            cell_gate = cell_gate.tanh()
            new_cell_tanh = torch.tanh(forget_gate * cell.unsqueeze(1) + in_gate * cell_gate)
            # h' = o ⊙ tanh(c'), c' = f ⊙ c + i ⊙ g: chain rule through each gate's pre-activation.
            through_cell = out_gate * (1 - new_cell_tanh.square()) * weight
            gate_factors = torch.stack(
                [
                    through_cell * cell_gate * in_gate * (1 - in_gate),
                    through_cell * cell.unsqueeze(1) * forget_gate * (1 - forget_gate),
                    through_cell * in_gate * (1 - cell_gate.square()),
                    new_cell_tanh * out_gate * (1 - out_gate) * weight,
                ],
                dim=2,
            )
            return gate_factors, None, through_cell * forget_gate
        hidden_gates = torch.addmm(self.cell.bias_hh, hidden, self.cell.weight_hh.t()).unsqueeze(1)
        reset_x, update_x, new_x = window_gates.chunk(3, dim=-1)
        reset_h, update_h, new_h = hidden_gates.chunk(3, dim=-1)
        reset = torch.sigmoid(reset_x + reset_h)
        update = torch.sigmoid(update_x + update_h)
        candidate = torch.tanh(new_x + reset * new_h)
        # h' = (1 - z) ⊙ n + z ⊙ h with n = tanh(x_n + r ⊙ (W_hn h + b_hn)).
        through_candidate = (1 - update) * (1 - candidate.square()) * weight
        gate_factors = torch.stack(
            [
                through_candidate * new_h * reset * (1 - reset),
                (hidden.unsqueeze(1) - candidate) * update * (1 - update) * weight,
                through_candidate * reset,
            ],
            dim=2,
        )
        return gate_factors, update * weight, None

    def _hidden_jacobian(
        self, gate_factors: Tensor, hidden_diagonal: Tensor | None, buffer: Tensor | None = None
    ) -> Tensor:
        """``W_out ∂h'/∂h`` for ``M`` rows of factors ``[M, G, H]`` (+ diagonal ``[M, H]``): ``[L, M, H]``.

        :param buffer: optional scratch space of at least ``M·H·(H + L)`` elements (reused across blocks).
        """
        rows, n_gates, size = gate_factors.shape
        if buffer is None:
            buffer = gate_factors.new_empty(rows * size * (size + self.latent_dim))
        state_jacobian = buffer[: size * rows * size].view(size, rows, size)
        mean_jacobian = buffer[size * rows * size : rows * size * (size + self.latent_dim)]
        weight_hh = self.cell.weight_hh.view(n_gates, size, size).permute(1, 0, 2)  # [H_out, G, H_in]
        # K[a, m, :] = Σ_g factor[m, g, a] W_hh[g, a, :]: for a few rows (acting) G fused multiply-adds,
        # else one batched product over the output unit a (H products with an inner size of only G).
        if rows <= _FEW_ROWS:
            factors = gate_factors.permute(2, 0, 1).unsqueeze(-1)  # [H_out, M, G, 1]
            torch.mul(factors[:, :, 0], weight_hh[:, 0].unsqueeze(1), out=state_jacobian)
            for gate in range(1, n_gates):
                state_jacobian.addcmul_(factors[:, :, gate], weight_hh[:, gate].unsqueeze(1))
        else:
            torch.bmm(gate_factors.permute(2, 0, 1), weight_hh, out=state_jacobian)
        if hidden_diagonal is not None:
            state_jacobian.diagonal(dim1=0, dim2=2).add_(hidden_diagonal)
        mean_jacobian = mean_jacobian.view(self.latent_dim, rows * size)
        torch.mm(self.latent_head.weight, state_jacobian.view(size, rows * size), out=mean_jacobian)
        return mean_jacobian.view(self.latent_dim, rows, size)

    @torch.no_grad()
    def next_step_jacobian(self, carry: Tensor, inputs: Tensor) -> Tensor:
        """``∂ μ(f(s, x)) / ∂s`` at ``s = carry``: ``[N, L, carry_size]`` (no gradient, like ``P_t``).

        :param carry: ``[N, carry_size]``, ``[h, c]`` for the LSTM (as in the state), ``h`` for the GRU.
        :param inputs: raw inputs ``x`` ``[N, input_dim]``.
        """
        hidden = carry[:, : self.hidden_size]
        cell = carry[:, self.hidden_size :] if self.rnn == "lstm" else None
        window_gates = self.input_gates(inputs).unsqueeze(1)
        mask = torch.ones(window_gates.shape[:2], dtype=torch.bool, device=carry.device)
        gate_factors, hidden_diagonal, cell_diagonal = self._cell_derivatives(
            hidden, cell, window_gates, mask
        )
        hidden_part = self._hidden_jacobian(
            gate_factors[:, 0], None if hidden_diagonal is None else hidden_diagonal[:, 0]
        ).transpose(0, 1)
        if cell_diagonal is None:
            return hidden_part
        cell_part = self.latent_head.weight.unsqueeze(0) * cell_diagonal[:, 0].unsqueeze(1)
        return torch.cat([hidden_part, cell_part], dim=-1)

    def _few_rows_hidden_precision(self, gate_factors: Tensor, head: Tensor, full: bool) -> Tensor:
        """The hidden-state block ``Σ_i J_i J_i^T`` of a few rows of LSTM factors ``[N, k, G, H]``
        (``N ≤ 16``, e.g. one acting step) without the ``k`` Jacobians: with ``K_i = Σ_g diag(f_ig) W_g``,
        ``Σ_i K_i K_i^T = Σ_{g,g'} (F_g^T F_g') ⊙ (W_g W_g'^T)``, so ``P = W_out S W_out^T`` costs
        ``k(GH)² + LH(H + L)`` flops instead of ``kLH(H + L)`` (~4x fewer for k = 15). ``W_hh W_hh^T`` is
        kept until the weights change. Same values up to rounding. ``[N, L, L]`` (full) or ``[N, L]``."""
        rows, window, n_gates, size = gate_factors.shape
        factors = gate_factors.reshape(rows, window, n_gates * size)
        gram = torch.bmm(factors.transpose(1, 2), factors)  # [N, GH, GH]
        gram.mul_(self._recurrent_gram())
        # S [N, H, H]: the G×G blocks summed, first over block rows, then block columns (contiguous
        # reductions: ~10x faster than one reduction over both).
        inner = gram.view(rows, n_gates, -1).sum(1).view(rows, size, n_gates, size).sum(2)
        projected = head @ inner  # [N, L, H]
        if full:
            return projected @ head.t()
        return (projected * head).sum(-1)

    def _recurrent_gram(self) -> Tensor:
        """``W_hh W_hh^T`` ``[GH, GH]`` (no gradient), recomputed when the weights change."""
        return self._weight_cache(
            "_recurrent_gram_cache", self.cell.weight_hh, lambda weight: weight @ weight.t()
        )

    def _weight_cache(self, name: str, weight: Tensor, function: Callable[[Tensor], Any]) -> Any:
        """``function(weight)`` (no gradient, normal tensors also in acting), kept in attribute ``name``
        with a copy of ``weight`` and recomputed when the weight's values differ from the copy (a
        comparison, not the version counter: not every in-place update of a parameter bumps it)."""
        cached = getattr(self, name, None)
        detached = weight.detach()
        if (
            cached is None
            or cached[0].shape != detached.shape
            or cached[0].dtype != detached.dtype
            or cached[0].device != detached.device
            or not torch.equal(cached[0], detached)
        ):
            with torch.inference_mode(False), torch.no_grad():
                cached = (detached.clone(), function(detached))
            setattr(self, name, cached)
        return cached[1]

    def _few_rows_full_precision(
        self, gate_factors: Tensor, hidden_diagonal: Tensor | None, cell_diagonal: Tensor | None
    ) -> Tensor:
        """``Σ_i J_i J_i^T`` ``[N, L, L]`` (full) for a few rows (``N ≤ 16``, e.g. one acting step) and a
        short window (``k < 4``), from the factors of :meth:`_cell_derivatives` ``[N, k, G, H]``.

        The transposed hidden Jacobians ``(W_out K_i)^T = K_i^T W_out^T`` ``[H, L]`` come from one matrix
        product with rows of contiguous ``K_i^T = Σ_g W_g^T diag(f_ig)`` (+ the GRU's diagonal), and
        ``P = X^T X`` is one batched product of contiguous ``X`` ``[N, k·H, L]``; the LSTM cell-state
        block ``W_out diag(Σ_i e_i²) W_out^T`` is one product with the (kept) lower triangles of the
        outer products of ``W_out``'s columns (``L(L+1)/2`` entries each, mirrored): ~2x faster than
        the blocked path at ``N = 16``, ``k = 1``. Same values up to rounding."""
        rows, window, n_gates, size = gate_factors.shape
        latent = self.latent_dim
        factors = gate_factors.flatten(0, 1)  # [N·k, G, H_out]
        weights = self._weight_cache(  # W_g^T [G, H_in, H_out]
            "_transposed_gates_cache",
            self.cell.weight_hh,
            lambda weight: weight.view(n_gates, size, size).transpose(1, 2).contiguous(),
        )
        transposed = weights[0] * factors[:, 0].unsqueeze(1)  # K_i^T [N·k, H_in, H_out]
        for gate in range(1, n_gates):
            transposed.addcmul_(weights[gate], factors[:, gate].unsqueeze(1))
        if hidden_diagonal is not None:
            transposed.diagonal(dim1=1, dim2=2).add_(hidden_diagonal.flatten(0, 1))
        head_t = self._weight_cache(
            "_head_t_cache", self.latent_head.weight, lambda weight: weight.t().contiguous()
        )
        stacked = torch.matmul(transposed, head_t).view(rows, window * size, latent)  # X
        if cell_diagonal is None:
            return torch.bmm(stacked.transpose(1, 2), stacked)
        outer, mirror = self._weight_cache("_head_outer_cache", self.latent_head.weight, _lower_column_outer)
        precision = (cell_diagonal.square().sum(1) @ outer).index_select(1, mirror).view(rows, latent, latent)
        return precision.baddbmm_(stacked.transpose(1, 2), stacked)

    def _window_precision(
        self, hiddens: Tensor, cells: Tensor | None, window_gates: Tensor, mask: Tensor
    ) -> Tensor:
        """``P = Σ_i m_i J_i J_i^T`` for ``[T, B]`` rows: ``[T, B, L, L]`` (full) or ``[T, B, L]`` (diag).

        :param hiddens: ``[T, B, H]``; :param cells: ``[T, B, H]`` (LSTM) or None;
        :param window_gates: ``[T, B, k, G·H]``; :param mask: ``[T, B, k]`` (false: not in the window).
        """
        leading, window = mask.shape[:2], mask.shape[2]
        size, latent = self.hidden_size, self.latent_dim
        gate_factors, hidden_diagonal, cell_diagonal = self._cell_derivatives(
            hiddens.flatten(0, 1),
            None if cells is None else cells.flatten(0, 1),
            window_gates.flatten(0, 1),
            mask.flatten(0, 1),
        )
        rows = gate_factors.shape[0]
        head = self.latent_head.weight
        full = self.covariance == "full"
        if full and rows <= _FEW_ROWS and window < 4:
            precision = self._few_rows_full_precision(gate_factors, hidden_diagonal, cell_diagonal)
            return precision.view(*leading, *precision.shape[1:])
        # The LSTM cell-state block J_c = W_out diag(e) contributes W_out diag(Σ_i e_i²) W_out^T: one
        # matrix product for all rows (with the outer products of W_out's columns for the full case).
        if cell_diagonal is None:
            precision = head.new_zeros((rows, latent, latent) if full else (rows, latent))
        elif full and rows <= _FEW_ROWS:  # W_out diag(s) W_out^T as (W_out diag(√s)) (W_out diag(√s))^T
            scaled = head * cell_diagonal.square().sum(1).sqrt().unsqueeze(1)  # [rows, L, H]
            precision = torch.bmm(scaled, scaled.transpose(1, 2))
        elif full:
            column_outer = (head.t().unsqueeze(2) * head.t().unsqueeze(1)).flatten(1)
            precision = (cell_diagonal.square().sum(1) @ column_outer).view(rows, latent, latent)
        else:
            precision = cell_diagonal.square().sum(1) @ head.square().t()
        if hidden_diagonal is None and rows <= _FEW_ROWS and window >= 4:  # LSTM, acting
            precision += self._few_rows_hidden_precision(gate_factors, head, full)
            return precision.view(*leading, *precision.shape[1:])
        # The hidden-state block is formed in row blocks whose scratch space stays cache-sized: the
        # products are memory-bound otherwise (~2x slower on CPU for T·B = 2048, H = 128).
        block = max(1, min(rows, self.jacobian_block_elements // (window * size * (size + latent))))
        buffer = head.new_empty(block * window * size * (size + latent))
        for start in range(0, rows, block):
            stop = min(start + block, rows)
            hidden_jacobian = self._hidden_jacobian(
                gate_factors[start:stop].flatten(0, 1),
                None if hidden_diagonal is None else hidden_diagonal[start:stop].flatten(0, 1),
                buffer,
            ).view(latent, stop - start, window * size)  # the k window entries side by side
            if full:
                stacked = hidden_jacobian.transpose(0, 1)  # [rows, L, k·H]
                precision[start:stop].baddbmm_(stacked, stacked.transpose(1, 2))
            else:
                precision[start:stop] += hidden_jacobian.square().sum(-1).t()
        return precision.view(*leading, *precision.shape[1:])

    def _windows(
        self, inputs: Tensor, input_gates: Tensor | None, parts: dict[str, Tensor], starts: Tensor
    ) -> tuple[Tensor | None, Tensor, Tensor, Tensor]:
        """Window gate pre-activations ``[T, B, k, G·H]`` (None if ``input_gates`` is None), validity
        mask ``[T, B, k]`` and the next ``window_inputs`` ``[B, k-1, D]`` and ``window_count`` ``[B, 1]``."""
        window = self.window
        steps = inputs.shape[0]
        window_gates = None
        if window > 1:
            past_inputs = parts["window_inputs"].transpose(0, 1)  # [k-1, B, D]
            if input_gates is not None:
                all_gates = torch.cat([self.input_gates(past_inputs), input_gates], dim=0)
                window_gates = all_gates.unfold(0, window, 1).transpose(-1, -2)  # [T, B, k, G·H]
            next_window = torch.cat([past_inputs, inputs], dim=0)[-(window - 1) :].transpose(0, 1)
        else:
            if input_gates is not None:
                window_gates = input_gates.unsqueeze(2)
            next_window = parts["window_inputs"]
            # k = 1: the window is x_t alone, always in the episode (the count is 1 at every step).
            mask = torch.ones(*starts.shape, 1, dtype=torch.bool, device=inputs.device)
            return window_gates, mask, next_window, inputs.new_ones(starts.shape[1], 1)
        time_index = torch.arange(steps, device=inputs.device).unsqueeze(1)
        last_start = torch.cummax(torch.where(starts, time_index, -1), dim=0).values
        counts = torch.where(
            last_start >= 0,
            (time_index - last_start + 1).to(inputs.dtype),
            parts["window_count"][:, 0] + time_index + 1,
        ).clamp(max=window)
        slot = torch.arange(window, device=inputs.device, dtype=inputs.dtype)  # 0 = oldest, k-1 = x_t
        mask = slot >= (window - counts).unsqueeze(-1)
        return window_gates, mask, next_window, counts[-1].unsqueeze(-1)

    def sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor, terms: LaplaceTerms | None = None
    ) -> tuple[BeliefOutput, Tensor]:
        """See :meth:`Belief.sequence`. Outputs ``[T, B, ..]``: ``mean``, ``precision``,
        ``precision_cholesky`` (full), ``entropy``, ``kl_to_previous``.

        :param terms: optional stop-gradient posterior terms of these ``T`` steps (leading dims
            ``[T, B]``), e.g. :meth:`terms_from_states` of the states a rollout stored. They are used
            as given instead of being recomputed (no Jacobians, Cholesky factors or log-determinants):
            only the mean ``μ_t`` runs, and ``kl_to_previous`` is differentiable through it exactly as
            without ``terms``. Terms taken at other weights than the current ones give the precision
            of those weights (as PPO's old log-probabilities are those of the rollout's weights); the
            precision carries no gradient either way. The returned state's ``data_precision`` is
            that of ``terms.precision[-1]``.
        """
        inputs, starts = self._prepare_sequence(inputs, state, episode_starts)
        if terms is not None:
            self._check_terms(terms, starts.shape)
        parts = self.state_layout.unpack(state)
        hidden, cell = self._unpack_carry(parts)
        embedded = self.embedding(inputs)
        hiddens, cells, final_hidden, final_cell = self.recurrence(
            embedded, hidden, cell, starts, need_cells=terms is None
        )
        mean, previous_mean = self._means(self.latent_head(hiddens), parts, starts)

        with torch.no_grad():
            input_gates = None if terms is not None else self.gates_from_embedded(embedded.detach())
            window_gates, mask, next_window, next_count = self._windows(inputs, input_gates, parts, starts)
            if terms is None:
                data_precision = self._window_precision(
                    hiddens.detach(), None if cells is None else cells.detach(), window_gates, mask
                )
                if self.variant != "stationary":
                    data_precision = segmented_cumsum(data_precision, starts, parts["data_precision"])
                next_data_precision = data_precision[-1].clone()
                # data_precision is a fresh tensor: the prior precision is added in place (it is large).
                terms = self._posterior_terms_(data_precision, parts["data_precision"], starts)
            else:
                next_data_precision = self._add_prior_precision_(terms.precision[-1].clone(), -1.0)

        output = self._output(mean, previous_mean, terms)
        next_parts = {
            "hidden": final_hidden,
            "window_inputs": next_window,
            "window_count": next_count,
            "data_precision": next_data_precision,
            "mean": mean[-1].detach(),
        }
        if final_cell is not None:
            next_parts["cell"] = final_cell
        return output, self.state_layout.pack(next_parts)

    @torch.no_grad()
    def acting_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor, cholesky: bool = True
    ) -> tuple[LaplaceOutput, Tensor, Callable[[], LaplaceOutput]]:
        """:meth:`sequence` without gradient and without the statistics no action needs.

        Only the mean, the precision (the next state's ``data_precision`` plus the prior) and, for a
        full covariance and ``cholesky``, its Cholesky factor (what :meth:`sample_offsets` needs) are
        formed; the entropy, the KL and the previous precision (one more factorisation, a triangular
        solve with a matrix right-hand side and log-determinants per step) are left to the returned
        ``complete()``, e.g. for a rollout that is never trained on, or to a batched pass over many
        steps (:meth:`terms_from_states`).

        :return: the partial output (``entropy``, ``kl_to_previous``, ``previous_precision`` and
            ``kl_offset`` None; ``precision_cholesky`` None unless computed), the next state, and
            ``complete()``: the output :meth:`sequence` gives for these inputs (the same values bit
            for bit, without gradients), reusing the factor if it was computed.
        """
        inputs, starts = self._prepare_sequence(inputs, state, episode_starts)
        parts = self.state_layout.unpack(state)
        hidden, cell = self._unpack_carry(parts)
        embedded = self.embedding(inputs)
        hiddens, cells, final_hidden, final_cell = self.recurrence(
            embedded, hidden, cell, starts, need_cells=True
        )
        mean, previous_mean = self._means(self.latent_head(hiddens), parts, starts)
        input_gates = self.gates_from_embedded(embedded)
        window_gates, mask, next_window, next_count = self._windows(inputs, input_gates, parts, starts)
        data_precision = self._window_precision(hiddens, cells, window_gates, mask)
        if self.variant != "stationary":
            data_precision = segmented_cumsum(data_precision, starts, parts["data_precision"])
        precision = self._add_prior_precision_(data_precision.clone())
        factor = None
        if cholesky and self.covariance == "full":
            factor = torch.linalg.cholesky_ex(precision).L
        next_parts = {
            "hidden": final_hidden,
            "window_inputs": next_window,
            "window_count": next_count,
            "data_precision": data_precision[-1],
            "mean": mean[-1],
        }
        if final_cell is not None:
            next_parts["cell"] = final_cell
        carried = parts["data_precision"]

        def complete() -> LaplaceOutput:
            with torch.no_grad():
                terms = self._posterior_terms_(data_precision.clone(), carried, starts, factor)
                return self._output(mean, previous_mean, terms)

        partial = LaplaceOutput(mean=mean, precision=precision, precision_cholesky=factor)
        return partial, self.state_layout.pack(next_parts), complete

    def _means(self, features: Tensor, parts: dict[str, Tensor], starts: Tensor) -> tuple[Tensor, Tensor]:
        """``μ_t`` (differentiable) and ``sg μ_{t-1}`` (0 at a reset) ``[T, B, L]`` from the RL² latents."""
        with torch.no_grad():
            if self.variant == "markov":
                mean_values = segmented_cumsum(features.detach(), starts, parts["mean"])
            else:
                mean_values = features.detach()
            previous_mean = _shift_in(mean_values, parts["mean"], starts, 0.0)
        return (features + previous_mean if self.variant == "markov" else features), previous_mean

    def policy_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor, read: EntryIndex | None = None
    ) -> BeliefOutput:
        """The policy input's field alone, the means ``μ_t`` (:meth:`mean_sequence`): no Jacobians,
        precisions or factors. With ``read`` (:meth:`Belief.policy_sequence`) the latent head runs on
        the read entries alone, except for the Markov variant (its means are a running sum)."""
        if read is not None and self.variant != "markov":
            hiddens = self.hidden_sequence(inputs, state, episode_starts)[0]
            return LaplaceOutput(mean=self.latent_head(hiddens[read]))
        mean, _ = self.mean_sequence(inputs, state, episode_starts)
        return LaplaceOutput(mean=mean if read is None else mean[read])

    def mean_sequence(self, inputs: Tensor, state: Tensor, episode_starts: Tensor) -> tuple[Tensor, Tensor]:
        """The means of :meth:`sequence` alone (no precision, no state): ``μ_t`` ``[T, B, L]``, with
        gradient, and ``μ_{t-1}`` (detached, 0 at a reset). With the terms of these steps from elsewhere
        (e.g. the :class:`LaplaceOutput` of a rollout), :meth:`kl_to_previous` then gives their KL."""
        hiddens = self.hidden_sequence(inputs, state, episode_starts)[0]
        _, starts = self._prepare_sequence(inputs, state, episode_starts)
        return self._means(self.latent_head(hiddens), self.state_layout.unpack(state), starts)

    def _output(self, mean: Tensor, previous_mean: Tensor, terms: LaplaceTerms) -> LaplaceOutput:
        """The posterior output of means ``[T, B, L]`` (and the previous steps' means) and their
        stop-gradient terms (``LaplaceTerms``)."""
        return LaplaceOutput(
            mean=mean,
            precision=terms.precision,
            precision_cholesky=terms.precision_cholesky,
            entropy=terms.entropy,
            kl_to_previous=self.kl_to_previous(
                mean - previous_mean, terms.previous_precision, terms.kl_offset
            ),
            previous_precision=terms.previous_precision,
            kl_offset=terms.kl_offset,
        )

    def kl_to_previous(self, difference: Tensor, previous_precision: Tensor, kl_offset: Tensor) -> Tensor:
        """``KL(q_t || q_{t-1}) = kl_offset + ½ δ^T Λ_{t-1} δ`` ``[..]`` for ``δ = μ_t - μ_{t-1}``
        ``[.., L]`` (differentiable) and the terms' ``previous_precision`` ``Λ_{t-1}`` and ``kl_offset``
        (constants: no gradient flows to them)."""
        if self.covariance == "diag":
            mahalanobis = (previous_precision.detach() * difference.square()).sum(-1)
        else:
            mahalanobis = _SymmetricQuadraticForm.apply(difference, previous_precision.detach())
        return kl_offset + 0.5 * mahalanobis

    @torch.no_grad()
    def terms_from_states(self, states: Tensor, episode_starts: Tensor) -> LaplaceTerms:
        """The stop-gradient posterior terms of ``T`` steps from the belief states around them, without
        running the recurrence (the states carry each step's ``data_precision``).

        This is how a trainer reuses the precisions a rollout computed (one Cholesky factorisation
        per step and update instead of the Jacobians, factorisations and log-determinants of every
        minibatch of every epoch): pass the result, sliced like the inputs, to :meth:`sequence`.

        :param states: ``[T + 1, B, state_size]``: ``states[0]`` the state before step 0 and
            ``states[t + 1]`` the state after step ``t`` (as a rollout stores them).
        :param episode_starts: ``[T, B]`` (bool or 0/1 float), the resets of the steps.
        :return: terms with leading dims ``[T, B]``, equal to those :meth:`sequence` computes for
            these steps at the weights the states were computed with.
        """
        if states.dim() != 3 or states.shape[-1] != self.state_size:
            raise ValueError(f"states must be [T + 1, B, {self.state_size}], got {tuple(states.shape)}")
        steps, batch = states.shape[0] - 1, states.shape[1]
        if steps < 1 or episode_starts.shape != (steps, batch):
            raise ValueError(
                f"episode_starts must be [T, B] = {(steps, batch)} for states {tuple(states.shape)}, "
                f"got {tuple(episode_starts.shape)}"
            )
        starts = episode_starts if episode_starts.dtype == torch.bool else episode_starts > 0.5
        states = states.to(self._reference_parameter().dtype)
        data_precision = self.state_layout.unpack(states.flatten(0, 1))["data_precision"]
        data_precision = data_precision.reshape(steps + 1, batch, *data_precision.shape[1:])
        return self._posterior_terms_(data_precision[1:].clone(), data_precision[0], starts)

    def _check_terms(self, terms: LaplaceTerms, leading: tuple[int, ...]) -> None:
        if not isinstance(terms, LaplaceTerms):
            raise TypeError(f"terms must be LaplaceTerms, got {type(terms).__name__}")
        latent = self.latent_dim
        full = self.covariance == "full"
        expected = (*leading, latent, latent) if full else (*leading, latent)
        if terms.precision.shape != expected or (terms.precision_cholesky is None) == full:
            raise ValueError(
                f"terms must hold {self.covariance} precisions {expected} (with a Cholesky factor for a "
                f"full covariance), got precision {tuple(terms.precision.shape)} and "
                f"{'a' if terms.precision_cholesky is not None else 'no'} Cholesky factor"
            )

    @property
    def prior_precision(self) -> float:
        """Diagonal of the precision before any data: ``damping`` (+ ``jitter`` for a full covariance)."""
        return self.damping + self.jitter if self.covariance == "full" else self.damping

    def _add_prior_precision_(self, data_precision: Tensor, sign: float = 1.0) -> Tensor:
        """In place: ``data_precision + sign·prior_precision·I`` (full ``[.., L, L]``) or ``+ sign·prior``
        (diag); ``sign = -1`` turns a precision back into its data part."""
        if self.covariance == "full":
            data_precision.diagonal(dim1=-2, dim2=-1).add_(sign * self.prior_precision)
            return data_precision
        return data_precision.add_(sign * self.prior_precision)

    @torch.no_grad()
    def _posterior_terms_(
        self,
        data_precision: Tensor,
        carried_data_precision: Tensor,
        starts: Tensor,
        precision_cholesky: Tensor | None = None,
    ) -> LaplaceTerms:
        """Terms from the data precisions ``[T, B, ..]`` (overwritten: they become the precisions), the
        one carried in from before the sequence ``[B, ..]`` and the resets ``[T, B]``; a full
        covariance's Cholesky factors ``[T, B, L, L]`` are taken from ``precision_cholesky`` if given."""
        latent = self.latent_dim
        log_normaliser = 0.5 * latent * (1.0 + math.log(2 * math.pi))
        precision = self._add_prior_precision_(data_precision)
        carried_precision = self._add_prior_precision_(carried_data_precision.clone())
        if self.covariance == "diag":
            previous_precision = _shift_in(precision, carried_precision, starts, self.prior_precision)
            log_precision = precision.log()
            entropy = log_normaliser - 0.5 * log_precision.sum(-1)
            kl_offset = 0.5 * (
                previous_precision / precision - 1 + log_precision - previous_precision.log()
            ).sum(-1)
            return LaplaceTerms(precision, None, previous_precision, entropy, kl_offset)

        cholesky = torch.linalg.cholesky_ex(precision).L if precision_cholesky is None else precision_cholesky
        # Λ_{t-1} is Λ_t shifted by one step, so its factor is too; only the carried one is new.
        previous_cholesky = _shift_in_matrices(
            cholesky, torch.linalg.cholesky_ex(carried_precision).L, starts, math.sqrt(self.prior_precision)
        )
        previous_precision = _shift_in_matrices(precision, carried_precision, starts, self.prior_precision)
        log_det_half = cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)  # ½ log det Λ_t
        previous_log_det_half = previous_cholesky.diagonal(dim1=-2, dim2=-1).log().sum(-1)
        entropy = log_normaliser - log_det_half
        # tr(Λ_{t-1} Λ_t^{-1}) = ||L_t^{-1} L_{t-1}||_F²
        trace = (
            torch.linalg.solve_triangular(cholesky, previous_cholesky, upper=False).square_().sum((-2, -1))
        )
        kl_offset = 0.5 * (trace - latent) + (log_det_half - previous_log_det_half)
        return LaplaceTerms(precision, cholesky, previous_precision, entropy, kl_offset)

    # ----------------------------------------------------------------------------------------------
    def sample_offsets(
        self, precision: Tensor | None, precision_cholesky: Tensor | None, noise: Tensor
    ) -> Tensor:
        """``z - μ`` (no gradient) for the standard normal ``noise`` ``[n_samples, .., L]``: ``L^{-T} ε``
        from ``precision_cholesky`` ``[.., L, L]`` (full; ``precision`` is not read) or
        ``ε / sqrt(precision)`` from ``precision`` ``[.., L]`` (diag, ``precision_cholesky`` None)."""
        return gaussian_offsets(
            noise,
            None if precision is None else precision.detach(),
            None if precision_cholesky is None else precision_cholesky.detach(),
        )

    def aux_loss(self, output: BeliefOutput) -> Tensor:
        """``beta · mean(KL(q_t || sg q_{t-1}))`` over all leading dims (a scalar)."""
        if output.kl_to_previous is None:
            raise ValueError("output has no kl_to_previous; pass an output of this belief's step/sequence")
        return self.beta * output.kl_to_previous.mean()

    @property
    def has_aux_loss(self) -> bool:
        """True when the KL penalty has weight (``beta > 0``)."""
        return self.beta > 0

    def aux_loss_rows(self, output: BeliefOutput, mask: Tensor) -> Tensor:
        """:meth:`aux_loss` over the rows ``mask``: the KL penalty reads ``kl_to_previous`` only, so the
        ``[N, L, L]`` precisions and factors are not copied."""
        return self.aux_loss(BeliefOutput(mean=output.mean[mask], kl_to_previous=output.kl_to_previous[mask]))


register_belief(
    "laplace",
    LaplaceBelief,
    prefix="Laplace",
    policy_kwargs=LAPLACE_SETTINGS,
    policy_doc="""Laplace-VRNN: RL²'s recurrence with a Laplace-approximated Gaussian task posterior.

    Belief keywords (``policy_kwargs``): those of :class:`RL2Policy` plus ``window`` (k),
    ``covariance`` (``"full"``/``"diag"``), ``variant`` (``"stationary"``, ``"sum_precision"``,
    ``"markov"``), ``damping`` and ``beta`` (KL penalty, applied by :class:`~bayes_agents.BayesPPO`);
    ``n_samples`` posterior samples are averaged in the action head (0: posterior mean). See
    :class:`~bayes_agents.beliefs.LaplaceBelief`. Under :class:`~bayes_agents.BayesPPO` the update
    reuses the precisions the rollout computed (``reuse_rollout_precision``); stock ``RecurrentPPO``
    recomputes them for every minibatch.
    """,
    extractor_doc="""Laplace-VRNN belief (posterior mean as features); keywords of
    :class:`~bayes_agents.beliefs.LaplaceBelief` (``window`` there is the Jacobian window k, not the
    history length).""",
)
