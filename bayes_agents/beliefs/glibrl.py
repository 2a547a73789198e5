"""GLiBRL belief: Bayesian linear regression of the transitions on a learnable basis.

Model (docs/specification.md#glibrl; the paper gives only the likelihood form, so the exact choices are
documented here). A learnable basis ``φ_θ(s, a) ∈ R^d`` (an MLP on ``[obs_{t-1}, prev_action_t]``)
and, per task, a linear model of the targets ``y_t = (s_t − s_{t−1}, r_t) ∈ R^{O+1}``:

    y_{t,j} = w_jᵀ φ_θ(s_{t−1}, a_t) + ε_{t,j},   ε_{t,j} ~ N(0, σ_j²),   j = 0..O

with the conjugate **per-output Normal–Inverse-Gamma** prior

    σ_j² ~ InvGamma(a₀, b₀),   w_j | σ_j² ~ N(0, σ_j² λ⁻¹ I_d)

(``λ = prior_precision``, ``a₀ = prior_noise_concentration``, ``b₀ = prior_noise_rate``), independent
over outputs. Why per-output NIG rather than Matrix-Normal–Inverse-Wishart: the targets are partly
missing. At an inner-episode boundary (``new_episode_t = 1``) ``obs_t`` is the next inner episode's
start, not the successor of ``obs_{t−1}``, so the state-difference targets are invalid while the
reward target is valid; in ``BayesBandit-v0`` *every* step is such a boundary. A MNIW posterior needs
whole target vectors, so it would have to drop those transitions and would never fit the bandit's
rewards; the per-output NIG fits every valid scalar target exactly. The outputs fall into two groups
with the same missingness — ``dynamics`` (the ``O`` state differences) and ``reward`` — and the
outputs of a group share one posterior precision, so the belief carries two ``[d, d]`` Gram
matrices instead of ``O + 1``. The price is independent noise across outputs (a diagonal ``E[Σ]``).

Sufficient statistics (relative to the prior, so all zeros means "no data"), per group
``g ∈ {dynamics, reward}`` over the valid transitions of the current trial:
``G_g = Σ φφᵀ`` and ``n_g = Σ 1``; per output ``c_j = Σ φ y_j`` and ``s_j = Σ y_j²``. They are sums,
hence order-invariant, and :meth:`GLiBRLBelief.sequence` forms them for all ``t`` at once with
:func:`~bayes_agents.beliefs.laplace.segmented_cumsum` (resets at ``episode_starts``). The posterior
of output ``j`` in group ``g`` is ``NIG(μ_j, Λ_g, a_j, b_j)`` with

    Λ_g = λI + G_g,   μ_j = Λ_g⁻¹ c_j,   a_j = a₀ + n_g/2,   b_j = b₀ + ½ (s_j − c_jᵀ μ_j)

(``s_j − c_jᵀμ_j = min_w ‖y_j − Φw‖² + λ‖w‖² ≥ 0``; it is clamped at 0 against round-off).

One basis serves both groups (the reward and the dynamics of a task are functions of the same
``(s, a)``, and one MLP is half the cost); the prior has zero mean, so before any data the model
predicts ``y = 0`` with the prior predictive's spread.

State layout (``[B, state_size]``, all zeros = prior and no previous observation): ``gram [2, d, d]``,
``cross [d, O+1]``, ``square [O+1]``, ``count [2]``, ``previous_obs [O]``, ``has_previous [1]``;
``state_size = 2d² + (d+1)(O+1) + O + 3`` (568 for the grid with ``d = 16``).

Transitions. ``x_t = [obs_t, prev_action_t, prev_reward_t, new_episode_t]``; the transition
observed at ``t`` is ``(obs_{t−1}, prev_action_t, prev_reward_t, obs_t)``. At a trial start (SB3
``episode_start``), or when the state holds no previous observation, there is none; where
``new_episode_t = 1`` only the reward target is fitted. The state carries ``obs_{t−1}``.

Outputs (:class:`GLiBRLOutput`, a :class:`~bayes_agents.beliefs.base.BeliefOutput`):

* ``mean``: the posterior-mean weights ``[μ_0, …, μ_O]`` flattened output-major, ``[.., (O+1)·d]``
  (``latent_dim = (O+1)·d``, index ``j·d + i``).
* ``precision`` / ``precision_cholesky``: the precision of the flattened weights is block diagonal
  (the outputs are independent a posteriori), so it is stored in a compressed form — its diagonal
  blocks ``(a_j / b_j) Λ_{g(j)}`` and their lower Cholesky factors, ``[.., O+1, d, d]``
  (:meth:`GLiBRLOutput.dense_precision` gives the ``[.., L, L]`` matrix). Block ``j`` is the inverse
  scale matrix of the marginal posterior of ``w_j``, a multivariate Student-t with ``2a_j`` degrees
  of freedom. :meth:`GLiBRLBelief.sample` draws from the Gaussian with this precision.
* ``entropy``: differential entropy of the joint posterior over all weights *and* noise variances
  ``q(W, σ²) = Π_j NIG(μ_j, Λ_{g(j)}, a_j, b_j)``; ``kl_to_previous = KL(q_t ‖ q_{t−1})`` of that
  joint posterior (closed form; ``q_{t−1}`` is the prior at a reset).
* ``log_marginal_increment``: ``log p(y_t | y_{<t})`` (the Student-t posterior predictive of the
  valid targets of step ``t``, 0 without a transition). By the chain rule its sum over a trial is
  the trial's exact log marginal likelihood ``log p(y_{1:T} | φ)`` (weights and noise integrated out),
  the loss that trains ``φ`` (:meth:`GLiBRLBelief.aux_loss`); ``transition_mask`` marks the steps
  that have a transition.
* ``group_precision_cholesky`` (``chol Λ_g``, ``[.., 2, d, d]``), ``log_variance_diagonal``
  (``log diag Λ_g⁻¹``, ``[.., 2, d]``), ``noise_concentration`` (``a_j``) and ``noise_rate`` (``b_j``),
  ``[.., O+1]``.

Policy input (:meth:`GLiBRLBelief.policy_input`): ``[mean (L), log diag Λ_g⁻¹ for both groups (2d),
log(b_j / a_j) (O+1)]`` — the posterior-mean weights, the log posterior variance factors of the
weights and the log noise scale (``b/a = 1 / E[σ_j⁻²]``, defined for every ``a₀ > 0`` unlike
``E[σ_j²]``) — by default taken relative to the prior (``μ·sqrt(λa₀/b₀)``, ``log diag(λΛ_g⁻¹)``,
``log((b/a)/(b₀/a₀))``; all 0 before any data, and equal to the raw values for ``λ = a₀ = b₀ = 1``).
Detached by default: the basis is trained by the marginal likelihood only. Options (issue #4, where
GLiBRL did not learn ``BayesGrid-v0`` or ``BayesBandit-v0`` with the plain model):

* ``fit_dynamics=False`` fits the reward only; the dynamics outputs stay at the prior and are left
  out of the policy input (``[μ_O, log diag Λ_rew⁻¹, log(b_O/a_O)]``, ``2d + 1``). For environments
  whose dynamics do not depend on the task: fitted, they carry no task information but dominate the
  marginal likelihood, hence the shared basis, and add ``O·d`` uninformative policy inputs.
* ``action_predictions=True`` (discrete actions) appends, for every action ``a`` from the current
  observation, the reward's posterior predictive mean ``μ_Oᵀφ(obs_t, a)`` and log squared scale
  ``log((b_O/a_O)(1 + φᵀΛ_rew⁻¹φ))`` (:attr:`GLiBRLOutput.action_reward_mean`): quantities in reward
  units that do not depend on the (arbitrary) coordinates of the learned basis, unlike ``μ``.
* ``basis_updates_per_ppo_update = k > 0``: after each PPO update (:meth:`GLiBRLBelief.after_policy_update`)
  ``k`` Adam steps of the same loss on the rollout just collected, with the belief's own optimizer.
  Each step forms the loss in closed form per trial (:meth:`GLiBRLBelief.model_loss`: the log
  predictives of a trial telescope into its log marginal likelihood), one factorisation per trial.
* ``model_loss_in_policy_update=False`` trains the basis by those ``k`` steps only, not also by the
  PPO optimizer with every minibatch. With the policy input detached nothing in the PPO update then
  reaches the basis (:attr:`GLiBRLBelief.fixed_during_policy_update`), so ``BayesPPO`` runs the belief
  once per update instead of in every minibatch of every epoch.
* ``basis_update_timing="before"`` takes the ``k`` steps at the start of each PPO update
  (:meth:`GLiBRLBelief.before_policy_update`) instead of after it: the update then trains the policy
  on the features of the basis that the next rollout acts with.

The prior hyper-parameters must suit the reward scale: with ``b₀ = 1`` (noise std ≈ 1) rewards of
size 0.1–1 are explained as noise, and the marginal likelihood then *shrinks* the basis (``|φ| ≈ 0.02``
on the grid) so that the posterior hardly moves when the goal is found; the grid and bandit
defaults (:mod:`bayes_agents.defaults`) use ``λ = b₀ = 0.01``.

Minibatch note: in ``BayesPPO`` a sequence that starts mid-trial continues from the statistics
stored in the rollout buffer (computed with the basis of collection time, no gradient), so the loss
of such a sequence is the exact log predictive of its transitions given that stored belief.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, NamedTuple

import torch
from torch import Tensor, nn

from .base import (
    MAX_SCALE,
    MODEL_UPDATE_TIMINGS,
    Belief,
    BeliefOutput,
    InputLayout,
    ModelLearningRate,
    SigmoidTanh,
    StateLayout,
    check_bools,
    check_choice,
    check_input_layout,
    check_int,
    check_positive_int,
    check_real,
    check_sizes,
    model_adam,
    rollout_inputs,
)
from .laplace import segmented_cumsum
from .registry import register_belief

#: Output groups that share a posterior precision: the O state differences, then the reward.
GROUPS = ("dynamics", "reward")


@dataclass
class GLiBRLOutput(BeliefOutput):
    """:class:`BeliefOutput` plus the quantities of the NIG posterior (see the module docstring).

    Leading dims ``[..]`` as in :class:`BeliefOutput`; ``d = basis_dim``, ``O = obs_dim``. ``precision``
    and ``precision_cholesky`` hold the ``O+1`` diagonal blocks, ``[.., O+1, d, d]``, of the
    block-diagonal precision of ``mean`` (see the module docstring).

    :param group_precision_cholesky: ``chol(Λ_g)`` for the dynamics and reward groups, ``[.., 2, d, d]``.
    :param log_variance_diagonal: ``log diag Λ_g⁻¹`` (the weights' posterior variances in units of the
        noise variance), ``[.., 2, d]``.
    :param noise_concentration: posterior ``a_j`` of each output's noise variance, ``[.., O+1]``.
    :param noise_rate: posterior ``b_j``, ``[.., O+1]``.
    :param log_marginal_increment: ``log p(y_t | y_{<t})`` of the valid targets of the step, ``[..]``.
    :param transition_mask: 1.0 where the step has a transition (a fitted reward target), ``[..]``.
    :param action_reward_mean: with ``action_predictions``, the posterior predictive mean of the reward
        of each discrete action taken from the current observation, ``μ_Oᵀ φ(obs_t, a)``, ``[.., A]``.
    :param action_reward_log_variance: the log squared scale of that Student-t predictive,
        ``log((b_O/a_O)(1 + φᵀ Λ_rew⁻¹ φ))`` (its variance is ``2a_O/(2a_O − 2)`` times this for
        ``a_O > 1``), ``[.., A]``.
    :param statistics: only in :meth:`GLiBRLBelief.training_sequence`'s output: the sufficient
        statistics after the step (``statistics_layout``, with gradients), ``[.., S]``.
    :param segment_start: with ``statistics``: 1.0 where the step's statistics do not continue those
        of the previous step of the pass (its first step, or a trial start), ``[..]``.
    """

    group_precision_cholesky: Tensor | None = None
    log_variance_diagonal: Tensor | None = None
    noise_concentration: Tensor | None = None
    noise_rate: Tensor | None = None
    log_marginal_increment: Tensor | None = None
    transition_mask: Tensor | None = None
    action_reward_mean: Tensor | None = None
    action_reward_log_variance: Tensor | None = None
    statistics: Tensor | None = None
    segment_start: Tensor | None = None

    def dense_precision(self) -> Tensor:
        """The block-diagonal ``precision`` as one ``[.., L, L]`` matrix (``L = (O+1)·d``)."""
        blocks = self.precision
        eye = torch.eye(blocks.shape[-3], dtype=blocks.dtype, device=blocks.device)
        dense = torch.einsum("...jab,jk->...jakb", blocks, eye)
        size = blocks.shape[-3] * blocks.shape[-1]
        return dense.reshape(*blocks.shape[:-3], size, size)


class NIGPosterior(NamedTuple):
    """Per-output Normal–Inverse-Gamma posterior. Leading dims ``[..]``.

    :param mean: posterior-mean weights ``μ_j``, ``[.., O+1, d]``.
    :param group_precision_cholesky: ``chol(Λ_g)``, ``[.., 2, d, d]`` (prior ``λI`` included).
    :param log_det_precision: ``log det Λ_g``, ``[.., 2]``.
    :param concentration: ``a_j``, ``[.., O+1]``.
    :param rate: ``b_j``, ``[.., O+1]``.
    """

    mean: Tensor
    group_precision_cholesky: Tensor
    log_det_precision: Tensor
    concentration: Tensor
    rate: Tensor


class _Transitions(NamedTuple):
    """The transitions of a sequence ``[T, B]`` (:meth:`GLiBRLBelief._transitions`).

    :param obs: ``obs_t``, ``[T, B, O]``.
    :param features: ``φ(obs_{t−1}, prev_action_t)``, ``[T, B, d]``.
    :param targets: ``y_t``, 0 where not valid, ``[T, B, O+1]``.
    :param target_mask: 1.0 where a target is valid, ``[T, B, O+1]``.
    :param has_transition: whether step ``t`` has a transition, ``[T, B]`` bool.
    :param cumulative: the sufficient statistics after step ``t`` (``statistics_layout``), ``[T, B, S]``.
    """

    obs: Tensor
    features: Tensor
    targets: Tensor
    target_mask: Tensor
    has_transition: Tensor
    cumulative: Tensor


class GLiBRLBelief(Belief):
    """GLiBRL belief (see the module docstring for the exact model).

    :param input_dim: size of ``x_t``; must equal ``input_layout.input_dim``.
    :param input_layout: where obs, previous action, previous reward and the new-episode flag lie in
        ``x_t`` (given by :class:`~bayes_agents.policies.BeliefPolicy`).
    :param basis_dim: ``d``, the number of basis functions.
    :param basis_hidden_sizes: hidden layer sizes of the basis MLP (Tanh); ``()`` is a linear basis.
    :param prior_precision: ``λ > 0``, prior precision of the weights in units of the noise variance.
    :param prior_noise_concentration: ``a₀ > 0`` of the inverse-gamma noise prior.
    :param prior_noise_rate: ``b₀ > 0`` of the inverse-gamma noise prior.
    :param model_loss_weight: ``>= 0``, factor of the per-transition negative log marginal likelihood
        in :meth:`aux_loss`.
    :param detach_policy_input: stop the RL loss from reaching the basis through the policy input.
    :param fit_dynamics: fit the state-difference targets; ``False`` fits the reward only (for
        environments whose dynamics do not depend on the task, e.g. ``BayesGrid-v0``: the dynamics
        then carry no task information, yet dominate the marginal likelihood and the shared basis).
        The dynamics outputs then stay at their prior and are left out of the policy input.
    :param normalize_policy_input: give the policy its features relative to the prior (see
        :meth:`policy_input`), so that they are zero before any data whatever the hyper-parameters.
    :param action_predictions: discrete actions only: add to the policy input the posterior predictive
        mean and log squared scale of the reward of every action from the current observation (``2A``
        features, in reward units, independent of the basis' coordinates).
    :param basis_updates_per_ppo_update: extra Adam steps of the model loss on the last rollout after
        each PPO update (:meth:`after_policy_update`, called by :class:`~bayes_agents.BayesPPO`), with
        the belief's own optimizer; 0 (default) trains the basis by the PPO optimizer's steps only.
    :param basis_lr: learning rate of those extra steps, in ``(0, 1]``: a number, or ``"lin_<v>"``
        for a linear decay from ``v`` to 0 over the budget of ``BayesPPO.learn`` (the notation of
        the PPO schedules, :func:`~bayes_agents.schedules.resolve_schedule`).
    :param model_loss_in_policy_update: add the model loss to the PPO loss (``BayesPPO``: the PPO
        optimizer then also steps the basis with every minibatch). False trains the basis only by the
        ``basis_updates_per_ppo_update`` steps (which must then be > 0 unless ``model_loss_weight``
        is 0) and, with ``detach_policy_input``, makes the belief fixed during the PPO update.
    :param basis_update_timing: ``"after"`` (default) or ``"before"`` each PPO update: when the
        ``basis_updates_per_ppo_update`` steps are taken (on the same rollout either way).
    """

    models_rewards = True  # the Bayesian regression is a likelihood of the raw rewards

    def __init__(
        self,
        input_dim: int,
        *,
        input_layout: InputLayout,
        basis_dim: int = 16,
        basis_hidden_sizes: Sequence[int] = (64, 64),
        prior_precision: float = 1.0,
        prior_noise_concentration: float = 1.0,
        prior_noise_rate: float = 1.0,
        model_loss_weight: float = 1.0,
        detach_policy_input: bool = True,
        fit_dynamics: bool = True,
        normalize_policy_input: bool = True,
        action_predictions: bool = False,
        basis_updates_per_ppo_update: int = 0,
        basis_lr: float | str = 1e-3,
        model_loss_in_policy_update: bool = True,
        basis_update_timing: str = "after",
    ):
        super().__init__()
        check_input_layout(input_dim, input_layout)
        check_positive_int("basis_dim", basis_dim)
        basis_hidden_sizes = check_sizes("basis_hidden_sizes", basis_hidden_sizes)
        check_bools(
            {
                "detach_policy_input": detach_policy_input,
                "fit_dynamics": fit_dynamics,
                "normalize_policy_input": normalize_policy_input,
                "action_predictions": action_predictions,
                "model_loss_in_policy_update": model_loss_in_policy_update,
            }
        )
        self.input_layout = input_layout
        self.input_dim = input_dim
        self.basis_dim = basis_dim
        self.basis_hidden_sizes = tuple(basis_hidden_sizes)
        self.prior_precision = check_real("prior_precision", prior_precision, 0.0, MAX_SCALE, low_open=True)
        self.prior_noise_concentration = check_real(
            "prior_noise_concentration", prior_noise_concentration, 0.0, MAX_SCALE, low_open=True
        )
        self.prior_noise_rate = check_real(
            "prior_noise_rate", prior_noise_rate, 0.0, MAX_SCALE, low_open=True
        )
        self.model_loss_weight = check_real("model_loss_weight", model_loss_weight, 0.0, MAX_SCALE)
        self.detach_policy_input = detach_policy_input
        self.fit_dynamics = fit_dynamics
        self.normalize_policy_input = normalize_policy_input
        if action_predictions and not input_layout.discrete_actions:
            raise ValueError("action_predictions needs discrete actions (a one-hot prev_action)")
        self.action_predictions = action_predictions
        check_int("basis_updates_per_ppo_update", basis_updates_per_ppo_update, minimum=0)
        self.basis_updates_per_ppo_update = basis_updates_per_ppo_update
        self._basis_rate = ModelLearningRate("basis_lr", basis_lr)
        self.basis_lr = basis_lr
        if not model_loss_in_policy_update and basis_updates_per_ppo_update == 0 and model_loss_weight > 0:
            raise ValueError(
                "model_loss_in_policy_update=False trains the basis only by basis_updates_per_ppo_update "
                "steps of its own around each PPO update: set basis_updates_per_ppo_update >= 1"
            )
        self.model_loss_in_policy_update = model_loss_in_policy_update
        self.basis_update_timing = check_choice(
            "basis_update_timing", basis_update_timing, MODEL_UPDATE_TIMINGS
        )
        self._basis_optimizer: torch.optim.Optimizer | None = None

        obs_dim = input_layout.obs_dim
        self.n_outputs = obs_dim + 1
        self.latent_dim = self.n_outputs * basis_dim
        layers: list[nn.Module] = []
        width = obs_dim + input_layout.action_dim
        for size in self.basis_hidden_sizes:
            layers += [nn.Linear(width, size), SigmoidTanh()]
            width = size
        layers.append(nn.Linear(width, basis_dim))
        self.basis = nn.Sequential(*layers)
        # Group of each output: the state differences share the dynamics precision, the reward its own.
        self.register_buffer(
            "output_group", torch.tensor([0] * obs_dim + [1], dtype=torch.long), persistent=False
        )
        self.statistics_layout = StateLayout(
            [
                ("gram", (2, basis_dim, basis_dim)),
                ("cross", (basis_dim, self.n_outputs)),
                ("square", (self.n_outputs,)),
                ("count", (2,)),
            ]
        )
        self.state_layout = StateLayout(
            [
                *((name, shape) for name, shape in self.statistics_layout.shapes.items()),
                ("previous_obs", (obs_dim,)),
                ("has_previous", (1,)),
            ]
        )
        self.state_size = self.state_layout.size

    # ------------------------------------------------------------------------------ posterior
    def posterior(self, statistics: dict[str, Tensor]) -> NIGPosterior:
        """The NIG posterior of sufficient statistics (``statistics_layout`` parts, leading dims ``[..]``)."""
        gram, cross = statistics["gram"], statistics["cross"]
        eye = torch.eye(self.basis_dim, dtype=gram.dtype, device=gram.device)
        obs_dim = self.n_outputs - 1
        if self.fit_dynamics:
            cholesky = torch.linalg.cholesky(gram + self.prior_precision * eye)  # [.., 2, d, d]
            dynamics_mean = torch.cholesky_solve(cross[..., :obs_dim], cholesky[..., 0, :, :])
            reward_cholesky = cholesky[..., 1, :, :]
            log_det = 2.0 * torch.diagonal(cholesky, dim1=-2, dim2=-1).log().sum(-1)
        else:
            # The dynamics group holds no data (its statistics stay 0): its posterior is the prior
            # (chol λI = √λ I, μ = 0), so only the reward group is factorised.
            reward_cholesky = torch.linalg.cholesky(gram[..., 1, :, :] + self.prior_precision * eye)
            prior_cholesky = (math.sqrt(self.prior_precision) * eye).expand_as(reward_cholesky)
            # [.., 2, d, d], stored group-major: each group's factors are contiguous for the solves.
            cholesky = torch.stack([prior_cholesky, reward_cholesky]).movedim(0, -3)
            dynamics_mean = cross.new_zeros(*cross.shape[:-1], obs_dim)
            reward_log_det = 2.0 * torch.diagonal(reward_cholesky, dim1=-2, dim2=-1).log().sum(-1)
            log_det = torch.stack(
                [
                    torch.full_like(reward_log_det, self.basis_dim * math.log(self.prior_precision)),
                    reward_log_det,
                ],
                dim=-1,
            )
        mean = torch.cat(
            [dynamics_mean, torch.cholesky_solve(cross[..., obs_dim:], reward_cholesky)], dim=-1
        ).transpose(-1, -2)  # [.., O+1, d]
        explained = (cross.transpose(-1, -2) * mean).sum(-1)
        residual = (statistics["square"] - explained).clamp(min=0.0)
        rate = self.prior_noise_rate + 0.5 * residual
        concentration = self.prior_noise_concentration + 0.5 * statistics["count"][..., self.output_group]
        return NIGPosterior(mean, cholesky, log_det, concentration, rate)

    def _solve_groups(self, cholesky: Tensor, right: Tensor) -> Tensor:
        """``L_g⁻¹ R_g`` for group factors ``[.., 2, d, d]`` and right-hand sides ``[.., 2, d, k]``; with
        ``fit_dynamics=False`` the dynamics factor is the prior's ``√λ I`` (see :meth:`posterior`), so
        only the reward group needs a triangular solve."""
        if self.fit_dynamics:
            return torch.linalg.solve_triangular(cholesky, right, upper=False)
        reward = torch.linalg.solve_triangular(
            cholesky[..., 1:, :, :], right[..., 1:, :, :].contiguous(), upper=False
        )
        return torch.cat([right[..., :1, :, :] / math.sqrt(self.prior_precision), reward], dim=-3)

    def _prior(self, dtype: torch.dtype, device: torch.device) -> NIGPosterior:
        """The prior as a posterior with leading dim ``[1]``: ``Λ = λI``, ``μ = 0``, ``a₀``, ``b₀``."""
        d, outputs = self.basis_dim, self.n_outputs
        cholesky = math.sqrt(self.prior_precision) * torch.eye(d, dtype=dtype, device=device).expand(
            1, 2, d, d
        )
        return NIGPosterior(
            mean=torch.zeros(1, outputs, d, dtype=dtype, device=device),
            group_precision_cholesky=cholesky,
            log_det_precision=torch.full(
                (1, 2), d * math.log(self.prior_precision), dtype=dtype, device=device
            ),
            concentration=torch.full(
                (1, outputs), self.prior_noise_concentration, dtype=dtype, device=device
            ),
            rate=torch.full((1, outputs), self.prior_noise_rate, dtype=dtype, device=device),
        )

    def posterior_from_state(self, state: Tensor) -> NIGPosterior:
        """The posterior held by a belief state ``[B, state_size]`` (leading dim ``[B]``)."""
        parts = self.state_layout.unpack(state)
        return self.posterior({name: parts[name] for name in self.statistics_layout.shapes})

    def log_marginal_likelihood(self, state: Tensor) -> Tensor:
        """Closed-form ``log p(all targets in the state's statistics | φ)``, ``[B]`` (0 for no data)."""
        parts = self.state_layout.unpack(state)
        return self._log_marginal({name: parts[name] for name in self.statistics_layout.shapes})

    def _log_marginal(self, statistics: dict[str, Tensor]) -> Tensor:
        """:meth:`log_marginal_likelihood` of sufficient statistics (leading dims ``[..]``), ``[..]``."""
        posterior = self.posterior(statistics)
        count = statistics["count"][..., self.output_group]
        a0, b0 = self.prior_noise_concentration, self.prior_noise_rate
        per_output = (
            -0.5 * count * math.log(2 * math.pi)
            + 0.5 * self.basis_dim * math.log(self.prior_precision)
            - 0.5 * posterior.log_det_precision[..., self.output_group]
            + a0 * math.log(b0)
            - posterior.concentration * posterior.rate.log()
            + torch.lgamma(posterior.concentration)
            - math.lgamma(a0)
        )
        return per_output.sum(-1)

    def _entropy(self, posterior: NIGPosterior) -> Tensor:
        a, b, d = posterior.concentration, posterior.rate, self.basis_dim
        digamma = torch.digamma(a)
        inverse_gamma = a + b.log() + torch.lgamma(a) - (1 + a) * digamma
        gaussian = (
            0.5 * d * math.log(2 * math.pi * math.e)
            - 0.5 * posterior.log_det_precision[..., self.output_group]
            + 0.5 * d * (b.log() - digamma)
        )
        return (inverse_gamma + gaussian).sum(-1)

    def _kl(self, current: NIGPosterior, previous: NIGPosterior, current_inverse_cholesky: Tensor) -> Tensor:
        """``KL(current ‖ previous)`` of the joint NIG posteriors, summed over outputs.

        :param current_inverse_cholesky: ``chol(Λ_g)⁻¹`` of ``current``, ``[.., 2, d, d]``.
        """
        a1, b1, a2, b2 = current.concentration, current.rate, previous.concentration, previous.rate
        inverse_gamma = (
            (a1 - a2) * torch.digamma(a1)
            - torch.lgamma(a1)
            + torch.lgamma(a2)
            + a2 * (b1.log() - b2.log())
            + a1 * (b2 - b1) / b1
        )
        # tr(Λ_prev Λ_cur⁻¹) = ‖L_cur⁻¹ L_prev‖_F² (d for the unfitted dynamics group: both are the prior)
        if self.fit_dynamics:
            trace = (current_inverse_cholesky @ previous.group_precision_cholesky).square().sum((-2, -1))
        else:
            reward_trace = (
                (current_inverse_cholesky[..., 1, :, :] @ previous.group_precision_cholesky[..., 1, :, :])
                .square()
                .sum((-2, -1))
            )
            trace = torch.stack([torch.full_like(reward_trace, float(self.basis_dim)), reward_trace], dim=-1)
        gaussian_group = 0.5 * (
            trace - self.basis_dim + current.log_det_precision - previous.log_det_precision
        )
        difference = current.mean - previous.mean
        mahalanobis = self._times_group_matrix(difference, previous.group_precision_cholesky).square().sum(-1)
        # E_q[1/σ²] = a/b turns the conditional Gaussian KL into its expectation over σ².
        per_output = inverse_gamma + gaussian_group[..., self.output_group] + 0.5 * (a1 / b1) * mahalanobis
        return per_output.sum(-1)

    def _times_group_matrix(self, vectors: Tensor, group_matrices: Tensor) -> Tensor:
        """``M_{g(j)}ᵀ v_j`` for per-output vectors ``[.., O+1, d]`` and group matrices ``[.., 2, d, d]``."""
        obs_dim = self.n_outputs - 1
        return torch.cat(
            [
                vectors[..., :obs_dim, :] @ group_matrices[..., 0, :, :],
                vectors[..., obs_dim:, :] @ group_matrices[..., 1, :, :],
            ],
            dim=-2,
        )

    def _log_predictive(self, previous: NIGPosterior, features: Tensor, targets: Tensor) -> Tensor:
        """Student-t ``log p(y_{t,j} | y_{<t})`` per output, ``[.., O+1]``."""
        whitened = self._solve_groups(
            previous.group_precision_cholesky,
            features.unsqueeze(-2).unsqueeze(-1).expand(*features.shape[:-1], 2, self.basis_dim, 1),
        )
        leverage = whitened.squeeze(-1).square().sum(-1)[..., self.output_group]  # φᵀΛ⁻¹φ
        location = (previous.mean * features.unsqueeze(-2)).sum(-1)
        a, b = previous.concentration, previous.rate
        spread = 2.0 * b * (1.0 + leverage)  # ν·scale² with ν = 2a, scale² = (b/a)(1 + φᵀΛ⁻¹φ)
        return (
            torch.lgamma(a + 0.5)
            - torch.lgamma(a)
            - 0.5 * torch.log(math.pi * spread)
            - (a + 0.5) * torch.log1p((targets - location).square() / spread)
        )

    def _action_reward_predictions(self, posterior: NIGPosterior, obs: Tensor) -> tuple[Tensor, Tensor]:
        """Predictive mean and log variance of the reward of each discrete action from ``obs``
        ``[.., O]`` under ``posterior`` (leading dims ``[..]``): ``[.., A]`` each."""
        actions = self.input_layout.action_dim
        one_hot = torch.eye(actions, dtype=obs.dtype, device=obs.device)
        inputs = torch.cat(
            [
                obs.unsqueeze(-2).expand(*obs.shape[:-1], actions, obs.shape[-1]),
                one_hot.expand(*obs.shape[:-1], -1, -1),
            ],
            dim=-1,
        )
        features = self.basis(inputs)  # [.., A, d]
        reward = self.n_outputs - 1
        mean = (features * posterior.mean[..., reward, :].unsqueeze(-2)).sum(-1)
        # One triangular solve per factor with the A actions' features as its columns (not A solves
        # against a broadcast copy of the factor).
        cholesky = posterior.group_precision_cholesky[..., 1, :, :]  # [.., d, d]
        whitened = torch.linalg.solve_triangular(cholesky, features.transpose(-1, -2), upper=False)
        leverage = whitened.square().sum(-2)  # φᵀ Λ_rew⁻¹ φ, [.., A]
        noise_scale = posterior.rate[..., reward] / posterior.concentration[..., reward]
        return mean, noise_scale.log().unsqueeze(-1) + torch.log1p(leverage)

    # ------------------------------------------------------------------------------ belief pass
    def _transition_terms(
        self, inputs: Tensor, state: Tensor, starts: Tensor
    ) -> tuple[Tensor, Tensor, Tensor, Tensor, Tensor, Tensor]:
        """The per-step terms of a prepared sequence (``starts`` ``[T, B]`` bool): ``obs`` ``[T, B, O]``,
        ``features`` ``[T, B, d]``, ``targets`` (0 where not valid) and ``target_mask`` ``[T, B, O+1]``,
        ``has_transition`` ``[T, B]`` bool and ``group_mask`` ``[T, B, 2]`` (dynamics, reward valid)."""
        steps, batch = starts.shape
        obs, action, reward, new_episode = self.input_layout.split(inputs)
        carried = self.state_layout.unpack(state)
        previous_obs = torch.cat([carried["previous_obs"].unsqueeze(0), obs[:-1]])
        has_previous = torch.cat(
            [carried["has_previous"][:, 0].unsqueeze(0) > 0.5, starts.new_ones(steps - 1, batch)]
        )
        has_transition = has_previous & ~starts
        dynamics_valid = has_transition & (new_episode < 0.5) & self.fit_dynamics
        group_mask = torch.stack([dynamics_valid, has_transition], dim=-1).to(inputs.dtype)  # [T, B, 2]
        target_mask = group_mask[..., self.output_group]  # [T, B, O+1]
        features = self.basis(torch.cat([previous_obs, action], dim=-1))  # [T, B, d]
        targets = torch.cat([obs - previous_obs, reward.unsqueeze(-1)], dim=-1) * target_mask
        return obs, features, targets, target_mask, has_transition, group_mask

    def _transitions(self, inputs: Tensor, state: Tensor, starts: Tensor) -> _Transitions:
        """The transitions of a prepared sequence (``starts`` ``[T, B]`` bool) and the sufficient
        statistics after every step, from the statistics carried in ``state``."""
        obs, features, targets, target_mask, has_transition, group_mask = self._transition_terms(
            inputs, state, starts
        )
        outer = features.unsqueeze(-1) * features.unsqueeze(-2)
        carry = state[:, : self.statistics_layout.size]
        if self.fit_dynamics:
            gram, skipped = group_mask[..., None, None] * outer.unsqueeze(-3), 0  # [T, B, 2, d, d]
        else:
            # No dynamics targets: the dynamics Gram increments are 0, so only the other statistics
            # (which follow it in the layout) are summed; the dynamics Gram is the carried one up to
            # the first reset and 0 after it.
            gram, skipped = group_mask[..., 1, None, None] * outer, self.basis_dim**2  # [T, B, d, d]
        increments = torch.cat(
            [
                gram.flatten(2),
                (features.unsqueeze(-1) * targets.unsqueeze(-2)).flatten(2),
                targets.square(),
                group_mask,
            ],
            dim=-1,
        )  # the statistics_layout order, [T, B, S_stats − skipped]
        cumulative = _running_sum(increments, starts, carry[:, skipped:])
        if skipped:
            reset = torch.cumsum(starts, dim=0) > 0  # [T, B]: a reset at or before t
            dynamics_gram = carry[:, :skipped].unsqueeze(0).masked_fill(reset.unsqueeze(-1), 0.0)
            cumulative = torch.cat([dynamics_gram, cumulative], dim=-1)  # [T, B, S_stats]
        return _Transitions(obs, features, targets, target_mask, has_transition, cumulative)

    def _posteriors(self, statistics: Tensor) -> NIGPosterior:
        """The posteriors of statistics ``[T, B, S_stats]`` (one batched factorisation), ``[T, B, ..]``."""
        steps, batch = statistics.shape[:2]
        every = self.posterior(self.statistics_layout.unpack(statistics.flatten(0, 1)))
        return NIGPosterior(*(value.view(steps, batch, *value.shape[1:]) for value in every))

    def sequence(self, inputs: Tensor, state: Tensor, episode_starts: Tensor) -> tuple[GLiBRLOutput, Tensor]:
        return self._sequence(inputs, state, episode_starts, policy_only=False)

    def acting_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor, cholesky: bool = True
    ) -> tuple[GLiBRLOutput, Tensor, Callable[[], GLiBRLOutput]]:
        """:meth:`sequence` without gradient and without what no action needs: only the fields
        :meth:`policy_input` reads (``mean``, ``log_variance_diagonal``, ``noise_concentration``,
        ``noise_rate``, the action predictions) and ``group_precision_cholesky``; the precision blocks,
        ``entropy``, ``kl_to_previous`` and ``log_marginal_increment`` (one more factorisation per
        step for the previous posterior, the KL's matrix products and the predictive's solves) are
        left to the returned ``complete()``, which gives :meth:`sequence`'s output for these inputs.
        ``cholesky`` is unused (GLiBRL policies do not sample)."""
        with torch.no_grad():
            output, next_state = self._sequence(inputs, state, episode_starts, policy_only=True)
        return output, next_state, lambda: self.sequence(inputs, state, episode_starts)[0]

    def training_sequence(
        self, inputs: Tensor, state: Tensor, episode_starts: Tensor
    ) -> tuple[GLiBRLOutput, Tensor]:
        """:meth:`sequence` for a PPO minibatch, whose model loss is read by :meth:`aux_loss_rows`:
        the same values, but only the sufficient statistics carry gradients (``statistics``, with
        ``segment_start``); every per-step field is detached, the log predictives included, and the
        precisions (``precision``, ``precision_cholesky``, ``group_precision_cholesky``: nothing in
        the update reads them) are left out. The gradient of the model loss then comes from the
        closed-form log marginal likelihood at the end of each run of steps (see
        :meth:`aux_loss_rows`), not from a per-step factorisation with gradients. With
        ``detach_policy_input=False`` (the RL loss reaches the posterior features) it is
        :meth:`sequence`."""
        if not self.detach_policy_input or not torch.is_grad_enabled():
            return self.sequence(inputs, state, episode_starts)
        prepared, starts = self._prepare_sequence(inputs, state, episode_starts)
        transitions = self._transitions(prepared, state, starts)
        detached = _Transitions(*(value.detach() for value in transitions))
        with torch.no_grad():
            output, next_state = self._sequence(
                prepared, state, starts, policy_only=False, transitions=detached, precisions=False
            )
        first = torch.zeros_like(starts)
        first[0] = True
        output.statistics = transitions.cumulative
        output.segment_start = (starts | first).to(prepared.dtype)
        return output, next_state

    def _sequence(
        self,
        inputs: Tensor,
        state: Tensor,
        episode_starts: Tensor,
        policy_only: bool,
        transitions: _Transitions | None = None,
        precisions: bool = True,
    ) -> tuple[GLiBRLOutput, Tensor]:
        """:meth:`sequence`; with ``policy_only`` the output holds only what :meth:`policy_input`
        reads and the group factors (see :meth:`acting_sequence`). ``transitions``: those of these
        inputs if already formed. ``precisions=False`` leaves out
        ``precision``, ``precision_cholesky`` and ``group_precision_cholesky``."""
        inputs, starts = self._prepare_sequence(inputs, state, episode_starts)
        steps, batch = starts.shape
        dtype = inputs.dtype
        if transitions is None:
            transitions = self._transitions(inputs, state, starts)
        cumulative = transitions.cumulative
        if policy_only:
            current = self._posteriors(cumulative)
        else:
            # One factorisation per step: the posterior before step t is that of step t-1 (or the carry).
            carry = state[:, : self.statistics_layout.size]
            every = self._posteriors(torch.cat([carry.unsqueeze(0), cumulative]))
            current = NIGPosterior(*(value[1:] for value in every))
            prior = self._prior(dtype, inputs.device)
            previous = NIGPosterior(
                *(
                    torch.where(starts.view(steps, batch, *(1,) * (value.dim() - 2)), prior_value, value[:-1])
                    for value, prior_value in zip(every, prior, strict=True)
                )
            )
        cholesky = current.group_precision_cholesky
        identity = torch.eye(self.basis_dim, dtype=dtype, device=inputs.device).expand_as(cholesky)
        inverse_cholesky = self._solve_groups(cholesky, identity)
        action_mean = action_log_variance = None
        if self.action_predictions:
            # Policy features only: without a graph when the policy input is detached.
            with torch.set_grad_enabled(torch.is_grad_enabled() and not self.detach_policy_input):
                action_mean, action_log_variance = self._action_reward_predictions(current, transitions.obs)
        output = GLiBRLOutput(
            mean=current.mean.flatten(-2),
            group_precision_cholesky=cholesky if precisions else None,
            log_variance_diagonal=inverse_cholesky.square().sum(-2).log(),  # diag(L⁻ᵀL⁻¹) = diag Λ⁻¹
            noise_concentration=current.concentration,
            noise_rate=current.rate,
            action_reward_mean=action_mean,
            action_reward_log_variance=action_log_variance,
        )
        if not policy_only:
            increment = self._log_predictive(previous, transitions.features, transitions.targets)
            if precisions:
                scale = (current.concentration / current.rate).sqrt()[..., None, None]  # [T, B, O+1, 1, 1]
                eye = torch.eye(self.basis_dim, dtype=dtype, device=inputs.device)
                gram = self.statistics_layout.unpack(cumulative.flatten(0, 1))["gram"]
                group_precision = gram.view(steps, batch, *gram.shape[1:]) + self.prior_precision * eye
                # (a/b) Λ_g = block_cholesky block_choleskyᵀ, from the Gram matrices without a product.
                output.precision = scale.square() * group_precision[..., self.output_group, :, :]
                output.precision_cholesky = scale * cholesky[..., self.output_group, :, :]
            output.entropy = self._entropy(current)
            output.kl_to_previous = self._kl(current, previous, inverse_cholesky)
            output.log_marginal_increment = (increment * transitions.target_mask).sum(-1)
            output.transition_mask = transitions.has_transition.to(dtype)
        next_state = self.state_layout.pack(
            {
                **self.statistics_layout.unpack(cumulative[-1]),
                "previous_obs": transitions.obs[-1],
                "has_previous": inputs.new_ones(batch, 1),
            }
        )
        return output, next_state

    def model_loss(self, inputs: Tensor, episode_starts: Tensor) -> Tensor:
        """:meth:`aux_loss` of :meth:`sequence` over ``inputs`` ``[T, B, input_dim]`` from the prior
        (``episode_starts`` ``[T, B]``; every column starts a trial at ``t = 0``), with the same value
        and gradients but formed without the per-step posteriors.

        By the chain rule the log predictives of a trial's steps sum to its log marginal likelihood
        (:meth:`log_marginal_likelihood`), so each trial segment of a column contributes the closed
        form of its statistics: one factorisation per segment, not per step. The statistics of a
        segment are its sums alone (:meth:`_segment_statistics`), not the running sums of every step.
        """
        state = self.initial_state(inputs.shape[1], inputs.device)
        starts = torch.as_tensor(episode_starts, device=inputs.device)
        inputs, starts = self._prepare_sequence(inputs, state, starts)
        starts = torch.cat([torch.ones_like(starts[:1]), starts[1:]])
        _, features, targets, _, has_transition, group_mask = self._transition_terms(inputs, state, starts)
        statistics = self._segment_statistics(features, targets, group_mask, starts)
        log_marginal = self._log_marginal(statistics).sum()
        count = has_transition.sum().clamp(min=1).to(inputs.dtype)
        return -self.model_loss_weight * log_marginal / count

    def _segment_statistics(
        self, features: Tensor, targets: Tensor, group_mask: Tensor, starts: Tensor
    ) -> dict[str, Tensor]:
        """The sufficient statistics (``statistics_layout`` parts) of each segment of the columns,
        summed from the prior: a segment runs from a start (``starts[0]`` must be all true) to the
        step before the next one. Leading dim ``[N]``, the segments in column-major order.

        One contraction over time with the ``[T, B, K]`` segment indicator (``K`` the most segments
        of a column) instead of running sums ``[T, B, S]`` and the outer products ``[T, B, d, d]``
        of every step: the same sums up to rounding, and ~5x cheaper with gradients (CPU, one trial
        of 60 steps per column)."""
        segment = torch.cumsum(starts.long(), dim=0) - 1  # [T, B]
        n_segments = int(segment.max()) + 1
        indicator = torch.nn.functional.one_hot(segment, n_segments).to(features.dtype)  # [T, B, K]
        exists = torch.arange(n_segments, device=segment.device) <= segment[-1].unsqueeze(-1)  # [B, K]
        in_segment = indicator.unsqueeze(-1) * group_mask.unsqueeze(2)  # [T, B, K, 2]
        # Without dynamics targets only the reward group's Gram is not 0: only it is formed.
        groups = in_segment if self.fit_dynamics else in_segment[..., 1:]
        weighted = groups.unsqueeze(-1) * features[:, :, None, None, :]  # [T, B, K, G, d]
        gram = torch.einsum("tbkgi,tbj->bkgij", weighted, features)
        if not self.fit_dynamics:
            gram = torch.cat([torch.zeros_like(gram), gram], dim=2)
        sums = {
            "gram": gram,
            "cross": torch.einsum("tbk,tbi,tbo->bkio", indicator, features, targets),
            "square": torch.einsum("tbk,tbo->bko", indicator, targets.square()),
            "count": in_segment.sum(0),
        }
        return {name: value[exists] for name, value in sums.items()}

    # ------------------------------------------------------------------------------ consumers
    @property
    def policy_input_dim(self) -> int:
        """``L + 2d + (O+1)`` (mean weights, log-diagonal of ``Λ_g⁻¹``, log noise scales), or
        ``2d + 1`` with ``fit_dynamics=False`` (the reward output's only)."""
        size = (
            2 * self.basis_dim + 1
            if not self.fit_dynamics
            else self.latent_dim + 2 * self.basis_dim + self.n_outputs
        )
        return size + 2 * self.input_layout.action_dim if self.action_predictions else size

    def policy_input(self, output: BeliefOutput) -> Tensor:
        """``[mean, log diag Λ_dyn⁻¹, log diag Λ_rew⁻¹, log(b/a)]``, ``[.., policy_input_dim]``.

        With ``fit_dynamics=False`` only the reward output's parts ``[μ_O, log diag Λ_rew⁻¹,
        log(b_O/a_O)]``. With ``normalize_policy_input`` (default) each part is taken relative to
        the prior, so all are 0 before any data: the means in units of their prior scale,
        ``μ·sqrt(λ a₀/b₀)``; ``log diag(λ Λ_g⁻¹) ≤ 0`` (the weights' posterior variance factors
        over the prior's); ``log((b/a)/(b₀/a₀))``. Unnormalised, a small ``λ`` or ``b₀`` would
        offset them by ``−log λ`` or ``log b₀`` (e.g. ±4.6 for 0.01).

        With ``action_predictions``, ``[action_reward_mean, action_reward_log_variance]`` follow
        (the log variance less ``log(b₀/a₀)`` when normalised).
        """
        output = _require_glibrl_output(output)
        mean, log_variance = output.mean, output.log_variance_diagonal
        log_noise_scale = output.noise_rate.log() - output.noise_concentration.log()
        if not self.fit_dynamics:
            mean = mean[..., -self.basis_dim :]
            log_variance = log_variance[..., 1:, :]
            log_noise_scale = log_noise_scale[..., -1:]
        if self.normalize_policy_input:
            prior_scale = self.prior_noise_rate / self.prior_noise_concentration
            mean = mean * math.sqrt(self.prior_precision / prior_scale)
            log_variance = log_variance + math.log(self.prior_precision)
            log_noise_scale = log_noise_scale - math.log(prior_scale)
        parts = [mean, log_variance.flatten(-2), log_noise_scale]
        if self.action_predictions:
            log_predictive = output.action_reward_log_variance
            if self.normalize_policy_input:
                log_predictive = log_predictive - math.log(
                    self.prior_noise_rate / self.prior_noise_concentration
                )
            parts += [output.action_reward_mean, log_predictive]
        features = torch.cat(parts, dim=-1)
        return features.detach() if self.detach_policy_input else features

    @property
    def has_aux_loss(self) -> bool:
        """True when the marginal likelihood has weight (``model_loss_weight > 0``)."""
        return self.model_loss_weight > 0

    @property
    def fixed_during_policy_update(self) -> bool:
        """True when nothing in a PPO update reaches the basis: the policy input is detached and the
        model loss is not part of the PPO loss (``model_loss_in_policy_update=False``, or weight 0)."""
        return self.detach_policy_input and (
            not self.model_loss_in_policy_update or self.model_loss_weight == 0
        )

    def aux_loss(self, output: BeliefOutput) -> Tensor:
        """``model_loss_weight ·`` the negative log marginal likelihood per transition (scalar).

        ``output`` holds the steps to use (e.g. a minibatch's unpadded steps, any leading shape);
        the sum of their ``log p(y_t | y_{<t})`` is divided by the number of steps with a transition.
        An output of :meth:`training_sequence` (detached log predictives) goes to :meth:`aux_loss_rows`.
        """
        output = _require_glibrl_output(output)
        if output.statistics is not None and output.statistics.requires_grad:
            raise ValueError(
                "aux_loss got an output of training_sequence, whose log predictives carry no gradient: "
                "use aux_loss_rows(output, mask) with its rows in time order"
            )
        transitions = output.transition_mask.sum().clamp(min=1.0)
        return -self.model_loss_weight * output.log_marginal_increment.sum() / transitions

    def aux_loss_rows(self, output: BeliefOutput, mask: Tensor) -> Tensor:
        """The PPO minibatch's share: :meth:`aux_loss` over the rows ``mask`` ``[N]``, or 0 with
        ``model_loss_in_policy_update=False`` (the basis then trains in :meth:`after_policy_update`).

        For an output of :meth:`training_sequence` (rows of its passes in time order, as
        ``BeliefPolicy`` flattens them: ``[n_seq, T]`` → ``[N]``) the value is the sum of the
        (detached) per-step log predictives of the rows and the gradient is that of the chain rule:
        a run of consecutive rows of one trial contributes ``log p(its targets | the statistics
        before it)`` = ``LML(statistics at its last row) − LML(statistics before its first row)``,
        where the second term is a constant (the carried or prior statistics) unless the run starts
        after a masked-out row of its trial. Same value and gradients as :meth:`aux_loss` of the
        :meth:`sequence` output's rows, to rounding."""
        if not self.model_loss_in_policy_update:
            return output.mean.new_zeros(())
        output = _require_glibrl_output(output)
        if output.statistics is None:
            return self.aux_loss(output.apply(lambda value: value[mask]))
        mask = mask.to(torch.bool)
        continues = output.segment_start < 0.5  # the row continues the previous row's statistics
        following = torch.zeros_like(mask)
        following[:-1] = mask[1:] & continues[1:]
        ends = mask & ~following
        before_resumed = torch.zeros_like(mask)  # masked-out rows that a run of their trial follows
        before_resumed[:-1] = mask[1:] & continues[1:] & ~mask[:-1]
        rows = ends | before_resumed  # disjoint: masked-in and masked-out rows
        sign = (ends.to(output.statistics.dtype) - before_resumed.to(output.statistics.dtype))[rows]
        statistics = self.statistics_layout.unpack(output.statistics[rows])
        log_marginal = (sign * self._log_marginal(statistics)).sum()
        value = output.log_marginal_increment[mask].sum()
        surrogate = value + (log_marginal - log_marginal.detach())
        transitions = output.transition_mask[mask].sum().clamp(min=1.0)
        return -self.model_loss_weight * surrogate / transitions

    def model_update(
        self, inputs: Tensor, episode_starts: Tensor, n_updates: int, progress_remaining: float = 1.0
    ) -> float:
        """``n_updates`` Adam steps (own optimizer, ``basis_lr``) of :meth:`aux_loss` on sequences.

        :param inputs: ``x_t`` ``[T, B, input_dim]``, e.g. a rollout; each column starts from the
            prior at ``t = 0`` (a column that begins mid-trial is a contiguous piece of one task's
            data, whose log marginal likelihood is as valid a loss as a whole trial's).
        :param episode_starts: ``[T, B]`` trial starts.
        :param progress_remaining: the fraction of the training budget left (1 → 0; below 0 counts
            as 0), for a ``"lin_<v>"`` ``basis_lr``.
        :return: the mean loss before the steps.
        """
        check_positive_int("n_updates", n_updates)
        if self._basis_optimizer is None:
            self._basis_optimizer = model_adam(self.basis.parameters(), self._basis_rate.at(1.0))
        self._basis_rate.apply(self._basis_optimizer, progress_remaining)
        losses = []
        with torch.enable_grad():
            for _ in range(n_updates):
                loss = self.model_loss(inputs, episode_starts)
                self._basis_optimizer.zero_grad(set_to_none=True)
                loss.backward()
                self._basis_optimizer.step()
                losses.append(loss.detach())
        self._basis_optimizer.zero_grad(set_to_none=True)
        return float(torch.stack(losses).double().mean())  # one host transfer

    def before_policy_update(self, model: Any) -> None:
        """BayesPPO hook: the basis steps of :meth:`after_policy_update` when ``basis_update_timing``
        is ``"before"``."""
        if self.basis_update_timing == "before":
            self._basis_steps(model)

    def after_policy_update(self, model: Any) -> None:
        """BayesPPO hook: ``basis_updates_per_ppo_update`` :meth:`model_update` steps on the rollout
        of ``model.rollout_buffer`` (logged as ``belief/basis_loss``) at the learning rate of the
        model's progress (``model._current_progress_remaining``); nothing if that is 0 or
        ``basis_update_timing`` is ``"before"`` (then :meth:`before_policy_update` takes them)."""
        if self.basis_update_timing == "after":
            self._basis_steps(model)

    def _basis_steps(self, model: Any) -> None:
        if self.basis_updates_per_ppo_update == 0:
            return
        inputs, starts = rollout_inputs(model)
        dtype = self._reference_parameter().dtype
        loss = self.model_update(
            inputs.to(dtype), starts, self.basis_updates_per_ppo_update, model._current_progress_remaining
        )
        model.logger.record("belief/basis_loss", loss)


def _running_sum(values: Tensor, starts: Tensor, carry: Tensor) -> Tensor:
    """:func:`~bayes_agents.beliefs.laplace.segmented_cumsum` (``out_t = values_t + (0 if starts_t else
    out_{t-1})``, ``out_{-1} = carry``). Where no reset lies after ``t = 0`` (the sequences of SB3's
    recurrent buffer, which are cut at episode starts) it is one ``torch.cumsum`` over time, O(T)
    instead of the O(T²) indicator product and in the same (sequential) order of additions."""
    if values.shape[0] == 1 or bool(starts[1:].any()):
        return segmented_cumsum(values, starts, carry)
    keep = (~starts[0]).to(values.dtype).unsqueeze(-1)
    first = values[0] + keep * carry
    return torch.cumsum(torch.cat([first.unsqueeze(0), values[1:]]), dim=0)


def _require_glibrl_output(output: BeliefOutput) -> GLiBRLOutput:
    if not isinstance(output, GLiBRLOutput):
        raise TypeError(f"expected a GLiBRLOutput from GLiBRLBelief, got {type(output).__name__}")
    return output


register_belief(
    "glibrl",
    GLiBRLBelief,
    prefix="GLiBRL",
    needs_input_layout=True,
    # GLiBRL has its own encoder (the basis): only the policy-head width is shared.
    shared_keys={"net_arch"},
    policy_doc="""GLiBRL: the policy conditions on a conjugate Bayesian linear model of the transitions.

    Belief keywords (``policy_kwargs``): ``basis_dim`` (d, 16), ``basis_hidden_sizes`` ((64, 64)),
    ``prior_precision`` (λ, 1.0), ``prior_noise_concentration`` (a₀, 1.0), ``prior_noise_rate``
    (b₀, 1.0), ``model_loss_weight`` (1.0; the per-transition negative log marginal likelihood that
    trains the basis, applied by :class:`~bayes_agents.BayesPPO`), ``detach_policy_input``
    (True), ``fit_dynamics`` (True), ``normalize_policy_input`` (True), ``action_predictions``
    (False; discrete actions), ``basis_updates_per_ppo_update`` (0) and ``basis_lr`` (1e-3; extra
    basis steps in ``after_policy_update``), ``model_loss_in_policy_update`` (True; False trains the
    basis by those steps only and lets ``BayesPPO`` run the belief once per update) and
    ``basis_update_timing`` (``"after"`` the PPO update, or ``"before"``). The package's
    grid and bandit defaults (:func:`bayes_agents.methods.method_defaults`) change the prior scale
    and switch the options on.
    The head sees the posterior features and the observation; ``n_samples`` must be 0. See
    :class:`~bayes_agents.beliefs.glibrl.GLiBRLBelief`.
    """,
    extractor_doc="""GLiBRL belief (posterior features of the Bayesian linear regression); keywords of
    :class:`~bayes_agents.beliefs.glibrl.GLiBRLBelief` (its ``input_layout`` comes from the
    observation space). Its basis is trained on the marginal likelihood by
    :class:`~bayes_agents.callbacks.BeliefAuxLossCallback`.""",
)
