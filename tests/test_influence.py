"""Closed-form leave-one-out influence against refitting kernel ridge without each point."""

import numpy as np
import pytest
import torch

from malleability import (
    TwoLayerNet,
    empirical_ntk,
    fit_kernel_ridge,
    loo_influence,
    ntk_influence,
)
from malleability.losses import per_example_loss
from malleability.ntk import infinite_ntk

F64 = torch.float64


def _problem(n=18, n_test=6, classes=3, seed=0):
    gen = torch.Generator().manual_seed(seed)
    x = torch.randn(n + n_test, 5, generator=gen, dtype=F64)
    x = x / x.norm(dim=1, keepdim=True)
    model = TwoLayerNet(5, 64, classes, attention="linear", reference=x[:n], seed=seed)
    k = empirical_ntk(model, x, x[:n])
    labels = torch.randint(0, classes, (n + n_test,), generator=gen)
    y = torch.nn.functional.one_hot(labels, classes).to(F64)
    return k[:n], k[n:], y[:n], y[n:]


def _refit_loss(k, k_t, y, y_t, ridge, i, loss):
    """Kernel ridge refitted without training point i, solved with numpy."""
    keep = [j for j in range(k.shape[0]) if j != i]
    kk = k[keep][:, keep].numpy()
    alpha = np.linalg.solve(kk + ridge * np.eye(len(keep)), y[keep].numpy())
    f = torch.from_numpy(k_t[:, keep].numpy() @ alpha)
    return per_example_loss(f, y_t, loss)


@pytest.mark.parametrize("loss", ["mse", "ce"])
@pytest.mark.parametrize("ridge", [1e-3, 0.5])
def test_loo_equals_refit_without_each_point(loss, ridge):
    k, k_t, y, y_t = _problem()
    result = ntk_influence(k, k_t, y, y_t, ridge, loss)
    alpha = np.linalg.solve(k.numpy() + ridge * np.eye(k.shape[0]), y.numpy())
    base = per_example_loss(torch.from_numpy(k_t.numpy() @ alpha), y_t, loss)
    for i in range(k.shape[0]):
        expected = _refit_loss(k, k_t, y, y_t, ridge, i, loss) - base
        scale = max(1.0, float(expected.abs().max()))
        assert (result.matrix[:, i] - expected).abs().max() <= 1e-8 * scale
    torch.testing.assert_close(result.scores, result.matrix.mean(0))
    torch.testing.assert_close(loo_influence(k, k_t, y, y_t, ridge, loss), result.matrix)


def test_binary_pm1_targets_as_vector():
    k, k_t, y, y_t = _problem(classes=2, seed=1)
    yb, ytb = y[:, 0] * 2 - 1, y_t[:, 0] * 2 - 1
    matrix = loo_influence(k, k_t, yb, ytb, 1e-2)
    for i in (0, 5, 11):
        expected = _refit_loss(k, k_t, yb[:, None], ytb[:, None], 1e-2, i, "mse")
        alpha = np.linalg.solve(k.numpy() + 1e-2 * np.eye(18), yb.numpy()[:, None])
        base = per_example_loss(torch.from_numpy(k_t.numpy() @ alpha), ytb[:, None], "mse")
        torch.testing.assert_close(matrix[:, i], expected - base, rtol=1e-8, atol=1e-10)


def test_cross_entropy_blocks_give_the_same_matrix():
    k, k_t, y, y_t = _problem(seed=2)
    full = ntk_influence(k, k_t, y, y_t, 1e-3, "ce").matrix
    blocked = ntk_influence(k, k_t, y, y_t, 1e-3, "ce", block_bytes=1).matrix
    torch.testing.assert_close(full, blocked, rtol=0, atol=1e-13)


def test_exact_stability_report_matches_numpy():
    k, k_t, y, y_t = _problem(seed=3)
    report = ntk_influence(k, k_t, y, y_t, 1e-3, exact_report=True).stability
    eig = np.linalg.eigvalsh(k.numpy() + 1e-3 * np.eye(18))
    assert report.exact and report.probes == 0
    assert report.min_eigenvalue == pytest.approx(eig[0], rel=1e-9)
    assert report.condition_number == pytest.approx(eig[-1] / eig[0], rel=1e-9)
    assert report.inversion_residual < 1e-10
    assert report.symmetry_error < 1e-14


