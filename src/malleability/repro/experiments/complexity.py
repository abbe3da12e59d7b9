"""Contribution to model complexity by influence decile (Figure 4).

Influence-set points sorted by I_i into equal groups g; for each, the share of the RKHS norm
αᵀKα carried by g, Σ_{i∈g} α_iᵀ(Kα)_i / αᵀKα, with Kα = Y − λα, and the mean I_i."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..._validation import check_positive_int
from ...influence import network_influence
from ...settings import setting
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct
from ..problem import RunContext, trained_model
from ..seeds import combine
from .base import (
    NetworkSettings,
    cell_problem,
    conjunction,
    model_name,
    task_model_cells,
    task_title,
    verdict,
)

TITLE = "Contribution to model complexity by influence decile (Figure 4)"
INTRO = ("Training points sorted by influence I_i into deciles; for each, its share of the RKHS "
         "norm αᵀKα of the NTK ridge fit and its mean influence. The paper's Figure 4 relates "
         "where influence lies to where the fit's complexity lies.")


@dataclass(frozen=True)
class ComplexitySettings(NetworkSettings):
    groups: int = setting(10, "Influence groups (paper: deciles).", check_positive_int)


SETTINGS = ComplexitySettings
cells = task_model_cells


def run(s: ComplexitySettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, _ = trained_model(cell["model"], p, s.model, s.train, ctx)
    y = p.y_influence
    infl = network_influence(net, p.x_influence, y, p.x_test, p.y_test, s.influence.ridge)
    alpha = infl.alpha
    per_point = (alpha * (y.to(alpha) - s.influence.ridge * alpha)).sum(1).cpu().numpy()
    scores = infl.scores.cpu().numpy()
    groups = np.array_split(np.argsort(scores, kind="stable"), s.groups)
    total = per_point.sum()
    return {"complexity_share": [float(per_point[g].sum() / total) for g in groups],
            "mean_influence": [float(scores[g].mean()) for g in groups],
            "rkhs_norm": float(total)}


def section(records: list[dict], figs: Path) -> list[Block]:
    """RKHS-norm share by influence decile: table and twin-axis figure."""
    deciles = max(len(r["result"]["complexity_share"]) for r in records)
    rows, panels = [], {}
    for (task, model), (record, *_) in group(records, "task", "model").items():
        res = record["result"]
        share = res["complexity_share"]
        rows.append([task, model_name(model), fmt(res["rkhs_norm"]),
                     *(pct(share[i]) if i < len(share) else "—" for i in range(deciles))])
        panels[f"{task_title(task)} — {model_name(model)}"] = (share, res["mean_influence"])
    path = figures.complexity_panels(figs / "complexity.png", panels)
    header = ["task", "model", "αᵀKα", *(f"D{i + 1} %" for i in range(deciles))]
    return [Table(header, rows, "Share of the RKHS norm by influence decile (D1 = lowest I_i)."),
            figure(path, "Figure 4 (ours): complexity share (bars) and mean influence (line) "
                         "by influence decile.")]


def u_shape(share: list[float]) -> tuple[float, float]:
    """How far each end group (most harmful, most helpful) rises above the middle groups: the
    first and the last group's share minus the mean share of the others, in points, paired
    by seed."""
    def ends(*values: float) -> tuple[float, float]:
        middle = sum(values[1:-1]) / (len(values) - 2)
        return 100 * (values[0] - middle), 100 * (values[-1] - middle)

    return (combine(lambda *v: ends(*v)[0], *share), combine(lambda *v: ends(*v)[1], *share))


def paper_claims(records: list[dict]) -> list[Claim]:
    """Figure 4 / A.8: "the U-shaped complexity curve indicates that the most influential points
    (both harmful and helpful) contribute most to model complexity", on every data set; per
    task and architecture, both ends above the middle groups (:func:`u_shape`), each decided
    by its interval."""
    claims = []
    for (task, model), (record, *_) in group(records, "task", "model").items():
        share = record["result"]["complexity_share"]
        if len(share) < 3:
            continue
        low, high = u_shape(share)
        judged = conjunction([verdict(low, (0.0, math.inf)), verdict(high, (0.0, math.inf))])
        claims.append(Claim("U-shaped complexity: the most harmful and the most helpful points "
                            "carry the most of the RKHS norm (Figure 4, A.8)",
                            f"{task}, {model_name(model)}", "U-shape on every data set",
                            f"share of the first / last of {len(share)} groups above the "
                            f"middle groups' mean: {fmt(low)} / {fmt(high)} points",
                            judged, ("complexity", task, model)))
    return claims
