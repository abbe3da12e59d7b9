"""A.2's κ mechanism: the spectrum's spread and the between-class share against exact
identities, κ's factorisation, and Figure 6's near-zero decision."""

import math

import numpy as np
import pytest
import torch

from malleability.intervals import Estimate, GeometricEstimate
from malleability.repro.experiments.kappa_mechanism import gram_statistics
from malleability.repro.experiments.ntk_distance_variants import (
    near_zero_at_all_widths,
    width_text,
)
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


def test_a_width_whose_seeds_include_dead_networks_says_so_in_the_claims_table():
    """A dead network's kernel distance is undefined (null in its cell): the claim counts
    those seeds in words instead of printing dashes, and gives the others' values."""
    mixed = GeometricEstimate([None, None, 0.0978, 0.146, None], [0, 1, 2, 3, 4])
    assert width_text(16, mixed) == ("m=16: undefined at 3 of 5 seeds (a dead network: zero "
                                     "NTK); 0.0978, 0.146 at the others")
    assert width_text(16, GeometricEstimate([None, None], [0, 1])) == (
        "m=16: undefined at 2 of 2 seeds (a dead network: zero NTK)")
    assert width_text(1024, GeometricEstimate([1e-4, 2e-4, 1.5e-4], [0, 1, 2])).startswith(
        "m=1024: 0.000144 [")


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


def _spectrum_records(kappas):
    def result(k, n):
        return {"inputs": {"n": n, "d": 784, "rank": n, "kappa": k, "kappa_effective": k},
                "kappa_cubed": k ** 3, "attention": {"kappa_effective": k ** 2, "rank": n},
                "threshold_attention": k ** 6 * n * math.log(n),
                "threshold_relu": k ** 2 * n * math.log(n)}
    return [{"experiment": "spectrum", "cell": {"task": "mnist", "n": n, "seed": s},
             "result": result(k * n / 100, n)} for n in (100, 200) for s, k in enumerate(kappas)]


def test_spectrum_tables_figure_and_claim_summarise_kappa_on_the_log_scale(tmp_path,
                                                                           monkeypatch):
    """κ over seeds spanning decades: the table, the log-axis figure's bars and the claim's κ
    are the geometric mean with the t interval of log₁₀ (positive), and the claim's log₁₀ m* is
    the mean of the per-seed logs (the same scale)."""
    from matplotlib import pyplot as plt

    from malleability.repro import figures
    from malleability.repro.blocks import fmt
    from malleability.repro.claims import section_records
    from malleability.repro.experiments import spectrum

    kappas = [2e2, 9e3, 3e5]
    records = section_records(spectrum, _spectrum_records(kappas))
    geo = fmt(math.prod(kappas) ** (1 / 3))
    drawn = []
    real = figures.line_panels
    monkeypatch.setattr(figures, "line_panels",
                        lambda path, panels, *a, **k: (drawn.append(panels),
                                                       real(path, panels, *a, **k))[1])
    blocks = spectrum.section(records, tmp_path)
    plt.close("all")
    table = blocks[0]
    assert table.rows[0][4].startswith(f"{geo} [")  # κ_d: no arithmetic mean
    assert not any("[-" in cell for row in table.rows for cell in row)
    for line in drawn[0]["mnist"][:3]:
        assert all(isinstance(v, GeometricEstimate) for v in line.y)
        assert (np.array([float(v) for v in line.y]) - figures._yerr(line.y)[0] > 0).all()
    (claim,) = spectrum.paper_claims(records)
    assert f"κ_eff {geo} [" in claim.measured
    log_m = np.mean([math.log10(k ** 6 * 100 * math.log(100)) for k in kappas])
    assert f"log₁₀ m* {fmt(log_m)} [" in claim.measured


def test_kappa_mechanism_prints_shares_and_cosines_within_their_range(tmp_path):
    """The share of control pairs above the 10-class κ (in [0, 1]) and the attention cosines
    (in [−1, 1]) print their intervals clipped; the intervals themselves are not."""
    from matplotlib import pyplot as plt

    from malleability.repro.claims import section_records
    from malleability.repro.experiments import kappa_mechanism as km

    def gram(kappa, cosine):
        return {"kappa_effective": kappa, "attention_kappa_effective": 1e6 * kappa,
                "top_share": 0.5, "bottom_share": 1e-6, "kappa_centred": kappa,
                "between_share": 0.1, "cosine": 0.5, "participation_ratio": 3.0,
                "class_counts": [50, 50], "attention_cosine": cosine}

    seeds = [(2e2, 1e3, 0.9999), (9e3, 4e2, 0.99999), (3e5, 1e4, 0.99)]
    cells = [{"experiment": "kappa_mechanism", "cell": {"dataset": "d", "n": 100, "seed": s},
              "result": {km.TEN: gram(ten, c), "paper_pair": gram(two, c), "control_pairs": {
                  "a,b": {**gram(1e5 if s == 0 else 1.0, c)}}}}
             for s, (ten, two, c) in enumerate(seeds)]
    records = section_records(km, cells)
    share = km._share_above(records[0]["result"]["control_pairs"],
                            records[0]["result"][km.TEN]["kappa_effective"])
    cosine = records[0]["result"][km.TEN]["attention_cosine"]
    assert share.interval[0] < 0 < 1 < share.interval[1] and cosine.interval[1] > 1
    blocks = km.section(records, tmp_path)
    plt.close("all")
    attention = next(b for b in blocks if b.header[0] == "data set, n" and "attention cosine "
                     "pair" in b.header)
    controls = next(b for b in blocks if "control pairs" in b.header)
    assert controls.rows[0][3] == f"{1 / 3:.3g} [0, 1]"
    assert attention.rows[0][3].endswith(", 1]")
