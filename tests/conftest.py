"""Fixtures shared by the test modules."""

from __future__ import annotations

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
