"""What ``malleability audit`` prints: the answer first (each estimator's verdict against its
controls, :mod:`~malleability.controls`), then per estimator the three values of every metric
(estimator noise, random perturbation, adversarial) with their 95 % intervals, the excess
and its verdict, the estimator's diagnostics, and the representation's κ."""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

from .auditing import AuditReport, AuditSettings
from .controls import METRICS
from .intervals import Estimate

METRIC_NAMES = {"flip_rate": "flip rate", "spearman": "Spearman ρ",
                "top_k_overlap": "top-K overlap"}


def fmt_number(v: float | None) -> str:
    """3 significant digits; ∞ and n/a spelled out."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return "∞" if math.isinf(v) else f"{v:.3g}" if abs(v) < 1e4 else f"{v:.2e}"


def _two(v: float) -> str:
    """Two decimals, with a value that rounds to zero shown as 0.00, not −0.00."""
    text = f"{v:.2f}"
    return "0.00" if text == "-0.00" else text


def fmt_estimate(value: float, deterministic: str = "") -> str:
    """``mean [low, high]`` of an Estimate, the interval clipped to the metric's range
    (``Estimate.shown_interval``; ``mean (values …)`` without one); a plain number (an exact
    control) with ``deterministic`` beside it."""
    if not isinstance(value, Estimate):
        return f"{float(value):.3g}{deterministic}"
    interval = value.shown_interval()
    if interval is None:
        return f"{_two(float(value))} (values {', '.join(_two(v) for v in value.values)})"
    return f"{_two(float(value))} [{_two(interval[0])}, {_two(interval[1])}]"


def answer(reports: Sequence[AuditReport]) -> list[str]:
    """One line per estimator: its verdict, the flip rate's excess over the controls and how
    sure (the interval), and its warnings."""
    lines = []
    for r in reports:
        ex = r.excess["flip_rate"]
        lines.append(f"{r.estimator}: {r.verdict} (flip-rate excess over the controls "
                     f"{fmt_estimate(ex)})")
        lines += [f"  warning: {w}" for w in r.diagnostics.get("warnings", [])]
    return lines


def values_of(r: AuditReport) -> dict[str, Any]:
    """An AuditReport's measurements in the shape of :func:`~malleability.auditing.assemble`."""
    return {"adversarial": {"flip_rate": r.flip_rate, "spearman": r.spearman,
                            "top_k_overlap": r.top_k_overlap}, **r.controls,
            "excess": r.excess, "verdicts": r.verdicts}


def controls_rows(values: Mapping[str, Any]) -> list[list[str]]:
    """Per metric: noise, random, adversarial, excess (95 % intervals) and the verdict, from
    :func:`~malleability.auditing.assemble`'s dict."""
    return [[METRIC_NAMES[m], fmt_estimate(values["noise"][m], " (deterministic)"),
             fmt_estimate(values["random"][m]), fmt_estimate(values["adversarial"][m]),
             fmt_estimate(values["excess"][m]), values["verdicts"][m]] for m in METRICS]


def format_audit(reports: Sequence[AuditReport], settings: AuditSettings) -> str:
    """The CLI's summary of audit reports (module docstring)."""
    seeds = ",".join(map(str, settings.seeds))
    lines = [f"Answer ({settings.attack.upper()} ε = {settings.eps:g}, top "
             f"{settings.fraction:.0%}, seeds {seeds}; verdict by the 95 % interval of the "
             f"excess, margin {settings.margin:g}):", *answer(reports), ""]
    first = reports[0].representation
    lines.append(f"Representation entering {first['layer']}: shape {tuple(first['shape'])}")
    for gram in ("per_example", "per_token"):
        if gram in first:
            g = first[gram]
            lines.append(f"  {gram:<12} Gram ({g['rows']} × {g['columns']}): κ "
                         f"{fmt_number(g['kappa'])}, rank {g['rank']}, κ³ "
                         f"{fmt_number(g['kappa_cubed'])}, width MLP-Attn "
                         f"{fmt_number(g['width_threshold']['mlp_attention'])}, 2L-ReLU "
                         f"{fmt_number(g['width_threshold']['relu'])}")
    header = ["metric", "estimator noise", "random ±ε", "adversarial", "excess", "verdict"]
    for r in reports:
        lines += ["", f"{r.estimator} (mean [95% interval] over seeds):",
                  "  " + " | ".join(header)]
        lines += ["  " + " | ".join(row) for row in controls_rows(values_of(r))]
        lines.append("  rank stability across seeds (Spearman ρ of clean scores): "
                     + fmt_estimate(r.diagnostics["rank_stability"], " (deterministic)"))
        top = r.diagnostics.get("hessian_top_eigenvalue")
        if top is not None:
            lines.append(f"  Hessian |λ|max ≈ {fmt_number(top)} (damping "
                         f"{settings.damping:g})")
        a = r.checkpoint_agreement
        if a:
            e, rho = a["ensemble"], a["mean_pairwise_spearman"]
            lines.append(f"  {a['n_checkpoints']} checkpoints: mean pairwise ρ "
                         f"{fmt_number(rho)}; ensembled scores: {e['verdict']}, flip rate "
                         f"{fmt_estimate(e['adversarial']['flip_rate'])}, excess "
                         f"{fmt_estimate(e['excess']['flip_rate'])}")
    return "\n".join(lines)

