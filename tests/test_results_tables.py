"""The generated results tables (``benchmarks/results_tables.py``) and the learning benchmarks'
aggregation (``benchmarks/learning.py``): the README and docs tables equal the rendering of the
committed results files, and the statistics are those computed by hand."""

from __future__ import annotations

import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from scipy import stats
from test_cli import TINY as CLI_TINY

from bayes_envs.evaluation import EvaluationResult

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"
if str(BENCHMARKS) not in sys.path:
    sys.path.append(str(BENCHMARKS))

import bandit_regret_profile  # noqa: E402
import grid_episode2  # noqa: E402
import learning  # noqa: E402
import main_job  # noqa: E402
import metaworld_reach_behaviour  # noqa: E402
import results_tables  # noqa: E402

GRID = "BayesGrid-v0"
BANDIT = "BayesBandit-v0"
OPTIMAL = [4.0, 11.0, 11.0, 11.0]  # a Bayes-optimal return per inner episode (trial 37)
ORACLE = [11.0, 11.0, 11.0, 11.0]
#: The CLI tests' tiny run (4 envs × 15 steps per PPO update).
TINY = CLI_TINY


def summary(env_id: str, episodes: list[float], regret: float | None = None) -> dict:
    """A real ``EvaluationResult.summary()`` of two tasks with these returns per inner episode (and
    this cumulative regret at the horizon)."""
    returns = np.tile(np.asarray(episodes, np.float64), (2, 1))
    cumulative = None if regret is None else np.tile(np.linspace(0, regret, 50), (2, 1))
    result = EvaluationResult(env_id, "policy", 10_000, returns, np.zeros((2, 60)), cumulative)
    return result.summary()


def write_run(
    run_dir: Path,
    report: dict,
    name: str = "evaluation.json",
    elapsed: list[float] | None = None,
) -> Path:
    """A run directory with ``report`` as its evaluation and ``time/time_elapsed`` metrics."""
    run_dir.mkdir(parents=True, exist_ok=True)
    (run_dir / name).write_text(json.dumps(report))
    if elapsed is not None:
        records = [{"timesteps": 60 * (i + 1), "time/time_elapsed": value} for i, value in enumerate(elapsed)]
        (run_dir / "metrics.jsonl").write_text("".join(json.dumps(r) + "\n" for r in records))
    return run_dir


def grid_report(episodes: list[float], steps: int = 1000) -> dict:
    return {
        "config": {"env_id": GRID, "method": "rl2"},
        "num_timesteps": steps,
        "agent": summary(GRID, episodes),
        "references": {
            "oracle (known goal)": summary(GRID, ORACLE),
            "posterior sampling": summary(GRID, [3.0, 8.0, 10.0, 11.0]),
        },
        "exact": {"Bayes-optimal (exact)": OPTIMAL},
    }


def grid_runs(tmp_path: Path) -> dict[str, dict[int, Path]]:
    """Three RL² seeds with trial returns 30, 33 and 36 (mean 33, sd 3)."""
    episodes = {0: [3.0, 9.0, 9.0, 9.0], 1: [3.0, 10.0, 10.0, 10.0], 2: [3.0, 11.0, 11.0, 11.0]}
    # Seed 1 was resumed: SB3's clock restarts at each learn call (60 s + 20 s in all).
    elapsed = {0: [0.0, 30.0, 60.0], 1: [0.0, 30.0, 60.0, 10.0, 20.0], 2: [0.0, 60.0, 120.0]}
    return {
        "rl2": {
            seed: write_run(tmp_path / "runs" / f"seed_{seed}", grid_report(eps), elapsed=elapsed[seed])
            for seed, eps in episodes.items()
        }
    }


def test_learning_aggregation_computes_seed_statistics(tmp_path: Path) -> None:
    result = learning.grid_summary(grid_runs(tmp_path))
    row = result["methods"]["rl2"]
    half_width = stats.t.ppf(0.975, 2) * 3.0 / np.sqrt(3)  # 4.3027 × sd 3 / √3 = 7.4524
    assert row["seeds"] == [0, 1, 2]
    assert row["trial_return"]["per_seed"] == pytest.approx([30.0, 33.0, 36.0])
    assert row["trial_return"]["mean"] == pytest.approx(33.0)
    assert row["trial_return"]["ci95"] == pytest.approx(half_width)
    assert half_width == pytest.approx(7.4524, abs=1e-4)
    assert (row["trial_return"]["worst_seed"], row["trial_return"]["worst"]) == (0, pytest.approx(30.0))
    percent = row["percent_of_bayes_optimal"]
    assert percent["per_seed"] == pytest.approx([100 * 30 / 37, 100 * 33 / 37, 100 * 36 / 37])
    assert percent["mean"] == pytest.approx(100 * 33 / 37)
    assert percent["ci95"] == pytest.approx(100 * half_width / 37)
    assert (percent["worst_seed"], percent["worst"]) == (0, pytest.approx(100 * 30 / 37))
    # Episodes 2–4 against the oracle's 33 on the same tasks.
    later = row["later_episodes_percent_of_oracle"]
    assert later["per_seed"] == pytest.approx([100 * 27 / 33, 100 * 30 / 33, 100.0])
    assert row["episode_returns"]["mean"] == pytest.approx([3.0, 10.0, 10.0, 10.0])
    assert row["episode_returns"]["ci95"][0] == pytest.approx(0.0)
    assert row["train_minutes"] == pytest.approx([1.0, 80 / 60, 2.0])
    assert row["env_steps"] == [1000, 1000, 1000]
    assert result["bayes_optimal_trial_return"] == pytest.approx(37.0)
    assert result["references"]["posterior sampling"]["trial_return_mean"] == pytest.approx(32.0)
    # One seed: no interval.
    assert learning.seed_stats({4: 1.0})["ci95"] is None


