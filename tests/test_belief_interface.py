"""The shared Belief interface: sequence == looped step (resets included), shapes, dtype/device, resets,
validation. Both RL² and Laplace-VRNN beliefs."""

from __future__ import annotations

import itertools

import pytest
import torch

from bayes_agents.beliefs import COVARIANCES, VARIANTS, Belief, BeliefOutput, LaplaceBelief, RL2Belief
from bayes_agents.beliefs import rl2 as rl2_module
from bayes_agents.beliefs.base import gaussian_offsets, gaussian_sample

INPUT_DIM, HIDDEN, LATENT, EMBED = 5, 12, 4, (10,)
FIELDS = ("mean", "precision", "precision_cholesky", "entropy", "kl_to_previous")

CONFIGS = [("rl2", {"rnn": rnn}) for rnn in ("lstm", "gru")] + [
    ("laplace", {"rnn": rnn, "variant": variant, "covariance": covariance, "window": window})
    for rnn, variant, covariance, window in itertools.product(("lstm", "gru"), VARIANTS, COVARIANCES, (1, 3))
]
DEVICES = ["cpu"] + (["cuda"] if torch.cuda.is_available() else [])


def make_belief(kind: str, options: dict) -> Belief:
    torch.manual_seed(0)
    if kind == "rl2":
        return RL2Belief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT, embed_sizes=EMBED, **options)
    return LaplaceBelief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT, embed_sizes=EMBED, **options)


def config_id(config) -> str:
    kind, options = config
    return "-".join([kind, *(str(value) for value in options.values())])


