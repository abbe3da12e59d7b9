"""The theory experiment: cells on tiny settings, bounds reported as they come out (a failing
bound is reported as failing), and the ordering / monotonicity summaries on hand-made rows."""

import math
from pathlib import Path

import pytest
import torch
from scipy.stats import spearmanr

from malleability.bounds import BOUNDS, influence_shift_bounds
from malleability.repro.blocks import Table, Text
from malleability.repro.experiments import theory, theory_bounds
from malleability.repro.problem import RunContext
from malleability.repro.runner import load_preset

TINY = Path(__file__).parent / "data" / "tiny.toml"
F64 = torch.float64


@pytest.fixture(scope="module")
def tiny():
    return load_preset(str(TINY)).experiments["theory"]


def _record(cell: dict, result: dict, seed: int = 0) -> dict:
    return {"cell": {**cell, "seed": seed}, "result": result}


@pytest.mark.slow
def test_bounds_and_remedy_cells_run_and_report(tiny, tmp_path):
    ctx = RunContext(tmp_path, progress=False)
    cells = theory.cells(tiny)
    bounds = next(c for c in cells if c["part"] == "bounds" and c["model"] == "attn")
    remedy = next(c for c in cells if c["part"] == "remedy" and c["rank"] != theory.FULL)
    result = theory.run(tiny, bounds, ctx)
    assert [r["ridge"] for r in result["ridges"]] == list(tiny.ridges)
    assert len(result["gram_indices"]) == tiny.gram_points
    assert result["lipschitz_measured"] == pytest.approx(max(result["gram_change"]) / 0.3)
    for row in result["ridges"]:
        # the re-run attack reproduces measure_malleability's attacked set
        assert row["attack_max_perturbation"] == pytest.approx(row["max_perturbation"])
        assert row["attack_max_perturbation"] <= 0.3 + 1e-12
        assert 0.0 <= row["flip_rate"] <= 1.0
        assert set(row["bounds"]) == set(BOUNDS)
        # the two bounds that are theorems for any ΔK hold on the network's kernels
        assert row["bounds"]["upper_resolvent"]["holds"]
        assert row["bounds"]["lower_exact"]["holds"]
    remedy_result = theory.run(tiny, remedy, ctx)
    assert remedy_result["rank_used"] == remedy["rank"]
    # κ of the raw rank-k features is (λ₁/λ_k)³ (Remark 4.10)
    assert remedy_result["kappa_features"] == pytest.approx(remedy_result["kappa_predicted"],
                                                            rel=1e-6)
    blocks = theory.section([_record(bounds, result), _record(remedy, remedy_result)], tmp_path)
    assert any(isinstance(b, Table) for b in blocks)
    assert (tmp_path / "theory_bounds.png").exists()
    assert (tmp_path / "theory_bounds.svg").exists()
    assert (tmp_path / "theory_remedy_distance.svg").exists()
    # several seeds of a remedy cell make one row: the mean, with the per-seed values
    shifted = {**remedy_result, "flip_rate": remedy_result["flip_rate"] + 0.5}
    blocks = theory.section([_record(remedy, remedy_result, 0), _record(remedy, shifted, 1)],
                            tmp_path)
    table = next(b for b in blocks if isinstance(b, Table) and "Remark 4.10" in b.caption)
    assert len(table.rows) == 1
    assert table.rows[0][5].startswith(f"{100 * remedy_result['flip_rate'] + 25:.3g}")


