"""What an audit of one estimator works on and what one cell computes (Appendix A.12): the
checked problem (:class:`AuditProblem`, :func:`prepare`: model, data and settings, every input
checked before any computation) and the three measurements at one seed (:func:`audit_seed`),
with the estimator's warnings. :mod:`~malleability.auditing` assembles them into a report,
:mod:`~malleability.audit_run` runs them as cells.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .attacks import RandomSign
from .audit_setup import (
    AuditSettings,
    check_in_bounds,
    check_parameters_used,
    check_sample_size,
    load_split,
    prepare_model,
)
from .controls import METRICS, metrics
from .estimator_checks import DAMPED, degenerate_settings, hessian_top_eigenvalue
from .estimators import Attribution, InfluenceEstimator, check_estimator, make_estimator
from .jacobian_ntk import output_size
from .measure import attribute, measure_each
from .model_outputs import check_labels

#: A randomized estimator's noise control compares its scores at seed s with those at
#: s + NOISE_PARTNER (no perturbation).
NOISE_PARTNER = 7919


def clean_attribution(models: Sequence[nn.Module], data: tuple, estimator: InfluenceEstimator,
                      settings: AuditSettings, seed: int, clean: Attribution | None = None
                      ) -> Attribution:
    """The clean attribution at ``seed`` that :func:`audit_seed` perturbs from: ``clean``, or
    computed (estimator seed: ``seed``, or the first seed for a deterministic estimator) if
    ``clean`` is None or holds scores only where the estimator's rescoring reuses more (one
    model and a ``rescore``: NTK-LOO's kernels, ``Attribution.reuse``), so the rescoring takes
    the same path whether ``clean`` came from an earlier cell in memory or from a file."""
    if clean is None or (clean.reuse is None and len(models) == 1
                         and hasattr(estimator, "rescore")):
        est_seed = seed if estimator.randomized else settings.seeds[0]
        clean = attribute(estimator, models, *data, est_seed, settings.parameters or None)
    return clean


def audit_seed(models: Sequence[nn.Module], data: tuple, estimator: InfluenceEstimator,
               settings: AuditSettings, seed: int, clean: Attribution | None = None
               ) -> dict[str, Any]:
    """The three measurements of :mod:`~malleability.controls` at one seed on ``models``
    (one network, or checkpoints: scores averaged): the adversarial attack and the random-sign
    control on the same top points from the same clean attribution
    (:func:`clean_attribution` of ``clean``), and for a randomized estimator its noise (clean
    scores at seed s and s + NOISE_PARTNER; None for a deterministic one). Also the clean
    scores, S and the scores of S after each perturbation, as lists (JSON-ready)."""
    est_seed = seed if estimator.randomized else settings.seeds[0]
    parameters = settings.parameters or None
    clean = clean_attribution(models, data, estimator, settings, seed, clean)
    common = {"fraction": settings.fraction, "seed": est_seed, "bounds": settings.bounds,
              "before": clean, "parameters": parameters}
    adversarial, random = measure_each(models, *data, estimator,
                                       [settings.attack_at(seed), settings.control_at(seed)],
                                       **common)
    noise = None
    if estimator.randomized:
        other = attribute(estimator, models, *data, est_seed + NOISE_PARTNER, parameters)
        noise = metrics(clean.scores, other.scores, settings.fraction)
    selected = adversarial.selected
    return {"adversarial": {k: getattr(adversarial, k) for k in METRICS},
            "random": {k: getattr(random, k) for k in METRICS}, "noise": noise,
            "estimator_seed": est_seed, "scores": clean.scores.tolist(),
            "selected": selected.tolist(),
            "adversarial_scores": adversarial.perturbed_scores[selected].tolist(),
            "random_scores": random.perturbed_scores[selected].tolist()}


def estimator_warnings(estimator: InfluenceEstimator, model: nn.Module, x: torch.Tensor,
                       y: torch.Tensor, n_checkpoints: int, settings: AuditSettings
                       ) -> tuple[list[str], float | None]:
    """:func:`~malleability.estimator_checks.degenerate_settings` for this audit, and the
    Hessian's |λ|max where the estimator is damped (else None), which an estimator with a
    ``check_hessian`` (LiSSA: its convergence) may refuse with a one-line error."""
    projection = None
    if estimator.name == "trak":
        projection = estimator.projection(int(x.shape[0]))  # the k TRAK projects to
    top = (hessian_top_eigenvalue(model, x, y, settings.parameters or None)
           if estimator.name in DAMPED else None)
    if top is not None and hasattr(estimator, "check_hessian"):
        estimator.check_hessian(top)
    ritz = ((estimator.proj_dim, estimator.iterations) if estimator.name == "if-arnoldi"
            else None)
    layers = (estimator.projected_dims(model, settings.parameters or None)
              if estimator.name == "logra" else None)
    return degenerate_settings(estimator.name, int(x.shape[0]), n_checkpoints, projection,
                               getattr(estimator, "damping", None), top, ritz, layers), top


@dataclass(frozen=True)
class AuditProblem:
    """What an audit of one estimator works on, checked: the settings, the estimator, the
    model (eval mode, a copy), its checkpoints (None: none given), the data (x, y, x_test,
    y_test) on the model's device and dtype, and the record of settings a report prints."""

    settings: AuditSettings
    estimator: InfluenceEstimator
    model: nn.Module
    checkpoints: list[nn.Module] | None
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    record: dict[str, Any]

    def seeds_to_score(self) -> tuple[int, ...]:
        """The estimator seeds with distinct clean scores: all for a randomized estimator,
        the first for a deterministic one."""
        return self.settings.seeds if self.estimator.randomized else self.settings.seeds[:1]


