"""Bounds on influence malleability of a kernel ridge problem (Theorems C.2 and C.11).

With K ⪰ 0 (eigenvalues μ₁ ≥ … ≥ μ_n ≥ 0), ridge λ > 0, α = (K + λI)⁻¹Y and a perturbation
that moves K to K' ⪰ 0 (ΔK = K' − K), the resolvent identity gives exactly

    α' − α = −(K' + λI)⁻¹ ΔK α,

hence ‖ΔK α‖/(‖K'‖ + λ) ≤ ‖α' − α‖ ≤ ‖ΔK‖‖α‖/λ, with ‖Y‖/(μ₁ + λ) ≤ ‖α‖ ≤ ‖Y‖/λ (norms:
Frobenius for Y, α; operator for K). With ‖ΔK‖ ≤ L_K ε:

- Theorem C.11 (upper): ‖f(x+δ) − f(x)‖ ≤ L_K ε‖Y‖/λ (test point moved) and
  ‖α' − α‖ ≤ L_K ε‖Y‖/λ² (one training point moved) = ε·S (Def. C.12);
- Theorem C.2 (lower, our reading): ‖α' − α‖ ≥ ℓ ε‖Y‖/((μ₁ + λ)(μ₁' + λ)) where ℓ ε = ‖ΔK α̂‖,
  α̂ = α/‖α‖: the kernel change along α (the paper takes ℓ = L_K, "the direction aligned
  with α") and μ₁' = ‖K'‖ (the paper writes μ₁, exact to first order in ε);
- Corollary C.4: both bounds decrease in λ and vanish as λ → ∞; the lower bound rises to
  ℓ ε‖Y‖/μ₁² as λ → 0 while the upper bound diverges.
:func:`influence_shift_bounds` measures ‖α' − α‖ of an attacked training set and evaluates
every bound with measured values (:data:`BOUNDS`). All spectra are float64.
"""

from __future__ import annotations

import math

import torch

from ._validation import as_tensor, check_nonnegative, check_positive
from .kernel_ridge import as_targets, fit_kernel_ridge


def _label_norm(y: torch.Tensor) -> float:
    y = as_tensor(y, "y_train", ndim=(1, 2))
    return float(torch.linalg.norm(y))


def prediction_change_bound(lipschitz: float, eps: float, y_train: torch.Tensor,
                            ridge: float) -> float:
    """Theorem C.11: ‖f(x+δ) − f(x)‖ ≤ L_K ε‖Y‖_F/λ for ‖δ‖ ≤ ε, where L_K bounds the change
    of the kernel row ‖K(x+δ, X) − K(x, X)‖₂ per unit ‖δ‖ (Cauchy–Schwarz, ‖α‖ ≤ ‖Y‖/λ)."""
    return (check_nonnegative(lipschitz, "lipschitz") * check_nonnegative(eps, "eps")
            * _label_norm(y_train) / check_positive(ridge, "ridge"))


def influence_change_bound(lipschitz: float, eps: float, y_train: torch.Tensor,
                           ridge: float) -> float:
    """Theorem C.11: ‖α' − α‖_F ≤ L_K ε‖Y‖_F/λ² when one training point moves by ‖δ‖ ≤ ε and
    ‖K' − K‖₂ ≤ L_K ε, K' ⪰ 0 (resolvent identity, ‖(K' + λI)⁻¹‖ ≤ 1/λ)."""
    return (check_nonnegative(lipschitz, "lipschitz") * check_nonnegative(eps, "eps")
            * _label_norm(y_train) / check_positive(ridge, "ridge") ** 2)