def bandit_runs(tmp_path: Path) -> dict[str, dict[int, Path]]:
    """Two seeds; regret at t = 50 of 6 and 10 (train split), 7 and 12 (test split)."""
    runs = {}
    for seed, regrets in {0: (6.0, 7.0), 1: (10.0, 12.0)}.items():
        run_dir = tmp_path / "bandit" / f"seed_{seed}"
        for name, regret, thompson in (
            ("evaluation.json", regrets[0], 5.0),
            ("evaluation_test.json", regrets[1], 6.0),
        ):
            report = {
                "config": {"env_id": BANDIT, "method": "rl2"},
                "num_timesteps": 400,
                "agent": summary(BANDIT, [0.5] * 50, regret),
                "references": {
                    "Thompson sampling": summary(BANDIT, [0.5] * 50, thompson),
                    "greedy posterior mean": summary(BANDIT, [0.5] * 50, 4.0),
                },
                "exact": {},
            }
            write_run(run_dir, report, name, elapsed=[0.0, 30.0])
        runs[seed] = run_dir
    return {"rl2": runs}


def test_bandit_aggregation_computes_regret_statistics(tmp_path: Path) -> None:
    result = learning.bandit_summary(bandit_runs(tmp_path))
    row = result["methods"]["rl2"]
    half_width = stats.t.ppf(0.975, 1) * np.std([6.0, 10.0], ddof=1) / np.sqrt(2)  # 12.706 × 2.828 / 1.414
    assert row["regret"]["train"]["mean"] == pytest.approx(8.0)
    assert row["regret"]["train"]["ci95"] == pytest.approx(half_width)
    assert half_width == pytest.approx(25.4124, abs=1e-3)
    # Lower is better: the worst seed has the highest regret.
    assert (row["regret"]["train"]["worst_seed"], row["regret"]["train"]["worst"]) == (1, pytest.approx(10.0))
    assert row["regret"]["test"]["per_seed"] == pytest.approx([7.0, 12.0])
    assert row["worst_vs_thompson"] == {"train": pytest.approx(2.0), "test": pytest.approx(2.0)}
    assert result["references"]["test"]["Thompson sampling"]["final_regret_mean"] == pytest.approx(6.0)


def test_committed_tables_match_the_committed_results_files() -> None:
    assert results_tables.check() == []


def _results(tmp_path: Path, name: str, summary_result: dict, benchmark: str) -> Path:
    results = tmp_path / "results"
    results.mkdir(exist_ok=True)
    payload = {
        "format": learning.FORMAT,
        "benchmark": benchmark,
        "command": f"python benchmarks/{benchmark}.py",
        "git": {"commit": "0123456789abcdef", "dirty": False},
        **summary_result,
    }
    for row in payload["methods"].values():
        row["iqm"] = {"iqm": 33.0, "iqm_ci": [30.0, 36.0], "mean": 33.0, "mean_ci": [30.0, 36.0], "n_runs": 3}
    (results / name).write_text(json.dumps(payload))
    return results


