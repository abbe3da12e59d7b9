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

An interval decides a verdict only with at least :data:`MIN_DECIDING` seeds whose values are
not all equal (:func:`deciding_interval`): with fewer seeds the verdict is
:data:`TOO_FEW_SEEDS`; with a zero-width interval (every seed the same value: a discrete
quantity such as a flip rate can do that, and so would a cell copied under another seed's name,
which the run folder refuses before this) it is :data:`NO_SPREAD` (:func:`undecided`).
Ties between some seeds are kept: a flip rate on |S| points moves in steps of 1/|S|. A quantity
with a bounded range (a rate in [0, 1], a correlation in [−1, 1]) carries it as
``Estimate.bounds``; its interval is printed clipped to that range
(:meth:`Estimate.shown_interval`), while verdicts use the interval itself. A positive quantity
that spans decades (κ) is summarised on the log scale (:class:`GeometricEstimate`): the
geometric mean with the t interval of log₁₀ over seeds, positive by construction, which a log
axis can show.
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
#: The fewest seeds whose interval may decide a verdict.
MIN_DECIDING = 3
#: The verdict where the interval may not decide (:func:`deciding_interval`).
TOO_FEW_SEEDS = "too few seeds"
#: The verdict where at least MIN_DECIDING seeds gave the same value (a zero-width interval).
NO_SPREAD = "no spread over seeds"
CI_METHOD = (f"{CONFIDENCE:.0%} Student-t interval of the mean over the k seeds, "
             "mean ± t(0.975, k − 1)·s/√k, comparisons paired by seed (the interval of the "
             "per-seed differences); from 2 seeds on (t = 12.7 at k = 2: wide); one seed has "
             f"no interval; it decides a verdict only with at least {MIN_DECIDING} seeds "
             f"whose values are not all equal, else the verdict is \"{TOO_FEW_SEEDS}\" "
             f"(fewer seeds) or \"{NO_SPREAD}\" (the same value in every seed)")


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


def clip_interval(interval: tuple[float, float] | None,
                  bounds: tuple[float, float] | None) -> tuple[float, float] | None:
    """``interval`` clipped to ``bounds`` (the range the quantity cannot leave); unchanged
    without bounds or without an interval."""
    if interval is None or bounds is None:
        return interval
    return max(interval[0], bounds[0]), min(interval[1], bounds[1])


class Estimate(float):
    """A number measured once per seed: its value (as a float) is the mean over the seeds;
    ``values`` and ``seeds`` keep the per-seed measurements (None/NaN → NaN); ``bounds``, where
    given, is the range the quantity cannot leave (e.g. (0, 1) for a rate)."""

    values: tuple[float, ...]
    seeds: tuple[int, ...]
    bounds: tuple[float, float] | None

    def __new__(cls, values: Sequence[float | None], seeds: Sequence[int],
                bounds: tuple[float, float] | None = None) -> Estimate:
        vals = tuple(math.nan if v is None else float(v) for v in values)
        if not vals or len(vals) != len(seeds):
            raise ValueError(f"values: expected one value per seed ({len(seeds)}), "
                             f"got {len(vals)}")
        if bounds is not None and not bounds[0] < bounds[1]:
            raise ValueError(f"bounds: expected (low, high) with low < high, got {bounds!r}")
        self = super().__new__(cls, cls._center(vals))
        self.values, self.seeds, self.bounds = vals, tuple(seeds), bounds
        return self

    @staticmethod
    def _center(values: tuple[float, ...]) -> float:
        """The summary over seeds: the mean."""
        return float(np.mean(values))

    def __reduce__(self):
        return type(self), (self.values, self.seeds, self.bounds)

    @cached_property
    def interval(self) -> tuple[float, float] | None:
        """The 95 % Student-t interval of the mean (:func:`t_interval`), or None."""
        return t_interval(self.values)

    def shown_interval(self) -> tuple[float, float] | None:
        """The interval as a reader sees it: clipped to ``bounds`` (a rate's interval never
        below 0); the interval itself without bounds."""
        return clip_interval(self.interval, self.bounds)

    def scaled(self, factor: float) -> Estimate:
        bounds = (None if self.bounds is None else
                  (min(b * factor for b in self.bounds), max(b * factor for b in self.bounds)))
        return type(self)([v * factor for v in self.values], self.seeds, bounds)


