"""Theory against measurement, remedy cells (Remark 4.10): per task × attention rank k (and
full) × width, MLP-Attn attending to the rank-k truncation of its reference: NTK distances as
in the ntk_distance experiment, the PGD flip rate, test accuracy, and κ of the truncated
features beside (λ₁/λ_k)³.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from ...attention import attention_features
from ...spectral import effective_condition_number
from .. import figures
from ..blocks import Block, Table, figure, fmt, group, pct
from ..figures import Line
from ..problem import Problem, RunContext, build_model, on_influence_set, trained_model
from ..seeds import scale
from .base import trend
from .ntk_distance import network_distances

FULL = "full"


def run_remedy(s: Any, cell: dict, p: Problem, ctx: RunContext) -> dict:
    p = on_influence_set(p)  # the network and its kernel predictor train on the same points
    rank = None if cell["rank"] == FULL else int(cell["rank"])
    z = p.z.double()
    spectrum = effective_condition_number(z)
    if rank is not None and rank > spectrum.rank:
        raise ValueError(f"ranks: rank {rank} exceeds the numerical rank {spectrum.rank} of "
                         f"task {cell['task']!r}'s inputs")
    k = spectrum.rank if rank is None else rank
    eig = spectrum.eigenvalues
    width = cell["width"]
    initial = build_model("attn", p, s.model, width, attention_rank=rank)
    trained, history = trained_model("attn", p, s.model, s.train, ctx, width,
                                     attention_rank=rank)
    distances = network_distances(p, initial, trained, s.influence.ridge)
    result = s.measure(trained, p, s.attack_as("pgd"))
    raw = attention_features(z, z, "linear", normalize=False, rank=rank)
    normalized = attention_features(z, z, "linear", rank=rank)
    return {**distances, "flip_rate": result.flip_rate, "spearman": result.spearman,
            "rank_used": k, "kappa_predicted": float(eig[0] / eig[k - 1]) ** 3,
            "kappa_features": effective_condition_number(raw).kappa_effective,
            "kappa_features_normalized": effective_condition_number(normalized).kappa_effective,
            "final_train_loss": history["train_loss"][-1]}


def blocks(records: list[dict], figs: Path) -> list[Block]:
    table, trends = [], []
    distance_panels: dict[str, list[Line]] = {}
    flip_panels: dict[str, list[Line]] = {}
    for (task, rank), group_records in group(records, "task", "rank").items():
        by_width = {r["cell"]["width"]: r["result"] for r in group_records}
        widths = sorted(by_width)
        for w in widths:
            res = by_width[w]
            table.append([task, str(rank), str(w), fmt(res["function_distance_trained"]),
                          fmt(res["kernel_distance_trained"]), pct(res["flip_rate"]),
                          pct(res["test_accuracy"]), fmt(res["kappa_features_normalized"]),
                          fmt(res["kappa_features"]), fmt(res["kappa_predicted"])])
        distances = [by_width[w]["function_distance_trained"] for w in widths]
        kernels = [by_width[w]["kernel_distance_trained"] for w in widths]
        flips = [by_width[w]["flip_rate"] for w in widths]
        trends.append([task, str(rank), trend(distances), trend(kernels), trend(flips)])
        label = f"k={rank}"
        distance_panels.setdefault(task, []).append(Line(label, widths, distances))
        flip_panels.setdefault(task, []).append(Line(label, widths, [scale(f, 100) for f in flips]))
    fig_distance = figures.line_panels(figs / "theory_remedy_distance.png", distance_panels,
                                       "width m", r"$\|f_m - f_{\Theta_\infty}\|_F$ on test",
                                       logx=True)
    fig_flip = figures.line_panels(figs / "theory_remedy_flip.png", flip_panels, "width m",
                                   "PGD flip rate %", logx=True)
    return [
        Table(["task", "rank k", "m", "function dist.", "kernel dist.", "PGD flip %",
               "test acc. %", "κ features (row-normalised)", "κ features (raw)",
               "(λ₁/λ_k)³"], table,
              "Remark 4.10: MLP-Attn attending to the rank-k truncation of its reference "
              "(trained networks; κ over the features' numerical rank)."),
        Table(["task", "rank k", "function dist. with width", "kernel dist. with width",
               "flip rate with width"], trends, "Trends with width per rank."),
        figure(fig_distance, "Function distance to the infinite-width NTK predictor against "
                             "width, per attention rank k."),
        figure(fig_flip, "PGD flip rate against width, per attention rank k."),
    ]
