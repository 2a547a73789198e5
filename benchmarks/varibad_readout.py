"""How much of the Bayes-optimal return VariBAD's belief supports, against what its policy gets.

For each VariBAD run on BayesGrid-v0 (a ``per_state`` reward decoder: one Bernoulli head per cell),
on the run's fixed test tasks (its ``final_eval_tasks`` and ``eval_seed``, the tasks of its
``evaluation.json``):

* ``policy``: the trained agent, deterministic (the package's grid evaluation) and stochastic;
* ``readout from episode k``: the trained agent acts in the inner episodes before ``k``; from episode
  ``k`` on the belief keeps running on what happens, but each step moves one cell towards the cell
  the reward decoder finds most likely to hold the goal (``argmax_c p(r = goal | c, μ_t)``; ties to
  the first of noop, up, right, down, left that shortens the L1 distance). This policy reads the
  posterior and nothing else the agent has learned: when it scores well and the agent does not,
  the posterior holds what the later episodes need and the policy does not use it.

Prints a table and writes per run and as mean ± 95% CI over runs the trial return, its share of the
exact Bayes-optimal trial return and the return per inner episode.

    python benchmarks/varibad_readout.py RUN_DIR [RUN_DIR ...] [--out FILE]

Writes ``benchmarks/results/varibad_readout.json`` (``--out``).
"""

from __future__ import annotations

import argparse
import inspect
import json
from pathlib import Path
from typing import Any

import numpy as np
import torch
from learning import git_commit, repo_relative, seed_stats, vector_stats

from bayes_agents import experiment
from bayes_agents.experiment.evaluation import load_model
from bayes_envs.evaluation import evaluate
from bayes_envs.grid import MOVES, GridBatch
from bayes_envs.references import exact_references

RESULTS = Path(__file__).parent / "results"
GRID = "BayesGrid-v0"
READOUT_FROM = (2, 3)  # inner episodes (1-based) from which the decoder's most likely goal is walked to


class DecoderReadout:
    """SB3-style recurrent ``predict``: ``model``'s actions before inner episode ``start_episode``,
    then a step towards the reward decoder's most likely goal cell (the belief keeps running).

    The recurrent state is ``(model_state, steps)``: the model's state and each env's step in its trial.
    """

    def __init__(self, model: Any, start_episode: int, episode_length: int, grid_size: int) -> None:
        self.model, self.belief = model, model.policy.belief
        self.first_readout_step = (start_episode - 1) * episode_length
        self.grid_size = grid_size
        self.moves = torch.as_tensor(MOVES)

    def predict(
        self,
        observation: dict[str, np.ndarray],
        state: tuple[Any, np.ndarray] | None = None,
        episode_start: np.ndarray | None = None,
        deterministic: bool = False,
    ) -> tuple[np.ndarray, tuple[Any, np.ndarray]]:
        batch = len(observation["obs"])
        model_state, steps = state if state is not None else (None, np.zeros(batch, np.int64))
        if episode_start is not None:
            steps = np.where(np.asarray(episode_start, bool), 0, steps)
        actions, model_state = self.model.predict(
            observation, state=model_state, episode_start=episode_start, deterministic=deterministic
        )
        with torch.inference_mode():
            probabilities = self.belief.reward_probabilities(self.model.policy.last_belief_output.mean)
        goal = probabilities.argmax(dim=-1)  # row-major cell: x * size + y (VariBADBelief.cells)
        position = torch.as_tensor(observation["obs"]).round().long()
        offset = torch.stack([goal // self.grid_size, goal % self.grid_size], dim=-1) - position
        towards = (offset[:, None, :] - self.moves[None]).abs().sum(dim=-1).argmin(dim=-1).numpy()
        actions = np.where(steps >= self.first_readout_step, towards, actions)
        return actions, (model_state, steps + 1)


def _default(name: str) -> Any:
    """The grid's default env constant ``name``."""
    return inspect.signature(GridBatch.__init__).parameters[name].default


def run_row(run_dir: Path) -> dict[str, Any]:
    config = experiment.read_json(run_dir / "config.json")
    if config["env_id"] != GRID or config["method"] != "varibad":
        raise SystemExit(
            f"{run_dir}: a {config['method']} run on {config['env_id']}; this reads VariBAD grid runs"
        )
    env_kwargs = config.get("env", {})
    tasks = {"n_tasks": config["final_eval_tasks"], "seed": config["eval_seed"]}
    model = load_model(run_dir)
    belief = model.policy.belief
    if belief.reward_decoder != "per_state":
        raise SystemExit(f"{run_dir}: needs a per_state reward decoder, got {belief.reward_decoder!r}")
    episode_length = int(env_kwargs.get("episode_length", _default("episode_length")))
    policies: dict[str, tuple[Any, bool]] = {
        "policy (deterministic)": (model, True),
        "policy (stochastic)": (model, False),
    }
    for episode in READOUT_FROM:
        readout = DecoderReadout(model, episode, episode_length, belief.grid_size)
        policies[f"readout from episode {episode}"] = (readout, True)
    optimal = float(sum(exact_references(GRID, env_kwargs)["Bayes-optimal (exact)"]))  # per episode, summed
    rows = {}
    for name, (policy, deterministic) in policies.items():
        result = evaluate(policy, GRID, deterministic=deterministic, **tasks, **env_kwargs).summary()
        rows[name] = {
            "trial_return": result["trial_return_mean"],
            "percent_of_bayes_optimal": 100.0 * result["trial_return_mean"] / optimal,
            "episode_returns": result["episode_return_mean"],
        }
    return {
        "run_dir": repo_relative(run_dir),
        "seed": config["seed"],
        "policy_kwargs": config.get("policy", {}),
        "timesteps": config["timesteps"],
        "n_tasks": tasks["n_tasks"],
        "eval_seed": tasks["seed"],
        "bayes_optimal_trial_return": optimal,
        "rows": rows,
    }


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("run_dirs", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, default=RESULTS / "varibad_readout.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    runs = [run_row(run_dir) for run_dir in args.run_dirs]
    names = list(runs[0]["rows"])
    summary = {}
    for name in names:
        by_run = {index: run["rows"][name] for index, run in enumerate(runs)}
        summary[name] = {
            "trial_return": seed_stats({i: row["trial_return"] for i, row in by_run.items()}),
            "percent_of_bayes_optimal": seed_stats(
                {i: row["percent_of_bayes_optimal"] for i, row in by_run.items()}
            ),
            "episode_returns": vector_stats({i: row["episode_returns"] for i, row in by_run.items()}),
        }
    print(f"{'agent':<26}{'trial return':>22}{'% of Bayes-optimal':>20}  per inner episode")
    for name, row in summary.items():
        trial, percent = row["trial_return"], row["percent_of_bayes_optimal"]
        episodes = " / ".join(f"{value:.2f}" for value in row["episode_returns"]["mean"])
        ci = trial["ci95"] if trial["ci95"] is not None else float("nan")
        print(f"{name:<26}{trial['mean']:>14.2f} ± {ci:<5.2f}{percent['mean']:>19.1f}%  {episodes}")
    payload = {
        "benchmark": "varibad_readout",
        "command": " ".join(["python benchmarks/varibad_readout.py", *map(repo_relative, args.run_dirs)]),
        "git": git_commit(),
        "runs": runs,
        "summary": summary,
    }
    experiment.atomic_write_text(args.out, json.dumps(experiment.jsonable(payload), indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
