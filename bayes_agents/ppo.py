"""``BayesPPO``: sb3-contrib's ``RecurrentPPO`` plus the belief's auxiliary loss and statistics.

Stock ``RecurrentPPO.train()`` has no hook for an extra loss term. Rather than copying it,
``BayesPPO.train()`` runs the stock loop with two per-update hooks:

* the rollout buffer's minibatch generator is wrapped so that the policy knows each minibatch's
  padding mask, and the policy's ``evaluate_actions`` computes the belief's auxiliary loss
  (e.g. Laplace ``β·KL(q_t ‖ sg q_{t−1})``) over the unpadded steps;
* the optimizer's ``zero_grad`` is wrapped so that right after the gradients are zeroed, the
  auxiliary loss is back-propagated. The stock loop then back-propagates the PPO loss, so the
  gradients that are clipped and applied are those of ``PPO loss + auxiliary loss``.

After each update it logs the belief statistics (``belief/entropy``, ``belief/kl_to_previous``,
``belief/aux_loss``) and calls the belief's ``after_policy_update`` hook (used by beliefs that
train a model of their own on the collected trials).
"""

from __future__ import annotations

import io
from collections.abc import Iterator
from typing import Any

import torch
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from torch import Tensor

from bayes_agents.policies import (
    BeliefPolicy,
    GLiBRLPolicy,
    LaplacePolicy,
    RL2Policy,
    VariBADPolicy,
    VRNNPolicy,
)


class BayesPPO(RecurrentPPO):
    """``RecurrentPPO`` for :class:`~bayes_agents.policies.BeliefPolicy` policies.

    Same constructor as ``sb3_contrib.RecurrentPPO``; ``policy`` must be a ``BeliefPolicy``
    subclass (``RL2Policy``, ``LaplacePolicy``, ...) or its registered name.
    """

    policy_aliases = {  # noqa: RUF012
        **RecurrentPPO.policy_aliases,
        "RL2Policy": RL2Policy,
        "LaplacePolicy": LaplacePolicy,
        "VariBADPolicy": VariBADPolicy,
        "GLiBRLPolicy": GLiBRLPolicy,
        "VRNNPolicy": VRNNPolicy,
    }

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
        stock_get, stock_zero_grad = buffer.get, optimizer.zero_grad
        aux_losses: list[Tensor] = []
        entropies: list[Tensor] = []
        kls: list[Tensor] = []

        def get_with_mask(batch_size: int | None = None) -> Iterator[Any]:
            for rollout_data in stock_get(batch_size):
                policy._loss_mask = rollout_data.mask > 1e-8
                yield rollout_data

        def zero_grad_then_aux(set_to_none: bool = True) -> None:
            stock_zero_grad(set_to_none=set_to_none)
            aux_loss, policy._pending_aux_loss = policy._pending_aux_loss, None
            if aux_loss is None:
                return
            output = policy.last_belief_output
            if output is not None and output.entropy is not None and policy._loss_mask is not None:
                entropies.append(output.entropy[policy._loss_mask].mean())
                kls.append(output.kl_to_previous[policy._loss_mask].mean())
            aux_losses.append(aux_loss.detach())  # no device sync per minibatch
            if aux_loss.requires_grad:
                # The PPO loss shares this graph and is back-propagated next.
                aux_loss.backward(retain_graph=True)

        buffer.get, optimizer.zero_grad = get_with_mask, zero_grad_then_aux
        try:
            super().train()
        finally:
            del buffer.get, optimizer.zero_grad  # back to the class methods
            policy._loss_mask, policy._pending_aux_loss = None, None
        if aux_losses:
            self.logger.record("belief/aux_loss", float(torch.stack(aux_losses).mean()))
        if entropies:
            self.logger.record("belief/entropy", float(torch.stack(entropies).mean()))
            self.logger.record("belief/kl_to_previous", float(torch.stack(kls).mean()))
        hook = getattr(policy.belief, "after_policy_update", None)
        if callable(hook):
            hook(self)


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
