"""The practitioner's diagnostic (Appendix A.12, step 1): can this data's attention model be in
the kernel regime at any practical width?

κ of the input Gram, its cube, the measured κ of row-normalised linearized attention features,
the width thresholds κ⁶·n log n (MLP-Attn) and κ²·n log n (2L-ReLU), feature collapse, and
the intrinsic influence sensitivity S = L_K‖Y‖/λ² (Def. C.12) of both architectures with the
analytic constants of Prop. C.13 and ‖Y‖_F = √n (±1 labels or one-hot rows).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ._validation import as_tensor, check_positive, check_positive_int
from .attention import AttentionKind, attention_features
from .bounds import influence_change_bound
from .kernel_lipschitz import attention_kernel_lipschitz, relu_ntk_lipschitz, sensitivity_gap
from .spectral import (
    ConditionReport,
    effective_condition_number,
    linear_attention_features,
    mean_pairwise_cosine,
    width_threshold,
)

#: Reference scales for "practical width" (public figures): the feed-forward width of
#: GPT-3 175B (Brown et al. 2020) and the parameter count of the largest known models.
PRACTICAL_SCALES: dict[str, float] = {
    "GPT-3 175B feed-forward width": 49_152.0,
    "parameters of the largest known models": 1e12,
}


@dataclass(frozen=True)
class Diagnosis:
    """Spectral diagnosis of an (n × d) matrix of network inputs."""

    inputs: ConditionReport
    attention: ConditionReport  # of rownorm(X XᵀX)
    kappa_cubed: float  # κ_eff(G)³: the κ of φ_lin's Gram without row normalisation
    threshold_attention: float  # κ_eff⁶ · n log n
    threshold_relu: float  # κ_eff² · n log n
    collapse: dict[str, float]  # mean pairwise cosine of raw / linear / softmax / exponential
    collapse_n: int  # rows used for the collapse measurement
    sensitivity: dict[str, float]  # Def. C.12 at ridge λ: attention, relu, gap (= ratio), ridge

    @property
    def verdict(self) -> str:
        largest = max(PRACTICAL_SCALES.values())
        if self.threshold_attention > largest:
            attn = (f"MLP-Attn needs width ≳ {self.threshold_attention:.2e}, beyond any practical "
                    f"width (> {largest:.0e}): linearized attention cannot be in the kernel "
                    "regime here, and NTK-based influence (TRAK, EK-FAC, DataInf) on it rests "
                    "on an assumption that fails; expect malleable rankings.")
        else:
            attn = (f"MLP-Attn needs width ≳ {self.threshold_attention:.2e}, within reach: "
                    "the kernel regime is attainable for this data.")
        relu = ("2L-ReLU is attainable" if self.threshold_relu <= largest else
                "even 2L-ReLU is out of reach")
        return f"{attn} For comparison {relu} (≳ {self.threshold_relu:.2e})."

    def to_dict(self) -> dict:
        return {
            "inputs": self.inputs.summary(),
            "attention": self.attention.summary(),
            "kappa_cubed": self.kappa_cubed,
            "threshold_attention": self.threshold_attention,
            "threshold_relu": self.threshold_relu,
            "practical_scales": PRACTICAL_SCALES,
            "collapse": self.collapse,
            "collapse_n": self.collapse_n,
            "sensitivity": self.sensitivity,
            "verdict": self.verdict,
        }


def diagnose(x: torch.Tensor, tol: float | None = None, collapse_n: int = 2000,
             seed: int = 0, ridge: float = 1e-3) -> Diagnosis:
    """Run the A.12 step-1 diagnostic on network inputs ``x`` (rows, float64).

    Feature collapse of the softmax/exponential maps needs an n×n score matrix, so it is
    measured on at most ``collapse_n`` rows drawn with ``seed`` (used as their own reference).
    ``ridge`` is the λ of the intrinsic sensitivity.
    """
    x = check_input_scale(as_tensor(x, "x", ndim=2), "x")
    collapse_n = check_positive_int(collapse_n, "collapse_n")
    ridge = check_positive(ridge, "ridge")
    n = x.shape[0]
    inputs = effective_condition_number(x, tol=tol)
    attention = effective_condition_number(linear_attention_features(x))
    kappa = inputs.kappa_effective
    collapse = feature_collapse(x, collapse_n, seed)
    l_attn = attention_kernel_lipschitz(x, gram_norm=float(inputs.eigenvalues[0]))
    l_relu = relu_ntk_lipschitz(x)
    labels = torch.ones(n, dtype=x.dtype)  # ‖Y‖_F = √n
    sensitivity = {"attention": influence_change_bound(l_attn, 1.0, labels, ridge),
                   "relu": influence_change_bound(l_relu, 1.0, labels, ridge),
                   "gap": sensitivity_gap(l_attn, l_relu), "ridge": ridge}
    return Diagnosis(
        inputs=inputs, attention=attention,
        kappa_cubed=kappa**3 if kappa < 1e100 else math.inf,
        threshold_attention=width_threshold(kappa, n, 6),
        threshold_relu=width_threshold(kappa, n, 2),
        collapse=collapse, collapse_n=min(n, collapse_n), sensitivity=sensitivity)


def max_input_magnitude(n: int, d: int) -> float:
    """The largest |entry| of an (n × d) input the diagnostic takes without float64 overflow:
    it forms the row norms of X XᵀX, up to d·(n·d·M³)², so M < (max_float64 / (d·(n d)²))^{1/6}.
    """
    log_max = math.log(torch.finfo(torch.float64).max)
    return math.exp((log_max - math.log(d) - 2 * math.log(n * d)) / 6)


def check_input_scale(x: torch.Tensor, name: str) -> torch.Tensor:
    """``x`` unchanged if its entries are below :func:`max_input_magnitude`, else a one-line
    ValueError naming ``name`` (κ is scale-free, so rescaling loses nothing)."""
    top, limit = float(x.abs().max()), max_input_magnitude(*x.shape)
    if top >= limit:
        raise ValueError(f"{name}: values up to {top:.3g} overflow float64 in the diagnostic "
                         f"(sixth powers, via the row norms of XXᵀX); expected magnitudes below "
                         f"{limit:.3g}: rescale the matrix (κ does not depend on its scale)")
    return x


def feature_collapse(x: torch.Tensor, max_rows: int = 2000, seed: int = 0) -> dict[str, float]:
    """Mean pairwise cosine similarity (Figure 7) of the raw inputs and of each attention map's
    features, on at most ``max_rows`` rows (drawn with ``seed``) used as their own reference."""
    x = as_tensor(x, "x", ndim=2)
    n = x.shape[0]
    rows = x if n <= max_rows else x[torch.randperm(
        n, generator=torch.Generator().manual_seed(seed))[:max_rows]]
    collapse = {"raw": mean_pairwise_cosine(rows)}
    for kind in AttentionKind:
        collapse[kind.value] = mean_pairwise_cosine(attention_features(rows, rows, kind))
    return collapse
