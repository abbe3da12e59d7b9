"""The random-perturbation control (issue 31): uniform random signs of the same budget ε.

x' = clip(x + ε·s, bounds), s ∈ {−1, +1}^shape drawn uniformly per coordinate from a
``torch.Generator`` seeded with ``seed`` (the global RNG is untouched). It uses no gradient:
the flip rate it causes is what any perturbation of that size does to the ranking.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._validation import check_nonnegative, check_seed
from ..settings import Settings, setting
from .base import UNIT_BOX, Bounds, LossFn, check_inputs


def random_sign(x: Any, eps: float, seed: int = 0, bounds: Bounds = UNIT_BOX) -> torch.Tensor:
    """clip(x + ε·s, bounds) with seeded uniform signs s (see the module docstring)."""
    x, _, eps = check_inputs(x, None, eps, bounds)
    gen = torch.Generator(device=x.device).manual_seed(seed)
    signs = torch.randint(0, 2, x.shape, generator=gen, device=x.device).to(x.dtype) * 2 - 1
    return (x + eps * signs).clamp(*bounds)


@dataclass(frozen=True)
class RandomSign(Settings):
    """Random ±ε signs on every coordinate, seeded; the loss is not used."""

    name: ClassVar[str] = "random-sign"
    eps: float = setting(0.3, "ℓ∞ budget ε in the inputs' units.", check_nonnegative)
    seed: int = setting(0, "Seed of the signs.", check_seed)

    def perturb(self, loss_fn: LossFn, x: torch.Tensor, y: Any,
                bounds: Bounds = UNIT_BOX) -> torch.Tensor:
        check_inputs(x, y, self.eps, bounds)
        return random_sign(x, self.eps, self.seed, bounds)
