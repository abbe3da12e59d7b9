"""TracIn at one checkpoint (Pruthi et al. 2020), Grad-Dot, exact gradients:

    I_i = mean over test points t of ∇L_t · ∇L_i = ∇L_i · ḡ,   ḡ = ∇ mean_t L_t,

with L the training loss (:func:`~malleability.losses.training_loss`) and the gradients over
the selected ``parameters`` (all by default). ḡ is one backward pass; the per-example
gradients ∇L_i come from torch.func, ``chunk`` examples at a time
(:func:`~.gradients.per_example_gradients`), so memory is O(chunk · P). Computed in the
model's dtype, returned as float64; deterministic. (Forward-mode AD would give all
∇L_i · ḡ in one pass, but PyTorch's CPU flash attention has no forward derivative.)
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import grad

from ..losses import as_labels
from .gradients import PerExampleEstimator, mean_loss, per_example_gradients, trainable


@dataclass(frozen=True)
class TracIn(PerExampleEstimator):
    """TracIn at one checkpoint: per-example gradients dotted with the mean test gradient."""

    name: ClassVar[str] = "tracin"
    randomized: ClassVar[bool] = False
    dtype: ClassVar[torch.dtype] = torch.float32  # the model's own (float32 models)

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        params = trainable(model, parameters)
        y_train, y_test = as_labels(y_train), as_labels(y_test)
        test_grad = grad(lambda p: mean_loss(model, p, x_test, y_test))(params)
        out = []
        for rows, g in per_example_gradients(model, params, x_train, y_train, self.chunk):
            out.append(sum(g[k].reshape(len(rows), -1) @ test_grad[k].reshape(-1)
                           for k in params))
        return torch.cat(out).detach().to(torch.float64)
