"""Proposition 4.13 with trainable, He-initialised QKV projections (issue 32).

MLP-Attn whose linearized front φ(z) = rownorm((z W_Q)(R W_K)ᵀ(R W_V)) has W_Q, W_K, W_V
He-initialised (N(0, 2/d)) and trained with W (:class:`~malleability.models.QKVNet`), per task
and width, on the influence set as in Table 1 (:func:`.ntk_distance.network_distances`):

- the function distance of the trained network to the kernel ridge predictor of Θ_∞ on the
  initial features φ₀(Z) (the W block's infinite-width kernel; the QKV block has no
  deterministic limit in m, its d×d projections do not grow with the width), and the kernel
  distance 1 − cos(Θ_m, Θ_∞) of the full empirical NTK (W and QKV) and of its W block alone;
- the conditioning Prop. 4.13 names: κ_eff(G) of the inputs, κ_eff of each projected Gram
  G_P = (ZP)(ZP)ᵀ at the He draw, κ_eff of the unnormalised attention features
  z W_Q W_Kᵀ RᵀR W_V at initialisation and after training (κ(G)³ for identity projections);
- how far training moves each projection, ‖P − P₀‖_F/‖P₀‖_F.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

import torch

from ...jacobian_ntk import cast_module
from ...models import TRAINABLE_QKV, QKVNet, TwoLayerNet
from ...ntk import empirical_ntk, infinite_ntk, kernel_distance
from ...settings import setting
from ...spectral import effective_condition_number
from ...training import train
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct
from ..figures import Line
from ..problem import RunContext, build_model, on_influence_set
from ..seeds import LOG_SCALE, combine
from .base import NetworkSettings, agreement, cell_problem, check_nonempty, cubed, decide, trend
from .ntk_distance import network_distances

TITLE = "Trainable He-initialised QKV projections (Proposition 4.13)"
INTRO = ("Proposition 4.13 extends non-convergence to trainable QKV projections: for He "
         "initialisation the projected Gram's κ stays of the order of the input κ, and "
         "\"non-convergence holds empirically for MNIST and CIFAR-10\". MLP-Attn with W_Q, W_K, "
         "W_V ~ N(0, 2/d) trained with W (Adam, the shared training settings) on the influence "
         "set, per width: the function distance to the Θ_∞ kernel ridge predictor on the "
         "initial features, the kernel distance of the full NTK (W and QKV) and of its W block, "
         "κ_eff of the inputs, of each projected Gram (Z P)(Z P)ᵀ and of the unnormalised "
         "attention features before and after training, and the relative change of each "
         "projection. \"Of the order of\" is our reading: |log₁₀ κ(G_P)/κ(G)| < 1, on the mean "
         "over P = W_Q, W_K, W_V.")

PROJECTIONS = ("w_q", "w_k", "w_v")
#: Fields summarised over seeds on the log scale (:data:`~..seeds.LOG_SCALE`): the condition
#: numbers and the kernel distances span decades (an arithmetic interval of κ reaches below 0).
GEOMETRIC = ("kappa_inputs", "kappa_projected", "kappa_features_init", "kappa_features_trained",
             "kernel_distance_trained", "kernel_distance_w_block")


def _check_widths(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    for i, w in enumerate(check_nonempty(value, name)):
        if isinstance(w, bool) or not isinstance(w, int) or w < 1:
            raise ValueError(f"{name}[{i}]: expected a positive integer, got {w!r}")
    return value


def _check_models(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    if tuple(value) != (TRAINABLE_QKV,):
        raise ValueError(f"{name}: expected [{TRAINABLE_QKV!r}] (this experiment's one "
                         f"architecture), got {list(value)!r}")
    return value


@dataclass(frozen=True)
class QKVProjectionSettings(NetworkSettings):
    models: tuple[str, ...] = setting((TRAINABLE_QKV,), "The architecture: attn-qkv.",
                                      _check_models)
    widths: tuple[int, ...] = setting((16, 1024, 4096), "Widths m (Table 1's).", _check_widths,
                                      flag="--width")


SETTINGS = QKVProjectionSettings


def cells(s: QKVProjectionSettings) -> list[dict]:
    return [{"task": t.label, "width": w} for t in s.tasks for w in s.widths]


def run(s: QKVProjectionSettings, cell: dict, ctx: RunContext) -> dict:
    p = on_influence_set(cell_problem(s.tasks, cell, ctx))
    width = cell["width"]
    initial = build_model(TRAINABLE_QKV, p, s.model, width)
    trained = build_model(TRAINABLE_QKV, p, s.model, width)
    history = train(trained, p.x, p.y, dataclasses.replace(s.train, progress=False,
                                                           checkpoints=()), p.x_test, p.y_test)
    out = {"n": p.x.shape[0], **network_distances(p, initial, trained, s.influence.ridge),
           "final_train_loss": history.train_loss[-1]}
    z = p.z.double()
    with torch.no_grad():
        h0 = initial.hidden_inputs(z).double()
        block = w_block_ntk(trained, z)  # zero for a dead network: no direction, stored null
        out["kernel_distance_w_block"] = (kernel_distance(block, infinite_ntk(h0))
                                          if bool(block.any()) else None)
        front0, front = initial.front, trained.front
        out["kappa_inputs"] = effective_condition_number(z).kappa_effective
        out["kappa_projected"] = {
            name: effective_condition_number(z @ getattr(front0, name).double()).kappa_effective
            for name in PROJECTIONS}
        out["kappa_features_init"] = _features_kappa(initial, z)
        out["kappa_features_trained"] = _features_kappa(trained, z)
        out["projection_change"] = {
            name: float((getattr(front, name) - getattr(front0, name)).norm()
                        / getattr(front0, name).norm()) for name in PROJECTIONS}
    return out


def _features_kappa(net: QKVNet, z: torch.Tensor) -> float:
    """κ_eff of the unnormalised attention features z W_Q W_Kᵀ RᵀR W_V."""
    front = cast_module(net.front, torch.float64)
    return effective_condition_number(front.parts(z)[3]).kappa_effective


def w_block_ntk(net: QKVNet, z: torch.Tensor) -> torch.Tensor:
    """The W block of ``net``'s empirical NTK on network inputs ``z``: the 2L-ReLU closed form
    of the same W and A on its current features φ(z)."""
    head = TwoLayerNet(net.in_features, net.width, net.num_classes, dtype=torch.float64)
    head.weight.data.copy_(net.weight.detach())
    head.readout.copy_(net.readout)
    return empirical_ntk(head, net.hidden_inputs(z).double())


def _log_ratio_mean(projected: dict, inputs: float) -> float:
    """Mean over the projections of log₁₀ κ(G_P)/κ(G), seed by seed."""
    values = [projected[name] for name in PROJECTIONS]
    return combine(lambda k, *ps: sum(math.log10(v / k) for v in ps) / len(ps), inputs,
                   *values)


def section(records: list[dict], figs: Path) -> list[Block]:
    """Distances and conditioning per task and width; distance vs width figure."""
    rows, spectra, panels = [], [], {}
    for (task,), rs in group(records, "task").items():
        by_width = {r["cell"]["width"]: r["result"] for r in rs}
        widths = sorted(by_width)
        for w in widths:
            res = by_width[w]
            change = res["projection_change"]
            rows.append([task, str(w), fmt(res["function_distance_init"]),
                         fmt(res["function_distance_trained"]),
                         fmt(res["kernel_distance_trained"]),
                         fmt(res["kernel_distance_w_block"]), pct(res["test_accuracy"]),
                         " / ".join(fmt(change[name]) for name in PROJECTIONS)])
        res = by_width[widths[0]]
        spectra.append([task, fmt(res["kappa_inputs"]),
                        *(fmt(res["kappa_projected"][name]) for name in PROJECTIONS),
                        fmt(_log_ratio_mean(res["kappa_projected"], res["kappa_inputs"])),
                        fmt(res["kappa_features_init"]),
                        fmt(cubed(res["kappa_inputs"]))])
        panels[task] = [Line("trained", widths,
                             [by_width[w]["function_distance_trained"] for w in widths]),
                        Line("at init", widths,
                             [by_width[w]["function_distance_init"] for w in widths],
                             {"ls": "--"})]
    path = figures.line_panels(figs / "qkv_projections.png", panels, "width m",
                               r"$\|f_m - f_{\Theta_\infty}\|_F$ on test", logx=True)
    trained_kappa = [[task, str(r["cell"]["width"]), fmt(r["result"]["kappa_features_init"]),
                      fmt(r["result"]["kappa_features_trained"])]
                     for (task,), rs in group(records, "task").items() for r in rs]
    return [Table(["task", "m", "function dist. init", "function dist. trained",
                   "kernel dist. trained (W and QKV)", "kernel dist. trained (W block)",
                   "test acc. %", "‖P − P₀‖/‖P₀‖ (Q / K / V)"], rows,
                  "Distances to the Θ_∞ predictor on the initial features, per width "
                  f"(kernel distances: {LOG_SCALE})."),
            Table(["task", "κ_eff(G)", "κ_eff(G_Q)", "κ_eff(G_K)", "κ_eff(G_V)",
                   "mean log₁₀ κ(G_P)/κ(G)", "κ_eff features at init", "κ_eff(G)³"], spectra,
                  "Conditioning at the He draw (the projections do not depend on the width; "
                  f"κ: {LOG_SCALE})."),
            Table(["task", "m", "κ_eff features at init", "κ_eff features trained"],
                  trained_kappa, "κ_eff of the unnormalised attention features before and "
                                 f"after training ({LOG_SCALE})."),
            figure(path, "Function distance vs width, MLP-Attn with trainable He QKV.")]


def paper_claims(records: list[dict]) -> list[Claim]:
    """Prop. 4.13 per task: He-initialised projections keep κ of the order of κ(G), and the
    network with trainable QKV does not converge to its kernel regime (the function distance
    does not decrease with width, each step decided by its paired interval)."""
    claims = []
    for (task,), rs in group(records, "task").items():
        by_width = {r["cell"]["width"]: r["result"] for r in rs}
        widths = sorted(by_width)
        res = by_width[widths[0]]
        ratio = _log_ratio_mean(res["kappa_projected"], res["kappa_inputs"])
        decided = decide(ratio, (-1.0, 1.0))
        claims.append(Claim(
            "He-initialised QKV projections keep the projected Gram's κ of the order of the "
            "input κ (Prop. 4.13)", task, "κ(G_W) of the order of κ(G) (our reading: within "
            "10×)", f"mean log₁₀ κ(G_P)/κ(G) {fmt(ratio)}", agreement(decided, True),
            ("qkv_projections", task, "kappa")))
        distances = [by_width[w]["function_distance_trained"] for w in widths]
        ours = trend(distances)
        settled = None if ours == "—" or ours.startswith("undecided") else ours != "decreasing"
        claims.append(Claim(
            "With trainable He-initialised QKV the NTK distance does not decrease with width "
            "(Prop. 4.13: non-convergence holds empirically)", task, "not decreasing",
            f"{ours}: {' → '.join(fmt(d) for d in distances)} (m = "
            f"{'/'.join(map(str, widths))})", agreement(settled, True),
            ("qkv_projections", task, "trend")))
    return claims
