"""``BeliefAuxLossCallback``: trains the auxiliary losses of belief extractors under stock SB3 algorithms.

Stock ``PPO``, ``A2C``, ``SAC`` and ``TD3`` optimise only their RL losses. A belief with an auxiliary
objective (Laplace-VRNN's KL penalty, VariBAD's ELBO, GLiBRL's marginal likelihood) gets it from
this callback, added in one line::

    model.learn(100_000, callback=BeliefAuxLossCallback())

At the end of every rollout (on-policy: the full rollout buffer; off-policy: every ``train_freq``
steps) it samples ``batch_size`` history observations of :class:`~bayes_envs.wrappers.TrialHistoryWrapper`
(from the rollout buffer, or from the replay buffer), runs every trainable
:class:`~bayes_agents.extractors.BeliefExtractor` of the policy over them and takes
``n_updates`` gradient steps of ``belief.aux_loss`` over all valid history entries, with its own
Adam optimizer. Target networks (``*_target``) are skipped: they follow their online networks by
the algorithm's own Polyak updates.

Beliefs that train a model of their own on whole trials (VariBAD's VAE, through its ``add_trials``
and ``vae_update``) get, once per rollout, the steps collected since the previous rollout (the
current RL² input of each, read off its history) and take their own update, exactly as
``BayesPPO``'s ``after_policy_update`` hook does for the recurrent policy; the statistics are logged
under ``belief/vae_*``.
"""

from __future__ import annotations

import time

import numpy as np
import torch
from stable_baselines3.common.buffers import DictReplayBuffer, DictRolloutBuffer
from stable_baselines3.common.callbacks import BaseCallback
from torch import Tensor, nn

from bayes_agents.beliefs.base import check_positive_int
from bayes_agents.extractors import BeliefExtractor


def belief_extractors(policy: nn.Module) -> list[BeliefExtractor]:
    """The distinct belief extractors of ``policy`` that are not in a target network."""
    found: list[BeliefExtractor] = []
    for name, module in policy.named_modules():
        if isinstance(module, BeliefExtractor) and "_target" not in name and module not in found:
            found.append(module)
    return found


