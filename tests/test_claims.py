"""The claims table that opens the report: built from the experiments' ``paper_claims``, its
sensitivity column from the matching sweep, placed before the contents and the sections; and
the copy of it in docs/reproduction.md is the generated one."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

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


def _flip(model: str, rate: float, seed: int, **cell: object) -> dict:
    return {"cell": {"task": "mnist", "model": model, "attack": "pgd", "seed": seed, **cell},
            "result": {"flip_rate": rate, "spearman": 0.5, "top_k_overlap": 0.5,
                       "n_selected": 10, "test_accuracy": 0.9}}


def _sweep(model: str, rate: float, seed: int, axis: str, value: object) -> dict:
    return _flip(model, rate, seed, axis=axis, value=value)


FLIPS = [_flip(m, r + 0.01 * s, s) for s in range(3) for m, r in (("relu", 0.1), ("attn", 0.4))]
# the gap is +30 points at the calibrated point and ε = 0.1, and straddles 0 at ε = 0.2
SWEEP = [_sweep(m, r + 0.01 * s, s, "calibrated", "—") for s in range(3)
         for m, r in (("relu", 0.1), ("attn", 0.4))]
SWEEP += [_sweep(m, r + 0.01 * s, s, "eps", 0.1) for s in range(3)
          for m, r in (("relu", 0.1), ("attn", 0.4))]
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
    assert row[3].endswith("(gap 30 [30, 30] points, paired)") and row[4] == "agrees"
    assert row[5] == "agrees at 2/3; undecided at 1/3 (eps = 0.2)"
    alone = Run(paper, cells={"flip_rates": FLIPS})
    shutil.rmtree(sweeps)
    assert claims_table(alone)[0][5] == "—"


def test_sweep_summary_names_the_points_of_the_minority_verdicts() -> None:
    points = [("a", "agrees"), ("b", "disagrees"), ("c", "agrees"), ("d", "inconclusive")]
    assert sweep_summary(points) == "agrees at 2/4; disagrees at 1/4 (b); undecided at 1/4 (d)"
    assert sweep_summary([("a", "disagrees")]) == "disagrees at 1/1"


def test_linear_attention_near_collapse_disagrees_with_a13() -> None:
    def record(raw: float, linear: float, soft: float) -> list[dict]:
        return merge_seeds([{"cell": {"task": "mnist", "seed": s}, "result": {
            "n": 100, "collapse": {"raw": raw, "linear": linear + 0.001 * s, "softmax": soft,
                                   "exponential": soft}}} for s in range(3)])

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
    for name in ("claims.md", "spectrum_kappa.md", "collapse.md", "verdict_changes.md",
                 "interval_coverage.md", "c4_split.md"):
        begin, end = f"<!-- begin {name} -->\n", f"<!-- end {name} -->"
        assert begin in doc and end in doc, name
        assert doc[doc.index(begin) + len(begin):doc.index(end)] == (
            DOCS / name).read_text(encoding="utf-8"), name
