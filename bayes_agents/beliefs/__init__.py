"""Belief modules: map the RL² input stream to a task latent (point estimate or Gaussian posterior).

* :class:`RL2Belief` — recurrent point estimate (RL²).
* :class:`LaplaceBelief` — Laplace-VRNN: the RL² recurrence plus a Jacobian-based Gaussian posterior;
  ``LaplaceBelief.from_rl2(rl2)`` converts a trained RL² belief post hoc.

All share the :class:`Belief` interface (flat ``[B, state_size]`` state, zeros = prior, SB3
``episode_start`` semantics) and return a :class:`BeliefOutput`.
"""

from .base import Belief, BeliefOutput, InputLayout, StateLayout
from .laplace import COVARIANCES, VARIANTS, LaplaceBelief, segmented_cumsum
from .rl2 import RNN_TYPES, RL2Belief

__all__ = [
    "COVARIANCES",
    "RNN_TYPES",
    "VARIANTS",
    "Belief",
    "BeliefOutput",
    "InputLayout",
    "LaplaceBelief",
    "RL2Belief",
    "StateLayout",
    "segmented_cumsum",
]
