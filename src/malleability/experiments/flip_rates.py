"""Influence malleability under FGSM / PGD / MIM (Table 2, Figure 2).

For each task and architecture, the network is trained once (cached); each attack cell
perturbs its top-10% most helpful training points and measures the flip rate, Spearman ρ and
top-K overlap of the NTK influence scores.
"""

from __future__ import annotations

from dataclasses import dataclass

from ..malleability import measure_malleability
from .common import AttackExperimentSettings, RunContext, cell_problem, trained_model


@dataclass(frozen=True)
class FlipRateSettings(AttackExperimentSettings):
    attacks: tuple[str, ...] = ("fgsm", "pgd", "mim")


def cells(s: FlipRateSettings) -> list[dict]:
    return [{"task": t.label, "model": m, "attack": a}
            for t in s.tasks for m in s.models for a in s.attacks]


def run(s: FlipRateSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, history = trained_model(cell["model"], p, s.model, s.train, ctx)
    result = measure_malleability(net, p.x, p.y, p.x_test, p.y_test, p.transform,
                                  s.attack(cell["attack"]), s.fraction, s.ridge)
    return {**result.summary(), "test_accuracy": history["test_accuracy"][-1],
            "n_train": p.x.shape[0]}


SETTINGS = FlipRateSettings
TITLE = "Influence malleability: flip rate under FGSM / PGD / MIM (Table 2, Figure 2)"
