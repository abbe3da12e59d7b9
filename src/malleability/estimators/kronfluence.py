"""kronfluence's K-FAC and EK-FAC influence functions (Grosse et al. 2023) as estimators:
I_i = mean_t ∇L_t · (G + δI)⁻¹ ∇L_i, G the Fisher's Kronecker-factored approximation over
the tracked ``nn.Linear`` and ``nn.Conv2d`` modules (:mod:`~malleability.kronfluence_adapter`,
float64). They handle token models (3-d activations), where dattri's EK-FAC fails.

``parameters`` (parameter names or prefixes, as for every estimator) become module names:
a tracked module is kept when one of its own parameters is selected
(:func:`~malleability.jacobian_ntk.select_parameters`); e.g. ``"classifier"`` keeps the
module ``classifier``, ``"encoder.layer.0"`` every Linear inside it. Selecting only
parameters outside tracked modules (a LayerNorm, an embedding) is a one-line error.
The Fisher is the true one, with labels drawn from the model at ``seed`` (``randomized``).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn

from .._validation import check_positive, check_positive_int
from ..jacobian_ntk import select_parameters
from ..losses import as_labels
from ..settings import setting
from .base import Estimator


def tracked_modules_of(model: nn.Module, parameters: Sequence[str] | None,
                       estimator: str, types: tuple[type, ...] = (nn.Linear, nn.Conv2d)
                       ) -> list[str] | None:
    """The names of the modules of ``types`` (default ``nn.Linear``/``nn.Conv2d``) owning a
    selected parameter (None: all of them, kronfluence's default)."""
    if parameters is None:
        return None
    chosen = set(select_parameters(model, parameters))
    names = [name for name, module in model.named_modules()
             if isinstance(module, types)
             and any((f"{name}.{k}" if name else k) in chosen
                     for k, _ in module.named_parameters(recurse=False))]
    if not names:
        kinds = " and ".join(f"nn.{t.__name__}" for t in types)
        raise ValueError(f"parameters: {estimator} tracks {kinds} modules, and "
                         f"{', '.join(parameters)} selects parameters of none")
    return names


@dataclass(frozen=True)
class KronfluenceEstimator(Estimator):
    """One of kronfluence's strategies (``strategy``), float64, seeded Fisher labels."""

    randomized: ClassVar[bool] = True
    dtype: ClassVar[torch.dtype] = torch.float64
    strategy: ClassVar[str] = ""
    damping: float = setting(1e-3, "Damping δ added to the Fisher's eigenvalues (absolute).",
                             check_positive)
    batch_size: int = setting(128, "Examples whose per-example gradients are held at once "
                              "(memory only).", check_positive_int)

    def check(self, model: nn.Module, x: torch.Tensor,
              parameters: Sequence[str] | None = None) -> None:
        """A one-line error, before any computation, for a model kronfluence cannot track."""
        from ..kronfluence_adapter import tracked_modules
        try:
            tracked_modules(model, tracked_modules_of(model, parameters, self.name))
        except ValueError as err:
            raise ValueError(f"estimator: {self.name} cannot audit {type(model).__name__} "
                             f"({err})") from None

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        from ..kronfluence_adapter import kronfluence_scores
        return kronfluence_scores(
            model, x_train, as_labels(y_train), x_test, as_labels(y_test),
            strategy=self.strategy, modules=tracked_modules_of(model, parameters, self.name),
            damping=self.damping, batch_size=self.batch_size, seed=seed)


@dataclass(frozen=True)
class EKFAC(KronfluenceEstimator):
    """kronfluence's EK-FAC: K-FAC's eigenbasis with the Fisher's exact diagonal in it."""

    name: ClassVar[str] = "ekfac"
    strategy: ClassVar[str] = "ekfac"


@dataclass(frozen=True)
class KFAC(KronfluenceEstimator):
    """kronfluence's K-FAC: G = A ⊗ S per tracked module."""

    name: ClassVar[str] = "kfac"
    strategy: ClassVar[str] = "kfac"


#: kronfluence's estimators, in the order the audit lists them.
KRONFLUENCE_ESTIMATORS = (EKFAC, KFAC)
