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

Rescoring after an attack: the kernels of the last full computation are kept (one entry,
:class:`KernelMemo`); a call on the same model (same parameter tensors, unmodified), the same
test points and a training set that differs from the kept one in at most half of its rows S
computes only the rows of S (:func:`~malleability.jacobian_ntk.updated_ntk`), the same
kernels up to floating-point summation order.
"""

from __future__ import annotations

import threading
import weakref
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .._validation import check_nonnegative
from ..influence import InfluenceResult, network_influence, ntk_influence
from ..jacobian_ntk import output_size, train_test_ntk, updated_ntk
from ..losses import as_targets_of, loss_for_targets
from ..memory import working_memory
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
        kernel, cross = MEMO.kernels(model, x_train, x_test, parameters)
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


def _state(model: nn.Module) -> tuple:
    """What the kernel depends on besides the inputs: each parameter and buffer (identity,
    in-place version counter and sum, which also sees writes through ``.data``) and each
    submodule's training flag."""
    tensors = [t.detach() for t in (*model.parameters(), *model.buffers())]
    sums = torch.stack([t.sum(dtype=torch.float64) for t in tensors]).tolist() if tensors else []
    return (tuple((id(t), t._version) for t in (*model.parameters(), *model.buffers())),
            tuple(sums), tuple(m.training for m in model.modules()))


class KernelMemo:
    """The kernels Θ(X, X), Θ(X_t, X) of the last full computation, for rescoring after an
    attack on a few rows (module docstring). Kept only while K and K_t fit in the working
    memory (:func:`~malleability.memory.working_memory`)."""

    def __init__(self) -> None:
        self._entry: tuple | None = None
        self._lock = threading.Lock()

    def kernels(self, model: nn.Module, x: torch.Tensor, x_test: torch.Tensor,
                parameters: Sequence[str] | None) -> tuple[torch.Tensor, torch.Tensor]:
        """Θ(x, x) and Θ(x_test, x) of ``model`` restricted to ``parameters``."""
        key = (_state(model), None if parameters is None else tuple(parameters))
        with self._lock:
            entry = self._entry
        changed = self._changed_rows(entry, model, key, x, x_test)
        if changed is not None:
            _, _, x0, _, x_t0, _, kernel, cross = entry
            if changed.numel() == 0:
                return kernel, cross
            if cross is kernel:  # test points = the kept training points
                return updated_ntk(model, kernel, x0, x, changed, parameters=parameters)
            return updated_ntk(model, kernel, x0, x, changed, x_t0, cross,
                               parameters=parameters)
        kernel, cross = train_test_ntk(model, x, x_test, parameters=parameters)
        size = (kernel.numel() + (0 if cross is kernel else cross.numel())) * kernel.itemsize
        with self._lock:
            self._entry = ((weakref.ref(model), key, x, x._version, x_test, x_test._version,
                            kernel, cross) if size <= working_memory(kernel.device) else None)
        return kernel, cross

    @staticmethod
    def _changed_rows(entry: tuple | None, model: nn.Module, key: tuple, x: torch.Tensor,
                      x_test: torch.Tensor) -> torch.Tensor | None:
        """Indices of the rows where ``x`` differs from the kept training set, or None when
        the entry does not apply (another model, state, test set or shape; over half the
        rows changed)."""
        if entry is None:
            return None
        ref, kept_key, x0, v0, x_t0, vt0, _, _ = entry
        if ref() is not model or kept_key != key or x0._version != v0 or x_t0._version != vt0:
            return None
        same_shape = (x.shape == x0.shape and x.dtype == x0.dtype and x.device == x0.device
                      and x_test.shape == x_t0.shape and x_test.dtype == x_t0.dtype)
        if not same_shape or not (x_test is x_t0 or torch.equal(x_test, x_t0)):
            return None
        changed = (x != x0).reshape(x.shape[0], -1).any(1).nonzero().flatten()
        return changed if 2 * changed.numel() <= x.shape[0] else None


MEMO = KernelMemo()
