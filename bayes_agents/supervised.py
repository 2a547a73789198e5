"""Supervised Fourier regression with belief modules (the Laplace-VRNN paper's §5.1 experiment).

Data: tasks ``f`` from the prior of :mod:`bayes_envs.regression` (``FourierRegression-v0``), inputs
``x_t ~ U[−1, 1]``, noiseless targets ``y_t = f(x_t)``. As in the environment, the belief's input at step
``t`` is ``(x_t, x_{t−1}, y_{t−1})`` (the previous pair is ``(0, 0)`` at ``t = 0``), so the belief output
``q_t`` has seen ``t`` context pairs and the query ``x_t``, and predicts ``y_t``.

Model (:class:`RegressionModel`): a belief (:class:`~bayes_agents.beliefs.RL2Belief` point estimate,
:class:`~bayes_agents.beliefs.VRNNBelief` or :class:`~bayes_agents.beliefs.LaplaceBelief`) and a Gaussian
predictive head ``p(y | x, z) = N(g([z, x]), σ²)`` with an MLP ``g`` and a learned input-independent ``σ``.

Objective (paper, appendix A.1.1), per step and averaged over steps and tasks:
``−E_{q_t} log p(y_t | x_t, z) + β·KL(q_t ‖ sg q_{t−1})`` (β from the belief, 1e-2 by default), the
expectation by ``n_train_samples`` reparameterised samples; the point-estimate RNN has no KL term.
Evaluation: the predictive cross-entropy ``−log (1/m) Σ_i p(y_t | x_t, z_i)``, ``z_i ~ q_t`` (``m = 30``),
at every number of context points ``t``; since ``x_t`` is a fresh uniform draw, its mean over many tasks is
the cross-entropy on new inputs given ``t`` context points.

Protocols: train from scratch (:func:`train_regression`); pretrain the RNN, then attach a Laplace or VRNN
posterior (:func:`attach_posterior`) and fine-tune it, or keep the RNN's weights untouched (post hoc).
"""

from __future__ import annotations

import copy
import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

from bayes_agents.beliefs import Belief, BeliefOutput, LaplaceBelief, RL2Belief
from bayes_agents.beliefs.base import check_choice, check_positive_int
from bayes_agents.beliefs.vrnn import VRNNBelief
from bayes_envs.regression import amplitude_bounds, fourier_values

#: Size of the belief input ``(x_t, x_{t−1}, y_{t−1})``.
INPUT_DIM = 3
#: Belief kinds :func:`make_regression_model` builds.
BELIEF_KINDS = ("rnn", "vrnn", "laplace")
#: Seed-sequence stream of the training tasks and of the held-out evaluation tasks of a seed.
TRAIN_STREAM, TEST_STREAM = 0, 1


# ---------------------------------------------------------------------------------------------- data
def sample_fourier_data(
    batch_size: int, n_points: int, rng: np.random.Generator, n_components: int = 3
) -> tuple[np.ndarray, np.ndarray]:
    """``batch_size`` tasks of the ``FourierRegression-v0`` prior, ``n_points`` points each, all at once.

    The prior (:class:`bayes_envs.regression.FourierBatch`): ``a_i = (U[0,2) − 1)·(i+1)/3``,
    shift and phases ``U[0, π)``; inputs ``U[−1, 1]``.

    :return: inputs ``xs`` and targets ``ys``, both ``[batch_size, n_points]`` float64.
    """
    check_positive_int("batch_size", batch_size)
    check_positive_int("n_points", n_points)
    check_positive_int("n_components", n_components)
    amplitudes = (rng.random((batch_size, n_components + 1)) * 2 - 1) * amplitude_bounds(n_components)
    shifts = rng.uniform(0.0, np.pi, batch_size)
    phases = rng.uniform(0.0, np.pi, (batch_size, n_components))
    xs = rng.uniform(-1.0, 1.0, (batch_size, n_points))
    return xs, fourier_values(amplitudes, shifts, phases, xs)


