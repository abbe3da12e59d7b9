"""Data interventions (Table 5): Curated, Transformed, Adversarial — test accuracy by epoch of
the retrained network beside the paper's, and the malleability of its influence scores against
the baseline's. Networks train on the task's n_train points; influence, S and the flip rate use
its seeded n_influence subset (S = the top 10 % of that subset); Curated drops S from the whole
training set, Transformed replaces S by its PGD versions, Adversarial replaces every training
point; each retrains from the baseline's initialisation on the whole intervened set."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...interventions import Intervention, intervene
from ...settings import setting
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct
from ..figures import Line
from ..problem import RunContext, trained_model
from ..seeds import combine, scale
from .base import (
    AttackExperimentSettings,
    cell_problem,
    check_nonempty,
    model_name,
    paper_number,
    task_parts,
    task_title,
    verdict,
)
from .numerics import A9_CAPTION, a9_table

TITLE = "Data interventions: accuracy by epoch and flip rate (Table 5)"
INTRO = ("Test accuracy by epoch of the baseline (Base) and after retraining on intervened data "
         "(Curated: the top 10% most helpful points of the influence set dropped; Transformed: "
         "those points replaced by their PGD versions; Adversarial: every training point "
         "replaced by its PGD version), beside the paper's Table 5, and the flip rate between "
         "the baseline's influence scores and the retrained network's. The paper's accuracies "
         "are a training outcome: the preset's unstated training settings were calibrated on "
         "them (docs/reproduction.md), never on the flip rates.")

#: Table 5 epochs, and the paper's columns: Base @1, Curated/Transformed @1, @10, @100, then the
#: PGD flip rate %. Keys: (dataset, architecture, "standard" or "adversarially trained").
TABLE5_EPOCHS = (1, 10, 100)
PAPER_TABLE5 = {
    ("mnist", "relu", "standard"): (91.6, 89.2, 91.8, 95.1, 97.1, 97.8, 98.4, 3.3),
    ("fashion-mnist", "relu", "standard"): (88.5, 86.1, 89.2, 90.8, 93.1, 93.9, 95.6, 15.0),
    ("cifar10", "relu", "standard"): (65.3, 63.8, 66.1, 68.9, 70.8, 71.6, 73.1, 3.1),
    ("mnist", "attn", "standard"): (93.1, 90.7, 93.3, 96.6, 98.6, 99.3, 99.9, 28.9),
    ("fashion-mnist", "attn", "standard"): (90.5, 88.1, 91.2, 92.8, 95.1, 95.9, 97.6, 31.2),
    ("cifar10", "attn", "standard"): (70.8, 69.3, 71.6, 74.4, 76.3, 77.1, 78.6, 19.1),
    ("mnist", "relu", "adversarially trained"): (89.6, 87.7, 90.8, 93.9, 96.3, 96.8, 97.9, 43.4),
    ("fashion-mnist", "relu", "adversarially trained"): (86.5, 84.6, 88.2, 89.6, 92.3, 92.9,
                                                         95.1, 42.9),
    ("cifar10", "relu", "adversarially trained"): (63.3, 62.3, 65.1, 67.7, 70.0, 70.6, 72.6,
                                                   36.5),
    ("mnist", "attn", "adversarially trained"): (91.1, 89.2, 92.3, 95.4, 97.8, 98.3, 99.4, 42.2),
    ("fashion-mnist", "attn", "adversarially trained"): (88.5, 86.6, 90.2, 91.6, 94.3, 94.9,
                                                         97.1, 44.4),
    ("cifar10", "attn", "adversarially trained"): (68.8, 67.8, 70.6, 73.2, 75.5, 76.1, 78.1,
                                                   38.6),
}
#: "Near the paper's accuracy": within this many points (the issue's "within a few points").
ACCURACY_TOLERANCE = 2.0


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
    rows = p.influence_rows
    baseline = s.estimator().attribute(net, p.x[rows], p.y[rows], p.x_test, p.y_test)
    train_settings = s.train.replace(progress=ctx.progress)
    result = intervene(cell["intervention"], net, p.x, p.y, p.x_test, p.y_test, train_settings,
                       s.attack_as("pgd"), s.influence, baseline, subset=rows)
    return {**result.summary(), "n_influence": int(rows.numel()),
            "baseline_accuracy_by_epoch": {
                e: history["test_accuracy"][e - 1] for e in result.accuracy_by_epoch()}}


def _by_epoch(values: dict) -> dict[int, float]:
    """Accuracy by epoch with int keys (JSON stores them as strings)."""
    return {int(e): a for e, a in values.items()}


def _paper_row(task: str, model: str, kind: str = "standard") -> tuple | None:
    dataset, classes = task_parts(task)
    return None if classes is not None else PAPER_TABLE5.get((dataset, model, kind))


def _paper_at(paper: tuple | None, epoch: int) -> tuple:
    """The paper's Base, Curated, Transformed accuracy % at ``epoch`` (None where absent)."""
    if paper is None or epoch not in TABLE5_EPOCHS:
        return (None, None, None)
    i = TABLE5_EPOCHS.index(epoch)
    return (paper[0] if i == 0 else None, paper[1 + 2 * i], paper[2 + 2 * i])


