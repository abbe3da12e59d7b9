"""Influence malleability over training (A.6.2): the flip rate of Definition 3.4 under FGSM and
PGD measured on the baseline network's weights at each recorded epoch (the training loop's
checkpoints, a schedule fixed in the preset), with Spearman ρ and the top-K overlap. At the
last epoch a cell measures what ``flip_rates`` measures on the same network.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...dynamics import fluctuation, weights_of
from ...intervals import undecided
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct
from ..figures import Line
from ..problem import RunContext, trained_model
from ..seeds import combine, scale
from . import flip_rates
from .base import cell_problem, decide, model_name, task_parts, task_title, verdict
from .flip_rates import FlipRateSettings
from .intervention_dynamics import CURVES, RecordedEpochsSettings

TITLE = "Influence malleability over training: flip rate by epoch (A.6.2)"
INTRO = ("Flip rate of the top 10 % most helpful points under FGSM and PGD, measured on the "
         "network's weights at each recorded epoch of its training, with Spearman ρ and the "
         "top-K overlap. The paper (A.6.2) reports that PGD shows the clearer pattern (on "
         "Fashion-MNIST MLP-Attn is more malleable than 2L-ReLU; on CIFAR-10 which one is more "
         "malleable depends on the number of classes) and that FGSM's flip rates are more "
         "erratic, fluctuating across training.")

#: The data set on which A.6.2 reports MLP-Attn more malleable under PGD.
PGD_GAP_DATASET = "fashion-mnist"
#: The data set on which A.6.2 reports relative malleability depending on the number of classes.
CLASS_COUNT_DATASET = "cifar10"


@dataclass(frozen=True)
class FlipDynamicsSettings(FlipRateSettings, RecordedEpochsSettings):
    """Table 2's settings and the recorded epochs."""


SETTINGS = FlipDynamicsSettings


cells = flip_rates.cells


