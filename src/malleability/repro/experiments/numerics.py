"""The A.9 numerical checks of every kernel solve, as recorded by
:meth:`~malleability.measure.Measurement.summary` (``stability`` before the perturbation,
``perturbed_stability`` after), turned into report rows: K + λI positive definite (its
smallest eigenvalue > 0), its condition number, the inversion residual ‖(K + λI)H − I‖ and
the symmetry error of K; over seeds the worst value is shown (smallest eigenvalue, largest
condition number and errors).

Not an experiment: a helper of the sections whose cells hold measurements (adversarial_training,
flip_rates and interventions), with the tables those sections and docs/reproduction.md show:
the A.9 checks per task and architecture (:func:`a9_table`) and the top-K stability of A.5.2,
|T ∩ T′|/K with T the top K = 10 % of the scores before and T′ after (:func:`top_k_table`).
"""

from __future__ import annotations

from ..blocks import Table, fmt, group, pct
from ..seeds import Estimate
from .base import model_name

#: Columns of :func:`a9_cells`.
A9_HEADER = ["min eig. K + λI", "cond. K + λI", "‖(K + λI)H − I‖", "‖K − Kᵀ‖", "A.9 holds"]
#: The caption of an A.9 table.
A9_CAPTION = ("Numerical checks of A.9 on every kernel solve (K + λI of the influence set, "
              "before and after the perturbation), the worst over the row's cells and seeds: "
              "the smallest eigenvalue, the largest condition number, the inversion residual "
              "‖(K + λI)H − I‖_F/√n and the symmetry error ‖K − Kᵀ‖_F/‖K‖_F, all four "
              "estimated from random probes (the eigenvalues as block Krylov Ritz values; "
              "kernel_ridge.StabilityReport); A.9 holds where K + λI is positive definite "
              "(certified by its Cholesky factorisation) and the residual is below 1e-6 in "
              "every solve.")
#: The inversion residual below which a solve counts as accurate (float64 solves of
#: condition numbers up to ~10⁸ reach ~10⁻⁸; the committed cells are below 10⁻¹⁰).
RESIDUAL_LIMIT = 1e-6


def worst(value: float | None, largest: bool) -> float | None:
    """The worst value over seeds: the largest (or smallest) of an Estimate's values."""
    if isinstance(value, Estimate):
        return max(value.values) if largest else min(value.values)
    return value


def a9_holds(stability: dict) -> bool:
    """K + λI positive definite and its inverse accurate, in every seed."""
    return (worst(stability["min_eigenvalue"], False) > 0
            and worst(stability["inversion_residual"], True) < RESIDUAL_LIMIT)


def a9_cells(stabilities: list[dict]) -> list[str]:
    """The A.9 columns over several solves (e.g. before and after the perturbation): the
    worst of each check, and whether every solve passes."""
    return [fmt(min(worst(s["min_eigenvalue"], False) for s in stabilities)),
            fmt(max(worst(s["condition_number"], True) for s in stabilities)),
            fmt(max(worst(s["inversion_residual"], True) for s in stabilities)),
            fmt(max(worst(s["symmetry_error"], True) for s in stabilities)),
            "yes" if all(a9_holds(s) for s in stabilities) else "no"]


def a9_table(records: list[dict], what: str, caption: str) -> Table:
    """Per task and architecture, the A.9 checks over every cell of the group (each ``what``:
    attack or intervention), every seed and both solves (before and after the perturbation)."""
    rows = [[task, model_name(model), ", ".join(dict.fromkeys(str(r["cell"][what])
                                                               for r in group_records)),
             *a9_cells([r["result"][k] for r in group_records
                        for k in ("stability", "perturbed_stability")])]
            for (task, model), group_records in group(records, "task", "model").items()]
    return Table(["task", "model", f"{what}s", *A9_HEADER], rows, caption)


def top_k_table(records: list[dict], what: str, caption: str) -> Table:
    """Per task, architecture and ``what`` (attack or intervention): the top-K stability
    |T ∩ T′|/K of A.5.2 beside the flip rate and Spearman ρ of the same cells (mean [95 % CI]
    over seeds)."""
    rows = [[task, model_name(model), str(r["cell"][what]), pct(r["result"]["top_k_overlap"]),
             pct(r["result"]["flip_rate"]), fmt(r["result"]["spearman"])]
            for (task, model), group_records in group(records, "task", "model").items()
            for r in group_records]
    return Table(["task", "model", what, "top-K stability %", "flip rate %", "Spearman ρ"],
                 rows, caption)
