"""Statistics over seeds: Estimates (intervals: tests/test_intervals.py), merging per-seed results,
the one verdict helper every section uses, and the seed offset reaching every seed."""

from __future__ import annotations

import math

import pytest

from malleability.intervals import NO_SPREAD, TOO_FEW_SEEDS
from malleability.repro.blocks import fmt, pct
from malleability.repro.experiments import EXPERIMENTS
from malleability.repro.experiments.base import decide, seeds_phrase, trend, verdict
from malleability.repro.experiments.interventions import table5
from malleability.repro.runner import load_preset, plan
from malleability.repro.seeds import Estimate, combine, merge_seeds, merge_values, metric_bounds
from malleability.settings import reseeded

SEEDS = [0, 1, 2, 3, 4]


def test_one_seed_or_nan_give_no_interval_two_seeds_a_wide_one():
    assert Estimate([0.1, None, 0.2], [0, 1, 2]).interval is None
    assert fmt(Estimate([0.1, 0.2], [0, 1])) == "0.15 [-0.485, 0.785]"  # t₀.₉₇₅,₁ = 12.7
    assert fmt(Estimate([0.1, None], [0, 1])) == "— (0.1, —; CI n/a)"
    assert pct(Estimate([0.5, 0.5, 0.5], [0, 1, 2])) == "50 [50, 50]"
    assert fmt(Estimate([0.7], [0])) == "0.7"


def test_verdict_overlap_is_inconclusive_and_decided_intervals_agree_or_disagree():
    near = Estimate([90.0, 91.0, 92.0, 91.5, 90.5], SEEDS)  # CI ≈ [90.0, 92.0]
    assert verdict(near, (91.0, math.inf)) == "inconclusive"  # interval overlaps 91
    assert verdict(near, (89.0, 93.0)) == "agrees"  # within the paper ± tolerance
    assert verdict(near, (95.0, 99.0)) == "disagrees"  # wholly outside
    assert verdict(near, (89.0, 93.0), paper_inside=False) == "disagrees"
    gap = Estimate([5.0, 6.0, 7.0], [0, 1, 2])
    assert verdict(gap, (0.0, math.inf)) == "agrees"
    assert verdict(gap, (0.0, math.inf), paper_inside=False) == "disagrees"
    assert decide(None, (0.0, 1.0)) is None


def test_too_few_seeds_or_equal_values_never_decide():
    """Fewer than 3 seeds: "too few seeds"; the same value in every one of 3 or more seeds (a
    zero-width interval): "no spread over seeds", although the t interval itself would lie
    above 0. Ties between some seeds decide."""
    two = Estimate([1.0, 2.0], [0, 1])
    assert two.interval[0] < 0 and verdict(two, (0.0, math.inf)) == TOO_FEW_SEEDS
    constant = Estimate([0.5, 0.5, 0.5], [0, 1, 2])  # zero width at 0.5 > 0
    assert constant.interval == (0.5, 0.5) and verdict(constant, (0.0, math.inf)) == NO_SPREAD
    two_equal = Estimate([0.5, 0.5], [0, 1])
    assert verdict(two_equal, (0.0, math.inf)) == TOO_FEW_SEEDS
    ties = Estimate([0.2, 0.3, 0.2, 0.3, 0.2], SEEDS)  # 5 seeds, 2 distinct values: decides
    assert ties.interval[0] > 0 and verdict(ties, (0.0, math.inf)) == "agrees"
    assert verdict(3.0, (0.0, math.inf)) == TOO_FEW_SEEDS  # a plain number has no interval
    assert verdict(None, (0.0, math.inf)) == "inconclusive"  # missing, not measured
    assert verdict(Estimate([0.2, 0.3, 0.25], [0, 1, 2]), (0.0, math.inf)) == "agrees"


