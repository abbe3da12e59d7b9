"""The claims table that opens the report: built from the experiments' ``paper_claims``, its
sensitivity column from the matching sweep, placed before the contents and the sections; and
the copy of it in docs/reproduction.md is the generated one."""

from __future__ import annotations

import dataclasses
import importlib.util
import shutil
from pathlib import Path

import pytest

from malleability.bounds import BOUNDS
from malleability.repro import figures
from malleability.repro.blocks import sweep_summary
from malleability.repro.claims import HEADER, claims_table, run_claims
from malleability.repro.experiments import EXPERIMENTS, collapse
from malleability.repro.loading import Run, load_run
from malleability.repro.report import write_report
from malleability.repro.seeds import Estimate, merge_seeds
from malleability.repro.store import cell_name, settings_key, write_cell

RUN = Path(__file__).parent / "data" / "report_run"
DOCS = Path(__file__).parents[1] / "docs"
#: The generated files docs/generated.py splices into docs/reproduction.md (its own list).
_SPEC = importlib.util.spec_from_file_location("generated", DOCS / "generated.py")
_GENERATED = importlib.util.module_from_spec(_SPEC)
_SPEC.loader.exec_module(_GENERATED)
SPLICED = _GENERATED.SPLICED


def _flip(model: str, rate: float, seed: int, **cell: object) -> dict:
    return {"cell": {"task": "mnist", "model": model, "attack": "pgd", "seed": seed, **cell},
            "result": {"flip_rate": rate, "spearman": 0.5, "top_k_overlap": 0.5,
                       "n_selected": 10, "test_accuracy": 0.9}}


def _sweep(model: str, rate: float, seed: int, axis: str, value: object) -> dict:
    return _flip(model, rate, seed, axis=axis, value=value)


# the gap is +30, 31, 32 points by seed: 31 ± t(0.975, 2)·1/√3 = [28.5, 33.5]
FLIPS = [_flip(m, r + d * s, s) for s in range(3)
         for m, r, d in (("relu", 0.1, 0.01), ("attn", 0.4, 0.02))]
# the gap is +30 to +32 points at the calibrated point and ε = 0.1, and straddles 0 at ε = 0.2
SWEEP = [_sweep(m, r + d * s, s, "calibrated", "—") for s in range(3)
         for m, r, d in (("relu", 0.1, 0.01), ("attn", 0.4, 0.02))]
SWEEP += [_sweep(m, r + d * s, s, "eps", 0.1) for s in range(3)
          for m, r, d in (("relu", 0.1, 0.01), ("attn", 0.4, 0.02))]
SWEEP += [_sweep(m, r, s, "eps", 0.2) for s, (rr, ra) in enumerate([(0.1, 0.3), (0.3, 0.1),
                                                                     (0.2, 0.2)])
          for m, r in (("relu", rr), ("attn", ra))]