def test_remedy_rows_summarise_kernel_distance_and_kappa_on_the_log_scale(tmp_path):
    """1 − cos(Θ_m, Θ_∞) and κ span decades over seeds: their summary is the geometric mean
    with a positive interval (as ntk_distance's), the function distance stays arithmetic."""
    cell = {"part": "remedy", "task": "t", "rank": 4, "width": 16}
    records = [_record(cell, {"function_distance_trained": f, "kernel_distance_trained": k,
                              "flip_rate": 0.5, "test_accuracy": 0.9,
                              "kappa_features_normalized": 10 * k, "kappa_features": 1 / k,
                              "kappa_predicted": 1 / k}, seed)
               for seed, (f, k) in enumerate([(1.0, 1e-3), (2.0, 1e-1), (3.0, 1e-2)])]
    blocks = theory.section(records, tmp_path)
    table = next(b for b in blocks if isinstance(b, Table) and "Remark 4.10" in b.caption)
    row = dict(zip(table.header, table.rows[0], strict=True))
    assert row["kernel dist."].startswith("0.01 [") and "[-" not in row["kernel dist."]
    assert row["(λ₁/λ_k)³"].startswith("100 [") and "[-" not in row["(λ₁/λ_k)³"]
    assert row["function dist."].startswith("2 [-")  # arithmetic: 2 ± 4.3 · 1/√3


def _diagonal_case(lipschitz: float, **kw) -> dict:
    """K = diag(2, 1) → K′ = diag(2.5, 1), Y = (1, 1), λ = 0.5: ‖α′ − α‖ = 1/2.5 − 1/3."""
    k = torch.diag(torch.tensor([2.0, 1.0], dtype=F64))
    k_new = torch.diag(torch.tensor([2.5, 1.0], dtype=F64))
    y = torch.tensor([1.0, 1.0], dtype=F64)
    args = {"eps": 0.1, "eps_z": 0.1, "moved": 1, "lipschitz": lipschitz,
            "lipschitz_analytic": 100.0, **kw}
    return influence_shift_bounds(k, k_new, y, 0.5, **args)


def test_a_failing_bound_is_reported_as_failing(tmp_path):
    # an L that understates the kernel change (‖ΔK‖ = 0.5 > L ε = 0.001): C.11 fails
    low = _diagonal_case(0.01)
    assert low["shift"] == pytest.approx(1 / 2.5 - 1 / 3)
    assert low["bounds"]["upper_measured"]["value"] == pytest.approx(0.001 * math.sqrt(2) / 0.25)
    assert not low["bounds"]["upper_measured"]["holds"]
    assert low["bounds"]["upper_measured"]["ratio"] > 1
    assert low["bounds"]["upper_analytic"]["holds"]
    # an L that overstates the change along α: the paper's C.2 form fails (1·√2/2.5² > shift)
    high = _diagonal_case(10.0)
    assert high["bounds"]["lower_paper"]["value"] == pytest.approx(math.sqrt(2) / 2.5**2)
    assert not high["bounds"]["lower_paper"]["holds"]
    for case in (low, high):  # the theorems hold whatever L is
        assert case["bounds"]["upper_resolvent"]["holds"]
        assert case["bounds"]["lower_exact"]["holds"]
    rows = [{"task": "t", "model": "relu", "seed": 0, "eps": 0.1, "ridge": 0.5,
             "flip_rate": 0.1, "sensitivity": {"measured": 1.0, "analytic": 2.0},
             "eps_z": 0.1, **case} for case in (low, high)]
    verdicts = theory_bounds.bound_verdicts(rows)
    assert verdicts["upper_measured"] == {"holds": 1, "fails": 1}
    assert verdicts["lower_paper"] == {"holds": 1, "fails": 1}
    assert verdicts["lower_exact"] == {"holds": 2, "fails": 0}
    record = _record({"part": "bounds", "task": "t", "model": "relu", "eps": 0.1},
                     {"lipschitz_measured": 0.01, "lipschitz_measured_l2": 0.01,
                      "lipschitz_analytic": 100.0, "gram_indices": [0], "ridges": [
                          {k: v for k, v in rows[0].items()
                           if k not in ("task", "model", "seed", "eps")}]})
    blocks = theory.section([record], tmp_path)
    upper = next(b for b in blocks if isinstance(b, Table) and "C.11 upper" in b.caption)
    assert "FAILS" in upper.rows[0][-3] and "holds" in upper.rows[0][-1]


