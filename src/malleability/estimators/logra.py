"""LoGra (Choe et al. 2024, arXiv 2405.13954) through dattri 0.3.0's ``LoGraAttributor``:
the influence function on low-rank projected gradients, one block per ``nn.Linear`` layer l,

    I_i = mean over test points t of Σ_l ĝ_{t,l} · (F_l + λ_l I)⁻¹ ĝ_{i,l},

with ĝ_{i,l} = P_l,out G_{i,l} P_l,inᵀ (flattened) the projection of the per-example gradient
G_{i,l} = Σ_tokens δ aᵀ of the training loss in the layer's weights and bias (Gaussian
factors of √proj_dim rows each, seeded with ``seed``: ``randomized``), F_l = mean_i
ĝ_{i,l} ĝ_{i,l}ᵀ the projected empirical Fisher, and λ_l = ``damping`` · tr(F_l)/dim F_l:
dattri's damping is relative to each block's mean eigenvalue, unlike the absolute δ of the
other influence functions. I_i > 0 when point i helps (the convention of ``estimators``).

dattri's batch format, and how it is met:

- its set-up runs the model on ``batch[0][0]``, the first example of the first batch, as a
  batch: the examples carry a leading axis of length 1, which :class:`_Examples` folds into
  the batch axis;
- its test gradients are ``cross_entropy(model(x), y)`` and it rescales every gradient by the
  batch size (per-example gradients of a loss averaged over the batch): the training loss is
  averaged too, and a one-output model's score z is given as the logits (0, z), whose
  cross-entropy is the logistic loss of ``losses.training_loss``;
- its metadata goes to ``cache_dir`` (else the working directory): a temporary folder here.

dattri computes in float32 (``torch.compile`` of its compressor needs a C compiler on CPU);
scores are returned as float64.
"""

from __future__ import annotations

import math
import tempfile
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .._validation import check_positive, check_positive_int
from ..losses import training_loss
from ..settings import setting
from .dattri import DattriEstimator
from .kronfluence import tracked_modules_of


def check_square(value: Any, name: str) -> int:
    """A positive perfect square (LoGra's projection is the Kronecker product of two
    √proj_dim-row factors)."""
    value = check_positive_int(value, name)
    if math.isqrt(value) ** 2 != value:
        raise ValueError(f"{name}: expected a perfect square (k² for two factors of k rows), "
                         f"got {value}")
    return value


class _Examples(nn.Module):
    """``model`` on examples of shape ``shape`` with any leading axes folded into the batch
    (dattri's set-up passes one example with a leading axis of 1); one score z becomes the
    logits (0, z)."""

    def __init__(self, model: nn.Module, shape: tuple[int, ...]):
        super().__init__()
        self.model, self.shape = model, shape

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.model(x.reshape(-1, *self.shape))
        return torch.stack([torch.zeros_like(out), out], -1) if out.ndim == 1 else out


@dataclass(frozen=True)
class LoGra(DattriEstimator):
    """LoGra with dattri's factorised Gaussian projection (``LoGraAttributor``), seeded."""

    name: ClassVar[str] = "logra"
    randomized: ClassVar[bool] = True
    damping: float = setting(1e-3, "Damping of each layer's projected Fisher, relative to its "
                             "mean eigenvalue (dattri's LoGra convention).", check_positive)
    proj_dim: int = setting(4096, "Projected dimension per layer, a perfect square k² (dattri's "
                            "4096: k = 64 rows per factor).", check_square)

    def check(self, model: nn.Module, x: torch.Tensor,
              parameters: Sequence[str] | None = None) -> None:
        """A one-line error, before any computation, for a model without ``nn.Linear``."""
        if not any(isinstance(m, nn.Linear) for m in model.modules()):
            raise ValueError(f"estimator: logra cannot audit {type(model).__name__} (dattri's "
                             "LoGra projects the gradients of nn.Linear modules, and it has "
                             "none)")
        tracked_modules_of(model, parameters, self.name, (nn.Linear,))

    def projected_dims(self, model: nn.Module,
                       parameters: Sequence[str] | None = None) -> dict[str, int]:
        """Per tracked ``nn.Linear`` (all when ``parameters`` is None), the dimension its
        gradients span after the projection: min(k, out)·min(k, in + bias), k = √proj_dim
        (the rank of P_out G P_inᵀ's space; k² only when k ≤ both sides)."""
        k = math.isqrt(self.proj_dim)
        layers = tracked_modules_of(model, parameters, self.name, (nn.Linear,))
        return {name: min(k, m.out_features) * min(k, m.in_features + (m.bias is not None))
                for name, m in model.named_modules() if isinstance(m, nn.Linear)
                and (layers is None or name in layers)}

    def _attribute(self, model, x_train, y_train, x_test, y_test, parameters, seed):
        from dattri.algorithm import LoGraAttributor
        from dattri.task import AttributionTask
        from torch.utils.data import DataLoader, TensorDataset

        wrapped = _Examples(model, tuple(x_train.shape[1:]))

        def loss(module: nn.Module, batch: Any, device: str) -> torch.Tensor:
            xb, yb = batch
            return training_loss(module(xb.to(device)), yb.to(device)).mean()

        task = AttributionTask(loss_func=loss, model=wrapped, checkpoints=wrapped.state_dict())
        layers = tracked_modules_of(model, parameters, self.name, (nn.Linear,))
        train, test = (DataLoader(TensorDataset(x[:, None], y), batch_size=x.shape[0])
                       for x, y in ((x_train, y_train), (x_test, y_test)))
        with tempfile.TemporaryDirectory(prefix="logra-") as folder:
            attributor = LoGraAttributor(
                task, layer_names=None if layers is None else [f"model.{n}" for n in layers],
                damping=self.damping, device=str(x_train.device), proj_dim=self.proj_dim,
                offload="none", cache_dir=folder)
            attributor.sparsifier_kwargs = {**attributor.sparsifier_kwargs, "proj_seed": seed}
            attributor.cache(train)
            return attributor.attribute(train, test).mean(1).to(torch.float64)