def _kernels(n=200):
    """Small SPD kernels with different spectra, and one with a 1e-6 asymmetry."""
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(n, 30, generator=gen, dtype=F64)
    x = x / x.norm(dim=1, keepdim=True)
    net = TwoLayerNet(30, 64, 3, attention="linear", reference=x, seed=0)
    q = torch.linalg.qr(torch.randn(n, n, generator=gen, dtype=F64)).Q
    g = torch.randn(n, n, generator=gen, dtype=F64)
    emp = empirical_ntk(net, x)
    return {"infinite NTK": infinite_ntk(x), "empirical NTK": emp,
            "flat spectrum": q @ torch.diag(torch.linspace(1, 2, n, dtype=F64)) @ q.T,
            "Wishart": g @ g.T / n,
            "asymmetric": emp + 1e-6 * torch.randn(n, n, generator=gen, dtype=F64)}


@pytest.mark.parametrize("ridge", [1e-3, 1e-9])
def test_estimated_stability_report_is_close_to_the_exact_one(ridge):
    y = torch.ones(200, 1, dtype=F64)
    for name, k in _kernels().items():
        est = fit_kernel_ridge(k, y, ridge).stability
        exact = fit_kernel_ridge(k, y, ridge, exact=True).stability
        assert not est.exact and est.probes == 8, name
        # Ritz values bound the extreme eigenvalues from inside; κ₂ from below.
        assert exact.max_eigenvalue / 1.2 <= est.max_eigenvalue <= exact.max_eigenvalue, name
        assert exact.min_eigenvalue <= est.min_eigenvalue <= 1.2 * exact.min_eigenvalue, name
        assert (exact.condition_number / 1.5 <= est.condition_number
                <= exact.condition_number * (1 + 1e-9)), name
        if exact.inversion_residual > 1e-13:  # above rounding noise: asymmetric, Wishart
            assert 0.5 <= est.inversion_residual / exact.inversion_residual <= 2, name
        if name == "asymmetric":
            assert 0.67 <= est.symmetry_error / exact.symmetry_error <= 1.5
        else:
            assert est.symmetry_error < 1e-15 and est.inversion_residual < 1e-11, name


def test_inverse_diagonal_and_products_match_the_explicit_inverse():
    k = _kernels(300)["empirical NTK"]
    y = torch.randn(300, 2, dtype=F64)
    fit = fit_kernel_ridge(k, y, 1e-2)
    h = torch.linalg.inv(k + 1e-2 * torch.eye(300, dtype=F64))
    torch.testing.assert_close(fit.inverse_diagonal(), torch.diagonal(h), rtol=1e-10, atol=0)
    rows = torch.randn(7, 300, dtype=F64)
    torch.testing.assert_close(fit.times_inverse(rows), rows @ h, rtol=1e-9, atol=1e-12)
    torch.testing.assert_close(fit.alpha, h @ y, rtol=1e-9, atol=1e-12)


def test_not_positive_definite_is_a_clear_error():
    k = torch.tensor([[1.0, 2.0], [2.0, 1.0]], dtype=F64)  # eigenvalues 3, −1
    with pytest.raises(ValueError, match=r"^k_train: K \+ λI is not positive definite"):
        fit_kernel_ridge(k, torch.ones(2, dtype=F64), 1e-3)


