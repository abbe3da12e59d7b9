"""Feature collapse (Figure 7): mean pairwise cosine similarity of raw inputs and of the
linearized, softmax and exponential attention features."""

from __future__ import annotations

from dataclasses import dataclass

from ..diagnostic import feature_collapse
from .common import DataSettings, RunContext, cell_problem


@dataclass(frozen=True)
class CollapseSettings:
    tasks: tuple[DataSettings, ...] = (DataSettings(),)


def cells(s: CollapseSettings) -> list[dict]:
    return [{"task": t.label} for t in s.tasks]


def run(s: CollapseSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    return {"n": p.z.shape[0], "collapse": feature_collapse(p.z, p.z.shape[0], p.data.seed)}


SETTINGS = CollapseSettings
TITLE = "Feature collapse of attention maps (Figure 7)"
