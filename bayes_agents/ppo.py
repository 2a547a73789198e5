"""``BayesPPO``: sb3-contrib's ``RecurrentPPO`` plus the belief's auxiliary loss and statistics.

``BayesPPO`` extends ``RecurrentPPO`` the way ``RecurrentPPO`` extends ``PPO``: it overrides
``collect_rollouts()`` and ``train()`` (and owns its rollout buffer), nothing is patched at run time.

* ``collect_rollouts()`` acts through the policy's fused acting step (:meth:`BeliefPolicy.act`: belief
  step, heads, sampling, log-probability and value in one ``torch.inference_mode`` call), bootstraps
  time-limit truncations with one batched value pass, and stores each step in a
  :class:`BeliefRolloutBuffer` (preallocated by SB3's buffer).
* ``train()`` is PPO's clipped-surrogate update over the buffer's padded sequence minibatches, read top
  to bottom: per minibatch the PPO loss plus the belief's auxiliary loss (e.g. Laplace
  ``β·KL(q_t ‖ sg q_{t−1})``, masked to the unpadded steps) in one backward pass, gradient clipping,
  one optimizer step; it logs the keys stock ``RecurrentPPO`` logs (``train/loss`` is the PPO loss,
  as there; early stop at ``1.5·target_kl``), plus ``belief/aux_loss``, ``belief/entropy`` and
  ``belief/kl_to_previous``, then calls the belief's ``after_policy_update(model)`` hook (beliefs that
  train a model of their own on the collected trials; ``before_policy_update(model)`` is called
  first thing, for those that train it before the update reads them).

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
``reuse_rollout_precision=False`` recomputes everything from the current weights. (Under the stock
``RecurrentPPO`` the policy's own ``reuse_rollout_precision`` does the same through a verified rollout
record, :class:`~bayes_agents.policies.RolloutTermsCache`.)

A belief that the update does not train (``fixed_during_policy_update``: VariBAD, whose encoder
gets no RL gradient and trains in its own VAE step after the update) gives the same output in every
epoch: ``train()`` runs it once over the whole rollout, from each env's state before the rollout
and through its trial starts, and every minibatch takes its rows of that output (only the policy and
value heads run per minibatch): on the grid (16 envs) the per-minibatch passes were about a fifth
of VariBAD's training time.

Buffer economies (:class:`BeliefRolloutBuffer`): a belief policy's critic states are its actor states
(one belief), so the buffer keeps one copy of them; and a minibatch gathers the states of its
sequence starts only (SB3's sampler copies every row's state, then keeps the starts; a Laplace state
holds an ``[L, L]`` matrix); the arrays become tensors once per pass over the buffer (views on a CPU)
and each minibatch gathers its padded rows from them, with ``valid``, the index of its unpadded steps,
through which the loss terms are averaged.

Update economies (same numbers to rounding): SB3's default Adam is replaced by torch's fused Adam
(one kernel for all parameters) when no implementation was chosen in ``optimizer_kwargs`` and torch
has the kernel; the parameter list for gradient clipping is built once per ``train()``.

Tested with stable-baselines3 / sb3-contrib 2.4 to 2.9 (see ``pyproject.toml``).
"""

from __future__ import annotations

import inspect
import io
from collections.abc import Callable
from typing import Any, NamedTuple

import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib import RecurrentPPO
from sb3_contrib.common.recurrent.buffers import (
    RecurrentDictRolloutBuffer,
    RecurrentRolloutBuffer,
    create_sequencers,
)
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.buffers import DictRolloutBuffer, RolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from stable_baselines3.common.utils import explained_variance, obs_as_tensor
from stable_baselines3.common.vec_env import VecEnv
from torch import Tensor

from bayes_agents.beliefs import BeliefOutput, LaplaceBelief
from bayes_agents.beliefs.base import check_optional_int, rollout_inputs
from bayes_agents.policies import (
    POLICY_ALIASES,
    BeliefPolicy,
    LaplacePolicy,
    MinibatchCache,
    RL2Policy,
    next_noise_keys,
)

# LinearDecay stays importable from here: models saved before it moved pickle it by this path.
from bayes_agents.schedules import LinearDecay, resolve_schedule  # noqa: F401

