"""Projected gradient descent (Madry et al. 2018), ℓ∞, with random restarts."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._validation import (
    check_finite,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_seed,
)
from ..settings import Settings, setting
from .base import UNIT_BOX, AttackLoss, Bounds, LossFn, check_inputs, input_grad, project


def pgd(
    loss_fn: LossFn,
    x: Any,
    y: Any,
    eps: float,
    alpha: float = 0.01,
    steps: int = 40,
    random_start: bool = True,
    seed: int = 0,
    restarts: int = 1,
    bounds: Bounds = UNIT_BOX,
) -> torch.Tensor:
    """x⁰ = Π(x + U[−ε, ε]) (or x⁰ = x without ``random_start``), then ``steps`` times
    xᵗ⁺¹ = Π(xᵗ + α·sign ∇_x L(xᵗ, y)), Π the projection onto the ε-ball and ``bounds``.

    The start is drawn from a ``torch.Generator`` seeded with ``seed``; the global RNG is
    untouched. With ``restarts`` = R > 1, restart r starts from seed ``seed`` + r and each
    example keeps the restart of largest loss (the worst case).
    """
    x, y, eps = check_inputs(x, y, eps, bounds)
    alpha = check_positive(alpha, "alpha")
    steps = check_positive_int(steps, "steps")
    restarts = check_positive_int(restarts, "restarts")
    if eps == 0:
        return x.clone()
    best, best_loss = x, None
    for r in range(restarts if random_start else 1):
        x_adv = x
        if random_start:
            gen = torch.Generator(device=x.device).manual_seed(seed + r)
            u = torch.rand(x.shape, generator=gen, dtype=x.dtype, device=x.device)
            x_adv = project(x + eps * (2 * u - 1), x, eps, bounds)
        for t in range(steps):
            grad = input_grad(loss_fn, x_adv, y, f"pgd step {t + 1}")
            x_adv = project(x_adv + alpha * grad.sign(), x, eps, bounds)
        if restarts == 1:
            return x_adv
        best, best_loss = worst_case(loss_fn, y, best, best_loss, x_adv)
    return best


def worst_case(loss_fn: LossFn, y: Any, best: torch.Tensor, best_loss: torch.Tensor | None,
               candidate: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per example, the one of ``best`` (loss ``best_loss``; None: no best yet) and
    ``candidate`` with the larger ``loss_fn``; ties keep ``best``."""
    with torch.no_grad():
        loss = check_finite(loss_fn(candidate, y).detach(), "loss_fn", "a pgd restart")
    if best_loss is None:
        return candidate, loss
    better = loss > best_loss
    mask = better.reshape((-1,) + (1,) * (candidate.ndim - 1))
    return torch.where(mask, candidate, best), torch.where(better, loss, best_loss)


@dataclass(frozen=True)
class PGD(Settings):
    """PGD with a random start, ``restarts`` restarts (worst case kept) and the target or
    margin loss; defaults are the paper's (ε = 0.3, 40 steps of 0.01)."""

    name: ClassVar[str] = "pgd"
    eps: float = setting(0.3, "ℓ∞ budget ε in the inputs' units (paper: 0.3).",
                         check_nonnegative)
    alpha: float = setting(0.01, "Step size α (paper: 0.01).", check_positive)
    steps: int = setting(40, "Steps (paper: 40).", check_positive_int)
    seed: int = setting(0, "Seed of the random start.", check_seed)
    restarts: int = setting(1, "Random restarts; the worst case per point is kept.",
                            check_positive_int)
    loss: AttackLoss = setting(AttackLoss.TARGET, "Loss maximised against a model: target "
                               "(the training loss) or margin (Carlini & Wagner).")

    def perturb(self, loss_fn: LossFn, x: torch.Tensor, y: Any,
                bounds: Bounds = UNIT_BOX) -> torch.Tensor:
        return pgd(loss_fn, x, y, self.eps, alpha=self.alpha, steps=self.steps, seed=self.seed,
                   restarts=self.restarts, bounds=bounds)