def _row(task, model, ridge, sensitivity, flip, seed=0, eps=0.3):
    return {"task": task, "model": model, "seed": seed, "eps": eps, "ridge": ridge,
            "flip_rate": flip, "sensitivity": {"measured": sensitivity,
                                               "analytic": 10 * sensitivity}}


def test_ordering_counts_agreements_and_correlates_sensitivity_with_flip_rate():
    rows = [_row("a", "relu", 1e-3, 1.0, 0.10), _row("a", "attn", 1e-3, 10.0, 0.30),  # agree
            _row("a", "relu", 1e-1, 2.0, 0.20), _row("a", "attn", 1e-1, 1.5, 0.25),  # disagree
            _row("b", "relu", 1e-3, 3.0, 0.40), _row("b", "attn", 1e-3, 5.0, 0.05),  # disagree
            _row("b", "relu", 1e-3, 4.0, 0.50, seed=1),  # no MLP-Attn partner: not compared
            _row("c", "relu", 1e-3, 9.0, 0.9), _row("c", "attn", 1e-3, 1.0, 0.1)]  # agree
    result = theory_bounds.ordering(rows)
    assert (result["agree"], result["n"]) == (2, 4)
    assert [c["agree"] for c in result["comparisons"]] == [True, False, False, True]
    s = [r["sensitivity"]["measured"] for r in rows]
    f = [r["flip_rate"] for r in rows]
    assert result["spearman"] == pytest.approx(spearmanr(s, f).statistic)
    assert theory_bounds.ordering(rows, "analytic")["spearman"] == pytest.approx(result["spearman"])
    assert math.isnan(theory_bounds.ordering(rows[:1])["spearman"])


def test_monotonicity_counts_rises_of_the_flip_rate_with_ridge(tmp_path):
    rows = [_row("a", "relu", r, 1.0, f) for r, f in ((1.0, 0.1), (1e-3, 0.3), (1e-2, 0.2),
                                                      (1e-1, 0.25))]
    rows += [_row("a", "attn", r, 1.0, f) for r, f in ((1e-3, 0.5), (1e-1, 0.4), (1.0, 0.4))]
    result = {m["key"][1]: m for m in theory_bounds.monotonicity(rows)}
    assert result["relu"]["ridges"] == [1e-3, 1e-2, 1e-1, 1.0]
    assert result["relu"]["flip_rates"] == [0.3, 0.2, 0.25, 0.1]
    assert result["relu"]["violations"] == 1  # 0.2 → 0.25
    assert result["attn"]["violations"] == 0  # equal steps are not violations
    text = [b for b in theory_bounds.blocks([], [{**r, **_diagonal_case(1.0)} for r in rows],
                                             tmp_path) if isinstance(b, Text)]
    assert text[0].text.startswith("Corollary C.4, per seed: 1 of 5 λ step(s) raise")


def _bounds_record(task, model, eps, seed, flips, ridges=(1e-3, 1e-1, 1.0)):
    ridges = [{"ridge": r, "flip_rate": f} for r, f in zip(ridges, flips, strict=True)]
    return _record({"part": "bounds", "task": task, "model": model, "eps": eps},
                   {"ridges": ridges}, seed)


