"""``BayesPPO``: sb3-contrib's ``RecurrentPPO`` plus the belief's auxiliary loss and statistics.

Stock ``RecurrentPPO.train()`` has no hook for an extra loss term. Rather than copying it,
``BayesPPO.train()`` runs the stock loop with two per-update hooks:

* the rollout buffer's minibatch generator is wrapped so that the policy knows each minibatch's
  padding mask, and the policy's ``evaluate_actions`` computes the belief's auxiliary loss
  (e.g. Laplace ``β·KL(q_t ‖ sg q_{t−1})``) over the unpadded steps;
* ``evaluate_actions`` is wrapped so that the log-probabilities it returns carry the auxiliary loss's
  gradient: back-propagating any loss built on them also back-propagates the auxiliary loss (with
  weight 1), so the stock loop's single ``loss.backward()`` yields the gradients of ``PPO loss +
  auxiliary loss``, which are clipped and applied (one backward pass through the recurrence, not two);
* the optimizer's ``zero_grad`` is wrapped to record the belief statistics of each applied minibatch.

For a Laplace-VRNN belief the stop-gradient part of the posterior is by default not recomputed for
every minibatch of every epoch (``reuse_rollout_precision=True``). That part is everything but the
mean: the precision ``Λ_t`` (window Jacobians, ~2M flops per step), its Cholesky factor, the entropy,
the mean-independent KL terms and the posterior-sample offsets ``L^{-T}ε``. The rollout computes all
of it at every step; ``collect_rollouts`` keeps what the update needs (``Λ_{t-1}``, the KL offset,
the entropy and the sample offsets, in the buffer's row order) and every minibatch takes its rows of
it. Only the mean ``μ_t`` is recomputed, with its gradients: the KL penalty ``½ δᵀ Λ_{t-1} δ`` through
``δ = μ_t - μ_{t-1}`` and the latent samples ``μ_t + L^{-T}ε``, both exact. The precision is thus
that of the rollout-time weights in every epoch, as PPO's old log-probabilities are (it carries no
gradient either way; in the first minibatch, whose weights are the rollout's, the two agree to
rounding). Without a record of the buffered rollout (e.g. ``train()`` called twice on one buffer) the
terms are rebuilt once from the belief states the buffer stored, whose ``data_precision`` is the
rollout's. In this mode the minibatch's belief output has no ``precision``/``precision_cholesky``
(nothing in the update reads them) and ``kl_to_previous``/``entropy`` are 0 at padding.
``reuse_rollout_precision=False`` recomputes everything from the current weights (what stock
``RecurrentPPO`` does).

Two buffer economies apply to every belief policy: its critic states are its actor states (one
belief), so the buffer's second copy of them is dropped after each rollout; and during ``train()``
SB3's minibatch sampler is handed row ids in place of the stored states (it copies every row's
state, then keeps the sequence starts), and each sampled minibatch gets the real states of its
sequence starts. The buffer's arrays are restored afterwards.

After each update it logs the belief statistics (``belief/entropy``, ``belief/kl_to_previous``,
``belief/aux_loss``) and calls the belief's ``after_policy_update`` hook (used by beliefs that
train a model of their own on the collected trials).
"""

from __future__ import annotations

import contextlib
import inspect
import io
from collections.abc import Iterator
from typing import Any

import numpy as np
import torch
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.utils import LinearSchedule
from torch import Tensor

from bayes_agents.beliefs import BeliefOutput, LaplaceBelief
from bayes_agents.policies import (
    BeliefPolicy,
    GLiBRLPolicy,
    LaplacePolicy,
    MinibatchCache,
    RL2Policy,
    VariBADPolicy,
    VRNNPolicy,
    next_noise_keys,
)

#: Positions of RecurrentPPO's constructor arguments (after ``self``), for positional schedules.
_POSITIONS = {
    name: index - 1 for index, name in enumerate(inspect.signature(RecurrentPPO.__init__).parameters)
}
#: Constructor arguments that may be given as a schedule string (see :func:`resolve_schedule`).
SCHEDULE_ARGUMENTS = ("learning_rate", "clip_range", "clip_range_vf")


