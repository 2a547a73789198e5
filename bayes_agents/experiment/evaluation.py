"""Meta-test evaluation of a run: its model (checked against its config) against the env's references.

The references (oracle, Bayesian references, random; exact Bayes-optimal returns where known)
come from :func:`bayes_envs.references.reference_policies` and
:func:`bayes_envs.references.exact_references`.
"""

from __future__ import annotations

import json
import os
import time
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch

import bayes_envs
from bayes_agents.experiment.checkpoint import (
    load_checkpoint,
    normalized_env,
    preserved_rng_state,
    read_normalization,
    restore_model,
)
from bayes_agents.experiment.config import ConfigError, check_int, jsonable, policy_kwargs
from bayes_agents.experiment.runfiles import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EVALUATION_FILE,
    MODEL_FILE,
    PROTECTED_FILES,
    RunDirectoryError,
    atomic_write_text,
    error_summary,
    read_config,
    software_environment,
)
from bayes_agents.methods import get_method
from bayes_agents.ppo import BayesPPO
from bayes_envs.evaluation import EvaluationResult, evaluate


def model_differences(model: BayesPPO, config: dict[str, Any]) -> list[str]:
    """How ``model`` differs from the model of ``config``: policy class, spaces, ppo/policy values."""
    differences = []
    policy_class = get_method(config["method"]).policy_class
    if not isinstance(model.policy, policy_class):
        differences.append(
            f"policy {type(model.policy).__name__}, the config's method {config['method']!r} "
            f"uses {policy_class.__name__}"
        )
    # The spaces the policy was built on: a normalising wrapper declares the clipped ranges it emits.
    venv = normalized_env(
        bayes_envs.make_vec(config["env_id"], 1, seed=0, monitor=False, **config["env"]), config
    )
    try:
        if model.observation_space != venv.observation_space:
            differences.append(
                f"observation space {model.observation_space} != the env's {venv.observation_space}"
            )
        if model.action_space != venv.action_space:
            differences.append(f"action space {model.action_space} != the env's {venv.action_space}")
    finally:
        venv.close()
    for key, value in config["ppo"].items():
        actual = getattr(model, key, None)
        if key == "ent_coef" and getattr(model, "ent_coef_schedule", None) is not None:
            actual = model.ent_coef_schedule  # BayesPPO keeps the number at the start of the schedule
        if actual is None or callable(actual):  # schedules are rebuilt from the value
            continue
        if jsonable(actual) != jsonable(value):
            differences.append(f"ppo.{key}: model {jsonable(actual)!r}, config {value!r}")
    expected = policy_kwargs(config)
    saved = model.policy_kwargs or {}
    for key in config["policy"]:
        if key in saved and jsonable(saved[key]) != jsonable(expected[key]):
            differences.append(
                f"policy.{key}: model {jsonable(saved[key])!r}, config {config['policy'][key]!r}"
            )
    return differences


def check_model(model: BayesPPO, config: dict[str, Any], source: Path, run_dir: Path) -> None:
    """``RunDirectoryError`` if ``model`` (read from ``source``) is not a model of ``run_dir``'s config."""
    differences = model_differences(model, config)
    if differences:
        raise RunDirectoryError(
            f"{source} does not match {run_dir / CONFIG_FILE}: "
            + "; ".join(differences)
            + ". The model comes from another run: evaluate the run directory it was trained in"
        )


def attach_normalization(model: BayesPPO, state: dict[str, Any] | None, config: dict[str, Any]) -> None:
    """Give a model loaded without its env the normalisation statistics it was trained with (frozen),
    where :func:`bayes_envs.evaluation.evaluate` finds them (``model.get_vec_normalize_env()``)."""
    if state is None:
        if config.get("norm_obs") or config.get("norm_reward"):
            raise RunDirectoryError(
                "the run normalises observations/rewards but its model has no normalisation statistics; "
                "retrain, or delete model.zip to evaluate the latest checkpoint"
            )
        return
    # The spaces the policy was built on: a normalising wrapper declares the clipped ranges it emits.
    venv = normalized_env(
        bayes_envs.make_vec(config["env_id"], 1, seed=0, monitor=False, **config["env"]), config
    )
    try:
        model._vec_normalize_env = bayes_envs.RL2VecNormalize.from_state(state, venv, training=False)
    finally:
        venv.close()