def test_rendered_tables_hold_the_hand_computed_statistics(tmp_path: Path) -> None:
    results = _results(
        tmp_path, "learning_grid.json", learning.grid_summary(grid_runs(tmp_path)), "learning_grid"
    )
    _results(
        tmp_path, "learning_bandit.json", learning.bandit_summary(bandit_runs(tmp_path)), "learning_bandit"
    )
    # An earlier layout of a learning results file is skipped.
    (results / "learning_grid_old.json").write_text(json.dumps({"benchmark": "learning_grid", "trial": {}}))
    # A main-job results file from three synthetic runs (trial returns 30, 33, 36).
    runs = tmp_path / "main_job"
    for seed, total in enumerate([30.0, 33.0, 36.0]):
        write_run(runs / f"seed{seed}", grid_report([3.0, *[(total - 3) / 3] * 3], steps=1_000_320))
    main = main_job.summarize([0, 1, 2], runs, {0: 80.0, 1: 82.0, 2: None})
    (results / "main_job_1m.json").write_text(
        json.dumps({"command": "bayes-rl train", "seeds": [0, 1, 2], **main})
    )

    blocks = results_tables.render_blocks(results)
    grid = blocks["learning-grid"]
    assert (
        "| RL² | 1k | 3 | 33.00 ± 7.45 | 89.2% | seed 0: 81.1% | 90.9% | 33.00 [30.00, 36.00] | 1.4 |" in grid
    )
    assert "| posterior sampling (reference) | – | – | 32.00 | 86.5% |" in grid
    assert "learning_grid_old" not in grid
    assert "| RL² (1k) | 3.00 ± 0.00 | 10.00 ± 2.48 |" in blocks["learning-grid-episodes"]
    bandit = blocks["learning-bandit"]
    assert (
        "| RL² | 400 | 2 | 8.00 ± 25.41 | seed 1: 10.00 | 9.50 ± 31.77 | seed 1: 12.00 | 2.00 / 2.00 |"
        in bandit
    )
    assert "| Thompson sampling (reference) | – | – | 5.00 ± 0.00 |" in bandit
    summary_table = blocks["main-job-summary"]
    assert (
        "| `bayes-rl train` | 1M | 3 | 33.00 ± 7.45 | 89.2% | seed 0: 81.1% | 81 | – | `main_job_1m.json` |"
        in summary_table
    )
    assert "| mean ± 95% CI | **33.00 ± 7.45** | **89.2%** (worst seed 0: 81.1%) |" in blocks["main-job"]
    assert "| 2 | 36.00 | 97.3% | 3.00 / 11.00 / 11.00 / 11.00 | – |" in blocks["main-job"]
    # No results file: a one-line note naming the command.
    assert "python benchmarks/train_throughput.py" in blocks["train-throughput"]
    assert "\n" not in blocks["train-throughput"]


def test_a_method_file_supersedes_that_methods_rows_in_the_other_files(tmp_path: Path) -> None:
    summary = learning.grid_summary(grid_runs(tmp_path))
    results = _results(tmp_path, "learning_grid.json", summary, "learning_grid")
    # learning_grid_rl2.json: RL² re-run at new defaults, returns 3 higher on every seed.
    payload = json.loads((results / "learning_grid.json").read_text())
    payload["methods"]["vrnn"] = json.loads(json.dumps(payload["methods"]["rl2"]))
    (results / "learning_grid.json").write_text(json.dumps(payload))
    newer = json.loads(json.dumps(payload))
    del newer["methods"]["vrnn"]
    trial = newer["methods"]["rl2"]["trial_return"]
    trial["per_seed"] = [value + 3.0 for value in trial["per_seed"]]
    trial["mean"] += 3.0
    (results / "learning_grid_rl2.json").write_text(json.dumps({**newer, "command": "rerun"}))
    grid = results_tables.render_blocks(results)["learning-grid"]
    assert grid.count("| RL² |") == 1 and grid.count("| VRNN |") == 1
    assert "| RL² | 1k | 3 | 36.00 ± 7.45 |" in grid
    assert "| VRNN | 1k | 3 | 33.00 ± 7.45 |" in grid
    assert "This file's RL² row (earlier defaults) is superseded by `learning_grid_rl2.json`." in grid
    # A file whose every row is superseded is left out.
    (results / "learning_grid.json").write_text(
        json.dumps({**payload, "methods": {"rl2": payload["methods"]["rl2"]}})
    )
    grid = results_tables.render_blocks(results)["learning-grid"]
    assert "benchmarks/results/learning_grid.json" not in grid and "`rerun`" in grid


def test_check_fails_when_a_number_in_a_block_differs(tmp_path: Path) -> None:
    documents = tuple(shutil.copy(path, tmp_path / path.name) for path in results_tables.DOCUMENTS)
    documents = tuple(Path(path) for path in documents)
    readme = documents[0]
    text = readme.read_text()
    begin = text.index("<!-- results:main-job-summary:begin -->")
    figure = re.search(r"\d+\.\d+ ± ", text[begin:]).group(0)  # the first mean ± CI of the block
    changed = f"{float(figure.split()[0]) + 0.01:.2f} ± "
    edited = text[:begin] + text[begin:].replace(figure, changed, 1)
    assert edited != text
    readme.write_text(edited)
    assert results_tables.check(documents) == [f"{readme}: main-job-summary"]
    assert results_tables.main(["--check", *map(str, documents)]) == 1
    # Writing puts the rendering back; text outside the blocks is left alone.
    readme.write_text(edited.replace("## Results", "## Results (edited heading)"))
    assert results_tables.write(documents) == [f"{readme}: main-job-summary"]
    assert results_tables.check(documents) == []
    assert "## Results (edited heading)" in readme.read_text()
    # A block name the renderer does not know is an error, not a silent pass.
    readme.write_text(text + "\n<!-- results:nope:begin -->\n<!-- results:nope:end -->\n")
    with pytest.raises(ValueError, match="nope"):
        results_tables.check(documents)


