"""Laplace-VRNN belief against brute-force references: Jacobians (finite differences), window
precisions (explicit sums), sampling, entropy/KL (torch.distributions), post-hoc conversion from RL²,
long-rollout stability and stop-gradients."""

from __future__ import annotations

import itertools

import gymnasium as gym
import pytest
import torch
from sb3_contrib import RecurrentPPO
from torch.distributions import Independent, MultivariateNormal, Normal, kl_divergence

import bayes_envs  # noqa: F401  (registers the envs)
from bayes_agents.beliefs import COVARIANCES, VARIANTS, LaplaceBelief, RL2Belief, segmented_cumsum
from bayes_agents.policies import LaplacePolicy

INPUT_DIM, HIDDEN, LATENT, EMBED = 4, 6, 3, (7,)


def make_belief(dtype=torch.float64, seed: int = 0, **options) -> LaplaceBelief:
    torch.manual_seed(seed)
    belief = LaplaceBelief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT, embed_sizes=EMBED, **options)
    with torch.no_grad():  # larger weights than the default init: saturating gates, varied Jacobians
        for parameter in belief.parameters():
            parameter.mul_(2.0)
    return belief.to(dtype)


def random_starts(steps: int, batch: int, seed: int) -> torch.Tensor:
    starts = torch.rand(steps, batch, generator=torch.Generator().manual_seed(seed)) < 0.2
    starts[0] = True
    return starts


def cell_mean(belief: LaplaceBelief, carry: torch.Tensor, inputs: torch.Tensor) -> torch.Tensor:
    """μ(f(s, x)) with torch's own cell module (independent of the belief's gate equations)."""
    embedded = belief.embedding(inputs)
    if belief.rnn == "lstm":
        hidden, _ = belief.cell(embedded, (carry[:, :HIDDEN], carry[:, HIDDEN:]))
    else:
        hidden = belief.cell(embedded, carry)
    return belief.latent_head(hidden)


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_jacobian_matches_finite_differences(rnn):
    belief = make_belief(rnn=rnn)
    rows = 5
    carry = torch.randn(rows, belief.carry_size, dtype=torch.float64)
    inputs = torch.randn(rows, INPUT_DIM, dtype=torch.float64)
    jacobian = belief.next_step_jacobian(carry, inputs)
    assert jacobian.shape == (rows, LATENT, belief.carry_size)
    step = 1e-6
    basis = torch.eye(belief.carry_size, dtype=torch.float64)
    with torch.no_grad():
        columns = [
            (
                cell_mean(belief, carry + step * direction, inputs)
                - cell_mean(belief, carry - step * direction, inputs)
            )
            / (2 * step)
            for direction in basis
        ]
    finite_differences = torch.stack(columns, dim=-1)
    torch.testing.assert_close(jacobian, finite_differences, atol=1e-8, rtol=1e-6)
    assert jacobian.abs().max() > 1e-2  # not trivially zero


def explicit_precisions(belief: LaplaceBelief, inputs, starts):
    """Loop over t, b and the window: Λ_t from Σ_i J_i J_i^T with J_i from next_step_jacobian."""
    steps, batch = starts.shape
    state = belief.initial_state(batch)
    precisions = torch.zeros(steps, batch, LATENT, LATENT, dtype=torch.float64)
    history = [[] for _ in range(batch)]
    accumulated = [torch.zeros(LATENT, LATENT, dtype=torch.float64) for _ in range(batch)]
    prior = belief.prior_precision * torch.eye(LATENT, dtype=torch.float64)
    with torch.no_grad():
        for t in range(steps):
            _, state = belief.step(inputs[t], state, starts[t])
            for b in range(batch):
                if starts[t, b]:
                    history[b] = []
                    accumulated[b] = torch.zeros(LATENT, LATENT, dtype=torch.float64)
                history[b].append(inputs[t, b])
                carry = state[b : b + 1, : belief.carry_size]
                data = torch.zeros(LATENT, LATENT, dtype=torch.float64)
                for past_input in history[b][-belief.window :]:
                    jacobian = belief.next_step_jacobian(carry, past_input[None])[0]
                    data = data + jacobian @ jacobian.T
                if belief.variant != "stationary":
                    accumulated[b] = accumulated[b] + data
                    data = accumulated[b]
                precisions[t, b] = data + prior
    return precisions


