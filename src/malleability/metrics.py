"""Malleability metrics between influence scores before (I) and after (I') a perturbation
(Definition 3.4, A.5.2): flip rate over S = the top fraction of I, Spearman ρ(I, I') and the
top-K overlap |S ∩ S'|/|S|."""

from __future__ import annotations

import math

import numpy as np
import torch
from scipy.stats import spearmanr

from ._validation import as_tensor, check_fraction


def _score_pair(scores: torch.Tensor, perturbed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = as_tensor(scores, "scores", ndim=1).cpu().numpy()
    b = as_tensor(perturbed, "perturbed_scores", ndim=1).cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"perturbed_scores: expected {a.shape[0]} scores, got {b.shape[0]}")
    return a, b


def top_fraction(scores: torch.Tensor, fraction: float) -> torch.Tensor:
    """Indices of the ⌈fraction·n⌉ largest scores (most helpful first; ties by index)."""
    a = as_tensor(scores, "scores", ndim=1)
    k = math.ceil(check_fraction(fraction, "fraction") * a.shape[0])
    order = np.argsort(-a.cpu().numpy(), kind="stable")
    return torch.from_numpy(order[:k].copy())


def flip_rate(scores: torch.Tensor, perturbed_scores: torch.Tensor, fraction: float) -> float:
    """(1/|S|) Σ_{i∈S} 1[sign I_i ≠ sign I'_i] over S = the top ``fraction`` of ``scores``."""
    a, b = _score_pair(scores, perturbed_scores)
    s = top_fraction(scores, fraction).numpy()
    return float(np.mean(np.sign(a[s]) != np.sign(b[s])))


def spearman(scores: torch.Tensor, perturbed_scores: torch.Tensor) -> float:
    """Spearman ρ (scipy.stats.spearmanr, average ranks for ties); NaN for a constant vector."""
    a, b = _score_pair(scores, perturbed_scores)
    if np.ptp(a) == 0 or np.ptp(b) == 0:
        return math.nan
    return float(spearmanr(a, b).statistic)


def top_k_overlap(scores: torch.Tensor, perturbed_scores: torch.Tensor, fraction: float) -> float:
    """|S ∩ S'| / |S| with S, S' the top ``fraction`` of each score vector."""
    _score_pair(scores, perturbed_scores)
    s = set(top_fraction(scores, fraction).tolist())
    s_prime = set(top_fraction(perturbed_scores, fraction).tolist())
    return len(s & s_prime) / len(s)
