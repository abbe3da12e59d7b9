"""Loss landscapes of a trained network and of its kernel (NTK) counterpart (Figure 5).

Directions are filter-normalised (Li et al. 2018): each hidden unit's direction u_r is rescaled
to the norm of that unit's trained weights w_r. The kernel counterpart is the network linearised
at its initialisation W₀ (:meth:`TwoLayerNet.linearized_head`).
"""

from __future__ import annotations

import torch

from .losses import Loss, per_example_loss
from .models import TwoLayerNet


def filter_normalized_direction(weight: torch.Tensor, seed: int) -> torch.Tensor:
    """A Gaussian direction with each row scaled to the norm of the same row of ``weight``."""
    gen = torch.Generator().manual_seed(seed)
    u = torch.randn(weight.shape, generator=gen, dtype=torch.float64).to(weight.device)
    w = weight.detach().to(torch.float64)
    return u * (w.norm(dim=1, keepdim=True) / u.norm(dim=1, keepdim=True).clamp_min(1e-300))


@torch.no_grad()
def loss_surface(model: TwoLayerNet, x: torch.Tensor, y: torch.Tensor, loss: Loss | str,
                 u: torch.Tensor, v: torch.Tensor, grid: torch.Tensor,
                 linearize_at: torch.Tensor | None = None) -> torch.Tensor:
    """Mean loss on the model's inputs ``x`` at W* + a·u + b·v for a, b in ``grid`` (G × G,
    float64), of the network's head or, with ``linearize_at`` = W₀, of its linearisation."""
    h = model.hidden_inputs(model.inputs(x)).to(torch.float64)
    w_star = model.weight.detach().to(torch.float64)
    out = torch.empty(len(grid), len(grid), dtype=torch.float64)
    for i, a in enumerate(grid):
        for j, b in enumerate(grid):
            w = w_star + a * u + b * v
            f = (model.head(h, w) if linearize_at is None
                 else model.linearized_head(h, w, linearize_at))
            out[i, j] = per_example_loss(f, y, loss).mean()
    return out