@pytest.mark.parametrize(
    ("rnn", "variant", "covariance", "window"),
    [
        ("lstm", "stationary", "full", 1),
        ("lstm", "stationary", "full", 3),
        ("gru", "stationary", "diag", 3),
        ("lstm", "sum_precision", "diag", 2),
        ("gru", "sum_precision", "full", 3),
        ("lstm", "markov", "full", 2),
    ],
)
def test_precision_equals_explicit_window_sum(rnn, variant, covariance, window):
    belief = make_belief(rnn=rnn, variant=variant, covariance=covariance, window=window)
    steps, batch = 9, 3
    inputs = torch.randn(
        steps, batch, INPUT_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(3)
    )
    starts = random_starts(steps, batch, seed=4)
    starts[5, 0] = True  # a reset while the window is full
    output, _ = belief.sequence(inputs, belief.initial_state(batch), starts)
    expected = explicit_precisions(belief, inputs, starts)
    if covariance == "diag":
        expected = expected.diagonal(dim1=-2, dim2=-1)
    torch.testing.assert_close(output.precision, expected, atol=1e-10, rtol=1e-10)
    if covariance == "full":
        cholesky = output.precision_cholesky
        torch.testing.assert_close(cholesky @ cholesky.transpose(-2, -1), expected, atol=1e-10, rtol=1e-10)


def test_segmented_cumsum_matches_loop():
    generator = torch.Generator().manual_seed(5)
    values = torch.randn(11, 4, 2, 3, dtype=torch.float64, generator=generator)
    carry = torch.randn(4, 2, 3, dtype=torch.float64, generator=generator)
    starts = random_starts(11, 4, seed=6)
    starts[0, 1] = False
    starts[:, 2] = False
    expected, running = [], carry
    for t in range(11):
        running = torch.where(starts[t].view(4, 1, 1), 0.0, running) + values[t]
        expected.append(running)
    for block_steps in (128, 4, 1):  # one block, several blocks, one step per block
        torch.testing.assert_close(
            segmented_cumsum(values, starts, carry, block_steps), torch.stack(expected)
        )


def sequence_output(belief: LaplaceBelief, steps: int = 6, batch: int = 3):
    inputs = torch.randn(
        steps, batch, INPUT_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(7)
    )
    starts = random_starts(steps, batch, seed=8)
    return belief.sequence(inputs, belief.initial_state(batch), starts)[0], starts


@pytest.mark.parametrize("covariance", COVARIANCES)
def test_sample_covariance_matches_inverse_precision(covariance):
    belief = make_belief(covariance=covariance, window=2, variant="sum_precision")
    output, _ = sequence_output(belief)
    n_samples = 40_000
    samples = belief.sample(output, n_samples, generator=torch.Generator().manual_seed(9))
    assert samples.shape == (n_samples, *output.mean.shape)
    precision = output.precision if covariance == "full" else torch.diag_embed(output.precision)
    covariance_matrix = torch.linalg.inv(precision)
    centred = samples - output.mean
    empirical = torch.einsum("n...i,n...j->...ij", centred, centred) / n_samples
    scale = covariance_matrix.diagonal(dim1=-2, dim2=-1).amax(-1)[..., None, None]
    assert ((empirical - covariance_matrix).abs() / scale).max() < 0.04
    assert ((samples.mean(0) - output.mean).abs() / scale[..., 0].sqrt()).max() < 0.04
    again = belief.sample(output, n_samples, generator=torch.Generator().manual_seed(9))
    assert torch.equal(samples, again)


@pytest.mark.parametrize(("variant", "covariance"), list(itertools.product(VARIANTS, COVARIANCES)))
def test_entropy_and_kl_match_torch_distributions(variant, covariance):
    belief = make_belief(variant=variant, covariance=covariance, window=2, beta=0.3)
    output, starts = sequence_output(belief)
    steps, batch = starts.shape

    def gaussian(mean, precision):
        if covariance == "full":
            return MultivariateNormal(mean, precision_matrix=precision)
        return Independent(Normal(mean, precision.rsqrt()), 1)

    prior_mean = torch.zeros(LATENT, dtype=torch.float64)
    prior_precision = belief.prior_precision * torch.ones(LATENT, dtype=torch.float64)
    if covariance == "full":
        prior_precision = torch.diag(prior_precision)
    for t, b in itertools.product(range(steps), range(batch)):
        posterior = gaussian(output.mean[t, b], output.precision[t, b])
        if starts[t, b]:
            previous = gaussian(prior_mean, prior_precision)
        else:
            previous = gaussian(output.mean[t - 1, b], output.precision[t - 1, b])
        torch.testing.assert_close(output.entropy[t, b], posterior.entropy(), atol=1e-9, rtol=1e-9)
        torch.testing.assert_close(
            output.kl_to_previous[t, b], kl_divergence(posterior, previous), atol=1e-9, rtol=1e-9
        )
    assert output.kl_to_previous.min() > 1e-6  # the posteriors do move
    torch.testing.assert_close(belief.aux_loss(output), 0.3 * output.kl_to_previous.mean())


