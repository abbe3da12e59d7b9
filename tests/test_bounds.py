"""Theorems C.2 and C.11 against exact spectra, refitting and an equality case."""

import math

import numpy as np
import pytest
import torch

from malleability import fit_kernel_ridge, infinite_ntk
from malleability.attention import AttentionFeatures
from malleability.bounds import (
    influence_change_bound,
    influence_change_lower_bound,
    prediction_change_bound,
)
from malleability.kernel_lipschitz import ChangeSearch, kernel_row_change, relu_ntk_lipschitz

F64 = torch.float64
RIDGES = [1e-3, 1e-2, 1e-1, 1.0, 10.0]


def _pixels(n, d, seed):
    return torch.rand(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _attention_gram(x):
    phi = AttentionFeatures(x, "linear", normalize=False)(x)
    return phi @ phi.T


def test_lower_bound_is_attained_for_scaled_identity_kernels():
    # K = cI, K' = (c + t)I: α' − α = −t Y/((c + λ)(c + t + λ)), and ΔK α̂ = t α̂ (ℓ = t/ε)
    c, t, ridge, eps = 2.0, 0.3, 0.5, 0.1
    y = torch.tensor([[1.0, 0], [0, 1], [1, 0]], dtype=F64)
    k = c * torch.eye(3, dtype=F64)
    shift = float((fit_kernel_ridge(k + t * torch.eye(3, dtype=F64), y, ridge).alpha
                   - fit_kernel_ridge(k, y, ridge).alpha).norm())
    lower = influence_change_lower_bound(k, y, ridge, t / eps, eps, perturbed_top=c + t)
    assert lower == pytest.approx(shift, rel=1e-12)
    assert shift == pytest.approx(t * math.sqrt(3) / ((c + ridge) * (c + t + ridge)), rel=1e-12)


def test_bounds_match_their_formulas_on_exact_spectra():
    k = _attention_gram(_pixels(9, 6, 1))
    y = torch.from_numpy(np.where(np.arange(9) % 2, 1.0, -1.0))
    top = np.linalg.eigvalsh(k.numpy())[-1]
    lower = influence_change_lower_bound(k, y, 0.1, 2.0, 0.05)
    assert lower == pytest.approx(2.0 * 0.05 * 3.0 / (top + 0.1) ** 2, rel=1e-12)
    assert influence_change_bound(2.0, 0.05, y, 0.1) == pytest.approx(2.0 * 0.05 * 3 / 0.01)
    assert prediction_change_bound(2.0, 0.05, y, 0.1) == pytest.approx(2.0 * 0.05 * 3 / 0.1)
    with pytest.raises(ValueError, match="ridge"):
        influence_change_bound(1.0, 0.1, y, 0.0)
    with pytest.raises(ValueError, match="k_train"):
        influence_change_lower_bound(k[:, :3], y, 0.1, 1.0, 0.1)


@pytest.mark.parametrize("ridge", RIDGES)
def test_influence_shift_lies_between_the_c2_and_c11_bounds(ridge):
    # data-dependent kernel: moving x_j moves the reference, so every entry of K moves
    x, eps = _pixels(10, 6, 2), 0.05
    y = torch.from_numpy(np.where(np.arange(10) % 3, 1.0, -1.0))
    k = _attention_gram(x)
    alpha = fit_kernel_ridge(k, y, ridge).alpha
    gen = torch.Generator().manual_seed(3)
    for j in range(10):
        moved = x.clone()
        moved[j] = (moved[j] + eps * (torch.randint(0, 2, (6,), generator=gen) * 2 - 1)
                    ).clamp(0, 1)
        k_moved = _attention_gram(moved)
        delta_k = k_moved - k
        shift = float((fit_kernel_ridge(k_moved, y, ridge).alpha - alpha).norm())
        change = float(torch.linalg.matrix_norm(delta_k, ord=2))
        along = float((delta_k @ alpha).norm() / alpha.norm())  # ‖ΔK α̂‖ = ℓ ε
        top_after = float(torch.linalg.eigvalsh(k_moved)[-1])
        upper = influence_change_bound(change / eps, eps, y, ridge)
        lower = influence_change_lower_bound(k, y, ridge, along / eps, eps, top_after)
        assert lower <= shift * (1 + 1e-9)
        assert shift <= upper * (1 + 1e-9)


def test_prediction_change_stays_under_the_c11_bound():
    x_train, ridge, eps = _pixels(12, 5, 4), 1e-2, 0.1
    y = torch.from_numpy(np.where(np.arange(12) % 2, 1.0, -1.0))
    fit = fit_kernel_ridge(infinite_ntk(x_train), y, ridge)

    def predictions(xb):
        return (infinite_ntk(xb, x_train) @ fit.alpha)[:, 0]

    x_test = _pixels(5, 5, 5)
    worst = kernel_row_change(lambda xb: predictions(xb)[:, None], x_test, ChangeSearch(eps))
    # ‖Δf‖ over the ℓ∞ ball, whose ℓ2 radius is ε√d
    bound = prediction_change_bound(relu_ntk_lipschitz(x_train), eps * math.sqrt(5), y, ridge)
    assert float(worst.change.max()) <= bound
    assert float(worst.change.max()) > 0
