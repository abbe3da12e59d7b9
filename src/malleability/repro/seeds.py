"""Per-seed cell results → one record per cell: the report merges a cell's per-seed results,
each measured number an :class:`~malleability.intervals.Estimate` (the mean over seeds), or a
:class:`~malleability.intervals.GeometricEstimate` (the geometric mean, interval on the log
scale) for the fields an experiment names in its ``GEOMETRIC``: positive quantities spanning
decades (κ, width thresholds, kernel distances), which its figures draw on a log axis.
"""

from __future__ import annotations

import re
from typing import Any

from ..intervals import CI_METHOD, Estimate, GeometricEstimate, combine, scale

__all__ = ["CI_METHOD", "CLIPPED", "LOG_SCALE", "Estimate", "combine", "merge_seeds",
           "merge_values", "metric_bounds", "scale"]

#: Result fields with a bounded range, by name: rates, overlaps and shares in [0, 1] (any field
#: whose name holds "accuracy" too, e.g. ``accuracy_by_epoch.10``), correlations in [−1, 1].
RATES = ("flip_rate", "top_k_overlap", "between_share", "top_share", "bottom_share",
         "square_only_breaks", "discordant")
CORRELATIONS = ("spearman", "cosine", "cosine_raw", "attention_cosine")
#: Where a cell's result records how it was measured (its attack, estimator, ridge …), not a
#: measurement: versions that record other fields there still measure the same quantity, so
#: seeds whose records differ in keys keep each seed's record (``per_seed``) instead of failing.
PROVENANCE = "result.settings"
#: How a caption names a GeometricEstimate's summary (an experiment's ``GEOMETRIC`` fields).
LOG_SCALE = "geometric mean over seeds, 95 % t interval of log₁₀ mapped back"
#: What the report says once about the printed intervals (:func:`metric_bounds`).
CLIPPED = ("The interval of a quantity with a bounded range (flip rates, top-K overlaps, "
           "shares and accuracies in [0, 100] % or [0, 1], Spearman ρ and cosines in [−1, 1]) "
           "is printed clipped to that range; verdicts use the interval itself.")


def field_name(where: str) -> str:
    """The name of the result field at path ``where`` (``result.ridges[0].flip_rate`` →
    ``flip_rate``): list indices and numeric keys such as an epoch skipped."""
    names = [n for n in re.sub(r"\[\d+\]", "", where).split(".") if not n.isdigit()]
    return names[-1] if names else ""


def metric_bounds(where: str) -> tuple[float, float] | None:
    """The range of the result field at path ``where`` by its name (:func:`field_name`):
    (0, 1) for a rate or share, (−1, 1) for a correlation; None otherwise."""
    name = field_name(where)
    if name in RATES or "accuracy" in name:
        return (0.0, 1.0)
    return (-1.0, 1.0) if name in CORRELATIONS else None


def merge_values(values: list[Any], seeds: list[int], where: str = "result",
                 geometric: tuple[str, ...] = ()) -> Any:
    """Per-seed results of one cell → one: dicts key by key (the same keys for every seed,
    else KeyError), lists element by element, floats → Estimate, ints and strings kept when
    equal over seeds (else Estimate / the distinct strings joined by " / "). A field named in
    ``geometric`` (:func:`field_name`; a dict so named: every value under it) whose values are
    all positive → GeometricEstimate; with a value ≤ 0 (which no log scale holds) it stays an
    Estimate. The result's own record of its settings (:data:`PROVENANCE`) with other keys in
    some seeds → ``{"per_seed": …}``."""
    first = values[0]
    if where == PROVENANCE and any(not isinstance(v, dict) or list(v) != list(first)
                                   for v in values):
        return {"per_seed": dict(zip(map(str, seeds), values, strict=True))}
    if isinstance(first, dict):
        keys = list(first)
        for v, s in zip(values, seeds, strict=True):
            if not isinstance(v, dict) or list(v) != keys:
                missing = set(keys) ^ set(v if isinstance(v, dict) else ())
                raise KeyError(f"{where}: keys differ for seed {s}: {sorted(map(str, missing))}")
        inner = (*geometric, *map(str, keys)) if field_name(where) in geometric else geometric
        return {k: merge_values([v[k] for v in values], seeds, f"{where}.{k}", inner)
                for k in keys}
    if isinstance(first, list):
        if any(not isinstance(v, list) or len(v) != len(first) for v in values):
            raise ValueError(f"{where}: expected lists of one length over seeds")
        return [merge_values([v[i] for v in values], seeds, f"{where}[{i}]", geometric)
                for i in range(len(first))]
    if all(v is None for v in values):
        return None
    if all(isinstance(v, str) for v in values):
        return " / ".join(dict.fromkeys(values))
    if all(isinstance(v, (bool, int)) for v in values) and len(set(values)) == 1:
        return first
    if all(v is None or isinstance(v, (int, float)) for v in values):
        positive = not any(v is not None and v <= 0 for v in values)
        kind = GeometricEstimate if positive and field_name(where) in geometric else Estimate
        return kind(values, seeds, metric_bounds(where))
    raise ValueError(f"{where}: expected values of one kind over seeds, got {values!r}")


def merge_seeds(records: list[dict], geometric: tuple[str, ...] = ()) -> list[dict]:
    """Cell records of several seeds → one record per cell (its parameters without the
    seed), ``result`` merged by :func:`merge_values` (the fields ``geometric`` on the log
    scale), ``seeds`` listing the seeds."""
    groups: dict[str, list[dict]] = {}
    for record in records:
        cell = {k: v for k, v in record["cell"].items() if k != "seed"}
        groups.setdefault(repr(sorted(cell.items())), []).append(record)
    merged = []
    for group in groups.values():
        group = sorted(group, key=lambda r: r["cell"].get("seed", 0))
        seeds = [r["cell"].get("seed", 0) for r in group]
        cell = {k: v for k, v in group[0]["cell"].items() if k != "seed"}
        merged.append({**group[0], "cell": cell, "seeds": seeds,
                       "result": merge_values([r["result"] for r in group], seeds,
                                              geometric=geometric)})
    return merged
