"""The influence-estimator protocol (docs/method.md §5): per-training-point scores from a model,
its training set, a test set and a seed.

Scores I_i = mean over test points t of I(i, t), positive when training point i helps the test
predictions (removing it raises the test loss), as an (n_train,) float64 tensor. Labels are
class indices (n,) or the package's one-hot / ±1 target rows (n, C); each estimator converts
them at its boundary (:func:`~malleability.losses.as_targets_of`,
:func:`~malleability.losses.as_labels`). Each estimator states whether its scores depend on
the seed (``randomized``) and the dtype it computes in (``dtype``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, ClassVar, Protocol, runtime_checkable

import torch
from torch import nn

from ..settings import Settings


@dataclass(frozen=True)
class Attribution:
    """Scores (n_train,) float64 and what the estimator reports beside them (e.g. NTK-LOO's
    A.9 stability report under ``"stability"``); ``reuse``: what the estimator's ``rescore``
    may take from these scores when a few training rows change (in memory only, never
    written; NTK-LOO's kernels, TRAK's features); None: the estimator recomputes it."""

    scores: torch.Tensor
    diagnostics: dict[str, Any] = field(default_factory=dict)
    reuse: Any = field(default=None, repr=False, compare=False)


@runtime_checkable
class InfluenceEstimator(Protocol):
    """An influence estimator with its settings; see the module docstring."""

    name: ClassVar[str]
    randomized: ClassVar[bool]
    dtype: ClassVar[torch.dtype]

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor: ...

    def attribute(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                  x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
                  parameters: Sequence[str] | None = None) -> Attribution: ...

    def check(self, model: nn.Module, x: torch.Tensor,
              parameters: Sequence[str] | None = None) -> None: ...


class Estimator(Settings):
    """Base of the registered estimators (frozen settings dataclasses): subclasses set
    ``name``, ``randomized`` and ``dtype`` and implement ``scores``; ``attribute`` adds no
    diagnostics unless overridden."""

    name: ClassVar[str]
    randomized: ClassVar[bool] = False
    dtype: ClassVar[torch.dtype] = torch.float64

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        raise NotImplementedError

    def check(self, model: nn.Module, x: torch.Tensor,
              parameters: Sequence[str] | None = None) -> None:
        """A one-line ValueError, before any computation, when this estimator cannot handle
        ``model`` on training inputs ``x`` (saying which estimator and why); none by default."""

    def attribute(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                  x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
                  parameters: Sequence[str] | None = None) -> Attribution:
        return Attribution(self.scores(model, x_train, y_train, x_test, y_test, seed=seed,
                                       parameters=parameters))
