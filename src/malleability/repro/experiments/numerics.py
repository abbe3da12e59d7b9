"""The A.9 numerical checks of every kernel solve, as recorded by
:meth:`~malleability.measure.Measurement.summary` (``stability`` before the perturbation,
``perturbed_stability`` after), turned into report rows: K + λI positive definite (its
smallest eigenvalue > 0), its condition number, the inversion residual ‖(K + λI)H − I‖ and
the symmetry error of K; over seeds the worst value is shown (smallest eigenvalue, largest
condition number and errors).

Not an experiment: a helper of the sections whose cells hold measurements
(adversarial_training here; flip_rates and interventions record the same fields).
"""

from __future__ import annotations

from ..blocks import fmt
from ..seeds import Estimate

#: Columns of :func:`a9_cells`.
A9_HEADER = ["min eig. K + λI", "cond. K + λI", "‖(K + λI)H − I‖", "‖K − Kᵀ‖", "A.9 holds"]
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
