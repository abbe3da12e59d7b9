"""Numbers measured once per seed: an :class:`Estimate` is the mean over seeds, with the
per-seed values and a 95 % confidence interval of the mean; :func:`combine` pairs estimates
seed by seed. The reproduction's report and ``malleability audit`` both use it.

Interval: ``scipy.stats.bootstrap`` of the mean over the seeds (percentile method, 9 999
resamples, fixed random state), computed only with at least :data:`MIN_SEEDS` seeds; with fewer
the report shows the individual values and "CI n/a".
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
MIN_SEEDS = 3
RESAMPLES = 9999
METHOD = "percentile"
CI_METHOD = (f"{CONFIDENCE:.0%} percentile bootstrap of the mean over seeds "
             f"(scipy.stats.bootstrap, {RESAMPLES} resamples); with fewer than {MIN_SEEDS} "
             "seeds the per-seed values are shown and the interval is n/a")


class Estimate(float):
    """A number measured once per seed: its value (as a float) is the mean over the seeds;
    ``values`` and ``seeds`` keep the per-seed measurements (None/NaN → NaN)."""

    values: tuple[float, ...]
    seeds: tuple[int, ...]

    def __new__(cls, values: Sequence[float | None], seeds: Sequence[int]) -> Estimate:
        vals = tuple(math.nan if v is None else float(v) for v in values)
        if not vals or len(vals) != len(seeds):
            raise ValueError(f"values: expected one value per seed ({len(seeds)}), "
                             f"got {len(vals)}")
        self = super().__new__(cls, float(np.mean(vals)))
        self.values, self.seeds = vals, tuple(seeds)
        return self

    def __reduce__(self):
        return Estimate, (self.values, self.seeds)

    @cached_property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % CI of the mean, or None with fewer than MIN_SEEDS finite values."""
        if len(self.values) < MIN_SEEDS or not all(map(math.isfinite, self.values)):
            return None
        if min(self.values) == max(self.values):
            return (self.values[0], self.values[0])
        res = stats.bootstrap((np.asarray(self.values),), np.mean, confidence_level=CONFIDENCE,
                              n_resamples=RESAMPLES, method=METHOD, random_state=0)
        return float(res.confidence_interval.low), float(res.confidence_interval.high)

    def scaled(self, factor: float) -> Estimate:
        return Estimate([v * factor for v in self.values], self.seeds)


def combine(fn: Callable[..., float], *args: float) -> float:
    """``fn`` applied seed by seed (paired) over the seeds all Estimate arguments share; plain
    numbers are broadcast. With no Estimate argument, ``fn`` of the numbers."""
    estimates = [a for a in args if isinstance(a, Estimate)]
    if not estimates:
        return fn(*args)
    seeds = [s for s in estimates[0].seeds if all(s in e.seeds for e in estimates[1:])]
    if not seeds:
        raise ValueError("combine: the estimates share no seed")

    def at(a: float, seed: int) -> float:
        return a.values[a.seeds.index(seed)] if isinstance(a, Estimate) else a

    return Estimate([fn(*(at(a, s) for a in args)) for s in seeds], seeds)


def scale(value: float | None, factor: float) -> float | None:
    """``factor``·value, keeping an Estimate's per-seed values (e.g. a fraction as %)."""
    if isinstance(value, Estimate):
        return value.scaled(factor)
    return None if value is None else factor * value
