"""Influence estimators for any classifier: exact empirical-NTK leave-one-out, and the field's
methods through dattri (TRAK, TracIn, influence functions).

Every estimator returns per-training-point scores I_i = mean over test points t of I(i, t),
positive when training point i helps the test predictions (removing it raises the test loss):

- ``ntk-loo``: kernel ridge regression on the model's traced empirical NTK Θ (jacobian_ntk,
  float64) with λ = ``ridge`` · tr(Θ)/n, and its exact leave-one-out loss change
  (Definition 3.3; :func:`~malleability.influence.ntk_influence`): MSE on ±1 targets for one
  output, cross-entropy on one-hot targets for C ≥ 2.
- dattri 0.3.0 (model's own dtype): ∇L_t · H⁻¹ ∇L_i for the influence functions (explicit
  Hessian, CG, LiSSA, Arnoldi, DataInf, EK-FAC; damping 1e-3 each), TRAK's projected-gradient
  score, and TracIn at the given checkpoint (exact ∇L_t · ∇L_i, no projection). The loss is the
  model's training loss: cross-entropy on logits (C ≥ 2), the logistic loss on one score.
  dattri runs in float32 (it builds float32 tensors internally).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from enum import StrEnum

import torch
from torch import nn
from torch.nn import functional as F

from ._validation import check_positive, parse_enum
from .influence import ntk_influence
from .jacobian_ntk import jacobian_ntk, select_parameters


class Estimator(StrEnum):
    """Influence estimators by name (dattri's attributor in brackets)."""

    NTK_LOO = "ntk-loo"
    IF_EXPLICIT = "if-explicit"  # IFAttributorExplicit
    IF_CG = "if-cg"  # IFAttributorCG
    IF_LISSA = "if-lissa"  # IFAttributorLiSSA
    IF_ARNOLDI = "if-arnoldi"  # IFAttributorArnoldi
    IF_DATAINF = "if-datainf"  # IFAttributorDataInf
    IF_EKFAC = "if-ekfac"  # IFAttributorEKFAC
    TRAK = "trak"  # TRAKAttributor
    TRACIN = "tracin"  # TracInAttributor (Grad-Dot at one checkpoint)


def training_loss(logits: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """Per-example loss: cross-entropy for (n, C ≥ 2) logits and class indices y; the logistic
    loss log(1 + e^{−s f}) with s = 2y − 1 for one score per example ((n,) or (n, 1))."""
    if logits.ndim == 2 and logits.shape[1] >= 2:
        return F.cross_entropy(logits, y.long(), reduction="none")
    sign = 2.0 * y.to(logits.dtype) - 1.0
    return F.softplus(-sign * logits.reshape(-1))


def influence_scores(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    estimator: Estimator | str = Estimator.NTK_LOO,
    *,
    parameters: Sequence[str] | None = None,
    ridge: float = 1e-3,
    seed: int = 0,
) -> torch.Tensor:
    """Per-training-point influence scores (n_train,) of ``estimator`` on ``model``.

    ``y`` are class indices (or 0/1 for one output). ``parameters`` restricts the gradients to
    those parameters (names or prefixes; module names for EK-FAC). ``seed`` feeds the random
    parts (TRAK's projection, LiSSA's sampling, Arnoldi's start).
    """
    estimator = parse_enum(estimator, Estimator, "estimator")
    model = copy.deepcopy(model).eval()  # dattri may leave hooks behind; never touch the caller's
    if estimator is Estimator.NTK_LOO:
        return _ntk_loo(model, x_train, y_train, x_test, y_test, parameters,
                        check_positive(ridge, "ridge"))
    try:
        with torch.random.fork_rng(devices=[]):  # LiSSA and Arnoldi draw from the global RNG
            torch.manual_seed(seed)
            scores = _dattri_scores(estimator, model, x_train, y_train, x_test, y_test,
                                    parameters, seed).detach()
    except (RuntimeError, UnboundLocalError, TypeError, IndexError) as err:
        raise ValueError(f"estimator: {estimator.value} failed inside dattri "
                         f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
    if not bool(torch.isfinite(scores).all()):
        raise ValueError(f"estimator: {estimator.value} returned non-finite scores "
                         "(dattri 0.3.0; see docs/audit.md)")
    return scores


def _ntk_loo(model, x_train, y_train, x_test, y_test, parameters, ridge) -> torch.Tensor:
    n = x_train.shape[0]
    kernel = jacobian_ntk(model, torch.cat([x_train, x_test]), parameters=parameters)
    k, k_t = kernel[:n, :n], kernel[n:, :n]
    with torch.no_grad():
        classes = model(x_train[:1]).reshape(1, -1).shape[1]
    if classes == 1:
        targets = [2.0 * y.to(torch.float64)[:, None] - 1.0 for y in (y_train, y_test)]
        loss = "mse"
    else:
        targets = [F.one_hot(y.long(), classes).to(torch.float64) for y in (y_train, y_test)]
        loss = "ce"
    lam = ridge * float(torch.diagonal(k).mean())
    return ntk_influence(k, k_t, targets[0], targets[1], lam, loss).scores


def _dattri_scores(estimator, model, x_train, y_train, x_test, y_test, parameters, seed):
    from dattri.algorithm import influence_function as dif
    from dattri.algorithm.tracin import TracInAttributor
    from dattri.algorithm.trak import DEFAULT_PROJECTOR_KWARGS, TRAKAttributor
    from dattri.task import AttributionTask
    from torch.func import functional_call
    from torch.utils.data import DataLoader, TensorDataset

    sample_ndim = x_train.ndim - 1
    device = str(x_train.device)

    def batch(x, y):  # TRAK/TracIn pass one unbatched sample, the IF family batches
        return (x.unsqueeze(0), y.reshape(1)) if x.ndim == sample_ndim else (x, y)

    def loss_fn(params, data):
        x, y = batch(*data)
        return training_loss(functional_call(model, params, (x,)), y).mean()

    def correct_probability(params, data):
        return torch.exp(-loss_fn(params, data))

    n = x_train.shape[0]
    train = DataLoader(TensorDataset(x_train, y_train), batch_size=n, shuffle=False)
    test = DataLoader(TensorDataset(x_test, y_test), batch_size=x_test.shape[0], shuffle=False)
    task = AttributionTask(loss_func=loss_fn, model=model, checkpoints=model.state_dict())
    names = None if parameters is None else select_parameters(model, parameters)
    projector = {**DEFAULT_PROJECTOR_KWARGS, "proj_seed": seed, "device": device}
    if estimator is Estimator.TRAK:
        attributor = TRAKAttributor(task, correct_probability, layer_name=names, device=device)
        attributor.projector_kwargs = projector  # a copy: dattri's default dict stays as is
        attributor.cache(train)
        return attributor.attribute(test).mean(1).to(torch.float64)
    if estimator is Estimator.TRACIN:
        attributor = TracInAttributor(task, torch.ones(1), normalized_grad=False,
                                      layer_name=names, device=device)
        attributor.projector_kwargs = None  # exact gradients, no random projection
        return attributor.attribute(train, test).mean(1).to(torch.float64)
    if estimator is Estimator.IF_EKFAC:
        attributor = dif.IFAttributorEKFAC(task, module_name=None if parameters is None
                                           else list(parameters), device=device, damping=1e-3)
    else:
        cls, kwargs = {
            Estimator.IF_EXPLICIT: (dif.IFAttributorExplicit, {"regularization": 1e-3}),
            Estimator.IF_CG: (dif.IFAttributorCG, {"regularization": 1e-3, "max_iter": 10}),
            Estimator.IF_LISSA: (dif.IFAttributorLiSSA, {"damping": 1e-3,
                                                        "recursion_depth": 100}),
            Estimator.IF_ARNOLDI: (dif.IFAttributorArnoldi, {"regularization": 1e-3,
                                                            "seed": seed}),
            Estimator.IF_DATAINF: (dif.IFAttributorDataInf, {"regularization": 1e-3}),
        }[estimator]
        attributor = cls(task, layer_name=names, device=device, **kwargs)
    attributor.cache(train)
    return attributor.attribute(train, test).mean(1).to(torch.float64)
