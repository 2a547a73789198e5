"""Stable-Baselines3 recurrent policies with Bayesian task beliefs.

from sb3_contrib import RecurrentPPO
from bayes_agents import LaplacePolicy, BayesPPO

RecurrentPPO(LaplacePolicy, env).learn(10_000)      # stock algorithm
BayesPPO(LaplacePolicy, env).learn(10_000)          # + the belief's auxiliary loss and statistics

Beliefs for existing SB3 projects (PPO, A2C, SAC, TD3): :mod:`bayes_agents.extractors` over the
history of :class:`bayes_envs.TrialHistoryWrapper`, trained with :class:`BeliefAuxLossCallback`.

A belief is registered once (:func:`register_belief`, :mod:`bayes_agents.beliefs.registry`); its
policy (``LaplacePolicy``), extractor (``LaplaceExtractor``) and CLI method are derived from that.
"""

from bayes_agents.beliefs.registry import BELIEFS, register_belief
from bayes_agents.callbacks import BeliefAuxLossCallback
from bayes_agents.extractors import (
    EXTRACTORS,
    BeliefExtractor,
    GLiBRLExtractor,
    HistoryPredictor,
    LaplaceExtractor,
    RL2Extractor,
    VariBADExtractor,
    VRNNExtractor,
)
from bayes_agents.methods import extractor_defaults, method_defaults
from bayes_agents.policies import (
    POLICY_ALIASES,
    BeliefPolicy,
    GLiBRLPolicy,
    LaplacePolicy,
    RL2InputExtractor,
    RL2Policy,
    VariBADPolicy,
    VRNNPolicy,
)
from bayes_agents.ppo import BayesPPO, laplace_from_rl2, resolve_schedules

__all__ = [
    "BELIEFS",
    "EXTRACTORS",
    "POLICY_ALIASES",
    "BayesPPO",
    "BeliefAuxLossCallback",
    "BeliefExtractor",
    "BeliefPolicy",
    "GLiBRLExtractor",
    "GLiBRLPolicy",
    "HistoryPredictor",
    "LaplaceExtractor",
    "LaplacePolicy",
    "RL2Extractor",
    "RL2InputExtractor",
    "RL2Policy",
    "VRNNExtractor",
    "VRNNPolicy",
    "VariBADExtractor",
    "VariBADPolicy",
    "extractor_defaults",
    "laplace_from_rl2",
    "method_defaults",
    "register_belief",
    "resolve_schedules",
]
