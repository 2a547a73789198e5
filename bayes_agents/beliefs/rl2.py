"""RL² belief: a recurrent network whose output, projected affinely, is a point estimate of the task.

Architecture (Laplace-VRNN paper, appendix B.1): MLP embedding of ``x_t`` with leaky-ReLU
activations → LSTM (or GRU) cell → ``mean_t = W h_t + b`` (the cell *output* ``h_t``, not the LSTM
cell state, is projected).

The recurrence uses the parameters of a ``torch.nn.LSTMCell`` / ``torch.nn.GRUCell`` (submodule
``cell``) with the same gate equations, but projects the inputs of all ``T`` steps in one matrix
product before the time loop; only ``h_{t-1} W_hh^T`` runs inside the loop.
:class:`~bayes_agents.beliefs.laplace.LaplaceBelief` subclasses this module, so a trained RL² state
dict loads into it unchanged.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from .base import (
    Belief,
    BeliefOutput,
    EntryIndex,
    StateLayout,
    check_choice,
    check_positive_int,
    check_real,
    check_sizes,
)
from .registry import register_belief

RNN_TYPES = ("lstm", "gru")


class RL2Belief(Belief):
    """RL² point-estimate belief.

    :param input_dim: size of the flat per-step input ``x_t``.
    :param hidden_size: recurrent cell size (paper: LSTM 128).
    :param latent_dim: size of the latent point estimate (paper: 64).
    :param rnn: ``"lstm"`` or ``"gru"``.
    :param embed_sizes: hidden widths of the input MLP, leaky-ReLU after each layer; ``()`` feeds
        ``x_t`` to the cell directly. Default ``(256, 256)`` as in the paper (B.1): for the small
        inputs of this package's envs the embedding costs a few percent of a ``sequence`` call (the
        time loop and, for Laplace, the Jacobians dominate), so there is no speed reason to shrink it.
    :param negative_slope: leaky-ReLU slope in ``[0, 1]`` (Flax's and PyTorch's default 0.01).

    State layout (``[B, state_size]``): ``hidden`` ``[H]``, then for the LSTM ``cell`` ``[H]``.
    """

    def __init__(
        self,
        input_dim: int,
        hidden_size: int = 128,
        latent_dim: int = 64,
        rnn: str = "lstm",
        embed_sizes: Sequence[int] = (256, 256),
        negative_slope: float = 0.01,
    ):
        super().__init__()
        check_positive_int("input_dim", input_dim)
        check_positive_int("hidden_size", hidden_size)
        check_positive_int("latent_dim", latent_dim)
        check_choice("rnn", rnn, RNN_TYPES)
        embed_sizes = check_sizes("embed_sizes", embed_sizes)
        self.input_dim = input_dim
        self.hidden_size = hidden_size
        self.latent_dim = latent_dim
        self.rnn = rnn
        self.embed_sizes = embed_sizes
        self.negative_slope = check_real("negative_slope", negative_slope, 0.0, 1.0)

        layers: list[nn.Module] = []
        width_in = input_dim
        for width in embed_sizes:
            layers += [nn.Linear(width_in, width), nn.LeakyReLU(self.negative_slope)]
            width_in = width
        self.embedding = nn.Sequential(*layers)
        cell_type = nn.LSTMCell if rnn == "lstm" else nn.GRUCell
        self.cell = cell_type(width_in, hidden_size)
        self.latent_head = nn.Linear(hidden_size, latent_dim)

        self.state_layout = self._make_state_layout()
        self.state_size = self.state_layout.size

    # ----------------------------------------------------------------------------------------------
    @property
    def carry_size(self) -> int:
        """Size of the recurrent carry: ``2H`` (``[h, c]``) for the LSTM, ``H`` for the GRU."""
        return 2 * self.hidden_size if self.rnn == "lstm" else self.hidden_size

    @property
    def n_gates(self) -> int:
        return 4 if self.rnn == "lstm" else 3

    def _make_state_layout(self) -> StateLayout:
        parts = [("hidden", (self.hidden_size,))]
        if self.rnn == "lstm":
            parts.append(("cell", (self.hidden_size,)))
        return StateLayout(parts)

    def input_gates(self, inputs: Tensor) -> Tensor:
        """Input contribution to the gate pre-activations, ``[.., n_gates * H]`` for ``[.., input_dim]``."""
        return self.gates_from_embedded(self.embedding(inputs))

    def architecture(self) -> dict[str, Any]:
        """The constructor arguments of this recurrence: what a belief built on it must share."""
        return {
            "input_dim": self.input_dim,
            "hidden_size": self.hidden_size,
            "latent_dim": self.latent_dim,
            "rnn": self.rnn,
            "embed_sizes": self.embed_sizes,
            "negative_slope": self.negative_slope,
        }

    @classmethod
    def _built_on(cls, rl2_belief: RL2Belief, kwargs: dict[str, Any]) -> tuple[RL2Belief, list[str]]:
        """A ``cls`` belief with ``rl2_belief``'s architecture, weights, device and dtype (``kwargs``: the
        subclass's own keywords); returns it and the names of its parameters that ``rl2_belief`` lacks."""
        architecture = rl2_belief.architecture()
        clashes = set(architecture) & set(kwargs)
        if clashes:
            raise TypeError(f"from_rl2 takes the architecture from rl2_belief; do not pass {sorted(clashes)}")
        reference = next(rl2_belief.parameters())
        belief = cls(**architecture, **kwargs).to(device=reference.device, dtype=reference.dtype)
        missing, unexpected = belief.load_state_dict(rl2_belief.state_dict(), strict=False)
        if unexpected:
            raise TypeError(f"rl2_belief has parameters {unexpected} that {cls.__name__} does not")
        return belief, list(missing)

    def gates_from_embedded(self, embedded: Tensor) -> Tensor:
        """``[.., n_gates * H]`` gate pre-activations from embedded inputs ``[.., E]``.

        LSTM: ``e W_ih^T + b_ih + b_hh`` (both biases are outside any nonlinearity);
        GRU: ``e W_ih^T + b_ih`` (``b_hn`` sits inside ``r ⊙ (.)`` and is added per step).
        """
        bias = self.cell.bias_ih + self.cell.bias_hh if self.rnn == "lstm" else self.cell.bias_ih
        return F.linear(embedded, self.cell.weight_ih, bias)

    def recurrence(
        self, embedded: Tensor, hidden: Tensor, cell: Tensor | None, episode_starts: Tensor, need_cells: bool
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """Run the cell over time from ``(hidden, cell)`` ``[B, H]`` (``cell`` None for the GRU).

        Where no episode starts inside the sequence (always the case for the sequences of SB3's
        recurrent buffer, which are cut at episode starts) the whole sequence runs in one call: for
        the LSTM torch's fused RNN kernel (the one ``nn.LSTM`` uses, on the cell's own weights),
        about 3x faster than stepping the cell from Python; for the GRU torch's RNN call, or with
        gradients on a small CPU batch :class:`GRUSequence`; a single step (acting) runs torch's cell kernel
        (``torch.lstm_cell``/``torch.gru_cell``). Otherwise the cell is stepped. All paths compute
        the same equations (equal to rounding).

        :param embedded: ``[T, B, E]`` embedded inputs.
        :param episode_starts: ``[T, B]`` bool; the carry is zeroed before steps where it is true.
        :param need_cells: also return the LSTM cell state after every step (without gradient
            on the fused path, where only the Laplace precision, a stop-gradient term, uses it).
        :return: hidden outputs ``[T, B, H]``, cell states ``[T, B, H]`` (or None), and the final
            hidden ``[B, H]`` and cell ``[B, H]`` (None for the GRU).
        """
        if episode_starts.shape[0] > 1 and episode_starts[1:].any():
            return self._stepped_recurrence(self.gates_from_embedded(embedded), hidden, cell, episode_starts)
        keep = (~episode_starts[0]).to(embedded.dtype).unsqueeze(-1)
        hidden = hidden * keep
        weights = (self.cell.weight_ih, self.cell.weight_hh, self.cell.bias_ih, self.cell.bias_hh)
        if embedded.shape[0] == 1:  # one step (acting): the cell kernel, ~2x cheaper than a T=1 RNN call
            cell = None if cell is None else cell * keep
            return self._single_step(embedded[0], hidden, cell, weights, need_cells)
        if self.rnn == "gru":
            with_gradient = torch.is_grad_enabled() and any(
                tensor.requires_grad for tensor in (embedded, hidden, *weights)
            )
            if embedded.device.type != "cpu" or not with_gradient or embedded.shape[1] >= _GRU_KERNEL_BATCH:
                # cuDNN's fused kernel; on the CPU torch's RNN call, which steps a composite cell
                hiddens, final_hidden = torch._VF.gru(
                    embedded, hidden[None], weights, True, 1, 0.0, self.training, False, False
                )
                return hiddens, None, final_hidden[0], None
            # With gradients and a small batch the composite cell's ~15 autograd nodes per step cost
            # more than the arithmetic; GRUSequence does the same equations with 6 ops per step and a
            # hand-written backward.
            hiddens = GRUSequence.apply(
                self.gates_from_embedded(embedded), hidden, self.cell.weight_hh, self.cell.bias_hh
            )
            return hiddens, None, hiddens[-1], None
        cell = cell * keep
        hiddens, final_hidden, final_cell = torch._VF.lstm(
            embedded, (hidden[None], cell[None]), weights, True, 1, 0.0, self.training, False, False
        )
        cells = None
        if need_cells:
            with torch.no_grad():
                # c_t = f_t ⊙ c_{t-1} + i_t ⊙ g_t, with all gates from one batched product.
                previous = torch.cat([hidden[None], hiddens[:-1]], dim=0)
                gates = self.gates_from_embedded(embedded) + previous @ self.cell.weight_hh.t()
                in_gate, forget_gate, cell_gate, _ = gates.chunk(4, dim=-1)
                forget_gate = torch.sigmoid(forget_gate)
                written = torch.sigmoid(in_gate) * torch.tanh(cell_gate)
                running, cell_states = cell.detach(), []
                for step_forget, step_written in zip(forget_gate.unbind(0), written.unbind(0), strict=True):
                    running = step_forget * running + step_written
                    cell_states.append(running)
                cells = torch.stack(cell_states)
        return hiddens, cells, final_hidden[0], final_cell[0]

    def _single_step(
        self,
        embedded: Tensor,
        hidden: Tensor,
        cell: Tensor | None,
        weights: tuple[Tensor, ...],
        need_cells: bool,
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """:meth:`recurrence` of a single step without reset inside (``embedded`` ``[B, E]``, carry
        already reset): one call of torch's fused cell (``torch.lstm_cell``/``torch.gru_cell``, the
        gate equations of ``nn.LSTMCell``/``nn.GRUCell``), equal to the RNN kernel to rounding."""
        if self.rnn == "gru":
            hidden = torch.gru_cell(embedded, hidden, *weights)
            return hidden[None], None, hidden, None
        hidden, cell = torch.lstm_cell(embedded, (hidden, cell), *weights)
        cells = cell.detach()[None] if need_cells else None  # as the fused path: no gradient
        return hidden[None], cells, hidden, cell

    def _stepped_recurrence(
        self, input_gates: Tensor, hidden: Tensor, cell: Tensor | None, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor | None, Tensor, Tensor | None]:
        """:meth:`recurrence` by stepping the cell (any episode starts); ``input_gates`` ``[T, B, G·H]``."""
        keep = (~episode_starts).to(input_gates.dtype).unsqueeze(-1)
        weight_hh_t = self.cell.weight_hh.t()
        hiddens, cells = [], []
        # unbind, not input_gates[t]: backward of indexing allocates a [T, B, G·H] zero tensor per step.
        for step_gates, step_keep in zip(input_gates.unbind(0), keep.unbind(0), strict=True):
            hidden = hidden * step_keep
            if self.rnn == "lstm":
                cell = cell * step_keep
                gates = torch.addmm(step_gates, hidden, weight_hh_t)
                in_gate, forget_gate, cell_gate, out_gate = gates.chunk(4, dim=-1)
                cell = torch.sigmoid(forget_gate) * cell + torch.sigmoid(in_gate) * torch.tanh(cell_gate)
                hidden = torch.sigmoid(out_gate) * torch.tanh(cell)
                cells.append(cell)
            else:
                hidden_gates = torch.addmm(self.cell.bias_hh, hidden, weight_hh_t)
                reset_x, update_x, new_x = step_gates.chunk(3, dim=-1)
                reset_h, update_h, new_h = hidden_gates.chunk(3, dim=-1)
                reset = torch.sigmoid(reset_x + reset_h)
                update = torch.sigmoid(update_x + update_h)
                candidate = torch.tanh(new_x + reset * new_h)
                hidden = candidate + update * (hidden - candidate)
            hiddens.append(hidden)
        return torch.stack(hiddens), (torch.stack(cells) if cells else None), hidden, cell

    def _unpack_carry(self, parts: dict[str, Tensor]) -> tuple[Tensor, Tensor | None]:
        return parts["hidden"], parts.get("cell")

    def sequence(self, inputs: Tensor, state: Tensor, episode_starts: Tensor) -> tuple[BeliefOutput, Tensor]:
        """See :meth:`Belief.sequence`; ``mean`` is ``W h_t + b`` ``[T, B, latent_dim]``."""
        hiddens, final_hidden, final_cell = self.hidden_sequence(inputs, state, episode_starts)
        next_parts = {"hidden": final_hidden}
        if final_cell is not None:
            next_parts["cell"] = final_cell
        return BeliefOutput(mean=self.latent_head(hiddens)), self.state_layout.pack(next_parts)

    def hidden_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor | None]:
        """The recurrence's hidden outputs ``[T, B, H]`` (before the latent head) and the final hidden
        and cell ``[B, H]`` (cell None for the GRU), from the ``hidden``/``cell`` of ``state``."""
        inputs, starts = self._prepare_sequence(inputs, state, episode_starts)
        hidden, cell = self._unpack_carry(self.state_layout.unpack(state))
        hiddens, _, final_hidden, final_cell = self.recurrence(
            self.embedding(inputs), hidden, cell, starts, need_cells=False
        )
        return hiddens, final_hidden, final_cell

    def policy_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor, read: EntryIndex | None = None
    ) -> BeliefOutput:
        """See :meth:`Belief.policy_sequence`: with ``read``, the latent head runs on the read entries
        alone. Subclasses with their own :meth:`sequence` get :meth:`Belief.policy_sequence` unless
        they override this too."""
        if type(self).sequence is not RL2Belief.sequence:
            return super().policy_sequence(inputs, state, episode_starts, read)
        hiddens = self.hidden_sequence(inputs, state, episode_starts)[0]
        return BeliefOutput(mean=self.latent_head(hiddens if read is None else hiddens[read]))