def resolve_schedule(name: str, value: Any) -> Any:
    """``"lin_<v>"`` (rl-baselines3-zoo's notation) → a schedule decaying linearly from ``v`` to 0 over
    the ``learn`` call's budget; numbers, callables and ``None`` are returned unchanged.

    Strings keep configs (YAML/JSON, ``bayes-rl --set``) serialisable. Raises ``ValueError`` naming
    ``name`` for any other string.
    """
    if not isinstance(value, str):
        return value
    prefix, _, number = value.partition("_")
    try:
        start = float(number)
    except ValueError:
        start = None
    if prefix != "lin" or start is None or not start > 0:
        raise ValueError(f'{name} must be a number, a schedule or "lin_<value > 0>", got {value!r}')
    return LinearSchedule(start, 0.0, 1.0)


def resolve_schedules(ppo_kwargs: dict[str, Any]) -> dict[str, Any]:
    """A copy of ``ppo_kwargs`` with the schedule strings of :data:`SCHEDULE_ARGUMENTS` resolved, for
    algorithms that take only numbers or callables (e.g. SB3's ``PPO`` with the package defaults)."""
    return {
        name: resolve_schedule(name, value) if name in SCHEDULE_ARGUMENTS else value
        for name, value in ppo_kwargs.items()
    }


