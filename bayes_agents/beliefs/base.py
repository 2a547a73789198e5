"""The interface every belief module (RL², Laplace-VRNN, ...) implements.

A belief turns the per-step RL² input ``x_t`` (the caller's flattened concatenation of observation,
previous action, previous reward and new-episode flag) into a task latent ``z``: a point estimate
(RL²) or a Gaussian posterior ``q_t = N(mean_t, precision_t^{-1})`` (Laplace-VRNN).

Conventions shared by all beliefs:

* The belief state is one flat float tensor ``[B, state_size]`` so that it fits into the recurrent
  state slots of sb3-contrib's ``RecurrentPPO`` buffer. The all-zero state is the initial (prior)
  state, so a caller that zero-initialises its storage (as ``RecurrentPPO`` does) is correct.
* ``episode_starts`` follows Stable-Baselines3: where ``episode_starts[t, b] == 1`` the state of
  row ``b`` is reset to the initial state *before* ``inputs[t, b]`` is processed. In the trial
  environments of this package an SB3 episode is a trial, so the belief forgets the previous task.
* ``step`` is ``sequence`` with ``T = 1``; subclasses implement ``sequence`` only, and ``sequence``
  must equal a loop of ``step`` calls (resets included).
* Optional hooks are declared (and documented) on :class:`Belief` with do-nothing defaults, so callers
  use them directly: :meth:`Belief.after_policy_update`, :meth:`Belief.add_trials` and
  :meth:`Belief.update_trial_model` (capability :attr:`Belief.trains_on_trials`),
  :meth:`Belief.reward_probabilities` (None without a per-head reward decoder) and
  :meth:`Belief.aux_loss_rows`.
* Shared helpers: Gaussian posteriors are sampled by :func:`gaussian_sample` (diagonal, full or
  block-diagonal precision); hyper-parameters are checked by :func:`check_int`, :func:`check_real`,
  :func:`check_choice`, :func:`check_bools` and :func:`check_sizes`, with one convention:
  ``TypeError`` for a wrong type, ``ValueError`` for a wrong value (NaN, ±inf, out of range), the
  message naming the argument and what it allows.
"""

from __future__ import annotations

import math
import numbers
from abc import ABC, abstractmethod
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from ..schedules import resolve_schedule

#: ``(time [M], batch [M])`` int64 indices of entries of a ``[T, B, ..]`` sequence output.
EntryIndex = tuple[Tensor, Tensor]


@dataclass
class BeliefOutput:
    """What a belief reports at every step. Leading dims ``[..]`` are ``[B]`` or ``[T, B]``.

    :param mean: posterior mean / point estimate of the task latent, ``[.., latent_dim]``.
    :param precision: posterior precision ``Λ`` (inverse covariance), ``[.., L, L]`` for a full
        covariance or ``[.., L]`` (the diagonal) for a diagonal one; ``None`` for point estimates.
    :param precision_cholesky: lower Cholesky factor of ``precision``, ``[.., L, L]`` (full
        covariance only; ``None`` otherwise).
    :param entropy: differential entropy of the posterior in nats, ``[..]``; ``None`` for point
        estimates.
    :param kl_to_previous: ``KL(q_t || q_{t-1})`` in nats, ``[..]``, where ``q_{t-1}`` is the prior at
        a reset; differentiable through ``mean`` only. ``None`` for point estimates.
    """

    mean: Tensor
    precision: Tensor | None = None
    precision_cholesky: Tensor | None = None
    entropy: Tensor | None = None
    kl_to_previous: Tensor | None = None

    @property
    def is_distribution(self) -> bool:
        """True if the output is a posterior distribution (not a point estimate)."""
        return self.precision is not None

    def apply(self, function: Callable[[Tensor], Tensor]) -> BeliefOutput:
        """A new output with ``function`` applied to every tensor field (e.g. ``lambda x: x[t]``,
        ``lambda x: x.flatten(0, 1)``, ``Tensor.detach``); ``None`` fields stay ``None``."""
        values = {}
        for field in fields(self):
            value = getattr(self, field.name)
            values[field.name] = None if value is None else function(value)
        return type(self)(**values)  # subclasses (Laplace, GLiBRL) keep their type and extra fields

    @classmethod
    def cat(cls, outputs: Sequence[BeliefOutput], dim: int = 0) -> BeliefOutput:
        """Outputs of one type concatenated along ``dim`` of every field; a field that is None in
        any of them (e.g. left out by :meth:`Belief.policy_sequence`) is None in the result."""
        first = outputs[0]
        values = {}
        for field in fields(first):
            parts = [getattr(output, field.name) for output in outputs]
            values[field.name] = None if any(part is None for part in parts) else torch.cat(parts, dim=dim)
        return type(first)(**values)