def test_bounded_metrics_print_their_interval_clipped_to_the_range():
    """A rate's t interval can reach below 0 and a correlation's above 1: printed clipped, while
    the interval itself (which verdicts use) is unchanged."""
    merged = merge_values([{"flip_rate": v, "spearman": r, "gap": v, "accuracy_by_epoch": {"1": a}}
                           for v, r, a in ((0.0, 0.99, 0.99), (0.02, 1.0, 1.0), (0.0, 0.97, 0.98))],
                          [0, 1, 2])
    flip, rho, gap = merged["flip_rate"], merged["spearman"], merged["gap"]
    assert flip.interval[0] < 0 and pct(flip).endswith("[0, 3.54]")
    assert rho.interval[1] > 1 and fmt(rho).endswith(", 1]")
    assert merged["accuracy_by_epoch"]["1"].bounds == (0.0, 1.0)
    assert gap.bounds is None and fmt(gap).startswith("0.00667 [-0.0")  # a plain number: as is
    assert metric_bounds("result.ridges[3].top_k_overlap") == (0.0, 1.0)
    assert metric_bounds("result.history.train_loss[2]") is None
    assert metric_bounds("result.paper_pair.between_share") == (0.0, 1.0)
    assert metric_bounds("result.ten_class.attention_cosine") == (-1.0, 1.0)
    # robust_evaluation's shares of test points (a Square-only break seen in one seed of three
    # gave "0.0667 [-0.22, 0.354]" before they were named)
    assert metric_bounds("result.adversarial.square_only_breaks") == (0.0, 1.0)
    assert metric_bounds("result.discordant") == (0.0, 1.0)
    share = combine(lambda v: v, Estimate([0.0, 0.5, 0.0], [0, 1, 2]), bounds=(0.0, 1.0))
    assert share.interval[0] < 0 and fmt(share).endswith("[0, 0.884]")


def test_fields_an_experiment_names_geometric_merge_on_the_log_scale():
    """κ spanning decades: the named field's summary is the geometric mean with the t interval
    of log₁₀ (positive), computed here from the logs by hand; other fields, and a named field
    with a value ≤ 0 (no log scale holds it), stay arithmetic means."""
    kappas = [2e2, 9e3, 3e5]
    merged = merge_values([{"inputs": {"kappa": k}, "kappa_cubed": k ** 3, "gap": k,
                            "other": {"kappa": k - 1e3}} for k in kappas], [0, 1, 2],
                          geometric=("kappa", "kappa_cubed"))
    logs = [math.log10(k) for k in kappas]
    m = sum(logs) / 3
    half = 4.302652730 * math.sqrt(sum((x - m) ** 2 for x in logs) / 2) / math.sqrt(3)
    kappa = merged["inputs"]["kappa"]
    assert float(kappa) == pytest.approx(10 ** m) and merged["gap"].interval[0] < 0
    assert kappa.interval == pytest.approx((10 ** (m - half), 10 ** (m + half)))
    assert float(merged["kappa_cubed"]) == pytest.approx(10 ** (3 * m))
    assert float(merged["gap"]) == pytest.approx(sum(kappas) / 3)
    assert float(merged["other"]["kappa"]) == pytest.approx(sum(kappas) / 3 - 1e3)
    (record,) = merge_seeds([{"cell": {"seed": s}, "result": {"kappa": k}}
                             for s, k in enumerate(kappas)], geometric=("kappa",))
    assert record["result"]["kappa"].interval == kappa.interval


def test_a_dict_named_geometric_merges_every_value_under_it_on_the_log_scale():
    """qkv_projections' κ of each projection sits under ``kappa_projected``: naming the dict
    puts its values on the log scale (no κ interval reaching below 0), while a field of the same
    name elsewhere (the projections' relative change) stays arithmetic."""
    from malleability.intervals import GeometricEstimate

    kappas = [2e2, 9e3, 3e5]
    merged = merge_values([{"kappa_projected": {"w_q": k, "w_k": 2 * k},
                            "projection_change": {"w_q": k}} for k in kappas], [0, 1, 2],
                          geometric=("kappa_projected",))
    for name in ("w_q", "w_k"):
        assert isinstance(merged["kappa_projected"][name], GeometricEstimate)
        assert merged["kappa_projected"][name].interval[0] > 0
    change = merged["projection_change"]["w_q"]
    assert not isinstance(change, GeometricEstimate) and change.interval[0] < 0
    assert EXPERIMENTS["qkv_projections"].GEOMETRIC[:2] == ("kappa_inputs", "kappa_projected")


def test_paired_difference_and_trend_over_seeds():
    a = Estimate([1.0, 2.0, 3.0], [0, 1, 2])
    b = Estimate([1.5, 2.5, 3.5], [0, 1, 2])
    d = combine(lambda u, v: v - u, a, b)  # paired: every difference is 0.5
    assert d.values == (0.5, 0.5, 0.5) and d.interval == (0.5, 0.5)
    assert trend([b, a]).startswith("undecided")  # a zero-width interval does not decide
    c = Estimate([1.4, 2.6, 3.5], [0, 1, 2])  # differences 0.4, 0.6, 0.5
    assert trend([c, a]) == "decreasing"  # decided although the values' ranges overlap
    noisy = Estimate([1.0, 3.0, 1.2], [0, 1, 2])
    assert trend([a, noisy]).startswith("undecided")
    assert trend([3.0, 2.0, 1.0]) == "decreasing"


