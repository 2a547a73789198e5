"""The references of an environment, read from the env built with the run's constants.

:func:`reference_policies` gives the reference policies to roll out next to an agent and
:func:`exact_references` the exactly known expected returns, both for an env id and the keyword
constants the agent's env was made with. The env is built with those constants (so it validates
them) and the references read the constants they depend on from it: grid size, rewards and trial
length of ``BayesGrid-v0``; arms, prior concentration (from ``alpha`` or the split) and horizon of
``BayesBandit-v0``. Constants a reference cannot handle raise ``ValueError`` naming them, instead of
silently giving the default configuration's values.
"""

from __future__ import annotations

from typing import Any

from gymnasium import spaces

from bayes_envs.core import TrialBatch
from bayes_envs.references import bandit as bandit_refs
from bayes_envs.references import grid as grid_refs
from bayes_envs.references.base import ReferencePolicy, UniformRandomPolicy

GRID = "BayesGrid-v0"
BANDIT = "BayesBandit-v0"


def _name(env_id: str) -> str:
    if not isinstance(env_id, str):
        raise TypeError(f"env_id must be a str, got {env_id!r} ({type(env_id).__name__})")
    return env_id.split(":", 1)[-1]


def _check_kwargs(env_kwargs: Any) -> dict[str, Any]:
    if env_kwargs is None:
        return {}
    if not isinstance(env_kwargs, dict):
        raise TypeError(f"env_kwargs must be a dict of env constants, got {type(env_kwargs).__name__}")
    return dict(env_kwargs)


def _batch(env_id: str, env_kwargs: dict[str, Any]) -> tuple[TrialBatch | None, spaces.Space]:
    """The env ``env_id`` made with ``env_kwargs`` (which checks them): its batch of one (``None``
    for envs without one, e.g. MuJoCo) and its action space."""
    from bayes_envs.vec import BatchedVecEnv, make_vec

    venv = make_vec(env_id, 1, monitor=False, rl2_inputs=True, **env_kwargs)
    try:
        return (venv.batch if isinstance(venv, BatchedVecEnv) else None), venv.action_space
    finally:
        venv.close()


def _grid_constants(batch: TrialBatch) -> dict[str, Any]:
    constants = {
        "size": batch.size,
        "episode_length": batch.episode_length,
        "episodes_per_trial": batch.episodes_per_trial,
        "goal_reward": batch.goal_reward,
        "step_reward": batch.step_reward,
    }
    try:
        grid_refs._check_rewards(batch.goal_reward, batch.step_reward)
    except ValueError as error:
        raise ValueError(f"{GRID} references: {error}") from None
    return constants


def reference_policies(
    env_id: str, env_kwargs: dict[str, Any] | None, seed: int = 0
) -> dict[str, ReferencePolicy]:
    """The environment's reference policies by label (oracle, Bayesian references, random).

    * ``BayesGrid-v0``: ``"oracle (known goal)"`` (:class:`~bayes_envs.references.GridOracle`),
      ``"posterior sampling"`` (:class:`~bayes_envs.references.GridPosteriorSampling`);
    * ``BayesBandit-v0``: ``"oracle (known arms)"``, ``"greedy posterior mean"``, ``"Thompson sampling"``;
    * every env: ``"uniform random"`` (:class:`~bayes_envs.references.UniformRandomPolicy`).

    Each policy is built with the constants of the env made with ``env_kwargs`` (grid size, rewards,
    trial length; bandit arms and prior concentration).

    :param env_id: a registered id, optionally ``"module:Id"``.
    :param env_kwargs: the env's constants, as given to ``gym.make`` / :func:`bayes_envs.make_vec`.
    :param seed: seed of the policies' own generators.
    :raises ValueError: constants the references cannot handle (grid: ``goal_reward <= step_reward``),
        or that the env itself rejects (also ``TypeError`` from the env).
    """
    name, env_kwargs = _name(env_id), _check_kwargs(env_kwargs)
    batch, action_space = _batch(env_id, env_kwargs)
    policies: dict[str, ReferencePolicy] = {}
    if name == GRID:
        constants = _grid_constants(batch)
        policies["oracle (known goal)"] = grid_refs.GridOracle(**constants)
        policies["posterior sampling"] = grid_refs.GridPosteriorSampling(seed=seed, **constants)
    elif name == BANDIT:
        n_arms, alpha = batch.n_arms, batch.alpha
        policies["oracle (known arms)"] = bandit_refs.BanditOracle(n_arms=n_arms)
        policies["greedy posterior mean"] = bandit_refs.BanditGreedyPosteriorMean(
            n_arms=n_arms, alpha=alpha, seed=seed
        )
        policies["Thompson sampling"] = bandit_refs.BanditThompsonSampling(
            n_arms=n_arms, alpha=alpha, seed=seed
        )
    policies["uniform random"] = UniformRandomPolicy(action_space, seed=seed)
    return policies


def exact_references(env_id: str, env_kwargs: dict[str, Any] | None) -> dict[str, list[float]]:
    """Exactly known expected returns per inner episode, by label; ``{}`` where none is known.

    * ``BayesGrid-v0`` with at most 21 goal cells (``size <= 5``): ``"Bayes-optimal (exact)"``, the
      exact Bayes-optimal return of each inner episode for the env's size, trial length and rewards
      (:func:`~bayes_envs.references.bayes_optimal_episode_returns`); ``{}`` for larger grids,
      whose exact search does not fit in memory.
    * Other envs: ``{}``.

    :raises ValueError: as :func:`reference_policies`.
    """
    name, env_kwargs = _name(env_id), _check_kwargs(env_kwargs)
    if name != GRID:
        return {}
    constants = _grid_constants(_batch(env_id, env_kwargs)[0])
    if len(grid_refs.goal_candidates(constants["size"])) > grid_refs.MAX_EXACT_CANDIDATES:
        return {}
    returns = grid_refs.bayes_optimal_episode_returns(**constants)
    return {"Bayes-optimal (exact)": [float(value) for value in returns]}