def test_learning_grid_runs_the_sweep_end_to_end(tmp_path: Path) -> None:
    import learning_grid

    runs, out = tmp_path / "runs", tmp_path / "learning_grid.json"
    argv = ["--methods", "rl2", "laplace", "--seeds", "0", "1", "--timesteps", "240", "--workers", "1"]
    argv += ["--runs", str(runs), "--out", str(out), "--finetune-timesteps", "120", "--set", *TINY]
    result = learning_grid.main(argv)
    assert json.loads(out.read_text()) == json.loads(json.dumps(result))
    assert list(result["methods"]) == ["rl2", "laplace", "laplace post-hoc", "laplace fine-tuned"]
    assert result["format"] == learning.FORMAT and result["failed"] == []
    assert result["command"].startswith("python benchmarks/learning_grid.py --methods rl2 laplace")
    assert result["git"]["commit"] is None or len(result["git"]["commit"]) == 40
    rl2 = result["methods"]["rl2"]
    assert rl2["seeds"] == [0, 1] and rl2["env_steps"] == [240, 240]
    assert result["methods"]["laplace fine-tuned"]["env_steps"] == [360, 360]
    # The values are the runs' own meta-tests (the CLI's evaluation.json), run by the sweep.
    sweep_dir = runs / GRID / "method=rl2"
    for seed, value in zip(rl2["seeds"], rl2["trial_return"]["per_seed"], strict=True):
        report = json.loads((sweep_dir / f"seed_{seed}" / "evaluation.json").read_text())
        assert report["config"]["method"] == "rl2" and report["config"]["timesteps"] == 240
        assert value == report["agent"]["trial_return_mean"]
    table = json.loads((runs / "sweep_results.json").read_text())["table"]
    assert rl2["iqm"]["iqm"] == table["method=rl2"]["iqm"]
    assert all(row["iqm"] is not None for row in result["methods"].values())
    assert "RL²" in results_tables.render_learning(result, "learning_grid.json")
    # Finished runs and evaluations are reused.
    model = sweep_dir / "seed_0" / "model.zip"
    stamp = model.stat().st_mtime_ns
    again = learning_grid.main(argv)
    assert model.stat().st_mtime_ns == stamp
    assert again["methods"]["rl2"]["trial_return"] == rl2["trial_return"]


def test_finetuning_continues_with_the_rl2_runs_normalisation(tmp_path: Path) -> None:
    from bayes_agents import experiment, laplace_from_rl2

    overrides = experiment.parse_overrides([*TINY, "eval_every=0", "norm_reward=true"])
    config = experiment.resolve_config("BayesGrid-v0", "rl2", overrides={**overrides, "timesteps": 240})
    experiment.train(config, tmp_path / "run", show_progress=False)
    rl2 = experiment.load_model(tmp_path / "run")
    trained_count = rl2.get_vec_normalize_env().ret_rms.count
    model = laplace_from_rl2(rl2, window=1, covariance="diag", variant="sum_precision")
    learning.finetune(model, config, 60, 1e-4)
    # Fresh statistics would hold only the fine-tuning's 60 steps (plus SB3's 1e-4 prior count).
    assert model.get_vec_normalize_env().ret_rms.count == pytest.approx(trained_count + 60)