def regression_inputs(xs: np.ndarray | Tensor, ys: np.ndarray | Tensor) -> tuple[Tensor, Tensor]:
    """Belief inputs ``(x_t, x_{t−1}, y_{t−1})`` ``[T, B, 3]`` (float32) and targets ``y_t`` ``[T, B]``.

    :param xs: ``[B, T]``; :param ys: ``[B, T]``.
    """
    xs = torch.as_tensor(xs, dtype=torch.float32).t()
    ys = torch.as_tensor(ys, dtype=torch.float32).t()
    if xs.dim() != 2 or xs.shape != ys.shape:
        raise ValueError(f"xs and ys must both be [B, T], got {tuple(xs.shape)} and {tuple(ys.shape)}")
    previous_x = torch.cat([xs.new_zeros(1, xs.shape[1]), xs[:-1]])
    previous_y = torch.cat([ys.new_zeros(1, ys.shape[1]), ys[:-1]])
    return torch.stack([xs, previous_x, previous_y], dim=-1), ys


def task_rng(seed: int, stream: int) -> np.random.Generator:
    """The task generator of ``seed``'s ``stream`` (:data:`TRAIN_STREAM` or :data:`TEST_STREAM`): disjoint
    streams, so evaluation tasks are held out from training."""
    return np.random.default_rng(np.random.SeedSequence([seed, stream]))


# ---------------------------------------------------------------------------------------------- model
def _mlp(sizes: Sequence[int], negative_slope: float) -> nn.Sequential:
    layers: list[nn.Module] = []
    for index, (width_in, width_out) in enumerate(itertools.pairwise(sizes)):
        layers.append(nn.Linear(width_in, width_out))
        if index < len(sizes) - 2:
            layers.append(nn.LeakyReLU(negative_slope))
    return nn.Sequential(*layers)


class RegressionModel(nn.Module):
    """A belief and the Gaussian predictive head ``N(y; g([z, x]), σ²)`` (see the module docstring).

    :param belief: a belief with ``input_dim == 3``.
    :param head_sizes: hidden widths of ``g`` (paper: ``(256, 256, 64)``), leaky-ReLU between layers.
    :param negative_slope: leaky-ReLU slope of ``g``.
    """

    def __init__(
        self, belief: Belief, head_sizes: Sequence[int] = (256, 256, 64), negative_slope: float = 0.01
    ):
        super().__init__()
        if not isinstance(belief, Belief):
            raise TypeError(f"belief must be a Belief, got {type(belief).__name__}")
        if belief.input_dim != INPUT_DIM:
            raise ValueError(
                f"belief.input_dim must be {INPUT_DIM} (x_t, x_prev, y_prev), got {belief.input_dim}"
            )
        head_sizes = tuple(head_sizes)
        for width in head_sizes:
            check_positive_int("head_sizes entries", width)
        self.belief = belief
        self.head_sizes = head_sizes
        self.negative_slope = float(negative_slope)
        self.head = _mlp([belief.latent_dim + 1, *head_sizes, 1], negative_slope)
        self.log_std = nn.Parameter(torch.zeros(()))

    def beliefs(self, inputs: Tensor) -> BeliefOutput:
        """Belief outputs ``[T, B, ..]`` for whole trials ``inputs`` ``[T, B, 3]`` (fresh state at t = 0)."""
        steps, batch = inputs.shape[:2]
        starts = torch.zeros(steps, batch, dtype=torch.bool, device=inputs.device)
        starts[0] = True
        output, _ = self.belief.sequence(inputs, self.belief.initial_state(batch, inputs.device), starts)
        return output

    def latents(
        self, output: BeliefOutput, n_samples: int, generator: torch.Generator | None = None
    ) -> Tensor:
        """``[n_samples, .., L]`` posterior samples, or a point belief's estimate ``[1, .., L]``."""
        if output.is_distribution:
            return self.belief.sample(output, n_samples, generator=generator)
        return output.mean.unsqueeze(0)

    def predicted_means(self, latents: Tensor, queries: Tensor) -> Tensor:
        """``g([z, x])``: ``latents`` ``[.., L]`` and ``queries`` ``[..]`` (broadcast) → ``[..]``."""
        queries = queries.expand(latents.shape[:-1]).unsqueeze(-1)
        return self.head(torch.cat([latents, queries], dim=-1)).squeeze(-1)

    def log_likelihood(self, targets: Tensor, means: Tensor) -> Tensor:
        """``log N(targets; means, σ²)`` elementwise (broadcast)."""
        return (
            -0.5 * ((targets - means) / self.log_std.exp()).square()
            - self.log_std
            - 0.5 * math.log(2 * math.pi)
        )

    def loss(
        self, inputs: Tensor, targets: Tensor, n_samples: int = 1, generator: torch.Generator | None = None
    ) -> tuple[Tensor, dict[str, float]]:
        """The negative ELBO per step, ``mean_{t,b}[−E_q log p(y_t | x_t, z) + β KL(q_t ‖ sg q_{t−1})]``.

        :param inputs: ``[T, B, 3]``; :param targets: ``[T, B]``.
        :return: the scalar loss and its parts (``nll``, ``kl_penalty``) as floats.
        """
        output = self.beliefs(inputs)
        latents = self.latents(output, n_samples, generator)
        nll = -self.log_likelihood(targets, self.predicted_means(latents, inputs[..., 0])).mean()
        penalty = self.belief.aux_loss(output) if output.is_distribution else nll.new_zeros(())
        return nll + penalty, {"nll": float(nll.detach()), "kl_penalty": float(penalty.detach())}

    @torch.no_grad()
    def predictive_statistics(
        self, inputs: Tensor, targets: Tensor, n_samples: int = 30, generator: torch.Generator | None = None
    ) -> dict[str, Tensor]:
        """Per step and task ``[T, B]``: ``cross_entropy`` ``−log (1/m) Σ_i N(y_t; g([z_i, x_t]), σ²)`` with
        ``z_i ~ q_t`` (``m = n_samples``; the point estimate for an RNN), ``squared_error`` of the predictive
        mean ``(1/m) Σ_i g([z_i, x_t])``, and for distributional beliefs the posterior ``entropy`` and
        ``kl_to_previous``."""
        check_positive_int("n_samples", n_samples)
        output = self.beliefs(inputs)
        latents = self.latents(output, n_samples, generator)
        means = self.predicted_means(latents, inputs[..., 0])
        log_densities = self.log_likelihood(targets, means)
        statistics = {
            "cross_entropy": math.log(latents.shape[0]) - torch.logsumexp(log_densities, dim=0),
            "squared_error": (means.mean(0) - targets).square(),
        }
        if output.is_distribution:
            statistics["entropy"] = output.entropy
            statistics["kl_to_previous"] = output.kl_to_previous
        return statistics


