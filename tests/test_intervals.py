"""The interval of a mean over seeds: its formula, its measured coverage on simulated normal
seed values (against the percentile bootstrap it replaced), and its use for paired
comparisons."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy import stats

from malleability.intervals import (
    CI_METHOD,
    Estimate,
    GeometricEstimate,
    combine,
    geometric,
    t_interval,
)

REPLICATES = 4000


def _covers(bounds: np.ndarray, mean: float) -> float:
    """The share of (low, high) rows that contain ``mean``."""
    return float(np.mean((bounds[:, 0] <= mean) & (mean <= bounds[:, 1])))


def _samples(k: int, seed: int) -> np.ndarray:
    """REPLICATES samples of k seed values, normal with mean 3 and sd 2."""
    return np.random.default_rng(seed).normal(3.0, 2.0, size=(REPLICATES, k))


@pytest.mark.parametrize("k", [3, 5, 10])
def test_student_t_interval_covers_the_mean_of_normal_seed_values(k):
    samples = _samples(k, seed=k)
    bounds = np.array([Estimate(row, list(range(k))).interval for row in samples])
    # nominal 95 %: with 4000 replicates the standard error of the coverage is 0.34 points
    assert _covers(bounds, 3.0) >= 0.93


@pytest.mark.parametrize("k", [3, 5, 10])
def test_the_replaced_percentile_bootstrap_under_covers(k):
    samples = _samples(k, seed=k)
    boot = stats.bootstrap((samples,), np.mean, axis=-1, method="percentile", n_resamples=999,
                           random_state=0, vectorized=True).confidence_interval
    old = _covers(np.stack([boot.low, boot.high], axis=1), 3.0)
    new = _covers(np.array([t_interval(row) for row in samples]), 3.0)
    assert old < 0.92 < 0.93 <= new  # measured ≈ 0.75, 0.83, 0.90 (k = 3, 5, 10)


def test_interval_is_the_t_formula_and_deterministic():
    values = [0.31, 0.28, 0.35, 0.30, 0.33]
    s = math.sqrt(sum((v - 0.314) ** 2 for v in values) / 4)  # sample sd, by hand
    half = 2.776445105 * s / math.sqrt(5)  # t_{0.975, 4} from a printed table
    e = Estimate(values, [0, 1, 2, 3, 4])
    assert e.interval == pytest.approx((0.314 - half, 0.314 + half), abs=1e-9)
    assert Estimate(values, [0, 1, 2, 3, 4]).interval == e.interval  # no randomness


def test_two_seeds_give_the_wide_t_interval_and_one_seed_none():
    low, high = Estimate([1.0, 2.0], [0, 1]).interval
    half = 12.70620474 * (math.sqrt(0.5) / math.sqrt(2))  # t_{0.975, 1} · s/√2
    assert (low, high) == pytest.approx((1.5 - half, 1.5 + half))
    assert Estimate([1.0], [0]).interval is None
    assert Estimate([1.0, None, 2.0], [0, 1, 2]).interval is None
    assert Estimate([4.0, 4.0, 4.0], [0, 1, 2]).interval == (4.0, 4.0)
    assert "Student-t" in CI_METHOD and "2 seeds" in CI_METHOD


def test_a_comparison_is_the_interval_of_the_per_seed_differences():
    # seed effects shared by both arms: the paired interval is narrow where unpaired ones
    # overlap; it equals the t interval of the differences
    a = Estimate([10.0, 20.0, 30.0, 40.0], [0, 1, 2, 3])
    b = Estimate([11.0, 21.5, 30.8, 41.2], [0, 1, 2, 3])
    d = combine(lambda u, v: v - u, a, b)
    assert d.interval == pytest.approx(t_interval([1.0, 1.5, 0.8, 1.2]))
    assert d.interval[0] > 0 and a.interval[1] > b.interval[0]


def test_geometric_estimate_is_the_t_interval_of_log10_mapped_back():
    values = [120.0, 3.4e3, 9.1e4]  # a κ spanning decades: the arithmetic interval goes < 0
    e = GeometricEstimate(values, [0, 1, 2])
    logs = [math.log10(v) for v in values]
    m = sum(logs) / 3
    s = math.sqrt(sum((x - m) ** 2 for x in logs) / 2)
    half = 4.302652730 * s / math.sqrt(3)  # t_{0.975, 2} from a printed table
    assert float(e) == pytest.approx(math.prod(values) ** (1 / 3), rel=1e-12)
    assert e.interval == pytest.approx((10 ** (m - half), 10 ** (m + half)), rel=1e-9)
    assert Estimate(values, [0, 1, 2]).interval[0] < 0 < e.interval[0] < float(e)
    assert geometric(Estimate(values, [0, 1, 2])).interval == e.interval
    assert geometric(0.5) == 0.5 and e.scaled(100).interval == pytest.approx(
        (100 * e.interval[0], 100 * e.interval[1]))
    with pytest.raises(ValueError, match="^values: expected positive values"):
        GeometricEstimate([1.0, -2.0], [0, 1])


@pytest.mark.parametrize("k", [3, 5])
def test_geometric_interval_covers_the_median_of_lognormal_seed_values(k):
    # log10 κ normal (mean 4, sd 1): the median 10⁴ is the geometric mean's target
    samples = 10 ** np.random.default_rng(k).normal(4.0, 1.0, size=(REPLICATES, k))
    bounds = np.array([GeometricEstimate(row, list(range(k))).interval for row in samples])
    assert (bounds[:, 0] > 0).all() and _covers(bounds, 1e4) >= 0.93
