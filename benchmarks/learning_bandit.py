"""Learning on BayesBandit-v0: every method as ``bayes-rl train BayesBandit-v0 --method M`` trains it.

Runs the sweep ``examples/configs/learning_bandit.yaml`` (methods rl2, laplace, vrnn, varibad,
glibrl × seeds 0–4 at the CLI's defaults: trained on the train split, α = 0.2) with the sweep's
local executor: finished runs are reused, interrupted ones resume. Each run is meta-tested on
1,000 fixed tasks of the train split (``evaluation.json``) and of the test split, α = 0.3
(``evaluation_test.json``), next to Thompson sampling and the greedy posterior mean on the same
tasks. Writes per method the expected cumulative regret at t = 50 per seed, mean ± 95% Student-t
CI, the worst seed and worst seed / Thompson sampling on both splits, training minutes per run and
the sweep's IQM (train split) to ``benchmarks/results/learning_bandit.json`` (then run
``python benchmarks/results_tables.py`` to update the README and docs tables).

    python benchmarks/learning_bandit.py [--methods rl2 laplace vrnn varibad glibrl] [--seeds 0 1 2 3 4]
        [--timesteps N] [--workers 2] [--runs DIR] [--out FILE] [--set KEY=VALUE ...]
        [--finetune-timesteps N] [--finetune-lr 3e-5]

Options as in ``learning_grid.py``.
"""

from __future__ import annotations

from typing import Any

from learning import CONFIGS, TEST_SPLIT, Benchmark, bandit_summary, run_benchmark

BENCHMARK = Benchmark("learning_bandit", CONFIGS / "learning_bandit.yaml", bandit_summary, splits=TEST_SPLIT)


def main(argv: list[str] | None = None) -> dict[str, Any]:
    """Run the benchmark with the command line ``argv`` (default ``sys.argv``); the results written."""
    return run_benchmark(BENCHMARK, __doc__, argv)


if __name__ == "__main__":
    main()
