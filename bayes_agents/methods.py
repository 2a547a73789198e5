"""The belief methods by name: what ``--method`` of the ``bayes-rl`` CLI and the benchmarks accept.

Each name maps to its :class:`~bayes_agents.policies.BeliefPolicy` subclass and to the policy
keywords that turn the shared per-environment defaults (:mod:`bayes_agents.defaults`) into that
method's defaults (e.g. Laplace-VRNN's window and covariance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bayes_agents.defaults import (
    LAPLACE_SETTINGS,
    belief_settings,
    has_defaults,
    method_env_settings,
    ppo_settings,
)
from bayes_agents.policies import (
    BeliefPolicy,
    GLiBRLPolicy,
    LaplacePolicy,
    RL2Policy,
    VariBADPolicy,
    VRNNPolicy,
)


@dataclass(frozen=True)
class Method:
    """A belief method.

    :param name: the CLI name (``"rl2"``, ``"laplace"``, ...).
    :param policy_class: the policy class given to ``BayesPPO``/``RecurrentPPO``.
    :param policy_kwargs: method keywords added on top of the environment's belief defaults.
    :param shared_keys: which of the environment's belief defaults this method accepts (the RL²
        recurrence keywords for methods built on it; ``None`` accepts them all).
    """

    name: str
    policy_class: type[BeliefPolicy]
    policy_kwargs: dict[str, Any] = field(default_factory=dict)
    shared_keys: frozenset[str] | None = None


METHODS: dict[str, Method] = {
    "rl2": Method("rl2", RL2Policy),
    "laplace": Method("laplace", LaplacePolicy, dict(LAPLACE_SETTINGS)),
    # The Laplace-VRNN paper's RL baseline: amortised full-covariance posterior on the RL² recurrence.
    "vrnn": Method("vrnn", VRNNPolicy, dict(covariance="full", n_samples=1)),
    # VariBAD and GLiBRL have their own encoders: only the policy-head width is shared.
    # VariBAD's VAE takes more and faster steps than the reference's 3 per PPO update at lr 1e-3: on
    # random grid trials that schedule stays at the prior (posterior collapse) for 2,000-3,000 VAE
    # steps, i.e. the first ~1M env steps of a CPU-sized budget; 20 steps at 3e-3 leave it within
    # ~100k env steps (p(goal cell | goal found) 0.99 on the policy's trials at 500k).
    "varibad": Method(
        "varibad",
        VariBADPolicy,
        dict(vae_updates_per_ppo_update=20, vae_lr=3e-3),
        shared_keys=frozenset({"net_arch"}),
    ),
    "glibrl": Method("glibrl", GLiBRLPolicy, shared_keys=frozenset({"net_arch"})),
}


def get_method(name: str) -> Method:
    """The method called ``name``; ``ValueError`` lists the known names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]


def method_names() -> list[str]:
    """The registered method names, sorted."""
    return sorted(METHODS)


def method_defaults(env_id: str, name: str) -> dict[str, dict[str, Any]]:
    """The training defaults of method ``name`` on ``env_id``: ``{"ppo": {...}, "policy": {...}}``.

    ``ppo`` holds ``BayesPPO`` keywords, ``policy`` the ``policy_kwargs``: the environment's belief
    defaults that the method accepts (:attr:`Method.shared_keys`), then the method's own keywords,
    then the per-(env, method) corrections of :func:`bayes_agents.defaults.method_env_settings`.
    Environments without tuned defaults get empty dicts before the method's keywords (the
    policies' and Stable-Baselines3's own defaults then apply).
    """
    method = get_method(name)
    tuned = has_defaults(env_id)
    ppo = ppo_settings(env_id) if tuned else {}
    shared = belief_settings(env_id) if tuned else {}
    if method.shared_keys is not None:
        shared = {key: value for key, value in shared.items() if key in method.shared_keys}
    corrections = method_env_settings(env_id, name)
    return {
        "ppo": {**ppo, **corrections["ppo"]},
        "policy": {**shared, **method.policy_kwargs, **corrections["policy"]},
    }