class BayesPPO(RecurrentPPO):
    """``RecurrentPPO`` for :class:`~bayes_agents.policies.BeliefPolicy` policies.

    Same constructor as ``sb3_contrib.RecurrentPPO``; ``policy`` must be a ``BeliefPolicy``
    subclass (``RL2Policy``, ``LaplacePolicy``, ...) or its registered name.

    :param reuse_rollout_precision: for a Laplace belief, take the stop-gradient posterior terms of
        every step (precision, Cholesky factor, entropy, mean-independent KL terms) from the
        precisions the rollout computed, once per update, instead of recomputing them from the
        current weights for every minibatch (see the module docstring). True by default; False gives
        the exact recompute. No effect for other beliefs.

    ``learning_rate``, ``clip_range`` and ``clip_range_vf`` also accept ``"lin_<v>"``: a linear decay
    from ``v`` to 0 over the budget of ``learn`` (see :func:`resolve_schedule`).
    """

    policy_aliases = {  # noqa: RUF012
        **RecurrentPPO.policy_aliases,
        "RL2Policy": RL2Policy,
        "LaplacePolicy": LaplacePolicy,
        "VariBADPolicy": VariBADPolicy,
        "GLiBRLPolicy": GLiBRLPolicy,
        "VRNNPolicy": VRNNPolicy,
    }

    def __init__(self, *args: Any, reuse_rollout_precision: bool = True, **kwargs: Any) -> None:
        if not isinstance(reuse_rollout_precision, bool):
            raise TypeError(f"reuse_rollout_precision must be a bool, got {reuse_rollout_precision!r}")
        self.reuse_rollout_precision = reuse_rollout_precision
        args = list(args)
        for name in SCHEDULE_ARGUMENTS:
            position = _POSITIONS[name]
            if name in kwargs:
                kwargs[name] = resolve_schedule(name, kwargs[name])
            elif len(args) > position:
                args[position] = resolve_schedule(name, args[position])
        super().__init__(*args, **kwargs)

    # The signature that introspection (e.g. the config keys of bayes_agents.experiment) sees:
    # RecurrentPPO's parameters plus the keyword above.
    __init__.__signature__ = inspect.signature(RecurrentPPO.__init__).replace(  # type: ignore[attr-defined]
        parameters=[
            *inspect.signature(RecurrentPPO.__init__).parameters.values(),
            inspect.Parameter(
                "reuse_rollout_precision", inspect.Parameter.KEYWORD_ONLY, default=True, annotation="bool"
            ),
        ]
    )

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy, BeliefPolicy):
            raise TypeError(
                f"BayesPPO needs a BeliefPolicy (e.g. RL2Policy, LaplacePolicy), got {type(self.policy)}"
            )
        # Distinct posterior-sample noise streams per env (the stock algorithm starts all at key 0).
        generator = torch.Generator().manual_seed(self.seed if self.seed is not None else 0)
        slots = self.policy.randomize_noise_keys(self._last_lstm_states.pi, generator)
        self._last_lstm_states = RNNStates(slots, slots)

    def train(self) -> None:
        policy: BeliefPolicy = self.policy  # type: ignore[assignment]
        buffer, optimizer = self.rollout_buffer, policy.optimizer
        stock_get, stock_zero_grad, stock_evaluate = buffer.get, optimizer.zero_grad, policy.evaluate_actions
        aux_losses: list[Tensor] = []
        entropies: list[Tensor] = []
        kls: list[Tensor] = []

        def get_with_mask(batch_size: int | None = None) -> Iterator[Any]:
            for rollout_data in stock_get(batch_size):
                policy._loss_mask = rollout_data.mask > 1e-8
                yield rollout_data

        def evaluate_with_aux(*args: Any, **kwargs: Any) -> tuple[Tensor, Tensor, Tensor]:
            values, log_prob, entropy = stock_evaluate(*args, **kwargs)
            aux_loss = policy._pending_aux_loss
            if aux_loss is not None and aux_loss.requires_grad:
                log_prob = _AddGradient.apply(log_prob, aux_loss)
            return values, log_prob, entropy

        def zero_grad_and_record(set_to_none: bool = True) -> None:
            # Called once per applied minibatch, after evaluate_actions: record its statistics.
            stock_zero_grad(set_to_none=set_to_none)
            aux_loss, policy._pending_aux_loss = policy._pending_aux_loss, None
            if aux_loss is None:
                return
            output = policy.last_belief_output
            if output is not None and output.entropy is not None and policy._loss_mask is not None:
                entropies.append(output.entropy[policy._loss_mask].mean())
                kls.append(output.kl_to_previous[policy._loss_mask].mean())
            aux_losses.append(aux_loss.detach())  # no device sync per minibatch

        reuse = self.reuse_rollout_precision and isinstance(policy.belief, LaplaceBelief)
        with contextlib.ExitStack() as patches:
            patches.enter_context(_patched(buffer, "get", get_with_mask))
            patches.enter_context(_patched(optimizer, "zero_grad", zero_grad_and_record))
            patches.enter_context(_patched(policy, "evaluate_actions", evaluate_with_aux))
            rows = self._rollout_rows() if reuse else None
            states = patches.enter_context(_StatesById.swapped_in(buffer))
            stock_get_samples = buffer._get_samples

            def get_samples(batch_inds: np.ndarray, *args: Any, **kwargs: Any) -> Any:
                samples = stock_get_samples(batch_inds, *args, **kwargs)
                if rows is not None:
                    padded_rows = _padded_rows(batch_inds, buffer.seq_start_indices)
                    policy._minibatch_cache = rows.minibatch(padded_rows)
                return states.with_states(samples)

            patches.enter_context(_patched(buffer, "_get_samples", get_samples))
            try:
                super().train()
            finally:
                policy._loss_mask, policy._pending_aux_loss, policy._minibatch_cache = None, None, None
                self._rollout_record = None  # release the record (a later call uses the buffer's states)
        if aux_losses:
            self.logger.record("belief/aux_loss", float(torch.stack(aux_losses).mean()))
        if entropies:
            self.logger.record("belief/entropy", float(torch.stack(entropies).mean()))
            self.logger.record("belief/kl_to_previous", float(torch.stack(kls).mean()))
        hook = getattr(policy.belief, "after_policy_update", None)
        if callable(hook):
            hook(self)

    def collect_rollouts(self, *args: Any, **kwargs: Any) -> bool:
        """``RecurrentPPO.collect_rollouts``; for a Laplace belief with ``reuse_rollout_precision`` the
        stop-gradient terms of every step are also kept for ``train()``, as the rollout computed them."""
        policy: BeliefPolicy = self.policy  # type: ignore[assignment]
        self._rollout_record = None
        if self.reuse_rollout_precision and isinstance(policy.belief, LaplaceBelief):
            policy._rollout_record = _RolloutRecorder(self.n_steps)
        try:
            complete = super().collect_rollouts(*args, **kwargs)
        finally:
            self._rollout_record, policy._rollout_record = policy._rollout_record, None
        # A belief policy's critic states are its actor states (one belief): drop the buffer's second
        # copy, which every minibatch would otherwise gather (the Laplace state holds an [L, L] matrix).
        buffer = self.rollout_buffer
        buffer.hidden_states_vf = buffer.hidden_states_pi[..., :0]
        buffer.cell_states_vf = buffer.cell_states_pi[..., :0]
        return complete

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_rollout_record"]

    def _rollout_rows(self) -> _RolloutRows:
        """The stop-gradient Laplace terms of every buffered step, as rows in the buffer's own
        (env-major) order: as the rollout recorded them, or, if there is no complete record of this
        buffer's rollout, from the belief states the buffer stored
        (:meth:`~bayes_agents.beliefs.LaplaceBelief.terms_from_states`)."""
        buffer, policy = self.rollout_buffer, self.policy
        belief: LaplaceBelief = policy.belief
        n_steps, n_envs = buffer.buffer_size, buffer.n_envs
        record = getattr(self, "_rollout_record", None)
        if record is not None and record.complete(n_steps, n_envs):
            return record.rows()
        hidden, cell = buffer.hidden_states_pi, buffer.cell_states_pi
        if buffer.generator_ready:  # get() has flattened them env-major: [n_envs * n_steps, 1, slot]
            hidden, cell = (array.reshape(n_envs, n_steps, -1) for array in (hidden, cell))
            starts = buffer.episode_starts.reshape(n_envs, n_steps)
        else:  # as stored: [n_steps, 1, n_envs, slot]
            hidden, cell = (array[:, 0].swapaxes(0, 1) for array in (hidden, cell))
            starts = buffer.episode_starts.T
        device = policy.device
        starts = torch.as_tensor(np.ascontiguousarray(starts), device=device).reshape(-1) > 0.5
        hidden, cell = (
            torch.as_tensor(np.ascontiguousarray(array), device=device) for array in (hidden, cell)
        )
        before, keys = policy.unpack_state(
            (hidden.swapaxes(0, 1).flatten(0, 1)[None], cell.swapaxes(0, 1).flatten(0, 1)[None])
        )  # step-major
        after_last, _ = policy.unpack_state(self._last_lstm_states.pi)
        states = torch.cat([before.view(n_steps, n_envs, -1), after_last.unsqueeze(0)])
        terms = belief.terms_from_states(states, starts.view(n_envs, n_steps).T)
        terms = terms.apply(lambda value: value.swapaxes(0, 1).flatten(0, 1))  # env-major
        sample_offsets = None
        if policy.n_samples > 0:  # the noise of each step, as the rollout drew it
            keys = keys.view(n_steps, n_envs).T.reshape(-1)
            step_keys, _ = next_noise_keys(keys, starts.view(1, -1))
            sample_offsets = policy.sample_offsets(terms.precision, terms.precision_cholesky, step_keys[0])
        return _RolloutRows(terms.previous_precision, terms.kl_offset, terms.entropy, sample_offsets)


