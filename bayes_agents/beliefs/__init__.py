"""Belief modules: map the RL² input stream to a task latent (point estimate or Gaussian posterior).

* :class:`RL2Belief` — recurrent point estimate (RL²).
* :class:`LaplaceBelief` — Laplace-VRNN: the RL² recurrence plus a Jacobian-based Gaussian posterior;
  ``LaplaceBelief.from_rl2(rl2)`` converts a trained RL² belief post hoc.
* :class:`VRNNBelief` — the Laplace-VRNN paper's baseline: an amortised Gaussian posterior head on the
  RL² recurrence, full covariance through a Cayley-map rotation.
* :class:`VariBADBelief` — VariBAD: a GRU encoder's diagonal Gaussian posterior trained as a VAE
  with reward (and state) decoders.
* :class:`GLiBRLBelief` — GLiBRL: conjugate Bayesian linear regression of the transitions on a
  learned basis, trained by the exact marginal likelihood.

All share the :class:`Belief` interface (flat ``[B, state_size]`` state, zeros = prior, SB3
``episode_start`` semantics) and return a :class:`BeliefOutput`.

Each belief module ends with one :func:`register_belief` call (:mod:`.registry`), from which the
policy class, the ``BayesPPO`` alias, the features extractor and the CLI method are derived. A new
belief: its module (a :class:`Belief` subclass and its registration), imported below.
"""

from .base import (
    Belief,
    BeliefOutput,
    InputLayout,
    RunningNormalizer,
    StateLayout,
    entries_equal,
    observation_bounds,
)
from .glibrl import GLiBRLBelief, GLiBRLOutput, NIGPosterior
from .laplace import COVARIANCES, VARIANTS, LaplaceBelief, segmented_cumsum
from .registry import BELIEFS, BeliefSpec, get_belief_spec, on_register, register_belief
from .rl2 import RNN_TYPES, RL2Belief
from .varibad import VariBADBelief
from .vrnn import VRNNBelief, cayley, spectral_gaussian_kl

__all__ = [
    "BELIEFS",
    "COVARIANCES",
    "RNN_TYPES",
    "VARIANTS",
    "Belief",
    "BeliefOutput",
    "BeliefSpec",
    "GLiBRLBelief",
    "GLiBRLOutput",
    "InputLayout",
    "LaplaceBelief",
    "NIGPosterior",
    "RL2Belief",
    "RunningNormalizer",
    "StateLayout",
    "VRNNBelief",
    "VariBADBelief",
    "cayley",
    "entries_equal",
    "get_belief_spec",
    "observation_bounds",
    "on_register",
    "register_belief",
    "segmented_cumsum",
    "spectral_gaussian_kl",
]
