"""``bayes-rl``: train, evaluate, plot and sweep Bayesian meta-RL agents from the command line.

    bayes-rl train BayesGrid-v0 --method rl2 --timesteps 300000 --out runs/grid-rl2
    bayes-rl evaluate runs/grid-rl2
    bayes-rl plot runs/grid-rl2 runs/grid-laplace
    bayes-rl sweep examples/configs/grid_sweep.yaml

Also ``python -m bayes_agents``. Each subcommand's ``--help`` documents its options.
"""

from __future__ import annotations

import argparse
import sys
import textwrap
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from bayes_agents import experiment
from bayes_agents.experiment import ConfigError, RunDirectoryError
from bayes_agents.experiment.config import with_added_keys
from bayes_agents.methods import method_names

EXAMPLES = """examples:
  bayes-rl train BayesGrid-v0 --method rl2 --timesteps 300000 --out runs/grid-rl2
  bayes-rl train BayesGrid-v0 --method laplace --set ppo.learning_rate=3e-4 -s policy.window=5 -o runs/lap
  bayes-rl train --resume --out runs/grid-rl2 --timesteps 600000      # continue (and extend) a run
  bayes-rl evaluate runs/grid-rl2 --n-tasks 1000
  bayes-rl plot runs/grid-rl2-seed* --out plots/
  bayes-rl sweep examples/configs/grid_sweep.yaml --address auto     # on a running Ray cluster
"""

SECURITY_NOTE = """\
security: RUN_DIR/model.zip is Stable-Baselines3's format, which unpickles Python objects when it is
loaded (bayes-rl evaluate, BayesPPO.load) and so can run code: evaluate or load only run directories
you trust. RUN_DIR/checkpoint.pt (train --resume) loads without executing code
(torch.load(weights_only=True)).
"""
TRAIN_DESCRIPTION = (
    """\
Train a belief policy with BayesPPO using the per-(env, method) defaults, then evaluate it against
the environment's references. Progress bar, metrics.jsonl (+ TensorBoard events if tensorboard is
installed), atomic checkpoints; Ctrl-C finishes the update, checkpoints and stops. Every config
value is checked (and the env and model built once) before RUN_DIR is touched.

Each periodic meta-test (every eval_every steps, on eval_tasks fixed test tasks) is printed as it
happens, above the progress bar, and appended to RUN_DIR/evaluations.jsonl:
  meta-test @ 120,000 steps: trial return 31.40 ± 1.20 (95% CI, 200 tasks), 84.4% of Bayes-optimal (37.21)
(the % of the exact Bayes-optimal trial return only where the env has one, e.g. BayesGrid-v0 up to
size 5). After training, a table of the final evaluation against the references.

"""
    + SECURITY_NOTE
)
EVALUATE_DESCRIPTION = (
    """\
Roll out one full trial on each of N fixed, seeded test tasks with the trained model, the
environment's reference policies (oracle, posterior sampling / Thompson sampling, random) and exact
references (grid Bayes-optimal); print a table and write RUN_DIR/evaluation.json. The model is
checked against RUN_DIR/config.json first.

"""
    + SECURITY_NOTE
)
PLOT_DESCRIPTION = """\
PNG figures of runs, grouped by env and method (the seeds of a group give the CIs):
  learning_curves.png        meta-test trial return against env steps: the periodic meta-tests
                             (evaluations.jsonl) and, as the last point, the final evaluation
                             (evaluation.json at its steps); several seeds: the mean and a 95%
                             Student-t CI band over seeds; one seed: its 95% CI over the test tasks.
                             Reference returns (oracle, Bayes-optimal, ...) as horizontal lines.
  inner_episode_returns.png  return per inner episode (evaluation.json) with 95% CI error bars
                             (over seeds; over the test tasks for one seed) against the references.
  cumulative_regret.png      bandit: expected cumulative regret over a trial.
  belief_over_trial.png, belief_training.png, grid_belief.png
                             posterior entropy / KL over a trial and during training, and the
                             belief over goal cells (belief methods that expose them).
Titles give the number of test tasks (and env steps of the final evaluation); legends are placed
outside the axes.
"""
SWEEP_DESCRIPTION = """\
Expand CONFIG's grid of configs x seeds, train and evaluate every run (Ray Tune; locally by default,
on a cluster with --address; or a local process pool with --executor local), then aggregate the
final scores over seeds with rliable (interquartile mean, stratified-bootstrap 95%% CIs) into
OUT/sweep_results.json, a printed table and OUT/sweep_iqm.png. Needs the [sweep] extra. Finished
runs are reused and interrupted ones resumed when a sweep is run again.
"""


