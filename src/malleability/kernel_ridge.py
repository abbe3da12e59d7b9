"""Kernel ridge regression on an NTK and its numerical checks (§4, Appendix A.9).

f_K(z) = K(z, Z) (K(Z, Z) + λI)⁻¹ Y, solved through one Cholesky factor of K + λI (float64).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch

from ._validation import as_tensor, check_finite, check_nonnegative


@dataclass(frozen=True)
class StabilityReport:
    """Appendix A.9 checks of K + λI: positive definiteness, conditioning, inversion, symmetry."""

    min_eigenvalue: float
    max_eigenvalue: float
    condition_number: float
    inversion_residual: float  # ‖(K + λI) H − I‖_F / √n
    symmetry_error: float  # ‖K − Kᵀ‖_F / ‖K‖_F
    ridge: float
    n: int

    def to_dict(self) -> dict[str, float]:
        return asdict(self)


@dataclass(frozen=True)
class KernelRidgeFit:
    """A fitted kernel ridge model: H = (K + λI)⁻¹, α = H Y and the stability report."""

    inverse: torch.Tensor  # H, n×n
    alpha: torch.Tensor  # α, n×C
    stability: StabilityReport

    def predict(self, k_test_train: torch.Tensor) -> torch.Tensor:
        """f = K_t α (n_t×C)."""
        k_test_train = as_tensor(k_test_train, "k_test_train", ndim=2)
        if k_test_train.shape[1] != self.alpha.shape[0]:
            raise ValueError(f"k_test_train: expected {self.alpha.shape[0]} columns "
                             f"(training points), got {k_test_train.shape[1]}")
        return k_test_train @ self.alpha


def as_targets(y: torch.Tensor, name: str, n: int) -> torch.Tensor:
    """Targets as an (n × C) float64 matrix; a vector becomes one column."""
    y = as_tensor(y, name, ndim=(1, 2))
    y = y[:, None] if y.ndim == 1 else y
    if y.shape[0] != n:
        raise ValueError(f"{name}: expected {n} rows, got {y.shape[0]}")
    return y


def fit_kernel_ridge(k_train: torch.Tensor, y_train: torch.Tensor, ridge: float
                     ) -> KernelRidgeFit:
    """Factor K + λI once (Cholesky), form H and α = H Y, and run the A.9 checks.

    Raises ValueError when K + λI is not positive definite, NonFiniteError when H or α
    overflows.
    """
    k = as_tensor(k_train, "k_train", ndim=2)
    n = k.shape[0]
    if k.shape[1] != n:
        raise ValueError(f"k_train: expected a square matrix, got shape {tuple(k.shape)}")
    ridge = check_nonnegative(ridge, "ridge")
    y = as_targets(y_train, "y_train", n)
    norm_k = float(torch.linalg.norm(k))
    symmetry_error = float(torch.linalg.norm(k - k.T)) / max(norm_k, 1e-300)
    eye = torch.eye(n, dtype=k.dtype, device=k.device)
    reg = (k + k.T) / 2 + ridge * eye
    eig = torch.linalg.eigvalsh(reg)
    chol, info = torch.linalg.cholesky_ex(reg)
    if int(info) != 0 or eig[0] <= 0:
        raise ValueError(f"k_train: K + λI is not positive definite (min eigenvalue "
                         f"{float(eig[0]):.3e}, ridge {ridge:g}); raise the ridge")
    inverse = check_finite(torch.cholesky_inverse(chol), "k_train", "(K + λI)⁻¹", k)
    alpha = check_finite(inverse @ y, "y_train", "the ridge coefficients α = (K + λI)⁻¹Y", y)
    residual = float(torch.linalg.norm(reg @ inverse - eye)) / n**0.5
    report = StabilityReport(
        min_eigenvalue=float(eig[0]), max_eigenvalue=float(eig[-1]),
        condition_number=float(eig[-1] / eig[0]), inversion_residual=residual,
        symmetry_error=symmetry_error, ridge=ridge, n=n)
    return KernelRidgeFit(inverse=inverse, alpha=alpha, stability=report)


def kernel_ridge_predict(k_train: torch.Tensor, k_test_train: torch.Tensor,
                         y_train: torch.Tensor, ridge: float) -> torch.Tensor:
    """f_K(X_test) = K_t (K + λI)⁻¹ Y, shape (n_t × C)."""
    return fit_kernel_ridge(k_train, y_train, ridge).predict(k_test_train)
