"""Spectral diagnostics: condition numbers, cubic amplification, width thresholds (§4, A.12).

κ_d(G) = λ₁/λ_r over the eigenvalues of G = X Xᵀ with r = min(n, d). Linearized attention
cubes it: φ(X)φ(X)ᵀ = G³ without row normalisation (Theorem 4.8). Kernel-regime width
thresholds, constants dropped: MLP-Attn m* = κ⁶ · n log n, 2L-ReLU m* = κ² · n log n.
Prop. 4.11: unnormalised softmax raises κ to κ·e^{2(λ₁ − λ_r)/τ} (:func:`softmax_amplification`).
All spectra are computed in float64.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from enum import StrEnum

import torch

from ._validation import as_tensor, check_positive, check_positive_int, parse_enum
from .attention import AttentionFeatures, AttentionKind

_F64 = torch.float64


class SpectrumMethod(StrEnum):
    """EXACT: full eigendecomposition of XᵀX (n > d, streamed) or of G (n ≤ d).
    RANDOMIZED: the top-k singular values by randomized SVD (Halko et al. 2011)."""

    EXACT = "exact"
    RANDOMIZED = "randomized"


@dataclass(frozen=True)
class ConditionReport:
    """Spectrum of G = X Xᵀ and its condition numbers.

    ``kappa`` is λ₁/λ_r over r = min(n, d) directions (inf when rank < r; for the randomized
    method, λ₁/λ_k over the top k); ``kappa_effective`` is λ₁ over the smallest eigenvalue
    above ``tol`` (absolute, on eigenvalues of G). ``eigenvalues`` are descending, float64.
    """

    kappa: float
    kappa_effective: float
    rank: int
    r: int
    n: int
    d: int
    tol: float
    eigenvalues: torch.Tensor
    method: SpectrumMethod

    def summary(self) -> dict[str, float | int | str]:
        """JSON-ready scalars (eigenvalues left out)."""
        return {"kappa": self.kappa, "kappa_effective": self.kappa_effective,
                "rank": self.rank, "r": self.r, "n": self.n, "d": self.d, "tol": self.tol,
                "method": self.method.value}


def gram_eigenvalues(x: torch.Tensor, block_rows: int = 4096) -> torch.Tensor:
    """The r = min(n, d) largest eigenvalues of G = X Xᵀ, descending, float64.

    n > d: from XᵀX accumulated over row blocks (O(n d²) time, O(d²) memory);
    n ≤ d: from G itself.
    """
    n, d = x.shape
    if n > d:
        gram = torch.zeros(d, d, dtype=_F64, device=x.device)
        for s in range(0, n, block_rows):
            xb = x[s:s + block_rows].to(_F64)
            gram += xb.T @ xb
    else:
        xd = x.to(_F64)
        gram = xd @ xd.T
    return torch.linalg.eigvalsh(gram).flip(0).cpu()


def effective_condition_number(
    x: torch.Tensor,
    tol: float | None = None,
    method: SpectrumMethod | str = SpectrumMethod.EXACT,
    k: int | None = None,
    block_rows: int = 4096,
    seed: int = 0,
) -> ConditionReport:
    """κ_d and the effective κ of G = X Xᵀ for an (n × d) matrix ``x``.

    ``tol`` (absolute, on eigenvalues of G) defaults to λ₁ · max(n, d) · ε_float64, the
    round-off floor of a Gram eigenvalue; the numerical rank counts eigenvalues above it.
    ``method="randomized"`` estimates the top ``k`` singular values with torch.svd_lowrank.
    """
    x = as_tensor(x, "x", ndim=2, dtype=None)
    method = parse_enum(method, SpectrumMethod, "method")
    n, d = x.shape
    r = min(n, d)
    if method is SpectrumMethod.EXACT:
        eig = gram_eigenvalues(x, check_positive_int(block_rows, "block_rows")).clamp_min(0.0)
    else:
        k = check_positive_int(k if k is not None else min(r, 100), "k")
        if k > r:
            raise ValueError(f"k: expected at most min(n, d) = {r}, got {k}")
        with torch.random.fork_rng(devices=[]):  # svd_lowrank draws from the global generator
            torch.manual_seed(seed)
            _, s, _ = torch.svd_lowrank(x.to(_F64), q=min(r, k + 10), niter=4)
        eig = (s[:k] ** 2).cpu()
    top = float(eig[0])
    if tol is None:
        tol = top * max(n, d) * torch.finfo(_F64).eps
    if tol < 0:
        raise ValueError(f"tol: expected a non-negative number, got {tol!r}")
    rank = int((eig > tol).sum())
    if rank == 0:
        raise ValueError("x: has no eigenvalue above the tolerance (all-zero input?)")
    smallest_kept = float(eig[rank - 1])
    full = rank == eig.numel()
    kappa = top / float(eig[-1]) if full else math.inf
    return ConditionReport(kappa=kappa, kappa_effective=top / smallest_kept, rank=rank, r=r,
                           n=n, d=d, tol=float(tol), eigenvalues=eig, method=method)


@dataclass(frozen=True)
class SoftmaxAmplification:
    """Prop. 4.11 (our reading): the unnormalised-softmax kernel K = ΦΦᵀ, Φ = exp(G/τ)X with
    the matrix exponential of G = XXᵀ = UΛUᵀ, is U Λe^{2Λ/τ} Uᵀ; λ ↦ λe^{2λ/τ} increases, so
    ln κ_sm = ln κ + 2(λ₁ − λ_r)/τ: exponential in the spectral gap λ₁ − λ_r, against
    ln κ³ for linearized attention (κ = λ₁/λ_r over the numerical rank r)."""

    log_kappa: float
    log_kappa_softmax: float
    log_kappa_linear: float
    gap: float
    temperature: float
    rank: int

    @property
    def exceeds_linear(self) -> bool:
        """Remark 4.12: κ_sm > κ³ exactly when (λ₁ − λ_r)/τ > ln κ."""
        return self.gap / self.temperature > self.log_kappa


def softmax_amplification(x: torch.Tensor, temperature: float = 1.0, tol: float | None = None
                          ) -> SoftmaxAmplification:
    """Prop. 4.11 for inputs ``x`` (n × d): ln κ of the unnormalised-softmax kernel beside
    ln κ and ln κ³, from the eigenvalues of G = XXᵀ above ``tol`` (see
    :func:`effective_condition_number`), in logs because e^{2(λ₁ − λ_r)/τ} overflows for
    image data. ``temperature`` τ scales the scores (the paper's statement: τ = 1)."""
    temperature = check_positive(temperature, "temperature")
    report = effective_condition_number(x, tol)
    top, low = float(report.eigenvalues[0]), float(report.eigenvalues[report.rank - 1])
    log_kappa = math.log(top / low)
    gap = top - low
    return SoftmaxAmplification(log_kappa=log_kappa,
                                log_kappa_softmax=log_kappa + 2 * gap / temperature,
                                log_kappa_linear=3 * log_kappa, gap=gap,
                                temperature=temperature, rank=report.rank)


def linear_attention_features(x: torch.Tensor, normalize: bool = True) -> torch.Tensor:
    """φ_lin(X) with X as its own reference: rownorm(X XᵀX), or X XᵀX unnormalised."""
    x = as_tensor(x, "x", ndim=2)
    return AttentionFeatures(x, AttentionKind.LINEAR, normalize=normalize)(x)


def width_threshold(kappa: float, n: int, power: int) -> float:
    """m* = κ^power · n log n (constants dropped): power 6 for MLP-Attn, 2 for 2L-ReLU.

    Returns inf when κ is infinite or the value overflows a float.
    """
    n = check_positive_int(n, "n")
    if not math.isfinite(kappa):
        return math.inf
    log10 = power * math.log10(kappa) + math.log10(n * max(math.log(n), 1e-300))
    return 10.0 ** log10 if log10 < 308 else math.inf


def mean_pairwise_cosine(z: torch.Tensor) -> float:
    """Mean cosine similarity over pairs i ≠ j of rows of ``z`` (feature collapse, Figure 7).

    Computed as (‖Σ ẑ_i‖² − n)/(n(n − 1)) over unit rows ẑ, in O(n d).
    """
    z = as_tensor(z, "z", ndim=2)
    n = z.shape[0]
    if n < 2:
        raise ValueError(f"z: expected at least 2 rows, got {n}")
    unit = z / z.norm(dim=1, keepdim=True).clamp_min(1e-300)
    total = unit.sum(0)
    return float(((total @ total) - (unit * unit).sum()) / (n * (n - 1)))


def participation_ratio(eigenvalues: torch.Tensor) -> float:
    """(Σλ)²/Σλ² of a Gram matrix's eigenvalues: its effective number of directions (1 for a
    rank-1 Gram, r for r equal eigenvalues); the spread of the spectrum A.2 appeals to."""
    eig = as_tensor(eigenvalues, "eigenvalues", ndim=1, dtype=_F64).clamp_min(0.0)
    total = float(eig.sum())
    if not total > 0:
        raise ValueError("eigenvalues: expected a positive sum (a non-zero Gram matrix)")
    return total**2 / float((eig * eig).sum())


def between_class_share(z: torch.Tensor, labels: torch.Tensor) -> float:
    """Σ_c n_c ‖μ_c − μ‖² / Σ_i ‖z_i − μ‖²: the share of the rows' scatter about their mean μ
    that lies between the class means μ_c (total = within + between); the inter-class spread
    of A.2, in [0, 1]."""
    z = as_tensor(z, "z", ndim=2, dtype=_F64)
    labels = torch.as_tensor(labels)
    if labels.shape != (z.shape[0],):
        raise ValueError(f"labels: expected shape ({z.shape[0]},) (one per row of z), got "
                         f"{tuple(labels.shape)}")
    centred = z - z.mean(0)
    total = float(centred.square().sum())
    if not total > 0:
        raise ValueError("z: expected rows that are not all equal (zero scatter)")
    between = sum(int((labels == c).sum()) * float(centred[labels == c].mean(0).square().sum())
                  for c in labels.unique())
    return between / total
