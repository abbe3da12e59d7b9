"""Feature collapse (Figure 7): mean pairwise cosine similarity of raw inputs and of the
linearized, softmax and exponential attention features."""

from __future__ import annotations

from dataclasses import dataclass

from ..diagnostic import feature_collapse
from .common import DataSettings, RunContext, load_problem


@dataclass(frozen=True)
class CollapseSettings:
    tasks: tuple[DataSettings, ...] = (DataSettings(),)


def cells(s: CollapseSettings) -> list[dict]:
    return [{"task": t.label} for t in s.tasks]


def run(s: CollapseSettings, cell: dict, ctx: RunContext) -> dict:
    task = next(t for t in s.tasks if t.label == cell["task"])
    p = load_problem(task, ctx.data_root, ctx.device)
    return {"n": p.z.shape[0], "collapse": feature_collapse(p.z, p.z.shape[0], task.seed)}


SETTINGS = CollapseSettings
TITLE = "Feature collapse of attention maps (Figure 7)"
