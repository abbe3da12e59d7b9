"""docs/audit.md carries the worked example's tables exactly as docs/audit_realistic.py
generates them from docs/audit_realistic.json, so no number in them is typed by hand."""

from __future__ import annotations

import importlib.util
from pathlib import Path

DOCS = Path(__file__).parents[1] / "docs"


def test_the_worked_example_tables_are_generated_from_its_json():
    spec = importlib.util.spec_from_file_location("audit_realistic",
                                                  DOCS / "audit_realistic.py")
    realistic = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(realistic)
    doc = (DOCS / "audit.md").read_text(encoding="utf-8")
    begin, end = "<!-- begin audit_realistic -->\n", "<!-- end audit_realistic -->"
    assert doc[doc.index(begin) + len(begin):doc.index(end)] == realistic.tables()
