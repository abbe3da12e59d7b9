"""Training the two-layer networks (Appendix A.4): Adam, mini-batches, loss + λ_reg‖W − W₀‖².

The network maps its inputs x (pixels, when it holds its preprocessing) to outputs, so
adversarial training attacks x through the preprocessing. Multi-class targets are one-hot with
cross-entropy; binary targets are ±1 with ½(f − y)² (docs/method.md §1, §3).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Literal

import torch
from tqdm.auto import tqdm

from ._validation import (
    NonFiniteError,
    as_tensor,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_rows_match,
    check_seed,
    parse_enum,
)
from .losses import Loss, accuracy, loss_for_targets, per_example_loss
from .memory import check_memory, network_bytes
from .models import TwoLayerNet
from .settings import Settings, setting

#: ``adversary(loss_fn, x_b, y_b, epoch)`` → the batch to train on (epochs count from 1).
Adversary = Callable[[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor,
                      torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class TrainSettings(Settings):
    """Optimiser settings; defaults are the paper's (A.4). λ_reg's value and convention are
    lost in the paper's text (docs/method.md §3): 1e-3 summed is a placeholder."""

    epochs: int = setting(500, "Training epochs (paper: 500).", check_positive_int)
    lr: float = setting(1e-3, "Adam learning rate (paper: 1e-3).", check_positive)
    batch_size: int = setting(128, "Mini-batch size (paper: 128).", check_positive_int)
    l2_to_init: float = setting(1e-3, "λ_reg in λ_reg‖W − W₀‖² (paper: value lost).",
                                check_nonnegative)
    l2_convention: Literal["sum", "mean"] = setting(
        "sum", "‖W − W₀‖² summed or averaged over the weights (paper: not stated).")
    seed: int = setting(42, "Seed of the mini-batch order (paper: 42).", check_seed)
    checkpoints: tuple[int, ...] = setting((), "Epochs at which W is kept (0 = init).",
                                           cli=False)
    progress: bool = setting(True, "Show a progress bar.", cli=False)

    def check_relations(self) -> None:
        for e in self.checkpoints:
            if not 0 <= e <= self.epochs:
                raise ValueError(f"checkpoints: expected epochs in 0..{self.epochs}, got {e}")


@dataclass
class TrainHistory:
    """Per-epoch training loss, test loss and test accuracy; W at the requested epochs."""

    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    checkpoints: dict[int, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"train_loss": self.train_loss, "test_loss": self.test_loss,
                "test_accuracy": self.test_accuracy}


def objective(model: TwoLayerNet, w0: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
              loss: Loss, l2_to_init: float, l2_convention: str = "sum") -> torch.Tensor:
    """mean_b L(f_b, y_b) + λ_reg ‖W − W₀‖² (summed, or averaged with ``l2_convention``
    "mean", over the weights), with f = head(h) on hidden-layer inputs h."""
    data = per_example_loss(model.head(h), y, loss).mean()
    sq = (model.weight - w0) ** 2
    return data + l2_to_init * (sq.mean() if l2_convention == "mean" else sq.sum())


def train(
    model: TwoLayerNet,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    adversary: Adversary | None = None,
    loss: Loss | str | None = None,
) -> TrainHistory:
    """Train ``model`` in place on (``x``, ``y``) and return its history.

    ``x`` is what the model takes (pixels when it holds its preprocessing); ``y`` is (n × C):
    one-hot or ±1 (see :func:`loss_for_targets`). With ``adversary`` (adversarial training)
    each batch is replaced by ``adversary(loss_fn, x_b, y_b, epoch)`` against the current
    weights, in the space of ``x``.
    """
    y = as_tensor(y, "y", ndim=2, dtype=model.weight.dtype)
    x = as_tensor(x, "x", ndim=None, dtype=None)
    check_rows_match(x, y, "x", "y")
    loss = loss_for_targets(y) if loss is None else parse_enum(loss, Loss, "loss")
    if (x_test is None) != (y_test is None):
        raise ValueError("y_test: give x_test and y_test together")
    if x_test is not None:
        y_test = as_tensor(y_test, "y_test", ndim=2, dtype=model.weight.dtype,
                           device=model.weight.device)
        check_rows_match(as_tensor(x_test, "x_test", dtype=None), y_test, "x_test", "y_test")
    device = model.weight.device
    check_memory(network_bytes(model.in_features, model.width, model.num_classes,
                               itemsize=model.weight.element_size(),
                               train_batch=min(settings.batch_size, x.shape[0])),
                 "width", f"training at width {model.width}", device)
    x, y = x.to(device), y.to(device)

    def to_hidden(xb: torch.Tensor) -> torch.Tensor:
        """Model inputs x → hidden-layer inputs h: preprocessing, then the attention front."""
        return model.hidden_inputs(model.inputs(xb))

    # Without an adversary the inputs never move, so they are mapped once; with one, every
    # (perturbed) batch is mapped anew.
    with torch.no_grad():
        h_test = None if x_test is None else to_hidden(x_test.to(device))
        if adversary is None:
            x = to_hidden(x)
    batch_hidden = _identity if adversary is None else to_hidden
    w0 = model.weight.detach().clone()
    optimizer = torch.optim.Adam([model.weight], lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    history = TrainHistory()
    if 0 in settings.checkpoints:
        history.checkpoints[0] = w0.cpu().clone()

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return per_example_loss(model.head(to_hidden(xb)), yb, loss)

    n = x.shape[0]
    bar = tqdm(range(1, settings.epochs + 1), desc="train", disable=not settings.progress,
               leave=False)
    for epoch in bar:
        order = torch.randperm(n, generator=gen).to(device)
        total = 0.0
        for s in range(0, n, settings.batch_size):
            idx = order[s:s + settings.batch_size]
            xb, yb = x[idx], y[idx]
            if adversary is not None:
                xb = adversary(batch_loss, xb, yb, epoch)
            optimizer.zero_grad(set_to_none=True)
            value = objective(model, w0, batch_hidden(xb), yb, loss, settings.l2_to_init,
                              settings.l2_convention)
            value.backward()
            optimizer.step()
            total += float(value.detach()) * idx.numel()
        if not math.isfinite(total):
            raise NonFiniteError(f"x: the training loss at epoch {epoch} is not finite "
                                 f"({total}); expected finite inputs and a stable lr "
                                 f"({settings.lr:g})")
        history.train_loss.append(total / n)
        if h_test is not None:
            with torch.no_grad():
                test_loss, test_acc = _loss_and_accuracy(model.head(h_test), y_test, loss)
            history.test_loss.append(test_loss)
            history.test_accuracy.append(test_acc)
            bar.set_postfix(loss=f"{total / n:.4f}", test_acc=f"{test_acc:.3f}")
        if epoch in settings.checkpoints:
            history.checkpoints[epoch] = model.weight.detach().cpu().clone()
    return history


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@torch.no_grad()
def evaluate(model: TwoLayerNet, x: torch.Tensor, y: torch.Tensor,
             loss: Loss | str | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on (``x``, ``y``)."""
    device = model.weight.device
    y = y.to(device=device, dtype=model.weight.dtype)
    loss = loss_for_targets(y) if loss is None else parse_enum(loss, Loss, "loss")
    return _loss_and_accuracy(model(x.to(device)), y, loss)


def _loss_and_accuracy(f: torch.Tensor, y: torch.Tensor, loss: Loss) -> tuple[float, float]:
    return float(per_example_loss(f, y, loss).mean()), accuracy(f, y)
