"""Stable-Baselines3 recurrent policies with Bayesian task beliefs.

from sb3_contrib import RecurrentPPO
from bayes_agents import LaplacePolicy, BayesPPO

RecurrentPPO(LaplacePolicy, env).learn(10_000)      # stock algorithm
BayesPPO(LaplacePolicy, env).learn(10_000)          # + the belief's auxiliary loss and statistics
"""

from bayes_agents.policies import BeliefPolicy, LaplacePolicy, RL2InputExtractor, RL2Policy
from bayes_agents.ppo import BayesPPO, laplace_from_rl2

__all__ = ["BayesPPO", "BeliefPolicy", "LaplacePolicy", "RL2InputExtractor", "RL2Policy", "laplace_from_rl2"]
