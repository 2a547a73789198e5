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

from bayes_agents.beliefs import Belief, BeliefOutput, InputLayout, LaplaceBelief, RL2Belief
from bayes_agents.beliefs.glibrl import GLiBRLBelief
from bayes_agents.beliefs.varibad import VariBADBelief
from bayes_agents.beliefs.vrnn import VRNNBelief

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
        self._last_output: BeliefOutput | None = None
        self._loss_mask: Tensor | None = None
        self._pending_aux_loss: Tensor | None = None
        #: Precomputed stop-gradient parts of the next ``evaluate_actions`` minibatch; set by
        #: BayesPPO, consumed (and cleared) by that call.
        self._minibatch_cache: MinibatchCache | None = None
        #: Set by BayesPPO during a rollout: ``forward`` (one rollout step) hands it the step's
        #: detached belief output and posterior-sample offsets (``add(output, offsets)``).
        self._rollout_record: Any = None
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
        data.update(n_samples=self.n_samples, detach_critic=self.detach_critic, **self.belief_kwargs)
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
        """Run the belief over SB3's batch of ``n_seq`` padded sequences.

        :param features: ``[n_seq * T, D]`` (sequence-major, as the buffer lays it out).
        :param episode_starts: ``[n_seq * T]``.
        :return: the belief output flattened back to ``[n_seq * T, ..]`` with the posterior-sample
            noise ``[n_samples, n_seq * T, L]`` (None without sampling), and the new state slots.
        """
        n_seq = lstm_states[0].shape[1]
        inputs = features.reshape(n_seq, -1, features.shape[-1]).swapaxes(0, 1)
        starts = episode_starts.reshape(n_seq, -1).swapaxes(0, 1) > 0.5
        state, keys = self.unpack_state(lstm_states)
        output, state = self.belief.sequence(inputs, state, starts)
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

    # ------------------------------------------------------------------------------ SB3 entry points
    def forward(
        self, obs: Tensor, lstm_states: RNNStates, episode_starts: Tensor, deterministic: bool = False
    ) -> tuple[Tensor, Tensor, Tensor, RNNStates]:
        features = self.extract_features(obs)
        (output, noise), slots = self._process_sequence(features, lstm_states.pi, episode_starts)
        offsets = None
        if noise is not None and isinstance(self.belief, LaplaceBelief):  # = belief.sample - mean
            offsets = self.belief.sample_offsets(output.precision, output.precision_cholesky, noise)
        if self._rollout_record is not None:
            self._rollout_record.add(self._last_output, offsets)
        distribution = self._action_distribution(output, noise, features, sample_offsets=offsets)
        actions = distribution.get_actions(deterministic=deterministic)
        log_prob = distribution.log_prob(actions)
        values = self._values(output, features)
        actions = actions.reshape((-1, *self.action_space.shape))
        return actions, values, log_prob, RNNStates(slots, slots)

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
        features = self.extract_features(obs)
        cache, self._minibatch_cache = self._minibatch_cache, None
        if cache is None:
            (output, noise), _ = self._process_sequence(features, lstm_states.pi, episode_starts)
            distribution = self._action_distribution(output, noise, features)
        else:
            output, offsets = self._cached_belief_pass(features, lstm_states.pi, episode_starts, cache)
            distribution = self._action_distribution(output, None, features, sample_offsets=offsets)
        if self._loss_mask is not None:
            # Only BayesPPO sets a mask; it then adds this loss to the PPO loss (see BayesPPO.train).
            self._pending_aux_loss = self._masked_aux_loss(output, self._loss_mask)
        return self._values(output, features), distribution.log_prob(actions), distribution.entropy()

    def _masked_aux_loss(self, output: BeliefOutput, mask: Tensor) -> Tensor:
        """The belief's auxiliary loss over the rows ``mask`` ``[N]`` of ``output``."""
        return self.belief.aux_loss(output.apply(lambda value: value[mask]))

    # ------------------------------------------------------------------------------ belief statistics
    @property
    def last_belief_output(self) -> BeliefOutput | None:
        """The (detached) belief output of the last forward pass, flattened to ``[N, ..]``."""
        return self._last_output


class RL2Policy(BeliefPolicy):
    """RL²: the policy conditions on a recurrent point estimate of the task.

    Belief keywords (``policy_kwargs``): ``hidden_size`` (128), ``latent_dim`` (64), ``rnn``
    (``"lstm"``/``"gru"``), ``embed_sizes`` — see :class:`~bayes_agents.beliefs.RL2Belief`.
    """

    belief_class = RL2Belief


