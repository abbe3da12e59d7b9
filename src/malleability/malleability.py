"""Influence malleability (Definition 3.4, Appendix A.5.2, §5.3–5.4).

S = the top ⌈fraction·n⌉ training points by influence score I_i. The points of S are perturbed
in [0,1] pixel space by an attack on the trained network's loss at their own labels; influence
is recomputed on the perturbed training set with the same weights (for MLP-Attn the reference
set is the perturbed training set, so every feature moves), or after retraining. Flip rate
= (1/|S|) Σ_{i∈S} 1[sign I_i ≠ sign I'_i]; also Spearman ρ(I, I') and |S ∩ S'|/|S|.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import torch
from scipy.stats import rankdata

from ._validation import (
    as_tensor,
    check_finite,
    check_fraction,
    check_nonnegative,
    parse_enum,
)
from .attacks import Attack, run_attack
from .influence import InfluenceResult, Loss, ntk_influence, per_example_loss
from .kernel_ridge import StabilityReport
from .models import TwoLayerNet
from .ntk import empirical_ntk
from .training import TrainSettings, Transform, loss_for_targets, train


def _score_pair(scores: torch.Tensor, perturbed: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
    a = as_tensor(scores, "scores", ndim=1).cpu().numpy()
    b = as_tensor(perturbed, "perturbed_scores", ndim=1).cpu().numpy()
    if a.shape != b.shape:
        raise ValueError(f"perturbed_scores: expected {a.shape[0]} scores, got {b.shape[0]}")
    return a, b


def top_fraction(scores: torch.Tensor, fraction: float = 0.1) -> torch.Tensor:
    """Indices of the ⌈fraction·n⌉ largest scores (most helpful first; ties by index)."""
    a = as_tensor(scores, "scores", ndim=1)
    k = math.ceil(check_fraction(fraction, "fraction") * a.shape[0])
    order = np.argsort(-a.cpu().numpy(), kind="stable")
    return torch.from_numpy(order[:k].copy())


def flip_rate(scores: torch.Tensor, perturbed_scores: torch.Tensor,
              fraction: float = 0.1) -> float:
    """(1/|S|) Σ_{i∈S} 1[sign I_i ≠ sign I'_i] over S = the top ``fraction`` of ``scores``."""
    a, b = _score_pair(scores, perturbed_scores)
    s = top_fraction(scores, fraction).numpy()
    return float(np.mean(np.sign(a[s]) != np.sign(b[s])))


def spearman(scores: torch.Tensor, perturbed_scores: torch.Tensor) -> float:
    """Spearman ρ: the Pearson correlation of the (average-tie) ranks."""
    a, b = _score_pair(scores, perturbed_scores)
    ra, rb = rankdata(a) - (len(a) + 1) / 2, rankdata(b) - (len(b) + 1) / 2
    denom = math.sqrt(float(ra @ ra) * float(rb @ rb))
    return float(ra @ rb) / denom if denom > 0 else math.nan


def top_k_overlap(scores: torch.Tensor, perturbed_scores: torch.Tensor,
                  fraction: float = 0.1) -> float:
    """|S ∩ S'| / |S| with S, S' the top ``fraction`` of each score vector."""
    _score_pair(scores, perturbed_scores)
    s = set(top_fraction(scores, fraction).tolist())
    s_prime = set(top_fraction(perturbed_scores, fraction).tolist())
    return len(s & s_prime) / len(s)


@dataclass(frozen=True)
class AttackSettings:
    """An ℓ∞ attack in [0,1] pixel space; defaults are the paper's (ε = 0.3, 40 × 0.01, μ = 1)."""

    attack: Attack = Attack.PGD
    eps: float = 0.3
    alpha: float = 0.01
    steps: int = 40
    momentum: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        object.__setattr__(self, "attack", parse_enum(self.attack, Attack, "attack"))
        check_nonnegative(self.eps, "eps")

    def run(self, loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
            x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return run_attack(self.attack, loss_fn, x, y, self.eps, alpha=self.alpha,
                          steps=self.steps, momentum=self.momentum, seed=self.seed)

    def to_dict(self) -> dict:
        return {**asdict(self), "attack": self.attack.value}


def network_influence(model: TwoLayerNet, z_train: torch.Tensor, y_train: torch.Tensor,
                      z_test: torch.Tensor, y_test: torch.Tensor, ridge: float,
                      loss: Loss | str | None = None) -> InfluenceResult:
    """NTK influence on the network's empirical kernel K = Θ_m(X, X), K_t = Θ_m(X_t, X)."""
    loss = loss_for_targets(y_train) if loss is None else loss
    k = empirical_ntk(model, z_train)
    k_t = empirical_ntk(model, z_test, z_train)
    return ntk_influence(k, k_t, y_train, y_test, ridge, loss)


def attack_points(model: TwoLayerNet, transform: Transform, x: torch.Tensor, y: torch.Tensor,
                  indices: torch.Tensor, attack: AttackSettings) -> torch.Tensor:
    """A copy of ``x`` with the rows ``indices`` replaced by their adversarial versions
    against ``model``'s loss at their own labels (through ``transform``)."""
    loss = loss_for_targets(y)

    def loss_fn(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return per_example_loss(model(transform(xb)), yb, loss)

    out = x.clone()
    if indices.numel():
        out[indices] = attack.run(loss_fn, x[indices], y[indices].to(model.weight.dtype))
    return out


@dataclass
class MalleabilityResult:
    """Flip rate, Spearman ρ and top-K overlap, with everything needed to audit them."""

    flip_rate: float
    spearman: float
    top_k_overlap: float
    selected: torch.Tensor  # indices of S
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
    transform: Transform,
    attack: AttackSettings,
    fraction: float = 0.1,
    ridge: float = 1e-3,
    retrain: TrainSettings | None = None,
) -> MalleabilityResult:
    """Definition 3.4 on a trained ``model``: perturb the top ``fraction`` of training points
    (pixels ``x``) and recompute influence, with the same weights or after ``retrain``.

    Non-finite network inputs, kernels, losses or influence scores raise NonFiniteError
    naming the stage."""
    fraction = check_fraction(fraction, "fraction")
    z = check_finite(transform(x), "x", "transform(x)")
    z_test = check_finite(transform(x_test), "x_test", "transform(x_test)")
    before = network_influence(model, z, y, z_test, y_test, ridge)
    selected = top_fraction(before.scores, fraction)
    x_new = attack_points(model, transform, x, y, selected, attack)
    z_new = check_finite(transform(x_new), "x", f"transform of the {attack.attack.value}-"
                         "perturbed training points")
    if retrain is not None:
        new_model = model.reinitialized(z_new if model.front is not None else None)
        train(new_model, x_new, y, retrain, transform)
    elif model.front is not None:
        new_model = model.with_reference(z_new)
    else:
        new_model = model
    after = network_influence(new_model, z_new, y, z_test, y_test, ridge)
    delta = float((x_new - x).abs().amax()) if selected.numel() else 0.0
    settings = {"attack": attack.to_dict(), "fraction": fraction, "ridge": ridge,
                "retrain": None if retrain is None else retrain.to_dict()}
    return compare_scores(before, after, fraction, max_perturbation=delta, settings=settings)
