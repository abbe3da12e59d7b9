"""What every ℓ∞ attack shares (docs/method.md §6): the protocol, the constraint set, the
input gradient, the losses an attack on a model maximises, and "perturb these rows".

An attack is a frozen settings dataclass with a registry name and one method,
``perturb(loss_fn, x, y, bounds)``: ``loss_fn(x, y)`` returns per-example losses of shape
(B,); the attack maximises their sum over {x' : ‖x' − x‖∞ ≤ ε, lo ≤ x' ≤ hi} (default [0, 1]
pixels) and returns a detached tensor of x's shape and dtype. Gradients are taken with respect
to the input only, so model parameters get no ``.grad`` and the model's mode is left alone.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from enum import StrEnum
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from .._validation import as_tensor, check_finite, check_nonnegative, check_rows_match
from ..losses import as_targets_of, training_loss

LossFn = Callable[[torch.Tensor, Any], torch.Tensor]
Bounds = tuple[float, float]
UNIT_BOX: Bounds = (0.0, 1.0)


class Attack(StrEnum):
    """The paper's attacks (Table 2, docs/method.md §6); the registry ``ATTACKS`` holds these
    and any other attack by name."""

    FGSM = "fgsm"
    PGD = "pgd"
    MIM = "mim"


class AttackLoss(StrEnum):
    """The loss an attack on a model maximises: the model's training loss
    (:func:`training_loss`) or the margin loss (:func:`margin_loss`)."""

    TARGET = "target"
    MARGIN = "margin"


@runtime_checkable
class AttackMethod(Protocol):
    """One ℓ∞ attack with its settings: ``name`` (its registry key), budget ``eps`` (in the
    units of the inputs) and ``perturb``; see the module docstring."""

    name: ClassVar[str]
    eps: float

    def perturb(self, loss_fn: LossFn, x: torch.Tensor, y: Any,
                bounds: Bounds = UNIT_BOX) -> torch.Tensor: ...


def check_eps(value: Any, name: str) -> float:
    """An ℓ∞ budget in [0, 1] pixel units."""
    eps = check_nonnegative(value, name)
    if eps > 1:
        raise ValueError(f"{name}: expected a number in [0, 1] (pixel units), got {value!r}")
    return eps


def margin_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Margin loss per row (Carlini & Wagner 2017): max_{j ≠ c} f_j − f_c for one-hot ``y``
    of class c, −y·f for one ±1 column. Positive exactly when the row is misclassified."""
    if y.shape[-1] == 1:
        return -(y * f)[..., 0]
    true = (f * y).sum(-1)
    other = f.masked_fill(y.bool(), float("-inf")).amax(-1)
    return other - true


def model_loss(models: nn.Module | Sequence[nn.Module], loss: AttackLoss = AttackLoss.TARGET
               ) -> LossFn:
    """``loss_fn(x, y)`` against ``models``: their mean :func:`training_loss` (or
    :func:`margin_loss`) at targets ``y`` (class indices or one-hot / ±1 rows)."""
    nets = [models] if isinstance(models, nn.Module) else list(models)

    def one(net: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        f = net(x)
        if loss is AttackLoss.MARGIN:
            return margin_loss(f, as_targets_of(y, f.reshape(f.shape[0], -1).shape[1],
                                                f.dtype))
        return training_loss(f, y)

    if len(nets) == 1:
        return lambda x, y: one(nets[0], x, y)
    return lambda x, y: sum(one(net, x, y) for net in nets) / len(nets)


def check_inputs(x: Any, y: Any, eps: Any, bounds: Bounds) -> tuple[torch.Tensor, Any, float]:
    """Validate ``x`` (a batch inside ``bounds``), ``y`` (one row per example; None: not
    used) and ``eps``."""
    x = as_tensor(x, "x", dtype=None).detach()
    if x.ndim == 0:
        raise ValueError("x: expected a batch of shape (B, ...), got a scalar")
    lo, hi = float(x.min()), float(x.max())
    if lo < bounds[0] or hi > bounds[1]:
        raise ValueError(f"x: expected values in [{bounds[0]:g}, {bounds[1]:g}], got values in "
                         f"[{lo:g}, {hi:g}]")
    if y is None:
        return x, None, check_nonnegative(eps, "eps")
    y = y if isinstance(y, torch.Tensor) else torch.as_tensor(y, device=x.device)
    if y.ndim == 0:
        raise ValueError("y: expected one row per example of x, got a scalar")
    check_rows_match(x, y, "x", "y")
    return x, y, check_nonnegative(eps, "eps")


def input_grad(loss_fn: LossFn, x: torch.Tensor, y: Any, stage: str) -> torch.Tensor:
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


def project(x_adv: torch.Tensor, x: torch.Tensor, eps: float, bounds: Bounds = UNIT_BOX
            ) -> torch.Tensor:
    """Π: projection onto the ℓ∞ ε-ball around ``x``, then onto ``bounds`` (x is inside both,
    so both hold)."""
    return torch.clamp(x_adv, min=x - eps, max=x + eps).clamp(*bounds)


def perturb_rows(model: nn.Module | Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor,
                 rows: torch.Tensor, attack: Any, bounds: Bounds = UNIT_BOX) -> torch.Tensor:
    """A copy of ``x`` (the model's inputs, e.g. pixels) with the rows ``rows`` replaced by
    their versions under ``attack`` (an :class:`AttackMethod` or ``AttackSettings``) against
    the model's loss (``attack.loss``; several models: their mean) at their own targets
    ``y`` (class indices or one-hot / ±1 rows)."""
    out = x.clone()
    if rows.numel():
        loss_fn = model_loss(model, getattr(attack, "loss", AttackLoss.TARGET))
        out[rows] = attack.perturb(loss_fn, x[rows], y[rows], bounds).to(x.dtype)
    return out