def make_regression_model(
    kind: str,
    seed: int,
    *,
    hidden_size: int = 128,
    latent_dim: int = 64,
    embed_sizes: Sequence[int] = (256, 256),
    head_sizes: Sequence[int] = (256, 256, 64),
    rnn: str = "lstm",
    **belief_kwargs,
) -> RegressionModel:
    """A freshly initialised regression model (initialisation seeded by ``seed``; global RNG untouched).

    :param kind: ``"rnn"`` (point estimate), ``"vrnn"`` or ``"laplace"``.
    :param belief_kwargs: the belief's own options: ``covariance``, ``beta`` (VRNN, Laplace), ``variant``,
        ``window``, ``damping`` (Laplace).
    """
    check_choice("kind", kind, BELIEF_KINDS)
    belief_class = {"rnn": RL2Belief, "vrnn": VRNNBelief, "laplace": LaplaceBelief}[kind]
    if kind == "rnn" and belief_kwargs:
        raise ValueError(f"the rnn point estimate takes no posterior options, got {sorted(belief_kwargs)}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        belief = belief_class(
            INPUT_DIM, hidden_size, latent_dim, rnn=rnn, embed_sizes=embed_sizes, **belief_kwargs
        )
        return RegressionModel(belief, head_sizes)


def attach_posterior(model: RegressionModel, kind: str, seed: int = 0, **belief_kwargs) -> RegressionModel:
    """A copy of a (pre-trained) RNN regression model with a Laplace or VRNN posterior on its recurrence.

    Every trained weight (recurrence, latent head, predictive head, ``σ``) is copied; a VRNN's covariance
    heads are new (initialised from ``seed``). Post hoc use is this model without further training.

    :param kind: ``"laplace"`` or ``"vrnn"``; :param belief_kwargs: as :func:`make_regression_model`.
    """
    check_choice("kind", kind, ("laplace", "vrnn"))
    if type(model.belief) is not RL2Belief:
        raise TypeError(f"model.belief must be an RL2Belief, got {type(model.belief).__name__}")
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        belief_class = LaplaceBelief if kind == "laplace" else VRNNBelief
        belief = belief_class.from_rl2(model.belief, **belief_kwargs)
    attached = RegressionModel(belief, model.head_sizes, model.negative_slope)
    attached.head.load_state_dict(model.head.state_dict())
    with torch.no_grad():
        attached.log_std.copy_(model.log_std)
    return attached.to(model.log_std.device)


