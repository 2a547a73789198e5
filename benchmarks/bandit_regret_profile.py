"""When in a bandit trial an agent's regret accrues, next to the references on the same tasks.

Reads the ``evaluation.json`` of finished BayesBandit-v0 run directories (``bayes-rl train`` or a
sweep: the agent's and the references' cumulative regret per pull on the run's fixed test tasks)
and reports, per run, the cumulative regret at a few pulls and the regret per pull over the
trial's last stretch (``--late``, pulls 30 → 50 by default), with the same for each reference
(greedy posterior mean, Thompson sampling, ...). A run close to a reference early and far from it
late loses in exploitation, not in exploration.

With ``--pulls N``, each run's agent and the greedy posterior mean are also rolled out on the
run's first ``N`` test tasks, recording what they pull over the late stretch: the share of pulls
on the task's best arm, the share that switch arm from the previous pull, and the share on an arm
other than the one pulled most so far in the trial.

With ``--modes``, each run's agent is meta-tested again on its final evaluation's tasks twice: with
its most likely actions and with actions sampled as in training (``eval_deterministic`` true and
false; the sampling seeded by the task seed), its regret at the last pull recorded for each.

    python benchmarks/bandit_regret_profile.py RUN_DIR [RUN_DIR ...] [--pulls N] [--modes] [--out FILE]

Writes ``benchmarks/results/bandit_regret_profile.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
from learning import git_commit, repo_relative

from bayes_agents.experiment import atomic_write_text, load_model, read_config
from bayes_agents.experiment.evaluation import meta_test
from bayes_envs.evaluation import evaluate
from bayes_envs.references.base import ReferencePolicy
from bayes_envs.references.registry import reference_policies

RESULTS = Path(__file__).parent / "results"
PULLS = (1, 5, 10, 20, 30, 40, 50)


def profile(cumulative_regret: list[float], pulls: tuple[int, ...], late: tuple[int, int]) -> dict[str, Any]:
    """Cumulative regret at ``pulls`` (1-based); mean regret per pull from ``late[0]`` to ``late[1]``."""
    regret = np.asarray(cumulative_regret, np.float64)
    if not 1 <= late[0] < late[1] <= len(regret):
        raise ValueError(f"--late must satisfy 1 <= start < end <= {len(regret)} (the trial), got {late}")
    return {
        "at_pull": {str(t): float(regret[t - 1]) for t in pulls if t <= len(regret)},
        "late_regret_per_pull": float((regret[late[1] - 1] - regret[late[0] - 1]) / (late[1] - late[0])),
    }


class _RecordingAgent:
    """Forwards SB3's recurrent ``predict`` and keeps every batch of actions ``[B]``."""

    def __init__(self, model: Any) -> None:
        self.model, self.actions = model, []

    def predict(
        self, observation: Any, state: Any = None, episode_start: Any = None, deterministic: bool = False
    ) -> tuple[Any, Any]:
        actions, state = self.model.predict(observation, state, episode_start, deterministic)
        self.actions.append(np.asarray(actions).copy())
        return actions, state

    def get_vec_normalize_env(self) -> Any:
        return self.model.get_vec_normalize_env()


class _RecordingReference(ReferencePolicy):
    def __init__(self, reference: ReferencePolicy) -> None:
        self.reference, self.actions = reference, []

    def act(self, observation: Any, trial_start: np.ndarray, tasks: Any) -> np.ndarray:
        actions = self.reference.act(observation, trial_start, tasks)
        self.actions.append(np.asarray(actions).copy())
        return actions


def late_pulls(actions: np.ndarray, best_arms: np.ndarray, late: tuple[int, int]) -> dict[str, float]:
    """Shares of the late pulls (1-based pulls ``late[0]+1 .. late[1]``) of ``actions`` ``[T, N]``."""
    n_arms = int(max(actions.max(), best_arms.max())) + 1
    counts = np.zeros((actions.shape[1], n_arms))
    on_best, switched, off_most = [], [], []
    for t, pulled in enumerate(actions):
        if late[0] <= t < late[1]:
            on_best.append(pulled == best_arms)
            switched.append(pulled != actions[t - 1])
            off_most.append(pulled != counts.argmax(1))
        counts[np.arange(len(pulled)), pulled] += 1
    return {
        "on_best_arm": float(np.mean(on_best)),
        "switch_arm": float(np.mean(switched)),
        "off_most_pulled_arm": float(np.mean(off_most)),
    }