def random_episode_starts(steps: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    starts = torch.rand(steps, batch, generator=generator) < 0.25
    starts[0, 0] = True  # a reset on the first step
    starts[1:, 1] = False  # a row without resets (carries the state in)
    return starts


def assert_outputs_close(actual: BeliefOutput, expected: BeliefOutput, atol: float = 1e-5) -> None:
    for name in FIELDS:
        actual_value, expected_value = getattr(actual, name), getattr(expected, name)
        assert (actual_value is None) == (expected_value is None), name
        if actual_value is not None:
            torch.testing.assert_close(actual_value, expected_value, atol=atol, rtol=1e-5, msg=name)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_sequence_equals_looped_step(config):
    belief = make_belief(*config)
    generator = torch.Generator().manual_seed(1)
    steps, batch = 9, 3
    with torch.no_grad():
        # Start from a state reached by a warm-up sequence, so the carried state matters.
        warmup = torch.randn(5, batch, INPUT_DIM, generator=generator)
        _, state = belief.sequence(
            warmup, belief.initial_state(batch), torch.zeros(5, batch, dtype=torch.bool)
        )
        inputs = torch.randn(steps, batch, INPUT_DIM, generator=generator)
        starts = random_episode_starts(steps, batch, generator)
        sequence_output, sequence_state = belief.sequence(inputs, state, starts)
        step_outputs, step_state = [], state
        for t in range(steps):
            step_output, step_state = belief.step(inputs[t], step_state, starts[t])
            step_outputs.append(step_output)
    looped = BeliefOutput(
        **{
            name: None
            if getattr(step_outputs[0], name) is None
            else torch.stack([getattr(output, name) for output in step_outputs])
            for name in FIELDS
        }
    )
    assert_outputs_close(sequence_output, looped)
    torch.testing.assert_close(sequence_state, step_state, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_reset_restores_the_prior(config):
    """A reset at step r makes steps r.. identical to a fresh run from the all-zero initial state."""
    belief = make_belief(*config)
    generator = torch.Generator().manual_seed(2)
    steps, batch, reset_at = 8, 2, 4
    inputs = torch.randn(steps, batch, INPUT_DIM, generator=generator)
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[reset_at] = True
    with torch.no_grad():
        initial = belief.initial_state(batch)
        assert torch.equal(initial, torch.zeros(batch, belief.state_size))
        full_output, _ = belief.sequence(inputs, initial + 0.3, starts)  # any state before the reset
        fresh_output, _ = belief.sequence(inputs[reset_at:], initial, starts[reset_at:])
    assert_outputs_close(full_output.apply(lambda value: value[reset_at:]), fresh_output)


@pytest.mark.parametrize("config", CONFIGS, ids=config_id)
def test_shapes(config):
    kind, options = config
    belief = make_belief(kind, options)
    steps, batch = 4, 3
    state = belief.initial_state(batch)
    assert state.shape == (batch, belief.state_size)
    output, next_state = belief.sequence(
        torch.randn(steps, batch, INPUT_DIM), state, torch.zeros(steps, batch, dtype=torch.bool)
    )
    step_output, step_state = belief.step(torch.randn(batch, INPUT_DIM), state, torch.ones(batch))
    assert next_state.shape == step_state.shape == (batch, belief.state_size)
    for leading, out in (((steps, batch), output), ((batch,), step_output)):
        assert out.mean.shape == (*leading, LATENT)
        samples = belief.sample(out, 7)
        assert samples.shape == (7, *leading, LATENT)
        assert belief.aux_loss(out).shape == ()
        if kind == "rl2":
            assert not out.is_distribution and out.entropy is None and out.kl_to_previous is None
            assert torch.equal(samples, out.mean.expand(7, *out.mean.shape))
            assert belief.aux_loss(out).item() == 0.0
            continue
        full = options["covariance"] == "full"
        assert out.precision.shape == ((*leading, LATENT, LATENT) if full else (*leading, LATENT))
        assert (out.precision_cholesky is not None) == full
        assert out.entropy.shape == out.kl_to_previous.shape == leading
    if kind == "laplace":
        expected_size = (2 if options["rnn"] == "lstm" else 1) * HIDDEN
        expected_size += (options["window"] - 1) * INPUT_DIM + 1 + LATENT
        expected_size += LATENT * LATENT if options["covariance"] == "full" else LATENT
        assert belief.state_size == expected_size
    else:
        assert belief.state_size == (2 if options["rnn"] == "lstm" else 1) * HIDDEN


@pytest.mark.parametrize("device", DEVICES)
@pytest.mark.parametrize("kind", ["rl2", "laplace"])
def test_dtype_and_device_follow_the_module(kind, device):
    options = {"rnn": "lstm"} if kind == "rl2" else {"window": 2, "variant": "sum_precision"}
    belief = make_belief(kind, options).to(device=device, dtype=torch.float64)
    state = belief.initial_state(2)
    assert state.dtype == torch.float64 and state.device.type == device
    # float32 inputs and SB3-style float episode starts are accepted and cast to the module's dtype.
    inputs = torch.randn(3, 2, INPUT_DIM, device=device)
    float_starts = torch.tensor([[1.0, 0.0], [0.0, 1.0], [0.0, 0.0]], device=device)
    output, next_state = belief.sequence(inputs, state, float_starts)
    bool_output, _ = belief.sequence(inputs, state, float_starts.bool())
    assert_outputs_close(output, bool_output, atol=0.0)
    assert next_state.dtype == torch.float64 and next_state.device.type == device
    for name in FIELDS:
        value = getattr(output, name)
        if value is not None:
            assert value.dtype == torch.float64 and value.device.type == device, name
    assert belief.sample(output, 2).dtype == torch.float64


def test_rl2_recurrence_matches_torch_cells():
    """The hand-written gate equations (inputs projected before the time loop) equal nn.LSTMCell/GRUCell."""
    for rnn in ("lstm", "gru"):
        belief = make_belief("rl2", {"rnn": rnn}).double()
        inputs = torch.randn(6, 3, INPUT_DIM, dtype=torch.float64)
        starts = torch.zeros(6, 3, dtype=torch.bool)
        starts[3, 1] = True
        output, _ = belief.sequence(inputs, belief.initial_state(3), starts)
        hidden = torch.zeros(3, HIDDEN, dtype=torch.float64)
        cell = torch.zeros_like(hidden)
        expected = []
        for t in range(6):
            keep = (~starts[t]).double().unsqueeze(-1)
            embedded = belief.embedding(inputs[t])
            if rnn == "lstm":
                hidden, cell = belief.cell(embedded, (hidden * keep, cell * keep))
            else:
                hidden = belief.cell(embedded, hidden * keep)
            expected.append(belief.latent_head(hidden))
        torch.testing.assert_close(output.mean, torch.stack(expected), atol=1e-12, rtol=1e-12)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"window": 0}, "window"),
        ({"variant": "kalman"}, "variant"),
        ({"covariance": "low_rank"}, "covariance"),
        ({"rnn": "transformer"}, "rnn"),
        ({"damping": 0.0}, "damping"),
        ({"damping": -1.0}, "damping"),
        ({"damping": float("nan")}, "damping"),
        ({"damping": float("inf")}, "damping"),
        ({"damping": 1e300}, "damping"),
        ({"jitter": float("inf")}, "jitter"),
        ({"beta": float("nan")}, "beta"),
        ({"negative_slope": float("nan")}, "negative_slope"),
        ({"negative_slope": -0.5}, "negative_slope"),
        ({"beta": -0.1}, "beta"),
        ({"latent_dim": 0}, "latent_dim"),
        ({"hidden_size": 0}, "hidden_size"),
        ({"input_dim": 0}, "input_dim"),
        ({"embed_sizes": (8, 0)}, "embed_sizes"),
    ],
)
def test_laplace_validation(kwargs, argument):
    arguments = {"input_dim": INPUT_DIM, "hidden_size": HIDDEN, "latent_dim": LATENT, **kwargs}
    with pytest.raises(ValueError, match=argument):
        LaplaceBelief(**arguments)


