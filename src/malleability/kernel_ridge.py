"""Kernel ridge regression on an NTK and its numerical checks (§4, Appendix A.9).

f_K(z) = K(z, Z) (K(Z, Z) + λI)⁻¹ Y, solved through one Cholesky factor of K + λI (float64).
K + λI is factored in a buffer of its own and the factor is inverted in place, so a fit holds
two n × n matrices (the caller's K and L⁻¹) and never forms H = (K + λI)⁻¹ = L⁻ᵀL⁻¹.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ._validation import as_tensor, check_finite, check_nonnegative
from .linalg import tri_inverse_, tri_matmul_left_, tri_matmul_right_

# Random probe vectors for the residual, symmetry and spectrum estimates, and Krylov blocks
# for the extreme eigenvalues (so p × blocks Ritz vectors per end of the spectrum).
PROBES, KRYLOV_BLOCKS, PROBE_SEED = 8, 3, 0


@dataclass(frozen=True)
class StabilityReport:
    """Appendix A.9 checks of K + λI: positive definiteness, conditioning, inversion, symmetry.

    Positive definiteness is certified by the Cholesky factorisation itself (a fit fails
    otherwise). With ``exact=False`` (default) the other fields are estimates:

    - ``max_eigenvalue`` / ``min_eigenvalue``: the extreme Ritz values of K + λI and of its
      inverse on a block Krylov space from random probes; the first is a lower bound on the
      exact λ_max, the second an upper bound on the exact λ_min;
    - ``condition_number``: their ratio, an estimate (lower bound) of the 2-norm condition
      number κ₂ = λ_max/λ_min;
    - ``inversion_residual``: ‖((K + λI)H − I)P‖_F / √(pn) for p Gaussian probes P, whose
      square is an unbiased estimate of ‖(K + λI)H − I‖²_F / n;
    - ``symmetry_error``: ‖(K − Kᵀ)P‖_F / ‖KP‖_F, likewise estimating ‖K − Kᵀ‖_F / ‖K‖_F.

    With ``exact=True`` they are computed exactly (eigvalsh, H formed, full products).
    """

    min_eigenvalue: float
    max_eigenvalue: float
    condition_number: float  # 2-norm condition number of K + λI
    inversion_residual: float  # ‖(K + λI) H − I‖_F / √n
    symmetry_error: float  # ‖K − Kᵀ‖_F / ‖K‖_F
    ridge: float
    n: int
    exact: bool  # False: the four fields above are the estimates described in the docstring
    probes: int  # p random probe vectors of the estimates (0 when exact)

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class KernelRidgeFit:
    """A fitted kernel ridge model: L⁻¹ (H = (K + λI)⁻¹ = L⁻ᵀL⁻¹), α = H Y, the A.9 report,
    and R H for the rows R the fit was asked for (``rows_times_inverse``; None if none)."""

    factor_inverse: torch.Tensor  # L⁻¹, n×n lower triangular (upper triangle zero)
    alpha: torch.Tensor  # α, n×C
    stability: StabilityReport
    rows_times_inverse: torch.Tensor | None = None

    def times_inverse(self, rows: torch.Tensor) -> torch.Tensor:
        """R H for R (k × n); see :func:`_times_inverse`."""
        return _times_inverse(self.factor_inverse, rows)

    def inverse_diagonal(self, block: int = 512) -> torch.Tensor:
        """diag(H)_i = ‖L⁻¹ e_i‖², summed over row blocks of the lower triangle of L⁻¹."""
        l_inv = self.factor_inverse
        out = torch.zeros(l_inv.shape[0], dtype=l_inv.dtype, device=l_inv.device)
        for s in range(0, l_inv.shape[0], block):
            rows = l_inv[s:s + block, :s + block]
            out[:s + block] += (rows * rows).sum(0)
        return out

    def predict(self, k_test_train: torch.Tensor) -> torch.Tensor:
        """f = K_t α (n_t×C)."""
        k_test_train = as_tensor(k_test_train, "k_test_train", ndim=2)
        if k_test_train.shape[1] != self.alpha.shape[0]:
            raise ValueError(f"k_test_train: expected {self.alpha.shape[0]} columns "
                             f"(training points), got {k_test_train.shape[1]}")
        return times_thin(k_test_train, self.alpha)


def as_targets(y: torch.Tensor, name: str, n: int) -> torch.Tensor:
    """Targets as an (n × C) float64 matrix; a vector becomes one column."""
    y = as_tensor(y, name, ndim=(1, 2))
    y = y[:, None] if y.ndim == 1 else y
    if y.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows, got {y.shape[0]}")
    return y


def fit_kernel_ridge(k_train: torch.Tensor, y_train: torch.Tensor, ridge: float,
                     exact: bool = False) -> KernelRidgeFit:
    """Factor K + λI once (Cholesky, lower triangle of K), invert the factor in place, form
    α = H Y and run the A.9 checks (estimates unless ``exact``; see :class:`StabilityReport`).

    Peak memory: K and one n × n buffer (``exact=True`` adds two more for H and (K + λI)H).
    Raises ValueError when K + λI is not positive definite, NonFiniteError when L⁻¹ or α
    overflows.
    """
    k, y, ridge = checked_problem(k_train, y_train, ridge)
    return fit_checked(k, y, ridge, exact)


def checked_problem(k_train: torch.Tensor, y_train: torch.Tensor, ridge: float
                    ) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(K, Y as n × C, λ) after the input checks of :func:`fit_kernel_ridge`."""
    k = as_tensor(k_train, "k_train", ndim=2)
    n = k.shape[0]
    if k.shape[1] != n:
        raise ValueError(f"k_train: expected a square matrix, got shape {tuple(k.shape)}")
    ridge = check_nonnegative(ridge, "ridge")
    return k, as_targets(y_train, "y_train", n), ridge


