"""NTK-LOO's rescoring after an attack on a few rows (estimators/ntk_loo.py, KernelMemo):
the kept kernels' rows of the changed points only, against a full recomputation."""

import importlib

import pytest
import torch
from torch import nn

from malleability.estimators import NTKLOO, ntk_loo

F64 = torch.float64
jn = importlib.import_module("malleability.jacobian_ntk")


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(3)
        self.body = nn.Sequential(nn.Linear(5, 8), nn.LayerNorm(8), nn.Tanh())
        self.head = nn.Linear(8, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


@pytest.fixture
def rows(monkeypatch):
    """Rows of every Jacobian formed, and a fresh memo."""
    monkeypatch.setattr(ntk_loo, "MEMO", ntk_loo.KernelMemo())
    calls = []
    call = jn._Jacobians.__call__

    def spy(self, x, *buffer):
        calls.append(x.shape[0])
        return call(self, x, *buffer)

    monkeypatch.setattr(jn._Jacobians, "__call__", spy)
    return calls


def _fresh(model, *data):
    """The scores from a full computation (a memo of its own)."""
    saved = ntk_loo.MEMO
    ntk_loo.MEMO = ntk_loo.KernelMemo()
    try:
        return NTKLOO().scores(model, *data)
    finally:
        ntk_loo.MEMO = saved


@pytest.mark.parametrize("separate_test", [True, False])
def test_rescoring_after_an_attack_computes_only_the_changed_rows(rows, separate_test):
    g = torch.Generator().manual_seed(0)
    model = Net().to(F64)
    x = torch.randn(12, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (12,), generator=g)
    x_t, y_t = (torch.randn(4, 5, generator=g, dtype=F64), y[:4]) if separate_test else (x, y)
    n_t = 4 if separate_test else 0  # test = train: one kernel
    NTKLOO().scores(model, x, y, x_t, y_t)
    assert sum(rows) == 12 + n_t
    x_new = x.clone()
    x_new[[2, 9]] += 0.1
    rows.clear()
    got = NTKLOO().scores(model, x_new, y, x_t, y_t)
    assert sum(rows) == 2 + 12 + (n_t or 2)  # S against x_new and the test points (or x[S])
    torch.testing.assert_close(got, _fresh(model, x_new, y, x_t, y_t), rtol=1e-9, atol=1e-12)
    rows.clear()  # the kept kernels are the first ones: a second attack is an update too
    other = x.clone()
    other[5] -= 0.2
    got = NTKLOO().scores(model, other, y, x_t, y_t)
    assert sum(rows) == 1 + 12 + (n_t or 1)
    torch.testing.assert_close(got, _fresh(model, other, y, x_t, y_t), rtol=1e-9, atol=1e-12)


def test_a_changed_model_or_most_rows_changed_is_a_full_computation(rows):
    g = torch.Generator().manual_seed(1)
    model = Net().to(F64)
    x = torch.randn(10, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (10,), generator=g)
    NTKLOO().scores(model, x, y, x, y)
    rows.clear()
    NTKLOO().scores(model, x + 0.1, y, x, y)  # every row changed
    assert sum(rows) == 10 + 10
    NTKLOO().scores(model, x, y, x, y)
    with torch.no_grad():
        model.head.weight.data.mul_(2.0)  # .data: no version bump, the sum sees it
    rows.clear()
    got = NTKLOO().scores(model, x, y, x, y)
    assert sum(rows) == 10
    torch.testing.assert_close(got, _fresh(model, x, y, x, y), rtol=0, atol=0)
