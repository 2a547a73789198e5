"""Belief extractors: the recurrent policies' beliefs recomputed from TrialHistoryWrapper observations,
under stock SB3 algorithms, with the auxiliary-loss callback."""

from __future__ import annotations

import copy
from pathlib import Path

import gymnasium as gym
import numpy as np
import pytest
import torch
from sb3_contrib import RecurrentPPO
from stable_baselines3 import A2C, PPO, SAC, TD3
from stable_baselines3.common.env_util import make_vec_env

import bayes_agents.extractors as extractors_module
import bayes_agents.policies as policies
import bayes_envs  # noqa: F401  (registers the envs)
from bayes_agents.callbacks import BeliefAuxLossCallback, belief_extractors
from bayes_agents.extractors import (
    EXTRACTORS,
    GLiBRLExtractor,
    HistoryPredictor,
    LaplaceExtractor,
    RL2Extractor,
    VariBADExtractor,
)
from bayes_envs.core import RL2_KEYS
from bayes_envs.evaluation import evaluate
from bayes_envs.wrappers import TrialHistoryWrapper

SMALL = {"hidden_size": 16, "latent_dim": 4, "embed_sizes": (16,)}
#: Small belief keywords per method, on BayesGrid-v0.
GRID_KWARGS = {
    "rl2": SMALL,
    "laplace": {**SMALL, "window": 2, "variant": "sum_precision"},
    "vrnn": SMALL,
    "varibad": {"hidden_size": 16, "latent_dim": 3, "reward_decoder": "per_state", "grid_size": 5},
    "glibrl": {"basis_dim": 4, "basis_hidden_sizes": (8,)},
}
POLICY_NAMES = {
    "rl2": "RL2Policy",
    "laplace": "LaplacePolicy",
    "vrnn": "VRNNPolicy",
    "varibad": "VariBADPolicy",
    "glibrl": "GLiBRLPolicy",
}


def torch_obs(observations: list[dict[str, np.ndarray]]) -> dict[str, torch.Tensor]:
    return {key: torch.as_tensor(np.stack([obs[key] for obs in observations])) for key in observations[0]}


def grid_trial(steps: int, window: int | None, seed: int = 2):
    """The raw RL² observations and the wrapped observations of one grid trial under random actions."""
    raw, wrapped = gym.make("BayesGrid-v0"), TrialHistoryWrapper(gym.make("BayesGrid-v0"), window=window)
    raw_obs, wrapped_obs = [raw.reset(seed=seed)[0]], [wrapped.reset(seed=seed)[0]]
    rng = np.random.default_rng(seed)
    for _ in range(steps - 1):
        action = int(rng.integers(5))
        raw_obs.append(raw.step(action)[0])
        wrapped_obs.append(wrapped.step(action)[0])
    return raw_obs, wrapped_obs


def brute_force_features(belief, raw_obs: list[dict[str, np.ndarray]], window: int) -> torch.Tensor:
    """Belief features at every step from one ``sequence`` call per step over its last ``window`` inputs."""
    inputs = torch.cat([torch_obs(raw_obs)[key].flatten(1) for key in RL2_KEYS], dim=1)
    features = []
    for t in range(len(raw_obs)):
        recent = inputs[max(0, t - window + 1) : t + 1, None]
        starts = torch.zeros(recent.shape[:2], dtype=torch.bool)
        starts[0] = True
        with torch.no_grad():
            output, _ = belief.sequence(recent, belief.initial_state(1), starts)
        features.append(belief.policy_input(output)[-1, 0])
    return torch.stack(features)


