"""Influence stability over training under the data interventions (A.6.1), the Adversarial
intervention included (§5.2: PGD on every training point, then retraining).

The baseline network trains on the task's n_train points and keeps its weights at the
recorded epochs (a schedule fixed in the preset); each intervention retrains from the
baseline's initialisation on the intervened set (:func:`~malleability.interventions.intervene`)
and keeps its weights at the same epochs. At each recorded epoch e, the NTK influence scores
of the baseline at e and of the retrained network at e are compared on the influence-set
points both training sets hold: Spearman ρ (the paper's stability), top-K overlap and the
flip rate over the baseline's top 10 %. Pairing the two networks at the same epoch is our
reading of "stability ... throughout training" (the paper does not say which pair it
compares); at the last epoch it is the ``interventions`` experiment's comparison.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...dynamics import change, check_record_epochs, score_metrics, weights_of
from ...interventions import intervene
from ...settings import setting
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct
from ..figures import Line
from ..problem import RunContext, trained_model
from ..seeds import combine
from . import interventions
from .base import (
    NetworkSettings,
    cell_problem,
    model_name,
    seeds_phrase,
    task_parts,
    task_title,
    verdict,
)
from .interventions import InterventionSettings

TITLE = "Influence stability over training under the interventions (A.6.1)"
INTRO = ("Spearman ρ between the influence scores of the baseline network and of the network "
         "retrained on intervened data (Curated, Transformed, and Adversarial: every training "
         "point replaced by its PGD version), both taken at the same recorded epoch, with the "
         "top-K overlap and the flip rate. The paper (A.6.1) reports constant stability over "
         "training for Curated and Transformed, higher for 2L-ReLU than for MLP-Attn, and "
         "under Adversarial a decline for both architectures on Fashion-MNIST and CIFAR-10 "
         "while on MNIST 2L-ReLU's stability recovers and rises and MLP-Attn's does not.")

#: "Constant throughout training": |ρ(last recorded epoch) − ρ(first)| below this, chosen
#: before any run as a tenth of ρ's range of positive association [0, 1].
CONSTANT_TOLERANCE = 0.1
#: Data sets on which the paper reports a decline under Adversarial (A.6.1).
DECLINE_DATASETS = ("fashion-mnist", "cifar10")
CURVES = ("spearman", "top_k_overlap", "flip_rate")


@dataclass(frozen=True)
class RecordedEpochsSettings(NetworkSettings):
    """Experiments that measure influence at recorded epochs of the training."""

    record_epochs: tuple[int, ...] = setting(
        (1, 10, 100), "Epochs at which influence is measured (a schedule fixed in advance; "
        "at most train.epochs).", check_record_epochs)

    def check_relations(self) -> None:
        super().check_relations()
        if self.record_epochs[-1] > self.train.epochs:
            raise ValueError(f"record_epochs: expected epochs up to train.epochs "
                             f"({self.train.epochs}), got {self.record_epochs[-1]}")


@dataclass(frozen=True)
class InterventionDynamicsSettings(InterventionSettings, RecordedEpochsSettings):
    """The interventions' settings and the recorded epochs."""


SETTINGS = InterventionDynamicsSettings


cells = interventions.cells