#: Positions of RecurrentPPO's constructor arguments (after ``self``), for positional schedules.
_POSITIONS = {
    name: index - 1 for index, name in enumerate(inspect.signature(RecurrentPPO.__init__).parameters)
}
#: Constructor arguments that may be given as a schedule string (see :func:`resolve_schedule`).
SCHEDULE_ARGUMENTS = ("learning_rate", "clip_range", "clip_range_vf")


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
        current weights for every minibatch (see the module docstring); for a belief that the update
        does not train (:attr:`~bayes_agents.beliefs.Belief.fixed_during_policy_update`: VariBAD), run
        it once over the rollout instead of once per minibatch of every epoch. True by default; False
        gives the recompute per minibatch. No effect for other beliefs.
    :param sequence_length: cut each env's rollout into training sequences of at most this many
        steps, each starting from the belief state the rollout stored before its first step
        (truncated backpropagation through time, as SB3's recurrent buffer does at minibatch
        boundaries). None (default): sequences are cut only at trial starts and minibatch
        boundaries. Long thin sequences (MuJoCo: 400-step trials, 4 envs per minibatch) run the
        recurrence step by step over a small batch; shorter ones batch many sequences per step.
        The first epoch's first minibatch sees the same values either way; the gradients stop at
        the cuts. A belief the update runs once over the rollout (VariBAD) is not affected.

    ``learning_rate``, ``clip_range``, ``clip_range_vf`` and ``ent_coef`` also accept ``"lin_<v>"``: a
    linear decay from ``v`` to 0 over the budget of ``learn`` (see :func:`resolve_schedule`);
    ``ent_coef`` also a schedule (a callable of SB3's ``progress_remaining``), read at each update.
    """

    # Every registered belief's policy by name (bayes_agents.beliefs.registry).
    policy_aliases = {**RecurrentPPO.policy_aliases, **POLICY_ALIASES}  # noqa: RUF012

    def __init__(
        self,
        *args: Any,
        reuse_rollout_precision: bool = True,
        sequence_length: int | None = None,
        **kwargs: Any,
    ) -> None:
        if not isinstance(reuse_rollout_precision, bool):
            raise TypeError(f"reuse_rollout_precision must be a bool, got {reuse_rollout_precision!r}")
        self.reuse_rollout_precision = reuse_rollout_precision
        self.sequence_length = check_optional_int("sequence_length", sequence_length)
        args = list(args)
        for name in SCHEDULE_ARGUMENTS:
            position = _POSITIONS[name]
            if name in kwargs:
                kwargs[name] = resolve_schedule(name, kwargs[name])
            elif len(args) > position:
                args[position] = resolve_schedule(name, args[position])
        # SB3's PPO takes a float entropy coefficient: a schedule is kept aside and read by train().
        ent_coef = resolve_schedule("ent_coef", kwargs.get("ent_coef", 0.0))
        self.ent_coef_schedule: Callable[[float], float] | None = ent_coef if callable(ent_coef) else None
        if self.ent_coef_schedule is not None:
            kwargs["ent_coef"] = float(self.ent_coef_schedule(1.0))
        super().__init__(*args, **kwargs)

    def current_ent_coef(self) -> float:
        """The entropy coefficient of the coming update: ``ent_coef``, or its schedule at the fraction
        of the ``learn`` budget left."""
        if getattr(self, "ent_coef_schedule", None) is None:  # models saved before schedules
            return float(self.ent_coef)
        return float(self.ent_coef_schedule(self._current_progress_remaining))

    # The signature that introspection (e.g. the config keys of bayes_agents.experiment) sees:
    # RecurrentPPO's parameters plus the keywords above.
    __init__.__signature__ = inspect.signature(RecurrentPPO.__init__).replace(  # type: ignore[attr-defined]
        parameters=[
            *inspect.signature(RecurrentPPO.__init__).parameters.values(),
            inspect.Parameter(
                "reuse_rollout_precision", inspect.Parameter.KEYWORD_ONLY, default=True, annotation="bool"
            ),
            inspect.Parameter(
                "sequence_length", inspect.Parameter.KEYWORD_ONLY, default=None, annotation="int | None"
            ),
        ]
    )

    def _setup_model(self) -> None:
        super()._setup_model()
        if not isinstance(self.policy, BeliefPolicy):
            raise TypeError(
                f"BayesPPO needs a BeliefPolicy (e.g. RL2Policy, LaplacePolicy), got {type(self.policy)}"
            )
        dict_obs = isinstance(self.observation_space, spaces.Dict)
        buffer_class = BeliefDictRolloutBuffer if dict_obs else BeliefRolloutBuffer
        self.rollout_buffer = buffer_class(
            self.n_steps,
            self.observation_space,
            self.action_space,
            (self.n_steps, 1, self.n_envs, self.policy.lstm_actor.hidden_size),
            self.device,
            gamma=self.gamma,
            gae_lambda=self.gae_lambda,
            n_envs=self.n_envs,
        )
        self.rollout_buffer.sequence_length = self.sequence_length
        self._rollout_record: _RolloutRecorder | None = None
        _use_fused_adam(self.policy)
        # Distinct posterior-sample noise streams per env (the stock algorithm starts all at key 0).
        generator = torch.Generator().manual_seed(self.seed if self.seed is not None else 0)
        slots = self.policy.randomize_noise_keys(self._last_lstm_states.pi, generator)
        self._last_lstm_states = RNNStates(slots, slots)

    def collect_rollouts(
        self,
        env: VecEnv,
        callback: BaseCallback,
        rollout_buffer: BeliefRolloutBuffer | BeliefDictRolloutBuffer,
        n_rollout_steps: int,
    ) -> bool:
        """Fill ``rollout_buffer`` with ``n_rollout_steps`` steps of every env (see the module docstring).

        :return: False if a callback stopped the rollout early, else True.
        """
        assert self._last_obs is not None, "No previous observation was provided"
        policy: BeliefPolicy = self.policy  # type: ignore[assignment]
        policy.set_training_mode(False)
        rollout_buffer.reset()
        callback.on_rollout_start()
        self._rollout_record = None
        recorder = None
        if self.reuse_rollout_precision and isinstance(policy.belief, LaplaceBelief):
            recorder = _RolloutRecorder(n_rollout_steps)
        box = isinstance(self.action_space, spaces.Box)
        slots = self._last_lstm_states.pi
        n_steps = 0
        while n_steps < n_rollout_steps:
            obs = obs_as_tensor(self._last_obs, self.device)
            starts = torch.as_tensor(self._last_episode_starts, dtype=torch.float32, device=self.device)
            actions, values, log_probs, next_slots = policy.act(
                obs, slots, starts, record=None if recorder is None else recorder.add
            )
            actions = actions.cpu().numpy()
            clipped = np.clip(actions, self.action_space.low, self.action_space.high) if box else actions
            new_obs, rewards, dones, infos = env.step(clipped)
            self.num_timesteps += env.num_envs
            callback.update_locals(locals())
            if not callback.on_step():
                return False
            self._update_info_buffer(infos, dones)
            n_steps += 1
            if not box:
                actions = actions.reshape(-1, 1)
            # A trial cut by a time limit is bootstrapped with the value of its last observation, in
            # the state after this step (as RecurrentPPO does; one batched pass for all such envs).
            truncated = [
                index
                for index in np.flatnonzero(dones)
                if infos[index].get("terminal_observation") is not None
                and infos[index].get("TimeLimit.truncated", False)
            ]
            if truncated:
                rewards = rewards + self.gamma * self._terminal_values(infos, truncated, next_slots, rewards)
            rollout_buffer.add(
                self._last_obs, actions, rewards, self._last_episode_starts, values, log_probs, slots=slots
            )
            self._last_obs, self._last_episode_starts, slots = new_obs, dones, next_slots
            self._last_lstm_states = RNNStates(slots, slots)  # as RecurrentPPO: callbacks may read it

        slots = tuple(slot.clone() for slot in slots)  # normal tensors (act returns inference tensors)
        self._last_lstm_states = RNNStates(slots, slots)
        with torch.inference_mode():
            starts = torch.as_tensor(dones, dtype=torch.float32, device=self.device)
            values = policy.predict_values(obs_as_tensor(new_obs, self.device), slots, starts)
        rollout_buffer.compute_returns_and_advantage(last_values=values, dones=dones)
        self._rollout_record = recorder
        callback.on_rollout_end()
        return True

    def _terminal_values(
        self,
        infos: list[dict[str, Any]],
        indices: list[int],
        slots: tuple[Tensor, Tensor],
        rewards: np.ndarray,
    ) -> np.ndarray:
        """Values of the terminal observations of envs ``indices`` in their states ``slots``, as an
        array shaped like ``rewards`` (0 elsewhere)."""
        terminal = [infos[index]["terminal_observation"] for index in indices]
        if isinstance(terminal[0], dict):
            stacked: Any = {key: np.stack([obs[key] for obs in terminal]) for key in terminal[0]}
        else:
            stacked = np.stack(terminal)
        obs = self.policy.obs_to_tensor(stacked)[0]
        rows = torch.as_tensor(indices, device=self.device)
        state = (slots[0][:, rows], slots[1][:, rows])
        with torch.inference_mode():
            values = self.policy.predict_values(obs, state, torch.zeros(len(indices), device=self.device))
        bootstrap = np.zeros_like(rewards)
        bootstrap[indices] = values[:, 0].cpu().numpy()
        return bootstrap

    def train(self) -> None:
        """One PPO update on the buffered rollout (see the module docstring)."""
        policy: BeliefPolicy = self.policy  # type: ignore[assignment]
        policy.set_training_mode(True)
        self._update_learning_rate(policy.optimizer)
        policy.belief.before_policy_update(self)
        clip_range = self.clip_range(self._current_progress_remaining)
        ent_coef = self.current_ent_coef()
        clip_range_vf = None
        if self.clip_range_vf is not None:
            clip_range_vf = self.clip_range_vf(self._current_progress_remaining)
        rows = None
        if self.reuse_rollout_precision and isinstance(policy.belief, LaplaceBelief):
            rows = self._rollout_rows()
        fixed_output = None  # a belief the update does not train: its output at every buffered step
        fixed_belief = policy.belief.fixed_during_policy_update and policy.n_samples == 0
        if self.reuse_rollout_precision and fixed_belief:
            fixed_output = self._rollout_belief_output()
        self._rollout_record = None  # released (a later call uses the buffer's states)
        parameters = list(policy.parameters())  # once: clip_grad_norm_ walks the modules per call

        pg_losses, value_losses, entropy_losses, clip_fractions = [], [], [], []
        aux_losses, belief_entropies, belief_kls = [], [], []
        approx_kl_divs: list[Tensor] = []
        continue_training = True
        for epoch in range(self.n_epochs):
            approx_kl_divs = []
            for data in self.rollout_buffer.get(self.batch_size):
                actions = data.actions
                if isinstance(self.action_space, spaces.Discrete):
                    actions = data.actions.long().flatten()
                mask = data.mask > 1e-8  # the unpadded steps
                cache = None if rows is None else rows.minibatch(data.rows)
                belief_output = None
                if fixed_output is not None:  # padding takes row 0: the loss reads the real steps only
                    take = torch.as_tensor(np.maximum(data.rows, 0), device=self.device)
                    belief_output = fixed_output.apply(lambda value, take=take: value.index_select(0, take))
                values, log_prob, entropy, output = policy.evaluate_minibatch(
                    data.observations, actions, data.lstm_states.pi, data.episode_starts, cache, belief_output
                )
                # The loss terms are elementwise, then averaged over the unpadded steps: taking those
                # steps first (one index, built once) gives the same numbers as masking every term.
                valid = data.valid
                values = values.flatten().index_select(0, valid)
                log_prob = log_prob.index_select(0, valid)
                old_log_prob, old_values = data.old_log_prob[valid], data.old_values[valid]

                advantages = data.advantages[valid]
                if self.normalize_advantage:
                    advantages = (advantages - advantages.mean()) / (advantages.std() + 1e-8)
                ratio = torch.exp(log_prob - old_log_prob)
                policy_loss = -torch.mean(
                    torch.min(
                        advantages * ratio, advantages * torch.clamp(ratio, 1 - clip_range, 1 + clip_range)
                    )
                )
                values_pred = values
                if clip_range_vf is not None:
                    values_pred = old_values + torch.clamp(values - old_values, -clip_range_vf, clip_range_vf)
                value_loss = torch.mean((data.returns[valid] - values_pred) ** 2)
                if entropy is None:  # no analytical entropy: its estimate
                    entropy_loss = -torch.mean(-log_prob)
                else:
                    entropy_loss = -torch.mean(entropy.index_select(0, valid))
                ppo_loss = policy_loss + ent_coef * entropy_loss + self.vf_coef * value_loss
                aux_loss = policy._masked_aux_loss(output, mask)

                # Statistics as detached tensors: one device sync per update, not per minibatch. As in
                # RecurrentPPO, those of a minibatch that stops the update early are included.
                pg_losses.append(policy_loss.detach())
                value_losses.append(value_loss.detach())
                entropy_losses.append(entropy_loss.detach())
                clip_fractions.append(torch.mean((torch.abs(ratio.detach() - 1) > clip_range).float()))
                with torch.no_grad():  # approximate KL(old ‖ new), for logging and early stopping
                    log_ratio = log_prob - old_log_prob
                    approx_kl_div = torch.mean((torch.exp(log_ratio) - 1) - log_ratio)
                    approx_kl_divs.append(approx_kl_div)
                if self.target_kl is not None and approx_kl_div.item() > 1.5 * self.target_kl:
                    continue_training = False
                    if self.verbose >= 1:
                        print(f"Early stopping at step {epoch} due to reaching max kl: {approx_kl_div:.2f}")
                    break

                policy.optimizer.zero_grad()
                (ppo_loss + aux_loss).backward()  # one backward pass through the recurrence
                torch.nn.utils.clip_grad_norm_(parameters, self.max_grad_norm)
                policy.optimizer.step()

                aux_losses.append(aux_loss.detach())  # belief statistics: applied minibatches only
                if output.entropy is not None and output.kl_to_previous is not None:
                    belief_entropies.append(output.entropy.detach()[mask].mean())
                    belief_kls.append(output.kl_to_previous.detach()[mask].mean())
            self._n_updates += 1
            if not continue_training:
                break

        buffer = self.rollout_buffer
        explained_var = explained_variance(buffer.values.flatten(), buffer.returns.flatten())
        record = self.logger.record
        record("train/entropy_loss", _mean(entropy_losses))
        record("train/policy_gradient_loss", _mean(pg_losses))
        record("train/value_loss", _mean(value_losses))
        record("train/approx_kl", _mean(approx_kl_divs))
        record("train/clip_fraction", _mean(clip_fractions))
        record("train/loss", ppo_loss.item())
        record("train/explained_variance", explained_var)
        if hasattr(policy, "log_std"):
            record("train/std", torch.exp(policy.log_std).mean().item())
        record("train/n_updates", self._n_updates, exclude="tensorboard")
        record("train/clip_range", clip_range)
        record("train/ent_coef", ent_coef)
        if clip_range_vf is not None:
            record("train/clip_range_vf", clip_range_vf)
        if aux_losses:
            record("belief/aux_loss", _mean(aux_losses))
        if belief_entropies:
            record("belief/entropy", _mean(belief_entropies))
            record("belief/kl_to_previous", _mean(belief_kls))
        policy.belief.after_policy_update(self)

    def _excluded_save_params(self) -> list[str]:
        return [*super()._excluded_save_params(), "_rollout_record"]

    def _buffer_state_slots(self) -> tuple[np.ndarray, np.ndarray]:
        """The packed belief-state slots the buffer stored before each step, env-major
        ``[n_envs, n_steps, slot]`` ×2, whether or not ``get()`` has flattened the buffer."""
        buffer = self.rollout_buffer
        n_steps, n_envs = buffer.buffer_size, buffer.n_envs
        slots = (buffer.hidden_states_pi, buffer.cell_states_pi)
        if buffer.generator_ready:  # flattened env-major: [n_envs * n_steps, 1, slot]
            return tuple(array.reshape(n_envs, n_steps, -1) for array in slots)
        return tuple(array[:, 0].swapaxes(0, 1) for array in slots)  # as stored: [n_steps, 1, n_envs, slot]

    def _rollout_belief_output(self) -> BeliefOutput:
        """The belief's output at every buffered step, rows in the buffer's env-major order, from one
        pass over the whole rollout (from each env's state before the rollout, through its resets):
        for a belief the update leaves fixed, the output every epoch's minibatches would recompute."""
        policy = self.policy
        first = (  # each env's slots before the rollout's first step: [1, n_envs, slot]
            torch.as_tensor(np.ascontiguousarray(array[None, :, 0]), device=self.device)
            for array in self._buffer_state_slots()
        )
        state, _ = policy.unpack_state(tuple(first))
        inputs, starts = rollout_inputs(self)
        with torch.no_grad():
            output, _ = policy.belief.sequence(inputs, state, starts > 0.5)
        return output.apply(lambda value: value.swapaxes(0, 1).flatten(0, 1))

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
        hidden, cell = self._buffer_state_slots()
        if buffer.generator_ready:  # get() has flattened the arrays env-major
            starts = buffer.episode_starts.reshape(n_envs, n_steps)
        else:  # as stored: [n_steps, n_envs]
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


class BeliefRolloutSamples(NamedTuple):
    """A padded minibatch of sequences (the fields of sb3-contrib's recurrent samples) plus ``rows``:
    the buffer row (env-major, ``env * n_steps + step``) of every padded position, -1 at padding, and
    ``valid``: the positions of the unpadded steps (int64, ascending; ``mask > 0`` as an index)."""

    observations: Any
    actions: Tensor
    old_values: Tensor
    old_log_prob: Tensor
    advantages: Tensor
    returns: Tensor
    lstm_states: RNNStates
    episode_starts: Tensor
    mask: Tensor
    rows: np.ndarray
    valid: Tensor


class _BeliefBufferMixin:
    """Recurrent rollout buffer for belief policies: one copy of the belief state per step (the critic's
    is the actor's; the ``*_vf`` arrays are empty), and minibatches (:class:`BeliefRolloutSamples`)
    that gather the states of their sequence starts only."""

    #: Cut every env's steps into training sequences of at most this many steps (see ``BayesPPO``).
    sequence_length: int | None = None

    def reset(self) -> None:
        super().reset()  # type: ignore[misc]
        empty = np.zeros((*self.hidden_state_shape[:-1], 0), dtype=np.float32)  # type: ignore[attr-defined]
        self.hidden_states_vf, self.cell_states_vf = empty, empty
        self._tensors: dict[str, Any] | None = None

    def get(self, batch_size: int | None = None) -> Any:
        """SB3's minibatch generator; each pass converts the buffer's arrays to tensors once (on its
        first minibatch), and every minibatch gathers its rows from those."""
        self._tensors = None
        yield from super().get(batch_size)  # type: ignore[misc]

    def _as_tensors(self) -> dict[str, Any]:
        if self._tensors is None:
            names = ("actions", "values", "log_probs", "advantages", "returns", "episode_starts")
            tensors: dict[str, Any] = {name: self._to_tensor(getattr(self, name)) for name in names}
            observations = self.observations  # type: ignore[attr-defined]
            if isinstance(observations, dict):
                tensors["observations"] = {key: self._to_tensor(obs) for key, obs in observations.items()}
            else:
                tensors["observations"] = self._to_tensor(observations)
            self._tensors = tensors
        return self._tensors

    def _to_tensor(self, array: np.ndarray) -> Tensor:
        return torch.as_tensor(array, device=self.device)  # type: ignore[attr-defined]

    def add(self, *args: Any, slots: tuple[Tensor, Tensor], **kwargs: Any) -> None:
        """SB3's ``add`` of one step, with the packed belief state ``slots`` before it."""
        self.hidden_states_pi[self.pos] = slots[0].cpu().numpy()  # type: ignore[attr-defined]
        self.cell_states_pi[self.pos] = slots[1].cpu().numpy()  # type: ignore[attr-defined]
        self._add_step(*args, **kwargs)

    def _get_samples(  # type: ignore[override]
        self, batch_inds: np.ndarray, env_change: np.ndarray, env: Any = None
    ) -> BeliefRolloutSamples:
        changes = env_change[batch_inds]
        if self.sequence_length is not None:
            # A sequence also starts every sequence_length steps of an env (rows are env-major: row =
            # env * n_steps + step); it starts from the belief state stored before that step.
            steps = batch_inds % self.buffer_size  # type: ignore[attr-defined]
            cut = (steps % self.sequence_length == 0).reshape(changes.shape)  # env_change is [N, 1]
            changes = np.where(cut, 1.0, changes)
        self.seq_start_indices, self.pad, self.pad_and_flatten = create_sequencers(
            self.episode_starts[batch_inds], changes, self.device
        )
        # SB3's padded layout [n_seq * T] (sequence-major, zeros after each sequence's end), gathered
        # with one index per field instead of padding every sequence separately.
        rows = _padded_rows(batch_inds, self.seq_start_indices)
        padding = rows < 0
        tensors = self._as_tensors()
        take = self._to_tensor(np.where(padding, 0, rows))
        padding_t = self._to_tensor(padding)

        def padded(array: Tensor) -> Tensor:
            values = array.index_select(0, take)
            return values.masked_fill_(padding_t.view(-1, *(1,) * (values.dim() - 1)), 0)

        starts = batch_inds[self.seq_start_indices]
        slots = tuple(
            self.to_torch(array[starts].swapaxes(0, 1)).contiguous()  # [1, n_seq, slot]
            for array in (self.hidden_states_pi, self.cell_states_pi)
        )
        observations = tensors["observations"]
        return BeliefRolloutSamples(
            observations=(
                {key: padded(obs) for key, obs in observations.items()}
                if isinstance(observations, dict)
                else padded(observations)
            ),
            actions=padded(tensors["actions"]),
            old_values=padded(tensors["values"]).flatten(),
            old_log_prob=padded(tensors["log_probs"]).flatten(),
            advantages=padded(tensors["advantages"]).flatten(),
            returns=padded(tensors["returns"]).flatten(),
            lstm_states=RNNStates(slots, slots),
            episode_starts=padded(tensors["episode_starts"]).flatten(),
            mask=self.to_torch((~padding).astype(np.float32)),
            rows=rows,
            valid=self._to_tensor(np.flatnonzero(~padding)),
        )


class BeliefRolloutBuffer(_BeliefBufferMixin, RecurrentRolloutBuffer):
    """:class:`_BeliefBufferMixin` for Box observations."""

    def _add_step(self, *args: Any, **kwargs: Any) -> None:
        RolloutBuffer.add(self, *args, **kwargs)


class BeliefDictRolloutBuffer(_BeliefBufferMixin, RecurrentDictRolloutBuffer):
    """:class:`_BeliefBufferMixin` for Dict observations (the RL²-input observations of bayes_envs)."""

    def _add_step(self, *args: Any, **kwargs: Any) -> None:
        DictRolloutBuffer.add(self, *args, **kwargs)


def _use_fused_adam(policy: BeliefPolicy) -> None:
    """Give ``policy`` a fused Adam (one kernel for all parameters instead of one sequence of ops per
    parameter tensor: ~2.5x cheaper per step on a CPU for these small networks) if its optimizer is a
    plain ``torch.optim.Adam`` with no implementation chosen (``foreach``/``fused`` unset) and torch
    has the fused kernel for the parameters' device. The update is Adam's to rounding; the state dict
    keeps its layout (a checkpoint saved before loads into it)."""
    optimizer = policy.optimizer
    defaults = optimizer.defaults
    if type(optimizer) is not torch.optim.Adam or optimizer.state or len(optimizer.param_groups) != 1:
        return
    if (
        defaults.get("fused") is not None
        or defaults.get("foreach") is not None
        or defaults.get("differentiable")
    ):
        return
    parameters = optimizer.param_groups[0]["params"]
    if not parameters or any(
        not p.is_floating_point() or p.device.type not in ("cpu", "cuda") for p in parameters
    ):
        return
    try:
        policy.optimizer = torch.optim.Adam(parameters, **{**defaults, "fused": True})
    except (RuntimeError, TypeError, ValueError):  # an older torch without this fused kernel
        pass


def _mean(values: list[Tensor]) -> float:
    return float(torch.stack(values).float().mean())


class _RolloutRecorder:
    """Keeps the stop-gradient Laplace terms of each rollout step (``add``, called by the policy's
    ``forward``) in env-major tensors ``[n_envs, n_steps, ..]``, the row order of the rollout buffer,
    so that ``train()`` can use them as they are (see :class:`_RolloutRows`)."""

    def __init__(self, n_steps: int) -> None:
        self.n_steps, self.steps = n_steps, 0
        self.fields: dict[str, Tensor] = {}

    def add(self, features: Tensor, output: BeliefOutput, sample_offsets: Tensor | None) -> None:
        """The ``record`` of :meth:`BeliefPolicy.act` (``features`` is not kept)."""
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
                with torch.inference_mode(False):  # normal tensors: the update builds a graph on them
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
    :return: a model of the same class with a :class:`LaplacePolicy`, on the same env, with the same
        observation/reward normalisation (``get_vec_normalize_env()``, also for a model loaded
        without an env, e.g. :func:`bayes_agents.experiment.load_model`).
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
    converted = type(model).load(
        buffer,
        env=model.get_env(),
        device=model.device,
        custom_objects={"policy_class": LaplacePolicy, "policy_kwargs": policy_kwargs},
    )
    if converted.get_vec_normalize_env() is None:
        # A model without an env keeps its statistics only here; the policy reads inputs scaled by them.
        converted._vec_normalize_env = model.get_vec_normalize_env()
    return converted
