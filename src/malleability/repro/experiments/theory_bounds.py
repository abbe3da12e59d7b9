"""Theory against measurement, bounds cells (docs/method.md, "The paper's theory as
diagnostics"): per task × model (2L-ReLU, MLP-Attn) × ε, on the trained network's empirical NTK
K over the influence set, with α = (K + λI)⁻¹Y for each ridge λ of the sweep:

- the flip rate (Def. 3.4) of the attack at budget ε;
- the influence shift ‖α′ − α‖ when the attack moves the |S| most helpful points (K′ on the
  attacked set, the attention front attending to it);
- the one-point kernel Lipschitz constant measured by ``gram_change`` on a fixed subset of S
  (ℓ∞ pixel units), beside the analytic one (Prop. 4.6/C.13, ℓ2 in network inputs z);
- every bound of :data:`~malleability.bounds.BOUNDS` evaluated with those values, holding or
  failing as measured, and the intrinsic sensitivity S (Def. C.12) as a predictor.

The bound for |S| moved points telescopes the one-point bound over the points moved one at a
time (our reading: |S|·L·ε·‖Y‖/λ²; with the measured L this assumes each step's kernel change
is no larger than the largest one-point change found at X).
"""

from __future__ import annotations

import copy
import math
from pathlib import Path
from typing import Any

import torch

from ...attention import AttentionKind
from ...bounds import BOUNDS, influence_shift_bounds
from ...kernel_lipschitz import ChangeSearch, analytic_lipschitz, gram_change, intrinsic_sensitivity
from ...metrics import spearman
from ...models import TwoLayerNet
from ...ntk import empirical_ntk
from .. import figures
from ..blocks import Block, Claim, Table, Text, figure, fmt, group, pct, rank
from ..figures import Line
from ..problem import Problem, RunContext, trained_model
from ..seeds import Estimate, combine, merge_seeds
from .base import conjunction, model_name, trend, verdict


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


def run_bounds(s: Any, cell: dict, p: Problem, ctx: RunContext) -> dict:
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
        moved = s.replace(influence=s.influence.replace(ridge=ridge))
        result = moved.measure(net, p, attack)
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
        x_new = result.perturbed_inputs
        new_net = net.attending_to(x_new)
        with torch.no_grad():
            z_new = net.inputs(x_new[rows])
            k_new = empirical_ntk(new_net, z_new)
            eps_z = float((z_new - z)[selected].double().norm(dim=1).max()) if len(
                selected) else 0.0
        checked = influence_shift_bounds(k, k_new, y, ridge, eps, eps_z, int(selected.numel()),
                               lipschitz, analytic)
        sensitivity = {name: intrinsic_sensitivity(k, y, ridge, value).bound
                       for name, value in (("measured", lipschitz), ("analytic", analytic))}
        out["ridges"].append({
            "ridge": ridge, "flip_rate": result.flip_rate, "spearman": result.spearman,
            "n_selected": int(selected.numel()), "max_perturbation": result.max_perturbation,
            "attack_max_perturbation": float((x_new - p.x).abs().amax()), "eps_z": eps_z,
            "sensitivity": sensitivity, **checked})
    return out


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


def ridge_changes(records: list[dict]) -> list[dict]:
    """Corollary C.4 per task, model and ε, from the bounds cells of every seed: the mean flip
    rate at each λ (increasing), its ``change`` from the smallest to the largest λ in points,
    paired by seed (an Estimate), and its ``verdict`` against C.4 (agrees: it falls)."""
    merged = merge_seeds([r for r in records if r["cell"]["part"] == "bounds"])
    out = []
    for (task, model, eps), (record, *_) in group(merged, "task", "model", "eps").items():
        ridges = sorted(record["result"]["ridges"], key=lambda r: float(r["ridge"]))
        rates = [r["flip_rate"] for r in ridges]
        change = combine(lambda first, last: 100 * (last - first), rates[0], rates[-1])
        out.append({"task": task, "model": model, "eps": float(eps), "seeds": record["seeds"],
                    "ridges": [float(r["ridge"]) for r in ridges], "flip_rates": rates,
                    "change": change, "verdict": verdict(change, (-math.inf, 0.0))})
    return out


def c4_split(changes: list[dict]) -> dict[tuple[str, float], dict]:
    """:func:`ridge_changes` per (model, ε): its task rows, the verdict over them
    (C.4 is a statement for every data set: :func:`~.base.conjunction`) and the tally of the
    tasks' verdicts."""
    out: dict[tuple[str, float], dict] = {}
    for row in changes:
        entry = out.setdefault((row["model"], row["eps"]), {"rows": [], "tally": {}})
        entry["rows"].append(row)
        entry["tally"][row["verdict"]] = entry["tally"].get(row["verdict"], 0) + 1
    for entry in out.values():
        entry["verdict"] = conjunction([r["verdict"] for r in entry["rows"]])
    return dict(sorted(out.items(), key=lambda kv: (rank(kv[0][0]), kv[0][1])))


