"""In-place triangular products and inversion against dense torch."""

import pytest
import torch

from malleability import linalg
from malleability.linalg import tri_inverse_, tri_matmul_left_, tri_matmul_right_

F64 = torch.float64


@pytest.fixture(params=[5, 16, 67])
def lower(request, monkeypatch):
    """A well-conditioned lower-triangular matrix with garbage above the diagonal, and a
    block size small enough that the recursion goes several levels deep."""
    monkeypatch.setattr(linalg, "_TRI_BLOCK", 8)
    n = request.param
    gen = torch.Generator().manual_seed(n)
    t = torch.randn(n, n, generator=gen, dtype=F64) / n**0.5
    t.diagonal().copy_(1 + torch.rand(n, generator=gen, dtype=F64))
    return t


def test_triangular_products_match_matmul(lower):
    n = lower.shape[0]
    x = torch.randn(3, n, dtype=F64)
    y = torch.randn(n, 4, dtype=F64)
    torch.testing.assert_close(tri_matmul_right_(x.clone(), lower), x @ lower.tril())
    torch.testing.assert_close(tri_matmul_left_(lower, y.clone()), lower.tril() @ y)
    # On a transposed view (what fit.times_inverse uses): xᵀ ← T xᵀ, i.e. x ← x Tᵀ.
    xt = x.clone()
    tri_matmul_left_(lower, xt.T)
    torch.testing.assert_close(xt, x @ lower.tril().T)


def test_triangular_inverse_in_place(lower):
    inv = tri_inverse_(lower.tril().clone())
    torch.testing.assert_close(inv, torch.linalg.inv(lower.tril()))
    assert torch.count_nonzero(inv.triu(1)) == 0
