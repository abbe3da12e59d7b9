"""NTK-LOO's rescoring after an attack on a few rows (NTKLOO.rescore): the clean kernels,
passed explicitly in the clean attribution, with only the changed rows and columns
recomputed, against a full recomputation; the audit passes them from cell to cell, and a
resumed cell (which computes them itself) equals a fresh one bit for bit."""

from __future__ import annotations

import importlib
import json

import pytest
import torch
from torch import nn

from malleability.attacks import FGSM, RandomSign
from malleability.audit_run import run_audit
from malleability.auditing import prepare
from malleability.estimators import NTKLOO
from malleability.estimators.base import Attribution
from malleability.measure import measure, measure_each

F64 = torch.float64
jn = importlib.import_module("malleability.jacobian_ntk")
ntk_loo = importlib.import_module("malleability.estimators.ntk_loo")


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
    """The number of rows of every Jacobian block formed."""
    calls: list[int] = []
    call = jn._Jacobians.__call__

    def spy(self, x, *buffer):
        calls.append(x.shape[0])
        return call(self, x, *buffer)

    monkeypatch.setattr(jn._Jacobians, "__call__", spy)
    return calls


def _data(seed: int, n: int = 12, n_test: int = 4):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 5, generator=g, dtype=F64)
    y = torch.randint(0, 3, (n,), generator=g)
    return x, y, torch.randn(n_test, 5, generator=g, dtype=F64), y[:n_test]


@pytest.mark.parametrize("separate_test", [True, False])
def test_rescoring_recomputes_only_the_changed_rows_and_equals_a_full_computation(
        rows, separate_test):
    model = Net().to(F64)
    x, y, x_t, y_t = _data(0)
    if not separate_test:
        x_t, y_t = x, y
    n_t = 4 if separate_test else 0  # test = train: one kernel
    clean = NTKLOO().attribute(model, x, y, x_t, y_t)
    assert sum(rows) == 12 + n_t and clean.reuse is not None
    for changed in ([2, 9], [5]):
        x_new = x.clone()
        x_new[changed] += 0.3
        rows.clear()
        (got,) = NTKLOO().rescore([model], clean, x, [x_new], y, x_t, y_t)
        # S against x_new and the test points (test = train: the clean x[S])
        assert sum(rows) == len(changed) + 12 + (n_t or len(changed))
        full = NTKLOO().attribute(model, x_new, y, x_t, y_t)
        torch.testing.assert_close(got.scores, full.scores, rtol=1e-10, atol=1e-13)
        a, b = got.diagnostics["stability"], full.diagnostics["stability"]
        assert a.max_eigenvalue == pytest.approx(b.max_eigenvalue, rel=1e-10)
        assert a.min_eigenvalue == pytest.approx(b.min_eigenvalue, rel=1e-10)
    rows.clear()
    (same,) = NTKLOO().rescore([model], clean, x, [x.clone()], y, x_t, y_t)  # nothing changed
    assert rows == [] and torch.equal(same.scores, clean.scores)


@pytest.mark.parametrize("separate_test", [True, False])
def test_several_training_sets_are_rescored_in_one_pass(rows, separate_test):
    model = Net().to(F64)
    x, y, x_t, y_t = _data(4)
    if not separate_test:
        x_t, y_t = x, y
    clean = NTKLOO().attribute(model, x, y, x_t, y_t)
    xs = [x.clone() for _ in range(3)]
    xs[0][[1, 6]] += 0.3
    xs[1][[1, 6]] -= 0.2
    xs[2][6] *= 1.5  # row 1 unchanged: S is the union of the changed rows
    rows.clear()
    got = NTKLOO().rescore([model], clean, x, xs, y, x_t, y_t)
    # each set's S (3 × 2 rows) against the 10 unchanged rows, the test points (or the
    # clean x[S]) and every set's S, in one call
    assert sum(rows) == 3 * 2 + 10 + (4 if separate_test else 2) + 3 * 2
    for x_new, one in zip(xs, got, strict=True):
        full = NTKLOO().attribute(model, x_new, y, x_t, y_t)
        torch.testing.assert_close(one.scores, full.scores, rtol=1e-10, atol=1e-13)


def test_rescoring_without_the_kernels_computes_them_to_the_same_result(rows):
    """A clean attribution holding scores only (read from a file): the rescoring computes
    the clean kernels itself and gives the kept kernels' result bit for bit."""
    model = Net().to(F64)
    x, y, x_t, y_t = _data(5)
    clean = NTKLOO().attribute(model, x, y, x_t, y_t)
    x_new = x.clone()
    x_new[[0, 7]] -= 0.25
    (kept,) = NTKLOO().rescore([model], clean, x, [x_new], y, x_t, y_t)
    rows.clear()
    (again,) = NTKLOO().rescore([model], Attribution(clean.scores), x, [x_new], y, x_t, y_t)
    assert sum(rows) == 12 + 4 + 2 + 12 + 4  # the clean kernels, then the changed rows
    assert torch.equal(again.scores, kept.scores)