@pytest.mark.parametrize("method", sorted(EXTRACTORS))
def test_features_shape_dtype_and_device(method) -> None:
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"), window=20)
    extractor = EXTRACTORS[method](env.observation_space, **GRID_KWARGS[method])
    _, observations = grid_trial(25, window=20)
    with torch.no_grad():
        features = extractor(torch_obs(observations))
    assert extractor.features_dim == 2 + extractor.belief.policy_input_dim
    assert features.shape == (25, extractor.features_dim)
    assert features.dtype == torch.float32 and features.device.type == "cpu"
    assert torch.isfinite(features).all()
    np.testing.assert_array_equal(features[:, :2].numpy(), np.stack([obs["obs"] for obs in observations]))
    if torch.cuda.is_available():
        extractor = extractor.to("cuda")
        cuda_features = extractor({key: value.cuda() for key, value in torch_obs(observations).items()})
        assert cuda_features.device.type == "cuda"
        torch.testing.assert_close(cuda_features.cpu(), features, rtol=1e-4, atol=1e-5)


@pytest.mark.parametrize("method", sorted(EXTRACTORS))
@pytest.mark.parametrize("window", [60, 7])
def test_belief_equals_sequence_over_the_window(method, window) -> None:
    """Whole trial (exact recurrent belief) and a truncated window (the belief of the last K steps);
    40 steps cross two inner-episode boundaries; all steps go through the extractor as one batch of
    histories of different lengths, so padding must not leak into any row."""
    torch.manual_seed(0)
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"), window=window)
    extractor = EXTRACTORS[method](env.observation_space, **GRID_KWARGS[method])
    raw_obs, observations = grid_trial(40, window=window)
    batch = torch_obs(observations)
    for key in batch:  # garbage in the padding must be masked out
        if key.startswith("history_") and key != "history_mask":
            padding = (batch["history_mask"] == 0).reshape(*batch["history_mask"].shape, 1)
            batch[key] = torch.where(padding, torch.full_like(batch[key], 7.0), batch[key])
    with torch.no_grad():
        features = extractor(batch)[:, 2:]
    expected = brute_force_features(extractor.belief, raw_obs, window)
    torch.testing.assert_close(features, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", sorted(EXTRACTORS))
def test_belief_equals_the_recurrent_policy_belief(method) -> None:
    """The extractor given the recurrent policy's belief reproduces it step by step (RecurrentPPO's
    predict with its recurrent state) on a trial prefix that crosses inner-episode boundaries."""
    policy_class = getattr(policies, POLICY_NAMES[method], None)
    if policy_class is None:
        pytest.skip(f"bayes_agents.policies has no {POLICY_NAMES[method]} yet")
    model = RecurrentPPO(
        policy_class, gym.make("BayesGrid-v0"), policy_kwargs=GRID_KWARGS[method], n_steps=16, seed=0
    )
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"))
    extractor = EXTRACTORS[method](env.observation_space, belief=model.policy.belief)
    raw, wrapped = gym.make("BayesGrid-v0"), env
    raw_obs, obs = raw.reset(seed=4)[0], wrapped.reset(seed=4)[0]
    state, start = None, np.array([True])
    for step in range(40):
        action, state = model.predict(raw_obs, state=state, episode_start=start)
        expected = model.policy.belief.policy_input(model.policy.last_belief_output)
        with torch.no_grad():
            features = extractor(torch_obs([obs]))
        torch.testing.assert_close(features[:, 2:], expected, rtol=1e-5, atol=1e-6, msg=f"step {step}")
        raw_obs, obs = raw.step(action)[0], wrapped.step(action)[0]
        start = np.array([False])


def _reference_features(extractor, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """The features from the full pass over each row's history (:meth:`current_belief`)."""
    with torch.no_grad():
        belief = extractor.belief.policy_input(extractor.current_belief(batch))
    return torch.cat([batch["obs"].flatten(1), belief], dim=1)


@pytest.mark.parametrize("method", sorted(EXTRACTORS))
@pytest.mark.parametrize("window", [60, 7])
def test_acting_continues_each_row_by_one_step_and_equals_the_full_pass(method, window, monkeypatch) -> None:
    """Without gradients, rows whose history grew by one entry take one recurrent step from the kept
    state: over 70 steps of 3 envs (a trial boundary at 60) every call is one step for the whole-trial
    window, and the windowed rows recompute once the window slides; features equal the full pass.
    A change of a belief weight (written through ``.data``, as SB3's Polyak update does) forces a
    full pass."""
    torch.manual_seed(0)
    venv = make_vec_env(
        lambda: TrialHistoryWrapper(gym.make("BayesGrid-v0"), window=window), n_envs=3, seed=1
    )
    extractor = EXTRACTORS[method](venv.observation_space, **GRID_KWARGS[method])
    lengths_run: list[int] = []
    sequence = extractor.belief.sequence
    monkeypatch.setattr(
        extractor.belief,
        "sequence",
        lambda inputs, *rest: lengths_run.append(inputs.shape[0]) or sequence(inputs, *rest),
    )
    rng = np.random.default_rng(0)
    observations = venv.reset()
    for step in range(70):
        batch = {key: torch.as_tensor(value) for key, value in observations.items()}
        if step == 65:
            with torch.no_grad():
                next(extractor.belief.parameters()).data.add_(0.05)
        lengths_run.clear()
        with torch.no_grad():
            features = extractor(batch)
        if window == 60 and step != 65:
            assert lengths_run == [1], (step, lengths_run)
        elif step == 65 or (window == 7 and step % 60 >= 7):
            assert max(lengths_run) > 1, (step, lengths_run)
        lengths_run.clear()
        torch.testing.assert_close(features, _reference_features(extractor, batch), rtol=1e-5, atol=1e-5)
        observations, *_ = venv.step(rng.integers(5, size=3))


@pytest.mark.parametrize("method", sorted(EXTRACTORS))
def test_acting_mixes_continued_rows_and_new_trials_in_one_step(method, monkeypatch) -> None:
    """Envs out of phase: in one call a row continues its trial while another starts one; the batch
    still takes a single one-step pass, and the features equal the full pass."""
    torch.manual_seed(0)
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"))
    extractor = EXTRACTORS[method](env.observation_space, **GRID_KWARGS[method])
    _, first_trial = grid_trial(12, window=None, seed=2)
    _, second_trial = grid_trial(12, window=None, seed=3)
    # Row 0 continues the first trial from its step 4 on; row 1 starts the second trial at call 3.
    rows = [first_trial[3:9], [*first_trial[:3], *second_trial[:3]]]
    lengths_run: list[int] = []
    sequence = extractor.belief.sequence
    monkeypatch.setattr(
        extractor.belief,
        "sequence",
        lambda inputs, *rest: lengths_run.append(inputs.shape[0]) or sequence(inputs, *rest),
    )
    for step in range(6):
        batch = torch_obs([rows[0][step], rows[1][step]])
        lengths_run.clear()
        with torch.no_grad():
            features = extractor(batch)
        if step > 0:  # after the first call every row continues or starts: one step for both
            assert lengths_run == [1], (step, lengths_run)
        torch.testing.assert_close(features, _reference_features(extractor, batch), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("method", ["laplace", "rl2"])
def test_rows_of_a_many_length_batch_are_recomputed_at_the_next_call(method) -> None:
    """A no-gradient batch of many history lengths runs in one pass without keeping row states; a
    next batch whose rows extend those histories by one entry (the same envs) is still exact and gets
    the whole posterior; a batch whose rows extend nothing (a replay batch) gets only what the policy
    input reads (Laplace-VRNN: the means, no precisions)."""
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"))
    extractor = EXTRACTORS[method](env.observation_space, **GRID_KWARGS[method])
    _, observations = grid_trial(40, window=None)
    first, second = torch_obs(observations[:-1]), torch_obs(observations[1:])
    shuffled = np.random.default_rng(0).permutation(len(observations) - 1)
    replay = {key: value[torch.as_tensor(shuffled)] for key, value in second.items()}
    for batch, whole_posterior in ((first, True), (second, True), (replay, False)):
        with torch.no_grad():
            features = extractor(batch)
        torch.testing.assert_close(features, _reference_features(extractor, batch), rtol=1e-5, atol=1e-5)
        if method == "laplace":
            assert (extractor.last_belief_output.precision is not None) == whole_posterior


@pytest.mark.parametrize("method", ["laplace", "rl2"])
def test_features_with_gradients_equal_the_full_pass_and_train_the_belief(method) -> None:
    """With gradients the extractor runs only what the policy input reads (Laplace: the means), with
    the same values as the full posterior and gradients that reach the recurrence."""
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"))
    extractor = EXTRACTORS[method](env.observation_space, **GRID_KWARGS[method])
    _, observations = grid_trial(30, window=None)
    batch = torch_obs(observations)
    features = extractor(batch)
    torch.testing.assert_close(features.detach(), _reference_features(extractor, batch), rtol=1e-5, atol=1e-6)
    features[:, 2:].sum().backward()
    assert extractor.belief.cell.weight_hh.grad.abs().sum() > 0


@pytest.mark.parametrize("method", ["laplace", "rl2"])
def test_a_pass_without_gradients_reuses_the_last_pass_only_at_equal_histories_and_weights(
    method, monkeypatch
) -> None:
    """SAC with a shared extractor reads the actor's replay batch twice more without gradients: those
    passes return the gradient pass's features; other histories or moved weights run the belief."""
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"))
    extractor = EXTRACTORS[method](env.observation_space, **GRID_KWARGS[method])
    _, observations = grid_trial(30, window=None)
    batch, other = torch_obs(observations), torch_obs(observations[:-1])
    with_gradients = extractor(batch)
    acted = []
    monkeypatch.setattr(
        extractor,
        "acting_belief",
        lambda obs: acted.append(1) or type(extractor).acting_belief(extractor, obs),
    )
    with torch.no_grad():
        reused = extractor({key: value.clone() for key, value in batch.items()})  # equal, not the same
        assert not acted
        torch.testing.assert_close(reused, with_gradients.detach(), rtol=0, atol=0)
        torch.testing.assert_close(reused, _reference_features(extractor, batch), rtol=1e-5, atol=1e-6)
        extractor(other)  # other histories: a pass of their own
        assert len(acted) == 1
        next(extractor.belief.parameters()).add_(0.05)  # as an optimizer step or Polyak update would
        moved = extractor(batch)
        assert len(acted) == 2
        torch.testing.assert_close(moved, _reference_features(extractor, batch), rtol=1e-5, atol=1e-6)
        assert not torch.allclose(moved, reused)


def _trial_prefixes(seed: int = 0) -> tuple[torch.Tensor, torch.Tensor, int]:
    """Histories [T, N, D] of 3 trials (all their prefixes, shuffled, one duplicated) and 2 unrelated
    rows whose first entries equal a trial's (as every grid trial's first input is the same)."""
    generator = torch.Generator().manual_seed(seed)
    steps, dim = 9, 4
    trials = torch.randint(0, 3, (steps, 3, dim), generator=generator).float()
    trials[0] = trials[0, 0]  # one first input for all
    rows, lengths = [], []
    for trial in range(3):
        for length in range(1, steps + 1):
            rows.append(trials[:, trial]), lengths.append(length)
    rows.append(trials[:, 1]), lengths.append(5)  # a duplicate history
    for length in (4, 7):  # share only the first entry with trial 0
        other = trials[:, 0].clone()
        other[1:] += 10.0
        rows.append(other), lengths.append(length)
    lengths_t = torch.tensor(lengths)
    inputs = torch.stack(rows, dim=1)
    inputs = inputs * (torch.arange(steps)[:, None] < lengths_t[None, :])[..., None]  # zero padding
    order = torch.randperm(len(lengths), generator=generator)
    return inputs[:, order], lengths_t[order], 3 + 1


@pytest.mark.parametrize("collide", [False, True])
def test_prefix_sources_cover_every_history_with_verified_prefixes(collide, monkeypatch) -> None:
    """Every row's history is the prefix of its source's; the sources are the 3 whole trials and the
    longest unrelated row. With every fingerprint equal (forced collisions) the exact check still
    keeps every row correct."""
    inputs, lengths, expected_kept = _trial_prefixes()
    if collide:
        monkeypatch.setattr(extractors_module.torch, "rand", lambda *args, **kwargs: torch.zeros(*args[:2]))
    keep, source = extractors_module.prefix_sources(inputs, lengths)
    for row in range(inputs.shape[1]):
        holder = int(keep[source[row]])
        length = int(lengths[row])
        assert int(lengths[holder]) >= length
        torch.testing.assert_close(inputs[:length, holder], inputs[:length, row], rtol=0, atol=0)
    if not collide:
        assert len(keep) == expected_kept


def test_prefix_sources_of_longest_rows_keep_distinct_rows_and_merge_equal_ones() -> None:
    """Rows of the batch's longest length (a replay batch of full windows) are each run, except a
    row equal to another; a shorter row that prefixes one of them reads its pass."""
    generator = torch.Generator().manual_seed(3)
    inputs = torch.randint(0, 3, (6, 5, 4), generator=generator).float()
    inputs[:, 3] = inputs[:, 1]  # a duplicate of row 1 (both full length)
    inputs[:, 4] = inputs[:, 2]  # row 4 is row 2's first 3 entries
    lengths = torch.tensor([6, 6, 6, 6, 3])
    inputs[3:, 4] = 0.0
    keep, source = extractors_module.prefix_sources(inputs, lengths)
    assert keep.tolist() == [0, 1, 2]
    assert keep[source].tolist() == [0, 1, 2, 1, 2]
    distinct = torch.randn(8, 50, 3, generator=generator)
    keep, source = extractors_module.prefix_sources(distinct, torch.full((50,), 8))
    assert torch.equal(keep, torch.arange(50)) and torch.equal(source, torch.arange(50))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_entries_equal_is_all_of_elementwise_equality(dtype) -> None:
    """The verification of prefixes and continued rows: ``(a == b).all(-1)``, exactly, including
    signed zeros, NaN, infinities, a one-ulp difference and an empty last dim."""
    generator = torch.Generator().manual_seed(0)
    first = torch.randint(0, 3, (7, 9, 5), generator=generator).to(dtype)
    second = first.clone()
    second[0, 0, 0] = torch.nextafter(second[0, 0, 0], torch.tensor(10.0, dtype=dtype))
    second[1, 2, 4] += 1
    first[2, 3, 1], second[2, 3, 1] = 0.0, -0.0
    first[3, 4, 2] = second[3, 4, 2] = float("nan")
    first[4, 5, 3] = second[4, 5, 3] = float("inf")
    first[5, 6] = 1e-42 if dtype == torch.float32 else 1e-320  # subnormal, against zero
    second[5, 6] = 0.0
    expected = (first == second).all(dim=-1)
    assert not expected[0, 0] and not expected[1, 2] and expected[2, 3] and not expected[3, 4]
    assert not expected[5, 6] and expected[4, 5] and expected.sum() > 50
    assert torch.equal(extractors_module.entries_equal(first, second), expected)
    assert bool(extractors_module.entries_equal(first[..., :0], second[..., :0]).all())


@pytest.mark.parametrize("method", sorted(EXTRACTORS))
def test_shared_prefix_pass_gives_the_per_row_values_and_gradients(method, monkeypatch) -> None:
    """A minibatch of steps of two trials: the pass per trial gives each step's features and (for
    beliefs the RL loss trains) the parameter gradients of the pass per history (prefix sharing
    disabled)."""
    torch.manual_seed(0)
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"))
    extractor = EXTRACTORS[method](env.observation_space, **GRID_KWARGS[method])
    observations = grid_trial(25, window=None, seed=1)[1] + grid_trial(25, window=None, seed=2)[1]
    batch = torch_obs([observations[i] for i in np.random.default_rng(0).permutation(50)])

    def features_and_gradients():
        extractor.zero_grad()
        features = extractor(batch)
        if features.requires_grad:
            (features[:, 2:] * torch.linspace(-1, 1, features.shape[1] - 2)).sum().backward()
        return features.detach(), [p.grad.clone() for p in extractor.parameters() if p.grad is not None]

    shared, shared_grads = features_and_gradients()
    with torch.no_grad():
        shared_sequence, valid = extractor.belief_sequence(batch)
    rows = lambda inputs, lengths: (torch.arange(inputs.shape[1]), torch.arange(inputs.shape[1]))  # noqa: E731
    monkeypatch.setattr(extractors_module, "prefix_sources", rows)
    separate, separate_grads = features_and_gradients()
    torch.testing.assert_close(shared, separate, rtol=1e-5, atol=1e-6)
    with torch.no_grad():
        separate_sequence, _ = extractor.belief_sequence(batch)
    for name in ("mean", "precision", "entropy", "kl_to_previous"):
        if getattr(separate_sequence, name) is not None:  # every valid entry of every row
            torch.testing.assert_close(
                getattr(shared_sequence, name)[valid],
                getattr(separate_sequence, name)[valid],
                rtol=1e-5,
                atol=1e-5,
            )
    assert len(shared_grads) == len(separate_grads)
    assert shared_grads or method in ("varibad", "glibrl")  # their policy inputs are detached
    for got, expected in zip(shared_grads, separate_grads, strict=True):
        torch.testing.assert_close(got, expected, rtol=1e-4, atol=1e-6)


def test_given_belief_is_copied_and_checked() -> None:
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"), window=5)
    source = RL2Extractor(env.observation_space, **SMALL)
    extractor = LaplaceExtractor(env.observation_space, belief=source.belief, freeze_belief=True)
    assert extractor.belief is not source.belief
    assert all(not parameter.requires_grad for parameter in extractor.belief.parameters())
    assert all(parameter.requires_grad for parameter in source.belief.parameters())
    with pytest.raises(TypeError, match="either belief or belief keywords"):
        RL2Extractor(env.observation_space, belief=source.belief, hidden_size=8)
    bandit = TrialHistoryWrapper(gym.make("BayesBandit-v0"), window=5)
    with pytest.raises(ValueError, match="input_dim"):
        RL2Extractor(bandit.observation_space, belief=source.belief)
    with pytest.raises(ValueError, match="TrialHistoryWrapper"):
        RL2Extractor(gym.make("BayesGrid-v0").observation_space, **SMALL)
    with pytest.raises(TypeError, match="Dict"):
        RL2Extractor(gym.make("BayesGrid-v0", rl2_inputs=False).observation_space, **SMALL)


class SpyingAuxLossCallback(BeliefAuxLossCallback):
    """Counts the rollout ends at which the callback's own updates changed a belief parameter."""

    updates_that_changed_the_belief = 0

    def _on_rollout_end(self) -> None:
        parameters = [p for e in self.extractors for p in e.belief.parameters()]
        before = [p.detach().clone() for p in parameters]
        super()._on_rollout_end()
        if any(not torch.equal(old, new.detach()) for old, new in zip(before, parameters, strict=True)):
            self.updates_that_changed_the_belief += 1


@pytest.mark.parametrize(
    ("algorithm", "env_id", "extractor", "kwargs", "algorithm_kwargs"),
    [
        (PPO, "BayesGrid-v0", LaplaceExtractor, GRID_KWARGS["laplace"], {"n_steps": 32, "batch_size": 32}),
        # 128 steps: a whole 60-step trial per env, for VariBAD's VAE buffer.
        (A2C, "BayesGrid-v0", VariBADExtractor, GRID_KWARGS["varibad"], {"n_steps": 8}),
        (SAC, "FourierRegression-v0", GLiBRLExtractor, {"basis_dim": 3, "basis_hidden_sizes": ()}, {}),
        (TD3, "FourierRegression-v0", LaplaceExtractor, {**SMALL, "window": 1}, {}),
    ],
)
def test_stock_algorithms_learn_with_the_callback(
    algorithm, env_id, extractor, kwargs, algorithm_kwargs
) -> None:
    if algorithm in (SAC, TD3):
        algorithm_kwargs = {"buffer_size": 200, "learning_starts": 40, "batch_size": 16, **algorithm_kwargs}
    env = make_vec_env(lambda: TrialHistoryWrapper(gym.make(env_id), window=16), n_envs=2, seed=0)
    model = algorithm(
        "MultiInputPolicy",
        env,
        policy_kwargs={"features_extractor_class": extractor, "features_extractor_kwargs": kwargs},
        seed=0,
        device="cpu",
        **algorithm_kwargs,
    )
    extractors = belief_extractors(model.policy)
    assert len(extractors) == (2 if algorithm in (SAC, TD3) else 1)  # targets are skipped

    def beliefs(policy) -> list[torch.Tensor]:
        return [
            torch.cat([p.detach().flatten() for p in e.belief.parameters()]).clone()
            for e in belief_extractors(policy)
        ]

    # The same run without the callback, from the same initial weights and seed.
    plain = copy.deepcopy(model)
    before = beliefs(model.policy)
    callback = SpyingAuxLossCallback(batch_size=8, model_update_interval=4)
    steps = 128 if algorithm is A2C else 64
    model.set_random_seed(0)  # the same global random streams for both runs
    model.learn(steps, callback=callback)
    plain.set_random_seed(0)
    plain.learn(steps)
    after, without = beliefs(model.policy), beliefs(plain.policy)
    assert all(not torch.equal(old, new) for old, new in zip(before, after, strict=True))
    # The callback itself changed the belief (its auxiliary loss or VAE updates, at rollout ends) ...
    assert callback.updates_that_changed_the_belief > 0
    # ... and training with it ends with other belief parameters than training without it.
    for on, off in zip(after, without, strict=True):
        assert (on - off).abs().max() > 1e-6
    action, _ = model.predict(env.reset(), deterministic=True)
    assert action.shape[0] == 2
    if extractor is VariBADExtractor:
        # The callback fed the VAE whole 60-step trials, each from its first input [s_0, 0, 0, 1].
        inputs, lengths = extractors[0].belief.sample_trials(100)
        assert len(lengths) >= 2 and (lengths == 60).all()
        first = torch.zeros(inputs.shape[1], 9)
        first[:, -1] = 1.0
        torch.testing.assert_close(inputs[0], first)


def test_save_and_load_keep_the_extractor_belief(tmp_path) -> None:
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"), window=10)
    source = LaplaceExtractor(env.observation_space, **GRID_KWARGS["laplace"])
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=16,
        batch_size=16,
        policy_kwargs={
            "features_extractor_class": LaplaceExtractor,
            "features_extractor_kwargs": {"belief": source.belief},
        },
        seed=0,
    )
    model.learn(16)
    model.save(tmp_path / "model.zip")
    loaded = PPO.load(tmp_path / "model.zip", device="cpu")
    _, observations = grid_trial(12, window=10)
    batch = torch_obs(observations)
    with torch.no_grad():
        torch.testing.assert_close(
            loaded.policy.features_extractor(batch), model.policy.features_extractor(batch)
        )


def _laplace_ppo_without_rl_updates(env, kwargs: dict) -> PPO:
    """PPO + LaplaceExtractor on 2 grid envs whose RL update is switched off (only callbacks train)."""
    model = PPO(
        "MultiInputPolicy",
        env,
        n_steps=60,
        batch_size=60,
        policy_kwargs={"features_extractor_class": LaplaceExtractor, "features_extractor_kwargs": kwargs},
        seed=0,
    )
    model.train = lambda: None
    return model


def test_callback_minimises_the_auxiliary_loss() -> None:
    """With the RL update switched off, the callback's steps alone lower Laplace's KL penalty."""
    env = make_vec_env(lambda: TrialHistoryWrapper(gym.make("BayesGrid-v0")), n_envs=2, seed=0)
    model = _laplace_ppo_without_rl_updates(env, {**GRID_KWARGS["laplace"], "beta": 1.0})
    extractor = model.policy.features_extractor
    untrained_weights = copy.deepcopy(extractor.state_dict())
    model.learn(60, callback=BeliefAuxLossCallback(learning_rate=1e-2, batch_size=64, n_updates=30))
    observations = {
        key: torch.as_tensor(value.reshape(-1, *value.shape[2:]))
        for key, value in model.rollout_buffer.observations.items()
    }

    def kl_penalty() -> float:
        with torch.no_grad():
            output, valid = extractor.belief_sequence(observations)
            return float(extractor.belief.aux_loss(output.apply(lambda value: value[valid])))

    trained = kl_penalty()
    extractor.load_state_dict(untrained_weights)
    assert trained < 0.5 * kl_penalty()


def test_callback_skips_beliefs_without_an_auxiliary_loss() -> None:
    """Laplace with β = 0 (the grid default) and RL² have no auxiliary loss: the callback builds no
    optimizer, runs no belief pass and leaves the weights to the RL update."""
    env = make_vec_env(lambda: TrialHistoryWrapper(gym.make("BayesGrid-v0")), n_envs=2, seed=0)
    for kwargs, has_loss in (
        ({**GRID_KWARGS["laplace"], "beta": 0.0}, False),
        (GRID_KWARGS["laplace"], True),
    ):
        model = _laplace_ppo_without_rl_updates(env, kwargs)
        weights = copy.deepcopy(model.policy.features_extractor.state_dict())
        callback = BeliefAuxLossCallback(batch_size=16)
        model.learn(60, callback=callback)
        assert model.policy.features_extractor.belief.has_aux_loss is has_loss
        assert (callback.optimizer is not None) is has_loss
        unchanged = all(
            torch.equal(value, model.policy.features_extractor.state_dict()[name])
            for name, value in weights.items()
        )
        assert unchanged is not has_loss


def test_history_predictor_runs_on_batched_envs_and_evaluate() -> None:
    """On make_vec's batched RL² envs the predictor acts exactly as the model on the wrapped env."""
    env = TrialHistoryWrapper(gym.make("BayesGrid-v0"))
    model = PPO(
        "MultiInputPolicy",
        env,
        policy_kwargs={"features_extractor_class": RL2Extractor, "features_extractor_kwargs": SMALL},
        seed=0,
    )
    predictor = HistoryPredictor(model)
    result = evaluate(predictor, "BayesGrid-v0", n_tasks=3, seed=7)
    assert result.policy == "RL2Extractor"
    for task in range(3):
        obs, _ = env.reset(seed=7 + task)
        returns, done = 0.0, False
        while not done:
            action, _ = model.predict(obs, deterministic=True)
            obs, reward, done, _, _ = env.step(action)
            returns += reward
        assert returns == pytest.approx(result.trial_returns[task], abs=1e-5)


def test_readme_recipe_runs_as_written() -> None:
    """The README's three-line recipe, with a short budget in place of its 100_000 steps."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    block = readme.split("<!-- recipe:begin -->", 1)[1].split("<!-- recipe:end -->", 1)[0]
    code = block.split("```python", 1)[1].split("```", 1)[0]
    assert "model.learn(100_000," in code
    namespace: dict = {}
    exec(compile(code.replace("model.learn(100_000,", "model.learn(512,"), "README.md", "exec"), namespace)
    model = namespace["model"]
    assert model.num_timesteps >= 512
    assert isinstance(model.policy.features_extractor, LaplaceExtractor)
    assert model.policy.features_extractor.belief.hidden_size == 128  # the grid defaults
