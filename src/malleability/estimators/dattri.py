"""The field's estimators through dattri 0.3.0: influence functions, TRAK and TracIn.

- Influence functions ∇L_t · (H + δI)⁻¹ ∇L_i with the Hessian H inverted explicitly, by CG,
  LiSSA, Arnoldi, DataInf or EK-FAC (damping δ = ``damping``, 1e-3 by default);
- TRAK's projected-gradient score (projection seeded with ``seed``);
- TracIn at the given checkpoint: exact ∇L_t · ∇L_i (Grad-Dot, no projection).

The loss is the model's training loss (:func:`~malleability.losses.training_loss`):
cross-entropy on logits (C ≥ 2), the logistic loss on one score. dattri builds float32
tensors internally, so these estimators compute in float32; scores are returned as float64.
``seed`` also seeds the global RNG (restored afterwards) that LiSSA and Arnoldi draw from.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn

from .._validation import check_positive
from ..jacobian_ntk import select_parameters
from ..losses import as_labels, training_loss
from ..settings import setting
from .base import Estimator


@dataclass(frozen=True)
class DattriEstimator(Estimator):
    """One of dattri's attributors; subclasses name it (``attributor``) and its options."""

    randomized: ClassVar[bool] = False
    dtype: ClassVar[torch.dtype] = torch.float32
    attributor: ClassVar[str] = ""
    damping: float = setting(1e-3, "Damping δ of the Hessian inverse (influence functions).",
                             check_positive)

    def options(self, seed: int) -> dict[str, Any]:
        """Keyword arguments of the attributor."""
        return {"regularization": self.damping}

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        model = copy.deepcopy(model).eval()  # dattri may leave hooks behind
        y_train, y_test = as_labels(y_train), as_labels(y_test)
        try:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(seed)
                scores = self._attribute(model, x_train, y_train, x_test, y_test, parameters,
                                         seed).detach()
        except (RuntimeError, UnboundLocalError, TypeError, IndexError) as err:
            raise ValueError(f"estimator: {self.name} failed inside dattri "
                             f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"estimator: {self.name} returned non-finite scores "
                             "(dattri 0.3.0; see docs/audit.md)")
        return scores

    @staticmethod
    def _task(model: nn.Module, x_train: torch.Tensor):
        """dattri's task on ``model``'s training loss, and that loss (params, batch) → mean."""
        from dattri.task import AttributionTask
        from torch.func import functional_call

        sample_ndim = x_train.ndim - 1

        def loss_fn(params, data):
            x, y = data  # TRAK/TracIn pass one unbatched sample, the IF family batches
            if x.ndim == sample_ndim:
                x, y = x.unsqueeze(0), y.reshape(1)
            return training_loss(functional_call(model, params, (x,)), y).mean()

        return AttributionTask(loss_func=loss_fn, model=model,
                               checkpoints=model.state_dict()), loss_fn

    @staticmethod
    def _loaders(x_train, y_train, x_test, y_test):
        """One full batch each of the training and the test set."""
        from torch.utils.data import DataLoader, TensorDataset

        return (DataLoader(TensorDataset(x, y), batch_size=x.shape[0], shuffle=False)
                for x, y in ((x_train, y_train), (x_test, y_test)))

    def _attribute(self, model, x_train, y_train, x_test, y_test, parameters, seed):
        from dattri.algorithm import influence_function as dif
        task, _ = self._task(model, x_train)
        train, test = self._loaders(x_train, y_train, x_test, y_test)
        device = str(x_train.device)
        cls = getattr(dif, self.attributor)
        names = None if parameters is None else select_parameters(model, parameters)
        attributor = cls(task, layer_name=names, device=device, **self.options(seed))
        attributor.cache(train)
        return attributor.attribute(train, test).mean(1).to(torch.float64)


@dataclass(frozen=True)
class IFExplicit(DattriEstimator):
    """Influence function with the explicit Hessian (IFAttributorExplicit)."""

    name: ClassVar[str] = "if-explicit"
    attributor: ClassVar[str] = "IFAttributorExplicit"


@dataclass(frozen=True)
class IFCG(DattriEstimator):
    """Influence function by conjugate gradients, 10 iterations (IFAttributorCG)."""

    name: ClassVar[str] = "if-cg"
    attributor: ClassVar[str] = "IFAttributorCG"

    def options(self, seed: int) -> dict[str, Any]:
        return {"regularization": self.damping, "max_iter": 10}