def c4_measured(rows: list[dict]) -> str:
    """The change over the λ range in a few words: on how many tasks each verdict came out,
    the range of the majority's mean changes, the other tasks by name with their interval."""
    by: dict[str, list[dict]] = {}
    for row in rows:
        by.setdefault(row["verdict"], []).append(row)
    most = max(by, key=lambda v: len(by[v]))
    words = {"agrees": "falls", "disagrees": "rises", "inconclusive": "undecided"}
    parts = []
    for v, group_rows in sorted(by.items(), key=lambda kv: kv[0] != most):
        said = f"{words.get(v, v)} on {len(group_rows)}/{len(rows)} tasks"
        if v == most:
            values = sorted(float(r["change"]) for r in group_rows)
            said += (f" ({fmt(values[0])} points)" if len(values) == 1 else
                     f" ({fmt(values[0])} to {fmt(values[-1])} points)")
        else:
            said += " (" + "; ".join(f"{r['task']} {fmt(r['change'])}"
                                     for r in group_rows) + ")"
        parts.append(said)
    return "; ".join(parts)


def c4_blocks(changes: list[dict]) -> list[Block]:
    """Corollary C.4 split by architecture and ε (one verdict per (model, ε) over the tasks),
    then per task the mean flip rate by λ and its paired change."""
    if not changes:
        return []
    lambdas = " → ".join(fmt(v) for v in changes[0]["ridges"])
    summary = [[model_name(m), fmt(e), entry["verdict"],
                "; ".join(f"{k}: {n}" for k, n in sorted(entry["tally"].items()))]
               for (m, e), entry in c4_split(changes).items()]
    rows = [[r["task"], model_name(r["model"]), fmt(r["eps"]), ", ".join(map(str, r["seeds"])),
             " → ".join(pct(f) for f in r["flip_rates"]), fmt(r["change"]), r["verdict"]]
            for r in changes]
    return [Table(["model", "ε", "C.4 verdict", "verdicts of the tasks"], summary,
                  "Corollary C.4 per architecture and ε: the flip rate's change from the "
                  "smallest to the largest λ, per task (next table), agrees where it falls; "
                  "disagrees where it rises on any task."),
            Table(["task", "model", "ε", "seeds", f"mean PGD flip rate % at λ = {lambdas}",
                   "change, first → last λ (points, paired)", "vs C.4 (falls)"], rows,
                  "Per task: the mean flip rate by λ, and its change over the λ range with its "
                  "95 % t interval over seeds.")]


def bound_verdicts(rows: list[dict]) -> dict[str, dict[str, int]]:
    """Per bound: how many (cell, λ) rows it holds and fails on."""
    counts = {name: {"holds": 0, "fails": 0} for name in BOUNDS}
    for row in rows:
        for name, b in row["bounds"].items():
            counts[name]["holds" if b["holds"] else "fails"] += 1
    return counts


def _verdict(b: dict) -> str:
    return f"{fmt(b['value'])} ({'holds' if b['holds'] else 'FAILS'})"


