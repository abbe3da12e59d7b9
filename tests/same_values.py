"""Exact equality of JSON-like results for the run tests, with NaN equal to NaN."""

from __future__ import annotations

import math


def same(a, b) -> bool:
    """Exact equality of nested dicts, lists and scalars of the same types; NaN equals NaN."""
    if isinstance(a, float) and isinstance(b, float):
        return a == b or (math.isnan(a) and math.isnan(b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    return type(a) is type(b) and a == b
