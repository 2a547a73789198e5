"""The belief methods by name: what ``--method`` of the ``bayes-rl`` CLI and the benchmarks accept.

Each name maps to its :class:`~bayes_agents.policies.BeliefPolicy` subclass and to the policy
keywords that turn the shared per-environment defaults (:mod:`bayes_agents.defaults`) into that
method's defaults (e.g. Laplace-VRNN's window and covariance).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from bayes_agents.defaults import LAPLACE_SETTINGS
from bayes_agents.policies import BeliefPolicy, LaplacePolicy, RL2Policy


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
}


def get_method(name: str) -> Method:
    """The method called ``name``; ``ValueError`` lists the known names."""
    if name not in METHODS:
        raise ValueError(f"unknown method {name!r}; choose one of {sorted(METHODS)}")
    return METHODS[name]
