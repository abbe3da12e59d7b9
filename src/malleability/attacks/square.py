"""Square attack (Andriushchenko et al. 2020, ECCV), ℓ∞: a gradient-free random search.

Inputs are viewed as images (C, H, W) (:func:`image_shape`). Start: vertical stripes,
x⁰ = Π(x + δ⁰), δ⁰ = ±ε drawn per example, channel and column. Step i: a square window of side
s = max(1, round(√(p_i · H·W))) at a uniformly drawn position gets a fresh ±ε per channel
(the rest of δ kept); the candidate replaces the current point where it raises the loss. The
share p_i halves at the paper's fixed iteration marks (10, 50, 200, 500, 1000, 2000, 4000,
6000, 8000 of 10,000, rescaled to ``steps``) from ``p_init``. Every draw comes from a
``torch.Generator`` seeded with ``seed``; no gradient is taken, so gradient masking cannot
hide a weakness from it. One loss evaluation per step (``steps`` queries in all).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, ClassVar

import torch

from .._validation import check_finite, check_nonnegative, check_positive_int, check_seed
from ..settings import Settings, setting
from .base import UNIT_BOX, AttackLoss, Bounds, LossFn, check_inputs

#: Iteration marks (of 10,000) after which the window share p halves (the paper's schedule).
P_MARKS = (10, 50, 200, 500, 1000, 2000, 4000, 6000, 8000)


def image_shape(features: int) -> tuple[int, int, int]:
    """(C, H, W) of a flat input of ``features`` values: 3 square channels (CIFAR-10's
    channel-first rows), else one square channel (MNIST, digits), else one row (1, 1, d)."""
    for channels in (3, 1):
        side = math.isqrt(features // channels)
        if features % channels == 0 and side * side * channels == features:
            return channels, side, side
    return 1, 1, features


def window_share(p_init: float, step: int, steps: int) -> float:
    """p at ``step`` of ``steps``: ``p_init`` halved once per mark of :data:`P_MARKS` passed
    (marks rescaled from 10,000 iterations to ``steps``)."""
    at = int(step / steps * 10_000)
    return p_init / 2 ** sum(at > mark for mark in P_MARKS)


def square(loss_fn: LossFn, x: Any, y: Any, eps: float, steps: int = 1000,
           p_init: float = 0.05, seed: int = 0, bounds: Bounds = UNIT_BOX) -> torch.Tensor:
    """The Square attack on ``x`` (B × ...) maximising ``loss_fn`` (see the module
    docstring); returns the best point per example, in the ε-ball and ``bounds``."""
    x, y, eps = check_inputs(x, y, eps, bounds)
    steps = check_positive_int(steps, "steps")
    if not 0 < p_init <= 1:
        raise ValueError(f"p_init: expected a share in (0, 1], got {p_init!r}")
    if eps == 0:
        return x.clone()
    b = x.shape[0]
    c, h, w = image_shape(x[0].numel())
    gen = torch.Generator(device=x.device).manual_seed(seed)

    def signs(*shape: int) -> torch.Tensor:
        draw = torch.randint(0, 2, shape, generator=gen, device=x.device)
        return eps * (2 * draw - 1).to(x.dtype)

    def loss_of(candidate: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            value = loss_fn(candidate.reshape(x.shape), y).detach()
        return check_finite(value, "loss_fn", "a square-attack query")

    images = x.reshape(b, c, h, w)
    delta = signs(b, c, 1, w).expand(b, c, h, w).clone()
    best = (images + delta).clamp(*bounds)
    best_loss = loss_of(best)
    rows, cols = torch.arange(h, device=x.device), torch.arange(w, device=x.device)
    for i in range(steps - 1):
        side = max(1, min(h, w, round(math.sqrt(window_share(p_init, i, steps) * h * w))))
        top = torch.randint(0, h - side + 1, (b, 1), generator=gen, device=x.device)
        left = torch.randint(0, w - side + 1, (b, 1), generator=gen, device=x.device)
        inside = (((rows >= top) & (rows < top + side))[:, None, :, None]
                  & ((cols >= left) & (cols < left + side))[:, None, None, :])
        candidate_delta = torch.where(inside, signs(b, c, 1, 1), delta)
        candidate = (images + candidate_delta).clamp(*bounds)
        loss = loss_of(candidate)
        better = loss > best_loss
        keep = better.reshape(b, 1, 1, 1)
        delta = torch.where(keep, candidate_delta, delta)
        best = torch.where(keep, candidate, best)
        best_loss = torch.where(better, loss, best_loss)
    return best.reshape(x.shape)


@dataclass(frozen=True)
class Square(Settings):
    """The Square attack: ``steps`` queries from window share ``p_init``, seeded; the margin
    loss is its usual objective."""

    name: ClassVar[str] = "square"
    eps: float = setting(0.3, "ℓ∞ budget ε in the inputs' units.", check_nonnegative)
    steps: int = setting(1000, "Queries (loss evaluations).", check_positive_int)
    p_init: float = setting(0.05, "Initial window share p of the image area (paper: 0.05; "
                                  "halved on a fixed schedule).", check_nonnegative)
    seed: int = setting(0, "Seed of every draw.", check_seed)
    loss: AttackLoss = setting(AttackLoss.MARGIN, "Loss maximised against a model: margin "
                               "(Carlini & Wagner, the paper's) or target.")

    def perturb(self, loss_fn: LossFn, x: torch.Tensor, y: Any,
                bounds: Bounds = UNIT_BOX) -> torch.Tensor:
        return square(loss_fn, x, y, self.eps, steps=self.steps, p_init=self.p_init,
                      seed=self.seed, bounds=bounds)
