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

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from torch import nn

from .audit_problem import NOISE_PARTNER as NOISE_PARTNER
from .audit_problem import AuditProblem, prepare
from .audit_problem import audit_seed as audit_seed
from .audit_problem import estimator_warnings as estimator_warnings
from .audit_setup import AuditSettings
from .audit_setup import load_split as load_split
from .audit_setup import prepare_model as prepare_model
from .audit_setup import representation as representation
from .audit_setup import spectral_step as spectral_step
from .controls import BOUNDS, METRICS, NOISELESS, against_controls, summary_verdict
from .estimators import InfluenceEstimator
from .intervals import CI_METHOD, Estimate
from .jsonsafe import dumps_strict
from .metrics import spearman, top_k_overlap


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


def assemble(per_seed: Mapping[int, Mapping[str, Any]], margin: float) -> dict[str, Any]:
    """Per-seed results of :func:`audit_seed` as Estimates over the seeds: the adversarial
    metrics, the controls (a deterministic estimator's noise: :data:`NOISELESS`, exact), the
    excess with its verdict per metric, the estimator's verdict, and its rank stability
    (Spearman ρ between two seeds' clean scores: the noise control's ρ)."""
    seeds = list(per_seed)

    def over_seeds(kind: str) -> dict[str, Any] | None:
        if any(per_seed[s][kind] is None for s in seeds):
            return None
        return {m: Estimate([per_seed[s][kind][m] for s in seeds], seeds, BOUNDS[m])
                for m in METRICS}

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
