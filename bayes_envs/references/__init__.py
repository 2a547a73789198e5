"""Reference (non-learned) policies: what no learned agent can beat, and simple baselines.

* Grid: :class:`GridOracle` (known goal), :class:`GridPosteriorSampling`,
  :class:`GridBayesOptimal` (exact DP).
* Bandit: :class:`BanditThompsonSampling`, :class:`BanditGreedyPosteriorMean`, :class:`BanditOracle`.
* Any env: :class:`UniformRandomPolicy`.

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
    "oracle_return_per_episode",
]
