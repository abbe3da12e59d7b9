"""Every verdict that changed between two builds of the same runs' reports: the verdict
columns of report.md built by two versions of the code, compared table by table and row by
row. Three comparisons are recorded: the percentile bootstrap (the code before issue 32) against
the Student-t interval (``--name verdict_changes``); the t interval against the t interval
with the rule that fewer than 3 seeds, or the same value in every seed, never decide a verdict
(``--name verdict_changes_seeds``); and the arithmetic mean against the geometric summary (t
interval of log₁₀) of the positive quantities spanning decades that each experiment names in
its ``GEOMETRIC`` (κ, width thresholds, kernel distances; ``--name verdict_changes_geometric
--claims``, on the paper run, whose cells alone hold these quantities).

Run (from the repository root; never build a report inside docs/runs):

    cp -r docs/runs/paper /tmp/old/paper; cp -r docs/runs/paper /tmp/new/paper  # and sensitivity
    (old checkout) malleability report /tmp/old/paper   # ... and /tmp/old/sensitivity
    (this checkout) malleability report /tmp/new/paper  # ... and /tmp/new/sensitivity
    python docs/verdict_changes.py /tmp/old /tmp/new paper sensitivity --name NAME

Writes docs/NAME.json (every changed verdict cell) and docs/NAME.md (the same as a markdown
table, which docs/reproduction.md includes). Tables without a verdict column, tables only the
new build has, and the claims table (its verdicts are mostly copies of the sections' rows;
``--claims`` compares it too) are not compared; rows are matched by their identifying cells
where the two builds differ in rows.
"""

from __future__ import annotations

import argparse
import json
import re
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).parent
#: Columns that hold a verdict decided by an interval.
VERDICT = re.compile(r"verdict|vs paper|where it holds|points agreeing")
#: Columns that hold the interval a row's verdict is decided by, where the table has one.
DECIDED_BY = ("MLP-Attn − 2L-ReLU (points)", "ours", "flip rate change (points, paired)",
              "gap (points)")


@dataclass
class Table:
    section: str
    caption: str
    header: list[str]
    rows: list[list[str]]


def _cells(line: str) -> list[str]:
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", line.strip())[1:-1]]


def tables(markdown: str) -> list[Table]:
    """The tables of a report.md, each with its section heading and caption."""
    found, section, caption, lines = [], "", "", markdown.splitlines()
    i = 0
    while i < len(lines):
        line = lines[i]
        if line.startswith("## "):
            section = re.sub(r"^## (\d+\. )?", "", line)
        elif line.startswith("*") and line.endswith("*"):
            caption = line.strip("*")
        elif line.startswith("| ") and i + 1 < len(lines) and lines[i + 1].startswith("|---"):
            header, rows = _cells(line), []
            i += 2
            while i < len(lines) and lines[i].startswith("|"):
                rows.append(_cells(lines[i]))
                i += 1
            found.append(Table(section, caption, header, rows))
            continue
        i += 1
    return found


def _label(header: list[str], old: list[str], new: list[str]) -> str:
    """The row's identifying cells: the leading ones equal in both builds and holding no
    interval."""
    label = []
    for name, a, b in zip(header, old, new, strict=True):
        if a != b or "[" in a or VERDICT.search(name):
            break
        label.append(a)
    return " | ".join(label)


def _interval(header: list[str], row: list[str]) -> str:
    """The cell the row's verdict is decided by, or every cell that holds an interval."""
    for name in DECIDED_BY:
        if name in header:
            return row[header.index(name)]
    return "; ".join(f"{h}: {c}" for h, c in zip(header, row, strict=True) if "[" in c)


def _keyed(found: list[Table]) -> dict[tuple, Table]:
    """Tables by (section, header, occurrence): captions may be reworded between builds."""
    keyed: dict[tuple, Table] = {}
    for table in found:
        key = (table.section, tuple(table.header))
        n = sum(k[:2] == key for k in keyed)
        keyed[(*key, n)] = table
    return keyed


def _row_key(header: list[str], row: list[str]) -> tuple[str, ...]:
    """A row's identifying cells: the leading ones before the first verdict column or the
    first cell holding an interval."""
    key = []
    for name, cell in zip(header, row, strict=True):
        if "[" in cell or VERDICT.search(name):
            break
        key.append(cell)
    return tuple(key)


def _pairs(run: str, key: tuple, old: Table, new: Table) -> list[tuple[list[str], list[str]]]:
    """The rows of the two builds of one table, paired: in order where the counts agree, else
    by :func:`_row_key` (rows only one build has are left out)."""
    if len(new.rows) == len(old.rows):
        return list(zip(old.rows, new.rows, strict=True))
    by_key = {_row_key(new.header, row): row for row in new.rows}
    if len(by_key) != len(new.rows):
        raise ValueError(f"{run}: table {key[:2]} differs in rows and its rows have no key")
    return [(a, by_key[k]) for a in old.rows if (k := _row_key(old.header, a)) in by_key]


def changes(old_md: str, new_md: str, run: str, claims: bool = False) -> list[dict]:
    """Every verdict cell that differs between the two builds of one run's report (module
    docstring: which tables are compared; ``claims``: the claims table too)."""
    old_tables, new_tables = _keyed(tables(old_md)), _keyed(tables(new_md))
    out = []
    for key, old in old_tables.items():
        columns = [j for j, name in enumerate(old.header) if VERDICT.search(name)]
        if not columns or (old.section == "Claims" and not claims):
            continue
        new = new_tables.get(key)
        if new is None:
            raise ValueError(f"{run}: table {key[:2]} differs in layout between the builds")
        for a, b in _pairs(run, key, old, new):
            for j in columns:
                if a[j] != b[j]:
                    out.append({"run": run, "section": old.section, "table": new.caption,
                                "row": _label(old.header, a, b), "column": old.header[j],
                                "old_verdict": a[j], "old_interval": _interval(old.header, a),
                                "new_verdict": b[j], "new_interval": _interval(new.header, b)})
    return out


def _md(text: str) -> str:
    return text.replace("|", "\\|")


def markdown(rows: list[dict]) -> str:
    lines = ["| run | section | row | column | old verdict | old interval | new verdict | "
             "new interval |", "|---|---|---|---|---|---|---|---|"]
    lines += ["| " + " | ".join(_md(r[k]) for k in ("run", "section", "row", "column",
                                                    "old_verdict", "old_interval",
                                                    "new_verdict", "new_interval")) + " |"
              for r in rows]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("old", type=Path, help="folder of the old code's built run copies")
    parser.add_argument("new", type=Path, help="folder of the new code's built run copies")
    parser.add_argument("runs", nargs="+", help="run folder names under both (paper, ...)")
    parser.add_argument("--name", default="verdict_changes",
                        help="the output files' name under docs/ (without .json / .md)")
    parser.add_argument("--claims", action="store_true",
                        help="compare the claims table too")
    args = parser.parse_args()
    rows = [change for run in args.runs
            for change in changes((args.old / run / "report.md").read_text(encoding="utf-8"),
                                  (args.new / run / "report.md").read_text(encoding="utf-8"),
                                  run, args.claims)]
    (HERE / f"{args.name}.json").write_text(
        json.dumps({"changed": len(rows), "changes": rows}, indent=1, ensure_ascii=False) + "\n",
        encoding="utf-8")
    (HERE / f"{args.name}.md").write_text(markdown(rows), encoding="utf-8")
    print(f"{len(rows)} verdicts changed")


if __name__ == "__main__":
    main()