@dataclass(frozen=True)
class InputLayout:
    """Where each part of the RL² input ``x_t`` = [obs, prev_action, prev_reward, new_episode] lies.

    Beliefs that model transitions (VariBAD, GLiBRL) need to split ``x_t``: the transition observed
    at step ``t`` is ``(obs_{t-1}, prev_action_t, prev_reward_t, obs_t)``. Where
    ``new_episode_t == 1`` the env has already put the agent back at an inner episode's start, so
    ``obs_t`` is *not* the successor of ``obs_{t-1}`` (the reward still is the reward of that step);
    at a trial start there is no previous step at all.

    :param obs_dim: flat size of ``obs`` (first in ``x_t``).
    :param action_dim: flat size of ``prev_action`` (one-hot for discrete actions).
    :param discrete_actions: whether ``prev_action`` is a one-hot of a ``Discrete`` action.
    :param obs_low, obs_high: the bounds of each flat ``obs`` entry when the observation space is
        a bounded ``Box`` (see :func:`observation_bounds`), else None; beliefs that interpret the
        observation (VariBAD's ``per_state`` decoder: grid coordinates) check themselves against them.
    """

    obs_dim: int
    action_dim: int
    discrete_actions: bool
    obs_low: tuple[float, ...] | None = None
    obs_high: tuple[float, ...] | None = None

    @property
    def input_dim(self) -> int:
        """Size of ``x_t``: obs + action + reward + new-episode flag."""
        return self.obs_dim + self.action_dim + 2

    def split(self, inputs: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """``inputs`` ``[.., input_dim]`` → ``obs [.., O]``, ``prev_action [.., A]``,
        ``prev_reward [..]``, ``new_episode [..]`` (views)."""
        if inputs.shape[-1] != self.input_dim:
            raise ValueError(f"inputs must end in input_dim={self.input_dim}, got {tuple(inputs.shape)}")
        obs = inputs[..., : self.obs_dim]
        action = inputs[..., self.obs_dim : self.obs_dim + self.action_dim]
        return obs, action, inputs[..., -2], inputs[..., -1]


def observation_bounds(space: Any) -> dict[str, tuple[float, ...] | None]:
    """``{"obs_low": .., "obs_high": ..}`` of a gymnasium ``Box`` observation space, flattened, for
    :class:`InputLayout` (``InputLayout(obs_dim, action_dim, discrete, **observation_bounds(space))``);
    None for other spaces or unbounded entries."""
    low, high = getattr(space, "low", None), getattr(space, "high", None)
    if low is None or high is None:
        return {"obs_low": None, "obs_high": None}
    low, high = (tuple(float(value) for value in bound.reshape(-1)) for bound in (low, high))
    if not all(math.isfinite(value) for value in (*low, *high)):
        return {"obs_low": None, "obs_high": None}
    return {"obs_low": low, "obs_high": high}


def check_input_layout(input_dim: int, input_layout: InputLayout) -> None:
    """Raise unless ``input_layout`` is an :class:`InputLayout` describing inputs of size ``input_dim``."""
    if not isinstance(input_layout, InputLayout):
        raise TypeError(f"input_layout must be an InputLayout, got {type(input_layout).__name__}")
    check_positive_int("input_dim", input_dim)
    if input_dim != input_layout.input_dim:
        raise ValueError(
            f"input_dim must equal input_layout.input_dim = {input_layout.input_dim}, got {input_dim}"
        )


class StateLayout:
    """Named slices of a flat belief state ``[B, size]``.

    :param parts: ``(name, shape)`` pairs in storage order; shapes exclude the batch dimension.
    """

    def __init__(self, parts: list[tuple[str, tuple[int, ...]]]):
        self.shapes: dict[str, tuple[int, ...]] = {}
        self.offsets: dict[str, int] = {}
        offset = 0
        for name, shape in parts:
            self.shapes[name] = tuple(shape)
            self.offsets[name] = offset
            offset += math.prod(shape)
        self.size = offset

    def unpack(self, state: Tensor) -> dict[str, Tensor]:
        """Views of the named parts of ``state`` ``[B, size]``, each ``[B, *shape]``."""
        batch = state.shape[0]
        return {
            name: state[:, offset : offset + math.prod(shape)].reshape(batch, *shape)
            for (name, shape), offset in zip(self.shapes.items(), self.offsets.values(), strict=True)
        }

    def pack(self, parts: dict[str, Tensor]) -> Tensor:
        """Concatenate ``parts`` (each ``[B, *shape]``, all names present) into ``[B, size]``."""
        if set(parts) != set(self.shapes):
            raise ValueError(f"parts must have exactly the keys {list(self.shapes)}, got {list(parts)}")
        batch = next(iter(parts.values())).shape[0]
        return torch.cat([parts[name].reshape(batch, -1) for name in self.shapes], dim=1)


class Belief(nn.Module, ABC):
    """Abstract belief module. Subclasses set ``input_dim``, ``latent_dim``, ``state_size`` and
    implement :meth:`sequence`."""

    input_dim: int
    latent_dim: int
    state_size: int

    def _reference_parameter(self) -> Tensor:
        return next(self.parameters())

    def initial_state(self, batch_size: int, device: torch.device | str | None = None) -> Tensor:
        """The prior belief state, all zeros, ``[batch_size, state_size]``.

        :param device: defaults to the module's device; the dtype is the module's dtype.
        """
        check_positive_int("batch_size", batch_size)
        reference = self._reference_parameter()
        device = reference.device if device is None else device
        return torch.zeros(batch_size, self.state_size, device=device, dtype=reference.dtype)

    @abstractmethod
    def sequence(self, inputs: Tensor, state: Tensor, episode_starts: Tensor) -> tuple[BeliefOutput, Tensor]:
        """Process a whole sequence.

        :param inputs: ``[T, B, input_dim]``.
        :param state: belief state before ``inputs[0]``, ``[B, state_size]``.
        :param episode_starts: ``[T, B]`` (bool or 0/1 float); 1 resets the state before that step.
        :return: outputs with leading dims ``[T, B]`` and the state after ``inputs[T-1]``, ``[B, S]``.
        """

    def step(self, inputs: Tensor, state: Tensor, episode_start: Tensor) -> tuple[BeliefOutput, Tensor]:
        """One step: ``inputs`` ``[B, input_dim]``, ``state`` ``[B, S]``, ``episode_start`` ``[B]``.

        :return: outputs with leading dim ``[B]`` and the next state ``[B, S]``.
        """
        if inputs.dim() != 2 or episode_start.dim() != 1:
            raise ValueError(
                "step expects inputs [B, input_dim] and episode_start [B], got "
                f"{tuple(inputs.shape)} and {tuple(episode_start.shape)}"
            )
        output, next_state = self.sequence(inputs[None], state, episode_start[None])
        return output.apply(lambda value: value[0]), next_state

    def sample(
        self,
        output: BeliefOutput,
        n_samples: int,
        generator: torch.Generator | None = None,
        noise: Tensor | None = None,
    ) -> Tensor:
        """``n_samples`` latents ``[n_samples, .., latent_dim]``; a point estimate repeats its mean.

        A Gaussian posterior (``output.precision`` set) is sampled by :func:`gaussian_sample`:
        ``z = μ + L^{-T} ε`` with ``L`` the (full or block-diagonal) ``precision_cholesky``, or
        ``z = μ + ε / sqrt(precision)`` for a diagonal precision; differentiable through every field
        that carries gradient (the Laplace precision carries none by construction).

        :param noise: standard normal draws ``[n_samples, .., latent_dim]`` to use instead of drawing
            them (distributional beliefs, e.g. common random numbers); ignored by point estimates.
        """
        if output.precision is None and output.precision_cholesky is None:
            _check_n_samples(n_samples)
            return output.mean.expand(n_samples, *output.mean.shape)
        return gaussian_sample(
            output.mean, n_samples, output.precision, output.precision_cholesky, generator, noise
        )

    def training_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor
    ) -> tuple[BeliefOutput, Tensor]:
        """:meth:`sequence` for a PPO minibatch (``BeliefPolicy`` runs its padded sequences with it),
        whose auxiliary loss is read by :meth:`aux_loss_rows` only: the same values; a belief may
        carry the loss's gradients in a form that only :meth:`aux_loss_rows` reads (GLiBRL: through
        its sufficient statistics instead of every step's log predictive). By default :meth:`sequence`."""
        return self.sequence(inputs, state, episode_starts)

    def acting_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor, cholesky: bool = True
    ) -> tuple[BeliefOutput, Tensor, Callable[[], BeliefOutput]]:
        """:meth:`sequence` for acting (called under ``torch.inference_mode``): the output may leave
        out the fields no action needs (those :meth:`policy_input` and :meth:`sample` do not read);
        the returned ``complete()`` gives :meth:`sequence`'s whole output for these inputs, e.g. when
        a caller reads the statistics of the step. Beliefs whose statistics cost more than their
        policy input override this (Laplace-VRNN, GLiBRL); by default it is :meth:`sequence`.

        :param cholesky: whether the output must hold the posterior's Cholesky factor (the policy
            samples from a full covariance); beliefs may skip it when False.
        :return: the output, the next state and ``complete()``.
        """
        output, next_state = self.sequence(inputs, state, episode_starts)
        return output, next_state, lambda: output

    def policy_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor, read: EntryIndex | None = None
    ) -> BeliefOutput:
        """The outputs of :meth:`sequence` that :meth:`policy_input` reads, ``[T, B, ..]``, with the
        same gradients; the other fields may be left out (None). A belief whose policy input costs
        less than its whole posterior overrides this (Laplace-VRNN: the means alone, without the
        precisions). No state is returned. Default: :meth:`sequence`'s output.

        :param read: optional ``(time [M], batch [M])`` int64 indices: only those entries, leading dim
            ``[M]`` (equal to indexing the whole output to rounding). A caller that reads one entry
            per row (an extractor over a replay batch) lets a belief run its heads on ``M`` rows
            instead of ``T·B`` (RL²: the latent head after the recurrence).
        """
        output = self.sequence(inputs, state, episode_starts)[0]
        return output if read is None else output.apply(lambda value: value[read])

    @property
    def policy_input_dim(self) -> int:
        """Size of what the policy head sees of the belief (see :meth:`policy_input`)."""
        return self.latent_dim

    def policy_input(self, output: BeliefOutput) -> Tensor:
        """What the policy head conditions on when it does not sample, ``[.., policy_input_dim]``.

        The posterior mean by default; beliefs that hand the policy more of the posterior (VariBAD:
        ``[mean, log variance]``) or cut the RL gradient to the belief override this. Policies that
        sample (``n_samples > 0``) use :meth:`sample` instead, which requires
        ``policy_input_dim == latent_dim``.
        """
        return output.mean

    def aux_loss(self, output: BeliefOutput) -> Tensor:
        """The auxiliary loss the trainer adds to the RL loss (scalar); zero by default."""
        return output.mean.new_zeros(())

    @property
    def has_aux_loss(self) -> bool:
        """Whether :meth:`aux_loss` can be nonzero (Laplace-VRNN and VRNN with ``beta > 0``, GLiBRL):
        trainers of the auxiliary loss alone (the extractors' callback) skip beliefs without one.
        False by default."""
        return False

    def aux_loss_rows(self, output: BeliefOutput, mask: Tensor) -> Tensor:
        """The auxiliary loss of a PPO minibatch: :meth:`aux_loss` over the rows ``mask`` (``[N]`` bool)
        of an output with leading dim ``[N]`` (the minibatch's unpadded steps). Beliefs whose loss
        reads few fields override this to index only those (the Laplace KL penalty need not copy
        ``[N, L, L]`` precisions); GLiBRL's is 0 when its basis trains outside the PPO update."""
        return self.aux_loss(output.apply(lambda value: value[mask]))

    # ------------------------------------------------------------------------------ optional hooks
    # Every belief has these; the defaults do nothing, so callers use them without feature tests.

    #: Whether the belief trains a model of its own on whole trials (VariBAD's VAE): it then keeps
    #: what :meth:`add_trials` hands it and trains on it in :meth:`update_trial_model`. Callers may
    #: skip preparing trials for beliefs without it.
    trains_on_trials: ClassVar[bool] = False
    #: Whether the belief is a likelihood model of the rewards it reads (VariBAD's decoder, GLiBRL's
    #: regression): its ``prev_reward`` input must then be the env's raw reward, not one scaled by
    #: running statistics (see the ``norm_prev_reward`` run key of :mod:`bayes_agents.experiment`).
    models_rewards: ClassVar[bool] = False

    @property
    def fixed_during_policy_update(self) -> bool:
        """Whether a PPO update leaves this belief's output unchanged: neither the RL loss nor an
        auxiliary loss reaches the parameters it depends on (VariBAD without ``backprop_rl_loss``,
        whose encoder trains only in the VAE step after the update). :class:`~bayes_agents.BayesPPO`
        then runs the belief over the rollout once per update, not over every minibatch of every
        epoch. False by default."""
        return False

    def before_policy_update(self, model: Any) -> None:
        """Called by :class:`~bayes_agents.BayesPPO` at the start of every PPO update, before anything
        in the update reads the belief (the rollout is in ``model.rollout_buffer``). A belief that
        trains its own model on the rollout here gives the update the features the next rollout acts
        on (GLiBRL with ``model_loss_in_policy_update=False``). Nothing by default."""

    def after_policy_update(self, model: Any) -> None:
        """Called by :class:`~bayes_agents.BayesPPO` after every PPO update with the model (its
        ``rollout_buffer`` still holds the rollout, see :func:`rollout_inputs`; log to
        ``model.logger``). Beliefs that train a model of their own (VariBAD's VAE, GLiBRL's extra
        basis steps) do it here; the stock ``RecurrentPPO`` never calls it. Nothing by default."""

    def add_trials(self, inputs: Any, episode_starts: Any, next_starts: Any | None = None) -> int:
        """Hand the belief the RL² inputs of a rollout, ``x_t`` ``[n_envs, n_steps, input_dim]`` with
        SB3's ``episode_starts`` ``[n_envs, n_steps]`` and optionally ``next_starts`` ``[n_envs]``
        (whether the step after the rollout starts a trial), to cut into whole trials for
        :meth:`update_trial_model` (used by :class:`~bayes_agents.callbacks.BeliefAuxLossCallback`).

        :return: the number of complete trials kept; 0 by default (the belief keeps none).
        """
        return 0

    def update_trial_model(self, progress_remaining: float = 1.0) -> dict[str, float]:
        """Train the belief's own model on the trials of :meth:`add_trials` (one round, as after a
        PPO update) at the point ``progress_remaining`` of the training budget (1 → 0, for a
        decaying learning rate); returns the statistics to log by name. Nothing (``{}``) by
        default."""
        return {}

    def reward_probabilities(self, latent: Tensor) -> Tensor | None:
        """The belief's read-out of the reward in the task's own terms: per decoder head (grid cell,
        bandit arm) ``p(r > threshold | head, latent)`` ``[.., n_heads]`` for latents ``[.., L]``;
        ``None`` for beliefs without such a decoder (the default)."""
        return None

    def _prepare_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor
    ) -> tuple[Tensor, Tensor]:
        """Check shapes; return ``inputs`` in the module's dtype and ``episode_starts`` as bool."""
        if inputs.dim() != 3 or inputs.shape[-1] != self.input_dim:
            raise ValueError(f"inputs must be [T, B, {self.input_dim}], got {tuple(inputs.shape)}")
        steps, batch = inputs.shape[:2]
        if episode_starts.shape != (steps, batch):
            raise ValueError(
                f"episode_starts must be [T, B] = {(steps, batch)}, got {tuple(episode_starts.shape)}"
            )
        if state.shape != (batch, self.state_size):
            raise ValueError(
                f"state must be [B, state_size] = {(batch, self.state_size)}, got {tuple(state.shape)}"
            )
        dtype = self._reference_parameter().dtype
        starts = episode_starts if episode_starts.dtype == torch.bool else episode_starts > 0.5
        return inputs.to(dtype), starts


