"""How far a kernel moves when one input moves, and the intrinsic influence sensitivity
(Proposition 4.6, Definition C.12, Proposition C.13, Theorem C.5).

Kernel Lipschitz constants L_K, in the ℓ2 norm of the perturbation δ (unit-free, float64):

- linearized attention, k(x, x') = φ(x)·φ(x') with φ(x) = x RᵀR (unnormalised, fixed R):
  |Δk(x, x_i)| ≤ ‖G‖²‖x_i‖·‖δ‖, so over a row ‖K(x+δ, R) − K(x, R)‖ ≤ ‖G‖²‖R‖_F‖δ‖
  (= √n‖G‖² for unit rows; Prop. 4.6 summed in quadrature as in Prop. C.13);
- the ReLU NTK Θ_∞ on hidden-layer inputs: ‖∇_z Θ_∞(z, z')‖ ≤ ‖z'‖(1/2 + 1/(2π)), so
  L = (1 + π)/(2π)·‖Z‖_F (= C√n, Prop. C.13);
- a degree-p polynomial kernel (z·z')^p with ‖z‖ ≤ 1 and ‖δ‖ ≤ ε:
  L = p(1 + ε)^{p−1}·(Σ_i ‖z_i‖^{2p})^{1/2} (= p√n to first order for unit rows).

Measured constants maximise the kernel change over the attacks' set {x' : ‖x' − x‖∞ ≤ ε,
0 ≤ x' ≤ 1} with PGD (attacks.pgd, random restarts) and random corners of the ball.

Intrinsic influence sensitivity (Def. C.12, our reading): S = L_K‖Y‖_F/λ², the bound of
Theorem C.11 on ‖α' − α‖ per unit perturbation, α = (K + λI)⁻¹Y; the tighter
S_α = L_K‖α‖_F/λ follows from the same resolvent identity.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from ._validation import as_tensor, check_nonnegative, check_positive, check_positive_int
from .attacks import pgd
from .bounds import influence_change_bound
from .kernel_ridge import as_targets, fit_kernel_ridge
from .spectral import gram_eigenvalues

_F64 = torch.float64

#: ‖∇_z Θ_∞(z, z')‖ / ‖z'‖ ≤ 1/2 + 1/(2π): the ReLU NTK's per-entry Lipschitz factor.
RELU_NTK_FACTOR = (1.0 + math.pi) / (2.0 * math.pi)


def _gram_norm(reference: torch.Tensor) -> float:
    """‖G‖ = ‖R‖₂² (largest eigenvalue of G = R Rᵀ), float64."""
    return float(torch.linalg.matrix_norm(reference.to(_F64), ord=2)) ** 2


def attention_kernel_lipschitz(reference: torch.Tensor, gram_norm: float | None = None
                               ) -> float:
    """L_attn = ‖G‖²·‖R‖_F (Prop. 4.6 / C.13): bounds ‖K(x+δ, R) − K(x, R)‖₂ / ‖δ‖₂ for the
    unnormalised linearized-attention kernel φ(x)·φ(x'), φ(x) = x RᵀR, reference R fixed.

    ``gram_norm``: ‖G‖ = λ₁(R Rᵀ) if already known (else one SVD of R). The exact constant of
    this linear row map is ‖G‖^{5/2} ≤ L_attn (since ‖G‖ ≤ ‖R‖_F²).
    """
    r = as_tensor(reference, "reference", ndim=2)
    g = _gram_norm(r) if gram_norm is None else check_nonnegative(gram_norm, "gram_norm")
    return g**2 * float(torch.linalg.norm(r))


def relu_ntk_lipschitz(reference: torch.Tensor) -> float:
    """L_ReLU = (1 + π)/(2π)·‖Z‖_F: bounds ‖Θ_∞(z+δ, Z) − Θ_∞(z, Z)‖₂ / ‖δ‖₂ for any z."""
    z = as_tensor(reference, "reference", ndim=2)
    return RELU_NTK_FACTOR * float(torch.linalg.norm(z))


def polynomial_kernel_lipschitz(reference: torch.Tensor, degree: int, eps: float) -> float:
    """L_poly = p(1 + ε)^{p−1}(Σ_i ‖z_i‖^{2p})^{1/2}: bounds the row change of (z·z')^p per unit
    ‖δ‖₂ for ‖z‖ ≤ 1, ‖δ‖₂ ≤ ε (mean value theorem on each entry, summed in quadrature)."""
    z = as_tensor(reference, "reference", ndim=2)
    p = check_positive_int(degree, "degree")
    eps = check_nonnegative(eps, "eps")
    norms = z.norm(dim=1)
    return p * (1.0 + eps) ** (p - 1) * float(torch.sqrt((norms ** (2 * p)).sum()))


def attention_gram_change_bound(reference: torch.Tensor, eps: float) -> float:
    """Bound on ‖K' − K‖₂ for K = φ(X)φ(X)ᵀ = G³ (unnormalised linearized attention, the
    training set as its own reference) when one row of X moves by ‖δ‖₂ ≤ ε (our derivation):

    G' − G = e_j(Xδ)ᵀ + (Xδ)e_jᵀ + ‖δ‖²e_je_jᵀ, so e = ‖G' − G‖ ≤ 2ε√g + ε² with g = ‖G‖, and
    ‖(G + E)³ − G³‖ ≤ (g + e)³ − g³ (first order: 6 g^{5/2} ε).
    """
    x = as_tensor(reference, "reference", ndim=2)
    eps = check_nonnegative(eps, "eps")
    g = _gram_norm(x)
    e = 2 * eps * math.sqrt(g) + eps**2
    return (g + e) ** 3 - g**3


def analytic_lipschitz(architecture: str, z_influence: torch.Tensor, z_reference: torch.Tensor
                       ) -> float:
    """The analytic constant of ``architecture`` (relu or attn), Prop. 4.6 / C.13 in network
    inputs z: √n‖G‖²-type L_attn with G of the reference set, or (1 + π)/(2π)‖Z‖_F for the
    ReLU NTK."""
    if architecture == "relu":
        return relu_ntk_lipschitz(z_influence)
    top = float(gram_eigenvalues(z_reference)[0])
    return attention_kernel_lipschitz(z_influence, gram_norm=top)


def sensitivity_gap(attention_lipschitz: float, other_lipschitz: float) -> float:
    """Theorem C.5 / Prop. C.13: S_attn / S_other = L_attn / L_other at equal λ and Y (the
    ratio of the intrinsic sensitivities, hence of the C.11 malleability upper bounds)."""
    return check_nonnegative(attention_lipschitz, "attention_lipschitz") / check_positive(
        other_lipschitz, "other_lipschitz")


@dataclass(frozen=True)
class IntrinsicSensitivity:
    """Def. C.12: ``bound`` S = L_K‖Y‖_F/λ² (the paper's); ``alpha_bound`` S_α = L_K‖α‖_F/λ
    (tighter, from the fitted α). Both bound ‖α' − α‖_F / ε when L_K bounds ‖K' − K‖₂ / ε."""

    bound: float
    alpha_bound: float
    lipschitz: float
    ridge: float
    label_norm: float
    alpha_norm: float


def intrinsic_sensitivity(k_train: torch.Tensor, y_train: torch.Tensor, ridge: float,
                          lipschitz: float) -> IntrinsicSensitivity:
    """Intrinsic influence sensitivity of the kernel ridge problem (K, λ, Y) with kernel
    Lipschitz constant L_K (Def. C.12): S = L_K‖Y‖_F/λ² and S_α = L_K‖(K + λI)⁻¹Y‖_F/λ."""
    lipschitz = check_nonnegative(lipschitz, "lipschitz")
    ridge = check_positive(ridge, "ridge")
    fit = fit_kernel_ridge(k_train, y_train, ridge)
    y = as_targets(y_train, "y_train", fit.alpha.shape[0])
    label_norm = float(torch.linalg.norm(y))
    alpha_norm = float(torch.linalg.norm(fit.alpha))
    return IntrinsicSensitivity(
        bound=influence_change_bound(lipschitz, 1.0, y, ridge),
        alpha_bound=lipschitz * alpha_norm / ridge,
        lipschitz=lipschitz, ridge=ridge, label_norm=label_norm, alpha_norm=alpha_norm)


@dataclass(frozen=True)
class KernelChange:
    """The largest kernel change found over ε-perturbations, per perturbed point.

    ``change``: max ‖ΔK‖ found (B,); ``ratio_l2``: max ‖ΔK‖/‖δ‖₂ over the points tried (B,),
    a lower bound on the ℓ2 Lipschitz constant, comparable with the analytic ones.
    """

    change: torch.Tensor
    ratio_l2: torch.Tensor
    eps: float

    @property
    def lipschitz(self) -> float:
        """max change / ε: the measured constant per unit ℓ∞ radius."""
        return float(self.change.max()) / self.eps


@dataclass(frozen=True)
class ChangeSearch:
    """How a kernel change is maximised over the ℓ∞ ε-ball ∩ [0,1]: PGD with ``restarts``
    random starts, ``steps`` sign steps of ``alpha`` (default 2.5ε/steps), plus
    ``random_directions`` random corners of the ball."""

    eps: float
    steps: int = 40
    alpha: float | None = None
    restarts: int = 4
    random_directions: int = 16
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive(self.eps, "eps")
        check_positive_int(self.steps, "steps")
        check_positive_int(self.restarts, "restarts")
        if self.alpha is not None:
            check_positive(self.alpha, "alpha")
        if self.random_directions < 0:
            raise ValueError(f"random_directions: expected a non-negative integer, "
                             f"got {self.random_directions!r}")

    def maximise(self, change_fn: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor
                 ) -> KernelChange:
        """The largest ``change_fn`` (per row) found around each row of ``x``."""
        eps = self.eps
        alpha = 2.5 * eps / self.steps if self.alpha is None else self.alpha
        dummy = torch.zeros(x.shape[0], dtype=_F64)
        candidates = [pgd(lambda xb, _: change_fn(xb), x, dummy, eps, alpha=alpha,
                          steps=self.steps, random_start=True, seed=self.seed + r)
                      for r in range(self.restarts)]
        gen = torch.Generator().manual_seed(self.seed)
        for _ in range(self.random_directions):
            signs = torch.randint(0, 2, x.shape, generator=gen).to(_F64) * 2 - 1
            candidates.append((x + eps * signs).clamp(0.0, 1.0))
        best = torch.zeros(x.shape[0], dtype=_F64)
        ratio = torch.zeros(x.shape[0], dtype=_F64)
        with torch.no_grad():
            for cand in candidates:
                change = change_fn(cand)
                step = (cand - x).norm(dim=1)
                best = torch.maximum(best, change)
                ratio = torch.maximum(ratio, torch.where(
                    step > 0, change / step.clamp_min(1e-300), torch.zeros_like(change)))
        return KernelChange(change=best, ratio_l2=ratio, eps=eps)


def kernel_row_change(kernel_rows: Callable[[torch.Tensor], torch.Tensor], x: torch.Tensor,
                      search: ChangeSearch) -> KernelChange:
    """Measured max ‖K(x', X) − K(x, X)‖₂ over x' in the ℓ∞ ε-ball ∩ [0,1] around each row of
    ``x`` (pixels in [0,1]); ``kernel_rows`` maps (B, d) → (B, n) kernel rows, differentiably
    (any row map works, e.g. predictions K(x, X)α for Theorem C.11's prediction change).
    """
    x = as_tensor(x, "x", ndim=2)
    with torch.no_grad():
        base = kernel_rows(x)

    def change(xb: torch.Tensor) -> torch.Tensor:
        return (kernel_rows(xb) - base).norm(dim=1)

    return search.maximise(change, x)


def gram_change(gram: Callable[[torch.Tensor], torch.Tensor], x_train: torch.Tensor,
                search: ChangeSearch, indices: list[int] | None = None,
                row: Callable[[torch.Tensor, int], torch.Tensor] | None = None
                ) -> KernelChange:
    """Measured max ‖K(X') − K(X)‖₂ (operator norm) when one training point x_j moves in the
    ℓ∞ ε-ball ∩ [0,1], for each j in ``indices`` (default all). ``gram`` maps X (n, d) to
    the symmetric K(X, X) and may use X as its own reference (attention), so every entry may
    move; ‖ΔK‖₂ is then the largest |eigenvalue| of ΔK's symmetric part.

    ``row`` (x′_j, j) ↦ K(x′_j, X′), X′ = X with x_j replaced, serves kernels without a
    data-dependent reference: only row and column j move, ΔK = e_j δ̃ᵀ + δ̃ e_jᵀ with δ the
    row's change and δ̃ = δ with δ_j halved, whose eigenvalues δ̃_j ± ‖δ̃‖ give
    ‖ΔK‖₂ = |δ_j|/2 + ‖δ̃‖ exactly, from one kernel row instead of an n × n kernel.
    """
    x_train = as_tensor(x_train, "x_train", ndim=2)
    n = x_train.shape[0]
    indices = list(range(n)) if indices is None else [int(j) for j in indices]
    if any(j < 0 or j >= n for j in indices):
        raise ValueError(f"indices: expected training indices in [0, {n}), got {indices}")
    with torch.no_grad():
        base = gram(x_train)

    def full_change(moved_row: torch.Tensor, j: int) -> torch.Tensor:
        moved = torch.cat([x_train[:j], moved_row[None], x_train[j + 1:]])
        delta = gram(moved) - base
        return torch.linalg.eigvalsh((delta + delta.mT) / 2).abs().max()

    def row_change(moved_row: torch.Tensor, j: int) -> torch.Tensor:
        delta = row(moved_row, j) - base[j]
        halved = delta.clone()
        halved[j] = delta[j] / 2
        return delta[j].abs() / 2 + torch.linalg.vector_norm(halved)

    one = full_change if row is None else row_change

    def change(xb: torch.Tensor) -> torch.Tensor:
        return torch.stack([one(r, j) for r, j in zip(xb, indices, strict=True)])

    return search.maximise(change, x_train[indices])