def blocks(records: list[dict], rows: list[dict], figs: Path) -> list[Block]:
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
    changes = ridge_changes(records) if records else []
    split = c4_split(changes)
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
    # the verdicts first (C.4 per architecture and ε, the bounds, the ordering), then the
    # figures, then the per-seed detail
    return [
        Text(f"Corollary C.4, per seed: {total} of {steps} λ step(s) raise the flip rate. "
             "One verdict over all of them would mix the architectures and budgets; the "
             "verdict is per architecture and ε (next tables"
             + ("" if not split else ": " + "; ".join(
                 f"{model_name(m)} at ε = {fmt(e)} {entry['verdict']}"
                 for (m, e), entry in split.items())) + ")."),
        *c4_blocks(changes),
        Table(["bound", "holds", "fails"], summary,
              "Verdicts over all task × model × ε × λ rows (no tolerance)."),
        Table(["predictor", "agreements", "Spearman ρ(S, flip) over all rows"], order_rows,
              "Does S_attn > S_ReLU predict flip(MLP-Attn) > flip(2L-ReLU) per task, seed, ε "
              "and λ?"),
        figure(fig_bounds, "Influence shift (black) against the C.11 upper bounds (solid) and "
                           "the C.2 lower bounds (dashed), by λ, at the largest ε."),
        figure(fig_flip, "Flip rate against the ridge λ (Corollary C.4)."),
        Table(["task", "model", "ε", "L measured (per ℓ∞ ε)", "L measured (per ℓ2 pixel)",
               "L analytic (per ℓ2 in z)", "attack z-radius ε_z", "points searched"],
              lipschitz, "One-point kernel Lipschitz constants: measured max ‖K(X′) − K(X)‖₂ "
                         "over the ε-box, and the paper's analytic constant (Prop. 4.6/C.13)."),
        Table([*head, "‖ΔK‖₂", *(BOUNDS[n][1] for n in ("upper_measured", "upper_analytic",
                                                       "upper_resolvent"))], upper,
              "Theorem C.11 upper bounds on the influence shift of the attacked set."),
        Table([*head, "‖ΔK α̂‖", BOUNDS["lower_paper"][1], BOUNDS["lower_exact"][1]], lower,
              "Theorem C.2 lower bounds on the influence shift of the attacked set."),
        Table(["task", "seed", "ε", "λ", "S_attn > S_ReLU", "flip attn > ReLU", "verdict"],
              pairs, "Per comparison, with the measured L."),
        Table(["task", "model", "seed", "ε", "flip % by increasing λ", "violations", "trend"],
              mono_rows, "Corollary C.4: flip rate against λ (a violation: the flip rate "
                         "rises with λ)."),
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


# --- the claims table ---------------------------------------------------------------------------

#: The paper's words for each bound, and what it claims.
BOUND_CLAIMS = {
    "upper": "The influence shift ‖α′ − α‖ of the attacked set is at most the bound "
             "(Theorem C.11)",
    "lower": "The influence shift ‖α′ − α‖ of the attacked set is at least the bound "
             "(Theorem C.2)",
}


def bound_claims(rows: list[dict]) -> list[Claim]:
    """One claim per bound of :data:`BOUNDS`: it holds in every (cell, seed, λ) row (a theorem:
    one failing row disagrees), with how loose it is (bound / shift for an upper bound, shift /
    bound for a lower one, over the rows where it holds)."""
    claims = []
    for name, (kind, label) in BOUNDS.items():
        values = [r["bounds"][name] for r in rows if name in r["bounds"]]
        if not values:
            continue
        holds = sum(b["holds"] for b in values)
        loose = [(1 / b["ratio"] if kind == "upper" else b["ratio"]) for b in values
                 if b["holds"] and 0 < b["ratio"] < math.inf]
        spread = (f"; loose by {fmt(min(loose))} to {fmt(max(loose))}×" if loose else "")
        claims.append(Claim(f"{BOUND_CLAIMS[kind]}: {label}",
                            f"{len({r['task'] for r in rows})} tasks × models × ε × λ × seeds",
                            "holds (a theorem)", f"holds in {holds}/{len(values)} rows{spread}",
                            "agrees" if holds == len(values) else "disagrees",
                            ("theory", "bound", name)))
    return claims


def ordering_claim(rows: list[dict]) -> list[Claim]:
    """Theorem C.5 / Def. C.12: the intrinsic sensitivity S (measured kernel Lipschitz constant)
    orders the architectures' flip rates, S_attn > S_ReLU exactly where MLP-Attn flips more.
    Per seed, the share of (task, ε, λ) comparisons where S predicts the order; decided by its
    t interval over seeds against ½ (our reading: better than a coin; the paper gives no
    threshold)."""
    shares: dict[str, dict[int, list[bool]]] = {}
    for which in ("measured", "analytic"):
        for c in ordering(rows, which)["comparisons"]:
            shares.setdefault(which, {}).setdefault(c["key"][1], []).append(c["agree"])
    if not shares:
        return []
    share = {which: Estimate([sum(v) / len(v) for v in by.values()], list(by))
             for which, by in shares.items()}
    n = sum(len(v) for v in shares["measured"].values())
    always = all(c["predicted"] for c in ordering(rows, "analytic")["comparisons"])
    return [Claim("The intrinsic sensitivity S (Def. C.12) orders the malleability: S_attn > "
                  "S_ReLU where MLP-Attn's flip rate is higher (Theorem C.5, Prop. C.13)",
                  f"{n} (task, seed, ε, λ) comparisons", "S orders the flip rates",
                  f"share predicted per seed, measured L: {pct(share['measured'])} %; "
                  f"analytic L: {pct(share['analytic'])} %"
                  + (" (it ranks MLP-Attn first in every comparison)" if always else ""),
                  verdict(share["measured"], (0.5, math.inf)), ("theory", "ordering"))]


def c4_claims(records: list[dict]) -> list[Claim]:
    """Corollary C.4 per architecture and ε (:func:`c4_split`): one claim each, its verdict
    over the tasks."""
    claims = []
    for (model, eps), entry in c4_split(ridge_changes(records)).items():
        lambdas = entry["rows"][0]["ridges"]
        claims.append(Claim(
            "Regularization controls malleability: the flip rate falls as the ridge λ grows "
            "(Corollary C.4)",
            f"{model_name(model)}, ε = {fmt(eps)}, {len(entry['rows'])} tasks",
            f"falls with λ ({fmt(lambdas[0])} → {fmt(lambdas[-1])})",
            f"change of the flip rate, paired by seed: {c4_measured(entry['rows'])}",
            entry["verdict"], ("theory", "c4", model, eps)))
    return claims