def _near(ours: float | None, paper: float | None) -> str:
    if ours is None or paper is None:
        return "—"
    return verdict(scale(ours, 100), (paper - ACCURACY_TOLERANCE, paper + ACCURACY_TOLERANCE))


def table5(records: list[dict], kind: str = "standard") -> list[list[str]]:
    """Rows of Table 5: per task, model and epoch, Base / Curated / Transformed accuracy %,
    the paper's (its rows of ``kind``), whether each lies within ACCURACY_TOLERANCE of the
    paper's, and how many seeds the Curated / Transformed cells hold (B, the same baseline
    in both, from the cells with more seeds)."""
    rows = []
    for (task, model), group_records in group(records, "task", "model").items():
        by = {r["cell"]["intervention"]: r["result"] for r in group_records}
        count = {r["cell"]["intervention"]: len(r.get("seeds", [0])) for r in group_records}
        seeds = " / ".join(str(count.get(i, 0)) for i in ("curated", "transformed"))
        acc = {i: _by_epoch(res["accuracy_by_epoch"]) for i, res in by.items()}
        widest = max(group_records, key=lambda r: len(r.get("seeds", [0])))  # B: same net
        base = _by_epoch(widest["result"]["baseline_accuracy_by_epoch"])
        paper = _paper_row(task, model, kind)
        for epoch in sorted(base):
            ours = (base[epoch], *(acc.get(i, {}).get(epoch) for i in ("curated", "transformed")))
            theirs = _paper_at(paper, epoch)
            rows.append([task, model_name(model), str(epoch), *map(pct, ours),
                         " / ".join(paper_number(v) if v is not None else "—" for v in theirs),
                         "; ".join(f"{name}: {_near(o, t)}" for name, o, t in
                                   zip("BCT", ours, theirs, strict=True) if t is not None)
                         or "—", seeds])
        flip = by.get("transformed", {}).get("flip_rate")
        rows.append([task, model_name(model), "PGD flip rate (retrained on Transformed)", "—",
                     "—", pct(flip),
                     "—" if paper is None else paper_number(paper[-1]), "—", seeds])
    return rows


def _difference(a: float | None, b: float | None, factor: float = 100.0) -> float | None:
    """factor·(a − b), paired by seed (None where either is missing)."""
    return None if a is None or b is None else combine(lambda u, v: factor * (u - v), a, b)


def _paper_difference(paper: dict[str, tuple | None], first: tuple[str, int],
                      second: tuple[str, int]) -> float | None:
    """The paper's (model, column) value minus another's, from PAPER_TABLE5 rows."""
    a, b = paper[first[0]], paper[second[0]]
    return None if a is None or b is None else a[first[1]] - b[second[1]]


