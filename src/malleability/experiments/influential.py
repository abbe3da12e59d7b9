"""Most influential training examples for chosen test points (Figure 3): the training images
with the largest positive (helpful) and negative (harmful) I(i, t)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..malleability import network_influence
from .common import NetworkSettings, RunContext, cell_problem, task_model_cells, trained_model


@dataclass(frozen=True)
class InfluentialSettings(NetworkSettings):
    test_index: int = 0
    top: int = 6


cells = task_model_cells


def run(s: InfluentialSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, _ = trained_model(cell["model"], p, s.model, s.train, ctx)
    column = network_influence(net, p.z, p.y, p.z_test, p.y_test, s.ridge).matrix[s.test_index]
    order = torch.argsort(column, descending=True)
    picks = {"positive": order[:s.top], "negative": order.flip(0)[:s.top]}
    return {"test_index": s.test_index, "test_image": p.x_test[s.test_index].cpu().float(),
            "test_label": p.label_name(p.y_test[s.test_index]),
            **{name: {"indices": idx, "scores": column[idx],
                      "labels": [p.label_name(p.y[i]) for i in idx],
                      "images": p.x[idx].cpu().float()} for name, idx in picks.items()}}


SETTINGS = InfluentialSettings
TITLE = "Most influential training examples for a test point (Figure 3)"
