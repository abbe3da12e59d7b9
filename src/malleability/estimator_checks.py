"""Degenerate estimator settings (issue 31): warnings printed beside an audit's verdict.

- TRAK whose random projection has at least as many dimensions as there are training points
  (dattri's default k = 512; :func:`~malleability.trak_projection.check_trak_projection`): its
  kernel ΦᵀΦ is then singular or interpolating, and its scores follow the projection seed;
- TRAK on a single checkpoint: TRAK's scores are meant to be averaged over an ensemble of
  models; with one, nothing averages the projection's noise out;
- an influence function whose damping δ dominates the Hessian: δ ≥ |λ|max(H) (estimated by
  power iteration on Hessian-vector products of the mean training loss), so
  (H + δI)⁻¹ ≈ δ⁻¹I within a factor 2 on every direction and the "influence" is a scaled
  gradient dot product (TracIn's score), not the curvature-corrected one;
- Arnoldi keeping more than half the Ritz pairs of its Krylov space (``proj_dim`` >
  ``iterations`` / 2; dattri's defaults keep all 100 of 100): the last pairs kept are
  unconverged, so its scores follow the random start (tests/test_dattri_arnoldi.py: over 20 %
  of the largest score off the exact top-k influence function at k = iterations);
- LoGra whose projected gradients of some layer span at least n dimensions (dattri's default
  proj_dim = 4,096 on layers of width ≥ 64, against n in the thousands): that layer's
  projected Fisher F = ĜᵀĜ/n has rank ≤ n, so, as for TRAK's k ≥ n, each training point's
  leverage ĝ_i(nF + nλI)⁻¹ĝ_iᵀ is near 1 and (F + λI)⁻¹ interpolates the training gradients.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .jacobian_ntk import select_parameters
from .losses import training_loss
from .trak_projection import check_trak_projection

#: Estimators that invert the damped Hessian (H + δI).
DAMPED = ("if-explicit", "if-cg", "if-lissa", "if-arnoldi", "if-datainf", "if-ekfac")


def mean_loss_hvp(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                  params: Sequence[torch.Tensor], chunk: int = 256
                  ) -> Callable[[Sequence[torch.Tensor]], list[torch.Tensor]]:
    """v ↦ Hv, H the Hessian of the mean training loss over (``x``, ``y``) in ``params`` (the
    model's own tensors), by double backward summed over ``chunk`` rows at a time (memory
    O(chunk)). Attention runs on the composite math backend, whose double backward exists
    (the fused CPU kernel has none)."""
    def hvp(v: Sequence[torch.Tensor]) -> list[torch.Tensor]:
        out = [torch.zeros_like(p) for p in params]
        with torch.enable_grad(), sdpa_kernel([SDPBackend.MATH]):
            for rows in torch.arange(x.shape[0], device=x.device).split(chunk):
                loss = training_loss(model(x[rows]), y[rows]).sum() / x.shape[0]
                # A parameter outside the graph (or of constant gradient) has a zero block.
                grads = torch.autograd.grad(loss, params, create_graph=True, allow_unused=True,
                                            materialize_grads=True)
                for o, h in zip(out, torch.autograd.grad(grads, params, grad_outputs=v,
                                                         allow_unused=True,
                                                         materialize_grads=True), strict=True):
                    o += h
        return out

    return hvp


def hessian_top_eigenvalue(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                           parameters: Sequence[str] | None = None, iterations: int = 20,
                           seed: int = 0, chunk: int = 256) -> float:
    """|λ|max of the Hessian of the mean training loss over (``x``, ``y``) in the chosen
    ``parameters``: power iteration on :func:`mean_loss_hvp` from a seeded Gaussian start,
    the last Rayleigh quotient's magnitude (a lower bound that converges to |λ|max)."""
    names = set(select_parameters(model, parameters))
    params = [p for k, p in model.named_parameters() if k in names]
    hvp = mean_loss_hvp(model, x, y, params, chunk)
    gen = torch.Generator().manual_seed(seed)
    v = [torch.randn(p.shape, generator=gen, dtype=p.dtype).to(p.device) for p in params]
    norm = math.sqrt(sum(float(t.pow(2).sum()) for t in v))
    v = [t / norm for t in v]
    rayleigh = 0.0
    for _ in range(iterations):
        hv = hvp(v)
        rayleigh = sum(float((a * b).sum()) for a, b in zip(v, hv, strict=True))
        norm = math.sqrt(sum(float(t.pow(2).sum()) for t in hv))
        if norm == 0:
            return 0.0
        v = [t.detach() / norm for t in hv]
    return abs(rayleigh)


def degenerate_settings(estimator: str, n_train: int, n_checkpoints: int = 1,
                        projection_dim: int | None = None, damping: float | None = None,
                        hessian_top: float | None = None,
                        ritz: tuple[int, int] | None = None,
                        projected_layers: dict[str, int] | None = None) -> list[str]:
    """Warnings (one sentence each) for the estimator's setting on this audit; see the module
    docstring. ``projection_dim``: TRAK's k; ``hessian_top``: |λ|max(H) of the model;
    ``ritz``: Arnoldi's (proj_dim, iterations); ``projected_layers``: LoGra's dimension per
    layer (``LoGra.projected_dims``)."""
    warnings = []
    if estimator == "trak":
        if projection_dim is not None:
            try:
                check_trak_projection(projection_dim, n_train)
            except ValueError:
                warnings.append(f"TRAK's projection dimension {projection_dim} ≥ n = "
                                f"{n_train}: its kernel ΦᵀΦ is singular or interpolating, so "
                                "its scores follow round-off and the projection seed.")
        if n_checkpoints < 2:
            warnings.append("TRAK on a single checkpoint: its scores are meant to be averaged "
                            "over an ensemble (give --checkpoint).")
    if estimator in DAMPED and damping is not None and hessian_top is not None \
            and damping >= hessian_top:
        warnings.append(f"damping {damping:g} ≥ |λ|max(H) ≈ {hessian_top:.3g}: (H + δI)⁻¹ is "
                        "≈ δ⁻¹I, so the scores are scaled gradient dot products.")
    if estimator == "if-arnoldi" and ritz is not None and 2 * ritz[0] > ritz[1]:
        warnings.append(f"Arnoldi keeps {ritz[0]} of the Ritz pairs of {ritz[1]} iterations: "
                        "the last are unconverged, so its scores follow the random start "
                        "(give iterations ≥ 2·proj_dim; the noise control measures it).")
    full = {k: d for k, d in (projected_layers or {}).items() if d >= n_train}
    if estimator == "logra" and full:
        widest = max(full, key=full.__getitem__)
        warnings.append(f"LoGra projects {len(full)} of {len(projected_layers or {})} layers' "
                        f"gradients to ≥ n = {n_train} dimensions ({full[widest]} for "
                        f"{widest}): their Fisher has rank ≤ n, so every training point has "
                        "leverage ≈ 1 and the scores interpolate, as TRAK's with k ≥ n "
                        "(give a smaller proj_dim).")
    return warnings
