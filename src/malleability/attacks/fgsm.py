"""Fast gradient sign method (Goodfellow et al. 2015), ℓ∞: one signed gradient step of size ε."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._validation import check_nonnegative
from ..settings import Settings, setting
from .base import UNIT_BOX, AttackLoss, Bounds, LossFn, check_inputs, input_grad, project


def fgsm(loss_fn: LossFn, x: Any, y: Any, eps: float, bounds: Bounds = UNIT_BOX
         ) -> torch.Tensor:
    """x' = Π(x + ε·sign ∇_x L(x, y)), Π the projection onto the ε-ball and ``bounds``."""
    x, y, eps = check_inputs(x, y, eps, bounds)
    if eps == 0:
        return x.clone()
    return project(x + eps * input_grad(loss_fn, x, y, "fgsm").sign(), x, eps, bounds)


@dataclass(frozen=True)
class FGSM(Settings):
    """FGSM at budget ``eps``, on the loss ``loss`` against a model."""

    name: ClassVar[str] = "fgsm"
    eps: float = setting(0.3, "ℓ∞ budget ε in the inputs' units (paper: 0.3).",
                         check_nonnegative)
    loss: AttackLoss = setting(AttackLoss.TARGET, "Loss maximised against a model: target "
                               "(the training loss) or margin (Carlini & Wagner).")

    def perturb(self, loss_fn: LossFn, x: torch.Tensor, y: Any,
                bounds: Bounds = UNIT_BOX) -> torch.Tensor:
        return fgsm(loss_fn, x, y, self.eps, bounds)