def claims(records: list[dict], kind: str = "standard") -> list[list[str]]:
    """The paper's claims on Table 5, each a difference paired by seed against 0: Transformed
    keeps more accuracy than Curated (§5, "Dual implications": T − C), MLP-Attn keeps more
    accuracy than 2L-ReLU under both (Appendix E), its Transformed flip rate is higher
    (Appendix E, "Malleability gap"), and 2L-ReLU's Spearman ρ is higher (A.6.1). Rows:
    task, claim, difference, ours (points, 95 % CI), the paper's, verdict."""
    res = {(r["cell"]["task"], r["cell"]["model"], r["cell"]["intervention"]): r["result"]
           for r in records}
    rows = []

    def row(task: str, claim: str, what: str, ours: float | None, theirs: float | None) -> None:
        if ours is not None:
            rows.append([task, claim, what, fmt(ours),
                         "—" if theirs is None else fmt(round(theirs, 1)),
                         verdict(ours, (0.0, math.inf))])

    def accuracy(task: str, model: str, intervention: str, epoch: int) -> float | None:
        result = res.get((task, model, intervention))
        return None if result is None else _by_epoch(result["accuracy_by_epoch"]).get(epoch)

    columns = {e: (1 + 2 * i, 2 + 2 * i)  # the paper's Curated / Transformed columns
               for i, e in enumerate(TABLE5_EPOCHS)}
    for (task,), task_records in group(records, "task").items():
        models = list(dict.fromkeys(r["cell"]["model"] for r in task_records))
        paper = {m: _paper_row(task, m, kind) for m in ("relu", "attn")}
        for model in models:
            for epoch, (c, t) in columns.items():
                row(task, "Transformed keeps more accuracy than Curated",
                    f"{model_name(model)}: T − C @ {epoch}",
                    _difference(accuracy(task, model, "transformed", epoch),
                                accuracy(task, model, "curated", epoch)),
                    _paper_difference(paper, (model, t), (model, c)))
        for k, name in enumerate(("curated", "transformed")):
            for epoch, column in columns.items():
                row(task, "MLP-Attn keeps more accuracy than 2L-ReLU",
                    f"{name}: MLP-Attn − 2L-ReLU @ {epoch}",
                    _difference(accuracy(task, "attn", name, epoch),
                                accuracy(task, "relu", name, epoch)),
                    _paper_difference(paper, ("attn", column[k]), ("relu", column[k])))
        relu_t = res.get((task, "relu", "transformed"))
        attn_t = res.get((task, "attn", "transformed"))
        if relu_t is not None and attn_t is not None:
            row(task, "MLP-Attn's PGD flip rate is higher", "transformed: MLP-Attn − 2L-ReLU",
                _difference(attn_t["flip_rate"], relu_t["flip_rate"]),
                _paper_difference(paper, ("attn", -1), ("relu", -1)))
        for name in ("curated", "transformed"):
            relu, attn = res.get((task, "relu", name)), res.get((task, "attn", name))
            if relu is not None and attn is not None:
                row(task, "2L-ReLU's influence ranking is more stable",
                    f"{name}: Spearman ρ, 2L-ReLU − MLP-Attn",
                    _difference(relu["spearman"], attn["spearman"], 1.0), None)
    return rows


