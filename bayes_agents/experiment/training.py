"""The training controller: train (or resume) one run, with checkpoints, pause and Ctrl-C handling.

Everything is validated before the run directory is touched: the config values
(:func:`~bayes_agents.experiment.config.check_values`), the run directory's state, and — by
building them once — the env and the model (a fresh run trains that very model); a resume reads
and checks its checkpoint first. Ctrl-C finishes the current update, writes a checkpoint and
stops; a second Ctrl-C aborts at once.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from stable_baselines3.common.callbacks import BaseCallback, CallbackList

from bayes_agents.experiment.checkpoint import (
    build_model,
    load_checkpoint,
    model_bytes,
    preserved_rng_state,
    restore_logger,
    restore_model,
    save_checkpoint,
)
from bayes_agents.experiment.config import (
    RESUMABLE_CHANGES,
    ConfigError,
    check_int,
    check_values,
    config_differences,
    jsonable,
)
from bayes_agents.experiment.evaluation import meta_test
from bayes_agents.experiment.runfiles import (
    CHECKPOINT_FILE,
    CONFIG_FILE,
    EVALUATIONS_FILE,
    METRICS_FILE,
    MODEL_FILE,
    atomic_write_bytes,
    atomic_write_text,
    check_run_dir,
    make_logger,
    prepare_run_dir,
    truncate_jsonl,
)
from bayes_agents.ppo import BayesPPO
from bayes_envs import references


def set_torch_threads(threads: int | None = None) -> int:
    """Set torch's threads as ``bayes-rl train`` does: ``threads``, else ``$OMP_NUM_THREADS``, else 1.

    Small belief networks run fastest on one thread; more threads mostly contend.

    :raises ValueError: ``threads`` is not an int >= 1.
    :return: the number of threads set.
    """
    import torch

    if threads is not None and (isinstance(threads, bool) or not isinstance(threads, int) or threads < 1):
        raise ValueError(f"threads must be an int >= 1 (or None for $OMP_NUM_THREADS or 1), got {threads!r}")
    if threads is None:
        try:
            threads = max(1, int(os.environ.get("OMP_NUM_THREADS", "1") or 1))
        except ValueError:
            threads = 1
    torch.set_num_threads(threads)
    return threads


#: The label of the exact Bayes-optimal returns in :func:`bayes_envs.references.exact_references`.
BAYES_OPTIMAL = "Bayes-optimal (exact)"


def meta_test_line(steps: int, summary: dict[str, Any], bayes_optimal: float | None = None) -> str:
    """The line ``bayes-rl train`` prints for a periodic meta-test, e.g. ``meta-test @ 120,000 steps:
    trial return 31.40 ± 1.20 (95% CI, 200 tasks), 78.5% of Bayes-optimal (40.00)``.

    :param summary: the evaluation summary (``trial_return_mean``, ``trial_return_ci95``, ``n_tasks``;
        ``percent_of_bayes_optimal`` if known).
    :param bayes_optimal: the exact Bayes-optimal trial return the percentage refers to.
    """
    ci = summary.get("trial_return_ci95")
    ci_text = f" ± {ci:.2f}" if ci is not None and np.isfinite(ci) else ""
    line = (
        f"meta-test @ {steps:,} steps: trial return {summary['trial_return_mean']:.2f}{ci_text} "
        f"(95% CI, {summary['n_tasks']} tasks)"
    )
    percent = summary.get("percent_of_bayes_optimal")
    if percent is not None and bayes_optimal is not None:
        line += f", {percent:.1f}% of Bayes-optimal ({bayes_optimal:.2f})"
    return line


class _PauseTraining(Exception):
    """Raised at an update boundary, after a checkpoint, to stop ``learn`` (pause or Ctrl-C)."""


class InnerEpisodeReturns(BaseCallback):
    """Logs the mean return of each inner episode over the rollout (``rollout/inner_return_<k>``, 1-based)."""

    def __init__(self) -> None:
        super().__init__()
        self.sums: dict[int, float] = {}
        self.counts: dict[int, int] = {}

    def _on_rollout_start(self) -> None:
        self.sums, self.counts = {}, {}

    def _on_step(self) -> bool:
        for info in self.locals["infos"]:
            if info.get("inner_done"):
                episode = int(info["inner_episode"]) + 1
                self.sums[episode] = self.sums.get(episode, 0.0) + float(info["inner_return"])
                self.counts[episode] = self.counts.get(episode, 0) + 1
        return True

    def _on_rollout_end(self) -> None:
        for episode in sorted(self.sums):
            self.logger.record(f"rollout/inner_return_{episode}", self.sums[episode] / self.counts[episode])


class RunController(BaseCallback):
    """At each update boundary: periodic meta-test, checkpoint, pause / Ctrl-C handling, progress."""

    def __init__(
        self,
        run_dir: Path,
        config: dict[str, Any],
        progress: dict[str, Any],
        pause_at: int | None,
        show_progress: bool,
    ) -> None:
        super().__init__()
        self.run_dir, self.config, self.progress = run_dir, config, progress
        self.pause_at = pause_at
        self.show_progress = show_progress
        self.interrupted = False
        self.paused_at: int | None = None
        self.bar: Any = None
        self._last_print = 0.0
        self._reference: float | None = None
        self._reference_computed = False

    def bayes_optimal_return(self) -> float | None:
        """The exact Bayes-optimal expected trial return of the run's env, or ``None`` where none is
        known (other envs, or env constants the references do not support); computed once per run."""
        if not self._reference_computed:
            self._reference_computed = True
            try:
                with preserved_rng_state():  # the training's random streams stay untouched
                    exact = references.exact_references(self.config["env_id"], self.config["env"])
            except ValueError:  # env constants the references do not support
                exact = {}
            if BAYES_OPTIMAL in exact:
                self._reference = float(sum(exact[BAYES_OPTIMAL]))
        return self._reference

    # progress output
    def _on_training_start(self) -> None:
        if not self.show_progress:
            return
        try:
            from tqdm.auto import tqdm
        except ImportError:
            return
        # disable=None: no bar when stdout is not a terminal (logs, CI); plain lines then.
        self.bar = tqdm(
            total=self.config["timesteps"],
            initial=self.model.num_timesteps,
            unit="step",
            dynamic_ncols=True,
            mininterval=0.5,
            disable=None,
        )
        if self.bar.disable:
            self.bar = None

    def _progress(self, force: bool = False) -> None:
        if not self.show_progress:
            return
        now = time.monotonic()
        if not force and now - self._last_print < (0.5 if self.bar is not None else 10.0):
            return  # called every env step: the throttle comes first
        self._last_print = now
        returns = [info["r"] for info in self.model.ep_info_buffer or []]
        trial = f"trial return {np.mean(returns):.2f}" if returns else "trial return -"
        if self.bar is not None:
            self.bar.n = min(self.model.num_timesteps, self.bar.total)
            self.bar.set_postfix_str(trial, refresh=True)
        else:
            steps = f"{self.model.num_timesteps:>10,} / {self.config['timesteps']:,} steps"
            print(f"{steps}  {trial}", flush=True)

    def _announce(self, line: str) -> None:
        """Print a line of its own: above the bar when one is shown (tqdm.write), else plainly."""
        if not self.show_progress:
            return
        if self.bar is not None:
            self.bar.write(line)
        else:
            print(line, flush=True)

    def _on_training_end(self) -> None:
        self._progress(force=True)
        self.close()

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None

    # update boundaries
    def _on_rollout_start(self) -> None:
        steps = int(self.model.num_timesteps)
        eval_every = self.config["eval_every"]
        if eval_every and steps >= self.progress["next_eval"]:
            self._evaluate(steps)
            self.progress["next_eval"] = (steps // eval_every + 1) * eval_every
        stop = self.interrupted or (self.pause_at is not None and steps >= self.pause_at)
        if stop or steps - self.progress["last_checkpoint"] >= self.config["checkpoint_every"]:
            self.progress["last_checkpoint"] = steps
            save_checkpoint(self.run_dir / CHECKPOINT_FILE, self.model, self.config, self.progress)
        if stop:
            self.paused_at = steps
            raise _PauseTraining

    def _evaluate(self, steps: int) -> None:
        """Meta-test the model on the run's fixed test tasks: log it, append it to evaluations.jsonl
        (with ``percent_of_bayes_optimal`` where the env has an exact Bayes-optimal return) and print
        its :func:`meta_test_line` (above the progress bar; nothing without progress output)."""
        config = self.config
        summary = meta_test(self.model, config, config["eval_tasks"], config["eval_seed"]).summary()
        self.logger.record("eval/trial_return", summary["trial_return_mean"])
        for episode, value in enumerate(summary["episode_return_mean"], start=1):
            self.logger.record(f"eval/inner_return_{episode}", value)
        if "final_regret_mean" in summary:
            self.logger.record("eval/final_regret", summary["final_regret_mean"])
        reference = self.bayes_optimal_return()
        if reference is not None and reference > 0:
            summary["percent_of_bayes_optimal"] = 100.0 * summary["trial_return_mean"] / reference
            self.logger.record("eval/percent_of_bayes_optimal", summary["percent_of_bayes_optimal"])
        with open(self.run_dir / EVALUATIONS_FILE, "a") as stream:
            stream.write(json.dumps({"timesteps": steps, **jsonable(summary)}) + "\n")
        self._announce(meta_test_line(steps, summary, reference))

    def _on_step(self) -> bool:
        self._progress()
        return True


@contextlib.contextmanager
def graceful_interrupt(controller: RunController) -> Iterator[None]:
    """First Ctrl-C: finish the update, checkpoint, stop. Second Ctrl-C: the usual KeyboardInterrupt.

    The SIGINT handler installed before is put back afterwards (whatever it was: Python's default,
    ``SIG_IGN`` under ``nohup``, or a caller's own).
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def handler(signum: int, frame: Any) -> None:
        if controller.interrupted:
            raise KeyboardInterrupt
        controller.interrupted = True
        print(
            "\ninterrupted: finishing the current update, then writing a checkpoint (Ctrl-C again to abort)",
            file=sys.stderr,
            flush=True,
        )

    previous = signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)


