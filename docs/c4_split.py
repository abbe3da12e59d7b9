"""Corollary C.4 (malleability falls as the ridge λ grows), split by architecture and ε, as the
theory experiment computes it (:func:`malleability.repro.experiments.theory_bounds.
ridge_changes`: the PGD flip rate at each λ of the bounds cells, mean over seeds, and its change
from the smallest to the largest λ, paired by seed, with its 95 % t interval and the verdict
against C.4, per task, architecture and ε; one verdict per architecture and ε over the tasks).

Run from the repository root: ``PYTHONPATH=src python docs/c4_split.py``; reads
docs/runs/paper/theory (writes nothing there) and writes docs/c4_split.json and the tables
docs/c4_split.md (spliced into docs/reproduction.md by docs/generated.py).
"""

from __future__ import annotations

import json
from pathlib import Path

from malleability.repro.experiments.theory_bounds import c4_blocks, c4_split, ridge_changes
from malleability.repro.loading import load_run
from malleability.repro.report import to_markdown

DOCS = Path(__file__).parent


def main() -> None:
    changes = ridge_changes(load_run(DOCS / "runs" / "paper").cells["theory"])
    rows = [{"task": r["task"], "model": r["model"], "eps": r["eps"], "ridges": r["ridges"],
             "seeds": r["seeds"], "flip_rate_mean": [float(f) for f in r["flip_rates"]],
             "change_points": float(r["change"]), "interval": r["change"].interval,
             "verdict": r["verdict"]} for r in changes]
    split = [{"model": m, "eps": e, "verdict": entry["verdict"], "tasks": entry["tally"]}
             for (m, e), entry in c4_split(changes).items()]
    (DOCS / "c4_split.json").write_text(json.dumps({"by_model_eps": split, "rows": rows},
                                                   indent=1) + "\n", encoding="utf-8")
    (DOCS / "c4_split.md").write_text(to_markdown(c4_blocks(changes)), encoding="utf-8")


if __name__ == "__main__":
    main()