def test_learning_mujoco_runs_the_sweep_and_the_stock_ppo_baseline_end_to_end(tmp_path: Path) -> None:
    pytest.importorskip("mujoco")
    import learning_mujoco

    import bayes_envs
    from bayes_envs.evaluation import evaluate

    env_id = "HalfCheetahDir-v0"
    sweep_file = tmp_path / "sweep.yaml"
    sweep_file.write_text(
        json.dumps(
            {
                "out": str(tmp_path / "runs"),
                "seeds": [0],
                "base": {
                    "timesteps": 400,
                    "n_envs": 2,
                    "eval_every": 0,
                    "final_eval_tasks": 4,
                    "ppo": {"batch_size": 400},
                },
                "grid": {"method": ["rl2"], "env_id": [env_id]},
            }
        )
    )
    out = tmp_path / "results" / "learning_mujoco.json"
    result = learning_mujoco.main(["--sweep", str(sweep_file), "--out", str(out), "--workers", "1"])
    assert result["env_id"] == env_id and result["failed"] == []
    methods = result["methods"]  # one env: its summary at the top level
    assert list(methods) == ["rl2", learning_mujoco.STOCK_PPO]
    for row in methods.values():
        assert row["env_steps"] == [400] and len(row["task_direction_rate"]["mean"]) == 2
        report = json.loads((Path(row["run_dirs"][0]) / "evaluation_test.json").read_text())
        assert row["trial_return"]["per_seed"] == [report["agent"]["trial_return_mean"]]
    assert (out.parent / "learning_mujoco" / env_id / "learning_curves.png").is_file()
    assert "stock PPO" in results_tables.render_learning(result, "learning_mujoco.json")
    # The stock baseline's meta-test is its model stepped on the plain observations by hand.
    from stable_baselines3 import PPO
    from stable_baselines3.common.vec_env import VecNormalize

    run_dir = tmp_path / "runs" / env_id / "stock_ppo" / "seed_0"
    model = PPO.load(run_dir / "model.zip", device="cpu")
    plain = bayes_envs.make_vec(env_id, 4, seed=10000, rl2_inputs=False, monitor=False, split="test")
    normalizer = VecNormalize.load(str(run_dir / "vec_normalize.pkl"), plain)
    normalizer.training = False
    observation, returns = plain.reset(), np.zeros((4, 2))
    for _ in range(2 * 200):
        action, _ = model.predict(normalizer.normalize_obs(observation), deterministic=True)
        observation, _, _, infos = plain.step(action)
        for i, info in enumerate(infos):
            if info["inner_done"]:
                returns[i, info["inner_episode"]] = info["inner_return"]
    stock = learning_mujoco.StockPolicy(model, normalizer)
    evaluated = evaluate(stock, env_id, n_tasks=4, seed=10000, split="test")
    np.testing.assert_allclose(evaluated.episode_returns, returns, rtol=1e-5)
    report = json.loads((run_dir / "evaluation_test.json").read_text())
    np.testing.assert_allclose(report["agent"]["episode_return_mean"], returns.mean(0), rtol=1e-5)

    # Without its meta-tests a trained baseline is evaluated again, not retrained.
    stamp = (run_dir / "model.zip").stat().st_mtime_ns
    for name in ("evaluation.json", "evaluation_test.json"):
        (run_dir / name).unlink()
    again = learning_mujoco.main(["--sweep", str(sweep_file), "--out", str(out), "--workers", "1"])
    assert (run_dir / "model.zip").stat().st_mtime_ns == stamp
    assert (
        again["methods"][learning_mujoco.STOCK_PPO]["trial_return"]
        == methods[learning_mujoco.STOCK_PPO]["trial_return"]
    )


def test_learning_sac_trains_meta_tests_and_reuses_runs_end_to_end(tmp_path: Path) -> None:
    """SAC with an extractor and SAC without a belief, two envs, a tiny budget: the summary holds each
    run's meta-test, the no-belief baseline's meta-test is its model stepped on the plain observations
    by hand, the table renders, and a second call reuses the runs (no retraining)."""
    pytest.importorskip("mujoco")
    import learning_sac
    from stable_baselines3 import SAC

    import bayes_envs

    out = tmp_path / "learning_sac.json"
    argv = ["--seeds", "0", "--timesteps", "240", "--n-envs", "2", "--window", "4", "--eval-every", "120",
            "--curve-tasks", "2", "--tasks", "3", "--workers", "1", "--runs", str(tmp_path / "runs"),
            "--out", str(out)]  # fmt: skip
    result = learning_sac.main(argv)
    methods = result["methods"]
    assert list(methods) == ["SAC + RL2Extractor", "SAC, no belief"]
    for row in methods.values():
        assert row["env_steps"] == [240] and len(row["task_direction_rate"]["mean"]) == 2
        report = json.loads((Path(row["run_dirs"][0]) / "evaluation.json").read_text())
        assert row["trial_return"]["per_seed"] == [report["test"]["trial_return_mean"]]
        assert [point["env_steps"] for point in row["curves"][0]] == [120, 240]
    assert json.loads(out.read_text())["methods"].keys() == methods.keys()
    assert out.with_suffix(".png").is_file()
    table = results_tables.render_learning(json.loads(out.read_text()), "learning_sac.json")
    assert "SAC, no belief" in table and "ep 2 ran the task's way" in table

    run_dir = tmp_path / "runs" / learning_sac.ENV_ID / "method=none" / "seed_0"
    model = SAC.load(run_dir / "model.zip", device="cpu")
    plain = bayes_envs.make_vec(
        learning_sac.ENV_ID, 3, seed=learning_sac.EVAL_SEED, rl2_inputs=False, monitor=False, split="test"
    )
    observation, returns = plain.reset(), np.zeros((3, 2))
    for _ in range(2 * 200):
        action, _ = model.predict(observation, deterministic=True)
        observation, _, _, infos = plain.step(action)
        for i, info in enumerate(infos):
            if info["inner_done"]:
                returns[i, info["inner_episode"]] = info["inner_return"]
    report = json.loads((run_dir / "evaluation.json").read_text())
    np.testing.assert_allclose(report["test"]["episode_return_mean"], returns.mean(0), rtol=1e-5)

    stamps = {path: path.stat().st_mtime_ns for path in (tmp_path / "runs").rglob("model.zip")}
    (run_dir / "evaluation.json").unlink()
    again = learning_sac.main(argv)
    assert {path: path.stat().st_mtime_ns for path in stamps} == stamps
    assert again["methods"]["SAC, no belief"]["trial_return"] == methods["SAC, no belief"]["trial_return"]