def run(s: InterventionDynamicsSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    epochs = s.record_epochs
    net, history = trained_model(cell["model"], p, s.model, s.train, ctx, checkpoints=epochs)
    rows, estimator = p.influence_rows, s.estimator()
    x, y = p.x[rows], p.y[rows]
    baseline = estimator.attribute(net, x, y, p.x_test, p.y_test)
    result = intervene(cell["intervention"], net, p.x, p.y, p.x_test, p.y_test,
                       s.train.replace(progress=ctx.progress, checkpoints=epochs),
                       s.attack_as("pgd"), s.influence, baseline, subset=rows)
    curves: dict[str, list[float]] = {k: [] for k in CURVES}
    for e in epochs:
        with weights_of(net, history["checkpoints"][e]):
            before = estimator.attribute(net, x, y, p.x_test, p.y_test).scores[result.held]
        with weights_of(result.model, result.history.checkpoints[e]):
            after = estimator.attribute(result.model, result.x_scored, result.y_scored,
                                        p.x_test, p.y_test).scores
        for key, value in score_metrics(before, after, s.influence.fraction).items():
            curves[key].append(value)
    return {**result.summary(), "n_influence": int(rows.numel()), "epochs": list(epochs),
            "by_epoch": {**curves,
                         "test_accuracy": [result.history.test_accuracy[e - 1] for e in epochs],
                         "baseline_test_accuracy": [history["test_accuracy"][e - 1]
                                                    for e in epochs]}}


def _curve_change(curve: list[float]) -> float:
    """ρ(last) − ρ(first), per seed."""
    return combine(lambda *v: change(v), *curve)


def _mean_gap(relu: list[float], attn: list[float]) -> float:
    """Mean over the recorded epochs of 2L-ReLU's minus MLP-Attn's value, per seed."""
    k = len(relu)
    return combine(lambda *v: sum(a - b for a, b in zip(v[:k], v[k:], strict=True)) / k,
                   *relu, *attn)


def claims(records: list[dict]) -> list[tuple[str, str, str, float, str]]:
    """A.6.1's claims: (claim, where, the paper's, ours, verdict). Curated / Transformed: ρ
    constant (|change| < CONSTANT_TOLERANCE) and higher for 2L-ReLU (the mean over epochs of
    the paired difference > 0); Adversarial: ρ declines on Fashion-MNIST and CIFAR-10 (change
    < 0, both architectures), rises for 2L-ReLU on MNIST (change > 0) and does not rise for
    MLP-Attn there."""
    res = {(r["cell"]["task"], r["cell"]["model"], r["cell"]["intervention"]): r["result"]
           for r in records}
    rows = []
    for (task, model, name), result in res.items():
        rho = result["by_epoch"]["spearman"]
        where = f"{task}, {model_name(model)}, {name}"
        delta = _curve_change(rho)
        dataset = task_parts(task)[0]
        if name in ("curated", "transformed"):
            rows.append(("Influence stability is constant over training (A.6.1)", where,
                         "constant", delta, verdict(delta, (-CONSTANT_TOLERANCE,
                                                            CONSTANT_TOLERANCE))))
        elif dataset in DECLINE_DATASETS:
            rows.append(("Under Adversarial, stability declines over training (A.6.1)", where,
                         "declines", delta, verdict(delta, (-math.inf, 0.0))))
        elif dataset == "mnist":
            rises = model == "relu"
            rows.append(("Under Adversarial on MNIST, 2L-ReLU's stability recovers and rises, "
                         "MLP-Attn's does not (A.6.1)", where,
                         "rises" if rises else "does not rise", delta,
                         verdict(delta, (0.0, math.inf), rises)))
    for task, name in dict.fromkeys((t, i) for t, _, i in res):
        relu, attn = res.get((task, "relu", name)), res.get((task, "attn", name))
        if name == "adversarial" or relu is None or attn is None:
            continue
        gap = _mean_gap(relu["by_epoch"]["spearman"], attn["by_epoch"]["spearman"])
        rows.append(("2L-ReLU's influence ranking is more stable than MLP-Attn's over "
                     "training (A.6.1)", f"{task}, {name}", "higher", gap,
                     verdict(gap, (0.0, math.inf))))
    return rows


def section(records: list[dict], figs: Path) -> list[Block]:
    """ρ per recorded epoch, its change and the A.6.1 claims; the Adversarial intervention's
    accuracy and malleability; ρ against epoch."""
    rows, accuracy, panels, counts = [], [], {}, {}
    for r in records:
        counts.setdefault(r["cell"]["task"], set()).add(len(r.get("seeds", [0])))
    for (task, model, name), (record, *_) in group(records, "task", "model",
                                                   "intervention").items():
        res = record["result"]
        epochs, curves = res["epochs"], res["by_epoch"]
        rows.append([task, model_name(model), name,
                     " · ".join(f"{e}: {fmt(v)}" for e, v in
                                zip(epochs, curves["spearman"], strict=True)),
                     fmt(_curve_change(curves["spearman"])),
                     pct(curves["top_k_overlap"][-1]), pct(curves["flip_rate"][-1]),
                     str(len(record.get("seeds", [0])))])
        if name == "adversarial":
            accuracy.append([task, model_name(model),
                             *(f"{pct(b)} / {pct(a)}" for b, a in
                               zip(curves["baseline_test_accuracy"], curves["test_accuracy"],
                                   strict=True)),
                             pct(res["flip_rate"]), fmt(res["spearman"]),
                             pct(res["top_k_overlap"])])
        panels.setdefault(f"{task_title(task)}, {seeds_phrase(counts[task])}", []).append(
            Line(f"{model_name(model)} {name}", epochs, curves["spearman"],
                 {"ls": "-" if model == "relu" else "--"}))
    epochs = records[0]["result"]["epochs"] if records else []
    path = figures.line_panels(figs / "intervention_dynamics.png", panels, "epoch",
                               "Spearman ρ (baseline vs retrained)", logx=True)
    return [Table(["task", "model", "intervention", "Spearman ρ by epoch",
                   "ρ(last) − ρ(first), paired", "top-K overlap % (last)",
                   "flip rate % (last)", "seeds"], rows,
                  "Stability of the influence ranking over training: Spearman ρ between the "
                  "baseline's and the retrained network's scores at the same epoch, its change "
                  "from the first recorded epoch to the last (paired by seed), and the top-K "
                  "overlap and flip rate at the last epoch."),
            Table(["claim (paper)", "where", "paper", "ours (95 % CI)", "verdict"],
                  [[c, w, p, fmt(o), v] for c, w, p, o, v in claims(records)],
                  f"A.6.1's claims. \"Constant\": the change of ρ lies within "
                  f"±{CONSTANT_TOLERANCE:g}; \"higher\": the mean over the recorded epochs "
                  f"of ρ(2L-ReLU) − ρ(MLP-Attn), paired by seed, above 0."),
            Table(["task", "model", *(f"acc. % @ {e} baseline / Adversarial" for e in epochs),
                   "flip rate % (last)", "Spearman ρ (last)", "top-K overlap % (last)"],
                  accuracy,
                  "The Adversarial intervention (PGD on every training point, then "
                  "retraining): test accuracy by epoch of the baseline and of the retrained "
                  "network, and the malleability of its influence against the baseline's at "
                  "the last epoch. The paper reports no accuracy for it."),
            figure(path, "Spearman ρ between the baseline's and the retrained network's "
                         "influence at each recorded epoch (95 % CI over seeds); solid "
                         "2L-ReLU, dashed MLP-Attn.")]


def paper_claims(records: list[dict]) -> list[Claim]:
    """A.6.1's claims (:func:`claims`) for the claims table."""
    return [Claim(claim, where, paper, f"{'mean gap' if 'more stable' in claim else 'change'}"
                  f" of ρ {fmt(ours)}", judged, ("intervention_dynamics", claim, where))
            for claim, where, paper, ours, judged in claims(records)]
