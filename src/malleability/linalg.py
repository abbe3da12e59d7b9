"""Small tensor operations shared by the feature maps, the data transform and the kernels."""

from __future__ import annotations

import numpy as np
import torch
from scipy.linalg import lapack
from threadpoolctl import threadpool_limits


def rownorm(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """rownorm(Z): each row of ``z`` scaled to unit ℓ2 norm (rows of norm < eps are left ≈ 0).

    Differentiable; keeps the dtype of ``z``.
    """
    return z / z.norm(dim=-1, keepdim=True).clamp_min(eps)


# In-place products with and inversion of a lower-triangular matrix, each touching only the
# lower triangle of ``t``: recursions whose work is almost all large GEMMs (torch has no
# trmm/trtri), allocating at most one block of size ``_TRI_BLOCK``² × columns. On the CPU the
# inversion is LAPACK's trtri instead (SciPy's, on the tensor's memory, with as many BLAS threads
# as torch has): 296 ms against the recursion's 322 ms at n = 3,000 on one thread. For the
# products, SciPy's BLAS trmm was no faster (232 against 216 ms for 500 rows, 20 against 14 ms
# for 8).
_TRI_BLOCK = 128  # 256 and 512 ran 10–20 % slower at n = 3000 (one thread)
_LAPACK_DTYPES = (torch.float32, torch.float64)


def _fortran(t: torch.Tensor) -> tuple[np.ndarray, bool] | None:
    """``t``'s memory as a Fortran-ordered numpy array, and whether that array is tᵀ (t
    row-major) rather than t (t column-major); None where LAPACK cannot work on ``t`` in
    place (not on the CPU, not float32/64, not contiguous either way, conjugated or needing
    grad)."""
    if (t.device.type != "cpu" or t.dtype not in _LAPACK_DTYPES or t.requires_grad
            or t.is_conj() or t.ndim != 2 or min(t.shape) == 0):
        return None
    if t.is_contiguous():
        return t.numpy().T, True
    if t.T.is_contiguous():
        return t.numpy(), False
    return None


def tri_matmul_right_(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """x ← x T in place for lower-triangular T (m × m), x (k × m); returns ``x``."""
    m = t.shape[0]
    if m <= _TRI_BLOCK:
        return x.copy_(x @ t.tril())
    h = m // 2
    tri_matmul_right_(x[:, :h], t[:h, :h])
    x[:, :h].addmm_(x[:, h:], t[h:, :h])
    tri_matmul_right_(x[:, h:], t[h:, h:])
    return x


def tri_matmul_left_(t: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """y ← T y in place for lower-triangular T (m × m), y (m × k); returns ``y``."""
    m = t.shape[0]
    if m <= _TRI_BLOCK:
        return y.copy_(t.tril() @ y)
    h = m // 2
    tri_matmul_left_(t[h:, h:], y[h:])
    y[h:].addmm_(t[h:, :h], y[:h])
    tri_matmul_left_(t[:h, :h], y[:h])
    return y


def tri_inverse_(t: torch.Tensor) -> torch.Tensor:
    """T ← T⁻¹ in place for lower-triangular T with a non-zero diagonal (n³/3 flops).

    On the CPU, LAPACK's trtri; elsewhere [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹ C A⁻¹, D⁻¹]],
    applied recursively.
    """
    ft = _fortran(t)
    if ft is not None and t.shape[0] == t.shape[1]:
        with threadpool_limits(torch.get_num_threads(), user_api="blas"):
            out, info = lapack.get_lapack_funcs("trtri", (ft[0],))(
                ft[0], lower=0 if ft[1] else 1, overwrite_c=1)
        if info != 0:
            raise ValueError(f"t: expected a non-zero diagonal, got a zero at row {info}")
        if not np.shares_memory(out, ft[0]):  # SciPy copied rather than overwrote
            ft[0][...] = out
        return t
    m = t.shape[0]
    if m <= _TRI_BLOCK:
        eye = torch.eye(m, dtype=t.dtype, device=t.device)
        return t.copy_(torch.linalg.solve_triangular(t.tril(), eye, upper=False))
    h = m // 2
    a, c, d = t[:h, :h], t[h:, :h], t[h:, h:]
    tri_inverse_(a)
    tri_inverse_(d)
    tri_matmul_right_(c, a)
    tri_matmul_left_(d, c)
    c.neg_()
    return t
