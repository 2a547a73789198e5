"""Reference (non-learned) policies: what no learned agent can beat, and simple baselines.

* Grid: :class:`GridOracle` (known goal), :class:`GridPosteriorSampling`,
  :class:`GridBayesOptimal` (exact DP).
* Bandit: :class:`BanditThompsonSampling`, :class:`BanditGreedyPosteriorMean`, :class:`BanditOracle`.
* Any env: :class:`UniformRandomPolicy`.
* By env id and constants: :func:`reference_policies` and :func:`exact_references`.

Roll any of them out with :func:`bayes_envs.evaluation.evaluate`.
"""

from bayes_envs.references.bandit import (
    BanditGreedyPosteriorMean,
    BanditOracle,
    BanditThompsonSampling,
    DirichletBernoulliParticles,
    bandit_bayes_optimal_value,
    exact_posterior_mean,
)
from bayes_envs.references.base import ReferencePolicy, UniformRandomPolicy
from bayes_envs.references.grid import (
    GridBayesOptimal,
    GridOracle,
    GridPosteriorSampling,
    bayes_optimal_episode_returns,
    bayes_optimal_return,
    oracle_return_per_episode,
)
from bayes_envs.references.registry import exact_references, reference_policies

__all__ = [
    "BanditGreedyPosteriorMean",
    "BanditOracle",
    "BanditThompsonSampling",
    "DirichletBernoulliParticles",
    "GridBayesOptimal",
    "GridOracle",
    "GridPosteriorSampling",
    "ReferencePolicy",
    "UniformRandomPolicy",
    "bandit_bayes_optimal_value",
    "bayes_optimal_episode_returns",
    "bayes_optimal_return",
    "exact_posterior_mean",
    "exact_references",
    "oracle_return_per_episode",
    "reference_policies",
]
