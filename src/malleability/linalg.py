"""Small tensor operations shared by the feature maps, the data transform and the kernels."""

from __future__ import annotations

import torch


def rownorm(z: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """rownorm(Z): each row of ``z`` scaled to unit ℓ2 norm (rows of norm < eps are left ≈ 0).

    Differentiable; keeps the dtype of ``z``.
    """
    return z / z.norm(dim=-1, keepdim=True).clamp_min(eps)