class _RolloutRecorder:
    """Keeps the stop-gradient Laplace terms of each rollout step (``add``, called by the policy's
    ``forward``) in env-major tensors ``[n_envs, n_steps, ..]``, the row order of the rollout buffer,
    so that ``train()`` can use them as they are (see :class:`_RolloutRows`)."""

    def __init__(self, n_steps: int) -> None:
        self.n_steps, self.steps = n_steps, 0
        self.fields: dict[str, Tensor] = {}

    def add(self, output: BeliefOutput, sample_offsets: Tensor | None) -> None:
        if self.steps >= self.n_steps:
            raise RuntimeError(f"more rollout steps than n_steps = {self.n_steps}")
        values = {
            "previous_precision": output.previous_precision,
            "kl_offset": output.kl_offset,
            "entropy": output.entropy,
        }
        if sample_offsets is not None:
            values["sample_offsets"] = sample_offsets.transpose(0, 1)  # [n_envs, n_samples, L]
        for name, value in values.items():
            if name not in self.fields:
                self.fields[name] = value.new_empty(value.shape[0], self.n_steps, *value.shape[1:])
            self.fields[name][:, self.steps] = value
        self.steps += 1

    def complete(self, n_steps: int, n_envs: int) -> bool:
        return self.steps == n_steps == self.n_steps and self.fields["entropy"].shape[0] == n_envs

    def rows(self) -> _RolloutRows:
        fields = {name: value.flatten(0, 1) for name, value in self.fields.items()}  # views
        sample_offsets = fields.get("sample_offsets")
        if sample_offsets is not None:
            sample_offsets = sample_offsets.transpose(0, 1)  # [n_samples, rows, L]
        return _RolloutRows(
            fields["previous_precision"], fields["kl_offset"], fields["entropy"], sample_offsets
        )


