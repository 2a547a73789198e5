"""Where a trained ML1 reach-v3 agent moves its hand: does it search for the goal, or go to one point?

Success rates alone do not say why an agent fails. This script replays trained runs on the fixed
meta-test tasks of ``evaluation.json`` (tasks ``eval_seed + i``, the run's frozen normalisation
statistics), with the policy's most likely actions (as ``evaluation.json``) and with sampled ones
(torch seed 0: an agent might search only through its action noise), and records the hand
(``tcp_center``) and the goal at every step. Per run, split, action mode and inner episode:

* ``success``: Meta-World's success (some step within 5 cm of the goal), as in ``evaluation.json``;
* ``min_distance_median`` / ``final_distance_median``: the hand's closest and last distance to the
  goal (median over tasks);
* ``final_hand_spread``: RMS distance of the tasks' final hand positions from their mean — near 0
  means the agent ends every task at the same point, whatever its goal;
* ``final_hand_to_centroid_median``: distance of the final hand position from the centroid of the
  tasks' goals;
* ``goal_to_centroid_median_success`` / ``_failure``: how far the goals the agent reached (missed)
  lie from that centroid;
* ``centroid_success``: the success of a policy that goes straight to the centroid and stays;
* ``episode_2_closer``: the share of tasks whose closest approach in episode 2 beats episode 1's by
  more than 1 cm (an agent that uses episode 1's rewards comes back closer).

    python benchmarks/metaworld_reach_behaviour.py RUN_DIR [RUN_DIR ...] [--tasks 100] [--out FILE]

Writes ``benchmarks/results/metaworld_reach_behaviour.json`` (``--out``) and prints a table.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from learning import TEST_SPLIT, git_commit
from metaworld_task_leak import SUCCESS_RADIUS

import bayes_envs
from bayes_agents.experiment import atomic_write_text, read_config
from bayes_agents.experiment.evaluation import load_model
from bayes_envs.normalize import RL2VecNormalize

RESULTS = Path(__file__).parent / "results"
#: An episode-2 approach this much closer than episode 1's counts as using episode 1's rewards.
CLOSER = 0.01
#: Action modes replayed: the policy's most likely action, and a sample.
ACTION_MODES = {"deterministic": True, "sampled": False}
#: Splits replayed and their env keywords (ML1: the 50 train goals, the 50 held-out goals).
SPLITS: dict[str, dict[str, Any]] = {"train": {}, **TEST_SPLIT}


def trajectories(
    model: Any, config: dict[str, Any], env_overrides: dict[str, Any], n_tasks: int, deterministic: bool
) -> tuple[np.ndarray, np.ndarray, int, np.ndarray]:
    """Hand positions ``[T, N, 3]`` over one trial of each task of a run (``model`` and its
    ``config``; ``env_overrides``: the split's env keywords), goals ``[N, 3]``, the episode length,
    and the env's success of each inner episode ``[N, E]`` (Meta-World's, as in ``evaluation.json``)."""
    normalization = model.get_vec_normalize_env()
    env_kwargs = {**config["env"], **env_overrides}
    venv = bayes_envs.make_vec(
        config["env_id"], n_tasks, seed=config["eval_seed"], rl2_inputs=True, monitor=False, **env_kwargs
    )
    batch = venv.batch
    if normalization is not None:
        venv = RL2VecNormalize.frozen(normalization.state_dict(), venv)
    steps = int(batch.episodes_per_trial) * int(batch.max_path_length)
    torch.manual_seed(0)  # the sampled actions' noise
    hands = np.zeros((steps, n_tasks, 3))
    reported = np.zeros((n_tasks, int(batch.episodes_per_trial)))
    observation, start, state = venv.reset(), np.ones(n_tasks, bool), None
    # Read before stepping: the step that ends the trial starts the next one, with a new task.
    goals = np.array([env._target_pos for env in batch.envs])
    for step in range(steps):
        actions, state = model.predict(
            observation, state=state, episode_start=start, deterministic=deterministic
        )
        observation, _, dones, infos = venv.step(actions)
        start = np.asarray(dones, bool).copy()
        for task, info in enumerate(infos):
            if info["inner_done"]:
                reported[task, info["inner_episode"]] = info["success"]
        # The hand after the step; the step that ends an inner episode also resets the env, so an
        # episode's last entry is the next start position (analyse leaves it out).
        hands[step] = [env.tcp_center for env in batch.envs]
    venv.close()
    return hands, goals, int(batch.max_path_length), reported


def _median(values: np.ndarray) -> float | None:
    return float(np.median(values)) if len(values) else None


def analyse(
    hands: np.ndarray, goals: np.ndarray, length: int, reported: np.ndarray | None = None
) -> dict[str, Any]:
    """The statistics of the module docstring from hands ``[T, N, 3]``, goals ``[N, 3]`` and the
    episode length; ``success`` is ``reported`` ``[N, E]`` (the env's) where given, else read off the
    distances. A task the distances count as reached but the env does not means hands and goals
    are misaligned: ``RuntimeError``. (The env can count one more: the last step of an episode,
    which the distances leave out.)"""
    distances = np.linalg.norm(hands - goals[None], axis=-1)  # [T, N]
    centroid = goals.mean(axis=0)
    goal_offsets = np.linalg.norm(goals - centroid, axis=-1)
    episodes, closest = [], []
    for start in range(0, len(hands), length):
        # The step after an episode's last action is the next episode's reset: read one before.
        segment, final_hand = distances[start : start + length - 1], hands[start + length - 2]
        closest.append(segment.min(axis=0))
        reached = closest[-1] <= SUCCESS_RADIUS
        if reported is not None:
            env_reached = reported[:, start // length] > 0.5
            if (reached & ~env_reached).any():
                raise RuntimeError("the replayed hands and goals disagree with the env's success")
            reached = env_reached
        spread = np.linalg.norm(final_hand - final_hand.mean(axis=0), axis=-1)
        episodes.append(
            {
                "success": float(reached.mean()),
                "min_distance_median": float(np.median(closest[-1])),
                "final_distance_median": float(np.median(segment[-1])),
                "final_hand_spread": float(np.sqrt((spread**2).mean())),
                "final_hand_to_centroid_median": _median(np.linalg.norm(final_hand - centroid, axis=-1)),
                "goal_to_centroid_median_success": _median(goal_offsets[reached]),
                "goal_to_centroid_median_failure": _median(goal_offsets[~reached]),
            }
        )
    return {
        "n_tasks": len(goals),
        "centroid": centroid.tolist(),
        "goal_to_centroid_median": float(np.median(goal_offsets)),
        "centroid_success": float((goal_offsets <= SUCCESS_RADIUS).mean()),
        "episode_2_closer": float((closest[1] < closest[0] - CLOSER).mean()) if len(closest) > 1 else None,
        "episodes": episodes,
    }


def main(argv: list[str] | None = None) -> dict[str, Any]:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("runs", nargs="+", type=Path, help="run directories of ML1 reach-v3 runs")
    parser.add_argument("--tasks", type=int, default=100, help="meta-test tasks per split (default 100)")
    parser.add_argument("--out", type=Path, default=RESULTS / "metaworld_reach_behaviour.json")
    args = parser.parse_args(argv)
    if args.tasks < 1:
        raise ValueError(f"--tasks must be >= 1, got {args.tasks}")
    torch.set_num_threads(1)
    runs = {}
    for run_dir in args.runs:
        config = read_config(run_dir)
        if config["env_id"] != "MetaWorld-ML1-v0" or config["env"].get("env_name") != "reach-v3":
            raise ValueError(
                f"{run_dir}: an ML1 reach-v3 run is needed, got {config['env_id']} {config['env']}"
            )
        model = load_model(run_dir)
        keys = ("method", "seed", "timesteps", "env", "ppo", "policy")
        runs[str(run_dir)] = {
            "config": {key: config[key] for key in keys},
            "splits": {
                split: {
                    mode: analyse(*trajectories(model, config, overrides, args.tasks, deterministic))
                    for mode, deterministic in ACTION_MODES.items()
                }
                for split, overrides in SPLITS.items()
            },
        }
    result = {
        "benchmark": "metaworld_reach_behaviour",
        "command": "python benchmarks/metaworld_reach_behaviour.py "
        + " ".join(str(run) for run in args.runs)
        + ("" if args.tasks == 100 else f" --tasks {args.tasks}"),
        "git": git_commit(),
        "success_radius": SUCCESS_RADIUS,
        "runs": runs,
    }
    print(
        "| run | split | actions | episode | success | min dist | final dist | final-hand spread "
        "| final hand to centroid | centroid success | ep 2 closer |"
    )
    print("| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    for run, row in runs.items():
        for split, modes in row["splits"].items():
            for mode, summary in modes.items():
                for number, episode in enumerate(summary["episodes"], 1):
                    print(
                        f"| {run} | {split} | {mode} | {number} | {episode['success']:.0%} | "
                        f"{episode['min_distance_median'] * 100:.1f} cm | "
                        f"{episode['final_distance_median'] * 100:.1f} cm | "
                        f"{episode['final_hand_spread'] * 100:.2f} cm | "
                        f"{episode['final_hand_to_centroid_median'] * 100:.2f} cm | "
                        f"{summary['centroid_success']:.0%} | {summary['episode_2_closer']:.0%} |"
                    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_text(args.out, json.dumps(result, indent=1) + "\n")
    return result


if __name__ == "__main__":
    main()
