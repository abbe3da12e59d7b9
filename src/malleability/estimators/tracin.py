"""TracIn at one checkpoint (Pruthi et al. 2020), Grad-Dot, exact gradients:

    I_i = mean over test points t of ∇L_t · ∇L_i = ∇L_i · ḡ,   ḡ = ∇ mean_t L_t,

with L the training loss (:func:`~malleability.losses.training_loss`) and the gradients over
the selected ``parameters`` (all by default). ḡ is one backward pass; the per-example
gradients ∇L_i come from torch.func (``vmap`` of ``grad``), ``chunk`` examples at a time, so
memory is O(chunk · P) and no n × P matrix is held. Computed in the model's dtype, returned
as float64; deterministic. (Forward-mode AD would give all ∇L_i · ḡ in one pass, but
PyTorch's CPU flash attention has no forward derivative.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import functional_call, grad, vmap

from .._validation import check_positive_int
from ..jacobian_ntk import select_parameters
from ..losses import as_labels, training_loss
from ..settings import setting
from .base import Estimator


@dataclass(frozen=True)
class TracIn(Estimator):
    """TracIn at one checkpoint: per-example gradients dotted with the mean test gradient."""

    name: ClassVar[str] = "tracin"
    randomized: ClassVar[bool] = False
    dtype: ClassVar[torch.dtype] = torch.float32  # the model's own (float32 models)
    chunk: int = setting(256, "Training examples whose per-example gradients are held at "
                         "once (memory only).", check_positive_int)

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        names = select_parameters(model, parameters)
        params = {k: v.detach() for k, v in model.named_parameters() if k in names}
        y_train, y_test = as_labels(y_train), as_labels(y_test)

        def mean_loss(p: dict, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
            return training_loss(functional_call(model, p, (x,)), y).mean()

        test_grad = grad(mean_loss)(params, x_test, y_test)
        per_example = vmap(grad(lambda p, x, y: mean_loss(p, x[None], y[None])),
                           in_dims=(None, 0, 0))
        out = []
        for rows in torch.arange(x_train.shape[0], device=x_train.device).split(self.chunk):
            g = per_example(params, x_train[rows], y_train[rows])
            out.append(sum(g[k].reshape(len(rows), -1) @ test_grad[k].reshape(-1)
                           for k in params))
        return torch.cat(out).detach().to(torch.float64)
