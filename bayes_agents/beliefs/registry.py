"""The belief registry: one :func:`register_belief` call per belief, everything else derived from it.

A belief is its module plus one registration, next to its class::

    register_belief(
        "laplace", LaplaceBelief, prefix="Laplace",
        policy_doc="Laplace-VRNN: ...", extractor_doc="Laplace-VRNN belief ...",
        policy_kwargs=dict(window=15, covariance="diag"),   # the CLI method's own keywords
    )

From it, whenever the modules below are imported (before or after the registration):

* :mod:`bayes_agents.policies` derives ``LaplacePolicy`` (a
  :class:`~bayes_agents.policies.BeliefPolicy` subclass, its ``BayesPPO`` alias in
  ``POLICY_ALIASES``);
* :mod:`bayes_agents.extractors` derives ``LaplaceExtractor`` (``EXTRACTORS["laplace"]``);
* :mod:`bayes_agents.methods` adds the CLI method ``"laplace"`` (``METHODS["laplace"]``).

The derived classes live in those modules under their names (``bayes_agents.policies.LaplacePolicy``),
so saved models that reference them load. This module depends on :mod:`.base` only.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from types import MappingProxyType
from typing import Any

from .base import Belief


@dataclass(frozen=True)
class BeliefSpec:
    """A registered belief; see :func:`register_belief` for the fields."""

    method: str
    belief_class: type[Belief]
    prefix: str
    policy_doc: str
    extractor_doc: str
    needs_input_layout: bool = False
    policy_kwargs: Mapping[str, Any] = field(default_factory=dict)
    shared_keys: frozenset[str] | None = None

    @property
    def policy_name(self) -> str:
        """Name of the derived policy class (and its ``BayesPPO`` alias), ``"<prefix>Policy"``."""
        return f"{self.prefix}Policy"

    @property
    def extractor_name(self) -> str:
        """Name of the derived features-extractor class, ``"<prefix>Extractor"``."""
        return f"{self.prefix}Extractor"

    def derive(self, base: type, suffix: str, module: str, doc: str, **attributes: Any) -> type:
        """A subclass ``<prefix><suffix>`` of ``base`` with ``belief_class`` and ``needs_input_layout``
        set, living (``__module__``, ``__qualname__``) in ``module`` under that name, with ``doc``."""
        name = f"{self.prefix}{suffix}"
        namespace = {
            "__module__": module,
            "__qualname__": name,
            "__doc__": doc,
            "belief_class": self.belief_class,
            "needs_input_layout": self.needs_input_layout,
            **attributes,
        }
        return type(name, (base,), namespace)


_BELIEFS: dict[str, BeliefSpec] = {}
#: The registered beliefs by method name, in registration order (read-only).
BELIEFS: Mapping[str, BeliefSpec] = MappingProxyType(_BELIEFS)
_LISTENERS: list[Callable[[BeliefSpec], None]] = []


def register_belief(
    method: str,
    belief_class: type[Belief],
    *,
    prefix: str,
    policy_doc: str,
    extractor_doc: str,
    needs_input_layout: bool = False,
    policy_kwargs: Mapping[str, Any] | None = None,
    shared_keys: frozenset[str] | set[str] | None = None,
) -> BeliefSpec:
    """Register a belief: its policy, extractor and CLI method are derived from this entry.

    :param method: the CLI method name (``--method``), lowercase, e.g. ``"laplace"``.
    :param belief_class: the :class:`~.base.Belief` subclass; built as
        ``belief_class(input_dim, **belief_kwargs)`` (plus ``input_layout=`` if ``needs_input_layout``).
    :param prefix: the class-name stem: ``<prefix>Policy`` and ``<prefix>Extractor`` are derived.
    :param policy_doc: docstring of the policy class (the belief keywords users pass as ``policy_kwargs``).
    :param extractor_doc: docstring of the extractor class.
    :param needs_input_layout: the belief splits ``x_t`` into its parts (transition models) and takes an
        :class:`~.base.InputLayout` as ``input_layout=``.
    :param policy_kwargs: the CLI method's keywords on top of the environment's belief defaults.
    :param shared_keys: which of the environment's belief defaults (:mod:`bayes_agents.defaults`) the
        method accepts; ``None`` accepts them all (methods built on the RL² recurrence).
    :return: the :class:`BeliefSpec`. Registering a method name twice is a ``ValueError``.
    """
    if not isinstance(method, str) or not method.isidentifier() or method != method.lower():
        raise ValueError(f"method must be a lowercase identifier, got {method!r}")
    if method in _BELIEFS:
        raise ValueError(f"a belief is already registered as method {method!r}")
    if not (isinstance(belief_class, type) and issubclass(belief_class, Belief)):
        raise TypeError(f"belief_class must be a Belief subclass, got {belief_class!r}")
    if not isinstance(prefix, str) or not prefix.isidentifier():
        raise ValueError(f"prefix must be an identifier (the class-name stem), got {prefix!r}")
    taken = {spec.prefix: spec.method for spec in _BELIEFS.values()}
    if prefix in taken:
        raise ValueError(f"prefix {prefix!r} is already used by method {taken[prefix]!r}")
    spec = BeliefSpec(
        method=method,
        belief_class=belief_class,
        prefix=prefix,
        policy_doc=policy_doc,
        extractor_doc=extractor_doc,
        needs_input_layout=bool(needs_input_layout),
        policy_kwargs=dict(policy_kwargs or {}),
        shared_keys=None if shared_keys is None else frozenset(shared_keys),
    )
    _BELIEFS[method] = spec
    for listener in list(_LISTENERS):
        listener(spec)
    return spec


def on_register(listener: Callable[[BeliefSpec], None]) -> None:
    """Call ``listener(spec)`` for every registered belief, now and at every later registration (how
    the policy, extractor and method tables derive their entries)."""
    _LISTENERS.append(listener)
    for spec in list(_BELIEFS.values()):
        listener(spec)


def get_belief_spec(method: str) -> BeliefSpec:
    """The registration of ``method``; ``ValueError`` lists the registered names."""
    if method not in _BELIEFS:
        raise ValueError(f"unknown method {method!r}; choose one of {sorted(_BELIEFS)}")
    return _BELIEFS[method]
