"""Fixtures shared by the test modules."""

from __future__ import annotations

from typing import Any

import pytest
import torch


@pytest.fixture(autouse=True)
def one_torch_thread():
    """Every test runs on one torch thread, as ``bayes-rl train`` does: the suite's tiny networks only
    contend on more (tens of seconds per test on a loaded machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture
def precision_calls(monkeypatch) -> list[bool]:
    """Records every Laplace Jacobian precision computation (``_window_precision``) as the module's
    training flag."""
    from bayes_agents.beliefs import LaplaceBelief

    calls: list[bool] = []
    stock = LaplaceBelief._window_precision

    def recording(self, *args, **kwargs):
        calls.append(self.training)
        return stock(self, *args, **kwargs)

    monkeypatch.setattr(LaplaceBelief, "_window_precision", recording)
    return calls


def one_update_grid_model(policy_class: Any, policy_kwargs: dict, reuse_rollout_precision: bool) -> Any:
    """``BayesPPO`` on 3 grid envs whose first update (one rollout of 90 steps per env, 2 epochs of
    one minibatch) crosses a trial start in every env (trials of 60 steps)."""
    import bayes_envs
    from bayes_agents import BayesPPO

    return BayesPPO(
        policy_class,
        bayes_envs.make_vec("BayesGrid-v0", 3, seed=0),
        policy_kwargs=policy_kwargs,
        n_steps=90,
        batch_size=90,
        n_epochs=2,
        seed=0,
        device="cpu",
        reuse_rollout_precision=reuse_rollout_precision,
    )