def test_bad_inputs_name_the_argument():
    k, k_t, y, y_t = _problem(seed=4)
    cases = [
        (lambda: loo_influence(k, k_t, y, y_t, -1.0), "ridge: expected a non-negative"),
        (lambda: loo_influence(k[:, :5], k_t, y, y_t, 0.1), "k_train: expected a square"),
        (lambda: loo_influence(k, k_t[:, :4], y, y_t, 0.1), "k_test_train: expected 18 col"),
        (lambda: loo_influence(k, k_t, y[:4], y_t, 0.1), "y_train: expected 18 rows"),
        (lambda: loo_influence(k, k_t, y, y_t[:, :2], 0.1), "y_test: expected 3 columns"),
        (lambda: loo_influence(k, k_t, y * 2, y_t, 0.1, "ce"), "y_train: expected one-hot"),
        (lambda: loo_influence(k, k_t, y, y_t, 0.1, "hinge"), "loss: expected one of"),
        (lambda: loo_influence(k * float("nan"), k_t, y, y_t, 0.1), "k_train: contains NaN"),
        (lambda: loo_influence(k[:0, :0], k_t, y, y_t, 0.1), "k_train: expected a non-empty"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def _autograd_kernel(model, x1, x2):
    """(1/C) Σ_c J_c(x1) J_c(x2)ᵀ, each Jacobian row from torch.autograd.grad."""
    params = list(model.parameters())

    def jac(x):
        out = model(x).reshape(x.shape[0], -1)
        return torch.stack([torch.stack([torch.cat([g.reshape(-1) for g in torch.autograd.grad(
            out[i, c], params, retain_graph=True)]) for c in range(out.shape[1])])
            for i in range(x.shape[0])])

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("acp,bcp->ab", j1, j2) / j1.shape[1]


@pytest.mark.parametrize("classes", [1, 3])
@pytest.mark.parametrize("separate_test", [False, True])
def test_module_influence_equals_refitting_on_the_autograd_kernel(classes, separate_test):
    from malleability.influence import module_influence

    gen = torch.Generator().manual_seed(classes)
    torch.manual_seed(classes)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, classes))
    net = net.to(F64)
    x = torch.randn(9, 4, generator=gen, dtype=F64)
    labels = torch.randint(0, max(classes, 2), (9,), generator=gen)
    xt, lt = (x[6:], labels[6:]) if separate_test else (None, None)
    xs, ls = (x[:6], labels[:6]) if separate_test else (x, labels)
    ridge = 1e-2
    result = module_influence(net, xs, ls, xt, lt, ridge, max_memory_bytes=1, block=1)
    xt, lt = (xs, ls) if xt is None else (xt, lt)
    k, k_t = _autograd_kernel(net, xs, xs), _autograd_kernel(net, xt, xs)
    lam = ridge * float(k.diagonal().mean())
    if classes == 1:
        y, y_t, loss = 2.0 * ls[:, None].to(F64) - 1, 2.0 * lt[:, None].to(F64) - 1, "mse"
    else:
        y, y_t = (torch.nn.functional.one_hot(v, classes).to(F64) for v in (ls, lt))
        loss = "ce"
    alpha = np.linalg.solve(k.numpy() + lam * np.eye(k.shape[0]), y.numpy())
    base = per_example_loss(torch.from_numpy(k_t.numpy() @ alpha), y_t, loss)
    refit = torch.stack([(_refit_loss(k, k_t, y, y_t, lam, i, loss) - base).mean()
                         for i in range(k.shape[0])])
    torch.testing.assert_close(result.scores, refit, rtol=1e-8, atol=1e-12)


def test_rescoring_after_changing_rows_reuses_the_clean_kernel():
    from malleability.influence import labelled_influence, module_influence
    from malleability.jacobian_ntk import jacobian_ntk, updated_ntk

    gen = torch.Generator().manual_seed(4)
    torch.manual_seed(4)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.Tanh(), torch.nn.Linear(6, 3))
    net = net.to(F64)
    x = torch.randn(10, 4, generator=gen, dtype=F64)
    y = torch.randint(0, 3, (10,), generator=gen)
    changed = torch.tensor([2, 7])
    x_adv = x.clone()
    x_adv[changed] += 0.5
    k_new, k_cross = updated_ntk(net, jacobian_ntk(net, x), x, x_adv, changed)
    reused = labelled_influence(k_new, k_cross, y, y, 1e-2, 3)
    direct = module_influence(net, x_adv, y, x, y, 1e-2)  # train = x_adv, test = clean x
    torch.testing.assert_close(reused.scores, direct.scores, rtol=1e-9, atol=1e-12)


def test_cross_entropy_with_logits_too_large_for_exp_equals_refitting():
    """Test kernel rows scaled by 10⁴: the logits and their leave-one-out changes reach past
    exp's range (about ±709), so the log-sum-exp takes its shifted path."""
    k, k_t, y, y_t = _problem(seed=4)
    k_t = k_t * 1e4
    result = ntk_influence(k, k_t, y, y_t, 1e-3, "ce")
    alpha = np.linalg.solve(k.numpy() + 1e-3 * np.eye(k.shape[0]), y.numpy())
    assert np.abs(k_t.numpy() @ alpha).max() > 709  # the direct exp would overflow
    base = per_example_loss(torch.from_numpy(k_t.numpy() @ alpha), y_t, "ce")
    for i in (0, 7, 17):
        expected = _refit_loss(k, k_t, y, y_t, 1e-3, i, "ce") - base
        torch.testing.assert_close(result.matrix[:, i], expected, rtol=1e-7, atol=1e-6)