# ---------------------------------------------------------------------------------------------- training
@dataclass
class TrainingLog:
    """Per-update losses of :func:`train_regression` (negative ELBO, and its NLL and KL-penalty parts)."""

    loss: list[float]
    nll: list[float]
    kl_penalty: list[float]


def train_regression(
    model: RegressionModel,
    steps: int,
    seed: int,
    *,
    batch_size: int = 256,
    n_points: int = 50,
    n_components: int = 3,
    learning_rate: float = 1e-3,
    weight_decay: float = 1e-6,
    n_train_samples: int = 1,
    max_grad_norm: float = 1.0,
    max_grad_value: float = 5.0,
    callback: Callable[[int, RegressionModel], None] | None = None,
) -> TrainingLog:
    """Train ``model`` in place on fresh training tasks (paper B.1: AdamW, lr 1e-3, weight decay 1e-6,
    gradients clipped to values in ±5 and global norm 1; 256 tasks of 50 points per update).

    Reproducible: the tasks come from ``task_rng(seed, TRAIN_STREAM)`` and the posterior samples from a
    torch generator seeded with ``seed``.

    :param callback: called as ``callback(update_index, model)`` after each update (e.g. snapshots).
    """
    for name, value in (
        ("steps", steps),
        ("batch_size", batch_size),
        ("n_points", n_points),
        ("n_train_samples", n_train_samples),
    ):
        check_positive_int(name, value)
    for name, value in (
        ("learning_rate", learning_rate),
        ("max_grad_norm", max_grad_norm),
        ("max_grad_value", max_grad_value),
    ):
        if not (isinstance(value, (int, float)) and value > 0):
            raise ValueError(f"{name} must be a real number > 0, got {value!r}")
    rng = task_rng(seed, TRAIN_STREAM)
    generator = torch.Generator().manual_seed(seed)
    device = model.log_std.device
    optimizer = torch.optim.AdamW(model.parameters(), lr=learning_rate, weight_decay=weight_decay)
    log = TrainingLog([], [], [])
    model.train()
    for update in range(steps):
        inputs, targets = regression_inputs(*sample_fourier_data(batch_size, n_points, rng, n_components))
        loss, parts = model.loss(inputs.to(device), targets.to(device), n_train_samples, generator)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_value_(model.parameters(), max_grad_value)
        torch.nn.utils.clip_grad_norm_(model.parameters(), max_grad_norm)
        optimizer.step()
        log.loss.append(float(loss.detach()))
        log.nll.append(parts["nll"])
        log.kl_penalty.append(parts["kl_penalty"])
        if callback is not None:
            callback(update, model)
    model.eval()
    return log


@torch.no_grad()
def evaluate_regression(
    model: RegressionModel,
    seed: int,
    *,
    n_tasks: int = 1024,
    n_points: int = 101,
    n_samples: int = 30,
    n_components: int = 3,
    chunk_size: int = 256,
) -> dict[str, np.ndarray]:
    """Mean statistics over ``n_tasks`` held-out tasks (``task_rng(seed, TEST_STREAM)``) at every number of
    context points ``t = 0 .. n_points − 1``: ``cross_entropy`` ``[n_points]`` (``m = n_samples`` Monte Carlo
    predictive) and, for distributional beliefs, ``entropy`` and ``kl_to_previous``. The same ``seed`` gives
    the same tasks for every model, so models are compared on common tasks."""
    for name, value in (("n_tasks", n_tasks), ("n_points", n_points), ("chunk_size", chunk_size)):
        check_positive_int(name, value)
    xs, ys = sample_fourier_data(n_tasks, n_points, task_rng(seed, TEST_STREAM), n_components)
    generator = torch.Generator().manual_seed(seed)
    device = model.log_std.device
    model.eval()
    sums: dict[str, Tensor] = {}
    for begin in range(0, n_tasks, chunk_size):
        inputs, targets = regression_inputs(xs[begin : begin + chunk_size], ys[begin : begin + chunk_size])
        statistics = model.predictive_statistics(inputs.to(device), targets.to(device), n_samples, generator)
        for name, values in statistics.items():
            sums[name] = sums.get(name, 0) + values.double().sum(1).cpu()
    return {name: (total / n_tasks).numpy() for name, total in sums.items()}


def snapshot(model: RegressionModel) -> RegressionModel:
    """A deep copy of ``model`` (e.g. a pre-training snapshot to fine-tune from)."""
    return copy.deepcopy(model)