class SigmoidTanh(nn.Module):
    """``tanh``, computed as ``2·σ(2x) − 1`` (the same function, equal to ``torch.tanh`` within a few
    float32 ulps of 1). Why: torch's CPU ``tanh`` kernel is not vectorised in current builds while
    its ``sigmoid`` is: 0.9 ms against 0.13 ms for 300k float32 values on one core of this machine
    class, and GLiBRL's basis evaluates a 64-wide MLP on every step and every action."""

    def forward(self, values: Tensor) -> Tensor:
        return torch.sigmoid(2.0 * values).mul(2.0).sub(1.0)


class RunningNormalizer(nn.Module):
    """Running mean/variance standardisation of features ``[.., D]`` for a policy head.

    The statistics are those of every batch passed to :meth:`update` (Chan et al.'s parallel
    update, as Stable-Baselines3's ``RunningMeanStd``), kept as buffers so that they are saved and
    loaded with the policy and follow it across devices. Before any update it is the identity
    (mean 0, variance 1). Why: posterior parameters such as ``log σ²`` drift to magnitudes that
    saturate a ``tanh`` policy layer while the model that produces them trains (VariBAD normalises
    its latent for the policy the same way).

    :param size: feature size ``D``.
    :param epsilon: added to the variance before the square root.
    :param clip: normalised values are clipped to ``[-clip, clip]``.
    """

    def __init__(self, size: int, epsilon: float = 1e-8, clip: float = 10.0):
        super().__init__()
        check_positive_int("size", size)
        self.epsilon = check_real("epsilon", epsilon, 0.0, low_open=True)
        self.clip = check_real("clip", clip, 0.0, low_open=True)
        self.register_buffer("mean", torch.zeros(size))
        self.register_buffer("var", torch.ones(size))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    @torch.no_grad()
    def update(self, values: Tensor) -> None:
        """Merge the statistics of ``values`` ``[.., D]`` (all leading dims are samples)."""
        if values.shape[-1] != self.mean.shape[0]:
            raise ValueError(f"values must end in {self.mean.shape[0]}, got {tuple(values.shape)}")
        flat = values.detach().reshape(-1, values.shape[-1]).to(self.mean.dtype)
        if flat.shape[0] == 0:
            return
        batch_count = float(flat.shape[0])
        batch_mean, batch_var = flat.mean(0), flat.var(0, unbiased=False)
        count = float(self.count)
        if count == 0:
            self.mean.copy_(batch_mean)
            self.var.copy_(batch_var)
        else:
            total = count + batch_count
            delta = batch_mean - self.mean
            self.mean.add_(delta * (batch_count / total))
            self.var.copy_(
                (self.var * count + batch_var * batch_count + delta.square() * (count * batch_count / total))
                / total
            )
        self.count.add_(batch_count)

    def forward(self, values: Tensor) -> Tensor:
        """``clip((values − mean) / sqrt(var + ε))``, differentiable in ``values``."""
        scale = torch.rsqrt(self.var + self.epsilon)
        return ((values - self.mean) * scale).clamp(-self.clip, self.clip)