class LaplacePolicy(BeliefPolicy):
    """Laplace-VRNN: RL²'s recurrence with a Laplace-approximated Gaussian task posterior.

    Belief keywords (``policy_kwargs``): those of :class:`RL2Policy` plus ``window`` (k),
    ``covariance`` (``"full"``/``"diag"``), ``variant`` (``"stationary"``, ``"sum_precision"``,
    ``"markov"``), ``damping`` and ``beta`` (KL penalty, applied by :class:`~bayes_agents.BayesPPO`);
    ``n_samples`` posterior samples are averaged in the action head (0: posterior mean). See
    :class:`~bayes_agents.beliefs.LaplaceBelief`. Under :class:`~bayes_agents.BayesPPO` the update
    reuses the precisions the rollout computed (``reuse_rollout_precision``); stock ``RecurrentPPO``
    recomputes them for every minibatch.
    """

    belief_class = LaplaceBelief

    def _masked_aux_loss(self, output: BeliefOutput, mask: Tensor) -> Tensor:
        # The KL penalty reads kl_to_previous only: do not copy the [N, L, L] precisions and factors.
        return self.belief.aux_loss(
            BeliefOutput(mean=output.mean[mask], kl_to_previous=output.kl_to_previous[mask])
        )


class VariBADPolicy(BeliefPolicy):
    """VariBAD: the policy conditions on ``[state, μ_t, log σ_t²]`` of a VAE-trained task posterior.

    Belief keywords (``policy_kwargs``): ``latent_dim`` (5), ``hidden_size`` (GRU, 64),
    ``state_embed_size``/``action_embed_size``/``reward_embed_size`` (8), ``reward_decoder``
    (``"per_state"`` with ``grid_size`` for the grid, ``"per_action"`` for the bandit, ``"gaussian"``
    (default) or ``"bernoulli"``), ``reward_decoder_sizes`` ((32, 32)), ``reward_decoder_inputs``,
    ``reward_threshold``, ``state_decoder``, ``state_decoder_sizes``, ``kl_weight`` (0.01), ``vae_lr``
    (1e-3), ``vae_updates_per_ppo_update`` (3), ``vae_batch_trials`` (25), ``buffer_trials`` (1000),
    ``elbo_times``, ``decodes_per_elbo``, ``backprop_rl_loss`` (False), ``normalize_policy_input`` (True)
    and ``policy_reward_beliefs`` (False). The VAE trains only under
    :class:`~bayes_agents.BayesPPO` (its ``after_policy_update`` hook); ``n_samples`` must be 0. See
    :class:`~bayes_agents.beliefs.varibad.VariBADBelief`.
    """

    belief_class = VariBADBelief
    needs_input_layout = True


class GLiBRLPolicy(BeliefPolicy):
    """GLiBRL: the policy conditions on a conjugate Bayesian linear model of the transitions.

    Belief keywords (``policy_kwargs``): ``basis_dim`` (d, 16), ``basis_hidden_sizes`` ((64, 64)),
    ``prior_precision`` (λ, 1.0), ``prior_noise_concentration`` (a₀, 1.0), ``prior_noise_rate``
    (b₀, 1.0), ``model_loss_weight`` (1.0; the per-transition negative log marginal likelihood that
    trains the basis, applied by :class:`~bayes_agents.BayesPPO`), ``detach_policy_input``
    (True), ``fit_dynamics`` (True), ``normalize_policy_input`` (True), ``action_predictions``
    (False; discrete actions), ``basis_updates_per_ppo_update`` (0) and ``basis_lr`` (1e-3; extra
    basis steps in ``after_policy_update``). The package's grid and bandit defaults
    (:func:`bayes_agents.methods.method_defaults`) change the prior scale and switch the options on.
    The head sees the posterior features and the observation; ``n_samples`` must be 0. See
    :class:`~bayes_agents.beliefs.glibrl.GLiBRLBelief`.
    """

    belief_class = GLiBRLBelief
    needs_input_layout = True


class VRNNPolicy(BeliefPolicy):
    """VRNN (the Laplace-VRNN paper's variational baseline): RL²'s recurrence with an amortised Gaussian
    task posterior whose mean and covariance are predicted from the cell output.

    Belief keywords (``policy_kwargs``): those of :class:`RL2Policy` plus ``covariance`` (``"full"``:
    ``Σ = U diag(exp s) Uᵀ`` with ``U`` a Cayley map; ``"diag"``), ``beta`` (KL penalty
    ``β·KL(q_t ‖ sg q_{t−1})``, applied by :class:`~bayes_agents.BayesPPO`) and ``log_variance_bound``;
    ``n_samples`` posterior samples are averaged in the action head (0: posterior mean). See
    :class:`~bayes_agents.beliefs.vrnn.VRNNBelief`.
    """

    belief_class = VRNNBelief