#: From this batch size up, a GRU sequence with gradients runs torch's RNN call rather than
#: :class:`GRUSequence`. Forward and backward, one thread of this machine class (torch 2.13, AVX512;
#: H 128, E 64 unless said), torch's time / GRUSequence's: [T, B] = [8, 32] 1.06, [60, 32] 0.93,
#: [60, 16] 1.19, [60, 16] (H 64) 1.45, [15, 16] (H 64) 1.27, [30, 48] 0.89, [60, 64] 0.68, [8, 256] 0.66.
#: Without gradients torch's call was faster at every size (0.77-0.92).
_GRU_KERNEL_BATCH = 48


class GRUSequence(torch.autograd.Function):
    """A GRU over ``T`` steps without resets, from the input gates: ``apply(input_gates [T, B, 3H],
    hidden [B, H], weight_hh [3H, H], bias_hh [3H])`` → hidden outputs ``[T, B, H]``.

    ``input_gates = x W_ih^T + b_ih`` (:meth:`RL2Belief.gates_from_embedded`). The equations are
    ``torch.nn.GRUCell``'s: ``r, z = σ(gx_{r,z} + gh_{r,z})``, ``n = tanh(gx_n + r ⊙ gh_n)``,
    ``h' = n + z ⊙ (h - n)`` with ``gh = h W_hh^T + b_hh`` (equal to ``torch.nn.GRU`` to rounding).
    The forward runs 6 ops per step without autograd; the backward steps back through time with
    the gate derivatives precomputed for all steps at once, then forms the weight gradients with one
    matrix product each. Differentiable once (no double backward).
    """

    @staticmethod
    def forward(ctx: Any, input_gates: Tensor, hidden: Tensor, weight_hh: Tensor, bias_hh: Tensor) -> Tensor:
        size = hidden.shape[-1]
        weight_hh_t = weight_hh.t()
        initial = hidden
        hiddens = input_gates.new_empty(input_gates.shape[0], *hidden.shape)
        hidden_gates = torch.empty_like(input_gates)  # gh of every step
        reset_update = input_gates.new_empty(*input_gates.shape[:-1], 2 * size)  # r, z
        candidates = torch.empty_like(hiddens)  # n
        for step, gates_x in enumerate(input_gates.unbind(0)):
            gates_h = torch.addmm(bias_hh, hidden, weight_hh_t, out=hidden_gates[step])
            gates = torch.sigmoid(gates_x[:, : 2 * size] + gates_h[:, : 2 * size], out=reset_update[step])
            candidate = torch.tanh(
                torch.addcmul(gates_x[:, 2 * size :], gates[:, :size], gates_h[:, 2 * size :]),
                out=candidates[step],
            )
            hidden = torch.lerp(candidate, hidden, gates[:, size:], out=hiddens[step])  # n + z ⊙ (h - n)
        ctx.save_for_backward(initial, weight_hh, hidden_gates, reset_update, candidates, hiddens)
        return hiddens

    @staticmethod
    @torch.autograd.function.once_differentiable
    def backward(ctx: Any, grad_hiddens: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        initial, weight_hh, hidden_gates, reset_update, candidates, hiddens = ctx.saved_tensors
        size = initial.shape[-1]
        steps, batch = hiddens.shape[:2]
        reset, update = reset_update[..., :size], reset_update[..., size:]
        previous = torch.cat([initial.unsqueeze(0), hiddens[:-1]])
        # Per step, dL/d(pre-activation) = dL/dh' ⊙ factor, with the factors from the forward values:
        candidate_factor = (1 - update) * (1 - candidates * candidates)  # n = tanh(a)
        update_factor = (previous - candidates) * update * (1 - update)  # z = σ(.)
        # a = gx_n + r ⊙ gh_n: dL/d(pre r) = dL/da ⊙ gh_n r (1 - r), dL/d gh_n = dL/da ⊙ r (one product)
        reset_factors = torch.stack([hidden_gates[..., 2 * size :] * reset * (1 - reset), reset], dim=2)
        # Gradients of gh per step in the gate order (z, r, n): the r and n parts are adjacent.
        grad_gates = hidden_gates.new_empty(steps, batch, 3 * size)
        grad_candidate = torch.empty_like(candidates)  # dL/da = dL/d gx_n
        weight_zrn = torch.cat([weight_hh[size : 2 * size], weight_hh[:size], weight_hh[2 * size :]])
        grad = grad_hiddens[steps - 1].clone() if steps else torch.zeros_like(initial)
        for step in range(steps - 1, -1, -1):
            gates = grad_gates[step]
            candidate = torch.mul(grad, candidate_factor[step], out=grad_candidate[step])
            torch.mul(grad, update_factor[step], out=gates[:, :size])
            torch.mul(candidate.unsqueeze(1), reset_factors[step], out=gates[:, size:].view(batch, 2, size))
            carried = (
                grad * update[step]
                if step == 0
                else torch.addcmul(grad_hiddens[step - 1], grad, update[step])
            )
            grad = torch.addmm(carried, gates, weight_zrn)
        grad_update, grad_reset, grad_hidden_n = grad_gates.split(size, dim=-1)
        grad_hidden_gates = torch.cat([grad_reset, grad_update, grad_hidden_n], dim=-1)  # (r, z, n)
        grad_input_gates = torch.cat([grad_reset, grad_update, grad_candidate], dim=-1)
        flat_gates = grad_hidden_gates.flatten(0, -2)
        grad_weight_hh = flat_gates.t() @ previous.flatten(0, -2)
        return grad_input_gates, grad, grad_weight_hh, flat_gates.sum(0)


register_belief(
    "rl2",
    RL2Belief,
    prefix="RL2",
    policy_doc="""RL²: the policy conditions on a recurrent point estimate of the task.

    Belief keywords (``policy_kwargs``): ``hidden_size`` (128), ``latent_dim`` (64), ``rnn``
    (``"lstm"``/``"gru"``), ``embed_sizes`` — see :class:`~bayes_agents.beliefs.RL2Belief`.
    """,
    extractor_doc="""RL² belief (recurrent point estimate); keywords of
    :class:`~bayes_agents.beliefs.RL2Belief`.""",
)
