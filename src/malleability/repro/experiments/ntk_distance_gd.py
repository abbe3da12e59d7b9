"""Table 1's optimizer axis (issue 32): NTK distance across widths under Adam and under
full-batch gradient descent with the NTK-scaled step.

Per task, architecture, optimizer and width, on the influence set (as :mod:`.ntk_distance`):

- the paper's quantity ‖f_m(X_t) − f_ridge(X_t)‖_F, the distance of the trained network to the
  kernel ridge predictor of its infinite-width NTK Θ_∞ (Adam: the paper's training, A.4, with
  its loss; GD: the mean MSE ½‖f − y‖²);
- under GD also the NTK theorem's quantity ‖f_m,t(X_t) − f_Θ∞,t(X_t)‖_F, the distance to Θ_∞'s
  own gradient-descent trajectory from the same start f_m,0 at the same step η and step count
  t (:func:`~malleability.ntk.kernel_gd`).

The step is η = c·n/λ_max(Θ_∞(X, X)) (:func:`~malleability.ntk.ntk_step`, c = ``step_scale``),
the same at every width (NTK parametrisation: f = σ(W h)ᵀA/√m, W ~ N(0, s²)). The step count
t is the fewest steps after which Θ_∞'s GD brings the training loss of the targets (from
f = 0) below ``loss_tolerance`` of its start, at most ``max_steps``: a calibration on the
training loss alone, never on a distance (docs/method.md §4). The rate in m is the log-log
least-squares slope of distance against width, fitted per seed (interval over seeds).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ..._validation import NonFiniteError
from ...intervals import Estimate
from ...losses import accuracy
from ...ntk import (
    function_distance,
    infinite_ntk,
    kernel_gd,
    kernel_gd_steps,
    network_ntk_top,
    ntk_step,
)
from ...settings import setting
from ...training import train_gd
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct, rank
from ..figures import Line
from ..problem import RunContext, build_model, on_influence_set, trained_model
from ..seeds import LOG_SCALE, combine
from .base import (
    NetworkSettings,
    cell_problem,
    check_architectures,
    check_nonempty,
    model_name,
    task_title,
    verdict,
)
from .ntk_distance import network_distances

TITLE = "NTK distance under gradient descent (Table 1, optimizer axis)"
INTRO = ("Table 1 trained with Adam (A.4). NTK theory predicts convergence to the kernel regime "
         "under gradient descent with a width-independent step in the NTK parametrisation, and "
         "Adam's per-parameter steps do not shrink with width (issue 32). Here both optimizers "
         "side by side: the paper's quantity ‖f_m − f_ridge‖ (distance to the kernel ridge "
         "predictor of Θ_∞) for both, and under GD the NTK theorem's quantity "
         "‖f_m,t − f_Θ∞,t‖ (distance to Θ_∞'s own GD trajectory from the same start, same step "
         "η = c·n/λ_max(Θ_∞) and step count t, calibrated on the training loss). The rate is "
         "the log-log slope of distance against m (NTK theory: −½ for the trajectory "
         "distance).")

OPTIMIZERS = ("adam", "gd")
#: The quantities, their result keys and their names in the tables.
QUANTITIES = {"ridge": ("function_distance_trained", "‖f − f_ridge‖ (paper)"),
              "trajectory": ("distance_to_kernel_gd", "‖f − f_Θ∞,t‖ (NTK theorem)")}
#: A diverged GD run's fields that describe the trained network (stored as null).
DIVERGED_MISSING = ("test_accuracy", "function_distance_trained", "kernel_distance_trained",
                    "distance_to_kernel_gd", "final_train_loss")
#: Fields summarised over seeds on the log scale (:data:`~..seeds.LOG_SCALE`): the distances,
#: whose rate in m is a log-log slope and whose figure has a log axis.
GEOMETRIC = tuple(key for key, _ in QUANTITIES.values())


def _check_widths(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    for i, w in enumerate(check_nonempty(value, name)):
        if w < 1:
            raise ValueError(f"{name}[{i}]: expected a positive integer, got {w}")
    return value


def _check_optimizers(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    for i, o in enumerate(check_nonempty(value, name)):
        if o not in OPTIMIZERS:
            raise ValueError(f"{name}[{i}]: expected one of {', '.join(OPTIMIZERS)}, got {o!r}")
    return value


def _check_scale(value: float, name: str) -> float:
    if not 0 < value < 2:
        raise ValueError(f"{name}: expected a number in (0, 2) (stable steps), got {value!r}")
    return float(value)


def _check_fraction(value: float, name: str) -> float:
    if not 0 < value < 1:
        raise ValueError(f"{name}: expected a number in (0, 1), got {value!r}")
    return float(value)


def _check_steps(value: int, name: str) -> int:
    if not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}: expected a positive integer, got {value!r}")
    return value


@dataclass(frozen=True)
class NtkDistanceGdSettings(NetworkSettings):
    models: tuple[str, ...] = setting(("relu", "attn"), "Architectures.", check_architectures,
                                      flag="--model")
    widths: tuple[int, ...] = setting((16, 256, 1024, 4096), "Widths m of the sweep.",
                                      _check_widths, flag="--width")
    optimizers: tuple[str, ...] = setting(OPTIMIZERS, "Optimizers: adam (the paper's, A.4) "
                                          "and gd (full-batch GD on the MSE).",
                                          _check_optimizers)
    step_scale: float = setting(1.0, "c in the GD step η = c·n/λ_max(Θ_∞(X, X)).",
                                _check_scale)
    loss_tolerance: float = setting(1e-2, "GD runs until Θ_∞'s GD training loss of the "
                                    "targets falls below this share of its start.",
                                    _check_fraction)
    max_steps: int = setting(2000, "At most this many GD steps.", _check_steps)


SETTINGS = NtkDistanceGdSettings


def cells(s: NtkDistanceGdSettings) -> list[dict]:
    return [{"task": t.label, "model": m, "optimizer": o, "width": w}
            for t in s.tasks for m in s.models for o in s.optimizers for w in s.widths]


def run(s: NtkDistanceGdSettings, cell: dict, ctx: RunContext) -> dict:
    p = on_influence_set(cell_problem(s.tasks, cell, ctx))
    width = cell["width"]
    initial = build_model(cell["model"], p, s.model, width)
    out = {"n_train": p.x.shape[0], "n_test": p.x_test.shape[0]}
    if cell["optimizer"] == "adam":
        trained, history = trained_model(cell["model"], p, s.model, s.train, ctx, width)
        return {**out, **network_distances(p, initial, trained, s.influence.ridge),
                "distance_to_kernel_gd": None, "lr": s.train.lr, "steps": None,
                "final_train_loss": history["train_loss"][-1], "kernel_train_loss": None}
    with torch.no_grad():
        h = initial.hidden_inputs(initial.inputs(p.x)).double()
        h_t = initial.hidden_inputs(initial.inputs(p.x_test)).double()
        f0, f0_t = initial(p.x).double(), initial(p.x_test).double()
    k_inf, k_inf_t = infinite_ntk(h), infinite_ntk(h_t, h)
    y = p.y.double()
    lr = ntk_step(k_inf, s.step_scale)
    steps = kernel_gd_steps(k_inf, torch.zeros_like(y), y, lr, s.loss_tolerance, s.max_steps)
    f_kernel, f_kernel_t = kernel_gd(k_inf, k_inf_t, f0, f0_t, y, lr, steps)
    kernel = {"lr": lr, "steps": steps,
              "kernel_train_loss": float(0.5 * (f_kernel - y).square().sum(1).mean()),
              "kernel_gd_test_accuracy": accuracy(f_kernel_t, p.y_test.to(f_kernel_t.dtype)),
              "network_step_ratio": lr * network_ntk_top(initial, h) / h.shape[0]}
    trained = build_model(cell["model"], p, s.model, width)
    try:
        losses = train_gd(trained, p.x, p.y, lr, steps)
    except NonFiniteError:  # the step is past the trained network's stability bound
        losses = None
    net = initial if losses is None else trained
    with torch.no_grad():
        f_t = net(p.x_test).double()
    result = {**out, **network_distances(p, initial, net, s.influence.ridge),
              "distance_to_kernel_gd": function_distance(f_t, f_kernel_t), **kernel,
              "final_train_loss": None if losses is None else losses[-1],
              "initial_train_loss": float(0.5 * (f0 - y).square().sum(1).mean()),
              "diverged": losses is None}
    if losses is None:
        result.update(dict.fromkeys(DIVERGED_MISSING))
    return result


def log_slope(widths: list[int], values: list[float]) -> float:
    """Least-squares slope of log(value) against log(width): the rate α of value ∝ m^α
    (NaN when a value is missing or not positive)."""
    v = np.asarray(values, dtype=np.float64)
    if len(v) < 2 or not np.all(np.isfinite(v)) or np.any(v <= 0):
        return math.nan
    return float(np.polyfit(np.log(np.asarray(widths, dtype=np.float64)), np.log(v), 1)[0])


def width_rate(widths: list[int], values: list[float]) -> float:
    """:func:`log_slope` seed by seed (an Estimate with its interval over seeds)."""
    return combine(lambda *v: log_slope(widths, list(v)), *values)


def _rows(records: list[dict]) -> dict[tuple[str, str, str], dict[int, dict]]:
    return {key: {r["cell"]["width"]: r["result"] for r in rs}
            for key, rs in group(records, "task", "model", "optimizer").items()}


def section(records: list[dict], figs: Path) -> list[Block]:
    """Distances per width with the fitted rate; GD's step, steps and losses; one figure."""
    widths = sorted({r["cell"]["width"] for r in records})
    summary, detail, panels = [], [], {}
    for (task, model, opt), by_width in _rows(records).items():
        ws = sorted(by_width)
        for quantity, (key, name) in QUANTITIES.items():
            values = [by_width[w][key] for w in ws]
            if all(v is None for v in values):
                continue
            fitted, rate = _rate(by_width, key)
            shown = fmt(rate) + ("" if fitted == ws or rate is None else
                                 f" (m = {'/'.join(map(str, fitted))})")
            summary.append([task, model_name(model), opt.upper() if opt == "gd" else "Adam",
                            name, *(fmt(by_width[w][key]) if w in by_width else "—"
                                    for w in widths), shown])
            style = {"color": f"C{rank(model)}", "marker": "o" if opt == "gd" else "s",
                     "ls": "-" if quantity == "ridge" else "--"}
            panels.setdefault(task_title(task), []).append(
                Line(f"{model_name(model)}, {opt}, {quantity}", ws, values, style))
        for w in ws:
            res = by_width[w]
            detail.append([task, model_name(model), opt, str(w), fmt(res["lr"]),
                           fmt(res.get("network_step_ratio")), _diverged(res.get("diverged")),
                           fmt(res["steps"]), fmt(res["final_train_loss"]),
                           fmt(res["kernel_train_loss"]), pct(res["test_accuracy"]),
                           pct(res["ntk_test_accuracy"])])
    path = figures.line_panels(figs / "ntk_distance_gd.png", panels, "width m",
                               "distance on test", logx=True, logy=True)
    return [Table(["task", "model", "optimizer", "distance", *(f"m={w}" for w in widths),
                   "rate α (distance ∝ m^α)"], summary,
                  f"Distances after training ({LOG_SCALE}) and their rate in m (the log-log "
                  "slope per seed, 95 % t interval over seeds)."),
            Table(["task", "model", "optimizer", "m", "step η", "η·λ_max(Θ_m,0)/n",
                   "diverged", "steps t", "final train loss", "Θ_∞ GD train loss",
                   "test acc. %", "NTK test acc. %"],
                  detail, "Training: GD's step η = c·n/λ_max(Θ_∞) and step count t "
                          "(calibrated on Θ_∞'s training loss); Adam: the paper's lr and "
                          "epochs. η·λ_max(Θ_m,0)/n: the step against the network's own NTK "
                          "at initialisation over all n·C outputs (linearised GD is stable "
                          "below 2; → c as m → ∞; — where the cells predate it). A diverged "
                          "run (non-finite training loss) has no trained network: its "
                          "distances are missing (—) for that seed, and a width rate is "
                          "fitted on the widths where every seed converged."),
            figure(path, "Distance vs width; solid: to the kernel ridge predictor, dashed: "
                         f"to Θ_∞'s GD trajectory; circles GD, squares Adam ({LOG_SCALE}).")]