@pytest.mark.parametrize(
    ("kwargs", "argument"),
    [
        ({"window": 2.5}, "window"),
        ({"hidden_size": "16"}, "hidden_size"),
        ({"damping": "1"}, "damping"),
        ({"damping": 1 + 0j}, "damping"),
        ({"beta": True}, "beta"),
        ({"negative_slope": None}, "negative_slope"),
        ({"variant": 3}, "variant"),
        ({"embed_sizes": 8}, "embed_sizes"),
    ],
)
def test_laplace_validation_of_types(kwargs, argument):
    """One convention for every belief: TypeError for a wrong type, ValueError for a wrong value."""
    arguments = {"input_dim": INPUT_DIM, "hidden_size": HIDDEN, "latent_dim": LATENT, **kwargs}
    with pytest.raises(TypeError, match=argument):
        LaplaceBelief(**arguments)


def test_validation_messages_name_the_argument_and_the_range():
    with pytest.raises(ValueError, match=r"damping must be a finite real number in \(0, 1e6\], got inf"):
        LaplaceBelief(INPUT_DIM, damping=float("inf"))
    with pytest.raises(ValueError, match=r"beta must be a finite real number in \[0, 1e6\], got -1.0"):
        LaplaceBelief(INPUT_DIM, beta=-1.0)
    with pytest.raises(TypeError, match=r"latent_dim must be an int >= 1, got 2.0"):
        RL2Belief(INPUT_DIM, latent_dim=2.0)


def test_validation_messages_list_the_allowed_values():
    with pytest.raises(ValueError, match=r"'stationary', 'sum_precision', 'markov'"):
        LaplaceBelief(INPUT_DIM, variant="sum")
    with pytest.raises(ValueError, match=r"'full', 'diag'"):
        LaplaceBelief(INPUT_DIM, covariance="dense")
    with pytest.raises(ValueError, match=r"'lstm', 'gru'"):
        RL2Belief(INPUT_DIM, rnn="rnn")
    with pytest.raises(ValueError, match=r"latent_dim must be an int >= 1"):
        RL2Belief(INPUT_DIM, latent_dim=0)


@pytest.mark.parametrize("kind", ["rl2", "laplace"])
def test_call_validation(kind):
    belief = make_belief(kind, {"rnn": "gru"} if kind == "rl2" else {"window": 2})
    state = belief.initial_state(2)
    starts = torch.zeros(3, 2)
    with pytest.raises(ValueError, match="inputs"):
        belief.sequence(torch.randn(3, 2, INPUT_DIM + 1), state, starts)
    with pytest.raises(ValueError, match="episode_starts"):
        belief.sequence(torch.randn(3, 2, INPUT_DIM), state, torch.zeros(3, 3))
    with pytest.raises(ValueError, match="state"):
        belief.sequence(torch.randn(3, 2, INPUT_DIM), state[:, 1:], starts)
    with pytest.raises(ValueError, match="step expects"):
        belief.step(torch.randn(3, 2, INPUT_DIM), state, starts)
    with pytest.raises(ValueError, match="batch_size"):
        belief.initial_state(0)
    output, _ = belief.sequence(torch.randn(3, 2, INPUT_DIM), state, starts)
    with pytest.raises(ValueError, match="n_samples"):
        belief.sample(output, 0)


