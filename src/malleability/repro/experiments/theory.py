"""Theory against measurement: the malleability bounds (Theorems C.2, C.11), the intrinsic
sensitivity (Def. C.12) as a predictor, Corollary C.4 (ridge) and Remark 4.10 (truncation).

Two kinds of cells (docs/method.md, "The paper's theory as diagnostics"):

- ``part="bounds"``, per task × model (2L-ReLU, MLP-Attn) × ε: on the trained network's
  empirical NTK K over the influence set, with α = (K + λI)⁻¹Y for each ridge λ of the sweep,
  the flip rate (Def. 3.4) of the attack at budget ε; the influence shift ‖α′ − α‖ when the
  attack moves the |S| most helpful points (K′ on the attacked set, the attention front
  re-referenced); the one-point kernel Lipschitz constant measured by ``gram_change`` on a
  fixed subset of S (ℓ∞ pixel units), beside the analytic one (Prop. 4.6/C.13, ℓ2 in network
  inputs z); and every bound evaluated with those values, holding or failing as measured.
- ``part="remedy"``, per task × attention rank k (and full) × width: MLP-Attn attending to the
  rank-k truncation of its reference: NTK distances as in the ntk_distance experiment, the PGD
  flip rate, test accuracy, and κ of the truncated features beside (λ₁/λ_k)³.

The bound for |S| moved points telescopes the one-point bound over the points moved one at a
time (our reading: |S|·L·ε·‖Y‖/λ²; with the measured L this assumes each step's kernel change
is no larger than the largest one-point change found at X).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ..._validation import check_positive_int
from ...attacks import perturb_rows
from ...attention import AttentionKind, attention_features
from ...bounds import influence_change_bound, influence_change_lower_bound
from ...influence import InfluenceSettings
from ...kernel_ridge import as_targets, fit_kernel_ridge
from ...measure import measure_malleability
from ...metrics import spearman
from ...models import TwoLayerNet
from ...ntk import empirical_ntk
from ...sensitivity import (
    ChangeSearch,
    attention_kernel_lipschitz,
    gram_change,
    intrinsic_sensitivity,
    relu_ntk_lipschitz,
)
from ...settings import setting
from ...spectral import effective_condition_number, gram_eigenvalues
from .. import figures
from ..blocks import Block, Table, Text, figure, fmt, group, pct
from ..figures import Line
from ..problem import Problem, RunContext, build_model, on_influence_set, trained_model
from ..seeds import merge_seeds, scale
from .base import (
    AttackExperimentSettings,
    cell_problem,
    check_nonempty,
    check_task_labels,
    model_name,
    trend,
)
from .ntk_distance import network_distances

TITLE = "Theory against measurement (Theorems C.2, C.11, Corollary C.4, Remark 4.10)"
INTRO = ("The paper's malleability bounds evaluated with measured values on the trained "
         "networks, never forced to hold: the influence shift ‖α′ − α‖ of the attacked training "
         "set against the Theorem C.11 upper bound (with the measured and with the analytic "
         "kernel Lipschitz constant) and the Theorem C.2 lower bound (the paper's form and the "
         "exact form); whether the intrinsic sensitivity S (Def. C.12) orders the flip rates of "
         "MLP-Attn and 2L-ReLU; whether the flip rate falls with the ridge λ (Corollary C.4); "
         "and whether truncating attention to rank k (Remark 4.10) brings MLP-Attn towards "
         "its kernel regime, at what cost in accuracy.")

#: The bounds each λ of a bounds cell is checked against, with how they are reported.
BOUNDS = {
    "upper_measured": ("upper", "C.11, measured L (|S|·L·ε‖Y‖/λ²)"),
    "upper_analytic": ("upper", "C.11, analytic L (|S|·L·ε_z‖Y‖/λ²)"),
    "upper_resolvent": ("upper", "C.11 with the attack's ‖ΔK‖ (theorem)"),
    "lower_paper": ("lower", "C.2, paper's form (ℓ = measured L, μ₁′ = μ₁)"),
    "lower_exact": ("lower", "C.2, exact form (ℓε = ‖ΔKα̂‖, μ₁′ = ‖K′‖)"),
}

FULL = "full"


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
    return run_bounds(s, cell, p, ctx) if cell["part"] == "bounds" else run_remedy(s, cell, p,
                                                                                    ctx)


# --- bounds ------------------------------------------------------------------------------------


def _gram(net: TwoLayerNet, p: Problem):
    """(gram, row) for :func:`gram_change` on the influence pixels (flattened): gram maps
    X_influence to Θ_m(Z, Z) of ``net`` (float64), the attention front attending to the
    training set with the influence rows replaced by X, differentiably; row (2L-ReLU only,
    whose kernel has no data-dependent reference) maps (x′_j, j) to the one kernel row that
    moves. The linearized front is updated by its moved rows (``with_rows_replaced``)."""
    net = copy.deepcopy(net).double()
    shape = p.x.shape[1:]
    if net.front is None:
        z_base = net.inputs(p.x_influence.double())

        def row(moved: torch.Tensor, j: int) -> torch.Tensor:
            z_j = net.inputs(moved.reshape(1, *shape))
            z = torch.cat([z_base[:j], z_j, z_base[j + 1:]])
            return empirical_ntk(net, z_j, z)[0]

        return (lambda flat: empirical_ntk(net, net.inputs(flat.reshape(-1, *shape)))), row
    with torch.no_grad():
        base = net.with_reference(net.inputs(p.x))  # float64 front on the training set
    z_base = base.inputs(p.x_influence.double())
    fast = (base.front.kind is AttentionKind.LINEAR and base.front.rank is None
            and base.front.layers == 1)

    def gram(flat: torch.Tensor) -> torch.Tensor:
        x_inf = flat.reshape(-1, *shape)
        z = base.inputs(x_inf)
        if fast:
            moved = base.with_front(base.front.with_rows_replaced(z_base, z))
        else:
            moved = base.with_reference(base.inputs(p.x.index_put((p.influence_rows,), x_inf)))
        return empirical_ntk(moved, z)

    return gram, None


def analytic_lipschitz(model: str, z_influence: torch.Tensor, z_reference: torch.Tensor
                       ) -> float:
    """Prop. 4.6 / C.13 in network inputs z: √n‖G‖²-type L_attn with G of the reference set,
    or (1 + π)/(2π)‖Z‖_F for the ReLU NTK."""
    if model == "relu":
        return relu_ntk_lipschitz(z_influence)
    top = float(gram_eigenvalues(z_reference)[0])
    return attention_kernel_lipschitz(z_influence, gram_norm=top)


def check_bounds(k: torch.Tensor, k_new: torch.Tensor, y: torch.Tensor, ridge: float,
                 eps: float, eps_z: float, moved: int, lipschitz: float,
                 lipschitz_analytic: float) -> dict:
    """The influence shift ‖α′ − α‖_F between (K, Y, λ) and (K′, Y, λ) against every bound of
    ``BOUNDS``; ``lipschitz`` per unit ℓ∞ pixel ε (one point moved), ``lipschitz_analytic``
    per unit ℓ2 in z with the attack's z-radius ``eps_z``; ``moved`` = |S|. Each bound is
    reported as it comes out: ``holds`` compares without tolerance."""
    fit, fit_new = fit_kernel_ridge(k, y, ridge), fit_kernel_ridge(k_new, y, ridge)
    shift = float(torch.linalg.norm(fit_new.alpha - fit.alpha))
    delta = k_new - k
    delta_norm = float(torch.linalg.matrix_norm(delta, ord=2))
    alpha_hat = fit.alpha / torch.linalg.norm(fit.alpha)
    along = float(torch.linalg.norm(delta @ alpha_hat))
    top, top_new = (float(torch.linalg.eigvalsh((m + m.T) / 2)[-1]) for m in (k, k_new))
    values = {
        "upper_measured": moved * influence_change_bound(lipschitz, eps, y, ridge),
        "upper_analytic": moved * influence_change_bound(lipschitz_analytic, eps_z, y, ridge),
        "upper_resolvent": influence_change_bound(delta_norm, 1.0, y, ridge),
        "lower_paper": influence_change_lower_bound(k, y, ridge, lipschitz, eps),
        "lower_exact": influence_change_lower_bound(k, y, ridge, along / eps, eps,
                                                    perturbed_top=top_new),
    }
    bounds = {name: {"value": value,
                     "holds": shift <= value if BOUNDS[name][0] == "upper" else shift >= value,
                     "ratio": shift / value if value > 0 else math.inf}
              for name, value in values.items()}
    return {"shift": shift, "delta_k": delta_norm, "delta_k_along_alpha": along,
            "top_eigenvalue": top,
            "top_eigenvalue_after": top_new, "alpha_norm": float(torch.linalg.norm(fit.alpha)),
            "label_norm": float(torch.linalg.norm(as_targets(y, "y", k.shape[0]))),
            "bounds": bounds}


def run_bounds(s: TheorySettings, cell: dict, p: Problem, ctx: RunContext) -> dict:
    net, history = trained_model(cell["model"], p, s.model, s.train, ctx)
    eps = cell["eps"]
    attack = s.attack.replace(eps=eps)
    rows, y = p.influence_rows, p.y_influence
    with torch.no_grad():
        z = net.inputs(p.x_influence)
        k = empirical_ntk(net, z)
    analytic = analytic_lipschitz(cell["model"], z.double(), p.z)
    out: dict = {"test_accuracy": history["test_accuracy"][-1], "n_train": p.x.shape[0],
                 "n_influence": int(rows.numel()), "lipschitz_analytic": analytic,
                 "ridges": []}
    lipschitz = None
    for ridge in s.ridges:
        influence = InfluenceSettings(ridge=ridge, fraction=s.influence.fraction)
        result = measure_malleability(net, p.x, p.y, p.x_test, p.y_test, attack, influence,
                                      subset=rows)
        selected = result.selected
        if lipschitz is None:  # one fixed subset of S for the whole λ sweep
            indices = selected[:s.gram_points].tolist()
            search = ChangeSearch(eps, steps=s.search_steps, restarts=s.search_restarts,
                                  random_directions=s.search_corners, seed=s.attack.seed)
            gram, row = _gram(net, p)
            change = gram_change(gram, p.x_influence.flatten(1), search, indices, row)
            lipschitz = change.lipschitz
            out.update({"gram_indices": indices, "gram_change": change.change.tolist(),
                        "lipschitz_measured": lipschitz,
                        "lipschitz_measured_l2": float(change.ratio_l2.max())})
        x_new = perturb_rows(net, p.x, p.y, rows[selected], attack)
        new_net = net.with_reference(net.inputs(x_new)) if net.front is not None else net
        with torch.no_grad():
            z_new = net.inputs(x_new[rows])
            k_new = empirical_ntk(new_net, z_new)
            eps_z = float((z_new - z)[selected].double().norm(dim=1).max()) if len(
                selected) else 0.0
        checked = check_bounds(k, k_new, y, ridge, eps, eps_z, int(selected.numel()),
                               lipschitz, analytic)
        sensitivity = {name: intrinsic_sensitivity(k, y, ridge, value).bound
                       for name, value in (("measured", lipschitz), ("analytic", analytic))}
        out["ridges"].append({
            "ridge": ridge, "flip_rate": result.flip_rate, "spearman": result.spearman,
            "n_selected": int(selected.numel()), "max_perturbation": result.max_perturbation,
            "attack_max_perturbation": float((x_new - p.x).abs().amax()), "eps_z": eps_z,
            "sensitivity": sensitivity, **checked})
    return out


# --- remedy ------------------------------------------------------------------------------------


def run_remedy(s: TheorySettings, cell: dict, p: Problem, ctx: RunContext) -> dict:
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
    result = measure_malleability(trained, p.x, p.y, p.x_test, p.y_test, s.attack_as("pgd"),
                                  s.influence, subset=p.influence_rows)
    raw = attention_features(z, z, "linear", normalize=False, rank=rank)
    normalized = attention_features(z, z, "linear", rank=rank)
    return {**distances, "flip_rate": result.flip_rate, "spearman": result.spearman,
            "rank_used": k, "kappa_predicted": float(eig[0] / eig[k - 1]) ** 3,
            "kappa_features": effective_condition_number(raw).kappa_effective,
            "kappa_features_normalized": effective_condition_number(normalized).kappa_effective,
            "final_train_loss": history["train_loss"][-1]}


# --- summaries ---------------------------------------------------------------------------------


def flat_rows(records: list[dict]) -> list[dict]:
    """One row per bounds cell × λ: task, model, seed, eps, ridge, flip rate, S (measured and
    analytic L) and the bound values."""
    return [{"task": r["cell"]["task"], "model": r["cell"]["model"], "seed": r["cell"]["seed"],
             "eps": r["cell"]["eps"], **entry}
            for r in records if r["cell"]["part"] == "bounds" for entry in r["result"]["ridges"]]


def ordering(rows: list[dict], which: str = "measured") -> dict:
    """Does S_attn > S_ReLU predict flip(MLP-Attn) > flip(2L-ReLU)? Per (task, seed, ε, λ)
    with both models: ``agree`` of ``n`` comparisons, and Spearman ρ of S (``which`` L) against
    the flip rate over all rows (NaN when either is constant or there are < 2 rows)."""
    pairs: dict[tuple, dict[str, dict]] = {}
    for row in rows:
        key = (row["task"], row["seed"], row["eps"], row["ridge"])
        pairs.setdefault(key, {})[row["model"]] = row
    comparisons = []
    for key, models in pairs.items():
        if "relu" in models and "attn" in models:
            predicted = (models["attn"]["sensitivity"][which]
                         > models["relu"]["sensitivity"][which])
            observed = models["attn"]["flip_rate"] > models["relu"]["flip_rate"]
            comparisons.append({"key": key, "predicted": predicted, "observed": observed,
                                "agree": predicted == observed})
    rho = (spearman(torch.tensor([r["sensitivity"][which] for r in rows], dtype=torch.float64),
                    torch.tensor([r["flip_rate"] for r in rows], dtype=torch.float64))
           if len(rows) >= 2 else math.nan)
    return {"agree": sum(c["agree"] for c in comparisons), "n": len(comparisons),
            "spearman": rho, "comparisons": comparisons}


def monotonicity(rows: list[dict]) -> list[dict]:
    """Corollary C.4: per (task, model, seed, ε), the flip rates in increasing λ and the number
    of ``violations``: steps where the flip rate rises as λ grows."""
    series: dict[tuple, list[tuple[float, float]]] = {}
    for row in rows:
        key = (row["task"], row["model"], row["seed"], row["eps"])
        series.setdefault(key, []).append((row["ridge"], row["flip_rate"]))
    out = []
    for key, points in series.items():
        flips = [f for _, f in sorted(points)]
        violations = sum(b > a for a, b in zip(flips, flips[1:], strict=False))
        out.append({"key": key, "ridges": sorted(r for r, _ in points), "flip_rates": flips,
                    "violations": violations})
    return out


def bound_verdicts(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per bound: how many (cell, λ) rows it holds and fails on."""
    counts = {name: {"holds": 0, "fails": 0} for name in BOUNDS}
    for row in rows:
        for name, b in row["bounds"].items():
            counts[name]["holds" if b["holds"] else "fails"] += 1
    return counts


