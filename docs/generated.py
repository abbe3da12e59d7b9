"""The tables of docs/reproduction.md that are generated from the committed cells, so that no
number in them is typed by hand:

- docs/claims.md: the claims table that opens the report of docs/runs/paper (sensitivity
  from docs/runs/sensitivity beside it);
- docs/spectrum_kappa.md: κ_eff and the width threshold per task and n (the seeds each mean
  is over listed);
- docs/collapse.md: the mean pairwise cosine of Figure 7 per task and feature map;

and docs/verdict_changes.md, docs/interval_coverage.md and docs/c4_split.md (written by
docs/verdict_changes.py, docs/interval_coverage.py and docs/c4_split.py). Each is spliced into
docs/reproduction.md between ``<!-- begin NAME -->`` and ``<!-- end NAME -->``;
tests/test_claims.py checks that the doc carries the files verbatim.

Run from the repository root: ``PYTHONPATH=src python docs/generated.py`` (reads the runs,
writes nothing under docs/runs; about a minute).
"""

from __future__ import annotations

import math
from pathlib import Path

from malleability.repro.claims import claims_section, section_records
from malleability.repro.experiments import EXPERIMENTS
from malleability.repro.experiments.collapse import KINDS
from malleability.repro.loading import load_run
from malleability.repro.blocks import Block, Table, fmt, group
from malleability.repro.report import to_markdown
from malleability.repro.seeds import combine

DOCS = Path(__file__).parent
RUNS = DOCS / "runs"
SPLICED = ("claims.md", "spectrum_kappa.md", "collapse.md", "verdict_changes.md",
           "interval_coverage.md", "c4_split.md")


def spectrum_table(records: list[dict]) -> Table:
    """κ_eff of the inputs and of linear attention, and log₁₀ m* (MLP-Attn), per task and n."""
    rows = []
    for (task, _), (record, *_) in group(records, "task", "n").items():
        res = record["result"]
        rows.append([task, fmt(res["inputs"]["n"]), ", ".join(map(str, record["seeds"])),
                     fmt(res["inputs"]["kappa_effective"]),
                     fmt(res["attention"]["kappa_effective"]),
                     fmt(combine(math.log10, res["threshold_attention"]))])
    return Table(["task", "n", "seeds", "κ_eff (inputs)", "κ_eff (linear attention)",
                  "log₁₀ m* (MLP-Attn)"], rows)


def collapse_table(records: list[dict]) -> Table:
    """Mean pairwise cosine per task and feature map (5 digits: the attention maps differ
    from 1 only there)."""
    rows = [[task, fmt(record["result"]["n"]), ", ".join(map(str, record["seeds"])),
             *(fmt(record["result"]["collapse"][k], 5) for k in KINDS)]
            for (task,), (record, *_) in group(records, "task").items()]
    return Table(["task", "n", "seeds", *KINDS], rows)


def table_only(blocks: list[Block]) -> str:
    """The markdown of a section's tables (its heading and prose stay in the doc)."""
    return to_markdown([b for b in blocks if isinstance(b, Table)])


def splice(doc: str, name: str, text: str) -> str:
    begin, end = f"<!-- begin {name} -->\n", f"<!-- end {name} -->"
    if begin not in doc or end not in doc:
        raise ValueError(f"docs/reproduction.md: no {begin.strip()} … {end} markers")
    return doc[:doc.index(begin) + len(begin)] + text + doc[doc.index(end):]


def main() -> None:
    paper = load_run(RUNS / "paper")
    records = {name: section_records(EXPERIMENTS[name], paper.cells[name])
               for name in ("spectrum", "collapse")}
    (DOCS / "claims.md").write_text(table_only(claims_section(paper)), encoding="utf-8")
    (DOCS / "spectrum_kappa.md").write_text(
        to_markdown([spectrum_table(records["spectrum"])]), encoding="utf-8")
    (DOCS / "collapse.md").write_text(to_markdown([collapse_table(records["collapse"])]),
                                      encoding="utf-8")
    doc = (DOCS / "reproduction.md").read_text(encoding="utf-8")
    for name in SPLICED:
        doc = splice(doc, name, (DOCS / name).read_text(encoding="utf-8"))
    (DOCS / "reproduction.md").write_text(doc, encoding="utf-8")


if __name__ == "__main__":
    main()