@pytest.mark.parametrize(
    ("rnn", "batch", "kernel"),
    [
        ("lstm", 3, "_VF.lstm"),
        ("gru", 3, "GRUSequence"),  # with gradients, a small batch
        ("gru", rl2_module._GRU_KERNEL_BATCH, "_VF.gru"),
    ],
)
def test_fused_recurrence_equals_stepped_cell(rnn, batch, kernel, monkeypatch):
    """Without episode starts inside the sequence the fused RNN kernel runs (for the GRU torch's or
    GRUSequence by batch size); it must give the stepped cell's hidden and cell states (and
    gradients) exactly."""
    calls = []
    if kernel == "GRUSequence":
        monkeypatch.setattr(rl2_module.GRUSequence, "apply", _counted(rl2_module.GRUSequence.apply, calls))
    else:
        name = kernel.split(".")[1]
        monkeypatch.setattr(rl2_module.torch._VF, name, _counted(getattr(rl2_module.torch._VF, name), calls))
    torch.manual_seed(0)
    belief = RL2Belief(5, hidden_size=12, latent_dim=4, rnn=rnn, embed_sizes=(8,)).double()
    embedded = torch.randn(9, batch, 8, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(batch, 12, dtype=torch.float64)
    cell = torch.randn(batch, 12, dtype=torch.float64) if rnn == "lstm" else None
    starts = torch.zeros(9, batch, dtype=torch.bool)
    starts[0, 1] = True  # a reset at the first step keeps the fused path
    fused = belief.recurrence(embedded, hidden, cell, starts, need_cells=True)
    assert len(calls) == 1
    if rnn == "gru":  # without gradients torch's kernel, at any batch size
        with torch.no_grad():
            untracked = belief.recurrence(embedded[:, :3], hidden[:3], None, starts[:, :3], need_cells=True)
        torch.testing.assert_close(untracked[0], fused[0][:, :3].detach())
    stepped = belief._stepped_recurrence(belief.gates_from_embedded(embedded), hidden, cell, starts)
    for a, b in zip(fused, stepped, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b)
    (grad_fused,) = torch.autograd.grad(fused[0].square().sum(), embedded)
    (grad_stepped,) = torch.autograd.grad(stepped[0].square().sum(), embedded)
    torch.testing.assert_close(grad_fused, grad_stepped)


def _counted(function, calls: list):
    def counted(*args, **kwargs):
        calls.append(function)
        return function(*args, **kwargs)

    return counted


@pytest.mark.parametrize("rnn", ["lstm", "gru"])
def test_single_step_recurrence_equals_stepped_cell(rnn):
    """A one-step sequence (acting) runs torch's cell kernel; it gives the stepped cell's outputs, final
    carry and gradients, with the reset at that step applied."""
    torch.manual_seed(1)
    belief = RL2Belief(5, hidden_size=12, latent_dim=4, rnn=rnn, embed_sizes=(8,)).double()
    embedded = torch.randn(1, 3, 8, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(3, 12, dtype=torch.float64)
    cell = torch.randn(3, 12, dtype=torch.float64) if rnn == "lstm" else None
    starts = torch.tensor([[False, True, False]])
    single = belief.recurrence(embedded, hidden, cell, starts, need_cells=True)
    stepped = belief._stepped_recurrence(belief.gates_from_embedded(embedded), hidden, cell, starts)
    for a, b in zip(single, stepped, strict=True):
        if a is None:
            assert b is None
        else:
            torch.testing.assert_close(a, b)
    (grad_single,) = torch.autograd.grad(single[0].square().sum(), embedded)
    (grad_stepped,) = torch.autograd.grad(stepped[0].square().sum(), embedded)
    torch.testing.assert_close(grad_single, grad_stepped)


def test_gru_sequence_equals_torch_gru_and_its_gradients():
    """GRUSequence (the GRU's fused path) against torch's own GRU kernel on the same weights: outputs
    and the gradients of inputs, initial state and all four weights; and torch's gradcheck."""
    from bayes_agents.beliefs.rl2 import GRUSequence

    torch.manual_seed(2)
    gru = torch.nn.GRU(6, 10).double()
    inputs = torch.randn(13, 4, 6, dtype=torch.float64, requires_grad=True)
    hidden = torch.randn(4, 10, dtype=torch.float64, requires_grad=True)
    expected, _ = gru(inputs, hidden[None])
    gates = torch.nn.functional.linear(inputs, gru.weight_ih_l0, gru.bias_ih_l0)
    got = GRUSequence.apply(gates, hidden, gru.weight_hh_l0, gru.bias_hh_l0)
    torch.testing.assert_close(got, expected, rtol=1e-12, atol=1e-12)
    weights = [inputs, hidden, *gru.parameters()]
    upstream = torch.randn_like(expected)
    for a, b in zip(
        torch.autograd.grad((got * upstream).sum(), weights),
        torch.autograd.grad((expected * upstream).sum(), weights),
        strict=True,
    ):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
    small = (
        torch.randn(5, 2, 9, dtype=torch.float64, requires_grad=True),
        torch.randn(2, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(9, 3, dtype=torch.float64, requires_grad=True),
        torch.randn(9, dtype=torch.float64, requires_grad=True),
    )
    assert torch.autograd.gradcheck(GRUSequence.apply, small)


@pytest.mark.parametrize("kind", ["diag", "full", "blocks"])
def test_gaussian_sample_is_mean_plus_the_inverse_transposed_factor_times_noise(kind):
    """The one Gaussian sampler of all beliefs against the explicit ``μ + L^{-T} ε`` (``Λ = L Lᵀ``)."""
    generator = torch.Generator().manual_seed(0)
    batch, latent, n_samples = 3, 6, 4
    mean = torch.randn(batch, latent, generator=generator, dtype=torch.float64)
    noise = torch.randn(n_samples, batch, latent, generator=generator, dtype=torch.float64)
    if kind == "diag":
        precision = torch.rand(batch, latent, generator=generator, dtype=torch.float64) + 0.5
        cholesky, dense_cholesky = None, torch.diag_embed(precision.sqrt())
    else:
        size = latent if kind == "full" else 3
        leading = (batch,) if kind == "full" else (batch, latent // 3)
        factor = torch.randn(*leading, size, size, generator=generator, dtype=torch.float64)
        precision = factor @ factor.transpose(-1, -2) + torch.eye(size, dtype=torch.float64)
        cholesky = torch.linalg.cholesky(precision)
        if kind == "full":
            dense_cholesky = cholesky
        else:  # [B, K, d, d] blocks of a block-diagonal factor
            dense_cholesky = torch.stack([torch.block_diag(*blocks) for blocks in cholesky])
    expected = mean + (torch.linalg.inv(dense_cholesky).transpose(-1, -2) @ noise.unsqueeze(-1)).squeeze(-1)
    samples = gaussian_sample(mean, n_samples, precision, cholesky, noise=noise)
    torch.testing.assert_close(samples, expected)
    torch.testing.assert_close(mean + gaussian_offsets(noise, precision, cholesky), expected)
    drawn = gaussian_sample(mean, n_samples, precision, cholesky, generator=torch.Generator().manual_seed(1))
    assert drawn.shape == (n_samples, batch, latent)
    with pytest.raises(ValueError, match="noise"):
        gaussian_sample(mean, n_samples + 1, precision, cholesky, noise=noise)
    with pytest.raises(TypeError, match="n_samples"):
        gaussian_sample(mean, 2.0, precision, cholesky)


def test_optional_hooks_are_declared_on_the_base():
    """after_policy_update, add_trials, update_trial_model and reward_probabilities exist on every
    belief; the base versions do nothing (callers use them without feature tests)."""
    belief = RL2Belief(INPUT_DIM, hidden_size=HIDDEN, latent_dim=LATENT)
    assert not belief.trains_on_trials
    assert belief.after_policy_update(object()) is None
    assert belief.add_trials(torch.zeros(2, 3, INPUT_DIM), torch.ones(2, 3)) == 0
    assert belief.update_trial_model() == {}
    assert belief.reward_probabilities(torch.zeros(LATENT)) is None
    output, _ = belief.sequence(torch.randn(3, 2, INPUT_DIM), belief.initial_state(2), torch.zeros(3, 2))
    mask = torch.tensor([True, False])
    flat = output.apply(lambda value: value[0])
    expected = belief.aux_loss(flat.apply(lambda value: value[mask]))
    torch.testing.assert_close(belief.aux_loss_rows(flat, mask), expected)


def test_output_cat_keeps_the_fields_every_part_has() -> None:
    """Concatenating a whole posterior with a policy-input-only output (the extractor's env rows and
    replay rows) keeps the shared fields and leaves the others None."""
    whole = BeliefOutput(mean=torch.zeros(2, 3), precision=torch.ones(2, 3), entropy=torch.zeros(2))
    means_only = BeliefOutput(mean=torch.ones(1, 3))
    joined = BeliefOutput.cat([whole, means_only])
    torch.testing.assert_close(joined.mean, torch.cat([whole.mean, means_only.mean]))
    assert joined.precision is None and joined.entropy is None
    both = BeliefOutput.cat([whole, whole])
    torch.testing.assert_close(both.precision, torch.ones(4, 3))
