"""Input checks at the public boundary (one place, one-line errors naming the argument)."""

from __future__ import annotations

import math
from collections.abc import Sequence
from enum import Enum
from typing import Any, TypeVar

import numpy as np
import torch

E = TypeVar("E", bound=Enum)


def as_tensor(
    x: Any,
    name: str,
    *,
    ndim: int | tuple[int, ...] | None = None,
    dtype: torch.dtype | None = torch.float64,
    allow_empty: bool = False,
    device: torch.device | str | None = None,
) -> torch.Tensor:
    """Convert ``x`` to a tensor and check its rank, emptiness and finiteness.

    ``dtype=None`` keeps the input's floating dtype (float64 for non-float input).
    """
    if isinstance(x, np.ndarray):
        if x.dtype.kind not in "biufc":
            raise ValueError(f"{name}: expected an array of numbers, got a NumPy array of "
                             f"{_numpy_kind(x.dtype)}")
        x = torch.from_numpy(x)
    elif not isinstance(x, torch.Tensor):
        try:
            x = torch.as_tensor(x)
        except (TypeError, ValueError, RuntimeError):
            kind = type(x).__name__
            raise ValueError(f"{name}: expected an array of numbers, got {kind}") from None
    if x.is_complex():
        raise ValueError(f"{name}: expected real numbers, got complex values ({x.dtype})")
    if ndim is not None:
        allowed = (ndim,) if isinstance(ndim, int) else ndim
        if x.ndim not in allowed:
            want = " or ".join(str(a) for a in allowed)
            raise ValueError(f"{name}: expected a {want}-d array, got shape {tuple(x.shape)}")
    if not allow_empty and x.numel() == 0:
        raise ValueError(f"{name}: expected a non-empty array, got shape {tuple(x.shape)}")
    if dtype is not None:
        x = x.to(dtype=dtype)
    elif not x.is_floating_point():
        x = x.to(torch.float64)
    if device is not None:
        x = x.to(device)
    # One sum first (a NaN or ±inf makes it non-finite); the elementwise check only then.
    if torch.compiler.is_exporting():  # data-dependent checks cannot be traced
        return x
    if not bool(torch.isfinite(x.sum())) and not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    return x


def _numpy_kind(dtype: np.dtype) -> str:
    kinds = {"U": "strings", "S": "bytes", "O": "Python objects", "V": "records",
             "M": "datetimes", "m": "timedeltas"}
    return f"{kinds.get(dtype.kind, 'non-numbers')} ({dtype})"


class NonFiniteError(ValueError):
    """A computation on finite inputs produced NaN or ±inf (overflow, a NaN loss, ...)."""


def check_finite(t: torch.Tensor, name: str, stage: str,
                 source: torch.Tensor | None = None) -> torch.Tensor:
    """``t`` unchanged when every entry is finite, else :class:`NonFiniteError` naming the
    input ``name`` and the ``stage`` that produced ``t`` (with the largest |source| entry)."""
    if bool(torch.isfinite(t.sum())):  # one pass; a NaN or ±inf makes the sum non-finite
        return t
    finite = torch.isfinite(t)
    if bool(finite.all()):  # finite entries whose sum overflowed
        return t
    bad = int((~finite).sum())
    why = f"{bad} of {t.numel()} entries NaN or infinite"
    if source is not None and source.numel():
        why += f"; largest |{name}| is {float(source.detach().abs().max()):.3g}"
    raise NonFiniteError(f"{name}: {stage} is not finite ({why})")


def check_positive_int(value: Any, name: str) -> int:
    """An integer ≥ 1."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return int(value)


def check_seed(seed: object, name: str = "seed") -> int:
    """A non-negative integer seed."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {seed!r}")
    return int(seed)


