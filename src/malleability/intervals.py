"""Numbers measured once per seed: an :class:`Estimate` is the mean over seeds, with the
per-seed values and a 95 % confidence interval of the mean; :func:`combine` pairs estimates
seed by seed. The reproduction's report and ``malleability audit`` both use it.

Interval (:func:`t_interval`): the Student-t interval of the mean over k seeds,
mean ± t₀.₉₇₅,ₖ₋₁ · s/√k (s the sample standard deviation), computed from k = 2 seeds on
(t₀.₉₇₅,₁ = 12.7: exact 95 % coverage for normal seed values, and wide enough that two seeds
rarely decide a verdict); one seed, or a missing value, has no interval. A comparison is the
interval of the difference taken within each seed (:func:`combine`). It replaces a percentile
bootstrap, which with 3, 5 and 10 seeds covered the mean of normal data in about 76 %, 84 % and
91 % of samples (tests/test_intervals.py measures both).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cached_property

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
#: The fewest seeds with an interval.
MIN_SEEDS = 2
CI_METHOD = (f"{CONFIDENCE:.0%} Student-t interval of the mean over the k seeds, "
             "mean ± t(0.975, k − 1)·s/√k, comparisons paired by seed (the interval of the "
             "per-seed differences); from 2 seeds on (t = 12.7 at k = 2: wide); one seed has "
             "no interval")


def t_interval(values: Sequence[float], confidence: float = CONFIDENCE
               ) -> tuple[float, float] | None:
    """mean ± t_{(1+confidence)/2, k−1} · s/√k of ``values`` (s with ddof = 1); None with
    fewer than MIN_SEEDS values or a non-finite one."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < MIN_SEEDS or not np.isfinite(v).all():
        return None
    mean = float(v.mean())
    half = float(stats.t.ppf(0.5 + confidence / 2, v.size - 1) * v.std(ddof=1)
                 / math.sqrt(v.size))
    return mean - half, mean + half


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
        """The 95 % Student-t interval of the mean (:func:`t_interval`), or None."""
        return t_interval(self.values)

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