def prepare(model: nn.Module, x_train: Any, y_train: Any = None, x_test: Any = None,
            y_test: Any = None, *, estimator: str | InfluenceEstimator = "ntk-loo",
            checkpoints: Sequence[nn.Module | Mapping[str, torch.Tensor]] | None = None,
            settings: AuditSettings | None = None, perturb: str | None = None,
            **options: Any) -> AuditProblem:
    """Check and load an audit's inputs (see :func:`audit`) before any computation; the
    model, inputs and settings as the audit runs them (:func:`prepare_model`)."""
    settings = (settings or AuditSettings()).replace(**options)
    check_estimator(estimator, "estimator")
    est = make_estimator(estimator, ridge=settings.ridge, damping=settings.damping)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    x, y = load_split(x_train, y_train, "x_train")
    xt, yt = load_split(x_test if x_test is not None else x_train, y_test, "x_test")
    x, xt = (a.to(device, dtype) if a.is_floating_point() else a.to(device) for a in (x, xt))
    y, yt = y.to(device), yt.to(device)
    asked, ready = settings, prepare_model(model, x, xt, checkpoints, settings, perturb)
    model, x, xt, settings = ready.model, ready.x, ready.x_test, ready.settings
    check_in_bounds(x, settings.bounds, "x_train")
    check_in_bounds(xt, settings.bounds, "x_test")
    check_sample_size(x.shape[0], settings.fraction)
    est.check(model, x, settings.parameters or None)
    classes = output_size(model, x)
    if settings.parameters:
        check_parameters_used(model, x, settings.parameters)
    check_labels(y, classes, "y_train")
    check_labels(yt, classes, "y_test")
    models = ready.checkpoints or None
    record = {"estimator": {"estimator": est.name, **est.to_dict()}, **asked.to_dict(),
              "alpha": settings.step(), "bounds": list(settings.bounds),
              "n_train": int(x.shape[0]), "n_test": int(xt.shape[0]), "outputs": classes,
              "perturb": perturb,
              "control": {"attack": RandomSign.name, "eps": settings.eps},
              "noise_partner": NOISE_PARTNER}
    return AuditProblem(settings, est, model, models, (x, y, xt, yt), record)
