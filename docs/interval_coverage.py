"""Coverage of the 95 % interval of a mean over k seeds, for normal seed values: the Student-t
interval the report uses (:func:`malleability.intervals.t_interval`) against the percentile
bootstrap it replaced (``scipy.stats.bootstrap``, 9 999 resamples).

Run: ``PYTHONPATH=src python docs/interval_coverage.py`` (about a minute); writes
docs/interval_coverage.json and its table docs/interval_coverage.md (spliced into
docs/reproduction.md by docs/generated.py). Both intervals are invariant
to the mean and scale of the data, so one normal law (mean 0, sd 1) stands for all.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from scipy import stats

from malleability.intervals import t_interval

SEEDS_PER_SAMPLE = (2, 3, 5, 10)
REPLICATES = 10_000
RESAMPLES = 9999
CHUNK = 500
OUT = Path(__file__).with_suffix(".json")


def bootstrap_bounds(samples: np.ndarray, seed: int) -> np.ndarray:
    """The replaced method's (low, high) per row of ``samples``."""
    rows = []
    for start in range(0, len(samples), CHUNK):
        ci = stats.bootstrap((samples[start:start + CHUNK],), np.mean, axis=-1,
                             method="percentile", n_resamples=RESAMPLES, vectorized=True,
                             random_state=seed + start).confidence_interval
        rows.append(np.stack([ci.low, ci.high], axis=1))
    return np.concatenate(rows)


def coverage(bounds: np.ndarray) -> float:
    """The share of rows (low, high) that contain the true mean 0."""
    return float(np.mean((bounds[:, 0] <= 0.0) & (0.0 <= bounds[:, 1])))


def main() -> None:
    table = []
    for k in SEEDS_PER_SAMPLE:
        samples = np.random.default_rng(k).normal(0.0, 1.0, size=(REPLICATES, k))
        student = np.array([t_interval(row) for row in samples])
        table.append({"seeds": k, "student_t": coverage(student),
                      "percentile_bootstrap": coverage(bootstrap_bounds(samples, k))})
    OUT.write_text(json.dumps({"nominal": 0.95, "replicates": REPLICATES,
                               "bootstrap_resamples": RESAMPLES, "coverage": table},
                              indent=1) + "\n")
    lines = ["| seeds k | Student-t | percentile bootstrap |", "|---|---|---|"]
    lines += [f"| {r['seeds']} | {r['student_t']:.1%} | {r['percentile_bootstrap']:.1%} |"
              for r in table]
    OUT.with_suffix(".md").write_text("\n".join(lines) + "\n")
    for row in table:
        print(f"k = {row['seeds']:2d}: Student-t {row['student_t']:.3f}, "
              f"percentile bootstrap {row['percentile_bootstrap']:.3f}")


if __name__ == "__main__":
    main()
