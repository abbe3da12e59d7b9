"""Measuring influence malleability (Definition 3.4, Appendix A.5.2, §5.3–5.4).

S = the top ⌈fraction·n⌉ influence-set points by influence score I_i. The points of S are
perturbed in the model's input space (pixels) by an attack on the trained network's loss at
their own labels; influence is recomputed on the perturbed training set with the same weights
(for MLP-Attn the reference set is the perturbed training set, so every feature moves), or
after retraining. Flip rate, Spearman ρ(I, I') and top-K overlap: see :mod:`.metrics`.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .attacks import AttackSettings, perturb_rows
from .influence import InfluenceResult, InfluenceSettings, network_influence
from .kernel_ridge import StabilityReport
from .metrics import flip_rate, spearman, top_fraction, top_k_overlap
from .models import TwoLayerNet
from .training import TrainSettings, train


@dataclass
class MalleabilityResult:
    """Flip rate, Spearman ρ and top-K overlap, with everything needed to audit them."""

    flip_rate: float
    spearman: float
    top_k_overlap: float
    selected: torch.Tensor  # indices of S (into the influence set)
    scores: torch.Tensor  # I_i before
    perturbed_scores: torch.Tensor  # I'_i after
    stability: StabilityReport
    perturbed_stability: StabilityReport
    max_perturbation: float  # max ‖x'_i − x_i‖∞ over S
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready scalars and the two stability reports."""
        return {"flip_rate": self.flip_rate, "spearman": self.spearman,
                "top_k_overlap": self.top_k_overlap, "n_selected": int(self.selected.numel()),
                "max_perturbation": self.max_perturbation,
                "stability": self.stability.to_dict(),
                "perturbed_stability": self.perturbed_stability.to_dict(),
                "settings": self.settings}


def compare_scores(before: InfluenceResult, after: InfluenceResult, fraction: float,
                   kept: torch.Tensor | None = None, **extra) -> MalleabilityResult:
    """Malleability metrics between two influence results; ``kept`` lists the training
    indices of ``before`` that ``after``'s training set holds, in order (default: all)."""
    scores = before.scores if kept is None else before.scores[kept]
    return MalleabilityResult(
        flip_rate=flip_rate(scores, after.scores, fraction),
        spearman=spearman(scores, after.scores),
        top_k_overlap=top_k_overlap(scores, after.scores, fraction),
        selected=top_fraction(scores, fraction), scores=scores,
        perturbed_scores=after.scores, stability=before.stability,
        perturbed_stability=after.stability, **extra)


def measure_malleability(
    model: TwoLayerNet,
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    attack: AttackSettings = AttackSettings(),
    influence: InfluenceSettings = InfluenceSettings(),
    retrain: TrainSettings | None = None,
    subset: torch.Tensor | None = None,
) -> MalleabilityResult:
    """Definition 3.4 on a trained ``model`` with training set (``x``, ``y``) in the model's
    input space: influence on the rows ``subset`` of it (default: all), perturb the top
    ``influence.fraction`` of them and recompute influence, with the same weights or after
    ``retrain``. The attention reference is the whole (perturbed) training set."""
    rows = torch.arange(x.shape[0]) if subset is None else subset
    before = network_influence(model, x[rows], y[rows], x_test, y_test, influence.ridge)
    selected = top_fraction(before.scores, influence.fraction)
    x_new = perturb_rows(model, x, y, rows[selected], attack)
    if retrain is not None:
        with torch.no_grad():
            z_new = model.inputs(x_new)
        new_model = model.reinitialized(z_new if model.front is not None else None)
        train(new_model, x_new, y, retrain)
    elif model.front is not None:
        with torch.no_grad():
            new_model = model.with_reference(model.inputs(x_new))
    else:
        new_model = model
    after = network_influence(new_model, x_new[rows], y[rows], x_test, y_test, influence.ridge)
    delta = float((x_new - x).abs().amax()) if selected.numel() else 0.0
    settings = {"attack": attack.to_dict(), "fraction": influence.fraction,
                "ridge": influence.ridge, "retrain": None if retrain is None else retrain.to_dict()}
    return compare_scores(before, after, influence.fraction, max_perturbation=delta,
                          settings=settings)
