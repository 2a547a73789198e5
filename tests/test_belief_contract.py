"""The contract every registered belief keeps, parametrised over the belief registry: a belief
registered with :func:`bayes_agents.beliefs.registry.register_belief` is tested here automatically.

* ``sequence`` over ``[T, B]`` with episode starts equals the loop of ``step`` calls (resets included),
  and a reset forgets the history (the output equals that of a fresh state);
* the derived policy: ``BayesPPO`` (by its registered alias) learns for a few hundred steps and
  changes the belief's and the heads' parameters; ``model.save``/``load`` gives identical actions;
* the derived extractor given the policy's belief equals the recurrent belief on the same history;
* the derived classes live at their public module paths with the registered docstrings.
"""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import gymnasium as gym
import numpy as np
import pytest
import torch

import bayes_agents.extractors as extractors
import bayes_agents.policies as policies
import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.beliefs import BELIEFS, Belief, BeliefOutput, InputLayout
from bayes_agents.methods import METHODS
from bayes_envs.core import RL2_KEYS
from bayes_envs.wrappers import TrialHistoryWrapper

ENV_ID = "BayesGrid-v0"  # obs: 2 grid coordinates in [0, 4]; 5 discrete actions
LAYOUT = InputLayout(obs_dim=2, action_dim=5, discrete_actions=True)
RECURRENT = {"hidden_size": 16, "latent_dim": 4, "embed_sizes": (16,)}
#: Small hyper-parameters so that the contract runs fast; a belief without an entry runs at its defaults.
SMALL = {
    "rl2": RECURRENT,
    "laplace": {**RECURRENT, "window": 2, "covariance": "full", "variant": "markov"},
    "vrnn": {**RECURRENT, "covariance": "full"},
    "varibad": {"hidden_size": 16, "latent_dim": 3, "reward_decoder": "per_state", "grid_size": 5},
    "glibrl": {"basis_dim": 4, "basis_hidden_sizes": (8,)},
}
METHOD_NAMES = list(BELIEFS)


def small_kwargs(method: str) -> dict:
    return dict(SMALL.get(method, {}))


def make_belief(method: str) -> Belief:
    spec = BELIEFS[method]
    layout = {"input_layout": LAYOUT} if spec.needs_input_layout else {}
    return spec.belief_class(LAYOUT.input_dim, **layout, **small_kwargs(method))


def grid_inputs(steps: int, batch: int, generator: torch.Generator) -> torch.Tensor:
    """Valid-looking RL² inputs ``[T, B, 9]``: integer coordinates, one-hot action, reward, flag."""
    obs = torch.randint(0, 5, (steps, batch, 2), generator=generator).float()
    action = torch.nn.functional.one_hot(torch.randint(0, 5, (steps, batch), generator=generator), 5).float()
    reward = torch.where(torch.rand(steps, batch, generator=generator) < 0.2, 1.0, -0.1)
    flag = (torch.rand(steps, batch, generator=generator) < 0.15).float()
    return torch.cat([obs, action, reward[..., None], flag[..., None]], dim=-1)


def assert_outputs_close(actual: BeliefOutput, expected: BeliefOutput, message: str) -> None:
    assert type(actual) is type(expected)
    for field in dataclasses.fields(expected):
        value, reference = getattr(actual, field.name), getattr(expected, field.name)
        assert (value is None) == (reference is None), f"{message}: {field.name}"
        if reference is not None:
            torch.testing.assert_close(value, reference, rtol=1e-4, atol=1e-5, msg=f"{message}: {field.name}")


def test_every_method_is_registered_once_with_derived_classes() -> None:
    assert set(METHOD_NAMES) >= {"rl2", "laplace", "vrnn", "varibad", "glibrl"}
    assert list(METHODS) == METHOD_NAMES and list(extractors.EXTRACTORS) == METHOD_NAMES
    for method, spec in BELIEFS.items():
        for module, name, doc, base in (
            (policies, spec.policy_name, spec.policy_doc, policies.BeliefPolicy),
            (extractors, spec.extractor_name, spec.extractor_doc, extractors.BeliefExtractor),
        ):
            derived = getattr(module, name)
            assert issubclass(derived, base) and derived.belief_class is spec.belief_class
            assert derived.needs_input_layout == spec.needs_input_layout
            assert (derived.__module__, derived.__qualname__, derived.__name__) == (
                module.__name__,
                name,
                name,
            )
            assert derived.__doc__ == doc and doc.strip()
        assert METHODS[method].policy_class is getattr(policies, spec.policy_name)
        assert policies.POLICY_ALIASES[spec.policy_name] is getattr(policies, spec.policy_name)
        assert BayesPPO.policy_aliases[spec.policy_name] is getattr(policies, spec.policy_name)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_sequence_equals_the_step_loop_with_resets(method) -> None:
    torch.manual_seed(0)
    belief = make_belief(method).double()
    generator = torch.Generator().manual_seed(1)
    steps, batch = 12, 3
    inputs = grid_inputs(steps, batch, generator).double()
    starts = torch.rand(steps, batch, generator=generator) < 0.25
    starts[5, 0] = True  # at least one reset inside the sequence
    # A non-prior state before the sequence: the state after some history.
    _, state = belief.sequence(
        grid_inputs(4, batch, generator).double(), belief.initial_state(batch), starts[:4]
    )
    with torch.no_grad():
        output, final_state = belief.sequence(inputs, state, starts)
        step_state, step_outputs = state, []
        for t in range(steps):
            step_output, step_state = belief.step(inputs[t], step_state, starts[t])
            step_outputs.append(step_output)
        # A reset forgets everything: from step 5 row 0 equals a run from the prior state.
        fresh, _ = belief.sequence(inputs[5:, :1], belief.initial_state(1), starts[5:, :1])
    for t, step_output in enumerate(step_outputs):
        assert_outputs_close(output.apply(lambda value, t=t: value[t]), step_output, f"{method} step {t}")
    torch.testing.assert_close(final_state, step_state, rtol=1e-4, atol=1e-5)
    until_next_reset = 6 + int(torch.nonzero(starts[6:, 0]).min()) if starts[6:, 0].any() else steps
    assert_outputs_close(
        output.apply(lambda value: value[5:until_next_reset, :1]),
        fresh.apply(lambda value: value[: until_next_reset - 5]),
        f"{method} after a reset",
    )
    assert belief.policy_input(output).shape == (steps, batch, belief.policy_input_dim)


