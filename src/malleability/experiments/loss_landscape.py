"""Loss landscapes (Figure 5) of the trained network and of its NTK counterpart along two
filter-normalised random directions."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..landscape import filter_normalized_direction, loss_surface
from ..training import loss_for_targets
from .common import (
    NetworkSettings,
    RunContext,
    build_model,
    cell_problem,
    task_model_cells,
    trained_model,
)


@dataclass(frozen=True)
class LandscapeSettings(NetworkSettings):
    resolution: int = 21
    span: float = 1.0


cells = task_model_cells


def run(s: LandscapeSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, _ = trained_model(cell["model"], p, s.model, s.train, ctx)
    w0 = build_model(cell["model"], p, s.model).weight.detach()
    u = filter_normalized_direction(net.weight, seed=s.model.seed + 100)
    v = filter_normalized_direction(net.weight, seed=s.model.seed + 200)
    grid = torch.linspace(-s.span, s.span, s.resolution, dtype=torch.float64)
    loss = loss_for_targets(p.y)
    return {"grid": grid,
            "network": loss_surface(net, p.z, p.y, loss, u, v, grid),
            "ntk": loss_surface(net, p.z, p.y, loss, u, v, grid, linearize_at=w0)}


SETTINGS = LandscapeSettings
TITLE = "Loss landscape of the network and its NTK counterpart (Figure 5)"
