"""Sensitivity of Table 1's width trend to the settings the paper does not state.

Around the calibrated point, one setting at a time is moved: the influence-set size
n_influence (the points both the network and the kernel predictor fit), λ_reg, and the kernel
ridge λ of the predictor f_Θ∞. At each point and width the NTK distance is measured as
:mod:`.ntk_distance` measures it, once per seed; the claim is the paper's trend with width
(2L-ReLU: the function distance falls; MLP-Attn: it does not), judged step by step on the
paired CIs over seeds.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...settings import setting
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, sweep_summary
from ..figures import Line
from ..problem import RunContext
from . import ntk_distance
from .base import model_name, task_title
from .sensitivity import (
    TrainingSweep,
    check_influence_sizes,
    moved,
    point_label,
    points,
    where_it_holds,
)

TITLE = "Sensitivity of the width trend to the unstated settings (Table 1)"
INTRO = ("Around the calibrated point, one unstated setting at a time is moved (n_influence: "
         "the points the network and its kernel predictor both fit; λ_reg; the kernel-ridge "
         "λ), and the function distance ‖f_m − f_Θ∞‖_F after training is measured at every "
         "width. Per point: each architecture's trend with width, decided step by step by the "
         "95 % CI over seeds, against the paper's (2L-ReLU falls with width, MLP-Attn does "
         "not); per claim: holds everywhere, holds in a region (the points where it agrees), "
         "or fails.")

#: The swept settings, in report order (ε and the perturbed scores do not enter Table 1).
AXES = ("n_influence", "l2_to_init", "ridge")


def _check_models(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    if not value or set(value) - {"relu", "attn"}:
        raise ValueError(f"{name}: expected some of relu, attn (the architectures Table 1's "
                         f"trend claims are about), got {list(value)}")
    return value


@dataclass(frozen=True)
class WidthSensitivitySettings(ntk_distance.NtkDistanceSettings, TrainingSweep):
    models: tuple[str, ...] = setting(("relu", "attn"), "Architectures.", _check_models,
                                      flag="--model")

    def check_relations(self) -> None:
        super().check_relations()
        check_influence_sizes(self.tasks, self.n_influence)


SETTINGS = WidthSensitivitySettings


def cells(s: WidthSensitivitySettings) -> list[dict]:
    return [{"task": t.label, "model": m, "width": w, "axis": axis, "value": value}
            for axis, value in points(s, AXES) for t in s.tasks for m in s.models
            for w in s.widths]


def run(s: WidthSensitivitySettings, cell: dict, ctx: RunContext) -> dict:
    return ntk_distance.run(moved(s, cell["axis"], cell["value"]), cell, ctx)


def section(records: list[dict], figs: Path) -> list[Block]:
    """Per point and architecture: the function distance by width, its trend and the verdict;
    per claim: where it holds; one panel of distance against width per task and architecture."""
    rows, verdicts, panels = [], {}, {}
    for (task, model, axis, value), by_width in group(records, "task", "model", "axis",
                                                      "value").items():
        by_width = sorted(by_width, key=lambda r: r["cell"]["width"])
        trained = [r["result"]["function_distance_trained"] for r in by_width]
        ours, paper, judged = ntk_distance.width_trend(task, model, trained)
        claim = f"{model_name(model)}: {paper}"
        verdicts.setdefault((task, claim), []).append((point_label(axis, value), judged))
        rows.append([task, model_name(model), point_label(axis, value),
                     " / ".join(fmt(d) for d in trained), ours, paper, judged])
        label = "calibrated" if axis == "calibrated" else f"{axis} = {fmt(value)}"
        panels.setdefault(f"{task_title(task)}, {model_name(model)}", []).append(
            Line(label, [float(r["cell"]["width"]) for r in by_width], trained))
    widths = sorted({r["cell"]["width"] for r in records})
    summary = [[task, claim, f"{sum(v == 'agrees' for _, v in judged)}/{len(judged)}",
                where_it_holds(judged)] for (task, claim), judged in verdicts.items()]
    path = figures.line_panels(figs / "width_sensitivity.png", panels, "width m",
                               "function distance after training", logx=True)
    return [Table(["task", "claim", "points agreeing", "where it holds"], summary,
                  "Per claim: the points (calibrated, then one setting moved at a time) where "
                  "the width trend, decided by the 95 % CIs over seeds, agrees with the paper."),
            Table(["task", "model", "point", "function distance by width", "our trend",
                   "paper trend", "verdict"], rows,
                  f"Function distance after training at widths {', '.join(map(str, widths))} "
                  f"per point. Swept settings: {', '.join(AXES)}."),
            figure(path, "Function distance after training against width, with its 95 % CI "
                         "over seeds, one line per point (one setting moved at a time).")]


def paper_claims(records: list[dict]) -> list[Claim]:
    """Per Table 1 claim swept (task, architecture): how many points agree, and where it
    holds; keyed to the ntk_distance claim it sweeps."""
    judged: dict[tuple[str, str], list[tuple[str, str]]] = {}
    for (task, model, axis, value), by_width in group(records, "task", "model", "axis",
                                                      "value").items():
        by_width = sorted(by_width, key=lambda r: r["cell"]["width"])
        trained = [r["result"]["function_distance_trained"] for r in by_width]
        judged.setdefault((task, model), []).append(
            (point_label(axis, value), ntk_distance.width_trend(task, model, trained)[2]))
    return [Claim("Table 1's width trend under the unstated settings",
                  f"{task}, {model_name(model)}", "—",
                  sweep_summary(points), where_it_holds(points),
                  ("width_sensitivity", "table1", task, model))
            for (task, model), points in judged.items()]
