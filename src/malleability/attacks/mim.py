"""Momentum iterative method (Dong et al. 2018), ℓ∞."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._validation import check_nonnegative, check_positive, check_positive_int
from ..settings import Settings, setting
from .base import UNIT_BOX, AttackLoss, Bounds, LossFn, check_inputs, input_grad, project


def mim(
    loss_fn: LossFn,
    x: Any,
    y: Any,
    eps: float,
    alpha: float = 0.01,
    steps: int = 40,
    momentum: float = 1.0,
    bounds: Bounds = UNIT_BOX,
) -> torch.Tensor:
    """g⁰ = 0, x⁰ = x; ``steps`` times gᵗ⁺¹ = μ·gᵗ + ∇ᵗ/‖∇ᵗ‖₁ (ℓ1 norm per example over all
    non-batch dims, ∇ᵗ = ∇_x L(xᵗ, y)) and xᵗ⁺¹ = Π(xᵗ + α·sign gᵗ⁺¹), Π the projection onto
    the ε-ball and ``bounds``."""
    x, y, eps = check_inputs(x, y, eps, bounds)
    alpha = check_positive(alpha, "alpha")
    steps = check_positive_int(steps, "steps")
    momentum = check_nonnegative(momentum, "momentum")
    if eps == 0:
        return x.clone()
    x_adv, g = x, torch.zeros_like(x)
    for t in range(steps):
        grad = input_grad(loss_fn, x_adv, y, f"mim step {t + 1}")
        l1 = grad.abs().reshape(x.shape[0], -1).sum(dim=1)
        l1 = l1.clamp_min(torch.finfo(x.dtype).tiny).reshape((-1,) + (1,) * (x.ndim - 1))
        g = momentum * g + grad / l1
        x_adv = project(x_adv + alpha * g.sign(), x, eps, bounds)
    return x_adv


@dataclass(frozen=True)
class MIM(Settings):
    """MIM (deterministic); defaults are the paper's (ε = 0.3, 40 × 0.01, μ = 1)."""

    name: ClassVar[str] = "mim"
    eps: float = setting(0.3, "ℓ∞ budget ε in the inputs' units (paper: 0.3).",
                         check_nonnegative)
    alpha: float = setting(0.01, "Step size α (paper: 0.01).", check_positive)
    steps: int = setting(40, "Steps (paper: 40).", check_positive_int)
    momentum: float = setting(1.0, "Momentum μ (paper: 1.0).", check_nonnegative)
    loss: AttackLoss = setting(AttackLoss.TARGET, "Loss maximised against a model: target "
                               "(the training loss) or margin (Carlini & Wagner).")

    def perturb(self, loss_fn: LossFn, x: torch.Tensor, y: Any,
                bounds: Bounds = UNIT_BOX) -> torch.Tensor:
        return mim(loss_fn, x, y, self.eps, alpha=self.alpha, steps=self.steps,
                   momentum=self.momentum, bounds=bounds)
