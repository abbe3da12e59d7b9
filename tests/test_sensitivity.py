"""Kernel Lipschitz constants and the intrinsic sensitivity (Prop. 4.6, Def. C.12, Prop. C.13)
against brute force: every vertex of the ε-box, finite differences, refitting."""

import itertools
import math

import numpy as np
import pytest
import torch

from malleability import fit_kernel_ridge, infinite_ntk
from malleability.attention import AttentionFeatures
from malleability.kernel_lipschitz import (
    RELU_NTK_FACTOR,
    ChangeSearch,
    attention_gram_change_bound,
    attention_kernel_lipschitz,
    gram_change,
    intrinsic_sensitivity,
    kernel_row_change,
    polynomial_kernel_lipschitz,
    relu_ntk_lipschitz,
    sensitivity_gap,
)

F64 = torch.float64


def _pixels(n, d, seed):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _attention_rows(reference):
    """Rows of the unnormalised linearized-attention kernel φ(x)·φ(R), R fixed."""
    front = AttentionFeatures(reference, "linear", normalize=False)
    phi_r = front(reference)
    return lambda xb: front(xb) @ phi_r.T


def _attention_gram(x):
    """K = φ(X)φ(X)ᵀ with X its own reference (= G³)."""
    phi = AttentionFeatures(x, "linear", normalize=False)(x)
    return phi @ phi.T


def _box_vertices(x, eps):
    lo, hi = (x - eps).clamp(0, 1), (x + eps).clamp(0, 1)
    bits = torch.tensor(list(itertools.product([0, 1], repeat=x.numel())), dtype=torch.bool)
    return torch.where(bits, hi, lo)


@pytest.mark.parametrize("seed", [0, 1])
def test_measured_row_change_matches_the_brute_force_maximum_over_box_vertices(seed):
    # the linear-attention row change ‖(x' − x) A‖ is convex in x', so its maximum over the
    # box (ε-ball ∩ [0,1]) sits at a vertex: 2^6 vertices give the exact maximum
    r, x, eps = _pixels(10, 6, seed), _pixels(4, 6, seed + 10), 0.1
    rows = _attention_rows(r)
    search = ChangeSearch(eps, restarts=8, random_directions=8, seed=seed)
    measured = kernel_row_change(rows, x, search)
    base = rows(x)
    for b in range(x.shape[0]):
        exact = float((rows(_box_vertices(x[b], eps)) - base[b]).norm(dim=1).max())
        assert measured.change[b] <= exact * (1 + 1e-12)
        assert measured.change[b] >= 0.99 * exact
    assert measured.lipschitz == pytest.approx(float(measured.change.max()) / eps)


def test_attention_lipschitz_dominates_the_exact_constant_which_is_attained():
    r = _pixels(12, 7, 2)
    g = (r @ r.T).numpy()
    top = np.linalg.eigvalsh(g)[-1]
    exact = top**2.5  # operator norm of the row map δ ↦ δ RᵀR (φ(R))ᵀ = δ Rᵀ G²
    _, _, vt = np.linalg.svd(r.numpy())
    rows = _attention_rows(r)
    x = _pixels(1, 7, 3)
    delta = 1e-3 * torch.from_numpy(vt[0])[None]
    attained = float((rows(x + delta) - rows(x)).norm()) / 1e-3
    assert attained == pytest.approx(exact, rel=1e-9)
    assert attention_kernel_lipschitz(r) == pytest.approx(top**2 * np.linalg.norm(r.numpy()))
    assert exact <= attention_kernel_lipschitz(r)
    measured = kernel_row_change(rows, _pixels(3, 7, 4), ChangeSearch(0.2))
    assert float(measured.ratio_l2.max()) <= exact * (1 + 1e-9)


def test_relu_ntk_lipschitz_bounds_finite_differences_and_pgd():
    z = _pixels(15, 5, 5)
    # per-entry gradient bound by central differences, including near-parallel pairs
    gen = torch.Generator().manual_seed(6)
    worst = 0.0
    for _ in range(200):
        a = torch.randn(5, generator=gen, dtype=F64)
        b = a + 0.05 * torch.randn(5, generator=gen, dtype=F64) if _ % 2 else \
            torch.randn(5, generator=gen, dtype=F64)
        u = torch.randn(5, generator=gen, dtype=F64)
        u /= u.norm()
        h = 1e-6
        fd = (infinite_ntk((a + h * u)[None], b[None]) - infinite_ntk((a - h * u)[None],
                                                                       b[None])) / (2 * h)
        worst = max(worst, float(fd.abs()) / float(b.norm()))
    assert worst <= RELU_NTK_FACTOR * (1 + 1e-6)
    assert worst >= RELU_NTK_FACTOR / 1.5  # the bound is within 1.5× of what is attained
    measured = kernel_row_change(lambda xb: infinite_ntk(xb, z), _pixels(4, 5, 7),
                                 ChangeSearch(0.3))
    assert float(measured.ratio_l2.max()) <= relu_ntk_lipschitz(z)


def test_polynomial_lipschitz_bounds_random_perturbations():
    z = torch.nn.functional.normalize(_pixels(20, 6, 8) - 0.5, dim=1)
    x = torch.nn.functional.normalize(_pixels(30, 6, 9) - 0.5, dim=1)
    eps, p = 0.2, 3
    bound = polynomial_kernel_lipschitz(z, p, eps)
    gen = torch.Generator().manual_seed(10)
    delta = torch.randn(30, 6, generator=gen, dtype=F64)
    delta = eps * delta / delta.norm(dim=1, keepdim=True)
    change = (((x + delta) @ z.T) ** p - (x @ z.T) ** p).norm(dim=1)
    assert float(change.max()) / eps <= bound
    assert bound == pytest.approx(p * (1 + eps) ** (p - 1) * math.sqrt(20))