def load_model(run_dir: str | os.PathLike[str], device: str = "cpu", *, check: bool = True) -> BayesPPO:
    """The trained model of a run (``model.zip``, else the latest checkpoint's model).

    ``model.zip`` is SB3's format, which unpickles objects: load only run directories you trust.
    The checkpoint (``checkpoint.pt``) loads without executing code.

    :param check: compare the model with the run's ``config.json`` (:func:`check_model`).
    :raises RunDirectoryError: no model, an unreadable model, or one that does not match the config.
    """
    run_dir = Path(run_dir)
    config = read_config(run_dir)
    if (run_dir / MODEL_FILE).is_file():
        source = run_dir / MODEL_FILE
        try:
            model = BayesPPO.load(source, device=device)
        except Exception as error:  # a truncated zip, a model of another library: one line
            reason = error_summary(error)
            raise RunDirectoryError(
                f"{source} cannot be loaded ({reason[:200]}); retrain, "
                "or delete it to evaluate the latest checkpoint"
            ) from error
        attach_normalization(model, read_normalization(source), config)
    elif (run_dir / CHECKPOINT_FILE).is_file():
        source = run_dir / CHECKPOINT_FILE
        payload = load_checkpoint(source)
        with preserved_rng_state(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the env state does not matter for evaluation
            model = restore_model(payload, device)
        model.get_env().close()
    else:
        raise RunDirectoryError(f"{str(run_dir)!r} has no {MODEL_FILE} or {CHECKPOINT_FILE} to evaluate")
    if check:
        check_model(model, config, source, run_dir)
    return model


def meta_test(model: Any, config: dict[str, Any], n_tasks: int, seed: int) -> EvaluationResult:
    """:func:`bayes_envs.evaluation.evaluate` of ``model`` on the run's env as its ``config`` says:
    the policy's most likely actions, or with ``eval_deterministic`` false actions sampled as in
    training, from torch's generator seeded with ``seed`` (so a meta-test is reproducible); the
    global random streams are restored afterwards (training continues as if it had not run)."""
    deterministic = config.get("eval_deterministic", True)  # configs written before the key: True
    with preserved_rng_state():
        if not deterministic:
            torch.manual_seed(seed)
        return evaluate(
            model, config["env_id"], n_tasks=n_tasks, seed=seed, deterministic=deterministic, **config["env"]
        )


def belief_cells_over_trial(model: BayesPPO, env_id: str, seed: int, env_kwargs: dict[str, Any]):
    """The decoder's per-cell reward belief ``p(reward at cell | μ_t)`` at each step of one trial
    (the first test task), ``[T, size, size]`` as nested lists, for beliefs that decode one over
    grid cells (VariBAD's ``per_state`` decoder); ``None`` otherwise."""
    belief = model.policy.belief
    size = getattr(belief, "grid_size", None)
    if size is None:
        return None
    venv = bayes_envs.make_vec(env_id, 1, seed=seed, monitor=False, **env_kwargs)
    normalizer = model.get_vec_normalize_env()
    if isinstance(normalizer, bayes_envs.RL2VecNormalize):
        venv = normalizer.frozen_copy(venv)
    observation, state, start, cells = venv.reset(), None, np.ones(1, bool), []
    with torch.no_grad():
        while True:
            action, state = model.predict(observation, state=state, episode_start=start, deterministic=True)
            mean = model.policy.last_belief_output.mean[0]
            cells.append(belief.reward_probabilities(mean).view(size, size).cpu().numpy().tolist())
            observation, _, dones, _ = venv.step(action)
            if dones[0]:
                break
            start = np.zeros(1, bool)
    venv.close()
    return cells


def _belief_curves(summary: dict[str, Any]) -> dict[str, list[float]] | None:
    """Posterior entropy / KL per trial step from the evaluation summary (``None`` for point estimates,
    whose evaluation records none)."""
    if "belief_entropy_mean" not in summary:
        return None
    return {"entropy": summary["belief_entropy_mean"], "kl_to_previous": summary.get("belief_kl_mean")}


def check_output_path(run_dir: Path, out: str | os.PathLike[str] | None) -> Path:
    """Where the evaluation goes; ``ConfigError`` if that would replace a run file or is a directory."""
    path = Path(out) if out is not None else run_dir / EVALUATION_FILE
    if out is None:
        return path
    if path.is_dir():
        raise ConfigError(f"--out {str(path)!r} is a directory; give a JSON file name")
    resolved = path.resolve()
    own = {(run_dir / name).resolve() for name in PROTECTED_FILES}
    foreign_run = path.name in PROTECTED_FILES and (path.parent / CONFIG_FILE).is_file()
    if (
        resolved in own
        or foreign_run
        or (path.parent.name == "tensorboard" and (path.parent.parent / CONFIG_FILE).is_file())
    ):
        raise ConfigError(
            f"--out {str(path)!r} would overwrite a file of a run directory; give another file "
            f"(default {run_dir / EVALUATION_FILE})"
        )
    return path


def evaluate_run(
    run_dir: str | os.PathLike[str],
    n_tasks: int | None = None,
    seed: int | None = None,
    *,
    references: bool = True,
    out: str | os.PathLike[str] | None = None,
) -> dict[str, Any]:
    """Meta-test a trained run and the environment's references on the same fixed tasks.

    :param n_tasks: test tasks (default: the config's ``final_eval_tasks``).
    :param seed: task seed (default: the config's ``eval_seed``).
    :param out: JSON file to write (default ``run_dir/evaluation.json``); never another run file.
    :return: ``{"config", "agent", "references", "exact", "belief"}`` and written to
        ``run_dir/evaluation.json`` (or ``out``): summaries of
        :meth:`~bayes_envs.evaluation.EvaluationResult.summary`.
    :raises ConfigError: bad ``n_tasks``/``seed``, or an ``out`` that would overwrite a run file.
    :raises RunDirectoryError: no run, no model, or a model that does not match the run's config.
    """
    from bayes_envs.references import exact_references, reference_policies

    run_dir = Path(run_dir)
    for name, value, minimum in (("n_tasks", n_tasks, 1), ("seed", seed, 0)):
        if value is not None:
            check_int(name, value, minimum)
    path = check_output_path(run_dir, out)
    config = read_config(run_dir)
    n_tasks = config["final_eval_tasks"] if n_tasks is None else n_tasks
    seed = config["eval_seed"] if seed is None else seed
    env_id, env_kwargs = config["env_id"], config["env"]
    model = load_model(run_dir, device=config["device"] if config["device"] != "auto" else "cpu")
    start = time.perf_counter()
    agent = meta_test(model, config, n_tasks, seed)
    agent_summary = agent.summary()
    agent_summary["policy"] = f"{config['method']} (trained, {model.num_timesteps:,} steps)"
    report: dict[str, Any] = {
        "run_dir": str(run_dir),
        "config": config,
        "num_timesteps": int(model.num_timesteps),
        "environment": software_environment(),
        "agent": agent_summary,
        "references": {},
        "exact": {},
        "belief": _belief_curves(agent_summary),
        "belief_cells": belief_cells_over_trial(model, env_id, seed, env_kwargs),
    }
    if references:
        try:
            policies = reference_policies(env_id, env_kwargs)
            report["exact"] = exact_references(env_id, env_kwargs)
        except ValueError as error:  # e.g. env constants the references do not support
            warnings.warn(f"no references for {env_id} with {env_kwargs}: {error}", stacklevel=2)
            policies = {}
            report["references_error"] = str(error)
        for label, policy in policies.items():
            summary = evaluate(policy, env_id, n_tasks=n_tasks, seed=seed, **env_kwargs).summary()
            summary["policy"] = label
            report["references"][label] = summary
    report["seconds"] = time.perf_counter() - start
    report = jsonable(report)
    atomic_write_text(path, json.dumps(report, indent=2))
    return report


def format_evaluation(report: dict[str, Any]) -> str:
    """A text table: return per inner episode and per trial (and final regret) of agent and references."""
    agent = report["agent"]
    shown = min(len(agent["episode_return_mean"]), 8)
    has_regret = "final_regret_mean" in agent
    header = f"{'return per inner episode':<34}" + "".join(f"{'ep ' + str(e + 1):>8}" for e in range(shown))
    header += f"{'trial (± 95% CI)':>18}" + (f"{'regret@T':>10}" if has_regret else "")
    config = report["config"]
    lines = [
        f"{config['env_id']}, method {config['method']}, seed {config['seed']}: "
        f"{agent['n_tasks']} fixed test tasks (seed {agent['seed']})",
        header,
    ]

    def row(label: str, values: list[float], summary: dict[str, Any] | None) -> str:
        text = f"{label[:33]:<34}" + "".join(f"{value:>8.2f}" for value in values[:shown])
        if summary is None:
            return text + f"{sum(values):>10.2f}" + " (exact)"
        text += f"{summary['trial_return_mean']:>10.2f} ± {summary['trial_return_ci95']:<5.2f}"
        if has_regret:
            text += f"{summary.get('final_regret_mean', float('nan')):>10.2f}"
        return text

    lines.append(row(agent["policy"], agent["episode_return_mean"], agent))
    for label, summary in report["references"].items():
        lines.append(row(label, summary["episode_return_mean"], summary))
    for label, values in report["exact"].items():
        lines.append(row(label, values, None))
    if "references_error" in report:
        lines.append(f"(no references: {report['references_error']})")
    if "success_rate" in agent:
        rates = ", ".join(f"{rate:.2f}" for rate in agent["success_rate"][:shown])
        lines.append(f"success rate per inner episode (agent): {rates}")
    return "\n".join(lines)
