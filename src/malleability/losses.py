"""Per-example losses, the loss a target encoding implies, and accuracy (docs/method.md §1, §3).

Multi-class targets are one-hot with cross-entropy; binary targets are one ±1 column with the
squared error ½(f − y)². Labels given as class indices (the audit's, dattri's) convert to and
from these rows with :func:`as_targets_of` and :func:`as_labels` (one output: +1 ↔ class 1).
"""

from __future__ import annotations

from enum import StrEnum

import torch
from torch.nn import functional as F

from ._validation import parse_enum


class Loss(StrEnum):
    """Per-example losses: MSE ½‖f − y‖² (binary ±1 or any targets), cross-entropy (one-hot)."""

    MSE = "mse"
    CE = "ce"


def per_example_loss(f: torch.Tensor, y: torch.Tensor, loss: Loss | str) -> torch.Tensor:
    """L(f, y) per row: ½‖f − y‖² (mse) or logsumexp(f) − y·f (ce, y one-hot)."""
    loss = parse_enum(loss, Loss, "loss")
    if loss is Loss.MSE:
        return 0.5 * ((f - y) ** 2).sum(-1)
    return torch.logsumexp(f, dim=-1) - (y * f).sum(-1)


def loss_for_targets(y: torch.Tensor) -> Loss:
    """Cross-entropy for one-hot targets with ≥ 2 columns, MSE otherwise (±1 or real)."""
    return Loss.CE if y.ndim == 2 and y.shape[1] >= 2 else Loss.MSE


def accuracy(f: torch.Tensor, y: torch.Tensor) -> float:
    """Fraction correct: argmax agreement (multi-class) or sign agreement (one ±1 column)."""
    if y.shape[1] == 1:
        return float((torch.sign(f[:, 0]) == torch.sign(y[:, 0])).to(torch.float64).mean())
    return float((f.argmax(1) == y.argmax(1)).to(torch.float64).mean())


def as_targets_of(y: torch.Tensor, outputs: int, dtype: torch.dtype) -> torch.Tensor:
    """Training targets in ``dtype``: one-hot / ±1 rows as given, or made from class indices
    (one-hot for ``outputs`` ≥ 2, one ±1 column with +1 = class 1 for one output)."""
    if y.is_floating_point() and y.ndim == 2:
        return y.to(dtype)
    if outputs == 1:
        return (2 * y.reshape(-1, 1) - 1).to(dtype)
    return F.one_hot(y.long(), outputs).to(dtype)


def as_labels(y: torch.Tensor) -> torch.Tensor:
    """Class indices from class indices, one-hot rows (argmax) or one ±1 column (+1 → 1)."""
    if y.is_floating_point() and y.ndim == 2:
        return y.argmax(1) if y.shape[1] >= 2 else (y[:, 0] > 0).long()
    return y.long()


def training_loss(f: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The per-example loss a classifier is trained with: for one-hot / ±1 targets, the
    package's convention (:func:`per_example_loss`: cross-entropy, or ½(f − y)² on ±1);
    for class indices, cross-entropy on (n, C ≥ 2) logits and the logistic loss
    log(1 + e^{−s f}), s = 2y − 1, on one score per example."""
    if y.is_floating_point() and y.ndim == 2:
        return per_example_loss(f, y.to(f.dtype), loss_for_targets(y))
    if f.ndim == 2 and f.shape[1] >= 2:
        return F.cross_entropy(f, y.long(), reduction="none")
    sign = 2.0 * y.to(f.dtype) - 1.0
    return F.softplus(-sign * f.reshape(-1))