def fit_checked(k: torch.Tensor, y: torch.Tensor, ridge: float, exact: bool = False,
                rows: torch.Tensor | None = None) -> KernelRidgeFit:
    """:func:`fit_kernel_ridge` on inputs that passed :func:`checked_problem`; with ``rows``
    R (k × n), also R H. α = H Y, R H and the A.9 probes' H P come from one pair of
    triangular products with L⁻¹ on the stacked rows [Yᵀ; Pᵀ; R] (one pass over L⁻¹ each)."""
    n = k.shape[0]
    factor = k.clone()
    factor.diagonal().add_(ridge)
    info = torch.empty((), dtype=torch.int32, device=k.device)
    # Lower factor in place: the row-major buffer read column-major is its transpose.
    torch.linalg.cholesky_ex(factor.mT, upper=True, out=(factor.mT, info))
    if int(info) != 0:
        raise ValueError(f"k_train: K + λI is not positive definite (Cholesky failed at "
                         f"pivot {int(info)} of {n}, ridge {ridge:g}); raise the ridge")
    check_finite(tri_inverse_(factor), "k_train", "the inverse Cholesky factor L⁻¹ of K + λI",
                 k)
    c = y.shape[1]
    probes = None if exact else _probes(k)
    stacked = [y.T, *([] if probes is None else [probes.T]), *([] if rows is None else [rows])]
    product = _times_inverse(factor, torch.cat(stacked) if len(stacked) > 1 else y.T)
    alpha = check_finite(product[:c].T, "y_train", "the ridge coefficients α = (K + λI)⁻¹Y", y)
    if exact:
        stability = _exact_report(factor, k, ridge)
    else:
        p = probes.shape[1]
        stability = _estimated_report(factor, k, ridge, probes, product[c:c + p].T)
    extra = None if rows is None else product[product.shape[0] - rows.shape[0]:]
    return KernelRidgeFit(factor_inverse=factor, alpha=alpha, stability=stability,
                          rows_times_inverse=extra)