def entries_equal(first: Tensor, second: Tensor) -> Tensor:
    """``(first == second).all(dim=-1)``: whether the last-dim vectors are equal, entry by entry.

    The count of unequal entries, as bytes summed in int32: exact like ``==`` (so ``-0.0`` equals
    ``0.0`` and NaN equals nothing), and ~2x faster than ``.all(dim=-1)``, whose CPU reduction over a
    short last dim is slow (verifying the prefixes of
    :func:`bayes_agents.extractors.prefix_sources` took a third of its time).
    """
    return (first != second).view(torch.uint8).sum(dim=-1, dtype=torch.int32) == 0


def rollout_inputs(model: Any) -> tuple[Tensor, Tensor]:
    """The RL² inputs of the rollout in ``model.rollout_buffer`` (an sb3-contrib ``RecurrentPPO``), for
    beliefs that train a model of their own in ``after_policy_update``.

    Works before and after ``train()``, which leaves the buffer's arrays flattened env-major.

    :return: ``x_t`` ``[n_steps, n_envs, D]`` (time-major, from the policy's features extractor, on
        its device, no gradient) and SB3's episode starts ``[n_steps, n_envs]`` (1 where a trial
        starts).
    """
    buffer, policy = model.rollout_buffer, model.policy
    n_steps, n_envs = buffer.buffer_size, buffer.n_envs

    def time_major(array: Any) -> Tensor:
        array = torch.as_tensor(array, device=policy.device)
        if buffer.generator_ready:
            return array.reshape(n_envs, n_steps, *array.shape[1:]).transpose(0, 1)
        return array

    observations = buffer.observations
    if isinstance(observations, dict):
        obs = {key: time_major(array).flatten(0, 1) for key, array in observations.items()}
    else:
        obs = time_major(observations).flatten(0, 1)
    with torch.no_grad():
        inputs = policy.extract_features(obs).view(n_steps, n_envs, -1)
    return inputs, time_major(buffer.episode_starts).reshape(n_steps, n_envs)