def run(s: FlipDynamicsSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    epochs = s.record_epochs
    net, history = trained_model(cell["model"], p, s.model, s.train, ctx, checkpoints=epochs)
    curves: dict[str, list[float]] = {k: [] for k in CURVES}
    for e in epochs:
        with weights_of(net, history["checkpoints"][e]):
            measured = s.measure(net, p, s.attack_as(cell["attack"]))
        for key in CURVES:
            curves[key].append(getattr(measured, key))
    return {"n_train": p.x.shape[0], "n_influence": int(p.influence_rows.numel()),
            "n_selected": int(measured.selected.numel()), "epochs": list(epochs),
            "by_epoch": {**curves,
                         "test_accuracy": [history["test_accuracy"][e - 1] for e in epochs]}}


def _mean_gap(attn: list[float], relu: list[float]) -> float:
    """Mean over the recorded epochs of MLP-Attn's minus 2L-ReLU's flip rate, in points, per
    seed."""
    k = len(attn)
    return combine(lambda *v: 100 * sum(a - b for a, b in zip(v[:k], v[k:], strict=True)) / k,
                   *attn, *relu)


def _excess_fluctuation(fgsm: list[float], pgd: list[float]) -> float:
    """fluctuation(FGSM curve) − fluctuation(PGD curve), in points, per seed."""
    k = len(fgsm)
    return combine(lambda *v: 100 * (fluctuation(v[:k]) - fluctuation(v[k:])), *fgsm, *pgd)


def claims(records: list[dict]) -> list[tuple[str, str, str, float, str]]:
    """A.6.2's claims: (claim, where, the paper's, ours, verdict). PGD on Fashion-MNIST:
    MLP-Attn's flip rate above 2L-ReLU's over training (mean over epochs of the paired gap
    > 0); FGSM more erratic than PGD: the standard deviation over epochs of the FGSM flip
    rate exceeds PGD's (paired by seed), per task and model; on CIFAR-10 the sign of the PGD
    gap depends on the number of classes (:func:`_class_count_rows`)."""
    flips = {(r["cell"]["task"], r["cell"]["model"], r["cell"]["attack"]):
             r["result"]["by_epoch"]["flip_rate"] for r in records}
    rows = []
    for task, model in dict.fromkeys((t, m) for t, m, _ in flips):
        fgsm, pgd = flips.get((task, model, "fgsm")), flips.get((task, model, "pgd"))
        if fgsm is not None and pgd is not None:
            excess = _excess_fluctuation(fgsm, pgd)
            rows.append(("FGSM's flip rates fluctuate more across training than PGD's (A.6.2)",
                         f"{task}, {model_name(model)}", "more erratic", excess,
                         verdict(excess, (0.0, math.inf))))
    for task in dict.fromkeys(t for t, _, _ in flips):
        relu, attn = flips.get((task, "relu", "pgd")), flips.get((task, "attn", "pgd"))
        if task_parts(task)[0] == PGD_GAP_DATASET and relu is not None and attn is not None:
            gap = _mean_gap(attn, relu)
            rows.append(("Under PGD, MLP-Attn is more malleable than 2L-ReLU on Fashion-MNIST "
                         "over training (A.6.2)", task, "higher", gap,
                         verdict(gap, (0.0, math.inf))))
    return rows + _class_count_rows(flips)


def _class_count_rows(flips: dict[tuple[str, str, str], list[float]]
                      ) -> list[tuple[str, str, str, float, str]]:
    """A.6.2 on CIFAR-10: "the results are mixed, with relative malleability depending on the
    number of classes", read as the PGD gap MLP-Attn − 2L-ReLU (mean over the epochs, paired
    by seed) having opposite signs on the binary and the 10-class task. One row per task, each
    with its gap and the joint verdict: agrees where both signs are decided and differ,
    disagrees where both are decided and equal, else inconclusive (or why no interval may
    decide)."""
    gaps = {}
    for task in dict.fromkeys(t for t, _, _ in flips):
        dataset, classes = task_parts(task)
        relu, attn = flips.get((task, "relu", "pgd")), flips.get((task, "attn", "pgd"))
        if dataset == CLASS_COUNT_DATASET and relu is not None and attn is not None and (
                classes is None or len(classes) == 2):
            gaps["binary" if classes else "10-class"] = (task, _mean_gap(attn, relu))
    if len(gaps) < 2:
        return []
    reasons = [undecided(gap) for _, gap in gaps.values()]
    sides = [decide(gap, (0.0, math.inf)) for _, gap in gaps.values()]
    judged = (next(r for r in reasons if r) if any(reasons) else "inconclusive"
              if None in sides else "agrees" if sides[0] != sides[1] else "disagrees")
    return [("Under PGD on CIFAR-10, which architecture is more malleable depends on the "
             "number of classes (A.6.2; the sign of MLP-Attn − 2L-ReLU over training, binary "
             "against 10-class)", task, "mixed: the sign differs", gap, judged)
            for task, gap in gaps.values()]


def section(records: list[dict], figs: Path) -> list[Block]:
    """Flip rate per recorded epoch and its fluctuation, the A.6.2 claims, flip rate against
    epoch."""
    rows, panels = [], {}
    for (task, model, attack), (record, *_) in group(records, "task", "model",
                                                     "attack").items():
        res = record["result"]
        epochs, curves = res["epochs"], res["by_epoch"]
        rows.append([task, model_name(model), attack.upper(),
                     " · ".join(f"{e}: {pct(v)}" for e, v in
                                zip(epochs, curves["flip_rate"], strict=True)),
                     fmt(combine(lambda *v: 100 * fluctuation(v), *curves["flip_rate"])),
                     fmt(curves["spearman"][-1]), pct(curves["top_k_overlap"][-1]),
                     pct(curves["test_accuracy"][-1])])
        panels.setdefault(f"{task_title(task)} — {attack.upper()}", []).append(
            Line(model_name(model), epochs, [scale(v, 100) for v in curves["flip_rate"]]))
    path = figures.line_panels(figs / "flip_dynamics.png", panels, "epoch", "flip rate %",
                               logx=True)
    return [Table(["task", "model", "attack", "flip rate % by epoch",
                   "s.d. over epochs (points)", "Spearman ρ (last)",
                   "top-K overlap % (last)", "test acc. % (last)"], rows,
                  "Flip rate of the top 10 % under each attack on the network's weights at "
                  "each recorded epoch, its standard deviation over those epochs, and ρ, "
                  "top-K overlap and test accuracy at the last."),
            Table(["claim (paper)", "where", "paper", "ours, points (95 % CI)", "verdict"],
                  [[c, w, p, fmt(o), v] for c, w, p, o, v in claims(records)],
                  "A.6.2's claims: \"more erratic\" read as a larger standard deviation over "
                  "the recorded epochs (FGSM minus PGD, paired by seed); \"more malleable\" as "
                  "the mean over the recorded epochs of the paired flip-rate gap; \"depends on "
                  "the number of classes\" as that gap's sign differing between CIFAR-10's "
                  "binary and 10-class tasks (one row per task, the verdict joint)."),
            figure(path, "Flip rate against epoch (95 % CI over seeds).")]


def paper_claims(records: list[dict]) -> list[Claim]:
    """A.6.2's claims (:func:`claims`) for the claims table."""
    return [Claim(claim, where, paper, f"{fmt(ours)} points", judged,
                  ("flip_dynamics", claim, where))
            for claim, where, paper, ours, judged in claims(records)]