@pytest.mark.parametrize(
    ("method", "options"),
    [(method, {}) for method in METHOD_NAMES] + [("laplace", {"variant": "stationary"})],
)
def test_policy_sequence_and_its_read_entries_equal_the_sequence(method, options) -> None:
    """``policy_sequence`` gives ``sequence``'s values for the fields it keeps (the policy input among
    them); with ``read`` the read entries alone, with the same parameter gradients."""
    torch.manual_seed(0)
    spec = BELIEFS[method]
    layout = {"input_layout": LAYOUT} if spec.needs_input_layout else {}
    belief = spec.belief_class(LAYOUT.input_dim, **layout, **{**small_kwargs(method), **options}).double()
    generator = torch.Generator().manual_seed(2)
    steps, batch = 7, 4
    inputs = grid_inputs(steps, batch, generator).double()
    starts = torch.zeros(steps, batch, dtype=torch.bool)
    starts[0] = True
    state = belief.initial_state(batch)
    read = (torch.tensor([6, 0, 3, 6, 2]), torch.tensor([0, 1, 2, 3, 3]))
    whole = belief.sequence(inputs, state, starts)[0]
    policy = belief.policy_sequence(inputs, state, starts)
    for field in dataclasses.fields(policy):
        if getattr(policy, field.name) is not None:
            torch.testing.assert_close(
                getattr(policy, field.name), getattr(whole, field.name), msg=field.name
            )
    expected_input = belief.policy_input(policy.apply(lambda value: value[read]))
    read_input = belief.policy_input(belief.policy_sequence(inputs, state, starts, read=read))
    assert read_input.shape == (len(read[0]), belief.policy_input_dim)
    torch.testing.assert_close(read_input, expected_input)
    assert read_input.requires_grad == expected_input.requires_grad
    if not expected_input.requires_grad:  # a belief that cuts the RL gradient (GLiBRL)
        return
    parameters = [value for value in belief.parameters() if value.requires_grad]
    weights = torch.randn(expected_input.shape, generator=generator, dtype=torch.float64)
    expected_grads = torch.autograd.grad((expected_input * weights).sum(), parameters, allow_unused=True)
    read_grads = torch.autograd.grad((read_input * weights).sum(), parameters, allow_unused=True)
    for expected_grad, read_grad in zip(expected_grads, read_grads, strict=True):
        assert (expected_grad is None) == (read_grad is None)
        if expected_grad is not None:
            torch.testing.assert_close(read_grad, expected_grad)


def make_model(method: str, n_envs: int = 2, seed: int = 0) -> BayesPPO:
    return BayesPPO(
        BELIEFS[method].policy_name,  # the BayesPPO alias derived from the registration
        bayes_envs.make_vec(ENV_ID, n_envs, seed=seed),
        # The CLI method's keywords (e.g. posterior samples in the action head), then small sizes.
        policy_kwargs={**BELIEFS[method].policy_kwargs, **small_kwargs(method)},
        n_steps=64,
        batch_size=64,
        n_epochs=2,
        seed=seed,
        device="cpu",
    )


