"""The random-perturbation control of Table 2 (issue 31): random ±ε signs on the same top points.

Per task, architecture and seed, the network of ``flip_rates`` (the same settings give the
same cached network) and NTK-LOO's top ``influence.fraction`` points (the same S: the
estimator is deterministic); the ``random-sign`` attack at the shared attack's ε replaces the
adversarial one. The section shows the paper, the adversarial flip rates (``flip_rates``'
cells, read beside these: :data:`READS`) and the control side by side, and the excess of each
attack over the control (:func:`~malleability.controls.excess`, paired by seed) with its
verdict (:func:`~malleability.controls.verdict`). NTK-LOO is deterministic, so its noise
control is exactly 0 (:data:`~malleability.controls.NOISELESS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...attacks import RandomSign
from ...controls import NOISELESS, excess
from ...controls import verdict as control_verdict
from ...intervals import TOO_FEW_SEEDS
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct
from ..problem import RunContext, trained_model
from ..seeds import combine, scale
from .base import (
    AttackExperimentSettings,
    cell_problem,
    model_name,
    paper_number,
    paper_task,
    task_model_cells,
    task_title,
    verdict,
)
from .flip_rates import ATTACKS, PAPER_TABLE2, gap_check, paper_attn_higher

TITLE = "Flip rate against a random perturbation of the same size (Table 2's control)"
INTRO = ("The flip rate of the same top 10% points of the same networks under uniform random "
         "±ε signs (no gradient) at the attack's ε, beside the adversarial flip rates of "
         "Table 2. The excess of an attack over this control (paired by seed) is what the "
         "attack does beyond any perturbation of that size; a flip rate that the control "
         "matches comes from a ranking near its ties, not from the attack. Verdict of an "
         "excess: malleable when its 95 % interval lies above 0, not malleable when it lies "
         "below 5 points, else not distinguishable from noise.")

#: Experiments whose cells this section reads beside its own.
READS = ("flip_rates",)


@dataclass(frozen=True)
class FlipControlSettings(AttackExperimentSettings):
    """The flip-rate experiment's settings; the attack's ε is the control's."""


SETTINGS = FlipControlSettings


def cells(s: FlipControlSettings) -> list[dict]:
    return task_model_cells(s)


