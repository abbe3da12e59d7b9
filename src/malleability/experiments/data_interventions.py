"""Data interventions (Table 5): Curated, Transformed, Adversarial — test accuracy by epoch of
the retrained network and the malleability of its influence scores against the baseline's."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

from ..interventions import intervene
from ..malleability import network_influence
from .common import AttackExperimentSettings, RunContext, cell_problem, trained_model


@dataclass(frozen=True)
class InterventionSettings(AttackExperimentSettings):
    interventions: tuple[str, ...] = ("curated", "transformed", "adversarial")


def cells(s: InterventionSettings) -> list[dict]:
    return [{"task": t.label, "model": m, "intervention": i}
            for t in s.tasks for m in s.models for i in s.interventions]


def run(s: InterventionSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, history = trained_model(cell["model"], p, s.model, s.train, ctx)
    baseline = network_influence(net, p.z, p.y, p.z_test, p.y_test, s.ridge)
    train_settings = dataclasses.replace(s.train, progress=ctx.progress)
    result = intervene(cell["intervention"], net, p.x, p.y, p.x_test, p.y_test, p.transform,
                       train_settings, s.attack("pgd"), s.fraction, s.ridge, baseline)
    return {**result.summary(), "baseline_accuracy_by_epoch": {
        e: history["test_accuracy"][e - 1] for e in result.accuracy_by_epoch()}}


SETTINGS = InterventionSettings
TITLE = "Data interventions: accuracy by epoch and flip rate (Table 5)"
