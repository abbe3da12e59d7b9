"""Contribution to model complexity by influence decile (Figure 4).

Training points sorted by I_i into 10 equal groups g; for each, the share of the RKHS norm
αᵀKα carried by g, Σ_{i∈g} α_iᵀ(Kα)_i / αᵀKα, with Kα = Y − λα, and the mean I_i."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..malleability import network_influence
from .common import NetworkSettings, RunContext, cell_problem, task_model_cells, trained_model


@dataclass(frozen=True)
class ComplexitySettings(NetworkSettings):
    groups: int = 10


cells = task_model_cells


def run(s: ComplexitySettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, _ = trained_model(cell["model"], p, s.model, s.train, ctx)
    infl = network_influence(net, p.z, p.y, p.z_test, p.y_test, s.ridge)
    alpha = infl.alpha
    per_point = (alpha * (p.y.to(alpha) - s.ridge * alpha)).sum(1).cpu().numpy()
    scores = infl.scores.cpu().numpy()
    groups = np.array_split(np.argsort(scores, kind="stable"), s.groups)
    total = per_point.sum()
    return {"complexity_share": [float(per_point[g].sum() / total) for g in groups],
            "mean_influence": [float(scores[g].mean()) for g in groups],
            "rkhs_norm": float(total)}


SETTINGS = ComplexitySettings
TITLE = "Contribution to model complexity by influence decile (Figure 4)"
