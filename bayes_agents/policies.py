"""sb3-contrib ``RecurrentActorCriticPolicy`` adapters over belief modules.

A :class:`BeliefPolicy` replaces the policy's LSTMs by one belief module
(:mod:`bayes_agents.beliefs`) shared by actor and critic:

* observation → :class:`RL2InputExtractor` → ``x_t`` = [obs, prev_action, prev_reward, new_episode];
* ``x_t`` → belief → task latent ``z_t`` (point estimate, or ``n_samples`` posterior samples);
* [``z_t``, obs] → SB3's ``MlpExtractor`` → action / value heads. With several posterior samples
  the action-distribution parameters (logits, or Gaussian means) are averaged over the samples
  (the Laplace-VRNN paper's ensemble averaging, B.3); the value uses the posterior mean.

The flat belief state ``[B, S]`` is stored in the two ``(1, B, ceil(S/2))`` recurrent-state slots
that ``RecurrentPPO``'s buffer keeps for an LSTM, and whole minibatch sequences go through
``belief.sequence`` in one call, so the policies work with the *stock* ``sb3_contrib.RecurrentPPO``.

Posterior samples use *common random numbers*: the standard normal noise of step ``t`` is a hash
of a per-env noise key carried in the recurrent state (advanced by a fixed LCG every step and
re-mixed at every episode start). PPO's update then re-evaluates each stored action under the
very latent sample it was taken with, instead of a fresh one, which would make the probability
ratio pure noise.
"""

from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, ClassVar

import gymnasium as gym
import numpy as np
import torch
from gymnasium import spaces
from sb3_contrib.common.recurrent.policies import RecurrentActorCriticPolicy
from sb3_contrib.common.recurrent.type_aliases import RNNStates
from stable_baselines3.common.distributions import (
    CategoricalDistribution,
    DiagGaussianDistribution,
    Distribution,
)
from stable_baselines3.common.policies import ActorCriticPolicy
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor, MlpExtractor
from stable_baselines3.common.type_aliases import Schedule
from torch import Tensor, nn
from torch.distributions import Categorical, Normal

from bayes_agents.beliefs import (
    Belief,
    BeliefOutput,
    InputLayout,
    LaplaceBelief,
    entries_equal,
    observation_bounds,
)
from bayes_agents.beliefs.registry import BeliefSpec, on_register

RL2_KEYS = ("obs", "prev_action", "prev_reward", "new_episode")
#: Noise keys are integers below 2**24, so that float32 state slots hold them exactly.
KEY_MODULUS = 2**24
_MASK32 = 0xFFFFFFFF


def _hash32(values: Tensor) -> Tensor:
    """A 32-bit integer mix (int64 in, int64 in [0, 2**32) out); inputs below 2**35 never overflow."""
    for _ in range(3):
        values = ((values ^ (values >> 16)) * 0x45D9F3B) & _MASK32
    return values ^ (values >> 16)


def next_noise_keys(keys: Tensor, episode_starts: Tensor) -> tuple[Tensor, Tensor]:
    """Keys used at each step and the key after the last step.

    :param keys: ``[B]`` int64 key stored before the first step.
    :param episode_starts: ``[T, B]`` bool.
    :return: the keys of the steps ``[T, B]`` and the next key ``[B]``: at an episode start the key
        is re-mixed, and after each step it advances by a full-period LCG modulo 2**24.
    """
    step_keys = []
    for starts in episode_starts.unbind(0):
        keys = torch.where(starts, _hash32(keys + 0x9E3779) % KEY_MODULUS, keys)
        step_keys.append(keys)
        keys = (keys * 1664525 + 1013904223) % KEY_MODULUS
    return torch.stack(step_keys), keys


def standard_normal_from_keys(keys: Tensor, count: int, dtype: torch.dtype) -> Tensor:
    """``count`` standard normal draws per key, ``[*keys.shape, count]``, by Box-Muller on hashes."""
    counters = torch.arange(2 * count, device=keys.device)
    bits = _hash32(keys.unsqueeze(-1) * (2 * count) + counters)
    uniforms = (bits.to(torch.float64) + 0.5) / 2**32
    radius = torch.sqrt(-2.0 * torch.log(uniforms[..., :count]))
    return (radius * torch.cos(2 * torch.pi * uniforms[..., count:])).to(dtype)


class RL2InputExtractor(BaseFeaturesExtractor):
    """Flattens an observation into the belief input ``x_t``.

    For the RL²-input Dict observation of :mod:`bayes_envs` the output is
    ``[obs, prev_action, prev_reward, new_episode]`` (in that order, ``obs`` first so that the
    policy head can take the current state as ``x_t[:, :state_dim]``); any other Box observation
    is flattened as is (it must then carry the previous reward itself).
    """

    def __init__(self, observation_space: gym.Space) -> None:
        if isinstance(observation_space, spaces.Dict):
            missing = [key for key in RL2_KEYS if key not in observation_space.spaces]
            if missing:
                raise ValueError(
                    f"Dict observations must have the RL² keys {RL2_KEYS}, missing {missing}: build the "
                    "env with rl2_inputs=True (the default of bayes_envs)"
                )
            sizes = [get_flattened_obs_dim(observation_space[key]) for key in RL2_KEYS]
            super().__init__(observation_space, sum(sizes))
            self.keys: tuple[str, ...] | None = RL2_KEYS
            self.state_dim = sizes[0]
            self.part_sizes: tuple[int, ...] | None = tuple(sizes)
        else:
            size = get_flattened_obs_dim(observation_space)
            super().__init__(observation_space, size)
            self.keys = None
            self.state_dim = size
            self.part_sizes = None

    def forward(self, observations: Tensor | dict[str, Tensor]) -> Tensor:
        if self.keys is None:
            return observations.flatten(1)
        return torch.cat([observations[key].flatten(1) for key in self.keys], dim=1)


