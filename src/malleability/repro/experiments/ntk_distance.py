"""NTK distance across widths (Table 1, Figures 1 and 6).

For each task, architecture and width: the function-space distance ‖f_m(X_t) − f_{Θ∞}(X_t)‖_F
between the network (at initialisation and after training) and the kernel ridge predictor of
its infinite-width NTK on the influence set, and the scale-free kernel distance
1 − cos(Θ_m(X, X), Θ_∞(X, X)). The network trains on the influence set too
(:func:`~malleability.repro.problem.on_influence_set`): a network trained on the full split
and a kernel predictor fitted on a subset of it would differ by their data alone.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from ...kernel_ridge import kernel_ridge_predict
from ...losses import accuracy
from ...models import TwoLayerNet
from ...ntk import empirical_ntk, function_distance, infinite_ntk, kernel_distance
from ...settings import setting
from ...training import evaluate
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct, rank
from ..figures import Line
from ..problem import Problem, RunContext, build_model, on_influence_set, trained_model
from ..seeds import LOG_SCALE
from .base import (
    NetworkSettings,
    agreement,
    cell_problem,
    check_architectures,
    check_nonempty,
    check_task_labels,
    model_name,
    paper_number,
    paper_table,
    paper_task,
    paper_values,
    task_title,
    trend,
)

TITLE = "NTK distance across widths (Table 1, Figures 1 and 6)"
#: Fields summarised over seeds on the log scale (:data:`~..seeds.LOG_SCALE`): the kernel
#: distance spans decades over widths and Figure 6 draws it on a log axis.
GEOMETRIC = ("kernel_distance_init", "kernel_distance_trained")
INTRO = ("Function-space distance ‖f_m(X_test) − f_Θ∞(X_test)‖_F between the network and the "
         "kernel ridge predictor of its infinite-width NTK, and the kernel distance "
         "1 − cos(Θ_m, Θ_∞), at initialisation and after training, across widths m. The paper "
         "(Table 1) reports that the 2L-ReLU distance falls with width while the MLP-Attn "
         "distance does not (non-monotonic on MNIST, increasing on CIFAR-10); the trend flags "
         "below compare directions only, against that general claim where the paper has no "
         "such task.")

PAPER_WIDTHS = (16, 1024, 4096)
#: Table 1: function-space NTK distance after training at PAPER_WIDTHS.
PAPER_TABLE1 = {
    ("MNIST 10-class", "relu"): (45.1, 39.9, 39.2),
    ("MNIST 10-class", "attn"): (10.3, 33.3, 43.4),
    ("CIFAR-10 10-class", "relu"): (246.2, 101.7, 56.9),
    ("CIFAR-10 10-class", "attn"): (3.7, 10.4, 12.6),
}
#: Table 1's width trend of MLP-Attn per task (2L-ReLU: decreasing everywhere).
PAPER_ATTN_TREND = {"MNIST 10-class": "non-monotonic", "CIFAR-10 10-class": "increasing"}


def _check_widths(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    for i, w in enumerate(check_nonempty(value, name)):
        if w < 1:
            raise ValueError(f"{name}[{i}]: expected a positive integer, got {w}")
    return value


@dataclass(frozen=True)
class NtkDistanceSettings(NetworkSettings):
    models: tuple[str, ...] = setting(("relu", "attn", "attn-softmax", "attn-exponential"),
                                      "Architectures.", check_architectures, flag="--model")
    widths: tuple[int, ...] = setting((16, 1024, 4096), "Widths m of the sweep (paper: 16, "
                                      "1024, 4096).", _check_widths, flag="--width")
    variant_tasks: tuple[str, ...] | None = setting(
        None, "Tasks for the softmax/exponential variants (default: all).")

    def check_relations(self) -> None:
        check_task_labels(self.variant_tasks, self.tasks, "variant_tasks")


SETTINGS = NtkDistanceSettings


def cells(s: NtkDistanceSettings) -> list[dict]:
    return [{"task": t.label, "model": m, "width": w}
            for t in s.tasks for m in s.models for w in s.widths
            if m in ("relu", "attn") or s.variant_tasks is None or t.label in s.variant_tasks]


def run(s: NtkDistanceSettings, cell: dict, ctx: RunContext) -> dict:
    p = on_influence_set(cell_problem(s.tasks, cell, ctx))
    width = cell["width"]
    initial = build_model(cell["model"], p, s.model, width)
    trained, history = trained_model(cell["model"], p, s.model, s.train, ctx, width)
    distances = network_distances(p, initial, trained, s.influence.ridge)
    return {"n_train": p.x.shape[0], "n_influence": int(p.influence_rows.numel()),
            "n_test": p.x_test.shape[0], **distances,
            "final_train_loss": history["train_loss"][-1]}


def network_distances(p: Problem, initial: TwoLayerNet, trained: TwoLayerNet, ridge: float
                      ) -> dict[str, float | None]:
    """Function and kernel distances of ``initial`` and ``trained`` to the kernel ridge
    predictor of the infinite-width NTK of ``initial``'s hidden-layer inputs on the influence
    set, with both test accuracies."""
    z = p.z[p.influence_rows]
    with torch.no_grad():
        z_t = initial.inputs(p.x_test)
        h, h_t = initial.hidden_inputs(z).double(), initial.hidden_inputs(z_t).double()
    k_inf, k_inf_t = infinite_ntk(h), infinite_ntk(h_t, h)
    f_inf = kernel_ridge_predict(k_inf, k_inf_t, p.y_influence, ridge)
    out = {"test_accuracy": evaluate(trained, p.x_test, p.y_test)[1],
           "ntk_test_accuracy": accuracy(f_inf, p.y_test)}
    for stage, net in (("init", initial), ("trained", trained)):
        with torch.no_grad():
            f_m = net(p.x_test).double()
            k_m = empirical_ntk(net, z)
        out[f"function_distance_{stage}"] = function_distance(f_m, f_inf)
        # a zero NTK (every hidden unit inactive on every point: a dead network) has no
        # direction, so its kernel distance is undefined: stored as null
        out[f"kernel_distance_{stage}"] = (kernel_distance(k_m, k_inf) if bool(k_m.any())
                                           else None)
    return out


def width_trend(task: str, model: str, distances: list[float]) -> list[str]:
    """Our width trend (each step decided by its CI over seeds), the paper's, and whether they
    agree (2L-ReLU and MLP-Attn only; undecided steps → inconclusive)."""
    ours = trend(distances)
    decided = None if ours == "—" or ours.startswith("undecided") else ours
    if model == "relu":
        return [ours, "decreasing", agreement(None if decided is None else decided == "decreasing",
                                              True)]
    if model == "attn":
        expected = PAPER_ATTN_TREND.get(paper_task(task) or "", "not decreasing")
        return [ours, expected,
                agreement(None if decided is None else decided != "decreasing", True)]
    return [ours, "—", "—"]


#: Line styles per architecture, so curves that coincide stay visible (larger hollow markers
#: under smaller filled ones, distinct dashes).
_STYLES = {"relu": {"ls": "-", "marker": "o", "ms": 5},
           "attn": {"ls": "-", "marker": "s", "ms": 5},
           "attn-softmax": {"ls": (0, (6, 2)), "marker": "D", "ms": 9, "mfc": "none", "mew": 1.5},
           "attn-exponential": {"ls": ":", "marker": "^", "ms": 4, "lw": 2}}


def section(records: list[dict], figs: Path) -> list[Block]:
    """Table 1 side by side with width trends, a per-width detail table, Figures 1 and 6."""
    widths = sorted({r["cell"]["width"] for r in records})
    summary, detail = [], []
    function_panels: dict[str, list[Line]] = {}
    kernel_panels: dict[str, list[Line]] = {}
    for (task, model), group_records in group(records, "task", "model").items():
        by_width = {r["cell"]["width"]: r["result"] for r in group_records}
        ws = sorted(by_width)
        trained = [by_width[w]["function_distance_trained"] for w in ws]
        paper = PAPER_TABLE1.get((paper_task(task) or "", model))
        summary.append([task, model_name(model),
                        *(fmt(by_width[w]["function_distance_trained"] if w in by_width
                              else None) for w in widths),
                        paper_values(paper), *width_trend(task, model, trained)])
        for w in ws:
            res = by_width[w]
            detail.append([task, model_name(model), str(w),
                           *(fmt(res[f"{kind}_distance_{stage}"])
                             for kind in ("function", "kernel") for stage in ("init", "trained")),
                           pct(res["test_accuracy"]), pct(res["ntk_test_accuracy"]),
                           fmt(res["final_train_loss"])])
        style = {"color": f"C{rank(model)}", **_STYLES.get(model, {"marker": "v"})}
        title = task_title(task)
        for panels, kind in ((function_panels, "function"), (kernel_panels, "kernel")):
            panels.setdefault(title, []).extend([
                Line(model_name(model), ws, [by_width[w][f"{kind}_distance_trained"]
                                             for w in ws], style),
                Line(f"{model_name(model)} at init", ws,
                     [by_width[w][f"{kind}_distance_init"] for w in ws],
                     {**style, "ls": "--", "mfc": "none", "alpha": 0.6})])
        if paper is not None:
            function_panels[title].append(Line(f"paper {model_name(model)}", PAPER_WIDTHS, paper,
                                               {**style, "ls": "none", "marker": "x", "ms": 8}))
    fig1 = figures.line_panels(figs / "ntk_function_distance.png", function_panels, "width m",
                               r"$\|f_m - f_{\Theta_\infty}\|_F$ on test", logx=True)
    fig6 = figures.line_panels(figs / "ntk_kernel_distance.png", kernel_panels, "width m",
                               r"$1 - \cos(\Theta_m, \Theta_\infty)$", logx=True, logy=True)
    header = ["task", "model", *(f"m={w}" for w in widths), "paper m=16/1024/4096",
              "trend with width", "paper trend", "vs paper"]
    detail_header = ["task", "model", "m", "function dist. init", "function dist. trained",
                     "kernel dist. init", "kernel dist. trained", "test acc. %",
                     "NTK test acc. %", "final train loss"]
    return [Table(header, summary, "Table 1: function-space NTK distance after training."),
            paper_table(1, [f"m={w}" for w in PAPER_WIDTHS], PAPER_TABLE1),
            Table(detail_header, detail, "Distances at initialisation and after training "
                                         f"(kernel distance: {LOG_SCALE}; —: undefined, the "
                                         "network's NTK is zero because every hidden unit is "
                                         "inactive)."),
            figure(fig1, "Figure 1 (ours): function distance vs width; dashed = at "
                         "initialisation, solid = trained, crosses = the paper's Table 1."),
            figure(fig6, f"Figure 6 (ours): kernel (cosine) distance vs width ({LOG_SCALE}).")]


def paper_claims(records: list[dict]) -> list[Claim]:
    """Table 1's claims per task: 2L-ReLU's NTK distance "monotonically decreasing" with width,
    MLP-Attn's "non-monotonic (MNIST) or increasing (CIFAR-10)" (not decreasing where the
    paper has no such task); each width step decided by its paired interval."""
    claims = []
    for (task, model), group_records in group(records, "task", "model").items():
        if model not in ("relu", "attn"):
            continue
        by_width = {r["cell"]["width"]: r["result"]["function_distance_trained"]
                    for r in group_records}
        ws = sorted(by_width)
        ours, expected, judged = width_trend(task, model, [by_width[w] for w in ws])
        paper = PAPER_TABLE1.get((paper_task(task) or "", model))
        claim = (f"{model_name(model)}'s NTK distance decreases with width (Table 1)"
                 if model == "relu" else
                 f"{model_name(model)}'s NTK distance does not decrease with width: "
                 "non-monotonic (MNIST) or increasing (CIFAR-10) (Table 1)")
        theirs = expected if paper is None else (
            f"{expected}: {' → '.join(map(paper_number, paper))} (m = "
            f"{'/'.join(map(str, PAPER_WIDTHS))})")
        claims.append(Claim(claim, task, theirs,
                            f"{ours}: {' → '.join(fmt(by_width[w]) for w in ws)} (m = "
                            f"{'/'.join(map(str, ws))})", judged, ("table1", task, model)))
    return claims
