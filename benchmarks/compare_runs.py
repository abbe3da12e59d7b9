"""Compare every numeric field of every cell of two run folders (e.g. a quick-preset run saved
before a refactor and one after): max absolute and relative difference per experiment.

    python benchmarks/compare_runs.py BEFORE AFTER [--rtol 1e-6]

Cells are matched by experiment and cell parameters (a ``seed`` parameter of 0, added when
seeds became part of a cell's identity, is ignored). Keys present on one side only are listed.
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path


def _cells(out: Path) -> dict[tuple[str, str], dict]:
    found = {}
    for path in sorted(out.glob("*/*.json")):
        if path.parent.name == "cache":
            continue
        record = json.loads(path.read_text())
        cell = {k: v for k, v in record["cell"].items() if not (k == "seed" and v == 0)}
        found[record["experiment"], json.dumps(cell, sort_keys=True)] = record["result"]
    return found


def _walk(a, b, path, diffs, only):
    if isinstance(a, dict) and isinstance(b, dict):
        for key in a.keys() | b.keys():
            if key not in a or key not in b:
                only.add(f"{path}.{key} ({'after' if key in b else 'before'} only)")
            else:
                _walk(a[key], b[key], f"{path}.{key}", diffs, only)
    elif isinstance(a, list) and isinstance(b, list):
        if len(a) != len(b):
            only.add(f"{path} (lengths {len(a)} vs {len(b)})")
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            _walk(x, y, f"{path}[{i}]", diffs, only)
    elif isinstance(a, (int, float)) and isinstance(b, (int, float)) and not isinstance(a, bool):
        if math.isnan(a) and math.isnan(b) or a == b:
            diffs.append((0.0, 0.0, path))
        else:
            d = abs(a - b)
            diffs.append((d, d / max(abs(a), abs(b)), path))
    elif a != b:
        only.add(f"{path} ({a!r} vs {b!r})")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("before", type=Path)
    parser.add_argument("after", type=Path)
    parser.add_argument("--rtol", type=float, default=1e-6)
    args = parser.parse_args()
    before, after = _cells(args.before), _cells(args.after)
    missing = sorted(set(before) ^ set(after))
    for key in missing:
        print("unmatched cell:", key, "(before only)" if key in before else "(after only)")
    per_experiment: dict[str, list] = {}
    notes: dict[str, set] = {}
    for key in sorted(set(before) & set(after)):
        diffs, only = per_experiment.setdefault(key[0], []), notes.setdefault(key[0], set())
        _walk(before[key], after[key], "result", diffs, only)
    print(f"{'experiment':<22} {'cells':>5} {'numbers':>8} {'max abs diff':>13} "
          f"{'max rel diff':>13}  worst field")
    worst_rel = 0.0
    for name, diffs in per_experiment.items():
        cells = sum(1 for k in set(before) & set(after) if k[0] == name)
        abs_max = max(diffs)
        rel_max = max(diffs, key=lambda d: d[1])
        worst_rel = max(worst_rel, rel_max[1])
        print(f"{name:<22} {cells:>5} {len(diffs):>8} {abs_max[0]:>13.3g} {rel_max[1]:>13.3g}  "
              f"{rel_max[2] if rel_max[1] else '—'}")
    for name, only in notes.items():
        for note in sorted(only)[:10]:
            print(f"  {name}: {note}")
    verdict = "within" if worst_rel <= args.rtol and not missing else "NOT within"
    print(f"{verdict} rtol {args.rtol:g} (max relative difference {worst_rel:.3g})")


if __name__ == "__main__":
    main()
