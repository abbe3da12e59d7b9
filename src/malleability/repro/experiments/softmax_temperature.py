"""Temperature-scaled softmax attention (the paper's open question, Limitations; Figures 6
and 7 extended; issue 32).

φ_τ(x) = rownorm(softmax(x Rᵀ/(τ√d)) R) (:class:`~malleability.attention.AttentionFeatures`
with ``temperature`` τ). Per task, map, τ and width, on the influence set:

- Figure 6's quantities: the function distance of the trained network to its Θ_∞ kernel ridge
  predictor and the kernel distance 1 − cos(Θ_m, Θ_∞), at initialisation and after training
  (:func:`.ntk_distance.network_distances`);
- Figure 7's: the mean pairwise cosine of φ_τ's rows on the influence set, beside the raw
  inputs', and the collapse share (c − c_raw)/(1 − c_raw) (:func:`.collapse.collapse_share`);
- the conditioning: κ_eff of φ_τ(Z), beside κ_eff(Z) and κ_eff(Z)³ (linearized attention's,
  Theorem 4.2).

The τ grid is fixed in advance (decades from near-argmax to near-uniform attention), never
chosen by these quantities. Networks here are trained directly (not from the run's model
cache, whose key has no temperature).
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass
from pathlib import Path

from ...attention import attention_features
from ...intervals import undecided
from ...models import ARCHITECTURES, TwoLayerNet
from ...settings import setting
from ...spectral import effective_condition_number, mean_pairwise_cosine
from ...training import train
from .. import figures
from ..blocks import Block, Claim, Table, figure, fmt, group, pct
from ..figures import Line
from ..problem import Problem, RunContext, on_influence_set
from ..seeds import LOG_SCALE, combine
from .base import (
    NetworkSettings,
    cell_problem,
    check_nonempty,
    cubed,
    decide,
    model_name,
    task_title,
)
from .collapse import COLLAPSED, collapse_share
from .ntk_distance import network_distances

TITLE = "Temperature-scaled softmax attention (open question; Figures 6 and 7)"
#: Fields summarised over seeds on the log scale (:data:`~..seeds.LOG_SCALE`): κ and the kernel
#: distance span decades; Figure 6 draws the distance on a log axis.
GEOMETRIC = ("kappa_effective", "kappa_effective_inputs", "kernel_distance_init",
             "kernel_distance_trained")
INTRO = ("The paper leaves open whether temperature-scaled softmax, softmax(QKᵀ/(τ√d)), "
         "avoids feature collapse and shows the cubic conditioning of linearized attention "
         "(Limitations). Per temperature τ (a decade grid fixed in advance, from near-argmax "
         "to near-uniform attention): "
         "the mean pairwise cosine of the attention features (Figure 7) with its collapse share "
         "(c − c_raw)/(1 − c_raw), the effective condition number κ_eff of the features beside "
         "κ_eff(Z)³, and the NTK distances of MLP-Attn with that map across widths "
         "(Figure 6).")

#: The attention maps with a temperature.
TEMPERED = ("attn-softmax", "attn-exponential")
#: "Cubic conditioning" read as κ_eff(φ_τ(Z)) within this many decades of κ_eff(Z)³ (the 10×
#: that reads Prop. 4.13's "of the order of" in qkv_projections).
CUBIC_DECADES = 1.0
#: The paper's open question (Limitations: "whether architectures that avoid collapse (e.g.,
#: temperature-scaled softmax ...) would exhibit similar cubic conditioning"), in two parts.
AVOIDS = "Open question (Limitations): does temperature-scaled softmax avoid collapse?"
CUBIC = ("Open question (Limitations): where it avoids collapse, is its conditioning cubic "
         "like linearized attention's?")


def _check_models(value: tuple[str, ...], name: str) -> tuple[str, ...]:
    for i, m in enumerate(check_nonempty(value, name)):
        if m not in TEMPERED:
            raise ValueError(f"{name}[{i}]: expected one of {', '.join(TEMPERED)}, got {m!r}")
    return value


def _check_positive_list(value: tuple, name: str) -> tuple:
    for i, v in enumerate(check_nonempty(value, name)):
        if not v > 0:
            raise ValueError(f"{name}[{i}]: expected a positive number, got {v!r}")
    return value


@dataclass(frozen=True)
class SoftmaxTemperatureSettings(NetworkSettings):
    models: tuple[str, ...] = setting(("attn-softmax",), "Attention maps with a temperature: "
                                      "attn-softmax, attn-exponential.", _check_models,
                                      flag="--model")
    temperatures: tuple[float, ...] = setting((0.001, 0.01, 0.1, 1.0, 10.0), "Temperatures τ "
                                              "(1: the paper's map).", _check_positive_list)
    widths: tuple[int, ...] = setting((16, 1024, 4096), "Widths m (Figure 6's).",
                                      _check_positive_list, flag="--width")


SETTINGS = SoftmaxTemperatureSettings


def cells(s: SoftmaxTemperatureSettings) -> list[dict]:
    return [{"task": t.label, "model": m, "temperature": tau, "width": w}
            for t in s.tasks for m in s.models for tau in s.temperatures for w in s.widths]


def run(s: SoftmaxTemperatureSettings, cell: dict, ctx: RunContext) -> dict:
    p = on_influence_set(cell_problem(s.tasks, cell, ctx))
    tau, width = float(cell["temperature"]), cell["width"]
    initial = _network(cell["model"], p, s, width, tau)
    trained = _network(cell["model"], p, s, width, tau)
    history = train(trained, p.x, p.y, dataclasses.replace(s.train, progress=False,
                                                           checkpoints=()))
    z = p.z.double()
    phi = attention_features(z, z, ARCHITECTURES[cell["model"]], temperature=tau)
    return {"n": z.shape[0], **network_distances(p, initial, trained, s.influence.ridge),
            "final_train_loss": history.train_loss[-1],
            "cosine_raw": mean_pairwise_cosine(z), "cosine": mean_pairwise_cosine(phi),
            "kappa_effective_inputs": effective_condition_number(z).kappa_effective,
            "kappa_effective": effective_condition_number(phi).kappa_effective}


def _network(model: str, p: Problem, s: SoftmaxTemperatureSettings, width: int,
             tau: float) -> TwoLayerNet:
    return TwoLayerNet.for_architecture(model, p.z, p.num_outputs, s.model, width=width,
                                        preprocessing=p.preprocessing,
                                        temperature=tau).to(p.x.device)


def section(records: list[dict], figs: Path) -> list[Block]:
    """Collapse and conditioning per τ; distances per τ and width; Figures 6 and 7 by τ."""
    collapse_rows, distance_rows = [], []
    kernel_panels: dict[str, list[Line]] = {}
    bars: dict[str, dict[str, float]] = {}
    for (task, model), rs in group(records, "task", "model").items():
        by = {(r["cell"]["temperature"], r["cell"]["width"]): r["result"] for r in rs}
        taus = sorted({t for t, _ in by})
        widths = sorted({w for _, w in by})
        for i, tau in enumerate(taus):
            res = by[(tau, widths[0])]
            kappa_in = res["kappa_effective_inputs"]
            collapse_rows.append([task, model_name(model), fmt(tau), fmt(res["cosine_raw"]),
                                  fmt(res["cosine"], 5),
                                  fmt(collapse_share(res["cosine"], res["cosine_raw"])),
                                  fmt(res["kappa_effective"]), fmt(kappa_in),
                                  fmt(cubed(kappa_in))])
            bars.setdefault(task_title(task), {})[f"τ={fmt(tau)}"] = res["cosine"]
            kernel_panels.setdefault(task_title(task), []).append(Line(
                f"{model_name(model)}, τ={fmt(tau)}", widths,
                [by[(tau, w)]["kernel_distance_trained"] for w in widths],
                {"color": f"C{i}", "marker": "o"}))
            for w in widths:
                r = by[(tau, w)]
                distance_rows.append([task, model_name(model), fmt(tau), str(w),
                                      *(fmt(r[f"{k}_distance_{st}"]) for k in
                                        ("function", "kernel") for st in ("init", "trained")),
                                      pct(r["test_accuracy"]), fmt(r["final_train_loss"])])
        bars.setdefault(task_title(task), {})["raw"] = by[(taus[0], widths[0])]["cosine_raw"]
    fig7 = figures.bar_panels(figs / "softmax_temperature_collapse.png",
                              {"tempered softmax": bars}, "mean pairwise cosine")
    fig6 = figures.line_panels(figs / "softmax_temperature_kernel_distance.png", kernel_panels,
                               "width m", r"$1 - \cos(\Theta_m, \Theta_\infty)$", logx=True,
                               logy=True)
    return [Table(["task", "map", "τ", "cosine (raw)", "cosine (features)", "collapse share",
                   "κ_eff (features)", "κ_eff (inputs)", "κ_eff(inputs)³"], collapse_rows,
                  "Feature collapse and conditioning by temperature (collapse share 0: as "
                  f"diverse as the inputs, 1: collapsed; κ: {LOG_SCALE})."),
            Table(["task", "map", "τ", "m", "function dist. init", "function dist. trained",
                   "kernel dist. init", "kernel dist. trained", "test acc. %",
                   "final train loss"], distance_rows, "NTK distances by temperature and width "
                  f"(kernel distance: {LOG_SCALE})."),
            figure(fig7, "Figure 7 by temperature: mean pairwise cosine of the tempered "
                         "attention features."),
            figure(fig6, f"Figure 6 by temperature: kernel distance vs width ({LOG_SCALE}).")]


def paper_claims(records: list[dict]) -> list[Claim]:
    """The paper's open question per task, map and τ, in two rows: does φ_τ avoid collapse
    (collapse share below :data:`~.collapse.COLLAPSED`, A.13's rows' reading), and, where
    collapse is not decided, is its conditioning cubic like linearized attention's (Theorem
    4.2: log₁₀ κ_eff(φ_τ(Z)) − 3 log₁₀ κ_eff(Z) within ±:data:`CUBIC_DECADES`)? The paper
    gives no answer, so the verdict is ours: "answer: …" where the 95 % interval decides."""
    claims = []
    for (task, model), rs in group(records, "task", "model").items():
        first = min(r["cell"]["width"] for r in rs)  # the map's quantities do not depend on m
        by_tau = {r["cell"]["temperature"]: r["result"] for r in rs
                  if r["cell"]["width"] == first}
        for tau in sorted(by_tau):
            res, where = by_tau[tau], f"{task}, {model_name(model)}, τ = {fmt(tau)}"
            share = collapse_share(res["cosine"], res["cosine_raw"])
            avoids = decide(share, (-math.inf, COLLAPSED))
            claims.append(Claim(
                AVOIDS, where,
                "open (collapse share below ½, as A.13's rows read it)",
                f"cosine {fmt(res['cosine'], 5)} vs raw {fmt(res['cosine_raw'])}; collapse "
                f"share {fmt(share)}", _answer(share, avoids, "avoids collapse", "collapses"),
                ("softmax_temperature", task, model, tau, "collapse")))
            if avoids is False:
                continue
            cubic = combine(lambda k, k_in: math.log10(k) - 3 * math.log10(k_in),
                            res["kappa_effective"], res["kappa_effective_inputs"])
            own = combine(lambda k, k_in: math.log10(k / k_in), res["kappa_effective"],
                          res["kappa_effective_inputs"])
            claims.append(Claim(
                CUBIC, where,
                "open (κ_eff(φ_τ(Z)) within 10× of κ_eff(Z)³, Theorem 4.2's)",
                f"log₁₀ κ_eff(φ_τ(Z))/κ_eff(Z)³ {fmt(cubic)}; log₁₀ κ_eff(φ_τ(Z))/κ_eff(Z) "
                f"{fmt(own)}", _answer(cubic, decide(cubic, (-CUBIC_DECADES, CUBIC_DECADES)),
                                       "cubic", "not cubic"),
                ("softmax_temperature", task, model, tau, "cubic")))
    return claims


def _answer(value: object, decided: bool | None, yes: str, no: str) -> str:
    """The verdict of an open question: "answer: yes/no" where the interval decides."""
    reason = undecided(value)
    if reason is not None:
        return reason
    return "inconclusive" if decided is None else f"answer: {yes if decided else no}"
