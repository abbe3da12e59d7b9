"""DataInf (Kwon et al. 2024, eq. 5): dattri 0.3.0's closed form (IFAttributorDataInf) on the
package's batched per-example gradients, in bounded memory.

Per layer l (the parameters of one module: consecutive names sharing their prefix, as dattri
groups them), with g_i,l the training gradients over the selected ``parameters`` and λ the
damping, the inverse of the layer's damped empirical Fisher is replaced by the mean of the
per-example Sherman–Morrison inverses:

    q_l(v) = (1/n) Σ_i (v_l − c_i,l g_i,l) / λ,   c_i,l = (v_l · g_i,l) / (λ + ‖g_i,l‖²),
    I(i, t) = Σ_l g_i,l · q_l(∇L_t).

q_l is linear in v, so the mean over test points t is I_i = Σ_l g_i,l · q_l(v̄) with v̄ the
mean test gradient. Two passes over the training set, ``chunk`` rows at a time
(:func:`~.gradients.per_example_gradients`): the first sums c_i,l g_i,l, the second takes the
dot products. Memory O(chunk · P) (dattri's holds the n × P gradients twice and, in its
transform, 50 × 50 × P_l per layer). Gradients in the model's dtype, sums in float64;
deterministic.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import grad

from .._validation import check_positive
from ..losses import as_labels
from ..settings import setting
from .gradients import PerExampleEstimator, mean_loss, per_example_gradients, trainable


def module_layers(names: Sequence[str]) -> list[list[str]]:
    """Parameter ``names`` grouped into layers: consecutive names whose module prefix (the
    name without its last component) is the same (dattri's param_layer_map)."""
    layers: list[list[str]] = []
    for name in names:
        if layers and layers[-1][0].rpartition(".")[0] == name.rpartition(".")[0]:
            layers[-1].append(name)
        else:
            layers.append([name])
    return layers


def _by_layer(g: dict[str, torch.Tensor], layer: list[str], rows: int) -> torch.Tensor:
    return torch.cat([g[k].reshape(rows, -1) for k in layer], 1).to(torch.float64)


@dataclass(frozen=True)
class IFDataInf(PerExampleEstimator):
    """DataInf's closed-form layer-wise inverse (module docstring)."""

    name: ClassVar[str] = "if-datainf"
    randomized: ClassVar[bool] = False
    dtype: ClassVar[torch.dtype] = torch.float32  # the gradients (the model's); sums float64
    damping: float = setting(1e-3, "Damping λ of each layer's Fisher inverse.", check_positive)

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        params = trainable(model, parameters)
        layers = module_layers(list(params))
        y_train, y_test = as_labels(y_train), as_labels(y_test)
        v = grad(lambda p: mean_loss(model, p, x_test, y_test))(params)
        v = [_by_layer(v, layer, 1)[0] for layer in layers]
        lam, n = self.damping, x_train.shape[0]
        sums = [torch.zeros_like(vl) for vl in v]
        for rows, g in per_example_gradients(model, params, x_train, y_train, self.chunk):
            for layer, vl, s in zip(layers, v, sums, strict=True):
                gl = _by_layer(g, layer, len(rows))
                s += ((gl @ vl) / (lam + (gl * gl).sum(1))) @ gl
        q = [(vl - s / n) / lam for vl, s in zip(v, sums, strict=True)]
        out = []
        for rows, g in per_example_gradients(model, params, x_train, y_train, self.chunk):
            out.append(sum(_by_layer(g, layer, len(rows)) @ ql
                           for layer, ql in zip(layers, q, strict=True)))
        scores = torch.cat(out).detach()
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("estimator: if-datainf returned non-finite scores (a gradient "
                             "is not finite)")
        return scores
