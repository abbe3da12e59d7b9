"""Flip rate after adversarial training (Table 3): PGD flip rate of the standard network beside
that of a network trained on PGD examples against its current weights."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch

from ..interventions import adversarial_train
from ..malleability import attack_points, measure_malleability
from ..training import evaluate
from .common import (
    AttackExperimentSettings,
    RunContext,
    build_model,
    cell_problem,
    task_model_cells,
    trained_model,
)


@dataclass(frozen=True)
class AdversarialTrainingSettings(AttackExperimentSettings):
    """``train_steps``/``train_alpha``: PGD inside training (the paper does not state them);
    ``epochs``: adversarial training epochs (None = those of ``train``)."""

    train_steps: int = 10
    train_alpha: float = 0.04
    epochs: int | None = None


cells = task_model_cells


def run(s: AdversarialTrainingSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    attack = s.attack("pgd")
    train_attack = s.attack("pgd", alpha=s.train_alpha, steps=s.train_steps)
    standard, history = trained_model(cell["model"], p, s.model, s.train, ctx)
    robust = build_model(cell["model"], p, s.model)
    adv_settings = dataclasses.replace(s.train, epochs=s.epochs or s.train.epochs,
                                       progress=ctx.progress)
    adv_history = adversarial_train(robust, p.x, p.y, adv_settings, p.transform, train_attack,
                                    p.x_test, p.y_test)
    out: dict = {"n_train": p.x.shape[0]}
    test_points = torch.arange(p.x_test.shape[0])
    for name, net, hist in (("standard", standard, history),
                            ("adversarial", robust, adv_history.to_dict())):
        m = measure_malleability(net, p.x, p.y, p.x_test, p.y_test, p.transform, attack,
                                 s.fraction, s.ridge)
        x_adv = attack_points(net, p.transform, p.x_test, p.y_test, test_points, attack)
        out[name] = {**m.summary(), "test_accuracy": hist["test_accuracy"][-1],
                     "pgd_test_accuracy": evaluate(net, x_adv, p.y_test, p.transform)[1]}
    return out


SETTINGS = AdversarialTrainingSettings
TITLE = "PGD flip rate, standard vs adversarially trained (Table 3)"
