"""TRAK's projection dimension against the number of training points (Park et al. 2023, §3).

TRAK scores a test point t against the training set by φ_t (ΦᵀΦ)⁻¹ Φᵀ ⊙ Q, with Φ the n × k
matrix of the training points' gradients after a random projection to k dimensions. ΦᵀΦ is
k × k of rank at most n, so it is singular for k > n, and at k = n it interpolates the n
gradients exactly (Φ⁻¹): the solve then returns numbers that depend on round-off, not on the
data. dattri's default is k = 512, which exceeds n on small audits.

Several checkpoints (TRAK's ensemble, :mod:`~malleability.estimators.trak`): the mean over
checkpoints of φ_t,k (Φ_kᵀΦ_k)⁻¹ Φ_kᵀ, each with its own projection (seed + 10⁵·k, dattri's
convention), times the checkpoints' mean Q = 1 − p(correct).
"""

from __future__ import annotations

from typing import Any

from ._validation import check_positive_int


def check_trak_projection(proj_dim: Any, n: int) -> int:
    """``proj_dim`` when it is below the number of training points ``n``; else a one-line
    ValueError (TRAK's kernel ΦᵀΦ would be singular or interpolating)."""
    proj_dim = check_positive_int(proj_dim, "proj_dim")
    if proj_dim >= n:
        raise ValueError(f"proj_dim: TRAK's kernel has rank at most n = {n} training points, so "
                         f"a projection to {proj_dim} ≥ n dimensions makes it singular; "
                         f"use fewer than {n}")
    return proj_dim