def test_learning_sac_shares_the_extractor_on_request(tmp_path: Path) -> None:
    """``--share-features-extractor``: one extractor for actor and critic, its own run directories and
    label, and the flag recorded in the run's config and the summary."""
    pytest.importorskip("mujoco")
    import learning_sac
    from stable_baselines3 import SAC

    out = tmp_path / "learning_sac_shared.json"
    argv = ["--methods", "rl2", "--seeds", "0", "--timesteps", "160", "--n-envs", "2", "--window", "4",
            "--eval-every", "160", "--curve-tasks", "2", "--tasks", "2", "--workers", "1",
            "--share-features-extractor", "--runs", str(tmp_path / "runs"), "--out", str(out)]  # fmt: skip
    methods = learning_sac.main(argv)["methods"]
    assert list(methods) == ["SAC + RL2Extractor (shared extractor)"]
    row = methods["SAC + RL2Extractor (shared extractor)"]
    assert row["share_features_extractor"] is True
    run_dir = tmp_path / "runs" / learning_sac.ENV_ID / "method=rl2,shared" / "seed_0"
    assert json.loads((run_dir / "train.json").read_text())["config"]["share_features_extractor"] is True
    model = SAC.load(run_dir / "model.zip", device="cpu")
    assert model.policy.share_features_extractor
    assert model.policy.critic.features_extractor is model.policy.actor.features_extractor


@pytest.mark.parametrize("env", ["grid", "bandit"])
def test_learning_extractors_runs_recurrent_and_extractor_runs_end_to_end(env, tmp_path: Path) -> None:
    """A tiny sweep: the recurrent RL² run and PPO + RL2Extractor at the same settings land in one
    summary; the extractor's meta-test is its predictor on the same tasks with its saved statistics,
    and a trained extractor run is evaluated again, not retrained."""
    import learning_extractors

    from bayes_agents.extractors import HistoryPredictor
    from bayes_envs import RL2VecNormalize
    from bayes_envs.evaluation import evaluate

    env_id = {"grid": GRID, "bandit": BANDIT}[env]
    sweep_file = tmp_path / "sweep.yaml"
    base = {"env_id": env_id, "timesteps": 240, "eval_every": 0, "final_eval_tasks": 21}
    base.update(n_envs=4, ppo={"n_steps": 60 if env == "grid" else 50, "batch_size": 120, "n_epochs": 1})
    base["policy"] = {"hidden_size": 16, "latent_dim": 4, "embed_sizes": [8], "net_arch": [8]}
    sweep_file.write_text(
        json.dumps({"out": str(tmp_path / "runs"), "seeds": [0], "base": base, "grid": {"method": ["rl2"]}})
    )
    out = tmp_path / "results.json"
    argv = ["--env", env, "--sweep", str(sweep_file), "--out", str(out), "--workers", "1"]
    result = learning_extractors.main(argv)
    label = learning_extractors.extractor_label("rl2")
    assert result["command"].startswith(f"python benchmarks/learning_extractors.py --env {env} --sweep")
    assert list(result["methods"]) == ["rl2", label] and result["failed"] == []
    run_dir = Path(result["methods"][label]["run_dirs"][0])
    assert result["methods"][label]["env_steps"] == result["methods"]["rl2"]["env_steps"]
    train = json.loads((run_dir / "train.json").read_text())
    assert train["config"]["policy"]["hidden_size"] == 16 and train["config"]["ppo"]["n_epochs"] == 1
    from stable_baselines3 import PPO

    model = PPO.load(run_dir / "model.zip", device="cpu")
    assert model.policy.features_extractor.belief.hidden_size == 16
    statistics = RL2VecNormalize.read_json(run_dir / "normalization.json")
    evaluated = evaluate(
        HistoryPredictor(model),
        env_id,
        n_tasks=21,
        seed=train["config"]["eval_seed"],
        normalization=statistics,
    )
    report = json.loads((run_dir / "evaluation.json").read_text())
    np.testing.assert_allclose(
        report["agent"]["episode_return_mean"], evaluated.episode_returns.mean(0), rtol=1e-6
    )
    if env == "bandit":
        assert (run_dir / "evaluation_test.json").is_file()

    stamp = (run_dir / "model.zip").stat().st_mtime_ns
    (run_dir / "evaluation.json").unlink()
    learning_extractors.main(argv)
    assert (run_dir / "model.zip").stat().st_mtime_ns == stamp
    assert json.loads((run_dir / "evaluation.json").read_text())["agent"] == report["agent"]