class BeliefAuxLossCallback(BaseCallback):
    """See the module docstring.

    :param learning_rate: Adam step size of the auxiliary updates.
    :param batch_size: history observations sampled per update.
    :param n_updates: gradient steps per rollout.
    :param max_grad_norm: gradient-norm clip of the auxiliary updates (``None``: no clipping).
    :param model_update_interval: rollouts between the updates of beliefs that train a model of their
        own (VariBAD's VAE); the trials of every rollout are buffered. Raise it for off-policy
        algorithms, whose "rollout" is only ``train_freq`` steps.
    :param seed: seed of the sampling of rollout-buffer rows (replay buffers use their own sampler).
    """

    def __init__(
        self,
        learning_rate: float = 1e-3,
        batch_size: int = 256,
        n_updates: int = 1,
        max_grad_norm: float | None = 10.0,
        model_update_interval: int = 1,
        seed: int = 0,
        verbose: int = 0,
    ) -> None:
        super().__init__(verbose)
        if (
            isinstance(learning_rate, bool)
            or not isinstance(learning_rate, (int, float))
            or learning_rate <= 0
        ):
            raise ValueError(f"learning_rate must be a float > 0, got {learning_rate!r}")
        check_positive_int("batch_size", batch_size)
        check_positive_int("n_updates", n_updates)
        check_positive_int("model_update_interval", model_update_interval)
        if max_grad_norm is not None and not max_grad_norm > 0:
            raise ValueError(f"max_grad_norm must be > 0 or None, got {max_grad_norm!r}")
        self.learning_rate = float(learning_rate)
        self.batch_size = batch_size
        self.n_updates = n_updates
        self.max_grad_norm = max_grad_norm
        self.model_update_interval = model_update_interval
        self.rng = np.random.default_rng(seed)
        self.extractors: list[BeliefExtractor] = []
        self.optimizer: torch.optim.Optimizer | None = None
        self._trains_own_model = False
        self._aux_extractors: list[BeliefExtractor] = []
        self._timesteps_seen = 0
        self._rollouts = 0

    def _init_callback(self) -> None:
        self.extractors = belief_extractors(self.model.policy)
        if not self.extractors:
            raise ValueError(
                "the model's policy has no BeliefExtractor: pass policy_kwargs=dict(features_extractor_class="
                "RL2Extractor/LaplaceExtractor/..., ...) on a TrialHistoryWrapper env"
            )
        # Beliefs without an auxiliary loss (RL², VariBAD, Laplace-VRNN with β = 0) are not run here.
        self._aux_extractors = [
            extractor
            for extractor in self.extractors
            if not extractor.freeze_belief and extractor.belief.has_aux_loss
        ]
        parameters = [
            parameter
            for extractor in self._aux_extractors
            for parameter in extractor.belief.parameters()
            if parameter.requires_grad
        ]
        self.optimizer = torch.optim.Adam(parameters, lr=self.learning_rate) if parameters else None
        self._trains_own_model = any(
            extractor.belief.trains_on_trials and not extractor.freeze_belief for extractor in self.extractors
        )
        self._timesteps_seen = self.model.num_timesteps

    def sample_observations(self) -> dict[str, Tensor] | None:
        """``batch_size`` history observations from the model's rollout or replay buffer (tensors on
        the model's device), or ``None`` while the buffer is empty."""
        model = self.model
        replay_buffer = getattr(model, "replay_buffer", None)
        if replay_buffer is not None:
            if not isinstance(replay_buffer, DictReplayBuffer):
                raise TypeError(
                    f"the replay buffer must hold Dict observations, got {type(replay_buffer).__name__}"
                )
            if replay_buffer.size() == 0:
                return None
            return replay_buffer.sample(self.batch_size, env=model.get_vec_normalize_env()).observations
        buffer = model.rollout_buffer
        if not isinstance(buffer, DictRolloutBuffer):
            raise TypeError(f"the rollout buffer must hold Dict observations, got {type(buffer).__name__}")
        filled = buffer.buffer_size if buffer.full else buffer.pos
        if filled == 0:
            return None
        # Read the arrays without buffer.get(), which would flatten them in place before train().
        rows = self.rng.integers(filled * buffer.n_envs, size=self.batch_size)
        steps, envs = np.divmod(rows, buffer.n_envs)
        return {key: buffer.to_torch(values[steps, envs]) for key, values in buffer.observations.items()}

    def _on_step(self) -> bool:
        return True

    def _on_rollout_end(self) -> None:
        self._rollouts += 1
        observations = self.sample_observations() if self.optimizer is not None else None
        if observations is not None:
            self._aux_loss_updates(observations)
        if self._trains_own_model:
            new_observations = self._new_steps()
            update = self._rollouts % self.model_update_interval == 0
            for extractor in self.extractors:
                self._train_own_model(extractor, new_observations, update)

    def _aux_loss_updates(self, observations: dict[str, Tensor]) -> None:
        assert self.optimizer is not None
        losses: list[float] = []
        for _ in range(self.n_updates):
            total = sum(
                extractor.belief.aux_loss(output.apply(lambda value, valid=valid: value[valid]))
                for extractor in self._aux_extractors
                for output, valid in [extractor.belief_sequence(observations)]
            )
            if not isinstance(total, Tensor) or not total.requires_grad:
                return  # no belief here has a trainable auxiliary loss (e.g. RL², VariBAD)
            self.optimizer.zero_grad()
            total.backward()
            if self.max_grad_norm is not None:
                nn.utils.clip_grad_norm_(
                    [p for group in self.optimizer.param_groups for p in group["params"]], self.max_grad_norm
                )
            self.optimizer.step()
            losses.append(float(total.detach()))
        self.logger.record("belief/aux_loss", float(np.mean(losses)))

    def _new_steps(self) -> dict[str, Tensor] | None:
        """The observations of the steps collected since the last call, env-major ``[n_envs * n, ..]``,
        or ``None`` if there are none."""
        model = self.model
        replay_buffer = getattr(model, "replay_buffer", None)
        buffer = replay_buffer if replay_buffer is not None else model.rollout_buffer
        if replay_buffer is None:
            positions = np.arange(buffer.buffer_size if buffer.full else buffer.pos)
        else:
            count = min((model.num_timesteps - self._timesteps_seen) // buffer.n_envs, buffer.buffer_size)
            positions = (buffer.pos - count + np.arange(count)) % buffer.buffer_size
        self._timesteps_seen = model.num_timesteps
        if positions.size == 0:
            return None
        return {
            key: buffer.to_torch(values[positions].swapaxes(0, 1).reshape(-1, *values.shape[2:]))
            for key, values in buffer.observations.items()
        }

    def _train_own_model(
        self, extractor: BeliefExtractor, new_observations: dict[str, Tensor] | None, update: bool
    ) -> None:
        """Beliefs that train a model of their own on whole trials (VariBAD's VAE: ``add_trials`` +
        ``vae_update``) get the trials of the new steps, as ``BayesPPO``'s ``after_policy_update`` does,
        and update every ``model_update_interval`` rollouts."""
        belief = extractor.belief
        if not belief.trains_on_trials or extractor.freeze_belief:
            return
        if new_observations is not None:
            inputs, trial_starts = extractor.current_inputs(new_observations)
            n_envs = self.model.n_envs
            next_starts = getattr(self.model, "_last_episode_starts", None)
            if getattr(self.model, "replay_buffer", None) is not None:
                next_starts = None  # off-policy: a running trial is completed by the next trial start
            belief.add_trials(
                inputs.view(n_envs, -1, inputs.shape[-1]), trial_starts.view(n_envs, -1), next_starts
            )
        if update:
            progress_remaining = getattr(self.model, "_current_progress_remaining", 1.0)
            for key, value in belief.update_trial_model(progress_remaining).items():
                self.logger.record(f"belief/vae_{key}", float(value))


class ProgressCallback(BaseCallback):
    """Prints training progress every ``every_seconds``: steps done of ``total``, env steps/s and the
    mean trial return of the last episodes (SB3's ``ep_info_buffer``); one line at the end.

    The examples use it (``model.learn(n, callback=ProgressCallback(n))``); ``bayes-rl train`` shows
    the same with a progress bar when ``tqdm`` is installed. Works with any SB3 algorithm.

    :param total: the ``learn`` budget (``None``: the steps of the current ``learn`` call).
    :param every_seconds: seconds between lines (> 0).
    """

    def __init__(self, total: int | None = None, every_seconds: float = 10.0, prefix: str = "") -> None:
        super().__init__()
        if total is not None and (isinstance(total, bool) or not isinstance(total, int) or total < 1):
            raise ValueError(f"total must be an int >= 1 or None, got {total!r}")
        if not isinstance(every_seconds, (int, float)) or not 0 < every_seconds < float("inf"):
            raise ValueError(f"every_seconds must be a finite number > 0, got {every_seconds!r}")
        self.total, self.every_seconds, self.prefix = total, float(every_seconds), prefix
        self._start = self._last = 0.0
        self._start_steps = 0

    def _on_training_start(self) -> None:
        self._start = self._last = time.monotonic()
        self._start_steps = self.model.num_timesteps
        if self.total is None:
            self.total = int(self.locals.get("total_timesteps", 0)) or None

    def line(self) -> str:
        """The current progress line."""
        steps = self.model.num_timesteps
        elapsed = max(time.monotonic() - self._start, 1e-9)
        rate = (steps - self._start_steps) / elapsed
        returns = [info["r"] for info in self.model.ep_info_buffer or []]
        trial = f"trial return {np.mean(returns):.2f}" if returns else "trial return -"
        done = f"{steps:>10,} / {self.total:,} steps" if self.total else f"{steps:>10,} steps"
        return f"{self.prefix}{done}  {rate:,.0f} steps/s  {trial}"

    def _on_step(self) -> bool:
        now = time.monotonic()
        if now - self._last >= self.every_seconds:
            self._last = now
            print(self.line(), flush=True)
        return True

    def _on_training_end(self) -> None:
        print(self.line(), flush=True)
