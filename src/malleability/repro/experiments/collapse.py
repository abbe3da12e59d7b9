"""Feature collapse (Figure 7): mean pairwise cosine similarity of raw inputs and of the
linearized, softmax and exponential attention features."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...diagnostic import feature_collapse
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group
from ..problem import RunContext
from ..seeds import combine
from .base import TaskSettings, cell_problem, verdict

TITLE = "Feature collapse of attention maps (Figure 7)"
INTRO = ("Mean pairwise cosine similarity of the feature rows of the raw inputs and of the "
         "linear, softmax and exponential attention maps. The paper (A.13, Figure 7) has "
         "softmax and exponential attention collapsing to a single direction, while "
         "linearized attention keeps diverse feature maps; the claims table decides each map "
         "by its collapse share (c − c_raw)/(1 − c_raw) against ½ (our reading).")
KINDS = ("raw", "linear", "softmax", "exponential")


@dataclass(frozen=True)
class CollapseSettings(TaskSettings):
    pass


SETTINGS = CollapseSettings


def cells(s: CollapseSettings) -> list[dict]:
    return [{"task": t.label} for t in s.tasks]


def run(s: CollapseSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    z = p.z[p.influence_rows]
    return {"n": z.shape[0], "collapse": feature_collapse(z, z.shape[0], p.data.seed)}


def section(records: list[dict], figs: Path) -> list[Block]:
    """Mean pairwise cosine per feature map and task; bar figure."""
    rows, bars = [], {}
    for (task,), (record, *_) in group(records, "task").items():
        res = record["result"]
        # 5 digits: the attention maps' cosines differ from 1 only there
        rows.append([task, fmt(res["n"]), *(fmt(res["collapse"][k], 5) for k in KINDS)])
        bars[task] = {k: res["collapse"][k] for k in KINDS}
    path = figures.bar_panels(figs / "collapse.png", {"feature collapse": bars},
                              "mean pairwise cosine")
    return [Table(["task", "n", *KINDS], rows, "Mean pairwise cosine similarity of feature rows."),
            figure(path, "Figure 7 (ours): mean pairwise cosine by feature map.")]


#: A feature map "collapses" when its mean pairwise cosine c closes more than this share of the
#: raw inputs' distance to 1: (c − c_raw)/(1 − c_raw) > COLLAPSED (our reading; A.13 gives no
#: threshold).
COLLAPSED = 0.5
#: A.13: softmax and exponential attention collapse; linearized attention keeps diverse maps.
PAPER_COLLAPSES = {"linear": False, "softmax": True, "exponential": True}


def collapse_share(cosine: float, raw: float) -> float:
    """(c − c_raw)/(1 − c_raw), paired by seed: 0 as diverse as the inputs, 1 collapsed."""
    return combine(lambda c, r: (c - r) / (1.0 - r), cosine, raw)


def paper_claims(records: list[dict]) -> list[Claim]:
    """A.13 per task and attention map: softmax and exponential attention "collapse to a single
    direction for all inputs", while "linearized attention and 2L-ReLU maintain diverse feature
    maps"; decided by the interval of the collapse share against COLLAPSED."""
    claims = []
    for (task,), (record, *_) in group(records, "task").items():
        cos = record["result"]["collapse"]
        for kind, collapses in PAPER_COLLAPSES.items():
            share = collapse_share(cos[kind], cos["raw"])
            claims.append(Claim(
                f"{'Linearized' if kind == 'linear' else kind.capitalize()} attention "
                f"{'collapses' if collapses else 'keeps diverse feature maps'} (A.13, Figure 7)",
                task,
                "collapsed: cosine ≈ 1" if collapses else "diverse, like the raw inputs",
                f"cosine {fmt(cos[kind], 5)} vs raw {fmt(cos['raw'])}; collapse share "
                f"{fmt(share)}", verdict(share, (COLLAPSED, math.inf), collapses),
                ("collapse", task, kind)))
    return claims