def test_c4_is_decided_per_model_and_eps_on_the_paired_change_over_seeds(tmp_path):
    """C.4 per (model, ε): the change of the flip rate from the smallest to the largest λ, paired
    by seed, with its t interval; a rise on any task disagrees, a fall on every task agrees."""
    # (task, model): per seed, the flip rate at the smallest and at the largest λ
    first_last = {("a", "relu"): [(0.30, 0.10), (0.32, 0.15), (0.29, 0.10)],  # −20, −17, −19
                  ("b", "relu"): [(0.40, 0.30), (0.41, 0.29), (0.40, 0.29)],  # −10, −12, −11
                  ("a", "attn"): [(0.10, 0.40), (0.12, 0.39), (0.13, 0.45)],  # +30, +27, +32
                  ("b", "attn"): [(0.30, 0.50), (0.30, 0.10), (0.30, 0.30)]}  # +20, −20, 0
    records = [_bounds_record(task, model, 0.1, seed, (first, 0.2, last))
               for (task, model), pairs in first_last.items()
               for seed, (first, last) in enumerate(pairs)]
    changes = {(r["task"], r["model"]): r for r in theory_bounds.ridge_changes(records)}
    assert changes["a", "relu"]["change"].values == pytest.approx((-20.0, -17.0, -19.0))
    # −18.67 ± t(0.975, 2)·s/√3 with s = 1.528: [−22.46, −14.87], below 0
    assert changes["a", "relu"]["change"].interval == pytest.approx((-22.46, -14.87), abs=0.01)
    assert changes["a", "relu"]["verdict"] == "agrees"
    assert changes["a", "attn"]["verdict"] == "disagrees"
    assert changes["b", "attn"]["change"].values == pytest.approx((20.0, -20.0, 0.0))
    assert changes["b", "attn"]["verdict"] == "inconclusive"
    split = theory_bounds.c4_split(list(changes.values()))
    assert split["relu", 0.1]["verdict"] == "agrees"
    assert split["attn", 0.1]["verdict"] == "disagrees"  # one task rises: C.4 fails there
    assert split["attn", 0.1]["tally"] == {"disagrees": 1, "inconclusive": 1}
    claims = {c.where: c for c in theory_bounds.c4_claims(records)}
    assert claims["MLP-Attn, ε = 0.1, 2 tasks"].verdict == "disagrees"
    assert "rises on 1/2 tasks" in claims["MLP-Attn, ε = 0.1, 2 tasks"].measured
    assert claims["2L-ReLU, ε = 0.1, 2 tasks"].measured.endswith(
        "falls on 2/2 tasks (-18.7 to -11 points)")


def test_bad_settings_fail_at_load(tmp_path):
    bad = tmp_path / "bad.toml"
    for text, message in (("models = [\"attn-softmax\"]", r"^theory\.models\[0\]: expected relu"),
                          ("epsilons = [1.5]", r"^theory\.epsilons\[0\]: expected a budget"),
                          ("ridges = [0.0]", r"^theory\.ridges\[0\]: expected a positive"),
                          ("remedy_tasks = [\"mnist\"]", r"^theory\.remedy_tasks\[0\]")):
        bad.write_text(f"[experiments.theory]\n{text}\n")
        with pytest.raises(ValueError, match=message):
            load_preset(str(bad))


def test_fast_gram_paths_equal_the_direct_kernels(tiny, tmp_path):
    """The search's kernels: MLP-Attn's front updated by its moved row equals the front rebuilt
    on the moved training set; 2L-ReLU's one moving row equals that row of the full kernel."""
    from malleability.ntk import empirical_ntk
    from malleability.repro.experiments.base import cell_problem
    from malleability.repro.problem import build_model

    ctx = RunContext(tmp_path, progress=False)
    cell = next(c for c in theory.cells(tiny) if c["part"] == "bounds")
    p = cell_problem(tiny.tasks, {**cell, "seed": 0}, ctx)
    flat = p.x_influence.flatten(1).double()
    moved = flat.clone()
    moved[2] = (moved[2] + 0.1).clamp(0, 1)
    attn = build_model("attn", p, tiny.model).double()
    gram, row = theory_bounds._gram(attn, p)
    assert row is None
    x_all = p.x.index_put((p.influence_rows,), moved.reshape(-1, *p.x.shape[1:]))
    direct = attn.with_reference(attn.inputs(x_all))
    want = empirical_ntk(direct, direct.inputs(moved.reshape(-1, *p.x.shape[1:])))
    torch.testing.assert_close(gram(moved), want, rtol=1e-10, atol=1e-12)
    relu = build_model("relu", p, tiny.model)
    gram, row = theory_bounds._gram(relu, p)
    torch.testing.assert_close(row(moved[2], 2), gram(moved)[2], rtol=1e-12, atol=1e-14)