class _RolloutRows:
    """Per buffered step (rows in the buffer's env-major order) the Laplace terms a minibatch needs:
    ``previous_precision``, ``kl_offset``, ``entropy`` and (if the policy samples) the posterior-sample
    offsets ``[n_samples, rows, L]``."""

    def __init__(
        self, previous_precision: Tensor, kl_offset: Tensor, entropy: Tensor, sample_offsets: Tensor | None
    ) -> None:
        self.previous_precision, self.kl_offset, self.entropy = previous_precision, kl_offset, entropy
        self.sample_offsets = sample_offsets

    def minibatch(self, padded_rows: np.ndarray) -> MinibatchCache:
        """The cache of the minibatch whose padded layout holds buffer rows ``padded_rows`` (-1: padding)."""
        device = self.kl_offset.device
        valid = np.flatnonzero(padded_rows >= 0)
        rows = padded_rows[valid]
        # Runs of consecutive buffer rows are views of previous_precision: no copy of the [L, L] factors.
        breaks = np.flatnonzero(np.diff(rows) != 1) + 1
        blocks = tuple(
            self.previous_precision[block[0] : block[0] + len(block)] for block in np.split(rows, breaks)
        )
        valid_t, rows_t = torch.as_tensor(valid, device=device), torch.as_tensor(rows, device=device)
        sample_offsets = None
        if self.sample_offsets is not None:
            samples, _, latent = self.sample_offsets.shape
            sample_offsets = self.sample_offsets.new_zeros(samples, len(padded_rows), latent)
            sample_offsets[:, valid_t] = self.sample_offsets[:, rows_t]
        return MinibatchCache(
            valid=valid_t,
            previous_precisions=blocks,
            kl_offset=self.kl_offset[rows_t],
            entropy=self.entropy[rows_t],
            sample_offsets=sample_offsets,
        )


class _StatesById:
    """Hands SB3's minibatch sampler row ids in place of the belief states it stores per step, and the
    sampled minibatch the real states of its sequence starts: ``_get_samples`` copies the state of
    every row of a minibatch before it keeps the ``n_seq`` sequence starts, which for a large state
    (a Laplace state holds an ``[L, L]`` matrix) costs more than the update's belief pass.

    The ids are the buffer's env-major row indices ``e * n_steps + t`` (float32, exact below 2**24).
    """

    def __init__(self, buffer: Any) -> None:
        self.buffer = buffer
        self.hidden, self.cell = buffer.hidden_states_pi, buffer.cell_states_pi
        self.flat = buffer.generator_ready  # get() has flattened them: [n_envs * n_steps, 1, slot]
        n_steps, n_envs = buffer.buffer_size, buffer.n_envs
        ids = np.arange(n_envs * n_steps, dtype=np.float32)
        if self.flat:
            ids = ids.reshape(-1, 1, 1)
        else:  # as stored: [n_steps, 1, n_envs, 1]
            ids = ids.reshape(n_envs, n_steps).T.reshape(n_steps, 1, n_envs, 1)
        buffer.hidden_states_pi, buffer.cell_states_pi = ids, ids[..., :0]

    @classmethod
    @contextlib.contextmanager
    def swapped_in(cls, buffer: Any) -> Iterator[_StatesById]:
        """The ids in the buffer for the duration, then the real states (in the layout get() left)."""
        states = cls(buffer)
        try:
            yield states
        finally:
            states.restore()

    def with_states(self, samples: Any) -> Any:
        """``samples`` of ``_get_samples`` with the real states of its sequence starts."""
        ids = samples.lstm_states.pi[0][0, :, 0].round().to(torch.int64).cpu().numpy()
        if self.flat:
            hidden, cell = self.hidden[ids, 0], self.cell[ids, 0]
        else:
            env, step = np.divmod(ids, self.buffer.buffer_size)
            hidden, cell = self.hidden[step, 0, env], self.cell[step, 0, env]
        device = samples.lstm_states.pi[0].device
        slots = (torch.as_tensor(hidden, device=device)[None], torch.as_tensor(cell, device=device)[None])
        return samples._replace(lstm_states=RNNStates(slots, slots))

    def restore(self) -> None:
        buffer = self.buffer
        if buffer.generator_ready and not self.flat:  # as get() flattens the arrays it holds
            self.hidden, self.cell = (
                buffer.swap_and_flatten(a.swapaxes(1, 2)) for a in (self.hidden, self.cell)
            )
        buffer.hidden_states_pi, buffer.cell_states_pi = self.hidden, self.cell