def test_metaworld_summary_averages_success_over_classes_then_seeds(tmp_path: Path) -> None:
    import learning_metaworld

    def report(success: list[list[float]], classes: list[str]) -> dict:
        episode_success = np.asarray(success, np.float64)
        returns = np.ones_like(episode_success)
        result = EvaluationResult(
            "MetaWorld-ML10-v0",
            "policy",
            10_000,
            returns,
            np.zeros((len(classes), 4)),
            episode_success=episode_success,
            task_classes=classes,
        )
        return {"config": {"env": {}}, "num_timesteps": 1000, "agent": result.summary()}

    # Seed 0, train split: class a succeeds in 1 of 2 tasks in episode 1 and both in episode 2; class
    # b in none, then 1 of 1. Per class then averaged: [(0.5 + 0) / 2, (1 + 1) / 2] = [0.25, 1].
    train = {0: ([[1, 1], [0, 1], [0, 1]], ["a", "a", "b"]), 1: ([[1, 1], [1, 1], [0, 0]], ["a", "a", "b"])}
    test = {0: ([[0, 1]], ["c"]), 1: ([[0, 0]], ["c"])}
    runs = {"rl2": {}}
    for seed in (0, 1):
        run_dir = write_run(tmp_path / f"seed_{seed}", report(*train[seed]), elapsed=[0.0, 60.0])
        write_run(run_dir, report(*test[seed]), name="evaluation_test.json")
        runs["rl2"][seed] = run_dir
    periodic = [{"timesteps": t, "n_tasks": 20, "success_rate": [t / 4e3, t / 2e3], "x": 1} for t in (0, 500)]
    (runs["rl2"][0] / "evaluations.jsonl").write_text("".join(json.dumps(r) + "\n" for r in periodic))
    row = learning_metaworld.metaworld_summary(runs)["methods"]["rl2"]
    assert row["meta_test_curve"] == {
        "0": [{key: record[key] for key in ("timesteps", "n_tasks", "success_rate")} for record in periodic],
        "1": [],
    }
    np.testing.assert_allclose(row["train"]["success_rate"]["per_seed"], [[0.25, 1.0], [0.5, 0.5]])
    assert row["train"]["success_rate"]["mean"] == pytest.approx([0.375, 0.75])
    assert row["train"]["success_rate_per_class"] == {
        "a": pytest.approx([0.75, 1.0]),
        "b": pytest.approx([0.0, 0.5]),
    }
    last = row["train"]["last_episode_success"]
    assert (last["worst_seed"], last["worst"]) == (1, pytest.approx(0.5))
    assert row["test"]["success_rate"]["mean"] == pytest.approx([0.0, 0.5])
    assert row["test"]["trial_success_rate"]["per_seed"] == pytest.approx([1.0, 0.0])
    assert row["env_steps_per_s"] == pytest.approx([1000 / 60, 1000 / 60])
    text = results_tables.render_learning(
        {
            "benchmark": "learning_metaworld",
            "command": "c",
            "env_id": "MetaWorld-ML10-v0",
            "n_tasks": 3,
            "methods": {"rl2": row},
        },
        "x.json",
    )
    assert "| RL² | train | a | 75% | 100% |" in text