# --- report ------------------------------------------------------------------------------------


def _verdict(b: dict) -> str:
    return f"{fmt(b['value'])} ({'holds' if b['holds'] else 'FAILS'})"


def section(records: list[dict], figs: Path) -> list[Block]:
    rows = flat_rows(records)
    blocks: list[Block] = []
    if rows:
        blocks += _bounds_blocks(records, rows, figs)
    remedy = [r for r in records if r["cell"]["part"] == "remedy"]
    if remedy:  # one row per (task, rank, width): the mean over seeds with its interval
        blocks += _remedy_blocks(merge_seeds(remedy), figs)
    return blocks


def _bounds_blocks(records: list[dict], rows: list[dict], figs: Path) -> list[Block]:
    lipschitz = [[r["cell"]["task"], model_name(r["cell"]["model"]), fmt(r["cell"]["eps"]),
                  fmt(r["result"]["lipschitz_measured"]),
                  fmt(r["result"]["lipschitz_measured_l2"]),
                  fmt(r["result"]["lipschitz_analytic"]),
                  fmt(max(e["eps_z"] for e in r["result"]["ridges"])),
                  str(len(r["result"]["gram_indices"]))]
                 for r in records if r["cell"]["part"] == "bounds"]
    upper, lower = [], []
    for row in rows:
        head = [row["task"], model_name(row["model"]), fmt(row["eps"]), fmt(row["ridge"]),
                pct(row["flip_rate"]), fmt(row["shift"])]
        b = row["bounds"]
        upper.append([*head, fmt(row["delta_k"]), *(_verdict(b[n]) for n in
                                                    ("upper_measured", "upper_analytic",
                                                     "upper_resolvent"))])
        lower.append([*head, fmt(row["delta_k_along_alpha"]),
                      *(_verdict(b[n]) for n in ("lower_paper", "lower_exact"))])
    verdicts = bound_verdicts(rows)
    summary = [[BOUNDS[name][1], str(c["holds"]), str(c["fails"])]
               for name, c in verdicts.items()]
    order = {which: ordering(rows, which) for which in ("measured", "analytic")}
    order_rows = [[f"S with {which} L", f"{o['agree']} / {o['n']}", fmt(o["spearman"])]
                  for which, o in order.items()]
    pairs = [[*map(str, c["key"][:2]), fmt(c["key"][2]), fmt(c["key"][3]),
              fmt(c["predicted"]), fmt(c["observed"]), "agrees" if c["agree"] else "disagrees"]
             for c in order["measured"]["comparisons"]]
    mono = monotonicity(rows)
    mono_rows = [[m["key"][0], model_name(m["key"][1]), str(m["key"][2]), fmt(m["key"][3]),
                  " → ".join(pct(f) for f in m["flip_rates"]), str(m["violations"]),
                  trend(m["flip_rates"])] for m in mono]
    total = sum(m["violations"] for m in mono)
    steps = sum(len(m["flip_rates"]) - 1 for m in mono)
    fig_bounds = figures.line_panels(figs / "theory_bounds.png", _bound_panels(rows), "ridge λ",
                                     r"$\|\alpha' - \alpha\|_F$ and bounds", logx=True,
                                     logy=True)
    flip_panels: dict[str, list[Line]] = {}
    for m in mono:
        task, model, seed, eps = m["key"]
        flip_panels.setdefault(task, []).append(Line(
            f"{model_name(model)} ε={fmt(eps)} seed {seed}", m["ridges"],
            [100 * f for f in m["flip_rates"]],
            {"color": "C0" if model == "relu" else "C1"}))
    fig_flip = figures.line_panels(figs / "theory_flip_vs_ridge.png", flip_panels, "ridge λ",
                                   "flip rate %", logx=True)
    head = ["task", "model", "ε", "λ", "flip %", "‖α′−α‖"]
    return [
        Table(["task", "model", "ε", "L measured (per ℓ∞ ε)", "L measured (per ℓ2 pixel)",
               "L analytic (per ℓ2 in z)", "attack z-radius ε_z", "points searched"],
              lipschitz, "One-point kernel Lipschitz constants: measured max ‖K(X′) − K(X)‖₂ "
                         "over the ε-box, and the paper's analytic constant (Prop. 4.6/C.13)."),
        Table(["bound", "holds", "fails"], summary,
              "Verdicts over all task × model × ε × λ rows (no tolerance)."),
        Table([*head, "‖ΔK‖₂", *(BOUNDS[n][1] for n in ("upper_measured", "upper_analytic",
                                                       "upper_resolvent"))], upper,
              "Theorem C.11 upper bounds on the influence shift of the attacked set."),
        Table([*head, "‖ΔK α̂‖", BOUNDS["lower_paper"][1], BOUNDS["lower_exact"][1]], lower,
              "Theorem C.2 lower bounds on the influence shift of the attacked set."),
        Table(["predictor", "agreements", "Spearman ρ(S, flip) over all rows"], order_rows,
              "Does S_attn > S_ReLU predict flip(MLP-Attn) > flip(2L-ReLU) per task, seed, ε "
              "and λ?"),
        Table(["task", "seed", "ε", "λ", "S_attn > S_ReLU", "flip attn > ReLU", "verdict"],
              pairs, "Per comparison, with the measured L."),
        Table(["task", "model", "seed", "ε", "flip % by increasing λ", "violations", "trend"],
              mono_rows, "Corollary C.4: flip rate against λ (a violation: the flip rate "
                         "rises with λ)."),
        Text(f"Corollary C.4: {total} violation(s) of a non-increasing flip rate in {steps} "
             f"λ step(s)."),
        figure(fig_bounds, "Influence shift (black) against the C.11 upper bounds (solid) and "
                           "the C.2 lower bounds (dashed), by λ, at the largest ε."),
        figure(fig_flip, "Flip rate against the ridge λ (Corollary C.4)."),
    ]