def times_thin(a: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """A V for a few columns V, as (Vᵀ Aᵀ)ᵀ: on CPU, MKL runs the product of a wide row
    block with a transposed matrix several times faster than a matrix with a thin one."""
    return (v.T @ a.T).T


def _times_inverse(l_inv: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
    """R H = (R L⁻ᵀ) L⁻¹ for R (k × n): two in-place triangular products on a copy of R (for
    8 rows at n = 3,000 these took 14 ms, two dense products 20 ms)."""
    out = rows.clone()
    tri_matmul_left_(l_inv, out.T)  # out ← out L⁻ᵀ
    return tri_matmul_right_(out, l_inv)


def _probes(k: torch.Tensor) -> torch.Tensor:
    """The A.9 estimates' p Gaussian probe columns P (n × p), seeded."""
    gen = torch.Generator(device=k.device).manual_seed(PROBE_SEED)
    n = k.shape[0]
    return torch.randn(n, min(PROBES, n), generator=gen, dtype=k.dtype, device=k.device)


def _estimated_report(l_inv: torch.Tensor, k: torch.Tensor, ridge: float,
                      p: torch.Tensor | None = None, hp: torch.Tensor | None = None
                      ) -> StabilityReport:
    """The A.9 fields from p Gaussian probes P (:func:`_probes`; H P when the caller has it):
    products with K, Kᵀ and H = L⁻ᵀL⁻¹ only."""
    n = k.shape[0]
    p = _probes(k) if p is None else p
    hp = _times_inverse(l_inv, p.T).T if hp is None else hp
    k_both = times_thin(k, torch.cat([p, hp], dim=1))  # one pass over K: K P and K H P
    kp, khp = k_both[:, :p.shape[1]], k_both[:, p.shape[1]:]
    residual = torch.linalg.norm(khp + ridge * hp - p) / (p.numel() ** 0.5)
    asym = torch.linalg.norm(kp - (p.T @ k).T) / torch.linalg.norm(kp).clamp_min(1e-300)

    def reg(v: torch.Tensor) -> torch.Tensor:
        return times_thin(k, v) + ridge * v

    def inv(v: torch.Tensor) -> torch.Tensor:
        return _times_inverse(l_inv, v.T).T

    lam_max = _top_ritz_value(reg, p, kp + ridge * p)
    lam_min = 1.0 / _top_ritz_value(inv, p, hp)
    return StabilityReport(
        min_eigenvalue=lam_min, max_eigenvalue=lam_max, condition_number=lam_max / lam_min,
        inversion_residual=float(residual), symmetry_error=float(asym), ridge=ridge, n=n,
        exact=False, probes=p.shape[1])


def _top_ritz_value(apply, start: torch.Tensor, applied_start: torch.Tensor) -> float:
    """Largest Ritz value of a symmetric operator A on the block Krylov space
    span{S, AS, …, A^{b−1}S} (b = KRYLOV_BLOCKS, fewer when n is small): a lower bound on
    its largest eigenvalue. ``applied_start`` is A S, already computed by the caller.
    """
    n, p = start.shape
    q, r = torch.linalg.qr(start)
    aq = torch.linalg.solve_triangular(r, applied_start, upper=True, left=False)
    basis, images = [q], [aq]
    for _ in range(min(KRYLOV_BLOCKS, n // p) - 1):
        w = images[-1]
        for _ in range(2):  # block Gram–Schmidt, twice for orthogonality
            for b in basis:
                w = w - b @ (b.T @ w)
        q = torch.linalg.qr(w).Q
        basis.append(q)
        images.append(apply(q))
    basis_all, images_all = torch.cat(basis, dim=1), torch.cat(images, dim=1)
    t = basis_all.T @ images_all
    return float(torch.linalg.eigvalsh((t + t.T) / 2)[-1])


def _exact_report(l_inv: torch.Tensor, k: torch.Tensor, ridge: float) -> StabilityReport:
    """The A.9 fields exactly: eigvalsh of K + λI (lower triangle), H formed, full products."""
    n = k.shape[0]
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    eig = torch.linalg.eigvalsh(k + ridge * eye)
    h = _times_inverse(l_inv, eye)
    residual = torch.linalg.norm(k @ h + ridge * h - eye) / n**0.5
    asym = torch.linalg.norm(k - k.T) / torch.linalg.norm(k).clamp_min(1e-300)
    return StabilityReport(
        min_eigenvalue=float(eig[0]), max_eigenvalue=float(eig[-1]),
        condition_number=float(eig[-1] / eig[0]), inversion_residual=float(residual),
        symmetry_error=float(asym), ridge=ridge, n=n, exact=True, probes=0)


def kernel_ridge_predict(k_train: torch.Tensor, k_test_train: torch.Tensor,
                         y_train: torch.Tensor, ridge: float) -> torch.Tensor:
    """f_K(X_test) = K_t (K + λI)⁻¹ Y, shape (n_t × C)."""
    return fit_kernel_ridge(k_train, y_train, ridge).predict(k_test_train)
