"""Data interventions (Table 5): Curated, Transformed, Adversarial — test accuracy by epoch of
the retrained network and the malleability of its influence scores against the baseline's.
They act on the whole training set (n_train); n_influence is not used here yet."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from ...influence import network_influence
from ...interventions import Intervention, intervene
from ...settings import setting
from .. import figures
from ..figures import Line
from ..problem import RunContext, trained_model
from ..report import Block, Table, figure, fmt, group, pct
from .base import AttackExperimentSettings, cell_problem, check_nonempty, model_name, task_title

TITLE = "Data interventions: accuracy by epoch and flip rate (Table 5)"
INTRO = ("Test accuracy by epoch after retraining on intervened data (curated: the top 10% "
         "most helpful points dropped; transformed: those points replaced by their PGD "
         "versions; adversarial: every training point replaced by its PGD version), and the "
         "flip rate of the perturbation. The paper reports these in Table 5; its values are not "
         "part of this project's spec, so none are shown beside ours.")


@dataclass(frozen=True)
class InterventionSettings(AttackExperimentSettings):
    interventions: tuple[Intervention, ...] = setting(
        tuple(Intervention), "Interventions: curated, transformed, adversarial.", check_nonempty)


SETTINGS = InterventionSettings


def cells(s: InterventionSettings) -> list[dict]:
    return [{"task": t.label, "model": m, "intervention": i.value}
            for t in s.tasks for m in s.models for i in s.interventions]


def run(s: InterventionSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, history = trained_model(cell["model"], p, s.model, s.train, ctx)
    baseline = network_influence(net, p.x, p.y, p.x_test, p.y_test, s.influence.ridge)
    train_settings = s.train.replace(progress=ctx.progress)
    result = intervene(cell["intervention"], net, p.x, p.y, p.x_test, p.y_test, train_settings,
                       s.attack_as("pgd"), s.influence, baseline)
    return {**result.summary(), "baseline_accuracy_by_epoch": {
        e: history["test_accuracy"][e - 1] for e in result.accuracy_by_epoch()}}


def section(records: list[dict], figs: Path) -> list[Block]:
    """Table 5: accuracy by epoch (baseline in parentheses), flip rate; accuracy figure."""
    epochs = sorted({int(e) for r in records for e in r["result"]["accuracy_by_epoch"]})
    rows, panels = [], {}
    for (task, model), group_records in group(records, "task", "model").items():
        base = {int(e): a for e, a in
                group_records[0]["result"]["baseline_accuracy_by_epoch"].items()}
        lines = []
        for record in group_records:
            res = record["result"]
            acc = {int(e): a for e, a in res["accuracy_by_epoch"].items()}
            rows.append([task, model_name(model), record["cell"]["intervention"],
                         *(f"{pct(acc.get(e))} ({pct(base.get(e))})" for e in epochs),
                         pct(res["flip_rate"]), fmt(res["spearman"])])
            lines.append(Line(record["cell"]["intervention"], sorted(acc),
                              [100 * acc[e] for e in sorted(acc)]))
        lines.append(Line("baseline", sorted(base), [100 * base[e] for e in sorted(base)],
                          {"color": "k", "ls": "--"}))
        panels[f"{task_title(task)} — {model_name(model)}"] = lines
    path = figures.line_panels(figs / "interventions.png", panels, "epoch", "test accuracy %",
                               logx=True)
    header = ["task", "model", "intervention", *(f"acc. % @ epoch {e}" for e in epochs),
              "flip rate %", "Spearman ρ"]
    return [Table(header, rows, "Table 5: test accuracy % by epoch after the intervention "
                                "(unmodified baseline in parentheses)."),
            figure(path, "Test accuracy vs epoch per intervention; dashed = baseline.")]