def check_observation_bounds(space: spaces.Space, observation: Any) -> None:
    """``ValueError`` if a part of ``observation`` (single or batched) with finite bounds in ``space``
    (a Box, or a Dict of them) lies outside them; what SB3's own checks (shapes) let through."""
    if isinstance(space, spaces.Dict) and isinstance(observation, dict):
        for key, subspace in space.spaces.items():
            if key in observation:
                check_observation_bounds_of(subspace, observation[key], f"observation[{key!r}]")
        return
    check_observation_bounds_of(space, observation, "observation")


def check_observation_bounds_of(space: spaces.Space, values: Any, name: str) -> None:
    """:func:`check_observation_bounds` of one Box ``space``; ``name`` names the part in the error."""
    if not isinstance(space, spaces.Box) or not np.issubdtype(np.asarray(values).dtype, np.number):
        return
    values = np.asarray(values, dtype=np.float64).reshape(-1, *space.shape)
    low, high = space.low.astype(np.float64), space.high.astype(np.float64)
    tolerance = 1e-5 * np.maximum(1.0, np.abs(np.where(np.isfinite(high), high, 0.0)))
    outside = (values < low - tolerance) | (values > high + tolerance)
    if outside.any():
        bad = values[outside][0]
        raise ValueError(
            f"{name} has a value {bad:g} outside the policy's observation space [{space.low.min():g}, "
            f"{space.high.max():g}]: was the model trained on another env configuration (e.g. grid size)?"
        )


@dataclass(frozen=True)
class RecurrentStateSlots:
    """What ``RecurrentPPO`` reads from ``policy.lstm_actor`` to size its recurrent-state buffers."""

    num_layers: int
    hidden_size: int


@dataclass(frozen=True)
class MinibatchCache:
    """The stop-gradient parts of a Laplace belief's pass over one training minibatch, precomputed (by
    :class:`~bayes_agents.BayesPPO`, once per update, from the rollout) so that the minibatch only
    runs the means ``μ_t``. ``n_valid`` is the number of the minibatch's real (unpadded) steps, in
    order.

    :param valid: ``[n_valid]`` int64, the real steps' positions in the padded layout ``[n_seq * T]``.
    :param previous_precisions: the real steps' ``previous_precision`` (see
        :class:`~bayes_agents.beliefs.laplace.LaplaceTerms`), as consecutive blocks (views of the
        rollout's rows) that concatenate to ``[n_valid, ..]``.
    :param kl_offset: ``[n_valid]``; :param entropy: ``[n_valid]``.
    :param sample_offsets: posterior-sample offsets ``z - μ = L^{-T} ε`` of the steps' common random
        numbers, ``[n_samples, n_seq * T, L]`` (0 at padding), or None if the policy does not sample.
    """

    valid: Tensor
    previous_precisions: tuple[Tensor, ...]
    kl_offset: Tensor
    entropy: Tensor
    sample_offsets: Tensor | None = None


