"""Learning on BayesGrid-v0: every method as ``bayes-rl train BayesGrid-v0 --method M`` trains it.

Runs the sweep ``examples/configs/learning_grid.yaml`` (methods rl2, laplace, vrnn, varibad, glibrl
× seeds 0–4 at the CLI's defaults, 420 fixed test tasks) with the sweep's local executor: finished
runs are reused, interrupted ones resume. Then writes per method the trial return and % of the exact
Bayes-optimal return per seed, mean ± 95% Student-t CI over seeds, the worst seed, the return per
inner episode, episodes 2–4 as % of the oracle, training minutes per run and the sweep's IQM with
stratified-bootstrap CIs to ``benchmarks/results/learning_grid.json`` (then run
``python benchmarks/results_tables.py`` to update the README and docs tables).

    python benchmarks/learning_grid.py [--methods rl2 laplace vrnn varibad glibrl] [--seeds 0 1 2 3 4]
        [--timesteps N] [--workers 2] [--runs DIR] [--out FILE] [--set KEY=VALUE ...]
        [--finetune-timesteps N] [--finetune-lr 3e-5]

``--timesteps`` defaults to the CLI's budget for the env; ``--set`` overrides a config key of every
run (as ``bayes-rl train --set``). ``--finetune-timesteps N`` adds the Laplace-VRNN paper's
protocols on each RL² run: post-hoc conversion (no training) and N steps of fine-tuning.
"""

from __future__ import annotations

from typing import Any

from learning import CONFIGS, Benchmark, grid_summary, run_benchmark

BENCHMARK = Benchmark("learning_grid", CONFIGS / "learning_grid.yaml", grid_summary)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv``); the results written."""
    return run_benchmark(BENCHMARK, __doc__, argv)


if __name__ == "__main__":
    main()
