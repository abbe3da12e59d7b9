"""Most influential training examples for chosen test points (Figure 3): the influence-set
images with the largest positive (helpful) and negative (harmful) I(i, t)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._validation import check_positive_int, check_seed
from ...influence import network_influence
from ...settings import setting
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group
from ..problem import RunContext, trained_model
from .base import NetworkSettings, cell_problem, model_name, task_model_cells

TITLE = "Most influential training examples for a test point (Figure 3)"
INTRO = ("For one test point, the training images with the largest positive (helpful) and "
         "negative (harmful) influence I(i, t) under the trained network's NTK. The paper's "
         "Figure 3 shows such examples for both architectures.")


@dataclass(frozen=True)
class InfluentialSettings(NetworkSettings):
    test_index: int = setting(0, "The test point (index into the n_test test points).",
                              check_seed)
    top: int = setting(6, "Training images shown per sign.", check_positive_int)

    def check_relations(self) -> None:
        for i, task in enumerate(self.tasks):
            if self.test_index >= task.n_test:
                raise ValueError(f"test_index: expected an index below tasks[{i}].n_test "
                                 f"({task.n_test}), got {self.test_index}")


SETTINGS = InfluentialSettings
#: An illustration, not a measurement: the report shows the first seed's cells only.
PER_SEED = "first"
cells = task_model_cells


def run(s: InfluentialSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, _ = trained_model(cell["model"], p, s.model, s.train, ctx)
    x, y = p.x_influence, p.y_influence
    column = network_influence(net, x, y, p.x_test, p.y_test,
                               s.influence.ridge).matrix[s.test_index]
    order = torch.argsort(column, descending=True)
    picks = {"positive": order[:s.top], "negative": order.flip(0)[:s.top]}
    return {"test_index": s.test_index, "test_image": p.x_test[s.test_index].cpu().float(),
            "test_label": p.label_name(p.y_test[s.test_index]),
            **{name: {"indices": p.influence_rows[idx], "scores": column[idx],
                      "labels": [p.label_name(y[i]) for i in idx],
                      "images": x[idx].cpu().float()} for name, idx in picks.items()}}


def _slug(text: str) -> str:
    """A file-name-safe form of a task label (``digits 3,8`` → ``digits-3-8``)."""
    return re.sub(r"[^A-Za-z0-9]+", "-", text).strip("-").lower()


def section(records: list[dict], figs: Path) -> list[Block]:
    """Top positive and negative training images per task and model."""
    rows, blocks = [], []
    for (task,), group_records in group(records, "task").items():
        grid = {}
        for record in group_records:
            res, name = record["result"], model_name(record["cell"]["model"])
            for sign, symbol in (("positive", "+"), ("negative", "−")):
                picks = res[sign]
                captions = [f"y={label} {fmt(score)}" for label, score in
                            zip(picks["labels"], picks["scores"], strict=True)]
                test = (res["test_image"], f"test y={res['test_label']}")
                grid[f"{name} {symbol}"] = {"test": test if sign == "positive" else None,
                                            "images": picks["images"], "captions": captions}
                rows.append([task, name, fmt(res["test_index"]), fmt(res["test_label"]),
                             sign, ", ".join(captions) or "—"])
        path = figures.influence_grid(figs / f"influential_{_slug(task)}.png", grid)
        blocks.append(figure(path, f"Figure 3 (ours), {task}: the test image, then the training "
                                   "images with the largest positive (+) and negative (−) "
                                   "influence, captioned with label and I(i, t)."))
    return [Table(["task", "model", "test index", "test label", "influence",
                   "training labels and I(i, t)"], rows, "Most influential training examples."),
            *blocks]


#: The verdict of a figure that illustrates and claims nothing it could be checked against.
ILLUSTRATION = "illustration: nothing to test"


def paper_claims(records: list[dict]) -> list[Claim]:
    """Figure 3 illustrates the most influential training examples of one test digit; its
    caption puts the architectures' difference in numbers elsewhere ("the key distinction is
    quantitative": Table 2's flip rates). One row per task with what we show, no verdict."""
    claims = []
    for (task,), task_records in group(records, "task").items():
        shown = []
        for record in task_records:
            res = record["result"]
            helpful = res["positive"]["labels"]
            same = sum(label == res["test_label"] for label in helpful)
            shown.append(f"{model_name(record['cell']['model'])} helpful {' '.join(helpful)} "
                         f"({same}/{len(helpful)} with the test label), harmful "
                         f"{' '.join(res['negative']['labels'])}")
        first = task_records[0]
        claims.append(Claim("Top influential training examples for a representative test digit "
                            "(Figure 3; its distinction between the architectures is Table "
                            "2's flip rate)", task, "an illustration",
                            f"seed {first['cell'].get('seed', 0)}, test point "
                            f"{first['result']['test_index']} (label "
                            f"{first['result']['test_label']}): " + "; ".join(shown),
                            ILLUSTRATION, ("influential", task)))
    return claims
