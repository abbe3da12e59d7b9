"""A.2's κ mechanism: the spectrum's spread and the between-class share against exact
identities, κ's factorisation, and Figure 6's near-zero decision."""

import math

import numpy as np
import pytest
import torch

from malleability.intervals import Estimate
from malleability.repro.experiments.kappa_mechanism import gram_statistics
from malleability.repro.experiments.ntk_distance_variants import near_zero_at_all_widths
from malleability.spectral import between_class_share, participation_ratio

F64 = torch.float64


def _unit_rows(n, d, seed):
    z = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return z / z.norm(dim=1, keepdim=True)


def test_participation_ratio_is_trace_squared_over_frobenius_squared():
    z = _unit_rows(30, 8, 0)
    gram = z @ z.T
    eig = torch.linalg.eigvalsh(gram)
    assert math.isclose(participation_ratio(eig),
                        float(torch.trace(gram)) ** 2 / float((gram * gram).sum()), rel_tol=1e-12)
    assert math.isclose(participation_ratio(torch.ones(5, dtype=F64)), 5.0)
    assert math.isclose(participation_ratio(torch.tensor([3.0, 0.0, 0.0], dtype=F64)), 1.0)
    with pytest.raises(ValueError, match="^eigenvalues: expected a positive sum"):
        participation_ratio(torch.zeros(3))


def test_between_class_share_is_total_minus_within_scatter_by_loops():
    z = _unit_rows(25, 4, 1)
    labels = torch.tensor([i % 3 for i in range(25)])
    mean = z.mean(0)
    total = sum(float((row - mean) @ (row - mean)) for row in z)
    within = 0.0
    for c in range(3):
        rows = z[labels == c]
        centre = rows.mean(0)
        within += sum(float((row - centre) @ (row - centre)) for row in rows)
    assert math.isclose(between_class_share(z, labels), (total - within) / total, rel_tol=1e-12)
    # every row at its class mean: all scatter is between classes; equal class means: none
    assert math.isclose(between_class_share(z[labels], labels), 1.0, rel_tol=1e-12)
    twin = torch.cat([z[:5], z[:5]])
    assert abs(between_class_share(twin, torch.tensor([0] * 5 + [1] * 5))) < 1e-15
    with pytest.raises(ValueError, match=r"^labels: expected shape \(25,\)"):
        between_class_share(z, labels[:3])


def test_kappa_factors_into_its_top_and_bottom_shares():
    z = _unit_rows(12, 20, 2)
    labels = torch.tensor([0, 1] * 6)
    stats = gram_statistics(z, labels)
    eig = torch.linalg.eigvalsh(z @ z.T)
    assert math.isclose(stats["kappa_effective"], float(eig[-1] / eig[0]), rel_tol=1e-9)
    assert math.isclose(stats["kappa_effective"], stats["top_share"] / stats["bottom_share"],
                        rel_tol=1e-12)
    assert math.isclose(stats["top_share"], float(eig[-1]) / 12, rel_tol=1e-9)  # tr G = n
    assert stats["class_counts"] == [6, 6]


def test_near_zero_at_all_widths_is_decided_by_every_widths_interval():
    below = Estimate([1e-4, 2e-4, 1.5e-4], [0, 1, 2])
    above = Estimate([0.2, 0.3, 0.25], [0, 1, 2])
    straddles = Estimate([0.0, 0.02, 0.001], [0, 1, 2])
    assert near_zero_at_all_widths([below, below]) is True
    assert near_zero_at_all_widths([below, above]) is False
    assert near_zero_at_all_widths([below, straddles]) is None
    assert near_zero_at_all_widths([0.001]) is None  # one seed: no interval


def test_row_normalised_softmax_and_exponential_attention_are_one_map():
    """softmax(s)R = exp(s − max s)R / Σ exp(s − max s): a positive factor per row, which
    rownorm removes, so Figure 6's two maps give the same features (and cells)."""
    x, r = _unit_rows(7, 5, 3) * 4, _unit_rows(11, 5, 4) * 4
    from malleability.attention import attention_features

    for tau in (0.1, 1.0):
        torch.testing.assert_close(attention_features(x, r, "softmax", temperature=tau),
                                   attention_features(x, r, "exponential", temperature=tau),
                                   rtol=1e-12, atol=1e-14)


def test_kappa_is_summarised_geometrically_so_its_bars_stay_above_zero_on_a_log_axis():
    from malleability.intervals import GeometricEstimate
    from malleability.repro.experiments import kappa_mechanism as km
    from malleability.repro.figures import _yerr
    from malleability.repro.seeds import merge_seeds

    def gram(kappa):
        return {"kappa_effective": kappa, "attention_kappa_effective": 1e6 * kappa}

    spans = [(2e2, 5e3), (9e3, 4e2), (3e5, 1e4)]  # (10-class, pair) per seed: decades apart
    records = merge_seeds([{"cell": {"dataset": "d", "n": 100, "seed": s}, "result": {
        km.TEN: gram(ten), "paper_pair": gram(two),
        "control_pairs": {"a,b": {"kappa_effective": two}, "a,c": {"kappa_effective": ten}}}}
        for s, (ten, two) in enumerate(spans)])
    result = records[0]["result"]
    assert result[km.TEN]["kappa_effective"].interval[0] < 0  # the arithmetic t interval
    kappa = km._kappas(result)
    assert set(kappa) == {"10-class", "paper pair", "attention 10-class",
                          "attention paper pair", "control pairs (median)"}
    assert all(isinstance(v, GeometricEstimate) for v in kappa.values())
    assert float(kappa["10-class"]) == pytest.approx((2e2 * 9e3 * 3e5) ** (1 / 3))
    y = np.array([float(v) for v in kappa.values()])
    assert (y - _yerr(list(kappa.values()))[0] > 0).all()
