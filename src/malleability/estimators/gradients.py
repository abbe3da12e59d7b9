"""Per-example gradients of the training loss, batched with torch.func (``vmap`` of ``grad``)
``chunk`` examples at a time, so memory is O(chunk · P) and no n × P matrix is held: the
dot-product estimators' common first step (TracIn, TRAK, DataInf)."""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .._validation import check_positive_int
from ..jacobian_ntk import select_parameters
from ..losses import training_loss
from ..settings import setting
from .base import Estimator


@dataclass(frozen=True)
class PerExampleEstimator(Estimator):
    """An estimator on per-example gradients, ``chunk`` rows at a time."""

    chunk: int = setting(256, "Training examples whose per-example gradients are held at "
                         "once (memory only).", check_positive_int)


def trainable(model: nn.Module, parameters: Sequence[str] | None) -> dict[str, torch.Tensor]:
    """The selected ``parameters`` (all trainable ones by default), detached, by name."""
    names = select_parameters(model, parameters)
    return {k: v.detach() for k, v in model.named_parameters() if k in names}


def mean_loss(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
              y: torch.Tensor) -> torch.Tensor:
    """mean_i L(f(x_i; params), y_i) with L the training loss (class-index labels ``y``)."""
    return training_loss(functional_call(model, params, (x,)), y).mean()


def per_example_gradients(model: nn.Module, params: dict[str, torch.Tensor], x: torch.Tensor,
                          y: torch.Tensor, chunk: int
                          ) -> Iterator[tuple[torch.Tensor, dict[str, torch.Tensor]]]:
    """(rows, {name: ∇_name L(x_i, y_i) for i in rows, shape (len(rows), *param.shape)}) for
    consecutive blocks of ``chunk`` rows: a deterministic function of (``x``, ``chunk``)."""
    one = vmap(grad(lambda p, xi, yi: mean_loss(model, p, xi[None], yi[None])),
               in_dims=(None, 0, 0))
    for rows in torch.arange(x.shape[0], device=x.device).split(chunk):
        yield rows, one(params, x[rows], y[rows])


def flat(grads: dict[str, torch.Tensor], rows: int) -> torch.Tensor:
    """A block of per-example gradients as one (rows, P) matrix, parameters in order."""
    return torch.cat([g.reshape(rows, -1) for g in grads.values()], 1)