def test_merge_values_and_missing_keys():
    merged = merge_values([{"a": 0.1, "n": 5, "s": "x", "l": [1.0, 2.0]},
                           {"a": 0.3, "n": 5, "s": "x", "l": [3.0, 4.0]}], [0, 1])
    assert isinstance(merged["a"], Estimate) and float(merged["a"]) == pytest.approx(0.2)
    assert merged["n"] == 5 and merged["s"] == "x"
    assert [float(v) for v in merged["l"]] == [2.0, 3.0]
    with pytest.raises(KeyError, match="b"):
        merge_values([{"a": 1.0, "b": 2.0}, {"a": 1.0}], [0, 1])
    records = [{"cell": {"task": "t", "seed": s}, "result": {"v": float(s)}} for s in (2, 0, 1)]
    (one,) = merge_seeds(records)
    assert one["cell"] == {"task": "t"} and one["seeds"] == [0, 1, 2]
    assert one["result"]["v"].values == (0.0, 1.0, 2.0)


def test_a_results_own_settings_record_may_differ_in_keys_between_versions():
    """Two code versions measured the same flip rate but recorded other settings fields (the
    run's seeds 0–4 and 5–9 of Table 2): the values merge, each seed's record is kept, and any
    other field with other keys still refuses."""
    old = {"flip_rate": 0.3, "settings": {"ridge": 1e-3, "retrain": None}}
    new = {"flip_rate": 0.5, "settings": {"estimator": {"ridge": 1e-3}, "seed": 0}}
    merged = merge_values([old, new], [4, 5])
    assert float(merged["flip_rate"]) == pytest.approx(0.4)
    assert merged["settings"] == {"per_seed": {"4": old["settings"], "5": new["settings"]}}
    same = merge_values([old, {**old, "flip_rate": 0.1}], [0, 1])
    assert same["settings"]["ridge"] == 1e-3
    with pytest.raises(KeyError, match="result.stability: keys differ"):
        merge_values([{"stability": {"a": 1.0}}, {"stability": {"b": 1.0}}], [0, 1])


def test_seed_offset_reaches_data_network_training_and_attack():
    s = load_preset("paper").experiments["flip_rates"]
    moved = reseeded(s, 3)
    assert [t.seed for t in moved.tasks] == [t.seed + 3 for t in s.tasks]  # data subsets
    assert moved.model.seed == s.model.seed + 3  # network initialisation
    assert moved.train.seed == s.train.seed + 3  # mini-batch order
    assert moved.attack.seed == s.attack.seed + 3  # PGD's random start
    assert [t.label for t in moved.tasks] == [t.label for t in s.tasks]  # cells still match


def test_paper_preset_is_the_calibrated_point(tmp_path):
    preset = load_preset("paper")
    assert preset.seeds == (0, 1, 2, 3, 4) and preset.seeds_of("ntk_distance") == (0, 1, 2)
    for name, s in preset.experiments.items():
        if hasattr(s, "train"):
            assert (s.train.l2_to_init, s.train.l2_convention, s.train.epochs) == (0.0, "sum", 100)
            assert (s.model.init_scale, s.model.dtype, s.model.width) == (1.0, "float32", 1024)
        # adversarial training: 10,000 points (PGD-7 in every step; stated in the preset)
        n_train = 10000 if name in ("adversarial_training", "robust_evaluation",
                                    "adversarial_interventions") else None
        for t in getattr(s, "tasks", ()):
            assert (t.n_train, t.n_influence, t.n_test) == (n_train, 1000, 500), name
    seeds = {(j.experiment, j.cell["seed"]) for j in plan(preset, tmp_path)}
    assert {s for e, s in seeds if e == "ntk_distance"} == {0, 1, 2}
    assert {s for e, s in seeds if e == "flip_rates"} == set(range(10))  # issue 32, item 7
    assert {s for e, s in seeds if e == "interventions"} == set(range(10))
    assert {s for e, s in seeds if e == "flip_controls"} == set(SEEDS)
    quick = load_preset("quick")
    assert quick.seeds == (0, 1)
    assert all(s.train.l2_to_init == 0.0 for s in quick.experiments.values() if hasattr(s, "train"))
    assert len(load_preset("sensitivity").seeds) >= 3