def test_gram_change_of_data_dependent_attention_stays_under_the_analytic_bound():
    x, eps = _pixels(8, 5, 11), 0.05
    measured = gram_change(_attention_gram, x, ChangeSearch(eps), indices=[0, 3])
    radius = eps * math.sqrt(5)  # the ℓ∞ ball of radius ε lies in the ℓ2 ball of radius ε√d
    assert float(measured.change.max()) <= attention_gram_change_bound(x, radius)
    # the search reaches the best vertex of the ε-box (brute force over its 2^5 vertices)
    base = _attention_gram(x)
    for col, j in enumerate([0, 3]):
        best = 0.0
        for vertex in _box_vertices(x[j], eps):
            moved = torch.cat([x[:j], vertex[None], x[j + 1:]])
            best = max(best, float(torch.linalg.matrix_norm(_attention_gram(moved) - base, ord=2)))
        assert float(measured.change[col]) >= 0.99 * best
    with pytest.raises(ValueError, match="indices"):
        gram_change(_attention_gram, x, ChangeSearch(eps), indices=[8])
    with pytest.raises(ValueError, match="^eps: expected a positive number"):
        ChangeSearch(0.0)


@pytest.mark.parametrize("ridge", [1e-2, 1e-1, 1.0])
def test_intrinsic_sensitivity_bounds_refitted_alpha(ridge):
    x, eps = _pixels(8, 5, 12), 0.05
    y = torch.tensor([1.0, -1, 1, 1, -1, -1, 1, -1], dtype=F64)
    k = _attention_gram(x)
    radius = eps * math.sqrt(5)
    lipschitz = attention_gram_change_bound(x, radius) / radius
    sens = intrinsic_sensitivity(k, y, ridge, lipschitz)
    alpha = fit_kernel_ridge(k, y, ridge).alpha
    assert sens.bound == pytest.approx(lipschitz * math.sqrt(8) / ridge**2, rel=1e-12)
    assert sens.alpha_bound == pytest.approx(lipschitz * float(alpha.norm()) / ridge, rel=1e-12)
    assert sens.alpha_bound <= sens.bound
    gen = torch.Generator().manual_seed(13)
    for j in range(8):  # one random corner of the ε-box per training point, refit from scratch
        moved = x.clone()
        signs = torch.randint(0, 2, (5,), generator=gen).to(F64) * 2 - 1
        moved[j] = (moved[j] + eps * signs).clamp(0, 1)
        k_moved = _attention_gram(moved)
        shift = float((fit_kernel_ridge(k_moved, y, ridge).alpha - alpha).norm())
        step = float((moved[j] - x[j]).norm())
        assert shift <= step * sens.alpha_bound
        # with the kernel change of this very perturbation the bound is the resolvent identity
        local = float(torch.linalg.matrix_norm(k_moved - k, ord=2))
        exact = intrinsic_sensitivity(k, y, ridge, local)
        assert shift <= exact.alpha_bound * (1 + 1e-9)


def test_sensitivity_gap_is_the_ratio_of_lipschitz_constants():
    r = torch.nn.functional.normalize(_pixels(10, 4, 14), dim=1)
    gap = sensitivity_gap(attention_kernel_lipschitz(r), relu_ntk_lipschitz(r))
    g = np.linalg.eigvalsh((r @ r.T).numpy())[-1]
    assert gap == pytest.approx(g**2 / RELU_NTK_FACTOR, rel=1e-12)  # unit rows: ‖G‖²/C
    with pytest.raises(ValueError, match="other_lipschitz"):
        sensitivity_gap(1.0, 0.0)


def test_gram_change_from_one_kernel_row_equals_the_full_gram_change():
    """Without a data-dependent reference only row and column j move: the rank-2 closed form
    from one row equals the spectral norm of the full ΔK, per candidate and after the search."""
    x, eps = _pixels(9, 5, 12), 0.2
    search = ChangeSearch(eps, steps=6, restarts=1, random_directions=3)

    def rbf(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
        return torch.exp(-torch.cdist(a, b) ** 2)

    def gram(xs: torch.Tensor) -> torch.Tensor:
        return rbf(xs, xs)

    def row(moved: torch.Tensor, j: int) -> torch.Tensor:
        return rbf(moved[None], torch.cat([x[:j], moved[None], x[j + 1:]]))[0]

    full = gram_change(gram, x, search, indices=[0, 4, 8])
    fast = gram_change(gram, x, search, indices=[0, 4, 8], row=row)
    torch.testing.assert_close(fast.change, full.change, rtol=1e-10, atol=1e-14)
    fast = gram_change(gram, x, ChangeSearch(eps), indices=[0, 4, 8], row=row)
    for col, j in enumerate([0, 4, 8]):  # a full search reaches the best vertex (SVD norms)
        best = 0.0
        for vertex in _box_vertices(x[j], eps):
            moved = torch.cat([x[:j], vertex[None], x[j + 1:]])
            best = max(best, float(torch.linalg.matrix_norm(gram(moved) - gram(x), ord=2)))
        assert float(fast.change[col]) >= 0.99 * best