def check_seeds(value: Any, name: str = "seeds") -> tuple[int, ...]:
    """A non-empty sequence of distinct non-negative integer seeds; a string, a float, a bool
    or a repeated seed is refused (``"12"`` is not the seeds 1 and 2)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, (Sequence, np.ndarray)):
        raise ValueError(f"{name}: expected a sequence of integer seeds, got {value!r}")
    seeds = tuple(check_seed(s, f"{name}[{i}]") for i, s in enumerate(value))
    if not seeds:
        raise ValueError(f"{name}: expected at least one seed, got []")
    repeated = sorted({s for s in seeds if seeds.count(s) > 1})
    if repeated:
        raise ValueError(f"{name}: expected distinct seeds, got {list(seeds)} "
                         f"({', '.join(map(str, repeated))} repeated)")
    return seeds


def parse_seeds(text: str, name: str = "seeds") -> tuple[int, ...]:
    """Seeds given as comma-separated integers (a command-line option), checked by
    :func:`check_seeds`."""
    try:
        values = [int(token) for token in str(text).split(",")]
    except ValueError:
        raise ValueError(f"{name}: expected comma-separated integers, got {text!r}") from None
    return check_seeds(values, name)


def check_names(value: Any, name: str) -> tuple[str, ...]:
    """A sequence of distinct non-empty names; a bare string is refused (``"head"`` is not the
    names h, e, a, d)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ValueError(f"{name}: expected a list of names, got {value!r}")
    for i, item in enumerate(value):
        if not isinstance(item, str) or not item:
            raise ValueError(f"{name}[{i}]: expected a non-empty name, got {item!r}")
    repeated = sorted({v for v in value if list(value).count(v) > 1})
    if repeated:
        raise ValueError(f"{name}: expected distinct names, got {', '.join(repeated)} twice")
    return tuple(value)


def check_real(value: Any, name: str) -> float:
    """A finite real number; a bool or a string is refused."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name}: expected a number, got {value!r}")
    if not math.isfinite(value):
        raise ValueError(f"{name}: expected a finite number, got {value!r}")
    return float(value)


def check_bounds(value: Any, name: str = "bounds") -> tuple[float, float]:
    """An input domain (low, high): two numbers, low < high; ±inf only as an unbounded side
    (a perturbed layer's output has no box)."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence) or len(value) != 2:
        raise ValueError(f"{name}: expected (low, high), got {value!r}")
    low, high = (v if isinstance(v, float) and math.isinf(v) else check_real(v, f"{name}[{i}]")
                 for i, v in enumerate(value))
    if not low < high:
        raise ValueError(f"{name}: expected low < high, got ({low:g}, {high:g})")
    return low, high


def parse_bounds(text: str, name: str = "bounds") -> tuple[float, float]:
    """An input domain given as ``low,high`` (a command-line option): two finite numbers,
    low < high."""
    try:
        values = [float(token) for token in str(text).split(",")]
    except ValueError:
        values = []
    if len(values) != 2 or not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name}: expected two finite numbers low,high, got {text!r}")
    return check_bounds(values, name)


def check_nonnegative(value: Any, name: str) -> float:
    """A finite real ≥ 0."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}") from None
    if not math.isfinite(v) or v < 0:
        raise ValueError(f"{name}: expected a non-negative number, got {value!r}")
    return v


def check_positive(value: Any, name: str) -> float:
    """A finite real > 0."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        v = math.nan
    if not math.isfinite(v) or v <= 0:
        raise ValueError(f"{name}: expected a positive number, got {value!r}")
    return v


def check_fraction(value: Any, name: str) -> float:
    """A real in (0, 1]."""
    if isinstance(value, bool):
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}") from None
    if not (0.0 < v <= 1.0):
        raise ValueError(f"{name}: expected a number in (0, 1], got {value!r}")
    return v


def check_rows_match(a: torch.Tensor, b: torch.Tensor, name_a: str, name_b: str) -> None:
    """``a`` and ``b`` have the same number of rows."""
    if a.shape[0] != b.shape[0]:
        raise ValueError(
            f"{name_b}: expected {a.shape[0]} rows to match {name_a}, got {b.shape[0]}"
        )


def check_choice(value: Any, name: str, choices: tuple[str, ...]) -> str:
    """One of a fixed set of strings."""
    if value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(choices)}, got {value!r}")
    return value


def parse_enum(value: Any, enum_cls: type[E], name: str) -> E:
    """``value`` as a member of the string enum ``enum_cls`` (by member or by value)."""
    if isinstance(value, enum_cls):
        return value
    try:
        return enum_cls(value)
    except ValueError:
        choices = ", ".join(m.value for m in enum_cls)
        raise ValueError(f"{name}: expected one of {choices}, got {value!r}") from None
