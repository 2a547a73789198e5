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
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, fields
from typing import Any

import torch
from torch import Tensor, nn


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
        return BeliefOutput(**values)


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
    """

    obs_dim: int
    action_dim: int
    discrete_actions: bool

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
        if not isinstance(batch_size, int) or batch_size < 1:
            raise ValueError(f"batch_size must be an int >= 1, got {batch_size!r}")
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

        :param noise: standard normal draws ``[n_samples, .., latent_dim]`` to use instead of drawing
            them (distributional beliefs); ignored by point estimates.
        """
        _check_n_samples(n_samples)
        return output.mean.expand(n_samples, *output.mean.shape)

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
        self.epsilon = float(epsilon)
        self.clip = float(clip)
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


def _check_n_samples(n_samples: int) -> None:
    if not isinstance(n_samples, int) or n_samples < 1:
        raise ValueError(f"n_samples must be an int >= 1, got {n_samples!r}")


def check_positive_int(name: str, value: int) -> None:
    """Raise ``ValueError`` unless ``value`` is an int >= 1."""
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name} must be an int >= 1, got {value!r}")


def check_bools(flags: dict[str, object], error: type[Exception] = TypeError) -> None:
    """Raise ``error`` naming the first of ``flags`` (name → value) that is not a bool."""
    for name, flag in flags.items():
        if not isinstance(flag, bool):
            raise error(f"{name} must be a bool, got {flag!r}")


def check_choice(name: str, value: str, allowed: tuple[str, ...]) -> None:
    """Raise ``ValueError`` unless ``value`` is one of ``allowed``."""
    if value not in allowed:
        raise ValueError(f"{name} must be one of {allowed}, got {value!r}")
