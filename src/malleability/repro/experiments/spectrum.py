"""The spectral diagnostic (Theorem 4.8, Remark 4.10, A.12 step 1) per data set and class
subset, and κ as a function of n (the paper's κ depends on an n it does not state)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...data import load_dataset
from ...diagnostic import diagnose
from ...settings import setting
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group
from ..figures import Line
from ..problem import RunContext
from ..seeds import LOG_SCALE, combine
from .base import TaskSettings, check_nonempty, task_parts, verdict

TITLE = "Spectral diagnostic: κ, rank, attention κ vs κ³, width thresholds (Theorem 4.8, A.12)"
INTRO = ("κ_d = λ₁/λ_r of the Gram matrix of the preprocessed inputs (κ_eff over eigenvalues "
         "above the tolerance when it is rank-deficient), the measured κ_eff of the "
         "row-normalised linear-attention features beside κ_eff³, and the width thresholds "
         "m* ≈ κ⁶·n log n (MLP-Attn) and κ²·n log n (2L-ReLU). The paper reports κ ≈ 1.2·10³ "
         "on MNIST and 8.7·10³ on CIFAR-10, putting m* for MLP-Attn beyond any practical width.")

#: Fields summarised over seeds on the log scale (geometric mean, t interval of log₁₀ mapped
#: back: :class:`~malleability.intervals.GeometricEstimate`): positive, spanning decades over
#: seeds and n, drawn on a log axis; the claim decides on log₁₀ m*, the same scale.
GEOMETRIC = ("kappa", "kappa_effective", "kappa_cubed", "threshold_attention",
             "threshold_relu")

#: §5 / docs/method.md §7: κ of the input Gram matrix at n ≈ 100–200.
PAPER_KAPPA = {"mnist": 1.2e3, "cifar10": 8.7e3}


def _check_ns(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    for i, n in enumerate(value):
        if n < 2:
            raise ValueError(f"{name}[{i}]: expected an integer ≥ 2, got {n}")
    return value


@dataclass(frozen=True)
class SpectrumSettings(TaskSettings):
    ns: tuple[int, ...] = setting((100, 200, 500, 1000), "Subset sizes n of the κ(n) curve.",
                                  _check_ns)
    full: bool = setting(True, "Also diagnose the whole training split.")

    def check_relations(self) -> None:
        if not self.full:
            check_nonempty(self.ns, "ns")


SETTINGS = SpectrumSettings


def cells(s: SpectrumSettings) -> list[dict]:
    sizes: list[int | str] = [*s.ns, *(["full"] if s.full else [])]
    return [{"task": t.label, "n": n} for t in s.tasks for n in sizes]


def run(s: SpectrumSettings, cell: dict, ctx: RunContext) -> dict:
    task = next(t for t in s.tasks if t.label == cell["task"])
    n = None if cell["n"] == "full" else int(cell["n"])
    ds = load_dataset(task.dataset, "train", root=ctx.data_root, classes=task.classes, n=n,
                      seed=task.seed)
    result = diagnose(ds.inputs(), seed=task.seed)
    return {**result.to_dict(), "eigenvalues": result.inputs.eigenvalues,
            "attention_eigenvalues": result.attention.eigenvalues}


def section(records: list[dict], figs: Path) -> list[Block]:
    """Table of κ, rank, κ³, attention κ and thresholds per task and n; κ vs n figure."""
    rows, panels = [], {}
    for (task,), group_records in group(records, "task").items():
        results = sorted((r["result"] for r in group_records), key=lambda r: r["inputs"]["n"])
        paper_kappa = PAPER_KAPPA.get(task_parts(task)[0])
        for res in results:
            rows.append([task, *(fmt(res["inputs"][k]) for k in
                                 ("n", "d", "rank", "kappa", "kappa_effective")),
                         fmt(res["kappa_cubed"]), fmt(res["attention"]["kappa_effective"]),
                         fmt(res["attention"]["rank"]), fmt(res["threshold_attention"]),
                         fmt(res["threshold_relu"]), fmt(paper_kappa)])
        ns = [res["inputs"]["n"] for res in results]
        lines = [Line("κ_eff (inputs)", ns, [res["inputs"]["kappa_effective"] for res in results]),
                 Line("κ_eff³", ns, [res["kappa_cubed"] for res in results], {"ls": ":"}),
                 Line("κ_eff (linear attention, measured)", ns,
                      [res["attention"]["kappa_effective"] for res in results], {"ls": "--"})]
        if paper_kappa is not None:
            lines.append(Line("paper κ (n ≈ 100–200)", [min(ns), max(ns)],
                              [paper_kappa] * 2, {"color": "k", "marker": None, "lw": 0.8}))
        panels[task] = lines
    path = figures.line_panels(figs / "spectrum_kappa.png", panels, "n (training points)", "κ",
                               logx=True, logy=True)
    header = ["task", "n", "d", "rank", "κ_d", "κ_eff", "κ_eff³", "attention κ_eff",
              "attention rank", "m* MLP-Attn (κ⁶ n log n)", "m* 2L-ReLU (κ² n log n)", "paper κ"]
    return [Table(header, rows, f"Spectral diagnostic per task and n (κ, κ³ and m*: {LOG_SCALE})."),
            figure(path, "Effective κ vs n (log-log): inputs, κ³ and measured attention "
                         f"({LOG_SCALE}).")]


#: A width no practical network reaches (the paper's widths stop at 4096).
PRACTICAL_WIDTH = 1e6


def paper_claims(records: list[dict]) -> list[Claim]:
    """§5 / A.12 per 10-class task the paper measures: κ ≈ 1.2·10³ (MNIST) and 8.7·10³
    (CIFAR-10) at n ≈ 100–200, putting MLP-Attn's width threshold m* = κ⁶ n log n "beyond any
    practical width"; decided on log₁₀ m* at the smallest n (beyond PRACTICAL_WIDTH; the
    logarithm, as m* spans orders of magnitude over seeds)."""
    claims = []
    for (task,), group_records in group(records, "task").items():
        dataset, classes = task_parts(task)
        if dataset not in PAPER_KAPPA or classes is not None:
            continue
        res = min((r["result"] for r in group_records), key=lambda r: r["inputs"]["n"])
        log_width = combine(math.log10, res["threshold_attention"])
        claims.append(Claim(
            "The input Gram is ill-conditioned: MLP-Attn's width threshold m* = κ⁶ n log n is "
            "beyond any practical width (Theorem 4.8, A.12)", task,
            f"κ ≈ {fmt(PAPER_KAPPA[dataset])} at n ≈ 100–200",
            f"κ_eff {fmt(res['inputs']['kappa_effective'])} at n = {fmt(res['inputs']['n'])}; "
            f"log₁₀ m* {fmt(log_width)} (practical: < {math.log10(PRACTICAL_WIDTH):g})",
            verdict(log_width, (math.log10(PRACTICAL_WIDTH), math.inf)), ("spectrum", task)))
    return claims
