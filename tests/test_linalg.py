"""In-place triangular products and inversion against dense torch."""

import pytest
import torch

from malleability import linalg
from malleability.linalg import tri_inverse_, tri_matmul_left_, tri_matmul_right_

F64 = torch.float64


@pytest.fixture(params=[(5, "lapack"), (67, "lapack"), (5, "recursion"), (16, "recursion"),
                        (67, "recursion")], ids=str)
def lower(request, monkeypatch):
    """A well-conditioned lower-triangular matrix with garbage above the diagonal; the inverse
    either by LAPACK (CPU, contiguous) or by the recursion (what CUDA takes), with a block size
    small enough that the recursions go several levels deep."""
    n, backend = request.param
    if backend == "recursion":
        monkeypatch.setattr(linalg, "_fortran", lambda t: None)
    monkeypatch.setattr(linalg, "_TRI_BLOCK", 8)
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


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_either_memory_layout_and_dtype_leaves_the_upper_triangle_alone(dtype):
    gen = torch.Generator().manual_seed(1)
    t = (torch.randn(40, 40, generator=gen, dtype=F64) / 40**0.5).to(dtype)
    t.diagonal().add_(2)
    before = t.clone()
    x, y = torch.randn(6, 40, generator=gen).to(dtype), torch.randn(40, 6, generator=gen).to(dtype)
    tol = {"rtol": 1e-5, "atol": 1e-5} if dtype == torch.float32 else {}
    for operand in (x, x.T.contiguous().T):  # row-major and column-major
        torch.testing.assert_close(tri_matmul_right_(operand.clone(), t), x @ t.tril(), **tol)
    for operand in (y, y.T.contiguous().T):
        torch.testing.assert_close(tri_matmul_left_(t, operand.clone()), t.tril() @ y, **tol)
    torch.testing.assert_close(t, before, rtol=0, atol=0)
    inv = tri_inverse_(t.clone())
    torch.testing.assert_close(inv.tril(), torch.linalg.inv(t.tril()), **tol)
    torch.testing.assert_close(inv.triu(1), t.triu(1), rtol=0, atol=0)  # only the lower part
    column_major = t.tril().T.contiguous().T
    torch.testing.assert_close(tri_inverse_(column_major), torch.linalg.inv(t.tril()), **tol)


def test_a_zero_on_the_diagonal_is_refused():
    t = torch.eye(4, dtype=F64)
    t[2, 2] = 0
    with pytest.raises(ValueError, match="t: expected a non-zero diagonal, got a zero at row 3"):
        tri_inverse_(t)
