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

Rescoring after an attack on a few training points (:meth:`NTKLOO.rescore`, called by
:func:`~malleability.measure.measure`): the clean attribution carries its kernels
(:class:`CleanKernels`, ``Attribution.reuse``), and only the rows and columns of the changed
points are recomputed (:func:`~malleability.jacobian_ntk.updated_ntks`). The caller passes
the clean kernels explicitly, so a rescoring's result depends only on its inputs. Several
perturbed training sets (the audit's attack and its random control, on the same points) are
rescored together: the unchanged points' Jacobians are computed once for all.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .._validation import check_nonnegative
from ..influence import InfluenceResult, network_influence, ntk_influence
from ..jacobian_ntk import output_size, train_test_ntk, updated_ntks
from ..losses import as_targets_of, loss_for_targets
from ..models import TwoLayerNet
from ..settings import setting
from .base import Attribution, Estimator


@dataclass(frozen=True)
class CleanKernels:
    """Θ(x, x) (``kernel``) and Θ(x_test, x) (``cross``; ``kernel`` itself when the test
    points are x) of one model over ``parameters``, at the inputs they were computed on."""

    x: torch.Tensor
    x_test: torch.Tensor
    kernel: torch.Tensor
    cross: torch.Tensor
    parameters: tuple[str, ...] | None


def _same(a: torch.Tensor, b: torch.Tensor) -> bool:
    return a is b or (a.shape == b.shape and a.dtype == b.dtype and torch.equal(a, b))


def _names(parameters: Sequence[str] | None) -> tuple[str, ...] | None:
    if parameters is None:
        return None
    return (parameters,) if isinstance(parameters, str) else tuple(parameters)


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
        return self._from_kernels(model, kernel, cross, x_train, y_train, y_test)

    def _from_kernels(self, model: nn.Module, kernel: torch.Tensor, cross: torch.Tensor,
                      x_train: torch.Tensor, y_train: torch.Tensor, y_test: torch.Tensor
                      ) -> InfluenceResult:
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
        """The scores and A.9 report; on a module other than TwoLayerNet (whose closed-form
        kernel is cheap) also the kernels, for :meth:`rescore`."""
        if isinstance(model, TwoLayerNet):
            result = self.influence(model, x_train, y_train, x_test, y_test, parameters)
            return Attribution(result.scores, {"stability": result.stability})
        kernel, cross = train_test_ntk(model, x_train, x_test, parameters=parameters)
        result = self._from_kernels(model, kernel, cross, x_train, y_train, y_test)
        return Attribution(result.scores, {"stability": result.stability},
                           CleanKernels(x_train, x_test, kernel, cross, _names(parameters)))

    def rescore(self, models: Sequence[nn.Module], before: Attribution, x_old: torch.Tensor,
                xs_train: Sequence[torch.Tensor], y_train: torch.Tensor, x_test: torch.Tensor,
                y_test: torch.Tensor, *, seed: int = 0,
                parameters: Sequence[str] | None = None) -> list[Attribution]:
        """:meth:`attribute` on each training set of ``xs_train`` (e.g. one per attack), each
        differing from the clean inputs ``x_old`` in a few rows, with the weights of the one
        model of ``models``: the clean kernels (``before.reuse``, else computed here, so the
        result does not depend on whether the caller kept them) with the rows and columns of
        the changed points recomputed, for all of them in one pass
        (:func:`~malleability.jacobian_ntk.updated_ntks`), or computed afresh when over half
        the rows changed (then that is cheaper). Each result is :meth:`attribute`'s up to
        float64 summation order; a :class:`TwoLayerNet` (closed-form kernel) is scored
        afresh."""
        if len(models) != 1:
            raise ValueError(f"models: expected one model for ntk-loo's rescoring, got "
                             f"{len(models)}")
        (model,) = models
        if isinstance(model, TwoLayerNet):
            return [self.attribute(model, x_train, y_train, x_test, y_test,
                                   parameters=parameters) for x_train in xs_train]
        kept = before.reuse
        if not (isinstance(kept, CleanKernels) and _same(kept.x, x_old)):
            kept = self.attribute(model, x_old, y_train, x_test, y_test,
                                  parameters=parameters).reuse
        for x_train in xs_train:
            if x_train.shape != kept.x.shape or x_train.dtype != kept.x.dtype:
                raise ValueError(f"xs_train: expected the clean inputs' shape "
                                 f"{tuple(kept.x.shape)} and dtype, got "
                                 f"{tuple(x_train.shape)} {x_train.dtype}")
        if not _same(kept.x_test, x_test):
            raise ValueError("x_test: expected the test points of the clean attribution")
        if _names(parameters) != kept.parameters:
            raise ValueError(f"parameters: expected those of the clean attribution, "
                             f"{kept.parameters}, got {_names(parameters)}")
        n = kept.x.shape[0]
        changed = torch.zeros(n, dtype=torch.bool, device=kept.x.device)
        for x_train in xs_train:
            changed |= (x_train != kept.x).reshape(n, -1).any(1)
        changed = changed.nonzero().flatten()
        if 2 * changed.numel() > n:
            return [self.attribute(model, x_train, y_train, x_test, y_test, seed=seed,
                                   parameters=parameters) for x_train in xs_train]
        if changed.numel() == 0:
            kernels = [(kept.kernel, kept.cross)] * len(xs_train)
        elif kept.cross is kept.kernel:  # the test points are the clean training points
            kernels = updated_ntks(model, kept.kernel, kept.x, xs_train, changed,
                                   parameters=parameters)
        else:
            kernels = updated_ntks(model, kept.kernel, kept.x, xs_train, changed, x_test,
                                   kept.cross, parameters=parameters)
        out = []
        for x_train, (kernel, cross) in zip(xs_train, kernels, strict=True):
            result = self._from_kernels(model, kernel, cross, x_train, y_train, y_test)
            out.append(Attribution(result.scores, {"stability": result.stability}))
        return out