class _AddGradient(torch.autograd.Function):
    """``tensor`` unchanged, but back-propagating through it also back-propagates the scalar ``extra``
    with weight 1: the gradient of any loss built on the output gains ``∇ extra``, in the same
    backward pass (one pass through the shared recurrence instead of two)."""

    @staticmethod
    def forward(ctx: Any, tensor: Tensor, extra: Tensor) -> Tensor:
        ctx.extra_shape = extra.shape
        return tensor.clone()

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> tuple[Tensor, Tensor]:
        return grad, grad.new_ones(ctx.extra_shape)


@contextlib.contextmanager
def _patched(target: Any, name: str, value: Any) -> Iterator[None]:
    """Set ``target.name = value`` (an instance attribute), then restore the previous one, if any."""
    missing = object()
    previous = vars(target).get(name, missing)
    setattr(target, name, value)
    try:
        yield
    finally:
        if previous is missing:
            delattr(target, name)
        else:
            setattr(target, name, previous)


def _padded_rows(batch_inds: np.ndarray, seq_start_indices: np.ndarray) -> np.ndarray:
    """Buffer rows of SB3's padded minibatch layout ``[n_seq * max_length]`` (sequence-major), ``-1``
    for padding: sequence ``j`` covers ``batch_inds[seq_start_indices[j] : seq_start_indices[j + 1]]``,
    padded to the longest sequence (as ``RecurrentRolloutBuffer._get_samples`` pads)."""
    lengths = np.diff(np.append(seq_start_indices, len(batch_inds)))
    offsets = np.arange(lengths.max())
    positions = np.minimum(seq_start_indices[:, None] + offsets, len(batch_inds) - 1)
    return np.where(offsets < lengths[:, None], batch_inds[positions], -1).reshape(-1)


def laplace_from_rl2(model: RecurrentPPO, **laplace_kwargs: Any) -> RecurrentPPO:
    """Turn a trained RL² model into a Laplace-VRNN model with the same weights and no training.

    The Laplace head is put on the RL² recurrence post hoc (the Laplace-VRNN paper's main use):
    every weight is copied, so with ``n_samples=0`` (posterior mean, the default here) and a
    ``stationary`` or ``sum_precision`` variant the actions are exactly the RL² actions, while the
    policy now reports a posterior (entropy, KL between consecutive posteriors).

    :param model: a ``RecurrentPPO``/``BayesPPO`` model whose policy is an :class:`RL2Policy`.
    :param laplace_kwargs: Laplace keywords (``window``, ``covariance``, ``variant``, ``damping``,
        ``beta``, ``n_samples``); the RL² architecture keywords are kept.
    :return: a model of the same class with a :class:`LaplacePolicy`, on the same env.
    """
    if not isinstance(model.policy, RL2Policy) or isinstance(model.policy, LaplacePolicy):
        raise TypeError(
            f"laplace_from_rl2 needs a model with an RL2Policy, got {type(model.policy).__name__}"
        )
    architecture = {"hidden_size", "latent_dim", "rnn", "embed_sizes", "negative_slope"}
    overlap = architecture & set(laplace_kwargs)
    if overlap:
        raise ValueError(f"the RL² architecture is kept; do not pass {sorted(overlap)}")
    policy_kwargs = {**model.policy_kwargs, "n_samples": 0, **laplace_kwargs}
    buffer = io.BytesIO()
    model.save(buffer)
    buffer.seek(0)
    return type(model).load(
        buffer,
        env=model.get_env(),
        device=model.device,
        custom_objects={"policy_class": LaplacePolicy, "policy_kwargs": policy_kwargs},
    )
