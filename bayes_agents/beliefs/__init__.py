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
"""

from .base import Belief, BeliefOutput, InputLayout, RunningNormalizer, StateLayout
from .glibrl import GLiBRLBelief, GLiBRLOutput, NIGPosterior
from .laplace import COVARIANCES, VARIANTS, LaplaceBelief, segmented_cumsum
from .rl2 import RNN_TYPES, RL2Belief
from .varibad import VariBADBelief
from .vrnn import VRNNBelief, cayley, spectral_gaussian_kl

__all__ = [
    "COVARIANCES",
    "RNN_TYPES",
    "VARIANTS",
    "Belief",
    "BeliefOutput",
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
    "segmented_cumsum",
    "spectral_gaussian_kl",
]