def model_adam(parameters: Any, lr: float) -> torch.optim.Adam:
    """Adam for a belief's own model steps (VariBAD's VAE, GLiBRL's basis): torch's fused kernel when
    every parameter is a floating tensor on the CPU or a GPU (one kernel for all parameters, ~3x
    cheaper per step than the per-parameter loop for these small networks), otherwise the
    multi-tensor (``foreach``) implementation. Both are Adam's update to rounding."""
    parameters = list(parameters)
    if parameters and all(p.is_floating_point() and p.device.type in ("cpu", "cuda") for p in parameters):
        try:
            return torch.optim.Adam(parameters, lr=lr, fused=True)
        except RuntimeError:  # no fused kernel for this device/dtype in this torch build
            pass
    return torch.optim.Adam(parameters, lr=lr, foreach=True)


# ---------------------------------------------------------------------------------- Gaussian samples
def standard_normal(
    mean: Tensor, n_samples: int, generator: torch.Generator | None = None, noise: Tensor | None = None
) -> Tensor:
    """``ε`` ``[n_samples, *mean.shape]`` in ``mean``'s dtype: ``noise`` checked (``ValueError`` for a
    wrong shape) or, when None, drawn from ``generator``."""
    _check_n_samples(n_samples)
    shape = (n_samples, *mean.shape)
    if noise is None:
        return torch.randn(shape, generator=generator, device=mean.device, dtype=mean.dtype)
    if tuple(noise.shape) != shape:
        raise ValueError(f"noise must be {shape}, got {tuple(noise.shape)}")
    return noise.to(mean.dtype)


