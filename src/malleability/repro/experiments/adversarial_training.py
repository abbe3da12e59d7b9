"""Flip rate after adversarial training (Table 3): PGD flip rate of the standard network beside
that of a network trained on PGD examples against its current weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ..._validation import check_positive, check_positive_int
from ...attacks import check_eps, perturb_rows
from ...interventions import adversarial_train
from ...measure import measure_malleability
from ...settings import setting
from ...training import evaluate
from .. import figures
from ..problem import RunContext, build_model, trained_model
from ..report import Block, Table, figure, group, pct
from .base import (
    AttackExperimentSettings,
    agreement,
    cell_problem,
    model_name,
    paper_table,
    paper_task,
    paper_values,
    task_model_cells,
    task_title,
)

TITLE = "PGD flip rate, standard vs adversarially trained (Table 3)"
INTRO = ("PGD flip rate and clean and PGD test accuracy of a normally trained and a PGD "
         "adversarially trained network. The paper (Table 3) reports that adversarial training "
         "raises the flip rate of both architectures on MNIST and CIFAR-10.")

#: Table 3: PGD flip rate %, standard → adversarially trained.
PAPER_TABLE3 = {
    ("MNIST 10-class", "relu"): (3.3, 43.4),
    ("MNIST 10-class", "attn"): (28.9, 42.2),
    ("CIFAR-10 10-class", "relu"): (3.1, 36.5),
    ("CIFAR-10 10-class", "attn"): (19.1, 38.6),
}


@dataclass(frozen=True)
class AdversarialTrainingSettings(AttackExperimentSettings):
    """PGD inside training: the paper does not state its steps, step size or epochs."""

    train_steps: int = setting(10, "PGD steps inside adversarial training (not stated).",
                               check_positive_int)
    train_alpha: float = setting(0.04, "PGD step size inside adversarial training "
                                       "(not stated).", check_positive)
    train_eps: float | None = setting(None, "ε inside adversarial training (default: "
                                            "attack.eps).", check_eps)
    epochs: int | None = setting(None, "Adversarial training epochs (default: train.epochs).",
                                 check_positive_int)


SETTINGS = AdversarialTrainingSettings
cells = task_model_cells


def run(s: AdversarialTrainingSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    attack = s.attack_as("pgd")
    train_attack = s.attack_as("pgd", alpha=s.train_alpha, steps=s.train_steps,
                               eps=s.attack.eps if s.train_eps is None else s.train_eps)
    standard, history = trained_model(cell["model"], p, s.model, s.train, ctx)
    robust = build_model(cell["model"], p, s.model)
    adv_settings = s.train.replace(epochs=s.epochs or s.train.epochs, progress=ctx.progress)
    adv_history = adversarial_train(robust, p.x, p.y, adv_settings, train_attack,
                                    p.x_test, p.y_test)
    out: dict = {"n_train": p.x.shape[0], "n_influence": int(p.influence_rows.numel())}
    test_points = torch.arange(p.x_test.shape[0])
    for name, net, hist in (("standard", standard, history),
                            ("adversarial", robust, adv_history.to_dict())):
        m = measure_malleability(net, p.x, p.y, p.x_test, p.y_test, attack, s.influence,
                                 subset=p.influence_rows)
        x_adv = perturb_rows(net, p.x_test, p.y_test, test_points, attack)
        out[name] = {**m.summary(), "test_accuracy": hist["test_accuracy"][-1],
                     "pgd_test_accuracy": evaluate(net, x_adv, p.y_test)[1]}
    return out


def section(records: list[dict], figs: Path) -> list[Block]:
    """Table 3 side by side with the rise check; bar figure."""
    rows, bars, paper_bars = [], {}, {}
    for (task, model), (record, *_) in group(records, "task", "model").items():
        res = record["result"]
        before, after = res["standard"]["flip_rate"], res["adversarial"]["flip_rate"]
        paper = PAPER_TABLE3.get((paper_task(task) or "", model))
        rises = after > before
        rows.append([task, model_name(model), pct(before), pct(after),
                     paper_values(paper, " → "),
                     *(pct(res[stage][key]) for key in ("test_accuracy", "pgd_test_accuracy")
                       for stage in ("standard", "adversarial")),
                     "rises" if rises else "does not rise", agreement(rises, True)])
        title = task_title(task)
        bars.setdefault(title, {})[model_name(model)] = {"standard": 100 * before,
                                                         "adversarial": 100 * after}
        if paper is not None:
            paper_bars.setdefault(title, {})[model_name(model)] = dict(
                zip(("standard", "adversarial"), paper, strict=True))
    path = figures.bar_panels(figs / "adversarial_training.png", bars, "PGD flip rate %",
                              paper_bars, reference_label="paper (Table 3)", sharey=True)
    header = ["task", "model", "PGD flip % standard", "PGD flip % adversarial",
              "paper standard → adversarial", "test acc. % standard", "test acc. % adversarial",
              "PGD test acc. % standard", "PGD test acc. % adversarial", "flip rate change",
              "vs paper (rises)"]
    return [Table(header, rows, "Table 3: PGD flip rate before and after adversarial training."),
            paper_table(3, ["PGD flip % standard", "PGD flip % adversarial"], PAPER_TABLE3),
            figure(path, "PGD flip rate, standard vs adversarially trained; diamonds = the "
                         "paper's Table 3.")]