def influence_change_lower_bound(
    k_train: torch.Tensor,
    y_train: torch.Tensor,
    ridge: float,
    lipschitz: float,
    eps: float,
    perturbed_top: float | None = None,
) -> float:
    """Theorem C.2 (our reading): ‖α' − α‖_F ≥ ℓ ε‖Y‖_F/((μ₁ + λ)(μ₁' + λ)).

    μ₁ = λ_max(K) by a float64 eigendecomposition; μ₁' = ``perturbed_top`` (‖K'‖₂), default μ₁
    as in the paper. It is a theorem when ``lipschitz`` is ℓ = ‖ΔK α̂‖/ε, the kernel change
    along α̂ = α/‖α‖, and μ₁' = ‖K'‖; with ℓ = L_K (the paper's) it assumes that alignment.
    """
    k = as_tensor(k_train, "k_train", ndim=2)
    if k.shape[0] != k.shape[1]:
        raise ValueError(f"k_train: expected a square matrix, got shape {tuple(k.shape)}")
    y = as_targets(y_train, "y_train", k.shape[0])
    ridge = check_positive(ridge, "ridge")
    top = float(torch.linalg.eigvalsh((k + k.T) / 2)[-1])
    top_after = top if perturbed_top is None else check_nonnegative(perturbed_top,
                                                                     "perturbed_top")
    return (check_nonnegative(lipschitz, "lipschitz") * check_nonnegative(eps, "eps")
            * float(torch.linalg.norm(y)) / ((top + ridge) * (top_after + ridge)))


#: The bounds an influence shift is checked against: (upper or lower, how it is reported).
BOUNDS = {
    "upper_measured": ("upper", "C.11, measured L (|S|·L·ε‖Y‖/λ²)"),
    "upper_analytic": ("upper", "C.11, analytic L (|S|·L·ε_z‖Y‖/λ²)"),
    "upper_resolvent": ("upper", "C.11 with the attack's ‖ΔK‖ (theorem)"),
    "lower_paper": ("lower", "C.2, paper's form (ℓ = measured L, μ₁′ = μ₁)"),
    "lower_exact": ("lower", "C.2, exact form (ℓε = ‖ΔKα̂‖, μ₁′ = ‖K′‖)"),
}


def influence_shift_bounds(k: torch.Tensor, k_new: torch.Tensor, y: torch.Tensor, ridge: float,
                 eps: float, eps_z: float, moved: int, lipschitz: float,
                 lipschitz_analytic: float) -> dict:
    """The influence shift ‖α′ − α‖_F between (K, Y, λ) and (K′, Y, λ) against every bound of
    :data:`BOUNDS`; ``lipschitz`` per unit ℓ∞ pixel ε (one point moved), ``lipschitz_analytic``
    per unit ℓ2 in z with the attack's z-radius ``eps_z``; ``moved`` = |S|. Each bound is
    reported as it comes out: ``holds`` compares without tolerance."""
    fit, fit_new = fit_kernel_ridge(k, y, ridge), fit_kernel_ridge(k_new, y, ridge)
    shift = float(torch.linalg.norm(fit_new.alpha - fit.alpha))
    delta = k_new - k
    delta_norm = float(torch.linalg.matrix_norm(delta, ord=2))
    alpha_hat = fit.alpha / torch.linalg.norm(fit.alpha)
    along = float(torch.linalg.norm(delta @ alpha_hat))
    top, top_new = (float(torch.linalg.eigvalsh((m + m.T) / 2)[-1]) for m in (k, k_new))
    values = {
        "upper_measured": moved * influence_change_bound(lipschitz, eps, y, ridge),
        "upper_analytic": moved * influence_change_bound(lipschitz_analytic, eps_z, y, ridge),
        "upper_resolvent": influence_change_bound(delta_norm, 1.0, y, ridge),
        "lower_paper": influence_change_lower_bound(k, y, ridge, lipschitz, eps),
        "lower_exact": influence_change_lower_bound(k, y, ridge, along / eps, eps,
                                                    perturbed_top=top_new),
    }
    bounds = {name: {"value": value,
                     "holds": shift <= value if BOUNDS[name][0] == "upper" else shift >= value,
                     "ratio": shift / value if value > 0 else math.inf}
              for name, value in values.items()}
    return {"shift": shift, "delta_k": delta_norm, "delta_k_along_alpha": along,
            "top_eigenvalue": top,
            "top_eigenvalue_after": top_new, "alpha_norm": float(torch.linalg.norm(fit.alpha)),
            "label_norm": float(torch.linalg.norm(as_targets(y, "y", k.shape[0]))),
            "bounds": bounds}