def gaussian_offsets(
    noise: Tensor, precision: Tensor | None = None, precision_cholesky: Tensor | None = None
) -> Tensor:
    """``z − μ`` of a Gaussian given by its precision ``Λ`` for standard normal ``noise`` ``[n, .., L]``.

    * diagonal: ``ε / sqrt(Λ)`` from ``precision`` ``[.., L]`` (``precision_cholesky`` None);
    * full: ``L^{-T} ε`` from the lower Cholesky factor ``L`` (``L Lᵀ = Λ``) ``[.., L, L]``;
    * block diagonal: ``precision_cholesky`` ``[.., K, d, d]`` with ``K·d = L``: the factor of each
      block of ``d`` consecutive entries.

    Differentiable through the precision (detach it first for a stop-gradient posterior).
    """
    if precision_cholesky is None:
        if precision is None:
            raise ValueError("gaussian_offsets needs precision (diagonal) or precision_cholesky")
        if precision.dim() != noise.dim() - 1:
            raise ValueError(
                f"gaussian_offsets: a precision {tuple(precision.shape)} is not the diagonal of noise "
                f"{tuple(noise.shape)}; a full precision needs its precision_cholesky"
            )
        return noise * precision.rsqrt()
    blocks = precision_cholesky.dim() == noise.dim() + 1
    # Row form of L^T x = ε (x^T L = ε^T): solves without a transposed copy of L.
    rows = noise.unflatten(-1, (-1, precision_cholesky.shape[-1])) if blocks else noise
    offsets = torch.linalg.solve_triangular(precision_cholesky, rows.movedim(0, -2), upper=False, left=False)
    offsets = offsets.movedim(-2, 0)
    return offsets.flatten(-2) if blocks else offsets