class GeometricEstimate(Estimate):
    """A positive quantity measured per seed and summarised on the log scale: its value is
    the geometric mean 10^m, m the mean of log₁₀ v over seeds, and its interval the t interval
    of log₁₀ v mapped back, 10^(m ± t₀.₉₇₅,ₖ₋₁ · s/√k), s the sd of log₁₀ v (:func:`t_interval`
    on the logs): positive, and symmetric on a log axis."""

    def __new__(cls, values: Sequence[float | None], seeds: Sequence[int],
                bounds: tuple[float, float] | None = None) -> GeometricEstimate:
        bad = [v for v in values if v is not None and float(v) <= 0]
        if bad:
            raise ValueError(f"values: expected positive values for a geometric mean, got "
                             f"{bad[0]!r}")
        return super().__new__(cls, values, seeds, bounds)

    @staticmethod
    def _center(values: tuple[float, ...]) -> float:
        """The geometric mean 10^mean(log₁₀ v)."""
        return float(10 ** np.mean(np.log10(values)))

    @cached_property
    def interval(self) -> tuple[float, float] | None:
        """10^(the t interval of log₁₀ v), or None."""
        logs = t_interval(np.log10(self.values))
        return None if logs is None else (10 ** logs[0], 10 ** logs[1])


def geometric(value: float | None) -> float | None:
    """An Estimate's per-seed values as a :class:`GeometricEstimate`; other values as they
    are."""
    if isinstance(value, Estimate) and not isinstance(value, GeometricEstimate):
        return GeometricEstimate(value.values, value.seeds, value.bounds)
    return value


def deciding_interval(value: float | None) -> tuple[float, float] | None:
    """The 95 % interval of ``value`` where it may decide a verdict: an Estimate with at least
    MIN_DECIDING finite per-seed values, not all equal (an interval of non-zero width); None
    otherwise (too few seeds, every seed the same value, a plain number, None)."""
    if not isinstance(value, Estimate) or value.interval is None:
        return None
    finite = [v for v in value.values if math.isfinite(v)]
    return value.interval if len(finite) >= MIN_DECIDING and len(set(finite)) > 1 else None


def undecided(value: float | None) -> str | None:
    """Why the interval of a measured value (not None or NaN) may not decide a verdict:
    :data:`NO_SPREAD` where at least MIN_DECIDING seeds gave one and the same value,
    :data:`TOO_FEW_SEEDS` where fewer seeds (or a plain number) did; None where it decides, or
    where nothing was measured."""
    if value is None or (isinstance(value, float) and math.isnan(value)) or \
            deciding_interval(value) is not None:
        return None
    finite = [v for v in value.values if math.isfinite(v)] if isinstance(value, Estimate) else []
    return NO_SPREAD if len(finite) >= MIN_DECIDING else TOO_FEW_SEEDS


def combine(fn: Callable[..., float], *args: float,
            bounds: tuple[float, float] | None = None) -> float:
    """``fn`` applied seed by seed (paired) over the seeds all Estimate arguments share; plain
    numbers are broadcast; ``bounds``: the result's range (``Estimate.bounds``). With no
    Estimate argument, ``fn`` of the numbers."""
    estimates = [a for a in args if isinstance(a, Estimate)]
    if not estimates:
        return fn(*args)
    seeds = [s for s in estimates[0].seeds if all(s in e.seeds for e in estimates[1:])]
    if not seeds:
        raise ValueError("combine: the estimates share no seed")

    def at(a: float, seed: int) -> float:
        return a.values[a.seeds.index(seed)] if isinstance(a, Estimate) else a

    return Estimate([fn(*(at(a, s) for a in args)) for s in seeds], seeds, bounds)


def scale(value: float | None, factor: float) -> float | None:
    """``factor``·value, keeping an Estimate's per-seed values (e.g. a fraction as %)."""
    if isinstance(value, Estimate):
        return value.scaled(factor)
    return None if value is None else factor * value
