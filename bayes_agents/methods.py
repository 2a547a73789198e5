"""The belief methods by name: what ``--method`` of the ``bayes-rl`` CLI and the benchmarks accept.

Each name maps to its :class:`~bayes_agents.policies.BeliefPolicy` subclass and to the policy
keywords that turn the shared per-environment defaults (:mod:`bayes_agents.defaults`) into that
method's defaults (e.g. Laplace-VRNN's window and covariance). Both come from the belief's
registration (:func:`bayes_agents.beliefs.registry.register_belief`): a registered belief is a method.
"""

from __future__ import annotations

import inspect
from dataclasses import dataclass, field
from typing import Any

from bayes_agents.beliefs.registry import BeliefSpec, on_register
from bayes_agents.defaults import belief_settings, has_defaults, method_env_settings, ppo_settings
from bayes_agents.extractors import EXTRACTORS
from bayes_agents.policies import POLICIES, BeliefPolicy


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


#: The methods by name, one per registered belief (in registration order).
METHODS: dict[str, Method] = {}


def _add_method(spec: BeliefSpec) -> None:
    METHODS[spec.method] = Method(
        spec.method, POLICIES[spec.method], dict(spec.policy_kwargs), spec.shared_keys
    )


on_register(_add_method)


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


#: Keywords of :class:`~bayes_agents.policies.BeliefPolicy` itself (the rest are the belief's).
_POLICY_KEYWORDS = frozenset(inspect.signature(BeliefPolicy.__init__).parameters) - {"self", "belief_kwargs"}
#: Of those, what a stock SB3 policy with an extractor takes as well.
_HEAD_KEYWORDS = ("net_arch", "activation_fn")


def extractor_kwargs(name: str, policy_kwargs: dict[str, Any]) -> dict[str, Any]:
    """``policy_kwargs`` of a recurrent :class:`~bayes_agents.policies.BeliefPolicy` of method
    ``name`` turned into those of a stock SB3 policy with the method's extractor: the
    ``features_extractor_class``, the belief's keywords as ``features_extractor_kwargs`` and the
    heads' ``net_arch``/``activation_fn``. The recurrent policy's other keywords (``n_samples``, ...)
    have no extractor counterpart: an extractor hands the heads the posterior's policy input."""
    belief = {key: value for key, value in policy_kwargs.items() if key not in _POLICY_KEYWORDS}
    heads = {key: policy_kwargs[key] for key in _HEAD_KEYWORDS if key in policy_kwargs}
    return {
        "features_extractor_class": EXTRACTORS[get_method(name).name],
        "features_extractor_kwargs": belief,
        **heads,
    }


def extractor_defaults(env_id: str, name: str) -> dict[str, Any]:
    """``policy_kwargs`` for a stock SB3 algorithm (``PPO``, ``SAC``, ...) with method ``name``'s
    belief extractor on ``env_id``, at the method's defaults (:func:`method_defaults`; see
    :func:`extractor_kwargs`).

    ``PPO("MultiInputPolicy", TrialHistoryVecWrapper(make_vec(env_id, n)), policy_kwargs=
    extractor_defaults(env_id, "laplace"))``.
    """
    return extractor_kwargs(name, method_defaults(env_id, name)["policy"])