def gaussian_sample(
    mean: Tensor,
    n_samples: int,
    precision: Tensor | None = None,
    precision_cholesky: Tensor | None = None,
    generator: torch.Generator | None = None,
    noise: Tensor | None = None,
) -> Tensor:
    """Reparameterised samples ``z = μ + offset`` ``[n_samples, .., L]`` of ``N(mean, Λ^{-1})`` (the
    precision as in :func:`gaussian_offsets`); ``noise`` replaces the standard normal draws (e.g.
    common random numbers). What every distributional belief's :meth:`Belief.sample` returns."""
    epsilon = standard_normal(mean, n_samples, generator, noise)
    return mean + gaussian_offsets(epsilon, precision, precision_cholesky)


# ---------------------------------------------------------------------------------- validation
# One convention for every belief hyper-parameter: TypeError when the value has the wrong type,
# ValueError when it has the right type but lies outside its allowed range; the message names the
# argument, what is allowed and the value given.

#: Upper bound of scale-like hyper-parameters (precisions, loss weights): larger values leave the
#: float32 range of the posterior terms they enter (``damping=1e300`` is ``inf`` in float32 and
#: makes the entropy NaN) or swamp every other term of the loss.
MAX_SCALE = 1e6


def _check_n_samples(n_samples: int) -> None:
    check_int("n_samples", n_samples, minimum=1)


def check_int(name: str, value: int, minimum: int = 1) -> int:
    """``value`` if it is an int ``>= minimum``: ``TypeError`` for a non-int (bools included),
    ``ValueError`` below ``minimum``."""
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an int >= {minimum}, got {value!r}")
    if value < minimum:
        raise ValueError(f"{name} must be an int >= {minimum}, got {value!r}")
    return int(value)


def check_positive_int(name: str, value: int) -> int:
    """``value`` if it is an int >= 1 (:func:`check_int`)."""
    return check_int(name, value, minimum=1)


