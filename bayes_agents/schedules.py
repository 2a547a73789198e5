"""Learning-rate and clip-range schedules in rl-baselines3-zoo's ``"lin_<v>"`` notation.

SB3 schedules map the fraction of the ``learn`` budget left (``progress_remaining``, 1 → 0) to a
value; :func:`resolve_schedule` turns the string form kept in configs into one. Used by
:class:`~bayes_agents.BayesPPO` for its PPO arguments and by beliefs with optimizers of their own
(GLiBRL's ``basis_lr``).
"""

from __future__ import annotations

from typing import Any


class LinearDecay:
    """``progress_remaining ↦ start · progress_remaining``: from ``start`` at the beginning of ``learn``
    to 0 at its end (SB3 schedules take the fraction of the budget left). A class, so it pickles."""

    def __init__(self, start: float) -> None:
        self.start = float(start)

    def __call__(self, progress_remaining: float) -> float:
        return self.start * progress_remaining

    def __repr__(self) -> str:
        return f"LinearDecay({self.start})"


def resolve_schedule(name: str, value: Any) -> Any:
    """``"lin_<v>"`` (rl-baselines3-zoo's notation) → a schedule decaying linearly from ``v`` to 0 over
    the ``learn`` call's budget; numbers, callables and ``None`` are returned unchanged.

    Strings keep configs (YAML/JSON, ``bayes-rl --set``) serialisable. Raises ``ValueError`` naming
    ``name`` for any other string.
    """
    if not isinstance(value, str):
        return value
    prefix, _, number = value.partition("_")
    try:
        start = float(number)
    except ValueError:
        start = None
    if prefix != "lin" or start is None or not start > 0:
        raise ValueError(f'{name} must be a number, a schedule or "lin_<value > 0>", got {value!r}')
    return LinearDecay(start)
