"""Print the calibration table (docs/reproduction.md) from the cell files beside this script:
test accuracy at epochs 1, 10, 100 per dataset, model and candidate setting, as a mean over
seeds with a 95 % t-interval where there are several seeds."""

import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np
from scipy import stats

PAPER_BASE = {("mnist", "relu"): (91.6, 97.8, 98.4), ("mnist", "attn"): (93.1, 99.3, 99.9),
              ("fashion-mnist", "relu"): (88.5, 93.9, 95.6),
              ("fashion-mnist", "attn"): (90.5, 95.9, 97.6),
              ("cifar10", "relu"): (65.3, 71.6, 73.1), ("cifar10", "attn"): (70.8, 77.1, 78.6)}


def cell(values: list[float]) -> str:
    v = 100 * np.asarray(values)
    if len(v) == 1:
        return f"{v[0]:.1f}"
    half = stats.t.ppf(0.975, len(v) - 1) * v.std(ddof=1) / np.sqrt(len(v))
    return f"{v.mean():.1f} ± {half:.1f} (n={len(v)})"


def main(folder: Path) -> None:
    groups = defaultdict(list)
    for path in sorted(folder.glob("*.json")):
        r = json.loads(path.read_text())
        groups[(r["dataset"], r["model"], r["l2"], r["init_scale"], r["epochs"])].append(r)
    print("| data | model | λ_reg (sum) | s | epochs run | acc @1 | acc @10 | acc @100 | "
          "paper @1 (Base) | paper @100 (Curated / Transformed) |")
    print("|---|---|---|---|---|---|---|---|---|---|")
    for (data, model, l2, s, _epochs), rs in sorted(groups.items()):
        acc = [r["test_accuracy"] for r in rs]
        at = [cell([a[e - 1] for a in acc]) if len(acc[0]) >= e else "—" for e in (1, 10, 100)]
        p = PAPER_BASE[(data, model)]
        print(f"| {data} | {'2L-ReLU' if model == 'relu' else 'MLP-Attn'} | {l2:g} | {s:g} | "
              f"{len(acc[0])} | {' | '.join(at)} | {p[0]} | {p[1]} / {p[2]} |")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else Path(__file__).parent)