@pytest.mark.parametrize(
    ("variant", "covariance", "window", "rnn"),
    [
        ("stationary", "full", 1, "lstm"),
        ("stationary", "diag", 3, "gru"),
        ("sum_precision", "full", 15, "lstm"),
        ("sum_precision", "diag", 2, "gru"),
    ],
)
def test_post_hoc_laplace_mean_equals_rl2_latent(variant, covariance, window, rnn):
    torch.manual_seed(10)
    rl2 = RL2Belief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT, rnn=rnn, embed_sizes=(8, 5))
    with torch.no_grad():
        for parameter in rl2.parameters():  # stands in for training: weights far from the initialisation
            parameter.add_(0.5 * torch.randn_like(parameter))
    laplace = LaplaceBelief.from_rl2(rl2, variant=variant, covariance=covariance, window=window)
    assert laplace.state_dict().keys() == rl2.state_dict().keys()
    inputs = torch.randn(20, 4, INPUT_DIM)
    starts = random_starts(20, 4, seed=11)
    rl2_output, _ = rl2.sequence(inputs, rl2.initial_state(4), starts)
    laplace_output, _ = laplace.sequence(inputs, laplace.initial_state(4), starts)
    assert torch.equal(laplace_output.mean, rl2_output.mean)
    # The same holds step by step, with the states carried by the caller.
    rl2_state, laplace_state = rl2.initial_state(4), laplace.initial_state(4)
    for t in range(20):
        rl2_step, rl2_state = rl2.step(inputs[t], rl2_state, starts[t])
        laplace_step, laplace_state = laplace.step(inputs[t], laplace_state, starts[t])
        torch.testing.assert_close(laplace_step.mean, rl2_step.mean, atol=0.0, rtol=0.0)


def test_markov_mean_is_the_episode_sum_of_rl2_latents():
    torch.manual_seed(12)
    rl2 = RL2Belief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT, embed_sizes=EMBED).double()
    markov = LaplaceBelief.from_rl2(rl2, variant="markov", window=2)
    assert next(markov.parameters()).dtype == torch.float64
    inputs = torch.randn(12, 3, INPUT_DIM, dtype=torch.float64)
    starts = random_starts(12, 3, seed=13)
    latents, _ = rl2.sequence(inputs, rl2.initial_state(3), starts)
    output, _ = markov.sequence(inputs, markov.initial_state(3), starts)
    expected, running = [], torch.zeros(3, LATENT, dtype=torch.float64)
    for t in range(12):
        running = torch.where(starts[t, :, None], 0.0, running) + latents.mean[t]
        expected.append(running)
    torch.testing.assert_close(output.mean, torch.stack(expected))


def test_from_rl2_rejects_architecture_arguments():
    rl2 = RL2Belief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT)
    with pytest.raises(TypeError, match="hidden_size"):
        LaplaceBelief.from_rl2(rl2, hidden_size=8)
    with pytest.raises(TypeError, match="RL2Belief"):
        LaplaceBelief.from_rl2(torch.nn.Linear(2, 2))


@pytest.mark.parametrize(("variant", "covariance"), [("sum_precision", "full"), ("markov", "diag")])
def test_long_rollout_stays_finite_and_positive_definite(variant, covariance):
    """10,000 float32 steps carried across sequence calls; row 0 resets every 60 steps, row 1 never."""
    torch.manual_seed(14)
    belief = LaplaceBelief(
        INPUT_DIM,
        hidden_size=8,
        latent_dim=4,
        embed_sizes=(8,),
        variant=variant,
        covariance=covariance,
        window=2,
    )
    chunk, total = 2000, 10_000
    generator = torch.Generator().manual_seed(15)
    state = belief.initial_state(2)
    lowest_eigenvalues, no_reset_traces = [], []
    with torch.no_grad():
        for begin in range(0, total, chunk):
            inputs = torch.randn(chunk, 2, INPUT_DIM, generator=generator)
            steps = torch.arange(begin, begin + chunk)
            starts = torch.stack([steps % 60 == 0, steps == 0], dim=1)
            output, state = belief.sequence(inputs, state, starts)
            assert torch.isfinite(state).all()
            for name in ("mean", "precision", "entropy", "kl_to_previous"):
                assert torch.isfinite(getattr(output, name)).all(), name
            if covariance == "full":
                assert torch.isfinite(output.precision_cholesky).all()
                precision = output.precision
            else:
                precision = torch.diag_embed(output.precision)
            eigenvalues = torch.linalg.eigvalsh(precision.double())
            lowest_eigenvalues.append(eigenvalues.amin())
            no_reset_traces.append(eigenvalues[:, 1].sum(-1))  # [chunk] traces of row 1
            assert (output.kl_to_previous > -1e-3).all()
    assert min(lowest_eigenvalues) > 0.5 * belief.damping
    # Without resets the summed precision never shrinks, and it grows by a lot over 10,000 steps.
    traces = torch.cat(no_reset_traces)
    assert (traces[1:] >= traces[:-1] * (1 - 1e-5)).all()
    assert traces[-1] > 20 * traces[0]


