"""Stable-Baselines3 features extractors that add a Bayesian task belief to any stock algorithm.

A stock algorithm (``PPO``, ``A2C``, ``SAC``, ``TD3``) has no memory, so the belief is recomputed
at every step from the trial's recent history, which :class:`~bayes_envs.wrappers.TrialHistoryWrapper`
puts into the observation::

    import gymnasium as gym
    from stable_baselines3 import PPO
    from bayes_envs.wrappers import TrialHistoryWrapper
    from bayes_agents.extractors import LaplaceExtractor

    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"))          # window = the whole trial
    PPO("MultiInputPolicy", env, policy_kwargs=dict(
        features_extractor_class=LaplaceExtractor,
        features_extractor_kwargs=dict(hidden_size=64, latent_dim=16, window=1),
    )).learn(10_000)

:class:`BeliefExtractor` runs ``belief.sequence`` over the valid history entries from the belief's
prior state and outputs ``[observation, belief.policy_input(q_t)]``: the very input the recurrent
:class:`~bayes_agents.policies.BeliefPolicy` gives its MLP heads, and, while the trial is at most
``window`` steps old, the very same belief (same weights ⇒ same numbers). Auxiliary belief losses
(Laplace KL, VariBAD ELBO, GLiBRL marginal likelihood) are trained by
:class:`~bayes_agents.callbacks.BeliefAuxLossCallback`.

Cost. With gradients (an update's minibatch), a step's belief costs ``O(window)`` recurrent steps
instead of one: the extractor trims each batch to its longest valid history and runs only what the
policy input needs (:meth:`~bayes_agents.beliefs.Belief.policy_sequence`: Laplace-VRNN's means,
without the precisions). Without gradients (acting, ``predict``, evaluation) a row whose history
extends the one it had at the previous call by one entry, at unchanged belief weights, costs one
recurrent step: the extractor keeps the belief state after each row's history and checks the
continuation exactly (the history's earlier entries equal, bit for bit, the previous call's, and
every parameter and buffer of the belief unchanged); other rows are run over their history from the
prior. The outputs are the full pass's to rounding (a single recurrent step uses the cell kernel).
A replay batch (SAC's next observations: histories of many lengths) runs, like a pass with
gradients, only what the policy input needs, and a pass without gradients over the histories of
the last pass with gradients, at the same weights, reuses it (SAC's critic with a shared extractor).
"""

from __future__ import annotations

import copy
from typing import Any, ClassVar

import numpy as np
import torch
from gymnasium import spaces
from stable_baselines3.common.preprocessing import get_flattened_obs_dim
from stable_baselines3.common.torch_layers import BaseFeaturesExtractor
from torch import Tensor

from bayes_agents.beliefs import Belief, BeliefOutput, InputLayout, entries_equal, observation_bounds
from bayes_agents.beliefs.registry import BeliefSpec, on_register
from bayes_envs.core import RL2_KEYS
from bayes_envs.wrappers import HISTORY_KEYS, HISTORY_MASK_KEY, TrialHistory

OBS_KEY = "obs"


def _looks_one_hot(space: spaces.Box) -> bool:
    return space.shape[-1] >= 2 and bool((space.low == 0).all() and (space.high == 1).all())