def test_with_seeds_overrides_every_list(tmp_path):
    preset = load_preset("paper").with_seeds(2)
    assert preset.seeds == (0, 1) and preset.seeds_of("ntk_distance") == (0, 1)
    with pytest.raises(ValueError, match="^seeds: expected a positive number"):
        preset.with_seeds(0)


def test_bad_experiment_seeds(tmp_path):
    bad = tmp_path / "bad.toml"
    bad.write_text("[experiments.collapse]\nseeds = [1, 1]\n")
    with pytest.raises(ValueError, match=r"^collapse\.seeds: expected distinct seeds"):
        load_preset(str(bad))
    bad.write_text("[experiments.collapse]\nseeds = 3\n")
    with pytest.raises(ValueError, match=r"^collapse\.seeds: expected a list of integers"):
        load_preset(str(bad))


def test_every_section_merges_seeds_except_illustrations_and_per_instance_checks():
    assert {n: m.PER_SEED for n, m in EXPERIMENTS.items() if hasattr(m, "PER_SEED")} == {
        "influential": "first", "theory": "all"}


def test_where_a_claim_holds():
    from malleability.repro.experiments.sensitivity import where_it_holds

    assert where_it_holds([("a", "agrees"), ("b", "agrees")]) == "holds everywhere"
    assert where_it_holds([("a", "disagrees")]) == "fails everywhere"
    assert where_it_holds([("a", "agrees"), ("b", "inconclusive"), ("c", "disagrees")]) == (
        "holds in a region: a; fails at: c; undecided elsewhere")
    assert where_it_holds([("a", "inconclusive")]).startswith("undecided")


def test_sensitivity_section_with_one_architecture_reports_no_gap(tmp_path):
    from malleability.repro.blocks import Table, Text
    from malleability.repro.experiments import sensitivity

    def record(model, rate, seed):
        return {"cell": {"task": "mnist", "model": model, "attack": "pgd", "axis": "calibrated",
                         "value": "-", "seed": seed}, "result": {"flip_rate": rate}}

    only_relu = merge_seeds([record("relu", 0.2 + 0.01 * s, s) for s in range(3)])
    blocks = sensitivity.section(only_relu, tmp_path)
    assert len(blocks) == 1 and isinstance(blocks[0], Text) and "both" in blocks[0].text
    both = merge_seeds([record(m, r + d * s, s) for s in range(3)
                        for m, r, d in (("relu", 0.2, 0.01), ("attn", 0.5, 0.03))])
    summary = next(b for b in sensitivity.section(both, tmp_path) if isinstance(b, Table))
    assert summary.rows[0][-1] == "holds everywhere"
    assert (tmp_path / "sensitivity_gap.png").exists()


def test_table5_rows_say_how_many_seeds_curated_and_transformed_hold():
    """Table 5's seeds land per intervention (Transformed seeds 5–9 first): each row says how
    many seeds its Curated and Transformed values rest on."""
    def cell(intervention: str, seed: int) -> dict:
        acc = {"1": 0.9 + seed / 100, "10": 0.95, "100": 0.97}
        return {"cell": {"task": "mnist", "model": "relu", "intervention": intervention,
                         "seed": seed},
                "result": {"accuracy_by_epoch": acc, "baseline_accuracy_by_epoch": acc,
                           "flip_rate": 0.3 + seed / 100}}

    records = merge_seeds([cell("curated", s) for s in range(3)]
                          + [cell("transformed", s) for s in range(5)])
    rows = table5(records)
    assert [r[2] for r in rows] == ["1", "10", "100", "PGD flip rate (retrained on Transformed)"]
    assert {r[-1] for r in rows} == {"3 / 5"}
    assert rows[0][3].startswith("92") and rows[0][4].startswith("91")  # B over 5 seeds, C 3
    assert rows[-1][5].startswith("32")  # the Transformed flip rate's mean over its 5 seeds


def test_seeds_phrase_counts_the_seeds_of_merged_records() -> None:
    assert seeds_phrase({1}) == "1 seed"
    assert seeds_phrase({2, 1}) == "1–2 seeds"
    assert seeds_phrase({10}) == "10 seeds"
    assert seeds_phrase({5, 7, 10}) == "5–10 seeds"