def test_rescoring_most_rows_changed_is_a_full_computation(rows):
    model = Net().to(F64)
    x, y, x_t, y_t = _data(1, n=10)
    clean = NTKLOO().attribute(model, x, y, x_t, y_t)
    rows.clear()
    (got,) = NTKLOO().rescore([model], clean, x, [x + 0.1], y, x_t, y_t)
    assert sum(rows) == 10 + 4
    assert torch.equal(got.scores, NTKLOO().scores(model, x + 0.1, y, x_t, y_t))


@pytest.mark.parametrize("case, message", [
    ("other test", r"^x_test: expected the test points of the clean attribution$"),
    ("other shape", r"^xs_train: expected the clean inputs' shape \(12, 5\)"),
    ("other parameters", r"^parameters: expected those of the clean attribution, None, "
                         r"got \('head',\)$"),
    ("two models", r"^models: expected one model for ntk-loo's rescoring, got 2$"),
])
def test_rescoring_refuses_a_clean_attribution_of_something_else(case, message):
    model = Net().to(F64)
    x, y, x_t, y_t = _data(2)
    clean = NTKLOO().attribute(model, x, y, x_t, y_t)
    kwargs = {"parameters": ["head"]} if case == "other parameters" else {}
    x_new = x[:6] if case == "other shape" else x
    x_t = x_t + 1 if case == "other test" else x_t
    with pytest.raises(ValueError, match=message):
        NTKLOO().rescore([model] * (2 if case == "two models" else 1), clean, x, [x_new],
                         y[:x_new.shape[0]], x_t, y_t, **kwargs)


def test_measure_rescores_from_the_clean_kernels(rows):
    model = Net().to(F64)
    x, y, x_t, y_t = _data(3, n=20)
    rows.clear()
    m = measure(model, x, y, x_t, y_t, NTKLOO(), FGSM(eps=0.2), fraction=0.1,
                bounds=(-10.0, 10.0))
    # the clean kernel of 20 + 4 rows, then S (2 rows) against the 20 + 4 perturbed ones
    assert sum(rows) == 24 + 2 + 24
    full = NTKLOO().scores(model, m.perturbed_inputs, y, x_t, y_t)
    torch.testing.assert_close(m.perturbed_scores, full, rtol=1e-10, atol=1e-13)
    rows.clear()
    both = measure_each(model, x, y, x_t, y_t, NTKLOO(), [FGSM(eps=0.2), RandomSign(eps=0.2)],
                        fraction=0.1, bounds=(-10.0, 10.0))
    assert sum(rows) == 24 + 2 * 2 + 18 + 4 + 2 * 2  # both sets' S against U, x_t, both S
    assert torch.equal(both[0].perturbed_inputs, m.perturbed_inputs)
    for one in both:
        full = NTKLOO().scores(model, one.perturbed_inputs, y, x_t, y_t)
        torch.testing.assert_close(one.perturbed_scores, full, rtol=1e-10, atol=1e-13)


def _problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 6), nn.Tanh(), nn.Linear(6, 3))
    g = torch.Generator().manual_seed(0)
    data = (torch.rand(20, 5, generator=g), torch.randint(0, 3, (20,), generator=g),
            torch.rand(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g))
    return prepare(model, *data, estimator="ntk-loo", attack="pgd", steps=3, eps=0.1,
                   seeds=(0, 1, 2))


def test_the_audit_passes_the_clean_kernels_and_a_resumed_cell_equals_a_fresh_one(
        tmp_path, monkeypatch):
    kernels, updates = [], []
    full, update = ntk_loo.train_test_ntk, ntk_loo.updated_ntks
    monkeypatch.setattr(ntk_loo, "train_test_ntk",
                        lambda *a, **k: kernels.append(1) or full(*a, **k))
    monkeypatch.setattr(ntk_loo, "updated_ntks",
                        lambda *a, **k: updates.append(len(a[3])) or update(*a, **k))
    out = tmp_path / "run"
    run_audit(out, [_problem()])
    # one clean kernel for the three seeds; each seed's attack and control rescored together
    assert len(kernels) == 1 and updates == [2, 2, 2]
    cells = {s: out / "ntk-loo" / f"checkpoint=model__seed={s}.json" for s in (0, 1, 2)}
    fresh = {s: json.loads(p.read_text())["result"] for s, p in cells.items()}
    for s in (1, 0):  # a later seed without the first seed's kernels, then the first seed
        cells[s].unlink()
        kernels.clear()
        computed: list[str] = []
        run_audit(out, [_problem()], progress=computed.append)
        assert computed == [f"ntk-loo checkpoint=model__seed={s}"] and len(kernels) == 1
        assert json.loads(cells[s].read_text())["result"] == fresh[s]