@dataclass(frozen=True)
class IFLiSSA(DattriEstimator):
    """Influence function by LiSSA, recursion depth 100 (IFAttributorLiSSA); sampled."""

    name: ClassVar[str] = "if-lissa"
    randomized: ClassVar[bool] = True
    attributor: ClassVar[str] = "IFAttributorLiSSA"

    def options(self, seed: int) -> dict[str, Any]:
        return {"damping": self.damping, "recursion_depth": 100}


@dataclass(frozen=True)
class IFArnoldi(DattriEstimator):
    """Influence function on Arnoldi's top eigenspace (IFAttributorArnoldi); random start."""

    name: ClassVar[str] = "if-arnoldi"
    randomized: ClassVar[bool] = True
    attributor: ClassVar[str] = "IFAttributorArnoldi"

    def options(self, seed: int) -> dict[str, Any]:
        return {"regularization": self.damping, "seed": seed}


@dataclass(frozen=True)
class IFDataInf(DattriEstimator):
    """DataInf's closed-form layer-wise approximation (IFAttributorDataInf)."""

    name: ClassVar[str] = "if-datainf"
    attributor: ClassVar[str] = "IFAttributorDataInf"


@dataclass(frozen=True)
class IFEKFAC(DattriEstimator):
    """Influence function with the EK-FAC Hessian (IFAttributorEKFAC); ``parameters`` name
    modules."""

    name: ClassVar[str] = "if-ekfac"
    attributor: ClassVar[str] = "IFAttributorEKFAC"

    def _attribute(self, model, x_train, y_train, x_test, y_test, parameters, seed):
        from dattri.algorithm import influence_function as dif
        task, _ = self._task(model, x_train)
        train, test = self._loaders(x_train, y_train, x_test, y_test)
        attributor = dif.IFAttributorEKFAC(
            task, module_name=None if parameters is None else list(parameters),
            device=str(x_train.device), damping=self.damping)
        attributor.cache(train)
        return attributor.attribute(train, test).mean(1).to(torch.float64)


@dataclass(frozen=True)
class TRAK(DattriEstimator):
    """TRAK (TRAKAttributor) with dattri's default projector, seeded; randomized."""

    name: ClassVar[str] = "trak"
    randomized: ClassVar[bool] = True

    def _attribute(self, model, x_train, y_train, x_test, y_test, parameters, seed):
        from dattri.algorithm.trak import DEFAULT_PROJECTOR_KWARGS, TRAKAttributor
        task, loss_fn = self._task(model, x_train)
        train, test = self._loaders(x_train, y_train, x_test, y_test)
        device = str(x_train.device)

        def correct_probability(params, data):
            return torch.exp(-loss_fn(params, data))

        names = None if parameters is None else select_parameters(model, parameters)
        attributor = TRAKAttributor(task, correct_probability, layer_name=names, device=device)
        attributor.projector_kwargs = {**DEFAULT_PROJECTOR_KWARGS, "proj_seed": seed,
                                       "device": device}  # a copy: dattri's default stays
        attributor.cache(train)
        return attributor.attribute(test).mean(1).to(torch.float64)


@dataclass(frozen=True)
class TracIn(DattriEstimator):
    """TracIn at one checkpoint: exact gradient dot products (TracInAttributor, Grad-Dot)."""

    name: ClassVar[str] = "tracin"

    def _attribute(self, model, x_train, y_train, x_test, y_test, parameters, seed):
        from dattri.algorithm.tracin import TracInAttributor
        task, _ = self._task(model, x_train)
        train, test = self._loaders(x_train, y_train, x_test, y_test)
        names = None if parameters is None else select_parameters(model, parameters)
        attributor = TracInAttributor(task, torch.ones(1), normalized_grad=False,
                                      layer_name=names, device=str(x_train.device))
        attributor.projector_kwargs = None  # exact gradients, no random projection
        return attributor.attribute(train, test).mean(1).to(torch.float64)


#: dattri's estimators, in the order the audit lists them.
DATTRI_ESTIMATORS = (TRAK, TracIn, IFExplicit, IFCG, IFLiSSA, IFDataInf, IFEKFAC, IFArnoldi)