def test_gradients_flow_through_the_mean_only():
    belief = make_belief(dtype=torch.float64, variant="sum_precision", window=2)
    output, starts = sequence_output(belief)
    for name in ("precision", "precision_cholesky", "entropy"):
        assert not getattr(output, name).requires_grad, name
    assert output.mean.requires_grad and output.kl_to_previous.requires_grad
    # d KL(q_t || sg q_{t-1}) / d μ_t = Λ_{t-1} (μ_t - μ_{t-1}): nothing else in the KL carries gradient.
    (gradient,) = torch.autograd.grad(output.kl_to_previous.sum(), output.mean, retain_graph=True)
    previous_mean = torch.cat([torch.zeros_like(output.mean[:1]), output.mean[:-1]]).detach()
    previous_precision = torch.cat([torch.zeros_like(output.precision[:1]), output.precision[:-1]])
    prior = belief.prior_precision * torch.eye(LATENT, dtype=torch.float64)
    previous_mean = torch.where(starts[..., None], 0.0, previous_mean)
    previous_precision = torch.where(starts[..., None, None], prior, previous_precision)
    expected = (previous_precision @ (output.mean.detach() - previous_mean)[..., None])[..., 0]
    torch.testing.assert_close(gradient, expected)
    # Samples are differentiable through the mean: d Σ z / d b_out = n · T · B for every latent unit.
    belief.zero_grad()
    samples = belief.sample(output, 5, generator=torch.Generator().manual_seed(16))
    samples.sum().backward()
    steps, batch = starts.shape
    torch.testing.assert_close(
        belief.latent_head.bias.grad, torch.full((LATENT,), 5.0 * steps * batch, dtype=torch.float64)
    )
    assert all(parameter.grad is not None for parameter in belief.parameters())


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"damping": float("inf")}, "damping"),
        ({"damping": 1e300}, "damping"),
        ({"damping": float("nan")}, "damping"),
        ({"negative_slope": float("nan")}, "negative_slope"),
        ({"beta": float("inf")}, "beta"),
        ({"jitter": float("nan")}, "jitter"),
    ],
)
def test_laplace_policy_rejects_non_finite_and_out_of_range_hyper_parameters(kwargs, argument):
    """These used to build, then gave NaN entropies and torch's "probability tensor contains inf/nan"."""
    small = {"hidden_size": 8, "latent_dim": 2, "embed_sizes": (), "window": 1}
    with pytest.raises(ValueError, match=argument):
        RecurrentPPO(LaplacePolicy, gym.make("BayesGrid-v0"), policy_kwargs={**small, **kwargs}, device="cpu")


def test_laplace_aux_loss_rows_equals_the_loss_of_the_rows():
    belief = LaplaceBelief(5, hidden_size=8, latent_dim=3, embed_sizes=(), window=2)
    output, _ = belief.sequence(torch.randn(4, 3, 5), belief.initial_state(3), torch.zeros(4, 3))
    flat = output.apply(lambda value: value.flatten(0, 1))
    mask = torch.arange(12) % 3 != 1
    expected = belief.aux_loss(flat.apply(lambda value: value[mask]))
    torch.testing.assert_close(belief.aux_loss_rows(flat, mask), expected)