@dataclass
class TrainResult:
    """What :func:`train` did: the run directory, steps done, and whether it finished or paused."""

    run_dir: Path
    num_timesteps: int
    finished: bool
    interrupted: bool
    seconds: float
    model: BayesPPO


def _resume_model(config: dict[str, Any], run_dir: Path) -> tuple[BayesPPO, dict[str, Any]]:
    """The checkpoint's model after checking that ``config`` may continue it (nothing written)."""
    payload = load_checkpoint(run_dir / CHECKPOINT_FILE)
    differences = config_differences(payload["config"], config)
    if differences:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} with another config; differences (saved -> requested): "
            + "; ".join(differences)
            + f". Only {sorted(RESUMABLE_CHANGES)} may change on resume."
        )
    done = payload["num_timesteps"]
    if config["timesteps"] < done:
        raise ConfigError(
            f"cannot resume {str(run_dir)!r} with timesteps {config['timesteps']:,}: the run has "
            f"already done {done:,} steps; give --timesteps >= {done:,} "
            f"(or leave it out to keep {payload['config']['timesteps']:,})"
        )
    return restore_model(payload, config["device"]), payload


def train(
    config: dict[str, Any],
    run_dir: str | os.PathLike[str],
    *,
    resume: bool = False,
    force: bool = False,
    pause_at: int | None = None,
    show_progress: bool = True,
    verbose: bool = False,
    callbacks: list[BaseCallback] | None = None,
) -> TrainResult:
    """Train (or resume) one run of a resolved config into ``run_dir``.

    :param config: from :func:`~bayes_agents.experiment.config.resolve_config`. With ``resume`` it
        must equal the checkpoint's config except for ``timesteps`` (not below the steps done),
        ``device`` and ``checkpoint_every``.
    :param resume: continue from ``run_dir/checkpoint.pt``, exactly (see :mod:`.checkpoint`).
    :param force: start afresh in a non-empty ``run_dir`` (its run files are deleted).
    :param pause_at: checkpoint and stop at the first update boundary at or after this many steps
        (``resume`` continues): for time-sliced jobs.
    :param callbacks: extra SB3 callbacks (called after the run's own).
    :raises ConfigError: a bad value, an env or model that cannot be built, or a resume config that
        differs (the message lists the differences); nothing is written then.
    :raises RunDirectoryError: existing run without ``force``, nothing to resume, or a corrupt checkpoint.
    """
    run_dir = Path(run_dir)
    if pause_at is not None:
        check_int("pause_at", pause_at, 0)
    check_values(config)
    check_run_dir(run_dir, resume, force)
    resume_step = None
    if resume:
        model, payload = _resume_model(config, run_dir)
        progress = dict(payload["progress"])
        resume_step = payload["num_timesteps"]
    else:
        model = build_model(config)  # validates the env and policy values before anything is written
        progress = {"last_checkpoint": 0, "next_eval": 0}
        payload = None
    prepare_run_dir(run_dir, resume, force)
    if resume:
        truncate_jsonl(run_dir / METRICS_FILE, "timesteps", resume_step)
        truncate_jsonl(run_dir / EVALUATIONS_FILE, "timesteps", resume_step)
    atomic_write_text(run_dir / CONFIG_FILE, json.dumps(config, indent=2) + "\n")
    logger = make_logger(run_dir, verbose, resume_step)
    if payload is not None:
        restore_logger(logger, payload)
    model.set_logger(logger)
    controller = RunController(run_dir, config, progress, pause_at, show_progress)
    callback = CallbackList([InnerEpisodeReturns(), controller, *(callbacks or [])])
    remaining = config["timesteps"] - model.num_timesteps
    start = time.perf_counter()
    finished = False
    try:
        if remaining > 0:
            with graceful_interrupt(controller):
                model.learn(remaining, callback=callback, reset_num_timesteps=False)
        finished = True
    except _PauseTraining:
        pass
    finally:
        controller.close()
        logger.close()
    seconds = time.perf_counter() - start
    if finished:
        progress["last_checkpoint"] = int(model.num_timesteps)
        save_checkpoint(run_dir / CHECKPOINT_FILE, model, config, progress)
        atomic_write_bytes(run_dir / MODEL_FILE, model_bytes(model))
    return TrainResult(run_dir, int(model.num_timesteps), finished, controller.interrupted, seconds, model)
