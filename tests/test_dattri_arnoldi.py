"""Why dattri 0.3.0's Arnoldi influence function returns NaN, and the settings under which it
is right, against the explicit Hessian of a tiny MLP (float64, torch.func).

dattri's ArnoldiProjector keeps the top-k Ritz pairs of H + rI by |eigenvalue| and scales the
projected gradients by 1/√λ. On a trained but unconverged non-convex model H has negative
eigenvalues; those among the top k give NaN in every score. Its warning "adjusting proj_dim"
changes only the attribute, not the pairs it keeps. With r above |λ_min(H)| and k well below
the number of parameters, its scores are the influence function restricted to the top-k
eigenspace of H + rI. The package's `if-arnoldi` takes dattri's eigenpairs and divides one
side by λ (no square root), so it gives that restricted influence function on indefinite
Hessians too; and the last tests show why the audit warns when it keeps all its Ritz pairs.
"""

from __future__ import annotations

import copy
import warnings

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, vmap
from torch.nn import functional as F

dif = pytest.importorskip("dattri.algorithm.influence_function")


@pytest.fixture(scope="module")
def case():
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.randint(0, 3, (40,), generator=g)
    x_test, y_test = torch.randn(6, 4, generator=g), torch.randint(0, 3, (6,), generator=g)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3))  # P = 43
    exact = copy.deepcopy(model).double()
    shapes = {k: v.shape for k, v in exact.named_parameters()}
    flat = torch.cat([v.detach().reshape(-1) for v in exact.parameters()])

    def flat_loss(v, xb, yb):
        p, i = {}, 0
        for k, s in shapes.items():
            p[k], i = v[i:i + s.numel()].reshape(s), i + s.numel()
        return F.cross_entropy(functional_call(exact, p, (xb.double(),)), yb)

    h = hessian(flat_loss)(flat, x, y)
    per_example = vmap(grad(flat_loss), in_dims=(None, 0, 0))
    g_train = per_example(flat, x[:, None], y[:, None])
    g_test = per_example(flat, x_test[:, None], y_test[:, None])

    def loss(p, data):
        xb, yb = data
        return F.cross_entropy(functional_call(model, p, (xb,)), yb)

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    train = DataLoader(TensorDataset(x, y), batch_size=len(x))
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=len(x_test))
    return task, train, test, h, g_train, g_test, lambda rows: hessian(flat_loss)(
        flat, x[rows], y[rows])


def _arnoldi(task, train, test, regularization, proj_dim):
    attributor = dif.IFAttributorArnoldi(task, device="cpu", seed=0, proj_dim=proj_dim,
                                         max_iter=200, regularization=regularization)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        attributor.cache(train)
        return attributor.attribute(train, test).double()


def test_arnoldi_is_nan_when_its_top_k_holds_a_negative_eigenvalue(case):
    task, train, test, h, *_ = case
    r, k = 1e-3, 20
    eigenvalues = torch.linalg.eigvalsh(h) + r
    top = eigenvalues[eigenvalues.abs().argsort()[-k:]]
    assert int((top < 0).sum()) > 0  # the model's Hessian is indefinite at this point
    assert bool(_arnoldi(task, train, test, r, k).isnan().all())


def test_arnoldi_above_the_negative_curvature_is_the_top_k_influence_function(case):
    task, train, test, h, g_train, g_test, _ = case
    k = 20
    r = 1.1 * float(-torch.linalg.eigvalsh(h)[0])  # H + rI positive definite
    w, v = torch.linalg.eigh(h + r * torch.eye(len(h), dtype=h.dtype))
    top = w.argsort()[-k:]
    expected = (g_train @ v[:, top]) / w[top] @ (v[:, top].T @ g_test.T)
    scores = _arnoldi(task, train, test, r, k)
    # float32 Hessian-vector products in dattri: agreement to about 1e-6 relative
    assert float((scores - expected).abs().max()) < 1e-4 * float(expected.abs().max())


def test_arnoldi_with_proj_dim_at_the_parameter_count_meets_a_spurious_ritz_value(case):
    task, train, test, h, *_ = case
    r = 1.1 * float(-torch.linalg.eigvalsh(h)[0])
    assert float(torch.linalg.eigvalsh(h)[0]) + r > 0.02  # positive definite, yet:
    assert bool(_arnoldi(task, train, test, r, len(h)).isnan().all())


