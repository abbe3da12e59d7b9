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
from ..blocks import Block, Claim, Table, figure, fmt, group, pct
from ..figures import Line
from ..problem import Problem, RunContext, build_model, on_influence_set, trained_model
from ..seeds import LOG_SCALE, scale
from .base import trend
from .ntk_distance import network_distances

FULL = "full"
#: Largest relative deviation of a measured κ from (λ₁/λ_k)³ that still counts as the identity
#: (float64 eigenvalues of features with κ up to ~10⁷: ~10⁻⁹; the tests check 10⁻⁶).
IDENTITY_TOLERANCE = 1e-6
#: Fields summarised over seeds on the log scale (:data:`~..seeds.LOG_SCALE`), as in
#: ntk_distance: the kernel distance and the condition numbers span decades.
GEOMETRIC = ("kernel_distance_trained", "kappa_features_normalized", "kappa_features",
             "kappa_predicted")


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
              "(trained networks; κ over the features' numerical rank; kernel distance and κ: "
              f"{LOG_SCALE})."),
        Table(["task", "rank k", "function dist. with width", "kernel dist. with width",
               "flip rate with width"], trends, "Trends with width per rank."),
        figure(fig_distance, "Function distance to the infinite-width NTK predictor against "
                             "width, per attention rank k."),
        figure(fig_flip, "PGD flip rate against width, per attention rank k."),
    ]


def _per_seed(value: float) -> tuple[float, ...]:
    """The per-seed values of a merged number (a plain number: itself)."""
    return getattr(value, "values", (float(value),))


def remedy_claims(records: list[dict]) -> list[Claim]:
    """Remark 4.10 per task, from the merged remedy cells: truncation to rank k caps κ at
    (λ₁/λ_k)³ (the largest relative deviation of κ of the raw rank-k features from it, against
    :data:`IDENTITY_TOLERANCE`), and it "suggests low-rank regularization as a mechanism for
    restoring convergence": agrees where the function distance falls with width at some
    truncated rank, disagrees where every truncated rank's trend is decided and none falls."""
    claims = []
    for (task,), task_records in group(records, "task").items():
        truncated = [r for r in task_records if r["cell"]["rank"] != FULL]
        deviation = max(abs(k / k_pred - 1) for r in truncated
                        for k, k_pred in zip(_per_seed(r["result"]["kappa_features"]),
                                             _per_seed(r["result"]["kappa_predicted"]),
                                             strict=True))
        claims.append(Claim("Truncated attention (top-k components) caps the condition number "
                            "at (λ₁/λ_k)³ (Remark 4.10)", task, "κ = (λ₁/λ_k)³",
                            f"largest |κ/(λ₁/λ_k)³ − 1| over {len(truncated)} cells: "
                            f"{fmt(deviation)}",
                            "agrees" if deviation < IDENTITY_TOLERANCE else "disagrees",
                            ("theory", "remedy-kappa", task)))
        trends = {}
        for (rank,), rank_records in group(truncated, "rank").items():
            by_width = {r["cell"]["width"]: r["result"] for r in rank_records}
            trends[rank] = trend([by_width[w]["function_distance_trained"]
                                  for w in sorted(by_width)])
        judged = ("agrees" if "decreasing" in trends.values() else
                  "disagrees" if all(t in ("increasing", "non-monotonic")
                                     for t in trends.values()) else "inconclusive")
        widths = sorted({r["cell"]["width"] for r in truncated})
        claims.append(Claim("Truncated attention suggests a way to restore convergence to the "
                            "kernel regime: ‖f_m − f_Θ∞‖ falls with width at rank k "
                            "(Remark 4.10)", f"{task}, m = {'/'.join(map(str, widths))}",
                            "suggested, no number",
                            "function distance with width: " + "; ".join(
                                f"k = {k} {t}" for k, t in trends.items()),
                            judged, ("theory", "remedy-trend", task)))
    return claims
