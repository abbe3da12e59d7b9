"""Feature collapse (Figure 7): mean pairwise cosine similarity of raw inputs and of the
linearized, softmax and exponential attention features."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...diagnostic import feature_collapse
from .. import figures
from ..blocks import Block, Table, figure, fmt, group
from ..problem import RunContext
from .base import TaskSettings, cell_problem

TITLE = "Feature collapse of attention maps (Figure 7)"
INTRO = ("Mean pairwise cosine similarity of the feature rows of the raw inputs and of the "
         "linear, softmax and exponential attention maps. The paper's Figure 7 shows attention "
         "features collapsing towards a common direction compared with the raw inputs.")
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
