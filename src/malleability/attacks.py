"""ℓ∞ adversarial attacks on [0,1] pixels: FGSM, PGD and MIM (docs/method.md §6), their settings,
and the "perturb these rows against a model" step of the malleability protocol.

Every attack has the same call shape ``attack(loss_fn, x, y, eps, ...)``: ``loss_fn(x, y)``
returns per-example losses of shape (B,), the attack maximises their sum over the set
{x' : ‖x' − x‖∞ ≤ ε, 0 ≤ x' ≤ 1} and returns a detached tensor of x's shape and dtype.
Gradients are taken with respect to the input only, so model parameters get no ``.grad``
and the model's train/eval mode is left alone. PGD with ``restarts`` > 1 keeps, per example,
the restart of largest loss (the worst case). Against a model, the loss is the target's
training loss or the margin loss of Carlini & Wagner (:func:`margin_loss`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Any

import torch
from torch import nn

from ._validation import (
    as_tensor,
    check_choice,
    check_finite,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_rows_match,
    check_seed,
)
from .losses import loss_for_targets, per_example_loss
from .settings import Settings, setting

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]


class Attack(StrEnum):
    """The attacks of docs/method.md §6, by name."""

    FGSM = "fgsm"
    PGD = "pgd"
    MIM = "mim"


class AttackLoss(StrEnum):
    """The loss an attack on a model maximises: the target's training loss (cross-entropy or
    ½(f − y)², :func:`loss_for_targets`) or the margin loss (:func:`margin_loss`)."""

    TARGET = "target"
    MARGIN = "margin"


def margin_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Margin loss per row (Carlini & Wagner 2017): max_{j ≠ c} f_j − f_c for one-hot ``y``
    of class c, −y·f for one ±1 column. Positive exactly when the row is misclassified."""
    if y.shape[-1] == 1:
        return -(y * f)[..., 0]
    true = (f * y).sum(-1)
    other = f.masked_fill(y.bool(), float("-inf")).amax(-1)
    return other - true


def check_eps(value: Any, name: str) -> float:
    """An ℓ∞ budget in [0, 1] pixel units."""
    eps = check_nonnegative(value, name)
    if eps > 1:
        raise ValueError(f"{name}: expected a number in [0, 1] (pixel units), got {value!r}")
    return eps


@dataclass(frozen=True)
class AttackSettings(Settings):
    """An ℓ∞ attack in [0,1] pixel space; defaults are the paper's (ε = 0.3, 40 × 0.01, μ = 1)."""

    attack: Attack = setting(Attack.PGD, "Attack: fgsm, pgd or mim.", cli=False)
    eps: float = setting(0.3, "ℓ∞ budget ε in [0,1] pixel units (paper: 0.3).", check_eps)
    alpha: float = setting(0.01, "PGD/MIM step size α (paper: 0.01).", check_positive)
    steps: int = setting(40, "PGD/MIM steps (paper: 40).", check_positive_int)
    momentum: float = setting(1.0, "MIM momentum μ (paper: 1.0).", check_nonnegative)
    seed: int = setting(0, "Seed of PGD's random start.", check_seed)
    loss: AttackLoss = setting(AttackLoss.TARGET, "Loss maximised against a model: target "
                               "(the training loss) or margin (Carlini & Wagner).")
    restarts: int = setting(1, "PGD random restarts; the worst case per point is kept "
                                 "(FGSM and MIM are deterministic and ignore it).",
                            check_positive_int)

    def run(self, loss_fn: LossFn, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """This attack on ``loss_fn`` at (``x``, ``y``)."""
        return run_attack(self.attack, loss_fn, x, y, self.eps, alpha=self.alpha,
                          steps=self.steps, momentum=self.momentum, seed=self.seed,
                          restarts=self.restarts)

    def model_loss(self, model: nn.Module, y: torch.Tensor) -> LossFn:
        """``loss_fn(x, y)`` of this attack against ``model`` for targets like ``y``."""
        if self.loss is AttackLoss.MARGIN:
            return lambda xb, yb: margin_loss(model(xb), yb)
        loss = loss_for_targets(y)
        return lambda xb, yb: per_example_loss(model(xb), yb, loss)


def perturb_rows(model: nn.Module, x: torch.Tensor, y: torch.Tensor, rows: torch.Tensor,
                 attack: AttackSettings) -> torch.Tensor:
    """A copy of ``x`` (the model's inputs, e.g. pixels) with the rows ``rows`` replaced by
    their adversarial versions against ``model``'s loss (``attack.loss``) at their own labels
    ``y``."""
    dtype = next(model.parameters()).dtype
    out = x.clone()
    if rows.numel():
        out[rows] = attack.run(attack.model_loss(model, y), x[rows], y[rows].to(dtype))
    return out


def _check_inputs(x: Any, y: Any, eps: Any) -> tuple[torch.Tensor, Any, float]:
    """Validate ``x`` (a batch of pixels in [0,1]), ``y`` (one row per example) and ``eps``."""
    x = as_tensor(x, "x", dtype=None).detach()
    if x.ndim == 0:
        raise ValueError("x: expected a batch of shape (B, ...), got a scalar")
    lo, hi = float(x.min()), float(x.max())
    if lo < 0.0 or hi > 1.0:
        raise ValueError(f"x: expected pixel values in [0, 1], got values in [{lo:g}, {hi:g}]")
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y, device=x.device)
    if y.ndim == 0:
        raise ValueError("y: expected one row per example of x, got a scalar")
    check_rows_match(x, y, "x", "y")
    return x, y, check_nonnegative(eps, "eps")