def section(records: list[dict], figs: Path) -> list[Block]:
    """Table 5 beside the paper's, per-intervention detail, accuracy figure."""
    epochs = sorted({int(e) for r in records for e in r["result"]["accuracy_by_epoch"]})
    rows, panels = [], {}
    for (task, model), group_records in group(records, "task", "model").items():
        widest = max(group_records, key=lambda r: len(r.get("seeds", [0])))  # B: same net
        base = _by_epoch(widest["result"]["baseline_accuracy_by_epoch"])
        lines = []
        for record in group_records:
            res = record["result"]
            acc = _by_epoch(res["accuracy_by_epoch"])
            rows.append([task, model_name(model), record["cell"]["intervention"],
                         *(pct(acc.get(e)) for e in epochs),
                         pct(res["flip_rate"]), fmt(res["spearman"]),
                         pct(res["top_k_overlap"]), fmt(res["n_influence"]),
                         fmt(res["n_train"])])
            lines.append(Line(record["cell"]["intervention"], sorted(acc),
                              [scale(acc[e], 100) for e in sorted(acc)]))
        lines.append(Line("baseline", sorted(base), [scale(base[e], 100) for e in sorted(base)],
                          {"color": "k", "ls": "--"}))
        paper = _paper_row(task, model)
        if paper is not None:
            lines.append(Line("paper Base", [1], [paper[0]],
                              {"color": "k", "ls": "none", "marker": "x", "ms": 8}))
        panels[f"{task_title(task)} — {model_name(model)}"] = lines
    path = figures.line_panels(figs / "interventions.png", panels, "epoch", "test accuracy %",
                               logx=True)
    paper_rows = [[dataset, model_name(model), kind, *map(paper_number, values)]
                  for (dataset, model, kind), values in PAPER_TABLE5.items()]
    header = ["task", "model", "intervention", *(f"acc. % @ epoch {e}" for e in epochs),
              "flip rate %", "Spearman ρ", "top-K stability %", "n_influence",
              "n_train after"]
    return [Table(["task", "model", "epoch", "Base %", "Curated %", "Transformed %",
                   "paper Base / Curated / Transformed %",
                   f"vs paper (within ±{ACCURACY_TOLERANCE:g} points)", "seeds C / T"],
                  table5(records),
                  "Table 5 (ours): test accuracy % at epochs 1, 10 and 100 of the baseline (B) "
                  "and after the Curated (C) and Transformed (T) interventions, and the PGD flip "
                  "rate of the Transformed retraining, beside the paper's (that the paper's "
                  "flip column is the Transformed retraining's is our reading: its values "
                  "equal Table 2's PGD column); the paper gives Base "
                  "at epoch 1 only. Our adversarially trained networks are not intervened on "
                  "here (the paper's rows are in the next table)."),
            Table(["task", "claim (paper)", "difference, paired by seed", "ours",
                   "paper's", "verdict"], claims(records),
                  "The paper's claims on Table 5, each a difference taken within each seed "
                  "(accuracy and flip rate in points, Spearman ρ as is) and decided by its 95 % "
                  "interval against 0; the paper's difference is read off its Table 5 "
                  "(A.6.1 gives no number for ρ)."),
            Table(["data set", "model", "network", "Base @1", "Curated @1", "Transformed @1",
                   "Curated @10", "Transformed @10", "Curated @100", "Transformed @100",
                   "PGD flip %"], paper_rows, "The paper's Table 5 (reported)."),
            Table(header, rows, "Per intervention: test accuracy % by epoch, flip rate, "
                                "Spearman ρ and top-K stability |T ∩ T′|/K (A.5.2) against the "
                                "baseline's scores on the influence set."),
            a9_table(records, "intervention", A9_CAPTION),
            figure(path, "Test accuracy vs epoch per intervention (95 % CI over seeds); dashed "
                         "= baseline; cross = the paper's Base at epoch 1.")]


#: The paper's Table 5 claims as the claims table words them (keys: :func:`claims`' claims).
CLAIM_TEXT = {
    "Transformed keeps more accuracy than Curated":
        "The Transformed intervention improves accuracy over Curated (§5, Table 5)",
    "MLP-Attn keeps more accuracy than 2L-ReLU":
        "MLP-Attn is more accurate than 2L-ReLU after each intervention (Table 5)",
    "MLP-Attn's PGD flip rate is higher":
        "MLP-Attn's PGD flip rate is higher (Table 5's flip column, read as: after retraining "
        "on Transformed; its values equal Table 2's PGD column)",
    "2L-ReLU's influence ranking is more stable":
        "2L-ReLU's influence ranking is more stable under interventions (A.6.1)",
}


def paper_claims(records: list[dict]) -> list[Claim]:
    """Table 5's claims per task (:func:`claims`): at epoch 100 for the accuracy claims, and
    the flip-rate and Spearman ρ differences."""
    return [Claim(CLAIM_TEXT[claim], f"{task}, {what}",
                  "—" if theirs == "—" else f"{theirs} points", ours, judged,
                  ("table5", task, what))
            for task, claim, what, ours, theirs, judged in claims(records)
            if "@" not in what or what.endswith("@ 100")]
