"""Figure 6 where Table 1's run has no softmax/exponential cells (CIFAR-10; issue 32).

The cells of :mod:`.ntk_distance` (its settings, its :func:`~.ntk_distance.run`) for the
softmax and exponential fronts on the tasks that experiment runs without them: per task, map
and width, the kernel distance 1 − cos(Θ_m, Θ_∞) and the function distance, at initialisation
and after training on the influence set. A separate experiment so that ``ntk_distance``'s
committed cells keep their settings. The section draws Figure 6 per task with every map,
2L-ReLU and MLP-Attn read from ``ntk_distance``'s cells (:data:`READS`).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

from ...settings import setting
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct, rank
from ..figures import Line
from ..problem import RunContext
from ..seeds import LOG_SCALE
from .base import check_architectures, decide, model_name, task_title
from .ntk_distance import NtkDistanceSettings
from .ntk_distance import cells as ntk_cells
from .ntk_distance import run as ntk_run

#: Experiments whose cells the section reads beside its own.
READS = ("ntk_distance",)
#: Fields summarised over seeds on the log scale (:data:`~..seeds.LOG_SCALE`): the kernel
#: distance spans decades over widths and Figure 6 draws it on a log axis.
GEOMETRIC = ("kernel_distance_init", "kernel_distance_trained")
#: The maps of Figure 6's claim.
VARIANTS = ("attn-softmax", "attn-exponential")
#: "Near-zero" kernel distance (our reading; the paper gives no number): below 1 − 0.99.
NEAR_ZERO = 0.01

TITLE = "Figure 6 on CIFAR-10: kernel distance of softmax and exponential attention"
INTRO = ("Figure 6's scale-free kernel distance 1 − cos(Θ_m, Θ_∞) across widths for the "
         "softmax and exponential attention fronts on the tasks Table 1's run measures without "
         "them (CIFAR-10), beside 2L-ReLU and MLP-Attn from that run. The paper: \"both "
         "softmax and exponential attention exhibit near-zero distance at all widths\", an "
         "artifact of their collapse to a rank-1 kernel (A.13). \"Near zero\" is our reading: "
         f"below {NEAR_ZERO:g} (a cosine of at least 0.99), decided per width by the 95 % "
         "interval. With the row normalisation both maps carry, softmax and exponential "
         "attention are one map (softmax divides each row of exp(scores − max) by a positive "
         "sum, which rownorm removes), so their rows agree to rounding; a kernel distance "
         "shown as — belongs to a network whose hidden units are all inactive (zero NTK).")


def _check_variants(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    for i, m in enumerate(check_architectures(value, name)):
        if m not in VARIANTS:
            raise ValueError(f"{name}[{i}]: expected one of {', '.join(VARIANTS)}, got {m!r}")
    return value


@dataclass(frozen=True)
class NtkDistanceVariantSettings(NtkDistanceSettings):
    models: tuple[str, ...] = setting(VARIANTS, "Attention maps: attn-softmax, "
                                      "attn-exponential.", _check_variants, flag="--model")


SETTINGS = NtkDistanceVariantSettings


def cells(s: NtkDistanceVariantSettings) -> list[dict]:
    return ntk_cells(s)


def run(s: NtkDistanceVariantSettings, cell: dict, ctx: RunContext) -> dict:
    return ntk_run(s, cell, ctx)


def _own_tasks(records: list[dict]) -> set[str]:
    return {r["cell"]["task"] for r in records if r["experiment"] == "ntk_distance_variants"}


def section(records: list[dict], figs: Path) -> list[Block]:
    """Distances per task, map and width; Figure 6 per task with every map."""
    tasks = _own_tasks(records)
    rows, panels = [], {}
    for (task, model), rs in group([r for r in records if r["cell"]["task"] in tasks],
                                   "task", "model").items():
        by_width = {r["cell"]["width"]: r["result"] for r in rs}
        widths = sorted(by_width)
        for w in widths:
            res = by_width[w]
            rows.append([task, model_name(model), str(w), fmt(res["kernel_distance_init"]),
                         fmt(res["kernel_distance_trained"]),
                         fmt(res["function_distance_trained"]), pct(res["test_accuracy"])])
        style = {"color": f"C{rank(model)}", "marker": "o"}
        panels.setdefault(task_title(task), []).extend([
            Line(model_name(model), widths,
                 [by_width[w]["kernel_distance_trained"] for w in widths], style),
            Line(f"{model_name(model)} at init", widths,
                 [by_width[w]["kernel_distance_init"] for w in widths],
                 {**style, "ls": "--", "mfc": "none", "alpha": 0.6})])
    path = figures.line_panels(figs / "ntk_distance_variants.png", panels, "width m",
                               r"$1 - \cos(\Theta_m, \Theta_\infty)$", logx=True, logy=True)
    return [Table(["task", "model", "m", "kernel dist. init", "kernel dist. trained",
                   "function dist. trained", "test acc. %"], rows,
                  "Kernel and function distances per map and width (2L-ReLU and MLP-Attn "
                  f"from Table 1's run; its seeds; kernel distance: {LOG_SCALE})."),
            figure(path, "Figure 6 (ours) on these tasks: kernel distance vs width, every map; "
                         f"dashed = at initialisation ({LOG_SCALE}).")]


def near_zero_at_all_widths(distances: list[float]) -> bool | None:
    """Figure 6's "near-zero distance at all widths": True when every width's interval lies
    below NEAR_ZERO, False when some width's lies wholly above it, else None."""
    decided = [decide(d, (-math.inf, NEAR_ZERO)) for d in distances]
    if False in decided:
        return False
    return True if decided and all(decided) else None


def width_text(width: int, distance: float) -> str:
    """One width's kernel distance for the claims table; seeds whose distance is undefined (a
    dead network: every hidden unit inactive, so its NTK is zero) are counted and named as
    such, and the other seeds' values given."""
    values = getattr(distance, "values", (distance,))
    dead = sum(v is None or math.isnan(v) for v in values)
    if not dead:
        return f"m={width}: {fmt(distance)}"
    rest = ", ".join(fmt(v) for v in values if v is not None and not math.isnan(v))
    return (f"m={width}: undefined at {dead} of {len(values)} seeds (a dead network: zero NTK)"
            + (f"; {rest} at the others" if rest else ""))


def paper_claims(records: list[dict]) -> list[Claim]:
    """Figure 6 per task and map (softmax, exponential), on every task with such cells here
    or in Table 1's run (merged per experiment, each with its own seeds)."""
    claims = []
    for (task, model), rs in group(records, "task", "model").items():
        if model not in VARIANTS:
            continue
        by_width = {r["cell"]["width"]: r["result"]["kernel_distance_trained"] for r in rs}
        widths = sorted(by_width)
        ours = near_zero_at_all_widths([by_width[w] for w in widths])
        claims.append(Claim(
            f"{model_name(model)}'s kernel distance is near zero at all widths (Figure 6)", task,
            "near zero at all widths (collapse to a rank-1 kernel)",
            "; ".join(width_text(w, by_width[w]) for w in widths),
            "inconclusive" if ours is None else ("agrees" if ours else "disagrees"),
            ("ntk_distance_variants", task, model)))
    return claims