def rollout_pulls(run_dir: Path, n_tasks: int, late: tuple[int, int]) -> dict[str, Any]:
    """What the run's agent and the greedy posterior mean pull late, on the run's test tasks."""
    config = read_config(run_dir)
    seed = config["eval_seed"]
    agent = _RecordingAgent(load_model(run_dir))
    result = evaluate(agent, "BayesBandit-v0", n_tasks=n_tasks, seed=seed, **config["env"])
    best_arms = np.array([np.argmax(task.probs) for task in result.tasks])
    greedy = _RecordingReference(reference_policies("BayesBandit-v0", config["env"])["greedy posterior mean"])
    evaluate(greedy, "BayesBandit-v0", n_tasks=n_tasks, seed=seed, **config["env"])
    return {
        "n_tasks": n_tasks,
        # The run's own final evaluation when n_tasks is its final_eval_tasks: a check of the rollout.
        "agent_final_regret": float(np.nanmean(result.cumulative_regret[:, -1])),
        "agent": late_pulls(np.stack(agent.actions), best_arms, late),
        "greedy posterior mean": late_pulls(np.stack(greedy.actions), best_arms, late),
    }


def action_modes(run_dir: Path) -> dict[str, float]:
    """The run's regret at the last pull on its final evaluation's tasks, acting with the most likely
    actions (``deterministic``) and with sampled ones (``sampled``)."""
    config = read_config(run_dir)
    model = load_model(run_dir)
    regret = {}
    for mode, deterministic in (("deterministic", True), ("sampled", False)):
        mode_config = {**config, "eval_deterministic": deterministic}
        result = meta_test(model, mode_config, config["final_eval_tasks"], config["eval_seed"])
        regret[mode] = float(np.nanmean(result.cumulative_regret[:, -1]))
    return regret


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--late", nargs=2, type=int, default=(30, 50), metavar=("START", "END"))
    parser.add_argument("--pulls", type=int, default=0, metavar="N", help="roll out N test tasks per run")
    parser.add_argument("--modes", action="store_true", help="regret with most likely and sampled actions")
    parser.add_argument("--out", type=Path, default=RESULTS / "bandit_regret_profile.json")
    args = parser.parse_args(argv)
    late = tuple(args.late)
    runs, references = {}, {}
    for run_dir in args.run_dirs:
        path = run_dir / "evaluation.json"
        if not path.is_file():
            raise ValueError(f"run_dirs: {run_dir} has no evaluation.json (an unfinished or unevaluated run)")
        evaluation = json.loads(path.read_text())
        if evaluation["agent"].get("env_id") != "BayesBandit-v0":
            raise ValueError(f"run_dirs: {run_dir} is not a BayesBandit-v0 run")
        row = runs[repo_relative(run_dir.resolve())] = {
            "seed": evaluation["config"]["seed"],
            "config": {key: evaluation["config"][key] for key in ("ppo", "policy", "norm_prev_reward")},
            "final_regret": evaluation["agent"]["final_regret_mean"],
            **profile(evaluation["agent"]["cumulative_regret_mean"], PULLS, late),
        }
        if args.pulls:
            row["late_pulls"] = rollout_pulls(run_dir, args.pulls, late)
        if args.modes:
            row["final_regret_by_action_mode"] = action_modes(run_dir)
        for name, reference in evaluation["references"].items():
            # The references are evaluated on the run's fixed tasks: the same for every run of one
            # eval_seed and task count, so the first run's are kept.
            references.setdefault(name, profile(reference["cumulative_regret_mean"], PULLS, late))
    result = {
        "benchmark": "bandit_regret_profile",
        "command": "python benchmarks/bandit_regret_profile.py "
        + (f"--pulls {args.pulls} " if args.pulls else "")
        + ("--modes " if args.modes else "")
        + " ".join(runs),
        "git": git_commit(),
        "late": list(late),
        "runs": runs,
        "references": references,
    }
    header = " ".join(f"{t:>6}" for t in PULLS)
    print(f"{'cumulative regret at pull':<64}{header}  per pull {late[0]}→{late[1]}")
    for name, row in [*runs.items(), *((f"{k} (reference)", v) for k, v in references.items())]:
        cells = " ".join(f"{row['at_pull'].get(str(t), float('nan')):6.2f}" for t in PULLS)
        print(f"{name[-63:]:<64}{cells}  {row['late_regret_per_pull']:.3f}")
    if args.pulls:
        print(f"\nlate pulls ({late[0] + 1}..{late[1]}): on the best arm / switching / off the most pulled")
        for name, row in runs.items():
            for who, shares in row["late_pulls"].items():
                if not isinstance(shares, dict):
                    continue
                keys = ("on_best_arm", "switch_arm", "off_most_pulled_arm")
                values = " / ".join(f"{shares[key]:.3f}" for key in keys)
                print(f"{name[-50:]:<51}{who:<24}{values}")
    if args.modes:
        print("\nregret at the last pull: most likely actions / sampled actions")
        for name, row in runs.items():
            modes = row["final_regret_by_action_mode"]
            print(f"{name[-63:]:<64}{modes['deterministic']:6.2f} / {modes['sampled']:6.2f}")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