def run(s: FlipControlSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    net, history = trained_model(cell["model"], p, s.model, s.train, ctx)
    result = s.measure(net, p, s.attack_as(RandomSign.name))
    return {**result.summary(), "test_accuracy": history["test_accuracy"][-1],
            "n_train": p.x.shape[0], "n_influence": int(p.influence_rows.numel())}


def over_control(adversarial: float | None, control: float | None) -> float | None:
    """The flip rate's excess over the control and the (zero) estimator noise, by seed."""
    if adversarial is None or control is None:
        return None
    return excess("flip_rate", adversarial, NOISELESS["flip_rate"], control)


def split(records: list[dict]) -> tuple[list[dict], dict[tuple[str, str, str], dict]]:
    """This experiment's records, and flip_rates' results by (task, model, attack)."""
    own = [r for r in records if r.get("experiment", "flip_controls") == "flip_controls"]
    adversarial = {(r["cell"]["task"], r["cell"]["model"], r["cell"]["attack"]): r["result"]
                   for r in records if r.get("experiment") == "flip_rates"}
    return own, adversarial


def excess_gaps(records: list[dict], attack: str = "pgd") -> list[tuple[str, float, bool, str]]:
    """Per task with both architectures: MLP-Attn's excess of ``attack`` over the control minus
    2L-ReLU's (points, paired by seed), the paper's direction and the verdict against it."""
    own, adversarial = split(records)
    excesses = {}
    for (task, model), group_records in group(own, "task", "model").items():
        flip = adversarial.get((task, model, attack), {}).get("flip_rate")
        excesses[task, model] = over_control(flip, group_records[0]["result"]["flip_rate"])
    out = []
    for task in dict.fromkeys(t for t, _ in excesses):
        relu, attn = excesses.get((task, "relu")), excesses.get((task, "attn"))
        if relu is None or attn is None:
            continue
        gap = combine(lambda a, r: 100 * (a - r), attn, relu)
        higher = paper_attn_higher(task)
        out.append((task, gap, higher, verdict(gap, (0.0, math.inf), higher)))
    return out


#: The change column where a task has no control cells for both architectures.
NOT_RUN = "not yet run"
PENDING = "pending (control on fewer than 3 seeds)"


def table2_changes(records: list[dict]) -> list[list[str]]:
    """What the control changes in each verdict of Table 2 (flip_rates' cells): per task and
    attack, the verdict of the raw MLP-Attn − 2L-ReLU gap (:func:`~.flip_rates.gap_check`) and
    that of the gap of the excesses over the random control (:func:`excess_gaps`, on the seeds
    both have), :data:`NOT_RUN` where the task lacks control cells, or :data:`PENDING` where
    its control cells cover fewer than 3 seeds (so the verdict with the control is not yet a
    change)."""
    own, adversarial = split(records)
    rates: dict[tuple[str, str], dict[str, float]] = {}
    for (task, model, attack), result in adversarial.items():
        rates.setdefault((task, model), {})[attack] = result["flip_rate"]
    excess = {(task, attack): (gap, judged) for attack in ATTACKS
              for task, gap, _, judged in excess_gaps(records, attack)}
    rows = []
    for task in sorted(dict.fromkeys(t for t, _ in rates)):
        relu, attn = rates.get((task, "relu"), {}), rates.get((task, "attn"), {})
        for attack in ATTACKS:
            if attack not in relu or attack not in attn:
                continue
            gap, *_, raw = gap_check(task, relu, attn, attack)
            if (task, attack) not in excess:
                rows.append([task, attack.upper(), gap, raw, "—", "—", "—", NOT_RUN])
                continue
            ex_gap, judged = excess[task, attack]
            seeds = ", ".join(map(str, getattr(ex_gap, "seeds", ())))
            change = (PENDING if judged == TOO_FEW_SEEDS else
                      "unchanged" if judged == raw else f"{raw} → {judged}")
            rows.append([task, attack.upper(), gap, raw, seeds or "—", fmt(ex_gap), judged,
                         change])
    return rows


#: The header of :func:`table2_changes`' rows.
CHANGES_HEADER = ["task", "attack", "Table 2: MLP-Attn − 2L-ReLU (points)", "Table 2 verdict",
                  "control seeds", "gap of the excesses over the control (points)",
                  "verdict with the control", "what the control changes"]


def changes_table(records: list[dict]) -> Table:
    """:func:`table2_changes` as a table."""
    return Table(CHANGES_HEADER, table2_changes(records),
                 "What the random-perturbation control changes in each Table 2 verdict: the "
                 "paper's comparison (MLP-Attn flips more, except on CIFAR-10 binary) on the "
                 "raw flip rates (all seeds) and on each architecture's excess over the control "
                 "(attack − random ±ε, paired by seed, on the seeds with control cells).")


def section(records: list[dict], figs: Path) -> list[Block]:
    """Paper, adversarial and control side by side; excess per attack with its verdict; the
    MLP-Attn − 2L-ReLU gap of the PGD excess against the paper's claim; one figure."""
    own, adversarial = split(records)
    side, rows, bars, paper_bars = [], [], {}, {}
    for (task, model), group_records in group(own, "task", "model").items():
        control = group_records[0]["result"]["flip_rate"]
        paper = PAPER_TABLE2.get((paper_task(task) or "", model))
        adv = {a: adversarial.get((task, model, a), {}).get("flip_rate") for a in ATTACKS}
        side.append([task, model_name(model),
                     *(("—",) * 3 if paper is None else map(paper_number, paper)),
                     *(pct(adv[a]) for a in ATTACKS), pct(control)])
        for a in ATTACKS:
            ex = over_control(adv[a], control)
            if ex is not None:
                rows.append([task, model_name(model), a.upper(), pct(ex),
                             control_verdict(ex)])
        title = task_title(task)
        if paper is not None:
            paper_bars.setdefault(title, {})[model_name(model)] = {
                "PGD": paper[ATTACKS.index("pgd")]}
        for name, value in (("PGD", adv["pgd"]), ("random ±ε", control)):
            if value is not None:
                bars.setdefault(title, {}).setdefault(model_name(model), {})[name] = (
                    scale(value, 100))
    checks = [[task, fmt(gap), "yes" if higher else "no (≈ equal)", judged]
              for task, gap, higher, judged in excess_gaps(records)]
    changes = changes_table(records)
    blocks: list[Block] = [
        *([changes] if changes.rows else []),
        Table(["task", "model", "paper FGSM %", "paper PGD %", "paper MIM %",
               *(f"{a.upper()} %" for a in ATTACKS), "random ±ε %"], side,
              "Flip rate of the top 10%: the paper (Table 2), ours under each attack, and ours "
              "under random ±ε signs at the same ε (mean [95 % CI] over seeds).")]
    if rows:
        blocks.append(Table(["task", "model", "attack", "excess over control (points)",
                             "verdict"], rows,
                            "Attack − max(random control, estimator noise = 0), paired by "
                            "seed, with its 95 % CI and the verdict of that interval."))
    if checks:
        blocks.append(Table(["task", "MLP-Attn − 2L-ReLU, PGD excess (points)",
                             "paper: MLP-Attn higher", "vs paper"], checks,
                            "The paper's comparison on the excess over the control instead "
                            "of the raw flip rate, paired by seed."))
    if bars:
        path = figures.bar_panels(figs / "flip_controls.png", bars, "flip rate %", paper_bars,
                                  reference_label="paper PGD (Table 2)", sharey=True)
        blocks.append(figure(path, "Flip rate under PGD and under random ±ε signs of the "
                                   "same size, same points, same networks; diamonds = the "
                                   "paper's PGD flip rate."))
    return blocks


def paper_claims(records: list[dict]) -> list[Claim]:
    """Table 2's claim (MLP-Attn more malleable than 2L-ReLU, except on CIFAR-10 binary) on the
    PGD flip rate's excess over the random control instead of the raw flip rate."""
    claims = []
    for task, gap, higher, judged in excess_gaps(records):
        claim = ("MLP-Attn's influence is more malleable than 2L-ReLU's beyond a random "
                 "perturbation of the same size (Table 2, PGD, with the control)" if higher
                 else "The MLP-Attn advantage vanishes on CIFAR-10 binary beyond a random "
                      "perturbation (Table 2, PGD, with the control)")
        claims.append(Claim(claim, f"{task}, PGD − random ±ε", "—",
                            f"gap of the excesses {fmt(gap)} points, paired", judged,
                            ("table2-control", task)))
    return claims
