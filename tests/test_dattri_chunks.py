"""dattri's influence functions as the package computes them (per-example gradients ``chunk``
rows at a time, one inverse-Hessian product of the mean test gradient) equal dattri's own
``attribute`` on one batch of each set, mean over the test points (the package's call before),
wherever the inverse is linear in the vector (explicit, Arnoldi, EK-FAC, LiSSA on given draws); CG,
which solves for the mean gradient itself, equals the explicit inverse it approximates."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

from malleability.estimators import make_estimator
from malleability.estimators.dattri import IFLiSSA


def _data():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))
    x, y = torch.randn(30, 6), torch.randint(0, 3, (30,))
    return model, x, y, torch.randn(7, 6), torch.randint(0, 3, (7,))


def _one_batch(est, model, x, y, xt, yt, seed: int = 0) -> torch.Tensor:
    """dattri's ``cache`` and ``attribute`` on one batch of each set, mean over test points."""
    from dattri.algorithm import influence_function as dif

    train, test = (DataLoader(TensorDataset(a, b), batch_size=len(a)) for a, b in
                   ((x, y), (xt, yt)))
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        task = est._task(model, x)
        if est.name == "if-arnoldi":  # the package builds dattri's projector itself
            attributor = dif.IFAttributorArnoldi(task, device="cpu", regularization=est.damping,
                                                 seed=seed, proj_dim=est.proj_dim,
                                                 max_iter=est.iterations)
        else:
            attributor = getattr(dif, est.attributor)(task, device="cpu", **est.options(seed))
        attributor.cache(train)
        return attributor.attribute(train, test).mean(1).detach().to(torch.float64)


@dataclass(frozen=True)
class _FullBatchLiSSA(IFLiSSA):
    """LiSSA whose every recursion step takes the Hessian of all 30 training points (in a
    random order), so its result does not depend on the draws: dattri draws per test vector,
    and its ``attribute`` draws twice more (one seed per loader it iterates)."""

    def options(self, seed: int) -> dict[str, Any]:
        return {**super().options(seed), "batch_size": 30}


@pytest.mark.parametrize("est", [
    _FullBatchLiSSA(damping=1.0, chunk=4),
    _FullBatchLiSSA(damping=1.0, chunk=7),
    make_estimator("if-arnoldi", damping=1.0, chunk=4, proj_dim=20),
    make_estimator("if-explicit", damping=1.0, chunk=4)], ids=lambda e: str(e))
def test_chunked_scores_equal_dattris_one_batch(est):
    """Damping 1 keeps the float32 solves well conditioned: at δ = 0.1 CG's 10 iterations
    amplify rounding to 1e-4 of the largest score, dattri's own call against itself under
    ``no_grad`` included."""
    model, x, y, xt, yt = _data()
    got = est.scores(model, x, y, xt, yt, seed=3)
    want = _one_batch(est, model, x, y, xt, yt, seed=3)
    assert torch.isfinite(want).all() and want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_cg_on_the_mean_test_gradient_equals_the_explicit_influence_function():
    """Damping 1 makes (H + I) well conditioned, so 10 CG iterations converge (to float32
    rounding) on the 83 parameters; the explicit inverse is linear, so dattri's mean over test
    points equals the influence of the mean test gradient."""
    model, x, y, xt, yt = _data()
    got = make_estimator("if-cg", damping=1.0, chunk=4).scores(model, x, y, xt, yt, seed=3)
    want = _one_batch(make_estimator("if-explicit", damping=1.0), model, x, y, xt, yt)
    torch.testing.assert_close(got, want, rtol=1e-3, atol=1e-4 * float(want.abs().max()))


def test_ekfac_equals_dattris_one_batch():
    """EK-FAC's inverse is linear too: one product of the mean test gradient equals dattri's
    own ``attribute`` averaged over the test points."""
    model, x, y, xt, yt = _data()
    est = make_estimator("if-ekfac", damping=1.0, chunk=4)
    got = est.scores(model, x, y, xt, yt)
    want = _one_batch(est, model, x, y, xt, yt)
    assert want.abs().max() > 0
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-5 * float(want.abs().max()))


def test_lissa_converges_to_the_influence_function_with_the_same_damping():
    """LiSSA on the full-batch Hessian with δ = 1 and s = 2 (this model's |λ|max(H) is below
    1, the next test scales it up, so every factor 1 − (λ + δ)/s lies in [0, 1/2] and 100
    steps converge to float32 rounding) equals the explicit influence function at the same
    δ: dattri's own damping, relative to s, is passed as δ/s."""
    model, x, y, xt, yt = _data()
    lissa = _FullBatchLiSSA(damping=1.0, scaling=2.0, chunk=4)
    want = make_estimator("if-explicit", damping=1.0).scores(model, x, y, xt, yt)
    torch.testing.assert_close(lissa.scores(model, x, y, xt, yt, seed=0), want, rtol=1e-4,
                               atol=1e-5 * float(want.abs().max()))


def test_lissa_is_refused_where_its_recursion_diverges():
    """The audit's check (|λ|max(H) + δ > 2·scaling) against LiSSA itself on a full-batch
    Hessian (no sampling): at scaling = |λ|max/5 the top eigenvector's factor is about 4 and
    100 steps overflow float32; at scaling = |λ|max every factor is within [−1, 1]."""
    from malleability.audit_problem import estimator_warnings
    from malleability.auditing import AuditSettings
    from malleability.estimator_checks import hessian_top_eigenvalue

    model, x, y, xt, yt = _data()
    for p in model.parameters():  # steep logits: |λ|max(H) of several units
        p.data *= 6
    top = hessian_top_eigenvalue(model, x, y, iterations=200)
    assert top > 1
    low, high = (_FullBatchLiSSA(scaling=top / 5), _FullBatchLiSSA(scaling=top))
    with pytest.raises(ValueError, match=r"^estimator: if-lissa diverges on this model: the "
                       r"training loss's Hessian has \|λ\|max \+ δ ≈ [\d.]+ > 2·scaling"):
        estimator_warnings(low, model, x, y, 1, AuditSettings())
    with pytest.raises(ValueError, match="returned non-finite scores"):
        low.scores(model, x, y, xt, yt, seed=0)
    assert estimator_warnings(high, model, x, y, 1, AuditSettings())[1] == pytest.approx(
        top, rel=1e-2)
    assert bool(torch.isfinite(high.scores(model, x, y, xt, yt, seed=0)).all())
