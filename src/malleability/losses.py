"""Per-example losses, the loss a target encoding implies, and accuracy (docs/method.md §1, §3).

Multi-class targets are one-hot with cross-entropy; binary targets are one ±1 column with the
squared error ½(f − y)².
"""

from __future__ import annotations

from enum import StrEnum

import torch

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
