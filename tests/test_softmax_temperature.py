"""The open question's rows (softmax_temperature.paper_claims): collapse decided by the collapse
share's interval against ½, and cubic conditioning by log₁₀ κ_eff(φ_τ)/κ_eff(Z)³ within one
decade, asked only where collapse is not decided."""

from __future__ import annotations

from malleability.repro.experiments import softmax_temperature as st
from malleability.repro.seeds import merge_seeds


def _records(per_tau: dict[float, tuple[list[float], list[float]]], width: int = 16,
             k_in: float = 1e3) -> list[dict]:
    """Three seeds per τ: (cosines, κ_eff of the features) by seed; raw cosine 0.3."""
    return [{"cell": {"task": "t", "model": "attn-softmax", "temperature": tau, "width": width,
                      "seed": s},
             "result": {"cosine_raw": 0.3 + 0.001 * s, "cosine": cos[s],
                        "kappa_effective_inputs": k_in * (1 + 0.1 * s),
                        "kappa_effective": kappa[s]}}
            for tau, (cos, kappa) in per_tau.items() for s in range(3)]


def _answers(records: list[dict]) -> dict[tuple, str]:
    merged = merge_seeds(records, st.GEOMETRIC)
    return {c.key[3:]: c.verdict for c in st.paper_claims(merged)}


def test_the_open_question_is_answered_per_temperature_by_the_intervals():
    k = [1e3, 1.1e3, 1.2e3]  # κ_eff of the inputs by seed (_records)
    cubed = [v**3 * f for v, f in zip(k, (1.5, 0.8, 2.0), strict=True)]
    answers = _answers(_records({
        0.001: ([0.30, 0.302, 0.301], [1.01e3, 1.12e3, 1.21e3]),    # diverse, κ of the inputs
        0.01: ([0.31, 0.30, 0.305], cubed),                    # cubic
        0.1: ([0.999, 0.998, 0.9995], [1e12, 2e12, 3e12]),          # collapsed
        1.0: ([0.40, 0.90, 0.65], [1e3, 1e3, 1e3])}))               # share straddles ½
    assert answers == {
        (0.001, "collapse"): "answer: avoids collapse", (0.001, "cubic"): "answer: not cubic",
        (0.01, "collapse"): "answer: avoids collapse", (0.01, "cubic"): "answer: cubic",
        (0.1, "collapse"): "answer: collapses",
        (1.0, "collapse"): "inconclusive", (1.0, "cubic"): "answer: not cubic"}


def test_the_rows_read_the_smallest_width_and_say_when_seeds_are_too_few():
    diverse = ([0.30, 0.302, 0.301], [1.01e3, 1.12e3, 1.21e3])
    collapsed = ([0.999, 0.998, 0.9995], [1e12, 2e12, 3e12])
    answers = _answers(_records({0.5: diverse}, width=16) + _records({0.5: collapsed},
                                                                     width=1024))
    assert answers[(0.5, "collapse")] == "answer: avoids collapse"
    few = [r for r in _records({0.5: diverse}) if r["cell"]["seed"] < 2]
    assert set(_answers(few).values()) == {"too few seeds"}