def test_report_opens_with_the_claims_then_the_contents(tmp_path: Path,
                                                      monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("line_panels", "bar_panels"):
        monkeypatch.setattr(figures, name, lambda path, *args, **kwargs: path)
    out = tmp_path / "run"
    shutil.copytree(RUN, out)
    markdown = write_report(out).read_text(encoding="utf-8")
    headings = [line for line in markdown.splitlines() if line.startswith("#")]
    assert headings[:4] == ["# Reproduction report: arXiv 2603.13085", "## Claims",
                            "## Contents", "## 1. Run summary"]
    claims = run_claims(load_run(out))
    lines = markdown.splitlines()
    start = lines.index("| " + " | ".join(HEADER) + " |")
    rows = lines[start + 2:lines.index("", start)]
    sweeps = [c for c in claims if c.key[0] in ("sensitivity", "width_sensitivity")]
    assert len(rows) == len(claims) - len(sweeps) > 0  # every claim, the sweeps as a column
    contents = markdown[markdown.index("## Contents"):markdown.index("## 1. Run summary")]
    for module in EXPERIMENTS.values():
        assert module.TITLE in contents
    page = (out / "report.html").read_text(encoding="utf-8")
    assert page.index("<h2>Claims</h2>") < page.index("<h2>Contents</h2>") < page.index(
        "<h2>1. Run summary</h2>")


def test_the_sensitivity_column_comes_from_the_sweep_of_the_same_claim(tmp_path: Path) -> None:
    paper, sweeps = tmp_path / "paper", tmp_path / "sensitivity"
    for folder, name, records in ((paper, "flip_rates", FLIPS), (sweeps, "sensitivity", SWEEP)):
        for record in records:
            write_cell(folder / name / f"{cell_name(record['cell'])}.json", {
                **record, "experiment": name, "settings": {}, "settings_hash": settings_key({}),
                "versions": {}, "device": "cpu", "timing": {"seconds": 1.0}})
    (sweeps / "settings.json").write_text('{"settings": {}}')
    (row,) = claims_table(load_run(paper))  # the sweep found beside the run
    assert row[3].endswith("(gap 31 [28.5, 33.5] points, paired)") and row[4] == "agrees"
    assert row[5] == "agrees at 2/3; undecided at 1/3 (eps = 0.2)"
    alone, swept = Run(paper, cells={"flip_rates": FLIPS}), load_run(sweeps)
    shutil.rmtree(sweeps)
    assert claims_table(alone)[0][5] == "—"
    assert claims_table(alone, swept)[0][5] == row[5]  # a sweep run passed in, not looked up


def test_sweep_summary_names_the_points_of_the_minority_verdicts() -> None:
    points = [("a", "agrees"), ("b", "disagrees"), ("c", "agrees"), ("d", "inconclusive")]
    assert sweep_summary(points) == "agrees at 2/4; disagrees at 1/4 (b); undecided at 1/4 (d)"
    assert sweep_summary([("a", "disagrees")]) == "disagrees at 1/1"


def test_linear_attention_near_collapse_disagrees_with_a13() -> None:
    def record(raw: float, linear: float, soft: float) -> list[dict]:
        return merge_seeds([{"cell": {"task": "mnist", "seed": s}, "result": {
            "n": 100, "collapse": {"raw": raw, "linear": linear + 0.001 * s,
                                   "softmax": soft - 1e-4 * s, "exponential": soft - 1e-4 * s}}}
            for s in range(3)])

    # MNIST: cosine 0.97 against 0.29 for the inputs closes 96 % of the way to 1
    verdicts = {c.key[2]: c.verdict for c in collapse.paper_claims(record(0.29, 0.97, 1.0))}
    assert verdicts == {"linear": "disagrees", "softmax": "agrees", "exponential": "agrees"}
    share = collapse.collapse_share(Estimate([0.97, 0.98], [0, 1]), 0.29)
    assert share.values == pytest.approx(((0.97 - 0.29) / 0.71, (0.98 - 0.29) / 0.71))
    diverse = {c.key[2]: c.verdict for c in collapse.paper_claims(record(0.29, 0.35, 0.5))}
    assert diverse == {"linear": "agrees", "softmax": "disagrees", "exponential": "disagrees"}


def test_the_docs_claims_table_is_the_generated_file() -> None:
    """docs/reproduction.md carries docs/claims.md verbatim between its markers (written by
    docs/generated.py from the committed runs), so no number in it is typed by hand."""
    doc = (DOCS / "reproduction.md").read_text(encoding="utf-8")
    for name in SPLICED:
        begin, end = f"<!-- begin {name} -->\n", f"<!-- end {name} -->"
        assert begin in doc and end in doc, name
        assert doc[doc.index(begin) + len(begin):doc.index(end)] == (
            DOCS / name).read_text(encoding="utf-8"), name


def _merged(cells: list[tuple[dict, dict]]) -> list[dict]:
    return merge_seeds([{"cell": {**cell, "seed": s}, "result": result}
                        for s, (cell, result) in enumerate(cells)])


def test_complexity_claim_needs_both_ends_above_the_middle() -> None:
    from malleability.repro.experiments import complexity

    def shares(low: float, high: float) -> list[float]:  # the ends, 8 middle groups the rest
        return [low, *[(1 - low - high) / 8] * 8, high]

    u = [shares(0.20, 0.22), shares(0.21, 0.20), shares(0.19, 0.23)]
    low, high = complexity.u_shape(u[0])  # plain numbers: 20 − 7.25, 22 − 7.25 points
    assert (low, high) == pytest.approx((12.75, 14.75))
    records = _merged([({"task": "t", "model": "attn"}, {"complexity_share": v}) for v in u])
    (claim,) = complexity.paper_claims(records)
    assert claim.verdict == "agrees" and claim.where == "t, MLP-Attn"
    lopsided = [shares(0.05, 0.3), shares(0.02, 0.31), shares(0.03, 0.29)]  # low end below
    records = _merged([({"task": "t", "model": "relu"}, {"complexity_share": v})
                       for v in lopsided])
    assert complexity.paper_claims(records)[0].verdict == "disagrees"


def test_landscape_claim_compares_the_relative_surface_distance_by_seed() -> None:
    from malleability.repro.experiments import landscape

    ntk = [[1.0, 2.0], [2.0, 1.0]]  # ‖L_NTK‖ = √10
    assert landscape.surface_difference([[1.0, 2.0], [2.0, 2.0]], ntk) == pytest.approx(
        1 / 10 ** 0.5)
    cells = []
    for seed, (relu, attn) in enumerate([(0.1, 0.5), (0.2, 0.7), (0.15, 0.6)]):
        for model, shift in (("relu", relu), ("attn", attn)):
            net = [[v + shift for v in row] for row in ntk]  # ‖L_net − L_NTK‖ = 2·shift
            cells.append({"cell": {"task": "t", "model": model, "seed": seed},
                          "result": {"network": net, "ntk": ntk}})
    (claim,) = landscape.paper_claims(merge_seeds(cells))
    assert claim.verdict == "agrees"  # MLP-Attn's surfaces differ more in every seed
    assert "MLP-Attn − 2L-ReLU 0.285 [" in claim.measured  # 2·0.45/√10 = 0.285


def test_influential_claim_is_an_illustration_without_a_verdict() -> None:
    from malleability.repro.experiments import influential

    def result(labels: list[str]) -> dict:
        return {"test_index": 0, "test_label": "5", "positive": {"labels": labels},
                "negative": {"labels": ["0", "1"]}}

    records = [{"cell": {"task": "t", "model": m, "seed": 0}, "result": result(labels)}
               for m, labels in (("relu", ["5", "5"]), ("attn", ["5", "3"]))]
    (claim,) = influential.paper_claims(records)
    assert claim.verdict == influential.ILLUSTRATION
    assert "2L-ReLU helpful 5 5 (2/2 with the test label)" in claim.measured
    assert "MLP-Attn helpful 5 3 (1/2" in claim.measured


def test_bound_claims_disagree_with_one_failing_row_and_report_the_slack() -> None:
    from malleability.repro.experiments import theory_bounds

    def row(shift_over_upper: float, holds: bool) -> dict:
        bounds = {name: {"value": 1.0, "holds": holds, "ratio": shift_over_upper}
                  for name in BOUNDS}
        return {"task": "t", "bounds": bounds}

    claims = theory_bounds.bound_claims([row(0.01, True), row(0.1, True)])
    upper = next(c for c in claims if c.key == ("theory", "bound", "upper_measured"))
    lower = next(c for c in claims if c.key == ("theory", "bound", "lower_exact"))
    assert upper.verdict == "agrees" and upper.measured == "holds in 2/2 rows; loose by 10 to 100×"
    assert lower.measured == "holds in 2/2 rows; loose by 0.01 to 0.1×"
    failing = theory_bounds.bound_claims([row(0.01, True), row(2.0, False)])
    assert {c.verdict for c in failing} == {"disagrees"}


def test_table2_changes_pair_the_raw_gap_with_the_excess_gap_or_say_not_yet_run() -> None:
    from malleability.repro.experiments import flip_controls

    seeds = [0, 1, 2]

    def rec(experiment: str, cell: dict, values: tuple[float, ...]) -> dict:
        return {"experiment": experiment, "cell": cell, "seeds": seeds,
                "result": {"flip_rate": Estimate(values, seeds)}}

    records = []
    for task in ("mnist", "digits"):
        for model, flips in (("relu", (0.30, 0.31, 0.33)), ("attn", (0.50, 0.55, 0.52))):
            records += [rec("flip_rates", {"task": task, "model": model, "attack": a}, flips)
                        for a in ("fgsm", "pgd", "mim")]
    # controls on mnist only: 2L-ReLU's random flips as much as PGD, MLP-Attn's much less
    records += [rec("flip_controls", {"task": "mnist", "model": "relu"}, (0.30, 0.30, 0.32)),
                rec("flip_controls", {"task": "mnist", "model": "attn"}, (0.10, 0.12, 0.11))]
    rows = {(r[0], r[1]): r for r in flip_controls.table2_changes(records)}
    assert rows["digits", "PGD"][-1] == flip_controls.NOT_RUN
    raw_gap, raw, seeds, ex_gap, judged, change = rows["mnist", "PGD"][2:]
    assert raw == "agrees" and seeds == "0, 1, 2"
    # excess gap per seed: (0.5 − 0.1) − (0.3 − 0.3) = 40, 43 − 1 = 42, 41 − 1 = 40 points
    assert ex_gap.startswith("40.7 [") and judged == "agrees"  # ties between seeds are kept
    assert change == "unchanged"


def test_strong_summary_compares_only_rows_with_three_seeds() -> None:
    """A row on one seed reads "undecided" for want of seeds, not because of the worst case:
    docs/generated.py names it and leaves it out of the counts of changed decisions."""
    from malleability.repro.blocks import Table

    strong = Table(["task", "model", "ε", "more robust than standard", "vs paper (rises)"],
                   [["mnist", "2L-ReLU", "0.1", "yes (+63.0 [59.7, 66.3] points)", "disagrees"],
                    ["cifar10", "2L-ReLU", "0.1", "undecided (+1.0 points)", "too few seeds"]])
    gradient = Table(["task", "model", "ε", "robust vs standard", "vs paper (rises)"],
                     [["mnist", "2L-ReLU", "0.1", "yes (+60 [58, 62] points)", "disagrees"],
                      ["cifar10", "2L-ReLU", "0.1", "no (+0.6 [0.0, 1.2] points)",
                       "not tested"]])
    records = [{"cell": {"task": "mnist", "model": "relu", "eps": 0.1},
                "result": {net: {"square_only_breaks": 0.002}
                           for net in ("standard", "adversarial")}}]
    text = _GENERATED.strong_text(strong, gradient, records).text
    assert text.startswith("1 rows with at least 3 seeds so far (mnist; 1 more on fewer than "
                           "3 seeds, left out of the two comparisons after this: cifar10 "
                           "2L-ReLU 0.1)")
    assert "matches the gradient-only one (Table 3 above) in 1 of 1 rows." in text
    assert text.endswith("Table 3's verdict is unchanged in 1 of 1 rows.")
    assert "0.2 % of the test points" in text
    complete = _GENERATED.strong_text(strong, gradient, records, complete=True).text
    assert complete.startswith("1 rows with at least 3 seeds (mnist; 1 more")


def test_numerics_tables_take_the_worst_solve_over_seeds() -> None:
    from malleability.repro.experiments.numerics import a9_table, top_k_table

    def stability(eig: float, residual: float) -> dict:
        return {"min_eigenvalue": eig, "condition_number": 1 / eig,
                "inversion_residual": residual, "symmetry_error": 0.0}

    cells = [({"task": "t", "model": "relu", "attack": "pgd"},
              {"stability": stability(0.1, 1e-12), "perturbed_stability": stability(e, r),
               "top_k_overlap": k, "flip_rate": 0.3, "spearman": 0.9})
             for e, r, k in ((0.05, 1e-13, 0.5), (0.02, 1e-5, 0.6), (0.04, 1e-12, 0.7))]
    records = _merged(cells)
    (row,) = a9_table(records, "attack", "c").rows
    assert row == ["t", "2L-ReLU", "pgd", "0.02", "50", "1e-5", "0", "no"]  # 1e-5 ≥ 1e-6
    (top,) = top_k_table(records, "attack", "c").rows
    assert top[3].startswith("60 [35.2, 84.8]")


def test_seed_changes_lists_the_claims_the_added_seeds_decide() -> None:
    """Seeds 0–4 straddle 0 (gaps 30, −10, 30, −10, 10 points: inconclusive); with seeds 5–9
    (gaps of 20) the ten-seed t interval [4.7, 25.3] excludes 0, so the row is listed."""
    gaps = [0.3, -0.1, 0.3, -0.1, 0.1, *[0.2] * 5]
    cells = [_flip(m, 0.3 + (g if m == "attn" else 0.0), s)
             for s, g in enumerate(gaps) for m in ("relu", "attn")]
    run = Run(Path("run"), cells={"flip_rates": cells})
    text, table = _GENERATED.seed_changes(run, ("flip_rates",))
    assert text.text.startswith("Of the 1 claims rows of `flip_rates`, 1 change verdict")
    [row] = table.rows
    assert row[1] == "mnist, PGD" and (row[3], row[5]) == ("inconclusive", "agrees")
    assert "gap 15 [4.74, 25.3] points" in row[4]
    same = Run(Path("run"), cells={"flip_rates": [c for c in cells if c["cell"]["seed"] < 5]})
    assert _GENERATED.seed_changes(same, ("flip_rates",))[1].rows == []


def test_progress_counts_each_experiments_cells_per_recorded_device() -> None:
    """Each cell counts once, under the device its file records ("cuda:0" is CUDA); a cell
    without a device counts in neither column; the plan comes from settings.json: the fixture
    has seeds 0–2, flip_rates 2 tasks × 2 models × 2 attacks and spectrum 2 tasks × 2 sizes."""
    run = load_run(RUN)
    planned, spectrum = 2 * 2 * 2 * 3, 2 * 2 * 3
    devices = ["cpu", "cuda:0", "cuda", "cpu", None]
    cells = [{**_flip("relu", 0.1, s), **({} if d is None else {"device": d})}
             for s, d in enumerate(devices)]
    table = _GENERATED.progress_table(dataclasses.replace(run, cells={"flip_rates": cells}))
    rows = {row[0]: row for row in table.rows}
    assert rows["`flip_rates`"] == ["`flip_rates`", "5", str(planned), f"{planned - 5} left",
                                    "2", "2"]
    assert rows["`spectrum`"][1:] == ["0", str(spectrum), f"{spectrum} left", "0", "0"]
