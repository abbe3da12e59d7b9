"""NTK-LOO: exact leave-one-out influence of kernel ridge regression on the model's empirical
NTK (Definition 3.3, Appendix A.5.1; :func:`~malleability.influence.ntk_influence`).

Ridge convention, for the whole package: λ is absolute, (K + λI)⁻¹ with K = Θ(X, X) as
computed (the paper's Definition 3.3), default 1e-3. Targets: one-hot rows with cross-entropy
for C ≥ 2 outputs, one ±1 column with ½(f − y)² for one output (class indices are converted).
The kernel: :class:`~malleability.models.TwoLayerNet`'s closed-form empirical NTK of its
weights (:func:`~malleability.influence.network_influence`), any other module's traced
empirical NTK by Jacobian contraction (:func:`~malleability.jacobian_ntk.jacobian_ntk`,
restricted to ``parameters``), float64: Θ(X, X) and the cross kernel Θ(X_t, X) from one
pass over the Jacobians (:func:`~malleability.jacobian_ntk.train_test_ntk`), in blocks whose
memory is bounded by the free memory, never the n × C × P Jacobian.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .._validation import check_nonnegative
from ..influence import InfluenceResult, network_influence, ntk_influence
from ..jacobian_ntk import output_size, train_test_ntk
from ..losses import as_targets_of, loss_for_targets
from ..models import TwoLayerNet
from ..settings import setting
from .base import Attribution, Estimator


@dataclass(frozen=True)
class NTKLOO(Estimator):
    """Exact NTK leave-one-out influence; deterministic, float64."""

    name: ClassVar[str] = "ntk-loo"
    randomized: ClassVar[bool] = False
    dtype: ClassVar[torch.dtype] = torch.float64
    ridge: float = setting(1e-3, "Kernel-ridge λ of NTK-LOO, absolute (K + λI; paper: value "
                           "lost).", check_nonnegative)

    def influence(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                  x_test: torch.Tensor, y_test: torch.Tensor,
                  parameters: Sequence[str] | None = None) -> InfluenceResult:
        """The full leave-one-out result: influence matrix, scores, A.9 report."""
        if isinstance(model, TwoLayerNet):
            c = model.num_classes
            return network_influence(model, x_train, as_targets_of(y_train, c, torch.float64),
                                     x_test, as_targets_of(y_test, c, torch.float64),
                                     self.ridge)
        kernel, cross = train_test_ntk(model, x_train, x_test, parameters=parameters)
        classes = output_size(model, x_train[:1])
        y, y_t = (as_targets_of(t, classes, torch.float64) for t in (y_train, y_test))
        return ntk_influence(kernel, cross, y, y_t, self.ridge, loss_for_targets(y))

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        return self.influence(model, x_train, y_train, x_test, y_test, parameters).scores

    def attribute(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                  x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
                  parameters: Sequence[str] | None = None) -> Attribution:
        result = self.influence(model, x_train, y_train, x_test, y_test, parameters)
        return Attribution(result.scores, {"stability": result.stability})