_BOUND_STYLES = {"upper_measured": {"color": "C0"}, "upper_analytic": {"color": "C1"},
                 "upper_resolvent": {"color": "C2"},
                 "lower_paper": {"color": "C3", "ls": "--"},
                 "lower_exact": {"color": "C4", "ls": "--"}}


def _bound_panels(rows: list[dict]) -> dict[str, list[Line]]:
    """Per task × model at the largest ε (first seed): the shift and each bound against λ."""
    panels: dict[str, list[Line]] = {}
    for (task, model), group_rows in _by(rows, "task", "model").items():
        eps = max(r["eps"] for r in group_rows)
        seed = min(r["seed"] for r in group_rows)
        chosen = sorted((r for r in group_rows if r["eps"] == eps and r["seed"] == seed),
                        key=lambda r: r["ridge"])
        ridges = [r["ridge"] for r in chosen]
        lines = [Line("‖α′−α‖ measured", ridges, [r["shift"] for r in chosen],
                      {"color": "k", "lw": 2})]
        lines += [Line(BOUNDS[name][1], ridges, [r["bounds"][name]["value"] for r in chosen],
                       style) for name, style in _BOUND_STYLES.items()]
        panels[f"{task}, {model_name(model)}, ε={fmt(eps)}"] = lines
    return panels


def _by(rows: list[dict], *keys: str) -> dict[tuple, list[dict]]:
    out: dict[tuple, list[dict]] = {}
    for row in rows:
        out.setdefault(tuple(row[k] for k in keys), []).append(row)
    return out


def _remedy_blocks(records: list[dict], figs: Path) -> list[Block]:
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