def paper_claims(records: list[dict]) -> list[Claim]:
    """Table 1's claims under each optimizer, decided by the interval of the width rate of
    the paper's quantity: 2L-ReLU's distance decreases with width (rate < 0), MLP-Attn's does
    not; and, under GD, the same claims in the NTK theorem's sense (the distance to Θ_∞'s own
    GD trajectory) with the contrast they imply, MLP-Attn's rate above 2L-ReLU's (paired by
    seed: it approaches its kernel regime more slowly). No claim where fewer than two widths
    were measured in every seed."""
    claims = []
    rows = _rows(records)
    for (task, model, opt), by_width in rows.items():
        if model not in ("relu", "attn"):
            continue
        ws, rate = _rate(by_width, "function_distance_trained")
        if rate is None:  # measured at fewer than two widths: no rate to claim on
            continue
        name = "Adam" if opt == "adam" else "GD, NTK step"
        decreases = model == "relu"
        trend = "decreases" if decreases else "does not decrease"
        claims.append(Claim(
            f"{model_name(model)}'s NTK distance {trend} with width (Table 1; trained with "
            f"{name})", task, "decreasing" if decreases else "not decreasing",
            f"rate α = {fmt(rate)} (‖f − f_ridge‖ ∝ m^α, m = {'/'.join(map(str, ws))})",
            verdict(rate, (-math.inf, 0.0), decreases), ("table1_optimizer", task, model, opt)))
    trajectory = {key: _rate(by_width, "distance_to_kernel_gd")
                  for key, by_width in rows.items() if key[2] == "gd"}
    for (task, model, _), (ws, rate) in trajectory.items():
        if model not in ("relu", "attn") or rate is None:
            continue
        decreases = model == "relu"
        trend = "decreases" if decreases else "does not decrease"
        claims.append(Claim(
            f"{model_name(model)}'s distance to its infinite-width kernel {trend} with width "
            "(Table 1 in the NTK theorem's sense: GD, distance to Θ_∞'s GD trajectory)", task,
            "decreasing" if decreases else "not decreasing",
            f"rate α = {fmt(rate)} (‖f − f_Θ∞,t‖ ∝ m^α, m = {'/'.join(map(str, ws))}; "
            "NTK theory: −0.5)",
            verdict(rate, (-math.inf, 0.0), decreases), ("table1_trajectory", task, model)))
    for task in dict.fromkeys(task for task, _, _ in trajectory):
        relu, attn = trajectory.get((task, "relu", "gd")), trajectory.get((task, "attn", "gd"))
        if relu is None or attn is None:
            continue
        ws = sorted(set(relu[0]) & set(attn[0]))  # both rates on the same widths
        if len(ws) < 2:
            continue
        rates = [width_rate(ws, [rows[(task, model, "gd")][w]["distance_to_kernel_gd"]
                                 for w in ws]) for model in ("attn", "relu")]
        gap = combine(lambda a, r: a - r, *rates)
        claims.append(Claim(
            "MLP-Attn approaches its kernel regime more slowly with width than 2L-ReLU "
            "(Table 1's contrast under GD, distance to Θ_∞'s GD trajectory)", task,
            "slower (MLP-Attn's rate above 2L-ReLU's)",
            f"α(MLP-Attn) − α(2L-ReLU) = {fmt(gap)}, paired by seed, both on "
            f"m = {'/'.join(map(str, ws))}",
            verdict(gap, (0.0, math.inf)), ("table1_trajectory_gap", task)))
    return claims


def _diverged(value: bool | float | None) -> str:
    """How many seeds' GD diverged: "no", "all", "k of n"; "—" where not recorded."""
    if isinstance(value, Estimate):
        return f"{sum(map(bool, value.values))} of {len(value.values)}"
    return {None: "—", True: "all", False: "no"}[value]


def _seeds(value: float | None) -> set[int]:
    """The seeds in which ``value`` holds a finite number (seed 0 for a plain number)."""
    if isinstance(value, Estimate):
        return {s for s, v in zip(value.seeds, value.values, strict=True) if math.isfinite(v)}
    return set() if value is None or not math.isfinite(value) else {0}


def _rate(by_width: dict[int, dict], key: str) -> tuple[list[int], float | None]:
    """The widths where ``key`` was measured in every seed that any width has, and its width
    rate there (None at fewer than two widths)."""
    every = set().union(*(getattr(res[key], "seeds", ()) for res in by_width.values()))
    ws = sorted(w for w, res in by_width.items() if _seeds(res[key]) >= (every or {0}))
    return ws, (width_rate(ws, [by_width[w][key] for w in ws]) if len(ws) > 1 else None)
