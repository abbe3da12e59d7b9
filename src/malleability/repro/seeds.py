"""Statistics over seeds: every cell runs once per seed; the report merges a cell's per-seed
results into one, each measured number an :class:`Estimate` (mean over seeds, the per-seed
values, a 95 % percentile-bootstrap confidence interval).

Interval: ``scipy.stats.bootstrap`` of the mean over the seeds (percentile method, 9 999
resamples, fixed random state), computed only with at least :data:`MIN_SEEDS` seeds; with fewer
the report shows the individual values and "CI n/a". With 3–5 seeds the percentile bootstrap
is narrower than a t interval (it under-covers), so a decided verdict needs a clear effect.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import cached_property
from typing import Any

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


def merge_values(values: list[Any], seeds: list[int], where: str = "result") -> Any:
    """Per-seed results of one cell → one: dicts key by key (the same keys for every seed,
    else KeyError), lists element by element, floats → Estimate, ints and strings kept when
    equal over seeds (else Estimate / the distinct strings joined by " / ")."""
    first = values[0]
    if isinstance(first, dict):
        keys = list(first)
        for v, s in zip(values, seeds, strict=True):
            if not isinstance(v, dict) or list(v) != keys:
                missing = set(keys) ^ set(v if isinstance(v, dict) else ())
                raise KeyError(f"{where}: keys differ for seed {s}: {sorted(map(str, missing))}")
        return {k: merge_values([v[k] for v in values], seeds, f"{where}.{k}") for k in keys}
    if isinstance(first, list):
        if any(not isinstance(v, list) or len(v) != len(first) for v in values):
            raise ValueError(f"{where}: expected lists of one length over seeds")
        return [merge_values([v[i] for v in values], seeds, f"{where}[{i}]")
                for i in range(len(first))]
    if all(v is None for v in values):
        return None
    if all(isinstance(v, str) for v in values):
        return " / ".join(dict.fromkeys(values))
    if all(isinstance(v, (bool, int)) for v in values) and len(set(values)) == 1:
        return first
    if all(v is None or isinstance(v, (int, float)) for v in values):
        return Estimate(values, seeds)
    raise ValueError(f"{where}: expected values of one kind over seeds, got {values!r}")


def merge_seeds(records: list[dict]) -> list[dict]:
    """Cell records of several seeds → one record per cell (its parameters without the
    seed), ``result`` merged by :func:`merge_values`, ``seeds`` listing the seeds."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        cell = {k: v for k, v in record["cell"].items() if k != "seed"}
        groups.setdefault(repr(sorted(cell.items())), []).append(record)
    merged = []
    for group in groups.values():
        group = sorted(group, key=lambda r: r["cell"].get("seed", 0))
        seeds = [r["cell"].get("seed", 0) for r in group]
        cell = {k: v for k, v in group[0]["cell"].items() if k != "seed"}
        merged.append({**group[0], "cell": cell, "seeds": seeds,
                       "result": merge_values([r["result"] for r in group], seeds)})
    return merged