class _Parser(argparse.ArgumentParser):
    """An argument parser whose usage errors are one line (``bayes-rl train: error: ...``), exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _positive_int(text: str) -> int:
    """An argparse type: an int >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an int >= 1, got {text!r}")
    return value


def _set_threads(threads: int | None) -> None:
    experiment.set_torch_threads(threads)


def _train_overrides(args: argparse.Namespace) -> dict[str, Any]:
    overrides = experiment.parse_overrides(args.set or [])
    for key, value in (
        ("seed", args.seed),
        ("timesteps", args.timesteps),
        ("n_envs", args.n_envs),
        ("device", args.device),
        ("checkpoint_every", args.checkpoint_every),
    ):
        if value is not None:
            overrides[key] = value
    return overrides


def cmd_train(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    run_dir = Path(args.out)
    file_config = experiment.load_config_file(args.config) if args.config else {}
    if args.resume and args.env_id is None and not args.config:
        # Plain --resume: the run's own config, with the flags given now on top (a config written
        # before a run key existed gets the value its run used, not today's default).
        file_config = with_added_keys(experiment.read_config(run_dir))
    config = experiment.resolve_config(
        args.env_id, args.method, file_config=file_config, overrides=_train_overrides(args)
    )
    print(
        f"{'resuming' if args.resume else 'training'} {config['method']} on {config['env_id']}, "
        f"seed {config['seed']}, {config['timesteps']:,} steps, {config['n_envs']} envs -> {run_dir}",
        flush=True,
    )
    result = experiment.train(
        config,
        run_dir,
        resume=args.resume,
        force=args.force,
        pause_at=args.pause_at,
        show_progress=not args.no_progress,
        verbose=args.verbose,
    )
    rate = (result.num_timesteps and result.seconds) and f", {result.seconds / 60:.1f} min"
    if not result.finished:
        reason = "interrupted" if result.interrupted else "paused"
        print(
            f"{reason} at {result.num_timesteps:,} steps{rate or ''}: checkpoint in "
            f"{run_dir / experiment.CHECKPOINT_FILE}; continue with: bayes-rl train --resume --out {run_dir}"
        )
        return 130 if result.interrupted else 0
    print(f"trained {result.num_timesteps:,} steps{rate or ''}; model in {run_dir / experiment.MODEL_FILE}")
    if not args.no_eval:
        report = experiment.evaluate_run(run_dir)
        print()
        print(experiment.format_evaluation(report))
        print(f"\nwritten {run_dir / experiment.EVALUATION_FILE}")
    return 0


def cmd_evaluate(args: argparse.Namespace) -> int:
    _set_threads(args.threads)
    report = experiment.evaluate_run(
        args.run_dir, n_tasks=args.n_tasks, seed=args.seed, references=not args.no_references, out=args.out
    )
    print(experiment.format_evaluation(report))
    print(f"\nwritten {args.out or Path(args.run_dir) / experiment.EVALUATION_FILE}")
    return 0


def cmd_plot(args: argparse.Namespace) -> int:
    from bayes_agents import plotting

    out = (
        Path(args.out)
        if args.out
        else (Path(args.run_dirs[0]) / "plots" if len(args.run_dirs) == 1 else Path("plots"))
    )
    written, skipped = plotting.plot_runs(args.run_dirs, out)
    for path in written:
        print(f"written {path}")
    for message in skipped:
        print(f"skipped: {message}")
    return 0 if written else 1


def cmd_sweep(args: argparse.Namespace) -> int:
    from bayes_agents import sweep

    spec = sweep.load_sweep(args.config, out=args.out, seeds=args.seeds)
    result = sweep.run_sweep(
        spec, executor=args.executor, address=args.address, workers=args.workers, reps=args.reps
    )
    print(sweep.format_table(result))
    plot = f" and {result['plot_path']}" if result.get("plot_path") else ""
    print(f"\nwritten {result['table_path']}{plot}")
    if result.get("plot_note"):
        print(f"no plot: {result['plot_note']}")
    return 0 if not result["failed"] else 1


def build_parser() -> argparse.ArgumentParser:
    """The ``bayes-rl`` argument parser (every option documented in ``--help``)."""
    formatter = argparse.RawDescriptionHelpFormatter
    parser = _Parser(
        prog="bayes-rl",
        description=__doc__.split("\n\n")[0].replace("``", ""),
        epilog=EXAMPLES,
        formatter_class=formatter,
    )
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)

    keys_help = textwrap.dedent(
        """\
        config keys (--config file and --set KEY=VALUE; later wins: defaults < file < --set < flags):
          run keys: {run}
          env.KEY     the environment's constants (e.g. env.size=7, env.split=test)
          ppo.KEY     BayesPPO / RecurrentPPO arguments (e.g. ppo.learning_rate=3e-4, ppo.n_steps=128)
          policy.KEY  policy and belief arguments (e.g. policy.hidden_size=64, policy.window=5)
        Unknown keys are rejected with the list of valid ones. The resolved config is written to
        RUN_DIR/config.json (a valid --config file).
        methods: {methods}
        """
    ).format(run=", ".join(experiment.RUN_KEYS), methods=", ".join(method_names()))
    train = commands.add_parser(
        "train",
        help="train one (env, method, seed) run with resumable checkpoints",
        description=TRAIN_DESCRIPTION,
        epilog=keys_help,
        formatter_class=formatter,
    )
    train.add_argument(
        "env_id",
        nargs="?",
        metavar="ENV_ID",
        help="environment id, e.g. BayesGrid-v0 (optional with --resume or a --config that names it)",
    )
    train.add_argument("--method", "-m", help=f"belief method: one of {method_names()} (default rl2)")
    train.add_argument("--seed", type=int, help="seed of the model and the training envs (default 0)")
    train.add_argument("--timesteps", "-t", type=int, help="total env steps (default: the env's budget)")
    train.add_argument("--out", "-o", required=True, metavar="RUN_DIR", help="run directory to write")
    train.add_argument("--config", "-c", metavar="FILE", help="YAML or JSON config file (keys below)")
    train.add_argument(
        "--set",
        "-s",
        action="append",
        metavar="KEY=VALUE",
        help="override one config key "
        "(repeatable); VALUE in YAML/JSON syntax, e.g. policy.embed_sizes=[64,64]",
    )
    train.add_argument(
        "--resume",
        action="store_true",
        help="continue from RUN_DIR's checkpoint (exactly); "
        "the config must match the run's (timesteps, not below the steps done, device and "
        "checkpoint_every may change)",
    )
    train.add_argument("--force", action="store_true", help="overwrite an existing run in RUN_DIR")
    train.add_argument("--n-envs", type=int, help="parallel training envs (default: per env)")
    train.add_argument("--device", help="torch device: cpu (default), cuda, auto")
    train.add_argument(
        "--checkpoint-every",
        type=int,
        metavar="STEPS",
        help="env steps between checkpoints (default 50000; always one at the end and on Ctrl-C)",
    )
    train.add_argument(
        "--pause-at",
        type=int,
        metavar="STEPS",
        help="checkpoint and stop at the first update "
        "boundary at or after STEPS (continue with --resume): for time-sliced jobs",
    )
    train.add_argument("--no-eval", action="store_true", help="skip the final evaluation")
    train.add_argument(
        "--no-progress", action="store_true", help="no progress bar, progress lines or meta-test lines"
    )
    train.add_argument(
        "--verbose", "-v", action="store_true", help="also print SB3's table of metrics per update"
    )
    train.add_argument(
        "--threads", type=_positive_int, help="torch threads, >= 1 (default: $OMP_NUM_THREADS or 1)"
    )
    train.set_defaults(handler=cmd_train)

    evaluate = commands.add_parser(
        "evaluate",
        help="meta-test a trained run against the references, write JSON",
        description=EVALUATE_DESCRIPTION,
        formatter_class=formatter,
    )
    evaluate.add_argument("run_dir", metavar="RUN_DIR", help="a directory written by bayes-rl train")
    evaluate.add_argument("--n-tasks", type=int, help="test tasks (default: the run's final_eval_tasks)")
    evaluate.add_argument("--seed", type=int, help="test-task seed (default: the run's eval_seed, 10000)")
    evaluate.add_argument(
        "--out",
        metavar="FILE",
        help="JSON file to write (default RUN_DIR/evaluation.json; never another file of a run directory)",
    )
    evaluate.add_argument("--no-references", action="store_true", help="evaluate the agent only")
    evaluate.add_argument(
        "--threads", type=_positive_int, help="torch threads, >= 1 (default: $OMP_NUM_THREADS or 1)"
    )
    evaluate.set_defaults(handler=cmd_evaluate)

    plot = commands.add_parser(
        "plot",
        help="PNG figures of one or more runs (needs matplotlib: the [plot] extra)",
        description=PLOT_DESCRIPTION,
        formatter_class=formatter,
    )
    plot.add_argument(
        "run_dirs", nargs="+", metavar="RUN_DIR", help="run directories (several seeds, methods)"
    )
    plot.add_argument(
        "--out",
        "-o",
        metavar="DIR",
        help="output directory (default RUN_DIR/plots for one run, ./plots for several)",
    )
    plot.set_defaults(handler=cmd_plot)

    sweep = commands.add_parser(
        "sweep",
        help="run a grid of configs x seeds on Ray Tune and aggregate with rliable",
        description=SWEEP_DESCRIPTION,
        epilog="CONFIG format: see examples/configs/grid_sweep.yaml (keys: out, seeds, base, grid, metric).",
        formatter_class=formatter,
    )
    sweep.add_argument("config", metavar="CONFIG", help="sweep YAML/JSON file")
    sweep.add_argument("--out", "-o", metavar="DIR", help="output directory (overrides the file's 'out')")
    sweep.add_argument("--seeds", type=int, nargs="+", help="seeds (overrides the file's 'seeds')")
    sweep.add_argument(
        "--executor",
        choices=("ray", "local"),
        default="ray",
        help="ray (default; Ray Tune) or local (a process pool, no Ray needed)",
    )
    sweep.add_argument(
        "--address", help="Ray cluster address (e.g. auto or ray://host:10001); default: a local Ray instance"
    )
    sweep.add_argument(
        "--workers", type=_positive_int, default=2, help="concurrent runs (default 2; one CPU each)"
    )
    sweep.add_argument(
        "--reps", type=_positive_int, default=2000, help="bootstrap resamples for the CIs (default 2000)"
    )
    sweep.set_defaults(handler=cmd_sweep)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``bayes-rl`` and ``python -m bayes_agents``; returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)

    def show_warning(message: Warning | str, category: type[Warning], *rest: Any, **kwargs: Any) -> None:
        print(f"bayes-rl {args.command}: warning: {message}", file=sys.stderr)

    try:
        with warnings.catch_warnings():
            warnings.showwarning = show_warning
            return int(args.handler(args) or 0)
    except (ConfigError, RunDirectoryError) as error:
        text = " ".join(str(error).split())  # one line
        print(f"bayes-rl {args.command}: error: {text}", file=sys.stderr)
        return 2
    except ImportError as error:
        print(f"bayes-rl {args.command}: error: {error}", file=sys.stderr)
        return 3
    except KeyboardInterrupt:
        # A second Ctrl-C (or one outside training): the last checkpoint written is kept as it was.
        print(f"bayes-rl {args.command}: aborted; earlier checkpoints are intact", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())


__all__ = ["build_parser", "main"]