class BeliefExtractor(BaseFeaturesExtractor):
    """Generic belief extractor; subclasses set :attr:`belief_class` (see the module docstring).

    :param observation_space: the Dict space of :class:`~bayes_envs.wrappers.TrialHistoryWrapper`:
        ``"obs"``, the ``history_*`` parts of the last ``K`` RL² inputs (valid entries first,
        zero padding after) and ``"history_mask"`` ``[K]``.
    :param belief: use this (trained) belief instead of building a fresh one, e.g.
        ``model.policy.belief`` of a recurrent model; it is deep-copied (SB3 builds one extractor per
        actor/critic/target network, which must not share modules), and must accept the env's inputs.
    :param detach_belief: stop the RL gradient at the belief (train it by auxiliary losses only).
    :param freeze_belief: no gradients for the belief's parameters at all (a fixed, trained belief).
    :param discrete_actions: whether ``prev_action`` is a one-hot of a ``Discrete`` action; only used
        by transition-model beliefs (:attr:`needs_input_layout`). ``None`` guesses it from the space
        (``[0, 1]`` bounds and at least 2 entries); pass it for Box actions bounded in ``[0, 1]``.
    :param belief_kwargs: the belief's hyper-parameters (``hidden_size``, ``latent_dim``, ...), when
        ``belief`` is not given.

    ``features_dim = obs_dim + belief.policy_input_dim``.
    """

    belief_class: ClassVar[type[Belief]]
    #: Beliefs that split ``x_t`` into its parts (transition models) get ``input_layout=`` too.
    needs_input_layout: ClassVar[bool] = False

    def __init__(
        self,
        observation_space: spaces.Space,
        belief: Belief | None = None,
        detach_belief: bool = False,
        freeze_belief: bool = False,
        discrete_actions: bool | None = None,
        **belief_kwargs: Any,
    ) -> None:
        if not isinstance(observation_space, spaces.Dict):
            raise TypeError(
                f"{type(self).__name__} needs the Dict observation of "
                f"bayes_envs.wrappers.TrialHistoryWrapper, got {type(observation_space).__name__}"
            )
        missing = [
            key for key in (OBS_KEY, *HISTORY_KEYS, HISTORY_MASK_KEY) if key not in observation_space.spaces
        ]
        if missing:
            raise ValueError(
                f"the observation lacks the keys {missing}: wrap the env in "
                "bayes_envs.wrappers.TrialHistoryWrapper"
            )
        window = observation_space[HISTORY_MASK_KEY].shape[0]
        part_sizes = []
        for key in HISTORY_KEYS:
            shape = observation_space[key].shape
            if shape[0] != window:
                raise ValueError(f"observation_space[{key!r}] must have {window} entries, got shape {shape}")
            part_sizes.append(int(torch.Size(shape[1:]).numel()))
        obs_dim = get_flattened_obs_dim(observation_space[OBS_KEY])
        input_dim = sum(part_sizes)
        if belief is None:
            if self.needs_input_layout:
                if discrete_actions is None:
                    discrete_actions = _looks_one_hot(observation_space["history_prev_action"])
                layout = InputLayout(
                    part_sizes[0],
                    part_sizes[1],
                    bool(discrete_actions),
                    **observation_bounds(observation_space[OBS_KEY]),
                )
                belief = self.belief_class(input_dim, input_layout=layout, **belief_kwargs)
            else:
                belief = self.belief_class(input_dim, **belief_kwargs)
        else:
            if belief_kwargs:
                raise TypeError(
                    f"pass either belief or belief keywords, not both (got {sorted(belief_kwargs)})"
                )
            if not isinstance(belief, Belief):
                raise TypeError(f"belief must be a bayes_agents Belief, got {type(belief).__name__}")
            if belief.input_dim != input_dim:
                raise ValueError(
                    f"belief.input_dim must be {input_dim} (the env's RL² input), got {belief.input_dim}"
                )
            belief = copy.deepcopy(belief)
        super().__init__(observation_space, obs_dim + belief.policy_input_dim)
        self.belief = belief
        self.window = window
        self.obs_dim = obs_dim
        self.input_dim = input_dim
        self.detach_belief = bool(detach_belief)
        self.freeze_belief = bool(freeze_belief)
        if self.freeze_belief:
            self.belief.requires_grad_(False)
        #: The (detached) belief of the last forward pass, leading dim ``[N]``: the whole posterior
        #: when acting on envs; for a pass with gradients or over a replay batch (histories of many
        #: lengths), only the fields the policy input reads (``Belief.policy_sequence``).
        self.last_belief_output: BeliefOutput | None = None
        self._acting_cache: _ActingCache | None = None
        self._last_pass: _LastPass | None = None

    def history_inputs(self, observations: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The RL² inputs ``[T, N, input_dim]`` of the histories (time-major, trimmed to the longest
        valid history ``T <= K``) and the number of valid entries per row ``[N]`` (int64, >= 1)."""
        mask = observations[HISTORY_MASK_KEY]
        lengths = (mask > 0.5).sum(dim=1).clamp(min=1)
        longest = int(lengths.max())
        parts = [observations[key][:, :longest].flatten(2) for key in HISTORY_KEYS]
        return torch.cat(parts, dim=2).swapaxes(0, 1), lengths

    def belief_sequence(self, observations: dict[str, Tensor]) -> tuple[BeliefOutput, Tensor]:
        """Run the belief over each row's history from the prior state.

        :return: the output at every history entry, leading dims ``[T, N]`` (entries past a row's
            length are padding: ignore them), and the valid-entry mask ``[T, N]`` bool. Rows that
            are prefixes of another row's history are read off that row's pass (the same values).
        """
        inputs, lengths = self.history_inputs(observations)
        kept_inputs, state, starts, source = self._passes_from_prior(inputs, lengths)
        output = self.belief.sequence(kept_inputs, state, starts)[0]
        if len(source) > output.mean.shape[1]:  # each row reads its entries off its source's pass
            output = output.apply(lambda value: value[:, source])
        valid = torch.arange(inputs.shape[0], device=inputs.device)[:, None] < lengths[None, :]
        return output, valid

    def _passes_from_prior(self, inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """The belief passes from the prior that hold every row's history (:func:`prefix_sources`:
        one pass per trial, not per step).

        :param inputs: ``[T, N, D]``; :param lengths: ``[N]``.
        :return: the inputs ``[T', R, D]`` of the ``R`` histories to run (``T'``: the longest of them),
            their prior states ``[R, S]`` and episode starts ``[T', R]``, and each row's position among
            them ``[N]``.
        """
        keep, source = prefix_sources(inputs, lengths)
        kept_inputs = inputs[: int(lengths[keep].max())].index_select(1, keep)
        starts = torch.zeros(kept_inputs.shape[:2], dtype=torch.bool, device=inputs.device)
        starts[0] = True  # valid entries come first, so one reset at entry 0 covers every row
        return kept_inputs, self.belief.initial_state(len(keep), device=inputs.device), starts, source

    def _last_entries_from_prior(
        self, inputs: Tensor, lengths: Tensor, whole_posterior: bool
    ) -> BeliefOutput:
        """The belief after each row's whole history ``[N]``, run from the prior
        (:meth:`_passes_from_prior`): the whole posterior, or only what the policy input reads
        (``Belief.policy_sequence``, its heads run on the ``N`` read entries alone)."""
        kept_inputs, state, starts, source = self._passes_from_prior(inputs, lengths)
        last = (lengths - 1, source)
        if whole_posterior:
            return self.belief.sequence(kept_inputs, state, starts)[0].apply(lambda value: value[last])
        return self.belief.policy_sequence(kept_inputs, state, starts, read=last)

    def current_inputs(self, observations: dict[str, Tensor]) -> tuple[Tensor, Tensor]:
        """The RL² input of the current step (each row's last valid entry) ``[N, input_dim]`` and
        whether that step starts a trial (a history of one entry) ``[N]`` bool."""
        inputs, lengths = self.history_inputs(observations)
        rows = torch.arange(lengths.shape[0], device=lengths.device)
        return inputs[lengths - 1, rows], lengths == 1

    def current_belief(self, observations: dict[str, Tensor]) -> BeliefOutput:
        """The belief after each row's last valid entry (the current step), leading dim ``[N]``."""
        output, valid = self.belief_sequence(observations)
        last = valid.sum(dim=0) - 1
        rows = torch.arange(last.shape[0], device=last.device)
        return output.apply(lambda value: value[last, rows])

    def acting_belief(self, observations: dict[str, Tensor]) -> BeliefOutput:
        """:meth:`current_belief` without gradients, continuing each row from the belief state the
        previous call left where its history is that call's plus one entry (see the module
        docstring); the belief state after every row's history is kept for the next call."""
        inputs, lengths = self.history_inputs(observations)
        batch, device = lengths.shape[0], inputs.device
        cache = self._acting_cache
        # Rows whose history is the kept one plus one entry: the same envs, one step on. They
        # continue from the kept state if the weights are unchanged. (``slid``: the same envs, one
        # step on, with a full window that dropped its first entry.)
        extends = slid = continues = torch.zeros(batch, dtype=torch.bool, device=device)
        same_weights = cache is not None and cache.same_weights(self.belief)
        if cache is not None and cache.lengths.shape[0] == batch:
            extends, slid = cache.continued_rows(inputs, lengths), cache.slid_rows(inputs, lengths)
            if same_weights:
                continues = extends & cache.has_state
        # Rows that continue their history, or start one (a single entry), take one recurrent step.
        starts = lengths == 1
        stepped = continues | starts
        if bool(stepped.all()):  # the steady state of a rollout: one step for the whole batch
            rows = torch.arange(batch, device=device)
            state = self.belief.initial_state(batch, device=device)
            if bool(continues.any()):  # (then the kept batch is this one)
                state = torch.where(continues[:, None], cache.states, state)
            current = inputs[lengths - 1, rows].unsqueeze(0)
            output, state = self.belief.sequence(current, state, starts.unsqueeze(0))
            weights = cache.weights if same_weights else _ActingCache.snapshot(self.belief)
            has_state = torch.ones(batch, dtype=torch.bool, device=device)
            self._acting_cache = _ActingCache(inputs.clone(), lengths.clone(), state, weights, has_state)
            return output.apply(lambda value: value[0])
        groups: list[tuple[Tensor, BeliefOutput, Tensor]] = []
        if bool(stepped.any()):
            rows = stepped.nonzero()[:, 0]
            last = lengths[rows] - 1
            state = self.belief.initial_state(len(rows), device=device)
            if cache is not None:
                continued = continues[rows]
                state[continued] = cache.states[rows[continued]]
            output, state = self.belief.sequence(
                inputs[last, rows].unsqueeze(0), state, (lengths[rows] == 1).unsqueeze(0)
            )
            groups.append((rows, output.apply(lambda value: value[0]), state))
        # The others run from the prior. The envs of the kept batch (rows that extend or slide the
        # kept histories: an env batch after an update, or with a sliding window), or all rows at a
        # first call, get the whole posterior: per length when there are few lengths (trials run in
        # step), keeping each row's final state for the next call, else in one pass over the
        # histories that hold them (prefix_sources). The other rows (a replay batch, or SAC's env
        # batch after a replay batch and a gradient step) are not continued at the next call: one
        # pass of only what the policy input reads (Laplace-VRNN: no precisions).
        has_state = torch.ones(batch, dtype=torch.bool, device=device)
        rerun = ~stepped & (extends | slid | (cache is None))
        others = torch.unique(lengths[rerun])
        if len(others) <= _LENGTH_GROUPS:
            for length in others.tolist():
                rows = ((lengths == length) & rerun).nonzero()[:, 0]
                starts = torch.zeros(length, len(rows), dtype=torch.bool, device=device)
                starts[0] = True
                state = self.belief.initial_state(len(rows), device=device)
                output, state = self.belief.sequence(inputs[:length, rows], state, starts)
                groups.append((rows, output.apply(lambda value: value[-1]), state))
        else:
            groups.append(self._from_prior_without_states(inputs, lengths, rerun, whole_posterior=True))
            has_state &= ~rerun
        replay = ~stepped & ~rerun
        if bool(replay.any()):
            groups.append(self._from_prior_without_states(inputs, lengths, replay, whole_posterior=False))
            has_state &= ~replay
        rows = torch.cat([group[0] for group in groups])
        order = torch.empty_like(rows)
        order[rows] = torch.arange(len(rows), device=device)
        output = type(groups[0][1]).cat([group[1] for group in groups]).apply(lambda value: value[order])
        states = torch.cat([group[2] for group in groups])[order]
        weights = cache.weights if same_weights else _ActingCache.snapshot(self.belief)
        self._acting_cache = _ActingCache(inputs.clone(), lengths.clone(), states, weights, has_state)
        return output

    def _from_prior_without_states(
        self, inputs: Tensor, lengths: Tensor, chosen: Tensor, whole_posterior: bool
    ) -> tuple[Tensor, BeliefOutput, Tensor]:
        """The ``chosen`` rows ``[N]`` bool run from the prior (:meth:`_last_entries_from_prior`):
        their indices, their output at their last entry, and prior states (the states after their
        histories are not formed: these rows are not continued)."""
        rows = chosen.nonzero()[:, 0]
        output = self._last_entries_from_prior(inputs[:, rows], lengths[rows], whole_posterior)
        return rows, output, self.belief.initial_state(len(rows), device=inputs.device)

    def forward(self, observations: dict[str, Tensor]) -> Tensor:
        """``[N, obs_dim + policy_input_dim]``: the flattened current observation and the belief features.

        With gradients the belief comes from :meth:`~bayes_agents.beliefs.Belief.policy_sequence`
        over each row's history (only what the policy input reads); without, from the last pass with
        gradients if the histories and belief weights are bit-equal to its (:class:`_LastPass`), else
        from :meth:`acting_belief` (incremental, full posterior)."""
        if torch.is_grad_enabled():
            # Steps of one trial (an on-policy minibatch) are read off one pass of the trial.
            output = self._last_entries_from_prior(*self.history_inputs(observations), whole_posterior=False)
            self.last_belief_output = output.apply(Tensor.detach)
            self._last_pass = _LastPass(observations, self.last_belief_output, self.belief)
        elif self._last_pass is not None and self._last_pass.holds(observations, self.belief):
            output = self.last_belief_output = self._last_pass.output  # SAC's critic: the actor's batch
        else:
            output = self.last_belief_output = self.acting_belief(observations)
        belief = self.belief.policy_input(output)
        if self.detach_belief:
            belief = belief.detach()
        return torch.cat([observations[OBS_KEY].flatten(1), belief.to(observations[OBS_KEY].dtype)], dim=1)


#: Up to this many history lengths, :meth:`BeliefExtractor.acting_belief` runs the rows it cannot
#: continue per length (keeping their states); with more, in one pass without their states.
_LENGTH_GROUPS = 4
#: Rows compared with the whole batch at a time by :func:`prefix_sources`.
_PREFIX_BLOCK = 1024


def prefix_sources(inputs: Tensor, lengths: Tensor) -> tuple[Tensor, Tensor]:
    """Which histories to run so that every history of the batch is a prefix of one of them.

    A belief run from the prior over a history gives, at entry ``t``, the belief of that history's
    first ``t + 1`` entries; so a history that is a prefix of a longer one in the batch (an earlier
    step of the same trial) needs no pass of its own. Candidates are found by a position-weighted
    fingerprint of the prefixes and every match is then verified entry by entry (exact equality),
    so a fingerprint collision can only cost a pass, never give a wrong belief.

    :param inputs: ``[T, N, D]`` histories (time-major), row ``n`` valid in ``[:lengths[n]]``.
    :param lengths: ``[N]`` int64, each in ``[1, T]``.
    :return: ``keep`` ``[R]``, the rows to run (ascending), and ``source`` ``[N]``, the position in
        ``keep`` of the row whose pass holds each row's history.
    """
    batch, device = inputs.shape[1], inputs.device
    valid = torch.arange(inputs.shape[0], device=device)[:, None] < lengths[None, :]  # [T, N]
    weights = torch.rand(inputs.shape[0], inputs.shape[2], generator=torch.Generator().manual_seed(0))
    # One batched product per position: [T, N, D] @ [T, D, 1] (~7x faster than a broadcast sum).
    entry_keys = torch.bmm(inputs.double(), weights.to(device, torch.float64).unsqueeze(-1))[..., 0]  # [T, N]
    prefix_keys = (entry_keys * valid).cumsum(dim=0)
    rows = torch.arange(batch, device=device)
    last = lengths - 1
    own = prefix_keys.gather(0, last[None])[0]  # [N]: the key of each row's whole history
    # The longest candidate (the first among equals) holds every shorter prefix of its trial.
    priority = lengths * batch + (batch - 1 - rows)
    # A row of the batch's longest length can only be held by an equal row: only those whose
    # fingerprint another such row shares are searched (a replay batch of full windows: none).
    longest = lengths == lengths.max()
    _, inverse, counts = torch.unique(own[longest], return_inverse=True, return_counts=True)
    searched = ~longest
    searched[longest] = counts[inverse] > 1
    holder = rows.clone()
    for block in searched.nonzero()[:, 0].split(_PREFIX_BLOCK):  # [block, N] at a time: bounded memory
        # Row m can hold row n if it is at least as long and its prefix of n's length has n's key.
        at_n = prefix_keys.index_select(0, last[block])  # [block, N]: every row's key at n's length
        scale = own[block].abs()[:, None].clamp(min=1.0)
        candidate = (at_n - own[block, None]).abs() <= 1e-9 * scale
        candidate &= lengths[None, :] >= lengths[block, None]
        holder[block] = torch.where(candidate, priority[None, :], -1).argmax(dim=1)
    # Verify: row n's entries equal the holder's first lengths[n] entries.
    moved = (holder != rows).nonzero()[:, 0]
    moved_holder = holder.index_select(0, moved)
    same = entries_equal(inputs.index_select(1, moved), inputs.index_select(1, moved_holder))
    same |= ~valid.index_select(1, moved)  # [T, moved]
    holder.index_copy_(0, moved, torch.where(same.all(dim=0), moved_holder, moved))
    keep = torch.unique(holder)
    source = torch.searchsorted(keep, holder)
    return keep, source


class _ActingCache:
    """What :meth:`BeliefExtractor.acting_belief` keeps between calls: the histories' inputs
    ``[T, N, D]`` and lengths ``[N]``, the belief state after each row's history ``[N, S]`` where
    ``has_state`` ``[N]`` (rows run in one pass over many lengths have none), and a copy of the
    belief's parameters and buffers (the states hold only for those values)."""

    def __init__(
        self, inputs: Tensor, lengths: Tensor, states: Tensor, weights: list[Tensor], has_state: Tensor
    ) -> None:
        self.inputs, self.lengths, self.states, self.weights = inputs, lengths, states, weights
        self.has_state = has_state

    @staticmethod
    def belief_weights(belief: Belief) -> list[Tensor]:
        """The belief's parameters and buffers."""
        return [*belief.parameters(), *belief.buffers()]

    @classmethod
    def snapshot(cls, belief: Belief) -> list[Tensor]:
        """Copies of the belief's parameters and buffers."""
        return [tensor.detach().clone() for tensor in cls.belief_weights(belief)]

    def same_weights(self, belief: Belief) -> bool:
        """Whether the belief still has the kept values (compared, not version-counted: SB3's Polyak
        updates write ``.data`` in place, which no version counter sees)."""
        return _same_values(self.weights, self.belief_weights(belief))

    def continued_rows(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """``[N]`` bool: rows whose history is the kept one plus one entry, the kept entries equal."""
        return (lengths == self.lengths + 1) & self._kept_entries_lead(inputs, dropped=0)

    def slid_rows(self, inputs: Tensor, lengths: Tensor) -> Tensor:
        """``[N]`` bool: rows of the kept length (> 1) whose history is the kept one without its first
        entry plus one entry (a full window, one step on)."""
        return (lengths == self.lengths) & (lengths > 1) & self._kept_entries_lead(inputs, dropped=1)

    def _kept_entries_lead(self, inputs: Tensor, dropped: int) -> Tensor:
        """``[N]`` bool: rows whose kept valid entries after the first ``dropped`` equal, bit for bit,
        the first entries of the new history (both within each batch's trimmed length)."""
        common = min(self.inputs.shape[0] - dropped, inputs.shape[0])
        same = entries_equal(inputs[:common], self.inputs[dropped : dropped + common])  # [common, N]
        within = torch.arange(common, device=inputs.device)[:, None] < (self.lengths - dropped)[None, :]
        return (same | ~within).all(dim=0)


class _LastPass:
    """The histories of :meth:`BeliefExtractor.forward`'s last pass with gradients, its (detached)
    belief output and a copy of the belief's weights then. A pass without gradients over bit-equal
    histories at bit-equal weights returns that output instead of running the belief again: SB3's
    SAC/TD3 with ``share_features_extractor=True`` extract the same replay observations three times
    per gradient step (the actor with gradients, then the critic twice without), and only the
    actor's optimizer, after the last of them, moves the extractor."""

    def __init__(self, observations: dict[str, Tensor], output: BeliefOutput, belief: Belief) -> None:
        self.histories = [observations[key].detach().clone() for key in (*HISTORY_KEYS, HISTORY_MASK_KEY)]
        self.output = output
        self.weights = _ActingCache.snapshot(belief)

    def holds(self, observations: dict[str, Tensor], belief: Belief) -> bool:
        """Whether ``observations`` have this pass's histories and ``belief`` its weights, bit for bit."""
        current = [observations[key] for key in (*HISTORY_KEYS, HISTORY_MASK_KEY)]
        return _same_values(self.histories, current) and _same_values(
            self.weights, _ActingCache.belief_weights(belief)
        )


def _same_values(kept: list[Tensor], current: list[Tensor]) -> bool:
    return len(kept) == len(current) and all(
        old.shape == new.shape and old.device == new.device and torch.equal(old, new.detach())
        for old, new in zip(kept, current, strict=True)
    )


class HistoryPredictor:
    """Recurrent-style ``predict`` for a model trained on :class:`~bayes_envs.wrappers.TrialHistoryWrapper`
    observations, fed with the plain RL² Dict observations of a ``VecEnv`` (``bayes_envs.make_vec``).

    The "recurrent state" is the batched :class:`~bayes_envs.wrappers.TrialHistory` of the envs, so
    the model runs on the fast batched envs and fits :func:`bayes_envs.evaluation.evaluate`::

        evaluate(HistoryPredictor(model), "BayesGrid-v0", n_tasks=100)

    :param model: an SB3 model whose observation space is a ``TrialHistoryWrapper`` Dict space.
    :param name: the name reported by ``evaluate`` (default: the extractor's class name).
    """

    def __init__(self, model: Any, name: str | None = None) -> None:
        space = model.observation_space
        if not isinstance(space, spaces.Dict) or HISTORY_MASK_KEY not in space.spaces:
            raise TypeError(f"model must be trained on TrialHistoryWrapper observations, got {space}")
        self.model = model
        self.window = int(space[HISTORY_MASK_KEY].shape[0])
        self.part_shapes = {key: tuple(space[f"history_{key}"].shape[1:]) for key in RL2_KEYS}
        # The extractor that acts: the actor's for SAC/TD3, the shared (or policy) one for PPO/A2C.
        actor = getattr(model.policy, "actor", None)
        owner = actor if actor is not None else model.policy
        extractor = getattr(owner, "pi_features_extractor", None) or getattr(
            owner, "features_extractor", None
        )
        self.extractor = extractor
        self.name = name or type(extractor).__name__

    @property
    def last_belief_output(self) -> BeliefOutput | None:
        """The belief of the last :meth:`predict` (read by :func:`bayes_envs.evaluation.evaluate`)."""
        return getattr(self.extractor, "last_belief_output", None)

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: TrialHistory | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, TrialHistory]:
        """Actions for a batch of RL² Dict observations ``[B, ..]``.

        :param state: the histories returned by the previous call (``None`` at the first call).
        :param episode_start: ``[B]``; rows where it is set start a new trial (SB3 semantics).
        :return: the actions and the updated histories.
        """
        missing = [key for key in RL2_KEYS if key not in observation]
        if missing:
            raise ValueError(
                f"observation must be the RL² Dict of bayes_envs (rl2_inputs=True), missing {missing}"
            )
        batch = np.asarray(observation["obs"]).shape[0]
        restart = np.ones(batch, bool) if episode_start is None else np.asarray(episode_start, bool)
        if state is None:
            state = TrialHistory(batch, self.window, self.part_shapes)
            restart = np.ones(batch, bool)
        state.append({key: np.asarray(observation[key]) for key in RL2_KEYS}, restart)
        actions, _ = self.model.predict(state.observation(observation["obs"]), deterministic=deterministic)
        return actions, state


#: The extractor of each registered belief by its method name (``"laplace"``: ``LaplaceExtractor``),
#: derived from :mod:`bayes_agents.beliefs.registry`; the classes live in this module under their
#: names (``bayes_agents.extractors.LaplaceExtractor``).
EXTRACTORS: dict[str, type[BeliefExtractor]] = {}


def _derive_extractor(spec: BeliefSpec) -> None:
    extractor_class = spec.derive(BeliefExtractor, "Extractor", __name__, spec.extractor_doc)
    globals()[spec.extractor_name] = extractor_class
    EXTRACTORS[spec.method] = extractor_class


# RL2Extractor, LaplaceExtractor, VariBADExtractor, GLiBRLExtractor, VRNNExtractor, and any belief
# registered later.
on_register(_derive_extractor)
