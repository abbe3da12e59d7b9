"""Malleability against its controls (issue 31): what an attack does beyond what the estimator's
own noise and a random perturbation of the same size already do.

For every metric m of Definition 3.4 (flip rate, Spearman ρ(I, I'), top-K overlap) three
values are measured per seed:

- estimator noise: m between the clean scores under two estimator seeds (no perturbation);
  a deterministic estimator has none, m = :data:`NOISELESS` exactly;
- random perturbation: m under random ±ε signs on the same top points (the ``random-sign``
  attack, inside the same bounds);
- adversarial: m under the attack.

The excess, paired by seed, is adversarial − max(controls) for the flip rate and
min(controls) − adversarial for ρ and the overlap (those fall when scores are malleable), so a
positive excess always means "the attack did more than the controls". Its verdict, decided by
the excess's 95 % interval over seeds (:attr:`~malleability.intervals.Estimate.interval`):

- "malleable": the interval lies above 0;
- "not malleable": the interval lies below ``margin`` (the attack adds at most ``margin``
  beyond the controls, e.g. 0.05 = 5 points of flip rate) without lying above 0;
- "not distinguishable from noise": the interval contains 0 and reaches above ``margin``;
- "too few seeds": fewer than 3 seeds, or a number not measured per seed;
- "no spread over seeds": 3 or more seeds gave the same excess, so the interval has zero
  width and may not decide (:func:`~malleability.intervals.undecided`).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import torch

from .intervals import NO_SPREAD, TOO_FEW_SEEDS, combine, deciding_interval, undecided
from .metrics import flip_rate, spearman, top_k_overlap

#: The metrics of Definition 3.4, in report order.
METRICS = ("flip_rate", "spearman", "top_k_overlap")
#: The range each metric cannot leave (``Estimate.bounds``: its printed interval is clipped to it).
BOUNDS = {"flip_rate": (0.0, 1.0), "spearman": (-1.0, 1.0), "top_k_overlap": (0.0, 1.0)}
#: +1 where a larger value means more malleable (flip rate), −1 where a smaller one does.
DIRECTION = {"flip_rate": 1, "spearman": -1, "top_k_overlap": -1}
#: The metrics between a deterministic estimator's scores and themselves.
NOISELESS = {"flip_rate": 0.0, "spearman": 1.0, "top_k_overlap": 1.0}
#: The controls, in report order.
CONTROLS = ("noise", "random")
#: Default margin of "not malleable", in the metric's units (flip rate: a share of S).
MARGIN = 0.05

MALLEABLE = "malleable"
NOT_MALLEABLE = "not malleable"
NOISE = "not distinguishable from noise"
UNDECIDED = TOO_FEW_SEEDS
SAME_IN_EVERY_SEED = NO_SPREAD


def metrics(scores: torch.Tensor, other: torch.Tensor, fraction: float) -> dict[str, float]:
    """Flip rate, Spearman ρ and top-K overlap from ``scores`` to ``other`` (S = the top
    ``fraction`` of ``scores``)."""
    return {"flip_rate": flip_rate(scores, other, fraction), "spearman": spearman(scores, other),
            "top_k_overlap": top_k_overlap(scores, other, fraction)}


def excess(metric: str, adversarial: float, *controls: float) -> float:
    """DIRECTION·(adversarial − the worst control), paired by seed where the arguments are
    Estimates (plain numbers broadcast: e.g. a deterministic estimator's noise)."""
    if metric not in DIRECTION:
        raise ValueError(f"metric: expected one of {', '.join(METRICS)}, got {metric!r}")
    if not controls:
        raise ValueError("controls: expected at least one control")
    sign = DIRECTION[metric]
    worst = max if sign > 0 else min
    return combine(lambda a, *c: sign * (a - worst(c)), adversarial, *controls)


def verdict(value: float, margin: float = MARGIN) -> str:
    """The verdict of an excess from its 95 % interval (module docstring); a plain number
    (not measured per seed), or too few seeds to decide, is :data:`UNDECIDED`; the same excess
    in every one of 3 or more seeds is :data:`SAME_IN_EVERY_SEED`."""
    if margin < 0:
        raise ValueError(f"margin: expected a number ≥ 0, got {margin!r}")
    interval = deciding_interval(value)
    if interval is None:
        return undecided(value) or UNDECIDED
    low, high = interval
    if low > 0:
        return MALLEABLE
    if high < margin:
        return NOT_MALLEABLE
    return NOISE


def against_controls(values: Mapping[str, Mapping[str, float]], margin: float = MARGIN
                     ) -> dict[str, dict[str, Any]]:
    """Per metric, the excess over the controls and its verdict, from ``values`` =
    {"adversarial": {metric: value}, "noise": ..., "random": ...} (a control may be absent)."""
    out = {}
    for metric in METRICS:
        controls = [values[c][metric] for c in CONTROLS if values.get(c) is not None]
        ex = excess(metric, values["adversarial"][metric], *controls)
        out[metric] = {"excess": ex, "verdict": verdict(ex, margin)}
    return out


def summary_verdict(verdicts: Mapping[str, str]) -> str:
    """One verdict for an estimator from its metrics' verdicts: the flip rate's (Definition
    3.4's metric), qualified when ρ or the overlap disagrees."""
    main = verdicts["flip_rate"]
    others = sorted({v for k, v in verdicts.items() if k != "flip_rate" and v != main})
    return main if not others else f"{main} (by ρ or top-K overlap: {', '.join(others)})"
