"""Gymnasium environments whose task is hidden and must be inferred (Bayesian meta-RL).

Importing the package registers the environments::

    import gymnasium as gym
    import bayes_envs

    env = gym.make("BayesGrid-v0")            # or gym.make("bayes_envs:BayesGrid-v0")
    venv = bayes_envs.make_vec("BayesGrid-v0", n_envs=16, seed=0)   # native batched SB3 VecEnv
"""

from gymnasium.envs.registration import register, registry

from bayes_envs.bandit import BanditTask, BayesBanditEnv
from bayes_envs.core import MetaEnv, TrialBatch
from bayes_envs.grid import BayesGridEnv, GridTask
from bayes_envs.normalize import RL2VecNormalize
from bayes_envs.regression import FourierRegressionEnv, FourierTask
from bayes_envs.vec import BatchedVecEnv, make_vec
from bayes_envs.wrappers import (
    BeliefObservationWrapper,
    TrialHistory,
    TrialHistoryVecWrapper,
    TrialHistoryWrapper,
)

__all__ = [
    "BanditTask",
    "BatchedVecEnv",
    "BayesBanditEnv",
    "BayesGridEnv",
    "BeliefObservationWrapper",
    "FourierRegressionEnv",
    "FourierTask",
    "GridTask",
    "MetaEnv",
    "RL2VecNormalize",
    "TrialBatch",
    "TrialHistory",
    "TrialHistoryVecWrapper",
    "TrialHistoryWrapper",
    "make_vec",
]

_ENVS = {
    "BayesBandit-v0": "bayes_envs.bandit:BayesBanditEnv",
    "BayesGrid-v0": "bayes_envs.grid:BayesGridEnv",
    "FourierRegression-v0": "bayes_envs.regression:FourierRegressionEnv",
    # MuJoCo (extra [mujoco]) and Meta-World (extra [metaworld]): imported only when made.
    "HalfCheetahDir-v0": "bayes_envs.mujoco:HalfCheetahDirEnv",
    "HalfCheetahVel-v0": "bayes_envs.mujoco:HalfCheetahVelEnv",
    "AntDir-v0": "bayes_envs.mujoco:AntDirEnv",
    "AntGoal-v0": "bayes_envs.mujoco:AntGoalEnv",
    "MetaWorld-ML1-v0": "bayes_envs.meta_world:MetaWorldML1Env",
    "MetaWorld-ML10-v0": "bayes_envs.meta_world:MetaWorldML10Env",
    "MetaWorld-ML45-v0": "bayes_envs.meta_world:MetaWorldML45Env",
}

for _env_id, _entry_point in _ENVS.items():
    if _env_id not in registry:
        # No max_episode_steps: the env ends its trial itself, a TimeLimit would only duplicate it.
        register(id=_env_id, entry_point=_entry_point)
