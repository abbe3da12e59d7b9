"""Theory against measurement: the malleability bounds (Theorems C.2, C.11), the intrinsic
sensitivity (Def. C.12) as a predictor, Corollary C.4 (ridge) and Remark 4.10 (truncation).

One experiment, two kinds of cells (docs/method.md, "The paper's theory as diagnostics"):
``part="bounds"`` per task × model × ε (:mod:`.theory_bounds`) and ``part="remedy"`` per task ×
attention rank × width (:mod:`.theory_remedy`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ..._validation import check_positive_int
from ...settings import setting
from ..blocks import Block, Claim
from ..problem import RunContext
from ..seeds import merge_seeds
from . import theory_bounds, theory_remedy
from .base import AttackExperimentSettings, cell_problem, check_nonempty, check_task_labels
from .theory_remedy import FULL

TITLE = "Theory against measurement (Theorems C.2, C.11, Corollary C.4, Remark 4.10)"
INTRO = ("The paper's malleability bounds evaluated with measured values on the trained "
         "networks, never forced to hold: the influence shift ‖α′ − α‖ of the attacked training "
         "set against the Theorem C.11 upper bound (with the measured and with the analytic "
         "kernel Lipschitz constant) and the Theorem C.2 lower bound (the paper's form and the "
         "exact form); whether the intrinsic sensitivity S (Def. C.12) orders the flip rates of "
         "MLP-Attn and 2L-ReLU; whether the flip rate falls with the ridge λ (Corollary C.4); "
         "and whether truncating attention to rank k (Remark 4.10) brings MLP-Attn towards "
         "its kernel regime, at what cost in accuracy.")


def _check_models(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    for i, arch in enumerate(check_nonempty(value, name)):
        if arch not in ("relu", "attn"):
            raise ValueError(f"{name}[{i}]: expected relu or attn (the architectures with an "
                             f"analytic Lipschitz constant), got {arch!r}")
    return value


def _check_positive_values(value: tuple, name: str) -> tuple:
    for i, v in enumerate(check_nonempty(value, name)):
        if not v > 0 or not math.isfinite(v):
            raise ValueError(f"{name}[{i}]: expected a positive number, got {v!r}")
    return value


def _check_epsilons(value: tuple[float, ...], name: str) -> tuple[float, ...]:
    for i, v in enumerate(_check_positive_values(value, name)):
        if v > 1:
            raise ValueError(f"{name}[{i}]: expected a budget in (0, 1] pixel units, got {v!r}")
    return value


def _check_corners(value: int, name: str) -> int:
    if value < 0:
        raise ValueError(f"{name}: expected a non-negative integer, got {value}")
    return value


@dataclass(frozen=True)
class TheorySettings(AttackExperimentSettings):
    models: tuple[str, ...] = setting(("relu", "attn"), "Architectures: relu (2L-ReLU), attn "
                                      "(MLP-Attn).", _check_models, flag="--model")
    epsilons: tuple[float, ...] = setting((0.1, 0.3), "ℓ∞ budgets ε of the bounds cells "
                                          "(the attack's other settings are shared).",
                                          _check_epsilons, flag="--eps")
    ridges: tuple[float, ...] = setting((1e-3, 1e-2, 1e-1, 1.0), "Ridge λ sweep of the bounds "
                                        "cells (Corollary C.4).", _check_positive_values,
                                        flag="--ridge")
    gram_points: int = setting(12, "Points of S (most helpful first, at the first λ) whose "
                               "one-point kernel change is maximised.", check_positive_int)
    search_steps: int = setting(10, "PGD steps of the kernel-change search.",
                                check_positive_int)
    search_restarts: int = setting(1, "PGD restarts of the kernel-change search.",
                                   check_positive_int)
    search_corners: int = setting(4, "Random corners of the ε-box tried by the search.",
                                  _check_corners)
    ranks: tuple[int, ...] = setting((2, 8, 32), "Attention ranks k of the remedy sweep (full "
                                     "rank is always added).", _check_positive_values,
                                     flag="--rank")
    widths: tuple[int, ...] = setting((64, 256, 1024), "Widths m of the remedy sweep.",
                                      _check_positive_values, flag="--width")
    remedy_tasks: tuple[str, ...] | None = setting(None, "Tasks of the remedy sweep "
                                                   "(default: all).")

    def check_relations(self) -> None:
        check_task_labels(self.remedy_tasks, self.tasks, "remedy_tasks")


SETTINGS = TheorySettings
#: The section checks the bounds instance by instance: it gets every seed's cells unmerged.
PER_SEED = "all"


def cells(s: TheorySettings) -> list[dict]:
    bounds = [{"part": "bounds", "task": t.label, "model": m, "eps": e}
              for t in s.tasks for m in s.models for e in s.epsilons]
    remedy = [{"part": "remedy", "task": t.label, "rank": k, "width": w}
              for t in s.tasks if s.remedy_tasks is None or t.label in s.remedy_tasks
              for k in (*s.ranks, FULL) for w in s.widths]
    return bounds + remedy


def run(s: TheorySettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    if cell["part"] == "bounds":
        return theory_bounds.run_bounds(s, cell, p, ctx)
    return theory_remedy.run_remedy(s, cell, p, ctx)


def section(records: list[dict], figs: Path) -> list[Block]:
    rows = theory_bounds.flat_rows(records)
    blocks: list[Block] = []
    if rows:
        blocks += theory_bounds.blocks(records, rows, figs)
    remedy = [r for r in records if r["cell"]["part"] == "remedy"]
    if remedy:  # one row per (task, rank, width): the summary over seeds with its interval
        blocks += theory_remedy.blocks(merge_seeds(remedy, theory_remedy.GEOMETRIC), figs)
    return blocks


def paper_claims(records: list[dict]) -> list[Claim]:
    """The bounds (Theorems C.11, C.2), the ordering by S (Theorem C.5), Corollary C.4 per
    architecture and ε, and Remark 4.10's truncation, from every seed's cells."""
    rows = theory_bounds.flat_rows(records)
    remedy = [r for r in records if r["cell"]["part"] == "remedy"]
    return [*theory_bounds.bound_claims(rows), *theory_bounds.ordering_claim(rows),
            *theory_bounds.c4_claims(records),
            *(theory_remedy.remedy_claims(merge_seeds(remedy, theory_remedy.GEOMETRIC))
              if remedy else [])]