def parameters_of(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    return {name: value.detach().clone() for name, value in module.named_parameters()}


def changed(before: dict[str, torch.Tensor], module: torch.nn.Module) -> list[str]:
    return [name for name, value in module.named_parameters() if not torch.equal(before[name], value)]


def rollout_actions(model, n_steps: int = 30, seed: int = 3) -> tuple[np.ndarray, list[np.ndarray]]:
    venv = bayes_envs.make_vec(ENV_ID, 2, seed=seed, monitor=False)
    obs, state, start = venv.reset(), None, np.ones(2, bool)
    actions, states = [], []
    for _ in range(n_steps):
        action, state = model.predict(obs, state=state, episode_start=start, deterministic=True)
        actions.append(action)
        states.append(np.concatenate([state[0], state[1]], axis=-1))
        obs, _, start, _ = venv.step(action)
    venv.close()
    return np.stack(actions), states


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_bayes_ppo_learns_and_the_saved_model_acts_identically(method, tmp_path) -> None:
    model = make_model(method)
    belief_before = parameters_of(model.policy.belief)
    heads_before = parameters_of(model.policy.mlp_extractor)
    model.learn(256)
    assert model.num_timesteps >= 256
    assert changed(heads_before, model.policy.mlp_extractor), f"{method}: the policy heads did not train"
    assert changed(belief_before, model.policy.belief), f"{method}: the belief did not train"
    assert all(torch.isfinite(value).all() for value in model.policy.state_dict().values())

    model.save(tmp_path / "model.zip")
    loaded = BayesPPO.load(tmp_path / "model.zip", device="cpu")
    assert type(loaded.policy) is type(model.policy)
    assert type(loaded.policy.belief) is BELIEFS[method].belief_class
    actions, states = rollout_actions(model)
    loaded_actions, loaded_states = rollout_actions(loaded)
    np.testing.assert_array_equal(loaded_actions, actions)
    for state, loaded_state in zip(states, loaded_states, strict=True):
        np.testing.assert_array_equal(loaded_state, state)


@pytest.mark.parametrize("method", METHOD_NAMES)
def test_extractor_belief_equals_the_recurrent_belief(method) -> None:
    """Same weights, same history: the derived extractor over TrialHistoryWrapper observations gives
    the recurrent policy's belief at every step of a trial prefix that crosses inner-episode ends."""
    model = make_model(method, n_envs=1)
    wrapped = TrialHistoryWrapper(gym.make(ENV_ID))
    extractor = extractors.EXTRACTORS[method](wrapped.observation_space, belief=model.policy.belief)
    assert type(extractor).__name__ == BELIEFS[method].extractor_name
    raw = gym.make(ENV_ID)
    raw_obs, obs = raw.reset(seed=4)[0], wrapped.reset(seed=4)[0]
    state, start = None, np.array([True])
    for step in range(35):
        action, state = model.predict(
            {key: value[None] for key, value in raw_obs.items() if key in RL2_KEYS},
            state=state,
            episode_start=start,
        )
        expected = model.policy.last_belief_output
        with torch.no_grad():
            actual = extractor.current_belief(
                {key: torch.as_tensor(value)[None] for key, value in obs.items()}
            )
        for field in ("mean", "precision", "entropy"):
            reference = getattr(expected, field)
            if reference is not None:
                torch.testing.assert_close(
                    getattr(actual, field),
                    reference,
                    rtol=1e-5,
                    atol=1e-5,
                    msg=f"{method} {field} step {step}",
                )
        raw_obs, obs = raw.step(int(action[0]))[0], wrapped.step(int(action[0]))[0]
        start = np.array([False])


NEW_BELIEF = '''
import sys
import numpy as np
import bayes_envs
from bayes_agents import BayesPPO
from bayes_agents.beliefs import RL2Belief, register_belief
from bayes_agents.extractors import EXTRACTORS
from bayes_agents.methods import METHODS, method_defaults
import bayes_agents.policies as policies


class TwiceBelief(RL2Belief):
    """An RL² belief whose latent is doubled (a stand-in for a new belief module)."""

    def sequence(self, inputs, state, episode_starts):
        output, state = super().sequence(inputs, state, episode_starts)
        return output.apply(lambda value: 2 * value), state


register_belief(
    "twice", TwiceBelief, prefix="Twice", policy_doc="Twice policy.", extractor_doc="Twice extractor.",
    policy_kwargs={"hidden_size": 8, "latent_dim": 2, "embed_sizes": ()},
)
assert policies.TwicePolicy.__doc__ == "Twice policy." and EXTRACTORS["twice"].__name__ == "TwiceExtractor"
assert METHODS["twice"].policy_class is policies.TwicePolicy
kwargs = method_defaults("BayesGrid-v0", "twice")["policy"]
model = BayesPPO(policies.TwicePolicy, bayes_envs.make_vec("BayesGrid-v0", 1, seed=0), policy_kwargs=kwargs,
                 n_steps=32, batch_size=32, n_epochs=1, seed=0, device="cpu")
model.learn(64)
model.save(sys.argv[1])
loaded = BayesPPO.load(sys.argv[1], device="cpu")
assert type(loaded.policy) is policies.TwicePolicy and type(loaded.policy.belief) is TwiceBelief
print("ok")
'''


def test_a_new_belief_needs_only_its_class_and_one_registration(tmp_path) -> None:
    """In a fresh interpreter (the registry is global): a belief registered after the package was
    imported gets its policy, extractor and CLI method, trains under BayesPPO and round-trips."""
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            "import torch; torch.set_num_threads(1)\n" + NEW_BELIEF,
            str(tmp_path / "twice.zip"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