@pytest.mark.parametrize(
    ("rnn", "variant", "covariance", "window"),
    [
        ("lstm", "sum_precision", "full", 1),
        ("lstm", "stationary", "full", 3),
        ("lstm", "stationary", "full", 5),
        ("gru", "markov", "full", 1),
        ("lstm", "sum_precision", "diag", 2),
    ],
)
def test_acting_sequence_is_sequence_without_the_statistics(rnn, variant, covariance, window):
    """The lean acting step gives the mean, precision, factor and next state of ``sequence`` bit for
    bit, and ``complete()`` its whole output (entropy, KL, previous precision, KL offset)."""
    belief = make_belief(dtype=torch.float32, rnn=rnn, variant=variant, covariance=covariance, window=window)
    steps, batch = 8, 4
    inputs = torch.randn(steps, batch, INPUT_DIM, generator=torch.Generator().manual_seed(6))
    starts = random_starts(steps, batch, seed=7)
    state = belief.initial_state(batch)
    for step in range(steps):
        step_inputs, step_starts = inputs[step : step + 1], starts[step : step + 1]
        with torch.no_grad():
            expected, expected_state = belief.sequence(step_inputs, state, step_starts)
        for cholesky in (True, False):
            partial, next_state, complete = belief.acting_sequence(
                step_inputs, state, step_starts, cholesky=cholesky
            )
            torch.testing.assert_close(next_state, expected_state, rtol=0.0, atol=0.0)
            torch.testing.assert_close(partial.mean, expected.mean, rtol=0.0, atol=0.0)
            torch.testing.assert_close(partial.precision, expected.precision, rtol=0.0, atol=0.0)
            assert partial.entropy is None and partial.kl_to_previous is None
            if cholesky and covariance == "full":
                torch.testing.assert_close(
                    partial.precision_cholesky, expected.precision_cholesky, rtol=0.0, atol=0.0
                )
            else:
                assert partial.precision_cholesky is None
            completed = complete()
            for name in ("mean", "precision", "precision_cholesky", "entropy", "kl_to_previous"):
                got, want = getattr(completed, name), getattr(expected, name)
                if want is None:
                    assert got is None, name
                else:
                    torch.testing.assert_close(got, want, rtol=0.0, atol=0.0, msg=name)
            for name in ("previous_precision", "kl_offset"):
                torch.testing.assert_close(
                    getattr(completed, name), getattr(expected, name), rtol=0.0, atol=0.0
                )
        state = expected_state


@pytest.mark.parametrize(("rnn", "window"), [("lstm", 1), ("lstm", 3), ("gru", 1), ("gru", 2)])
def test_few_rows_full_precision_equals_the_blocked_path(rnn, window):
    """An acting step's few rows (the transposed-Jacobian path) and many rows at once (the blocked
    path) give the same full precisions, up to rounding."""
    belief = make_belief(rnn=rnn, covariance="full", window=window, variant="sum_precision")
    steps, batch = 7, 5  # 35 rows at once; 5 rows a step
    inputs = torch.randn(
        steps, batch, INPUT_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(8)
    )
    starts = random_starts(steps, batch, seed=9)
    whole, _ = belief.sequence(inputs, belief.initial_state(batch), starts)
    state, precisions = belief.initial_state(batch), []
    for step in range(steps):
        output, state = belief.sequence(inputs[step : step + 1], state, starts[step : step + 1])
        precisions.append(output.precision[0])
    torch.testing.assert_close(torch.stack(precisions), whole.precision, atol=1e-12, rtol=1e-12)


def test_segmented_cumsum_of_one_step():
    generator = torch.Generator().manual_seed(10)
    values = torch.randn(1, 4, 2, 3, generator=generator)
    carry = torch.randn(4, 2, 3, generator=generator)
    starts = torch.tensor([[True, False, True, False]])
    expected = torch.where(starts[0].view(4, 1, 1), values[0], values[0] + carry)
    torch.testing.assert_close(segmented_cumsum(values, starts, carry)[0], expected, rtol=0.0, atol=0.0)


@pytest.mark.parametrize("window", [2, 5])
def test_weight_caches_follow_updates_that_keep_the_version(window):
    """The few-row paths keep products of the weights; an update that does not bump the parameters'
    version counter (e.g. through ``.data``) must still invalidate them."""
    belief = make_belief(covariance="full", window=window)
    inputs = torch.randn(1, 3, INPUT_DIM, dtype=torch.float64, generator=torch.Generator().manual_seed(11))
    starts = torch.ones(1, 3, dtype=torch.bool)
    belief.sequence(inputs, belief.initial_state(3), starts)  # fills the caches
    with torch.no_grad():
        belief.cell.weight_hh.data.mul_(1.3)
        belief.latent_head.weight.data.mul_(0.7)
    got, _ = belief.sequence(inputs, belief.initial_state(3), starts)
    fresh = make_belief(covariance="full", window=window)
    fresh.load_state_dict(belief.state_dict())
    expected, _ = fresh.sequence(inputs, fresh.initial_state(3), starts)
    torch.testing.assert_close(got.precision, expected.precision, rtol=0.0, atol=0.0)