def test_package_arnoldi_is_the_top_k_influence_function_where_dattris_is_nan(case):
    """The package divides the test side by λ_j instead of both sides by √λ_j: the top-k
    (by |λ|) influence function of the indefinite H + rI, mean over the test points."""
    from malleability.estimators import make_estimator

    task, train, test, h, g_train, g_test, _ = case
    r, k = 1e-3, 20
    w, v = torch.linalg.eigh(h + r * torch.eye(len(h), dtype=h.dtype))
    top = w.abs().argsort()[-k:]
    assert int((w[top] < 0).sum()) > 0
    expected = ((g_train @ v[:, top]) / w[top] @ (v[:, top].T @ g_test.T)).mean(1)
    (x, y), (xt, yt) = next(iter(train)), next(iter(test))
    estimator = make_estimator("if-arnoldi", damping=r, proj_dim=k, iterations=200)
    scores = estimator.scores(task.model, x, y, xt, yt, seed=0)
    assert bool(_arnoldi(task, train, test, r, k).isnan().all())
    torch.testing.assert_close(scores, expected, rtol=0,
                               atol=1e-4 * float(expected.abs().max()))


def test_arnoldi_keeping_every_ritz_pair_follows_its_random_start(case):
    """Why the audit warns when proj_dim > iterations / 2: with k = iterations = 20 the last
    Ritz pairs are unconverged, and two start vectors give scores far from the exact top-k
    influence function and from each other; with iterations = P = 43 (the whole Krylov space)
    every start gives it."""
    from malleability.estimators import make_estimator

    task, train, test, h, g_train, g_test, _ = case
    r, k = 1e-3, 20
    w, v = torch.linalg.eigh(h + r * torch.eye(len(h), dtype=h.dtype))
    top = w.abs().argsort()[-k:]
    exact = ((g_train @ v[:, top]) / w[top] @ (v[:, top].T @ g_test.T)).mean(1)
    (x, y), (xt, yt) = next(iter(train)), next(iter(test))

    def error(iterations, seed):
        est = make_estimator("if-arnoldi", damping=r, proj_dim=k, iterations=iterations)
        scores = est.scores(task.model, x, y, xt, yt, seed=seed)
        return float((scores - exact).abs().max() / exact.abs().max())

    assert min(error(k, 0), error(k, 1)) > 0.2
    assert max(error(len(h), 0), error(len(h), 1)) < 1e-3


def test_arnoldi_on_a_sample_of_the_training_set_is_that_samples_top_k_influence_function(case):
    """``hessian_points``: the eigenpairs are those of the Hessian of the mean loss over a
    seeded sample of the rows (the explicit Hessian of those rows here), while the gradients
    are every training point's; the sample changes with the seed, and 0 or n means all."""
    from malleability.estimators import make_estimator
    from malleability.estimators.dattri import hessian_sample

    task, train, test, h, g_train, g_test, sample_hessian = case
    r, k, points = 1e-3, 10, 25
    (x, y), (xt, yt) = next(iter(train)), next(iter(test))
    for seed in (0, 1):
        rows = hessian_sample(len(x), points, seed)
        assert len(set(rows.tolist())) == points and int(rows.max()) < len(x)
        w, v = torch.linalg.eigh(sample_hessian(rows) + r * torch.eye(len(h), dtype=h.dtype))
        top = w.abs().argsort()[-k:]
        expected = ((g_train @ v[:, top]) / w[top] @ (v[:, top].T @ g_test.T)).mean(1)
        est = make_estimator("if-arnoldi", damping=r, proj_dim=k, iterations=len(h),
                             hessian_points=points)
        scores = est.scores(task.model, x, y, xt, yt, seed=seed)
        torch.testing.assert_close(scores, expected, rtol=0,
                                   atol=1e-4 * float(expected.abs().max()))
    assert not torch.equal(hessian_sample(len(x), points, 0), hessian_sample(len(x), points, 1))
    assert torch.equal(hessian_sample(len(x), 0, 3), torch.arange(len(x)))
    assert torch.equal(hessian_sample(len(x), len(x), 3), torch.arange(len(x)))


def test_arnoldi_refuses_more_hessian_points_than_training_points(case):
    from malleability.estimators import make_estimator

    task, train, *_ = case
    x, _ = next(iter(train))
    est = make_estimator("if-arnoldi", proj_dim=5, iterations=10, hessian_points=len(x) + 1)
    with pytest.raises(ValueError, match=r"^hessian_points: expected at most n = 40 "):
        est.check(task.model, x)
    with pytest.raises(ValueError, match=r"^hessian_points: expected at most n = 40 "):
        est.scores(task.model, x, torch.zeros(len(x), dtype=torch.long), x[:2],
                   torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"^hessian_points: expected a non-negative integer"):
        make_estimator("if-arnoldi", hessian_points=-1)
