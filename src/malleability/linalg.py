"""Small tensor operations shared by the feature maps, the data transform and the kernels."""

from __future__ import annotations

import torch


def rownorm(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """rownorm(Z): each row of ``z`` scaled to unit ℓ2 norm (rows of norm < eps are left ≈ 0).

    Differentiable; keeps the dtype of ``z``.
    """
    return z / z.norm(dim=-1, keepdim=True).clamp_min(eps)


# In-place products with and inversion of a lower-triangular matrix, recursive so that almost
# all the work is large GEMMs (torch has no trmm/trtri). Each touches only the lower triangle of
# ``t`` and allocates at most one block of size ``_TRI_BLOCK``² × columns.
_TRI_BLOCK = 128  # 256 and 512 ran 10–20 % slower at n = 3000 (one thread)


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

    [[A, 0], [C, D]]⁻¹ = [[A⁻¹, 0], [−D⁻¹ C A⁻¹, D⁻¹]], applied recursively.
    """
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

