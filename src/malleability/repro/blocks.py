"""The blocks a report is made of (headings, paragraphs, tables, images), the formatting of
measured numbers and the usual order of cells. Each experiment builds its section from these;
:mod:`.report` renders them."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..attacks import Attack
from ..interventions import Intervention
from ..models import ARCHITECTURE_NAMES
from .seeds import Estimate, scale

# --- report blocks ----------------------------------------------------------------------------


@dataclass
class Heading:
    text: str
    level: int = 2


@dataclass
class Text:
    text: str


@dataclass
class Table:
    header: list[str]
    rows: list[list[str]]
    caption: str = ""


@dataclass
class Image:
    """A figure, ``path`` relative to the report folder."""

    path: str
    caption: str


Block = Heading | Text | Table | Image


def figure(path: Path, caption: str) -> Image:
    """The image block of a figure written under the report's ``figures/`` folder."""
    return Image(f"{path.parent.name}/{path.name}", caption)


# --- formatting and ordering ------------------------------------------------------------------


def fmt(value: Any, digits: int = 3) -> str:
    """``digits`` significant digits; ∞ for inf; "—" for None or NaN (a value the run stored
    as missing); ints and strings as they are. An :class:`Estimate` (a number measured per
    seed) as ``mean [low, high]`` (its 95 % CI, clipped to the quantity's range:
    :meth:`~malleability.intervals.Estimate.shown_interval`), or without an interval as
    ``mean (v₁, v₂; CI n/a)``."""
    if isinstance(value, Estimate) and len(value.values) > 1:
        mean = fmt(float(value), digits)
        shown = value.shown_interval()
        if shown is not None:
            return f"{mean} [{fmt(shown[0], digits)}, {fmt(shown[1], digits)}]"
        return f"{mean} ({', '.join(fmt(v, digits) for v in value.values)}; CI n/a)"
    if isinstance(value, Estimate):
        value = float(value)
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "—"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, (int, str)):
        return str(value)
    if math.isinf(value):
        return "∞" if value > 0 else "−∞"
    mantissa, _, exponent = f"{value:.{digits}g}".partition("e")
    return f"{mantissa}e{int(exponent)}" if exponent else mantissa


def pct(value: float | None) -> str:
    """A fraction as a percentage, 3 significant digits (an Estimate with its interval)."""
    return fmt(scale(value, 100))


_RANK = {name: i for i, name in enumerate([*ARCHITECTURE_NAMES, *Attack, *Intervention])}


def _cell_key(record: dict) -> list[tuple]:
    """Sort cells by task name, then models, attacks and interventions in their usual order,
    then numbers."""
    return [(0, v, "") if isinstance(v, (int, float)) else (1, _RANK.get(v, len(_RANK)), str(v))
            for v in record["cell"].values()]


def rank(name: str) -> int:
    """The position of an architecture, attack or intervention name in the usual order."""
    return _RANK.get(name, len(_RANK))


def group(records: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    """Cell records grouped by the cell parameters ``keys``, in sorted order."""
    groups: dict[tuple, list[dict]] = {}
    for record in sorted(records, key=_cell_key):
        groups.setdefault(tuple(record["cell"][k] for k in keys), []).append(record)
    return groups


@dataclass(frozen=True)
class Claim:
    """One claim of the paper at one place (task, model, …): ``measured`` is ours with its
    interval, ``verdict`` agrees / disagrees / inconclusive (or a sweep's summary); ``key``
    matches a claim to its sweep."""

    claim: str
    where: str
    paper: str
    measured: str
    verdict: str
    key: tuple = ()


def sweep_summary(points: list[tuple[str, str]]) -> str:
    """A sweep's (point, verdict) pairs in a few words: at how many points each verdict comes
    out, naming the points of all but the most frequent verdict."""
    by: dict[str, list[str]] = {}
    for point, verdict in points:
        by.setdefault(verdict, []).append(point)
    most = max(by, key=lambda v: len(by[v]))
    words = {"agrees": "agrees", "disagrees": "disagrees", "inconclusive": "undecided"}
    order = ("agrees", "disagrees", "inconclusive")
    return "; ".join(f"{words.get(v, v)} at {len(by[v])}/{len(points)}"
                     + ("" if v == most else f" ({', '.join(by[v])})")
                     for v in sorted(by, key=lambda v: (order.index(v) if v in order
                                                        else len(order), v)))
