"""Exact leave-one-out NTK influence without retraining (Definition 3.3, Appendix A.5.1).

With H = (K + λI)⁻¹, α = H Y, f = K_t α and B = K_t H, removing training point i moves the
test predictions by Δ[t, i, :] = −B[t, i] α[i, :] / H[i, i] (exact for kernel ridge).
Influence I(i, t) = L(f(x_t) + Δ[t, i], y_t) − L(f(x_t), y_t): positive when removing i raises
the loss (i helps). Per-point score I_i = mean over test points.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.nn import functional as F

from ._validation import as_tensor, check_finite, check_fraction, check_nonnegative, parse_enum
from .jacobian_ntk import output_size, train_test_ntk
from .kernel_ridge import StabilityReport, as_targets, checked_problem, fit_checked, times_thin
from .losses import Loss, loss_for_targets
from .ntk import empirical_ntk
from .settings import Settings, setting


@dataclass(frozen=True)
class InfluenceSettings(Settings):
    """The kernel-ridge λ of the NTK influence and the share of most helpful points S
    (docs/method.md §5–6; the paper's λ is lost)."""

    ridge: float = setting(1e-3, "Kernel-ridge λ of the NTK influence (paper: value lost).",
                           check_nonnegative)
    fraction: float = setting(0.1, "Share of most helpful training points in S (paper: 0.1).",
                              check_fraction)


@dataclass(frozen=True)
class InfluenceResult:
    """Influence matrix I (n_t × n), per-point scores, test predictions, the dual
    coefficients α = (K + λI)⁻¹Y and the A.9 report."""

    matrix: torch.Tensor
    scores: torch.Tensor
    predictions: torch.Tensor
    alpha: torch.Tensor
    stability: StabilityReport


def ntk_influence(
    k_train: torch.Tensor,
    k_test_train: torch.Tensor,
    y_train: torch.Tensor,
    y_test: torch.Tensor,
    ridge: float,
    loss: Loss | str = Loss.MSE,
    block_bytes: int = 8 * 2**20,
    exact_report: bool = False,
) -> InfluenceResult:
    """Leave-one-out influence of every training point on every test point (float64).

    One Cholesky of K + λI, its factor inverted in place, and triangular products:
    B = K_t H = (K_t L⁻ᵀ) L⁻¹ (with α and the A.9 probes stacked on K_t's rows, one pass) and
    diag(H) = column norms² of L⁻¹ (peak memory: K, L⁻¹ and
    n_t × n matrices). For MSE the loss change has the closed form B ⊙ (R βᵀ) + ½ B² ⊙ ‖β‖²
    with β_i = −α_i/H_ii and R = f − Y_test; for cross-entropy it is
    log E_softmax(f_t)[exp(B_ti β_i)] − B_ti (y_t·β_i), evaluated in test-row blocks of at most
    ``block_bytes`` (classes first, small enough to stay in cache). ``exact_report`` computes
    the A.9 report exactly (see :func:`fit_kernel_ridge`) instead of estimating it. A
    non-finite influence (overflow) raises NonFiniteError.
    """
    loss = parse_enum(loss, Loss, "loss")
    k, y, ridge = checked_problem(k_train, y_train, ridge)
    n = k.shape[0]
    k_t = as_tensor(k_test_train, "k_test_train", ndim=2)
    if k_t.shape[1] != n:
        raise ValueError(f"k_test_train: expected {n} columns (training points), "
                         f"got {k_t.shape[1]}")
    y_t = as_targets(y_test, "y_test", k_t.shape[0])
    if y_t.shape[1] != y.shape[1]:
        raise ValueError(f"y_test: expected {y.shape[1]} columns to match y_train, "
                         f"got {y_t.shape[1]}")
    if loss is Loss.CE:
        _check_one_hot(y, "y_train")
        _check_one_hot(y_t, "y_test")
    fit = fit_checked(k, y, ridge, exact_report, rows=k_t)
    f = times_thin(k_t, fit.alpha)
    b = fit.rows_times_inverse
    beta = -fit.alpha / fit.inverse_diagonal()[:, None]  # n×C
    if loss is Loss.MSE:
        matrix = b * ((f - y_t) @ beta.T) + 0.5 * b**2 * (beta**2).sum(1)[None, :]
    else:
        # L(f + B_ti β_i) − L(f) = log Σ_c p_tc exp(B_ti β_ic) − B_ti (y_t·β_i), p = softmax(f):
        # one exp per (row, i, class) on a block z = log p + B β, classes first.
        matrix = -b * (y_t @ beta.T)
        rows = max(1, block_bytes // (8 * n * beta.shape[1]))
        log_p, beta_c = torch.log_softmax(f, dim=1).T.contiguous(), beta.T.contiguous()
        for s in range(0, b.shape[0], rows):
            matrix[s:s + rows] += _log_expected_exp(log_p[:, s:s + rows], beta_c, b[s:s + rows])
    check_finite(matrix, "k_test_train", "the leave-one-out influence matrix", k_t)
    return InfluenceResult(matrix=matrix, scores=matrix.mean(0), predictions=f,
                           alpha=fit.alpha, stability=fit.stability)


def loo_influence(
    k_train: torch.Tensor,
    k_test_train: torch.Tensor,
    y_train: torch.Tensor,
    y_test: torch.Tensor,
    ridge: float,
    loss: Loss | str = "mse",
) -> torch.Tensor:
    """The (n_test × n_train) influence matrix I[t, i] = L(f₋ᵢ(x_t), y_t) − L(f(x_t), y_t).

    See :func:`ntk_influence` for the scores and the stability report.
    """
    return ntk_influence(k_train, k_test_train, y_train, y_test, ridge, loss).matrix


def _log_expected_exp(log_p: torch.Tensor, beta_c: torch.Tensor, b: torch.Tensor
                      ) -> torch.Tensor:
    """log E_p[exp(b β)] = log Σ_c exp(log p[c, t] + b[t, i] β[c, i]) for a block of test rows
    t (log p: C × rows, β: C × n, b: rows × n): directly where no term over- or underflows (the
    result finite and above −600), else shifted by the largest term."""
    def block() -> torch.Tensor:
        return torch.addcmul(log_p[:, :, None], beta_c[:, None, :], b[None])

    direct = block().exp_().sum(0).log_()
    if bool(torch.isfinite(direct).all()) and float(direct.min()) > -600.0:
        return direct
    z = block()
    top = z.amax(0)
    return torch.log(z.sub_(top).exp_().sum(0)).add_(top)


def _check_one_hot(y: torch.Tensor, name: str) -> None:
    y = y if y.ndim == 2 else y[:, None]
    ok = bool(((y == 0) | (y == 1)).all()) and bool((y.sum(1) == 1).all())
    if not ok:
        raise ValueError(f"{name}: expected one-hot rows for cross-entropy loss")


def network_influence(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                      x_test: torch.Tensor, y_test: torch.Tensor, ridge: float,
                      loss: Loss | str | None = None) -> InfluenceResult:
    """NTK influence on the network's empirical kernel K = Θ_m(X, X), K_t = Θ_m(X_t, X), for
    inputs x of the model (network inputs z = ``model.inputs(x)``). Non-finite network
    inputs raise NonFiniteError naming the stage."""
    loss = loss_for_targets(y_train) if loss is None else loss
    with torch.no_grad():
        z = check_finite(model.inputs(x_train), "x_train", "model.inputs(x_train)")
        z_test = check_finite(model.inputs(x_test), "x_test", "model.inputs(x_test)")
    k = empirical_ntk(model, z)
    k_t = empirical_ntk(model, z_test, z)
    return ntk_influence(k, k_t, y_train, y_test, ridge, loss)


def module_influence(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                     x_test: torch.Tensor | None = None, y_test: torch.Tensor | None = None,
                     ridge: float = 1e-3, *, parameters: Sequence[str] | None = None,
                     max_memory_bytes: int | None = None, block: int | None = None
                     ) -> InfluenceResult:
    """NTK-LOO of any classifier (the ``ntk-loo`` estimator): K = Θ(X, X) and
    K_t = Θ(X_t, X) by :func:`~malleability.jacobian_ntk.train_test_ntk` (float64, bounded
    memory, one pass; K_t is K when ``x_test`` is None), then :func:`labelled_influence`.
    ``y`` are class indices (0/1 for one output).
    """
    if (x_test is None) != (y_test is None):
        raise ValueError("x_test: expected x_test and y_test together (or neither)")
    kw = {"parameters": parameters, "max_memory_bytes": max_memory_bytes, "block": block}
    k, k_t = train_test_ntk(model, x_train, x_train if x_test is None else x_test, **kw)
    return labelled_influence(k, k_t, y_train, y_train if y_test is None else y_test, ridge,
                              output_size(model, x_train))


def labelled_influence(k_train: torch.Tensor, k_test_train: torch.Tensor,
                       y_train: torch.Tensor, y_test: torch.Tensor, ridge: float,
                       classes: int) -> InfluenceResult:
    """:func:`ntk_influence` for class labels of a model with ``classes`` outputs, on its NTK:
    λ = ``ridge`` · tr(K)/n; MSE on ±1 targets for one output, cross-entropy on one-hot
    targets for C ≥ 2."""
    ridge = check_nonnegative(ridge, "ridge")
    k = as_tensor(k_train, "k_train", ndim=2)
    if classes == 1:
        targets = [2.0 * torch.as_tensor(y).to(k.dtype)[:, None] - 1.0 for y in (y_train, y_test)]
    else:
        targets = [F.one_hot(torch.as_tensor(y).long(), classes).to(k.dtype)
                   for y in (y_train, y_test)]
    lam = ridge * float(torch.diagonal(k).mean())
    return ntk_influence(k, k_test_train, *targets, lam, Loss.MSE if classes == 1 else Loss.CE)