def check_optional_int(name: str, value: int | None, minimum: int = 1) -> int | None:
    """None, or ``value`` checked by :func:`check_int`."""
    return None if value is None else check_int(name, value, minimum)


def check_sizes(name: str, sizes: Sequence[int]) -> tuple[int, ...]:
    """A sequence of layer widths (ints >= 1) as a tuple; ``TypeError`` for a non-sequence."""
    if isinstance(sizes, (str, bytes)) or not isinstance(sizes, Sequence):
        raise TypeError(f"{name} must be a sequence of ints >= 1, got {sizes!r}")
    return tuple(check_int(f"{name} entries", width) for width in sizes)


def check_real(
    name: str,
    value: float,
    low: float | None = None,
    high: float | None = None,
    *,
    low_open: bool = False,
    high_open: bool = False,
) -> float:
    """``float(value)`` if it is a finite real number in the range given by ``low``/``high`` (None:
    unbounded; ``*_open``: that bound excluded). ``TypeError`` for a non-real (bools, strings and
    complex numbers included), ``ValueError`` for NaN, ±inf or a value out of range."""
    if low is not None and high is not None:
        allowed = f"in {'(' if low_open else '['}{_number(low)}, {_number(high)}{')' if high_open else ']'}"
    elif low is not None:
        allowed = f"{'>' if low_open else '>='} {_number(low)}"
    elif high is not None:
        allowed = f"{'<' if high_open else '<='} {_number(high)}"
    else:
        allowed = ""
    allowed = f"a finite real number {allowed}".rstrip()
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be {allowed}, got {value!r}")
    value = float(value)
    below = low is not None and (value <= low if low_open else value < low)
    above = high is not None and (value >= high if high_open else value > high)
    if not math.isfinite(value) or below or above:
        raise ValueError(f"{name} must be {allowed}, got {value!r}")
    return value


def _number(value: float) -> str:
    """``0``, ``1``, ``1e6``: a bound as the messages print it."""
    if value == int(value) and abs(value) < 1e5:
        return str(int(value))
    short = f"{value:.0e}".replace("e+0", "e").replace("e+", "e").replace("e-0", "e-")
    return short if value == float(short) else repr(value)


def check_bools(flags: dict[str, object]) -> None:
    """``TypeError`` naming the first of ``flags`` (name → value) that is not a bool."""
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise TypeError(f"{name} must be a bool (True or False), got {flag!r}")


#: When a belief that trains a model of its own (VariBAD's VAE, GLiBRL's basis) takes its steps on a
#: rollout: ``"after"`` the PPO update (the update then trains the policy on the previous model's
#: features) or ``"before"`` it (on the features the next rollout acts on).
MODEL_UPDATE_TIMINGS = ("after", "before")


class ModelLearningRate:
    """The learning rate of a belief's own optimizer: a number in ``(0, 1]``, or ``"lin_<v>"`` (``v`` in
    ``(0, 1]``) for a linear decay from ``v`` to 0 over the budget of ``BayesPPO.learn``, the notation
    of the PPO schedules (:func:`~bayes_agents.schedules.resolve_schedule`). ``ValueError``/``TypeError``
    naming ``name`` otherwise. A class, so that a belief holding it pickles."""

    def __init__(self, name: str, value: float | str) -> None:
        self.value = value
        self.schedule = resolve_schedule(name, value) if isinstance(value, str) else None
        check_real(name, value if self.schedule is None else self.schedule.start, 0.0, 1.0, low_open=True)

    def at(self, progress_remaining: float) -> float:
        """The rate at ``progress_remaining`` (1 → 0; SB3's progress goes below 0 in a last rollout that
        overshoots the budget, where a decaying rate stops at 0)."""
        check_real("progress_remaining", progress_remaining, high=1.0)
        if self.schedule is None:
            return float(self.value)
        return self.schedule(max(progress_remaining, 0.0))

    def apply(self, optimizer: torch.optim.Optimizer, progress_remaining: float) -> float:
        """Set every parameter group of ``optimizer`` to the rate at ``progress_remaining``; returns it."""
        rate = self.at(progress_remaining)
        for group in optimizer.param_groups:
            group["lr"] = rate
        return rate


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> str:
    """``value`` if it is one of the strings ``allowed``: ``TypeError`` for a non-string,
    ``ValueError`` for another string."""
    if not isinstance(value, str):
        raise TypeError(f"{name} must be one of {allowed}, got {value!r}")
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
    return value
