"""Strict JSON (RFC 8259) for results: no bare NaN / Infinity, which strict parsers reject.

Convention: a non-finite float is written as the object ``{"value": null, "nonfinite": R}``
with R one of ``"nan"``, ``"inf"``, ``"-inf"``; every finite number stays a number.
:func:`from_strict_json` turns those objects back into floats, so a write/read round trip is
exact and readers of the parsed values need no change. A dict whose keys are exactly
``value`` and ``nonfinite`` is reserved for the marker and refused on writing.

NumPy and torch scalars and arrays become numbers and (nested) lists, tuples become lists;
any other type raises TypeError naming where it sits (``$.key[3]``).
"""

from __future__ import annotations

import json
import math
from typing import Any

import numpy as np
import torch

_MARKER_KEYS = frozenset({"value", "nonfinite"})
_REASONS = {"nan": math.nan, "inf": math.inf, "-inf": -math.inf}


def nonfinite_reason(x: float) -> str | None:
    """``"nan"``, ``"inf"`` or ``"-inf"`` for a non-finite float, None for a finite one."""
    if math.isnan(x):
        return "nan"
    if math.isinf(x):
        return "inf" if x > 0 else "-inf"
    return None


def to_strict_json(obj: Any, path: str = "$") -> Any:
    """A copy of ``obj`` made of JSON types only, non-finite floats replaced by the marker."""
    if obj is None or isinstance(obj, (str, bool, int)):
        return obj
    if isinstance(obj, float):
        reason = nonfinite_reason(obj)
        return obj if reason is None else {"value": None, "nonfinite": reason}
    if isinstance(obj, (np.generic, np.ndarray, torch.Tensor)):
        return to_strict_json(obj.tolist() if not isinstance(obj, np.generic) else obj.item(),
                              path)
    if isinstance(obj, dict):
        if set(obj) == _MARKER_KEYS:
            raise ValueError(f"{path}: a dict with exactly the keys 'value' and 'nonfinite' is "
                             "reserved for non-finite numbers")
        for key in obj:
            if not isinstance(key, str):
                raise TypeError(f"{path}: expected string keys, got {type(key).__name__} "
                                f"{key!r}")
        return {k: to_strict_json(v, f"{path}.{k}") for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [to_strict_json(v, f"{path}[{i}]") for i, v in enumerate(obj)]
    raise TypeError(f"{path}: expected a JSON value (number, string, bool, None, list, dict "
                    f"or array), got {type(obj).__name__}")


def from_strict_json(obj: Any) -> Any:
    """The inverse of :func:`to_strict_json` on parsed JSON: markers become NaN / ±inf."""
    if isinstance(obj, dict):
        if (set(obj) == _MARKER_KEYS and obj["value"] is None
                and obj["nonfinite"] in _REASONS):
            return _REASONS[obj["nonfinite"]]
        return {k: from_strict_json(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [from_strict_json(v) for v in obj]
    return obj


def dumps_strict(obj: Any, **kwargs: Any) -> str:
    """``json.dumps`` of :func:`to_strict_json` (``allow_nan=False``: a strict document)."""
    return json.dumps(to_strict_json(obj), allow_nan=False, **kwargs)


def _reject_constant(name: str) -> float:
    raise ValueError(f"JSON: {name} is not strict JSON (expected a number or the non-finite "
                     "marker object)")


def loads_strict(text: str | bytes) -> Any:
    """Parse a strict document (bare NaN / Infinity refused) and decode the markers."""
    return from_strict_json(json.loads(text, parse_constant=_reject_constant))