def _input_grad(loss_fn: LossFn, x: torch.Tensor, y: Any, stage: str) -> torch.Tensor:
    """∇_x Σ_b loss_fn(x, y)_b, with respect to the input only.

    A NaN or infinite loss or gradient raises NonFiniteError naming ``stage`` (its sign
    would silently freeze the attack at its start).
    """
    x = x.detach().requires_grad_(True)
    with torch.enable_grad():
        loss = loss_fn(x, y)
        if loss.shape != (x.shape[0],):
            raise ValueError(
                f"loss_fn: expected per-example losses of shape ({x.shape[0]},), "
                f"got shape {tuple(loss.shape)}"
            )
        check_finite(loss.detach(), "loss_fn", f"the loss at {stage}")
        (grad,) = torch.autograd.grad(loss.sum(), x)
    return check_finite(grad, "loss_fn", f"the input gradient at {stage}")


def _project(x_adv: torch.Tensor, x: torch.Tensor, eps: float) -> torch.Tensor:
    """Π: projection onto the ℓ∞ ε-ball around ``x``, then onto [0,1] (x ∈ [0,1], so both hold)."""
    return torch.clamp(x_adv, min=x - eps, max=x + eps).clamp(0.0, 1.0)


def fgsm(loss_fn: LossFn, x: Any, y: Any, eps: float) -> torch.Tensor:
    """Fast gradient sign method (Goodfellow et al. 2015): x' = clip₀¹(x + ε·sign ∇_x L(x, y))."""
    x, y, eps = _check_inputs(x, y, eps)
    if eps == 0:
        return x.clone()
    return _project(x + eps * _input_grad(loss_fn, x, y, "fgsm").sign(), x, eps)


def pgd(
    loss_fn: LossFn,
    x: Any,
    y: Any,
    eps: float,
    alpha: float = AttackSettings.alpha,
    steps: int = AttackSettings.steps,
    random_start: bool = True,
    seed: int = AttackSettings.seed,
    restarts: int = AttackSettings.restarts,
) -> torch.Tensor:
    """Projected gradient descent, ℓ∞ (Madry et al. 2018).

    x⁰ = Π(x + U[−ε, ε]) (or x⁰ = x without ``random_start``), then ``steps`` times
    xᵗ⁺¹ = Π(xᵗ + α·sign ∇_x L(xᵗ, y)). The start is drawn from a ``torch.Generator``
    seeded with ``seed``; the global RNG is untouched. With ``restarts`` = R > 1, restart r
    starts from seed ``seed`` + r and each example keeps the restart of largest loss.
    """
    x, y, eps = _check_inputs(x, y, eps)
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
            x_adv = _project(x + eps * (2 * u - 1), x, eps)
        for t in range(steps):
            grad = _input_grad(loss_fn, x_adv, y, f"pgd step {t + 1}")
            x_adv = _project(x_adv + alpha * grad.sign(), x, eps)
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


def mim(
    loss_fn: LossFn,
    x: Any,
    y: Any,
    eps: float,
    alpha: float = AttackSettings.alpha,
    steps: int = AttackSettings.steps,
    momentum: float = AttackSettings.momentum,
) -> torch.Tensor:
    """Momentum iterative method (Dong et al. 2018), ℓ∞.

    g⁰ = 0, x⁰ = x; ``steps`` times gᵗ⁺¹ = μ·gᵗ + ∇ᵗ/‖∇ᵗ‖₁ (ℓ1 norm per example over all
    non-batch dims, ∇ᵗ = ∇_x L(xᵗ, y)) and xᵗ⁺¹ = Π(xᵗ + α·sign gᵗ⁺¹).
    """
    x, y, eps = _check_inputs(x, y, eps)
    alpha = check_positive(alpha, "alpha")
    steps = check_positive_int(steps, "steps")
    momentum = check_nonnegative(momentum, "momentum")
    if eps == 0:
        return x.clone()
    x_adv, g = x, torch.zeros_like(x)
    for t in range(steps):
        grad = _input_grad(loss_fn, x_adv, y, f"mim step {t + 1}")
        l1 = grad.abs().reshape(x.shape[0], -1).sum(dim=1)
        l1 = l1.clamp_min(torch.finfo(x.dtype).tiny).reshape((-1,) + (1,) * (x.ndim - 1))
        g = momentum * g + grad / l1
        x_adv = _project(x_adv + alpha * g.sign(), x, eps)
    return x_adv


def run_attack(
    attack: Attack | str,
    loss_fn: LossFn,
    x: Any,
    y: Any,
    eps: float,
    *,
    alpha: float = AttackSettings.alpha,
    steps: int = AttackSettings.steps,
    momentum: float = AttackSettings.momentum,
    seed: int = AttackSettings.seed,
    restarts: int = AttackSettings.restarts,
) -> torch.Tensor:
    """Run the attack named ``attack`` (an ``Attack`` or its name, any case).

    FGSM ignores ``alpha``, ``steps``, ``momentum``, ``seed`` and ``restarts``; PGD (random
    start) ignores ``momentum``; MIM ignores ``seed`` and ``restarts``.
    """
    name = attack.lower() if isinstance(attack, str) else attack
    kind = Attack(check_choice(name, "attack", tuple(Attack)))
    if kind is Attack.FGSM:
        return fgsm(loss_fn, x, y, eps)
    if kind is Attack.PGD:
        return pgd(loss_fn, x, y, eps, alpha=alpha, steps=steps, seed=seed, restarts=restarts)
    return mim(loss_fn, x, y, eps, alpha=alpha, steps=steps, momentum=momentum)