def test_main_job_trains_again_runs_of_older_defaults(tmp_path: Path) -> None:
    from bayes_agents import experiment

    run_dir = tmp_path / "seed3"
    run_dir.mkdir()
    config = experiment.resolve_config(GRID, overrides={"seed": 3})
    (run_dir / "config.json").write_text(json.dumps(config))
    assert not main_job.is_current(run_dir, 3, None)  # no evaluation yet
    (run_dir / "evaluation.json").write_text("{}")
    assert main_job.is_current(run_dir, 3, None)
    assert not main_job.is_current(run_dir, 4, None)
    assert not main_job.is_current(run_dir, 3, config["timesteps"] // 2)
    older = {**config, "ppo": {**config["ppo"], "n_epochs": config["ppo"]["n_epochs"] + 1}}
    (run_dir / "config.json").write_text(json.dumps(older))
    assert not main_job.is_current(run_dir, 3, None)


def test_grid_episode2_splits_tasks_by_what_episode_1_found() -> None:
    """Three hand-built trials (goal entered at step 3, at the last step, never) land in their groups
    with their episode-2/3 returns; the goal reward is told from the step cost by its value."""
    length, cost = 15, -0.1
    rewards = np.full((3, 4 * length), cost)
    rewards[0, 3:length] = 1.0  # entered at step 3 of episode 1, then stays
    rewards[1, length - 1] = 1.0  # entered on the last step
    rewards[0, length + 2 : 2 * length] = 1.0
    rewards[2, 2 * length + 5 : 3 * length] = 1.0
    episode_returns = rewards.reshape(3, 4, length).sum(-1)
    result = EvaluationResult(GRID, "hand", 0, episode_returns, rewards)
    groups = grid_episode2.episode1_groups(result, goal_reward=1.0)
    assert [mask.tolist() for mask in groups.values()] == [
        [True, False, False],
        [False, True, False],
        [False, False, True],
    ]
    rows = grid_episode2.split_returns(result, goal_reward=1.0)
    found, last, missed = (rows[name] for name in grid_episode2.GROUPS)
    assert found["share"] == last["share"] == missed["share"] == pytest.approx(1 / 3)
    assert found["episode_2"] == pytest.approx(episode_returns[0, 1])
    assert last["episode_2"] == pytest.approx(length * cost)
    assert missed["episode_3"] == pytest.approx(episode_returns[2, 2])


def test_bandit_regret_profile_reads_cumulative_regret_and_late_pulls() -> None:
    """Cumulative regret at pulls and the late per-pull rate; late-pull shares on hand-built actions."""
    cumulative = np.cumsum(np.r_[np.full(30, 0.1), np.full(20, 0.05)])
    row = bandit_regret_profile.profile(cumulative.tolist(), (1, 30, 50), (30, 50))
    assert row["at_pull"] == pytest.approx({"1": 0.1, "30": 3.0, "50": 4.0})
    assert row["late_regret_per_pull"] == pytest.approx(0.05)
    with pytest.raises(ValueError, match="--late"):
        bandit_regret_profile.profile(cumulative.tolist(), (1,), (40, 60))
    # Task 0 pulls arm 1 (its best) throughout; task 1 pulls arm 0 for 6 pulls, then alternates 2, 0.
    actions = np.zeros((10, 2), int)
    actions[:, 0] = 1
    actions[6:, 1] = [2, 0, 2, 0]
    shares = bandit_regret_profile.late_pulls(actions, best_arms=np.array([1, 2]), late=(6, 10))
    assert shares["on_best_arm"] == pytest.approx((4 + 2) / 8)
    assert shares["switch_arm"] == pytest.approx(4 / 8)  # every late pull of task 1 switches
    assert shares["off_most_pulled_arm"] == pytest.approx(2 / 8)  # its pulls of arm 2 (arm 0 leads)


def test_metaworld_reach_behaviour_tells_a_fixed_point_from_a_search() -> None:
    """Hand-built trials: episode 1 goes to one point for every task (the goals' centroid), episode 2
    to each task's goal; the statistics follow from the geometry."""
    length, goals = 10, np.array([[0.0, 0.0, 0.0], [0.2, 0.0, 0.0], [0.0, 0.03, 0.0], [-0.2, -0.03, 0.0]])
    centroid = goals.mean(axis=0)
    hands = np.zeros((2 * length, len(goals), 3))
    hands[:length] = centroid
    hands[length:] = goals
    hands[length - 1] = hands[2 * length - 1] = 1.0  # the reset after each episode's last step
    summary = metaworld_reach_behaviour.analyse(hands, goals, length)
    offsets = np.linalg.norm(goals - centroid, axis=1)
    assert summary["centroid"] == pytest.approx(centroid.tolist())
    assert summary["centroid_success"] == pytest.approx(np.mean(offsets <= 0.05)) == 0.5
    first, second = summary["episodes"]
    assert first["success"] == 0.5 and second["success"] == 1.0
    assert first["final_hand_spread"] == pytest.approx(0.0, abs=1e-12)
    assert first["final_hand_to_centroid_median"] == pytest.approx(0.0, abs=1e-12)
    assert first["min_distance_median"] == pytest.approx(np.median(offsets))
    assert second["final_distance_median"] == pytest.approx(0.0, abs=1e-12)
    assert second["final_hand_spread"] == pytest.approx(np.sqrt((offsets**2).mean()))
    assert first["goal_to_centroid_median_failure"] == pytest.approx(np.median(offsets[offsets > 0.05]))
    assert second["goal_to_centroid_median_failure"] is None
    assert summary["episode_2_closer"] == 0.75  # every goal but the one at the centroid
    # The env's success is taken where given; it may count one more task (an episode's last step,
    # which the replay cannot see), never one fewer: that is a misaligned replay.
    reported = np.array([[1.0, 1.0], [0.0, 1.0], [1.0, 1.0], [1.0, 1.0]])
    with_env = metaworld_reach_behaviour.analyse(hands, goals, length, reported)
    assert [episode["success"] for episode in with_env["episodes"]] == [0.75, 1.0]
    reported[2, 0] = 0.0
    with pytest.raises(RuntimeError, match="disagree"):
        metaworld_reach_behaviour.analyse(hands, goals, length, reported)


def test_results_record_and_caption_their_software_environment() -> None:
    import stable_baselines3
    import torch

    from bayes_agents.experiment import software_environment

    environment = software_environment()
    assert environment["packages"]["torch"] == torch.__version__
    assert environment["packages"]["numpy"] == np.__version__
    assert environment["packages"]["stable_baselines3"] == stable_baselines3.__version__
    assert environment["torch_cpu_capability"] == torch.backends.cpu.get_cpu_capability()
    result = {"command": "python benchmarks/x.py", "git": {"commit": "0123456789abcdef", "dirty": False}}
    plain = "`python benchmarks/x.py` (commit 0123456789; `x.json`):"
    assert results_tables._caption(result, "x.json") == plain
    caption = results_tables._caption({**result, "environment": environment}, "x.json")
    versions = f"torch {torch.__version__}, numpy {np.__version__}, SB3 {stable_baselines3.__version__}"
    assert versions in caption
    assert caption.endswith(f"{environment['torch_cpu_capability']}; `x.json`):")