class BeliefPolicy(RecurrentActorCriticPolicy):
    """Actor-critic policy whose memory is a belief module; see the module docstring.

    :param n_samples: posterior samples ``n_Z`` averaged in the action head; 0 uses the posterior
        mean (and is what point-estimate beliefs always do).
    :param detach_critic: stop the value loss from training the belief.
    :param reuse_rollout_precision: Laplace beliefs under the stock ``RecurrentPPO``: the update takes
        the stop-gradient posterior terms (precision, entropy, KL offsets, sample offsets) of each
        minibatch sequence from the rollout that computed them (:class:`RolloutTermsCache`) instead
        of recomputing the window Jacobians for every minibatch of every epoch (~10x faster updates).
        The precision is then that of the rollout's weights, as PPO's old log-probabilities are.
        False: the exact recompute at the current weights. (``BayesPPO`` has its own switch.)
    :param belief_kwargs: the belief's own hyper-parameters (e.g. ``hidden_size``, ``latent_dim``).

    The remaining parameters are Stable-Baselines3's ``ActorCriticPolicy`` ones; ``net_arch``
    shapes the MLP heads on ``[z, obs]`` (default ``[64, 64]`` for both).
    """

    belief_class: ClassVar[type[Belief]]
    #: Beliefs that split ``x_t`` into its parts (transition models) get ``input_layout=`` too.
    needs_input_layout: ClassVar[bool] = False

    def __init__(
        self,
        observation_space: spaces.Space,
        action_space: spaces.Space,
        lr_schedule: Schedule,
        net_arch: list[int] | dict[str, list[int]] | None = None,
        activation_fn: type[nn.Module] = nn.Tanh,
        ortho_init: bool = True,
        use_sde: bool = False,
        log_std_init: float = 0.0,
        full_std: bool = True,
        use_expln: bool = False,
        squash_output: bool = False,
        features_extractor_class: type[BaseFeaturesExtractor] = RL2InputExtractor,
        features_extractor_kwargs: dict[str, Any] | None = None,
        share_features_extractor: bool = True,
        normalize_images: bool = True,
        optimizer_class: type[torch.optim.Optimizer] = torch.optim.Adam,
        optimizer_kwargs: dict[str, Any] | None = None,
        n_samples: int = 0,
        detach_critic: bool = False,
        reuse_rollout_precision: bool = True,
        **belief_kwargs: Any,
    ) -> None:
        if not isinstance(action_space, (spaces.Discrete, spaces.Box)):
            raise TypeError(
                f"{type(self).__name__} supports Discrete and Box action spaces, got {action_space}"
            )
        if use_sde:
            raise ValueError("use_sde is not supported by belief policies")
        if isinstance(n_samples, bool) or not isinstance(n_samples, int) or n_samples < 0:
            raise ValueError(f"n_samples must be an int >= 0 (0: posterior mean), got {n_samples!r}")
        if not share_features_extractor:
            raise ValueError(
                "belief policies share one belief (and features extractor) between actor and critic"
            )
        if not (
            isinstance(observation_space, spaces.Dict) and set(RL2_KEYS) <= set(observation_space.spaces)
        ):
            warnings.warn(
                f"{type(self).__name__}: the observation is not the RL²-input Dict, so the belief sees no "
                "previous reward unless the observation carries it (bayes_envs: rl2_inputs=True)",
                stacklevel=2,
            )
        self.n_samples = n_samples
        self.detach_critic = bool(detach_critic)
        self.belief_kwargs = dict(belief_kwargs)
        if not isinstance(reuse_rollout_precision, bool):
            raise TypeError(f"reuse_rollout_precision must be a bool, got {reuse_rollout_precision!r}")
        self.reuse_rollout_precision = reuse_rollout_precision
        self._last_output: BeliefOutput | _LazyOutput | None = None
        #: The record of the last rollout run through ``forward`` (Laplace, reuse_rollout_precision).
        self._terms_cache: RolloutTermsCache | None = None
        # The belief is built in _build_mlp_extractor (it needs the features size, and must exist
        # before ActorCriticPolicy creates the optimizer). RecurrentActorCriticPolicy.__init__ is
        # skipped on purpose: it would build two LSTMs that the belief replaces.
        ActorCriticPolicy.__init__(
            self,
            observation_space,
            action_space,
            lr_schedule,
            net_arch,
            activation_fn,
            ortho_init,
            use_sde,
            log_std_init,
            full_std,
            use_expln,
            squash_output,
            features_extractor_class,
            features_extractor_kwargs,
            share_features_extractor,
            normalize_images,
            optimizer_class,
            optimizer_kwargs,
        )
        slot = math.ceil((self.belief.state_size + 1) / 2)  # + the noise key
        self.lstm_actor = RecurrentStateSlots(num_layers=1, hidden_size=slot)
        self.lstm_hidden_state_shape = (1, 1, slot)
        self.lstm_critic = None
        self.critic = None
        self.shared_lstm = True
        self.enable_critic_lstm = False
        self.lstm_kwargs: dict[str, Any] = {}

    # ------------------------------------------------------------------------------ construction
    def make_belief(self, input_dim: int) -> Belief:
        if not self.needs_input_layout:
            return self.belief_class(input_dim, **self.belief_kwargs)
        sizes = getattr(self.features_extractor, "part_sizes", None)
        if sizes is None:
            raise ValueError(
                f"{type(self).__name__} models transitions and needs the RL²-input Dict observation "
                "{obs, prev_action, prev_reward, new_episode} (bayes_envs: rl2_inputs=True)"
            )
        layout = InputLayout(
            obs_dim=sizes[0],
            action_dim=sizes[1],
            discrete_actions=isinstance(self.action_space, spaces.Discrete),
            **observation_bounds(self.observation_space["obs"]),
        )
        return self.belief_class(input_dim, input_layout=layout, **self.belief_kwargs)

    def _build_mlp_extractor(self) -> None:
        self.belief = self.make_belief(self.features_dim)
        self.state_dim = getattr(self.features_extractor, "state_dim", self.features_dim)
        if self.n_samples > 0 and self.belief.policy_input_dim != self.belief.latent_dim:
            raise ValueError(
                f"n_samples must be 0 for {type(self.belief).__name__}: its policy input is no latent sample"
            )
        self.lstm_output_dim = self.belief.policy_input_dim + self.state_dim
        self.mlp_extractor = MlpExtractor(
            self.lstm_output_dim, net_arch=self.net_arch, activation_fn=self.activation_fn, device=self.device
        )

    def _get_constructor_parameters(self) -> dict[str, Any]:
        data = super()._get_constructor_parameters()
        data.update(
            n_samples=self.n_samples,
            detach_critic=self.detach_critic,
            reuse_rollout_precision=self.reuse_rollout_precision,
            **self.belief_kwargs,
        )
        return data

    # ------------------------------------------------------------------------------ state slots
    def pack_state(self, state: Tensor, keys: Tensor) -> tuple[Tensor, Tensor]:
        """Belief state ``[B, S]`` and noise keys ``[B]`` → the ``(1, B, slot)`` hidden and cell slots."""
        slot = self.lstm_actor.hidden_size
        flat = torch.cat([state, keys.to(state.dtype).unsqueeze(1)], dim=1)
        padded = nn.functional.pad(flat, (0, 2 * slot - flat.shape[1]))
        return padded[:, :slot].unsqueeze(0), padded[:, slot:].unsqueeze(0)

    def unpack_state(self, slots: tuple[Tensor, Tensor]) -> tuple[Tensor, Tensor]:
        """Inverse of :meth:`pack_state`: ``(1, B, slot)`` ×2 → state ``[B, S]``, keys ``[B]`` int64."""
        flat = torch.cat([slots[0][0], slots[1][0]], dim=1)
        size = self.belief.state_size
        return flat[:, :size], flat[:, size].round().to(torch.int64)

    def randomize_noise_keys(self, slots: tuple[Tensor, Tensor], generator: torch.Generator | None = None):
        """The same slots with fresh random noise keys (distinct noise streams per env)."""
        state, keys = self.unpack_state(slots)
        fresh = torch.randint(KEY_MODULUS, keys.shape, generator=generator).to(keys.device)
        return self.pack_state(state, fresh)

    # ------------------------------------------------------------------------------ belief pass
    def _process_sequence(  # type: ignore[override]
        self, features: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor, lstm: Any = None
    ) -> tuple[tuple[BeliefOutput, Tensor | None], tuple[Tensor, Tensor]]:
        """Run the belief over SB3's batch of ``n_seq`` padded sequences
        (:meth:`~bayes_agents.beliefs.Belief.training_sequence`: the auxiliary loss of the output is
        read by ``aux_loss_rows``, see :meth:`_masked_aux_loss`).

        :param features: ``[n_seq * T, D]`` (sequence-major, as the buffer lays it out).
        :param episode_starts: ``[n_seq * T]``.
        :return: the belief output flattened back to ``[n_seq * T, ..]`` with the posterior-sample
            noise ``[n_samples, n_seq * T, L]`` (None without sampling), and the new state slots.
        """
        n_seq = lstm_states[0].shape[1]
        inputs = features.reshape(n_seq, -1, features.shape[-1]).swapaxes(0, 1)
        starts = episode_starts.reshape(n_seq, -1).swapaxes(0, 1) > 0.5
        state, keys = self.unpack_state(lstm_states)
        output, state = self.belief.training_sequence(inputs, state, starts)
        noise = None
        if self.n_samples > 0 and output.is_distribution:  # the keys only matter when sampling
            step_keys, keys = next_noise_keys(keys, starts)
            latent = self.belief.latent_dim
            draws = standard_normal_from_keys(step_keys, self.n_samples * latent, output.mean.dtype)
            noise = draws.view(*step_keys.shape, self.n_samples, latent).permute(2, 1, 0, 3).flatten(1, 2)
        output = output.apply(lambda value: value.swapaxes(0, 1).flatten(0, 1))
        self._last_output = output.apply(Tensor.detach)
        return (output, noise), self.pack_state(state, keys)

    def _cached_belief_pass(
        self,
        features: Tensor,
        lstm_states: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        cache: MinibatchCache,
    ) -> tuple[BeliefOutput, Tensor | None]:
        """:meth:`_process_sequence` of a training minibatch from its :class:`MinibatchCache`: only the
        means run; the KL is formed on the real steps only (0 at padding), ``entropy`` is 0 at padding,
        and ``precision``/``precision_cholesky`` are not materialised (None: nothing in the update
        reads them). No new state is formed (``evaluate_actions`` discards it).

        :return: the flattened output and the sample offsets (None without sampling).
        """
        belief = self.belief
        if not isinstance(belief, LaplaceBelief):
            raise TypeError(f"a minibatch cache needs a LaplaceBelief, got {type(belief).__name__}")
        n_seq = lstm_states[0].shape[1]
        inputs = features.reshape(n_seq, -1, features.shape[-1]).swapaxes(0, 1)
        starts = episode_starts.reshape(n_seq, -1).swapaxes(0, 1) > 0.5
        state, _ = self.unpack_state(lstm_states)
        mean, previous_mean = belief.mean_sequence(inputs, state, starts)
        mean = mean.swapaxes(0, 1).flatten(0, 1)
        difference = (mean - previous_mean.swapaxes(0, 1).flatten(0, 1)).index_select(0, cache.valid)
        kl_blocks, start = [], 0
        for previous_precision in cache.previous_precisions:  # views of the rollout's rows, no copies
            stop = start + previous_precision.shape[0]
            kl_blocks.append(
                belief.kl_to_previous(difference[start:stop], previous_precision, cache.kl_offset[start:stop])
            )
            start = stop
        if start != cache.valid.shape[0]:
            raise ValueError(
                f"the minibatch cache covers {start} steps, its valid positions {cache.valid.shape[0]}"
            )
        kl = torch.cat(kl_blocks) if len(kl_blocks) > 1 else kl_blocks[0]
        rows = mean.shape[0]
        output = BeliefOutput(
            mean=mean,
            entropy=cache.entropy.new_zeros(rows).index_copy(0, cache.valid, cache.entropy),
            kl_to_previous=kl.new_zeros(rows).index_copy(0, cache.valid, kl),
        )
        self._last_output = output.apply(Tensor.detach)
        return output, cache.sample_offsets if self.n_samples > 0 else None

    def sample_offsets(
        self, precision: Tensor | None, precision_cholesky: Tensor | None, step_keys: Tensor
    ) -> Tensor:
        """Posterior-sample offsets ``z - μ`` ``[n_samples, N, L]`` (no gradient) of ``N`` steps of a
        Laplace belief, from their precision (diag) or its Cholesky factor (full) and their noise keys
        ``[N]`` (int64): the noise :meth:`_process_sequence` draws for those keys."""
        latent = self.belief.latent_dim
        dtype = (precision if precision_cholesky is None else precision_cholesky).dtype
        draws = standard_normal_from_keys(step_keys, self.n_samples * latent, dtype)
        noise = draws.view(-1, self.n_samples, latent).transpose(0, 1)
        return self.belief.sample_offsets(precision, precision_cholesky, noise)

    def _head_inputs(self, latent: Tensor, features: Tensor) -> Tensor:
        state = features[..., : self.state_dim]
        return torch.cat([latent, state.expand(*latent.shape[:-1], state.shape[-1])], dim=-1)

    def _action_distribution(
        self,
        output: BeliefOutput,
        noise: Tensor | None,
        features: Tensor,
        sample_offsets: Tensor | None = None,
    ) -> Distribution:
        if sample_offsets is not None:
            latents = output.mean + sample_offsets  # [n_Z, N, L]
        elif noise is not None:
            latents = self.belief.sample(output, self.n_samples, noise=noise)  # [n_Z, N, L]
        else:
            latents = self.belief.policy_input(output).unsqueeze(0)
        latent_pi = self.mlp_extractor.forward_actor(self._head_inputs(latents, features))
        parameters = self.action_net(latent_pi).mean(dim=0)  # ensemble averaging over samples
        # The torch distribution is built here, as SB3's proba_distribution would, but without argument
        # validation: it costs ~10% of a rollout step, and the parameters are finite network outputs.
        if isinstance(self.action_dist, CategoricalDistribution):
            self.action_dist.distribution = Categorical(logits=parameters, validate_args=False)
            return self.action_dist
        assert isinstance(self.action_dist, DiagGaussianDistribution)
        scale = torch.ones_like(parameters) * self.log_std.exp()
        self.action_dist.distribution = Normal(parameters, scale, validate_args=False)
        return self.action_dist

    def _values(self, output: BeliefOutput, features: Tensor) -> Tensor:
        belief = self.belief.policy_input(output)
        belief = belief.detach() if self.detach_critic else belief
        return self.value_net(self.mlp_extractor.forward_critic(self._head_inputs(belief, features)))

    # ------------------------------------------------------------------------------ acting path
    @torch.inference_mode()
    def act(
        self,
        obs: Tensor | dict[str, Tensor],
        lstm_states: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        deterministic: bool = False,
        record: Any = None,
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor]]:
        """One acting step for ``B`` envs, fused: belief step, heads, sampling, log-probability and
        value, under ``torch.inference_mode`` and without SB3 ``Distribution`` objects.

        It gives the actions, log-probabilities and values of the generic path (``get_distribution``
        + ``predict_values``), drawing from torch's global generator exactly as SB3's distributions
        do (``Categorical.sample``, ``Normal.rsample``).

        :param lstm_states: the packed state slots ``(1, B, slot)`` ×2 (see :meth:`pack_state`).
        :param episode_starts: ``[B]`` (1 resets the belief before this step).
        :param record: optional callable ``record(features, output, sample_offsets)`` that receives the
            step's inputs ``x_t``, belief output and posterior-sample offsets (Laplace; else None),
            e.g. to keep the stop-gradient Laplace terms for the update.
        :return: actions ``[B, *action_shape]``, values ``[B, 1]``, log-probabilities ``[B]`` and the
            next state slots (inference tensors: no autograd graph may be built on them).

        Without ``record`` the belief runs :meth:`~bayes_agents.beliefs.Belief.acting_sequence`: only
        what the action needs (Laplace: the mean, the precision and, when sampling, its Cholesky
        factor; GLiBRL: the policy features); the rest of :attr:`last_belief_output` (entropy, KL, ...)
        is formed when it is read.
        """
        actions, values, log_prob, slots, _ = self._act(
            self.extract_features(obs), lstm_states, episode_starts, deterministic, record
        )
        return actions, values, log_prob, slots

    @torch.inference_mode()
    def _act(
        self,
        features: Tensor,
        lstm_states: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        deterministic: bool,
        record: Any,
    ) -> tuple[Tensor, Tensor, Tensor, tuple[Tensor, Tensor], Tensor | None]:
        """:meth:`act` on extracted features; also returns the posterior-sample offsets (or None)."""
        starts = (episode_starts > 0.5).view(1, -1)
        state, keys = self.unpack_state(lstm_states)
        laplace = isinstance(self.belief, LaplaceBelief)
        sampling = self.n_samples > 0
        if record is None:  # the lean step: the statistics no action needs are formed only if read
            output, state, complete = self.belief.acting_sequence(
                features.unsqueeze(0), state, starts, cholesky=sampling
            )
            output = output.apply(lambda value: value[0])
            self._last_output = _LazyOutput(complete)
        else:
            output, state = self.belief.sequence(features.unsqueeze(0), state, starts)
            output = output.apply(lambda value: value[0])
            self._last_output = output
        offsets = None
        if sampling and output.is_distribution:
            step_keys, keys = next_noise_keys(keys, starts)
            latent = self.belief.latent_dim
            draws = standard_normal_from_keys(step_keys[0], self.n_samples * latent, output.mean.dtype)
            noise = draws.view(-1, self.n_samples, latent).transpose(0, 1)  # [n_Z, B, L]
            if laplace:
                offsets = self.belief.sample_offsets(output.precision, output.precision_cholesky, noise)
                latents = output.mean + offsets
            else:
                latents = self.belief.sample(output, self.n_samples, noise=noise)
        else:
            latents = self.belief.policy_input(output).unsqueeze(0)
        if record is not None:
            record(features, output, offsets)
        parameters = self.action_net(self.mlp_extractor.forward_actor(self._head_inputs(latents, features)))
        parameters = parameters.mean(dim=0)
        if isinstance(self.action_space, spaces.Discrete):
            log_pmf = parameters - parameters.logsumexp(-1, keepdim=True)  # as torch's Categorical
            probs = torch.softmax(log_pmf, dim=-1)
            if deterministic:
                actions = probs.argmax(dim=-1)
            else:
                actions = torch.multinomial(probs, 1, True)[:, 0]
            log_prob = log_pmf.gather(-1, actions.unsqueeze(-1))[:, 0]
        else:
            scale = torch.ones_like(parameters) * self.log_std.exp()
            actions = parameters if deterministic else parameters + torch.randn_like(parameters) * scale
            log_prob = (  # torch's Normal.log_prob, summed over the action dims (as SB3)
                -((actions - parameters) ** 2) / (2 * scale**2)
                - scale.log()
                - math.log(math.sqrt(2 * math.pi))
            ).sum(dim=1)
        values = self._values(output, features)
        slots = self.pack_state(state, keys)
        return actions.reshape((-1, *self.action_space.shape)), values, log_prob, slots, offsets

    # ------------------------------------------------------------------------------ SB3 entry points
    def forward(
        self, obs: Tensor, lstm_states: RNNStates, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        """One rollout step of the stock ``RecurrentPPO.collect_rollouts``: :meth:`act` (no gradient).

        A Laplace policy with ``reuse_rollout_precision`` also records the step (see
        :class:`RolloutTermsCache`) so that the stock update can take the stop-gradient terms of each
        minibatch sequence from the rollout instead of recomputing them."""
        cache = None
        if self.reuse_rollout_precision and isinstance(self.belief, LaplaceBelief):
            if self._terms_cache is None or self._terms_cache.closed:
                self._terms_cache = RolloutTermsCache()
            if not self._terms_cache.full:
                cache = self._terms_cache
        with torch.inference_mode():
            features = self.extract_features(obs)
        actions, values, log_prob, slots, offsets = self._act(
            features, lstm_states.pi, episode_starts, deterministic, None
        )
        if cache is not None:  # the terms themselves are formed for the whole rollout at once
            cache.add(lstm_states.pi, episode_starts, features, slots, offsets)
        slots = tuple(slot.clone() for slot in slots)  # normal tensors: the algorithm keeps them
        return actions, values, log_prob, RNNStates(slots, slots)

    def predict(  # type: ignore[override]
        self,
        observation: np.ndarray | dict[str, np.ndarray],
        state: tuple[np.ndarray, ...] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[np.ndarray, ...] | None]:
        """SB3's ``predict``, after checking that every bounded part of ``observation`` lies in the
        policy's observation space: SB3 checks shapes only, so e.g. a 7×7 grid's coordinates given
        to a policy trained on the 5×5 grid would otherwise be acted on silently. ``ValueError``
        names the key and the range."""
        check_observation_bounds(self.observation_space, observation)
        return super().predict(observation, state, episode_start, deterministic)

    def _predict(  # type: ignore[override]
        self,
        observation: Tensor,
        lstm_states: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        deterministic: bool = False,
    ) -> tuple[Tensor, tuple[Tensor, ...]]:
        actions, _, _, slots = self.act(observation, lstm_states, episode_starts, deterministic)
        return actions, slots

    def get_distribution(
        self, obs: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor
    ) -> tuple[Distribution, tuple[Tensor, ...]]:
        features = self.extract_features(obs)
        (output, noise), slots = self._process_sequence(features, lstm_states, episode_starts)
        return self._action_distribution(output, noise, features), slots

    def predict_values(
        self, obs: Tensor, lstm_states: tuple[Tensor, Tensor], episode_starts: Tensor
    ) -> Tensor:
        features = self.extract_features(obs)
        (output, _), _ = self._process_sequence(features, lstm_states, episode_starts)
        return self._values(output, features)

    def evaluate_actions(
        self, obs: Tensor, actions: Tensor, lstm_states: RNNStates, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor]:
        """Values, log-probabilities and entropies of a training minibatch (stock ``RecurrentPPO``).

        For a Laplace policy whose last rollout was recorded by :meth:`forward`, every minibatch
        sequence that is found in the record (same start state, bit for bit, and the same inputs and
        resets) takes its stop-gradient terms from it; otherwise everything is recomputed."""
        features = self.extract_features(obs)
        cache = None
        if self._terms_cache is not None:
            cache = self._terms_cache.lookup(features, lstm_states.pi, episode_starts, self)
            if self.training:  # an update: the next rollout starts a new record
                self._terms_cache.closed = True
        values, log_prob, entropy, _ = self._evaluate(
            features, actions, lstm_states.pi, episode_starts, cache
        )
        return values, log_prob, entropy

    def evaluate_minibatch(
        self,
        obs: Tensor | dict[str, Tensor],
        actions: Tensor,
        lstm_states: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        cache: MinibatchCache | None = None,
        belief_output: BeliefOutput | None = None,
    ) -> tuple[Tensor, Tensor, Tensor, BeliefOutput]:
        """:meth:`evaluate_actions` for :class:`~bayes_agents.BayesPPO`: also returns the minibatch's
        belief output (flattened ``[n_seq * T, ..]``, with gradient) for the auxiliary loss, and takes
        the stop-gradient Laplace terms from ``cache`` if given.

        :param belief_output: the belief's output at the minibatch's padded positions ``[n_seq * T,
            ..]``, computed beforehand, for a belief that the update leaves fixed
            (:attr:`~bayes_agents.beliefs.Belief.fixed_during_policy_update`) and a policy that does
            not sample: the belief is then not run (only the heads are)."""
        features = self.extract_features(obs)
        if belief_output is not None:
            if not self.belief.fixed_during_policy_update or self.n_samples > 0:
                raise ValueError(
                    "belief_output needs a belief that the update leaves fixed and n_samples = 0"
                )
            self._last_output = belief_output
            distribution = self._action_distribution(belief_output, None, features)
            values = self._values(belief_output, features)
            return values, distribution.log_prob(actions), distribution.entropy(), belief_output
        return self._evaluate(features, actions, lstm_states, episode_starts, cache)

    def _evaluate(
        self,
        features: Tensor,
        actions: Tensor,
        lstm_states: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        cache: MinibatchCache | None,
    ) -> tuple[Tensor, Tensor, Tensor, BeliefOutput]:
        if cache is None:
            (output, noise), _ = self._process_sequence(features, lstm_states, episode_starts)
            distribution = self._action_distribution(output, noise, features)
        else:
            output, offsets = self._cached_belief_pass(features, lstm_states, episode_starts, cache)
            distribution = self._action_distribution(output, None, features, sample_offsets=offsets)
        log_prob = distribution.log_prob(actions)
        return self._values(output, features), log_prob, distribution.entropy(), output

    def _masked_aux_loss(self, output: BeliefOutput, mask: Tensor) -> Tensor:
        """The belief's auxiliary loss over the rows ``mask`` ``[N]`` of ``output`` (the belief knows
        which fields its loss reads: Laplace's reads ``kl_to_previous`` only, so the ``[N, L, L]``
        precisions and factors are not copied)."""
        return self.belief.aux_loss_rows(output, mask)

    def load_state_dict(self, *args: Any, **kwargs: Any) -> Any:
        self._terms_cache = None  # recorded with other weights
        return super().load_state_dict(*args, **kwargs)

    # ------------------------------------------------------------------------------ belief statistics
    @property
    def last_belief_output(self) -> BeliefOutput | None:
        """The (detached) belief output of the last forward pass, flattened to ``[N, ..]``."""
        if isinstance(self._last_output, _LazyOutput):  # a lean acting step's: formed when read
            self._last_output = self._last_output()
        return self._last_output


class _LazyOutput:
    """The belief output of a lean acting step, formed (once, under ``torch.inference_mode`` as the
    step's own tensors) when :attr:`BeliefPolicy.last_belief_output` reads it."""

    def __init__(self, complete: Any) -> None:
        self.complete = complete

    def __call__(self) -> BeliefOutput:
        with torch.inference_mode():
            return self.complete().apply(lambda value: value[0])


class RolloutTermsCache:
    """The stop-gradient Laplace terms of the rollout steps that the stock ``RecurrentPPO`` ran through
    :meth:`BeliefPolicy.forward`, for its update (``reuse_rollout_precision``, on by default).

    Each step records its inputs ``x_t``, its packed start and end states, its resets and its
    posterior-sample offsets; the terms (``previous_precision``, ``kl_offset``, ``entropy``) are formed
    from the recorded states' precisions for the whole rollout at once, in one batched pass, when the
    update first needs them (not at every acting step). A training
    minibatch sequence is matched to the recorded rows by the exact bytes of its start state and then
    verified position by position: the rows of the sequence must have exactly the recorded inputs and
    resets, and any positions after the verified ones must be SB3's padding (all-zero inputs, no
    reset). The terms are a deterministic function of the weights, the start state and the inputs, so
    an exact match is the recompute at the rollout's weights; a minibatch with any unmatched sequence
    is recomputed in full. The precisions are thus those of the rollout's weights in every epoch, as
    PPO's old log-probabilities are (they carry no gradient either way). A new record starts with the
    first rollout step after an update; loading weights drops it.

    A record that reaches ``max_elements`` floats (2**26, 256 MB in float32: e.g. ~7,000 env steps of
    a k = 15, L = 64 policy) is not used (the update recomputes everything).
    """

    def __init__(self, max_elements: int = 2**26) -> None:
        self.max_elements, self.elements = max_elements, 0
        self.closed = False
        self.steps: list[tuple[Tensor, Tensor, Tensor, Tensor, Tensor | None]] = []
        self._stacked: tuple[Any, ...] | None = None

    @property
    def full(self) -> bool:
        return self.elements >= self.max_elements

    def add(
        self,
        slots: tuple[Tensor, Tensor],
        episode_starts: Tensor,
        features: Tensor,
        next_slots: tuple[Tensor, Tensor],
        offsets: Tensor | None,
    ) -> None:
        """Record one acting step: its start state slots, resets, inputs ``x_t``, end state slots and
        posterior-sample offsets ``[n_Z, B, L]`` (None without sampling)."""
        state = torch.cat([slots[0][0], slots[1][0]], dim=1)
        next_state = torch.cat([next_slots[0][0], next_slots[1][0]], dim=1)
        self.steps.append((features, state, episode_starts > 0.5, next_state, offsets))
        self.elements += sum(value.numel() for value in (features, state, next_state))
        self._stacked = None
        if self.full:  # too large: not used, so not kept
            self.steps.clear()

    def _stack(self, policy: BeliefPolicy) -> tuple[Any, ...]:
        if self._stacked is None:
            columns = list(zip(*self.steps, strict=True))
            features, states, starts, next_states, offsets = (
                None if column[0] is None else torch.stack(column) for column in columns
            )
            if offsets is not None:  # sample offsets [T, n_Z, B, L] → [n_Z, T·B, L], in row order
                offsets = offsets.transpose(0, 1).flatten(1, 2)
            # The terms of every step at once: each step's precision and that carried into it (rows
            # of one-step sequences, so a step's previous precision is that of its own start state).
            belief: LaplaceBelief = policy.belief  # type: ignore[assignment]
            size = belief.state_size
            rows = starts.numel()
            before = belief.state_layout.unpack(states.flatten(0, 1)[:, :size])["data_precision"]
            after = belief.state_layout.unpack(next_states.flatten(0, 1)[:, :size])["data_precision"]
            with torch.inference_mode():
                terms = belief._posterior_terms_(after.unsqueeze(0).clone(), before, starts.view(1, rows))
            host = states.flatten(0, 1).cpu().numpy()  # the start states [T, B, 2·slot]
            index: dict[bytes, list[int]] = {}
            for row in range(host.shape[0]):
                index.setdefault(host[row].tobytes(), []).append(row)
            shape = starts.shape
            self._stacked = (
                index,
                features,
                states,
                starts,
                terms.previous_precision.view(*shape, *terms.previous_precision.shape[2:]),
                terms.kl_offset.view(shape),
                terms.entropy.view(shape),
                offsets,
            )
        return self._stacked

    @staticmethod
    def _verify(
        rec_features: Tensor, rec_starts: Tensor, step: Tensor, env: Tensor, inputs: Tensor, starts: Tensor
    ) -> tuple[Tensor, Tensor]:
        """For sequences ``[n, T, ..]`` matched to recorded rows ``(step, env)`` ``[n]``: how many
        leading positions have exactly the recorded inputs and resets ``[n]``, and whether every later
        position is padding (all-zero inputs, no reset) ``[n]``."""
        n_steps = rec_starts.shape[0]
        length = inputs.shape[1]
        at = step.unsqueeze(1) + torch.arange(length, device=inputs.device)  # [n, T]
        inside = at < n_steps
        at = at.clamp(max=n_steps - 1)
        envs = env.unsqueeze(1).expand_as(at)
        same = entries_equal(rec_features[at, envs], inputs) & (rec_starts[at, envs] == starts) & inside
        verified = same.long().cumprod(1).sum(1)
        later = torch.arange(length, device=inputs.device) >= verified.unsqueeze(1)
        padding_tail = ~(((inputs != 0).any(-1) | starts) & later).any(1)
        return verified, padding_tail

    def lookup(
        self, features: Tensor, slots: tuple[Tensor, Tensor], episode_starts: Tensor, policy: BeliefPolicy
    ) -> MinibatchCache | None:
        """The cache of a padded minibatch ``[n_seq * T, D]`` if every sequence is in the record.

        Never from a truncated record (``full``): a real step after its end could pass for padding."""
        if not self.steps or self.full:
            return None
        stacked = self._stack(policy)
        index, rec_features, _, rec_starts, previous_precision, kl_offset, entropy, offsets = stacked
        n_envs = rec_starts.shape[1]
        n_seq = slots[0].shape[1]
        inputs = features.detach().reshape(n_seq, -1, features.shape[-1])
        starts = episode_starts.reshape(n_seq, -1) > 0.5
        length = inputs.shape[1]
        keys = torch.cat([slots[0][0], slots[1][0]], dim=1).detach().cpu().numpy()
        candidates = [index.get(keys[sequence].tobytes(), ()) for sequence in range(n_seq)]
        if not all(candidates):
            return None
        positions = torch.arange(length, device=features.device)
        # First try each sequence's first candidate, all at once (one device sync); states shared by
        # several rows (e.g. two envs at the prior) then try every candidate one by one.
        first = torch.as_tensor([rows[0] for rows in candidates], device=features.device)
        step, env = first // n_envs, first % n_envs
        verified, padding_tail = self._verify(rec_features, rec_starts, step, env, inputs, starts)
        accepted = ((verified > 0) & padding_tail).cpu()
        for sequence in np.flatnonzero(~accepted.numpy()):
            for row in candidates[sequence][1:]:
                one = torch.as_tensor([row], device=features.device)
                got, tail = self._verify(
                    rec_features,
                    rec_starts,
                    one // n_envs,
                    one % n_envs,
                    inputs[sequence : sequence + 1],
                    starts[sequence : sequence + 1],
                )
                if bool(got[0] > 0) and bool(tail[0]):
                    step[sequence], env[sequence], verified[sequence] = one // n_envs, one % n_envs, got[0]
                    break
            else:
                return None
        # Padding positions take the sequence's last verified row (finite values, masked out).
        steps = step.unsqueeze(1) + torch.minimum(positions, (verified - 1).unsqueeze(1))
        rows = (steps * n_envs + env.unsqueeze(1)).flatten()
        sample_offsets = None
        if offsets is not None and policy.n_samples > 0:
            sample_offsets = offsets[:, rows]  # [n_Z, N, L]
        # Indexing copies the recorded (inference) tensors into normal ones, which autograd may save.
        return MinibatchCache(
            valid=torch.arange(rows.shape[0], device=features.device),
            previous_precisions=(previous_precision.flatten(0, 1)[rows],),
            kl_offset=kl_offset.flatten()[rows],
            entropy=entropy.flatten()[rows],
            sample_offsets=sample_offsets,
        )


#: The policy class of every registered belief by its name (``"LaplacePolicy"``): ``BayesPPO``'s
#: policy aliases. The classes are derived from :mod:`bayes_agents.beliefs.registry` and live in
#: this module under those names (``bayes_agents.policies.LaplacePolicy``), so saved models load.
POLICY_ALIASES: dict[str, type[BeliefPolicy]] = {}
#: The same classes by method name (``"laplace"``).
POLICIES: dict[str, type[BeliefPolicy]] = {}


def _derive_policy(spec: BeliefSpec) -> None:
    policy_class = spec.derive(BeliefPolicy, "Policy", __name__, spec.policy_doc)
    globals()[spec.policy_name] = policy_class
    POLICY_ALIASES[spec.policy_name] = policy_class
    POLICIES[spec.method] = policy_class


# RL2Policy, LaplacePolicy, VariBADPolicy, GLiBRLPolicy, VRNNPolicy, and any belief registered later.
on_register(_derive_policy)
