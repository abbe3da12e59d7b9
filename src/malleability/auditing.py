"""Audit a user's own classifier: the practitioner's steps of Appendix A.12.

1. κ of the representation entering a layer (default: the model input), its rank, κ³ and the
   width thresholds κ⁶·n log n (MLP-Attn) and κ²·n log n (2L-ReLU) (§7 of SPEC). Token inputs
   (n × T × d) get two Grams: per example (rows = flattened examples, n × T·d) and per token
   (rows = tokens, n·T × d).
2. Influence malleability (Definition 3.4) of an estimator's scores, by
   :func:`~malleability.measure.measure`: attack the top ``fraction`` of training points
   inside ``bounds`` (same weights), recompute the scores, and report the flip rate,
   Spearman ρ and top-K overlap. 2b: with several checkpoints, the scores at each, their
   pairwise agreement, and the ensembled (mean) scores with their own flip rate under an
   attack on the checkpoints' mean loss.

Each metric is measured against its controls (:mod:`~malleability.controls`): the
estimator's noise (two estimator seeds, no perturbation; none for a deterministic estimator)
and random ±ε signs on the same top points; the excess of the attack over them, paired by
seed, decides the verdict. Beside it: rank stability across seeds and warnings for degenerate
estimator settings (:mod:`~malleability.estimator_checks`).

Each metric is an :class:`~malleability.intervals.Estimate` over ``seeds`` (the attack's
start, the control's signs and, for a randomized estimator, its randomness); a deterministic
estimator's clean scores are computed once, at the first seed.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
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
    representation,  # noqa: F401 (step 1, re-exported)
    spectral_step,  # noqa: F401
)
from .controls import METRICS, NOISELESS, against_controls, metrics, summary_verdict
from .estimator_checks import DAMPED, degenerate_settings, hessian_top_eigenvalue
from .estimators import Attribution, InfluenceEstimator, check_estimator, make_estimator
from .intervals import CI_METHOD, Estimate
from .jacobian_ntk import output_size
from .jsonsafe import dumps_strict
from .measure import attribute, measure
from .metrics import spearman, top_k_overlap
from .model_outputs import check_labels


def estimate_dict(value: Estimate) -> dict[str, Any]:
    """An Estimate as JSON: mean, per-seed values, the 95 % interval (None with too few
    seeds) and how it was computed."""
    interval = value.interval
    return {"mean": float(value), "low": None if interval is None else interval[0],
            "high": None if interval is None else interval[1], "values": list(value.values),
            "seeds": list(value.seeds), "interval": CI_METHOD}


@dataclass(frozen=True)
class AuditReport:
    """The audit of one model with one estimator; ``to_dict`` gives plain values (estimates
    as dicts), ``to_json`` strict JSON (:mod:`~malleability.jsonsafe`).

    ``flip_rate``, ``spearman`` and ``top_k_overlap`` are the adversarial values; ``controls``
    holds the estimator-noise and random-perturbation values of the same metrics
    (:mod:`~malleability.controls`), ``excess`` the adversarial excess over them with a
    ``verdicts`` entry per metric, and ``verdict`` the estimator's. ``diagnostics``: rank
    stability across seeds, warnings for degenerate settings, the Hessian's |λ|max (damped
    estimators)."""

    estimator: str
    kappa: float  # effective κ of the per-example Gram of the audited representation
    rank: int
    kappa_cubed: float
    width_threshold: dict[str, float]  # "mlp_attention": κ⁶ n log n, "relu": κ² n log n
    representation: dict[str, Any]  # layer, shape, and each Gram's figures
    flip_rate: Estimate
    spearman: Estimate
    top_k_overlap: Estimate
    checkpoint_agreement: dict[str, Any] | None
    settings: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, dict[str, float]] = field(default_factory=dict)
    excess: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    verdict: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def plain(value: Any) -> Any:
            if isinstance(value, Estimate):
                return estimate_dict(value)
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            return value

        return plain({
            "estimator": self.estimator, "verdict": self.verdict, "verdicts": self.verdicts,
            "kappa": self.kappa, "rank": self.rank,
            "kappa_cubed": self.kappa_cubed, "width_threshold": self.width_threshold,
            "representation": self.representation, "flip_rate": self.flip_rate,
            "spearman": self.spearman, "top_k_overlap": self.top_k_overlap,
            "controls": self.controls, "excess": self.excess,
            "diagnostics": self.diagnostics,
            "checkpoint_agreement": self.checkpoint_agreement, "settings": self.settings})

    def to_json(self) -> str:
        return dumps_strict(self.to_dict(), indent=2)


#: A randomized estimator's noise control compares its scores at seed s with those at
#: s + NOISE_PARTNER (no perturbation).
NOISE_PARTNER = 7919


def audit_seed(models: Sequence[nn.Module], data: tuple, estimator: InfluenceEstimator,
               settings: AuditSettings, seed: int, clean: Attribution | None = None
               ) -> dict[str, Any]:
    """The three measurements of :mod:`~malleability.controls` at one seed on ``models``
    (one network, or checkpoints: scores averaged): the adversarial attack and the random-sign
    control on the same top points from the same clean scores (``clean``, computed if None),
    and for a randomized estimator its noise (clean scores at seed s and s + NOISE_PARTNER; None
    for a deterministic one). Also the clean scores, S and the scores of S after each
    perturbation, as lists (JSON-ready)."""
    est_seed = seed if estimator.randomized else settings.seeds[0]
    parameters = settings.parameters or None
    if clean is None:
        clean = attribute(estimator, models, *data, est_seed, parameters)
    common = {"fraction": settings.fraction, "seed": est_seed, "bounds": settings.bounds,
              "before": clean, "parameters": parameters}
    adversarial = measure(models, *data, estimator, settings.attack_at(seed), **common)
    random = measure(models, *data, estimator, settings.control_at(seed), **common)
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


def assemble(per_seed: Mapping[int, Mapping[str, Any]], margin: float) -> dict[str, Any]:
    """Per-seed results of :func:`audit_seed` as Estimates over the seeds: the adversarial
    metrics, the controls (a deterministic estimator's noise: :data:`NOISELESS`, exact), the
    excess with its verdict per metric, the estimator's verdict, and its rank stability
    (Spearman ρ between two seeds' clean scores: the noise control's ρ)."""
    seeds = list(per_seed)

    def over_seeds(kind: str) -> dict[str, Any] | None:
        if any(per_seed[s][kind] is None for s in seeds):
            return None
        return {m: Estimate([per_seed[s][kind][m] for s in seeds], seeds) for m in METRICS}

    values = {"adversarial": over_seeds("adversarial"), "random": over_seeds("random"),
              "noise": over_seeds("noise") or dict(NOISELESS)}
    judged = against_controls(values, margin)
    verdicts = {m: judged[m]["verdict"] for m in METRICS}
    return {**values, "excess": {m: judged[m]["excess"] for m in METRICS}, "verdicts": verdicts,
            "verdict": summary_verdict(verdicts), "rank_stability": values["noise"]["spearman"]}


def agreement_matrices(scores: Sequence[torch.Tensor], fraction: float) -> dict[str, Any]:
    """Pairwise Spearman ρ and top-K overlap between checkpoints' scores, and their means
    over the pairs (None with one checkpoint)."""
    k = len(scores)
    rho = [[spearman(scores[i], scores[j]) for j in range(k)] for i in range(k)]
    overlap = [[top_k_overlap(scores[i], scores[j], fraction) for j in range(k)]
               for i in range(k)]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    return {"n_checkpoints": k, "spearman": rho, "top_k_overlap": overlap,
            "mean_pairwise_spearman": (float(np.mean([rho[i][j] for i, j in pairs]))
                                       if pairs else None),
            "mean_pairwise_top_k_overlap": (float(np.mean([overlap[i][j] for i, j in pairs]))
                                            if pairs else None)}


def estimator_warnings(estimator: InfluenceEstimator, model: nn.Module, x: torch.Tensor,
                       y: torch.Tensor, n_checkpoints: int, settings: AuditSettings
                       ) -> tuple[list[str], float | None]:
    """:func:`~malleability.estimator_checks.degenerate_settings` for this audit, and the
    Hessian's |λ|max where the estimator is damped (else None)."""
    projection = None
    if estimator.name == "trak":
        from dattri.algorithm.trak import DEFAULT_PROJECTOR_KWARGS

        projection = int(DEFAULT_PROJECTOR_KWARGS["proj_dim"])
    top = (hessian_top_eigenvalue(model, x, y, settings.parameters or None)
           if estimator.name in DAMPED else None)
    return degenerate_settings(estimator.name, int(x.shape[0]), n_checkpoints, projection,
                               getattr(estimator, "damping", None), top), top


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


def audit(
    model: nn.Module,
    x_train: Any,
    y_train: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    *,
    estimator: str | InfluenceEstimator = "ntk-loo",
    checkpoints: Sequence[nn.Module | Mapping[str, torch.Tensor]] | None = None,
    settings: AuditSettings | None = None,
    perturb: str | None = None,
    jobs: int = 1,
    cluster: str | None = None,
    threads: int | None = None,
    **options: Any,
) -> AuditReport:
    """Audit ``model`` with the registered ``estimator`` (a name, or an estimator instance
    with its own settings, e.g. ``TRAK(proj_dim=64)``).

    The model: any ``nn.Module`` whose output is (n, C) logits or (n,) scores, as a tensor,
    an object's ``.logits`` (Hugging Face) or a tuple's first element
    (:mod:`~malleability.model_outputs`). ``perturb`` names a submodule (e.g. the word
    embeddings of a token model) whose output the attack moves instead of the input
    (:func:`prepare_model`); ``layer``, ``parameters``, ``perturb`` and checkpoints are named on
    ``model`` itself.

    Data: tensors/arrays with integer labels, package Datasets or .npz/.pt files (then the
    ``y`` arguments may be None), moved to the model's device and dtype. ``settings`` (or its
    fields as keyword ``options``, e.g. ``eps=0.1, seeds=(0, 1)``): :class:`AuditSettings`.
    Inputs are checked before any computation.

    The audit's cells (:func:`~malleability.audit_run.audit_cells`: the spectrum, each seed
    on the model, each checkpoint's clean scores, each seed on the ensemble) run in this
    process, on ``jobs`` local Dask workers, or on the scheduler at ``cluster`` (``threads``
    torch threads per cell); the report is the same for equal threads per cell.
    """
    from .audit_run import audit_cells

    p = prepare(model, x_train, y_train, x_test, y_test, estimator=estimator,
                checkpoints=checkpoints, settings=settings, perturb=perturb, **options)
    return report_from_cells(p, audit_cells([p], jobs, cluster, threads))


def report_from_cells(p: AuditProblem, results: Mapping[tuple[str, str], Mapping[int, Any]]
                      ) -> AuditReport:
    """The :class:`AuditReport` of ``p`` from the results of its cells
    (:func:`~malleability.audit_run.audit_cells`): the spectrum, the model's cells over the
    seeds (:func:`assemble`), the checkpoints' clean scores at the first seed (agreement) and
    the ensemble's cells."""
    from .audit_run import ENSEMBLE, MODEL, SPECTRUM, spectrum_layer

    s, name = p.settings, p.estimator.name
    spectrum = {k: v for k, v in results[(SPECTRUM, spectrum_layer(p))][0].items()
                if k != "eigenvalues"}
    spectrum["layer"] = p.record["layer"] or p.record["perturb"] or "input"
    main = spectrum["per_example"]
    result = assemble(results[(name, MODEL)], s.margin)
    first = results[(name, MODEL)][s.seeds[0]]
    agreement = None
    if p.checkpoints:
        scores = [torch.tensor(results[(name, f"ckpt{j}")][s.seeds[0]]["scores"],
                               dtype=torch.float64) for j in range(len(p.checkpoints))]
        agreement = {**agreement_matrices(scores, s.fraction),
                     "ensemble": assemble(results[(name, ENSEMBLE)], s.margin)}
    return AuditReport(
        estimator=name, kappa=main["kappa"], rank=main["rank"],
        kappa_cubed=main["kappa_cubed"], width_threshold=main["width_threshold"],
        representation=spectrum, flip_rate=result["adversarial"]["flip_rate"],
        spearman=result["adversarial"]["spearman"],
        top_k_overlap=result["adversarial"]["top_k_overlap"],
        checkpoint_agreement=agreement, settings=p.record,
        controls={"noise": result["noise"], "random": result["random"]},
        excess=result["excess"], verdicts=result["verdicts"], verdict=result["verdict"],
        diagnostics={"rank_stability": result["rank_stability"],
                     "warnings": first["warnings"],
                     "hessian_top_eigenvalue": first["hessian_top_eigenvalue"]})
