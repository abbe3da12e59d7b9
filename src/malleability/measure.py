"""Measuring influence malleability (Definition 3.4, Appendix A.5.2, §5.3–5.4): one pipeline for
the reproduction and the audit.

S = the top ⌈fraction·n⌉ training points by an estimator's scores I_i. The points of S are
perturbed in the model's input space by an attack on the model's loss at their own labels
(several models: their mean loss); the scores are recomputed on the perturbed training set
with the same weights, the model attending to that set where its features depend on it
(:meth:`~malleability.models.TwoLayerNet.attending_to`), or on a refitted model. Flip rate,
Spearman ρ(I, I') and top-K overlap: see :mod:`.metrics`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol, runtime_checkable

import torch
from torch import nn

from .attacks import UNIT_BOX, AttackMethod, Bounds, perturb_rows
from .estimators import Attribution, InfluenceEstimator
from .metrics import flip_rate, spearman, top_fraction, top_k_overlap


@runtime_checkable
class Transductive(Protocol):
    """A model whose features depend on its training set (MLP-Attn's attention front)."""

    def attending_to(self, x: torch.Tensor) -> nn.Module: ...


#: Maps (trained model, perturbed training inputs) to the model whose scores count after.
Refit = Callable[[nn.Module, torch.Tensor], nn.Module]


def same_weights(model: nn.Module, x_new: torch.Tensor) -> nn.Module:
    """The model with its weights, attending to ``x_new`` if it is :class:`Transductive`."""
    return model.attending_to(x_new) if isinstance(model, Transductive) else model


@dataclass
class Measurement:
    """Flip rate, Spearman ρ and top-K overlap, with everything needed to audit them: S, the
    scores before and after, the perturbed training inputs and the estimator's diagnostics."""

    flip_rate: float
    spearman: float
    top_k_overlap: float
    selected: torch.Tensor  # indices of S (into the scored rows)
    scores: torch.Tensor  # I_i before
    perturbed_scores: torch.Tensor  # I'_i after
    perturbed_inputs: torch.Tensor  # the training inputs with S perturbed
    max_perturbation: float  # max ‖x'_i − x_i‖∞ over S
    diagnostics: dict[str, Any] = field(default_factory=dict)
    perturbed_diagnostics: dict[str, Any] = field(default_factory=dict)
    settings: dict = field(default_factory=dict)

    def summary(self) -> dict:
        """JSON-ready scalars, the estimator's diagnostics before and after (``perturbed_``
        prefix) and the settings."""
        def plain(value: Any) -> Any:
            return value.to_dict() if hasattr(value, "to_dict") else value

        return {"flip_rate": self.flip_rate, "spearman": self.spearman,
                "top_k_overlap": self.top_k_overlap, "n_selected": int(self.selected.numel()),
                "max_perturbation": self.max_perturbation,
                **{k: plain(v) for k, v in self.diagnostics.items()},
                **{f"perturbed_{k}": plain(v) for k, v in self.perturbed_diagnostics.items()},
                "settings": self.settings}


def compare(before: Attribution, after: Attribution, fraction: float,
            perturbed_inputs: torch.Tensor, max_perturbation: float,
            kept: torch.Tensor | None = None, settings: dict | None = None) -> Measurement:
    """The metrics between two attributions; ``kept`` lists the indices of ``before``'s
    points that ``after`` scores, in order (default: all)."""
    scores = before.scores if kept is None else before.scores[kept]
    return Measurement(
        flip_rate=flip_rate(scores, after.scores, fraction),
        spearman=spearman(scores, after.scores),
        top_k_overlap=top_k_overlap(scores, after.scores, fraction),
        selected=top_fraction(scores, fraction), scores=scores,
        perturbed_scores=after.scores, perturbed_inputs=perturbed_inputs,
        max_perturbation=max_perturbation, diagnostics=before.diagnostics,
        perturbed_diagnostics=after.diagnostics, settings=settings or {})


def attribute(estimator: InfluenceEstimator, models: Sequence[nn.Module], x: torch.Tensor,
              y: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, seed: int,
              parameters: Sequence[str] | None = None) -> Attribution:
    """The estimator's attribution on one model, or over several (checkpoints; no
    diagnostics): its own ensemble where it has one (``ensemble_attribute``: TRAK), else the
    mean of its scores."""
    if len(models) == 1:
        return estimator.attribute(models[0], x, y, x_test, y_test, seed=seed,
                                   parameters=parameters)
    if hasattr(estimator, "ensemble_attribute"):
        return estimator.ensemble_attribute(models, x, y, x_test, y_test, seed=seed,
                                            parameters=parameters)
    scores = [estimator.scores(m, x, y, x_test, y_test, seed=seed, parameters=parameters)
              for m in models]
    return Attribution(sum(scores) / len(scores))


def measure(
    model: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    estimator: InfluenceEstimator,
    attack: AttackMethod,
    *,
    fraction: float = 0.1,
    seed: int = 0,
    rows: torch.Tensor | None = None,
    bounds: Bounds = UNIT_BOX,
    before: Attribution | None = None,
    refit: Refit = same_weights,
    parameters: Sequence[str] | None = None,
) -> Measurement:
    """Definition 3.4 on trained ``model`` (or several checkpoints: scores averaged, the
    attack on their mean loss) with training set (``x``, ``y``) in the model's input space.

    1. Scores on the rows ``rows`` of the training set (default: all; ``before`` if given),
       estimator seed ``seed``; S = their top ``fraction``.
    2. ``attack`` perturbs the points of S inside ``bounds`` at their labels ``y`` (class
       indices or one-hot / ±1 targets).
    3. Scores again on the perturbed rows, with ``refit(model, x_perturbed)`` (default: the
       same weights, attending to the perturbed training set). With the same weights on a
       model that is not :class:`Transductive` (one model, or the estimator's own ensemble),
       an estimator with a ``rescore`` method (NTK-LOO, TRAK) recomputes only the rows that
       changed, from what ``before.reuse`` holds (its kernels or features; recomputed when it
       holds nothing, so the result does not depend on the caller having them).
    """
    return measure_each(model, x, y, x_test, y_test, estimator, [attack], fraction=fraction,
                        seed=seed, rows=rows, bounds=bounds, before=before, refit=refit,
                        parameters=parameters)[0]


def measure_each(
    model: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    estimator: InfluenceEstimator,
    attacks: Sequence[AttackMethod],
    *,
    fraction: float = 0.1,
    seed: int = 0,
    rows: torch.Tensor | None = None,
    bounds: Bounds = UNIT_BOX,
    before: Attribution | None = None,
    refit: Refit = same_weights,
    parameters: Sequence[str] | None = None,
) -> list[Measurement]:
    """:func:`measure` of each of ``attacks`` on the same S from the same scores (e.g. an
    attack and its random control); where :func:`measure` would call the estimator's
    ``rescore``, the perturbed training sets are rescored in one call (NTK-LOO: the unchanged
    points' Jacobians once for all)."""
    models = [model] if isinstance(model, nn.Module) else list(model)
    rows = torch.arange(x.shape[0], device=x.device) if rows is None else rows
    if before is None:
        before = attribute(estimator, models, x[rows], y[rows], x_test, y_test, seed,
                           parameters)
    selected = top_fraction(before.scores, fraction)
    xs_new = [perturb_rows(models, x, y, rows[selected], attack, bounds) for attack in attacks]
    if (refit is same_weights and hasattr(estimator, "rescore")
            and (len(models) == 1 or hasattr(estimator, "ensemble_attribute"))
            and not any(isinstance(m, Transductive) for m in models)):
        afters = estimator.rescore(models, before, x[rows], [x_new[rows] for x_new in xs_new],
                                   y[rows], x_test, y_test, seed=seed, parameters=parameters)
    else:
        afters = [attribute(estimator, [refit(m, x_new) for m in models], x_new[rows], y[rows],
                            x_test, y_test, seed, parameters) for x_new in xs_new]
    out = []
    for attack, x_new, after in zip(attacks, xs_new, afters, strict=True):
        delta = float((x_new - x).abs().amax()) if selected.numel() else 0.0
        settings = {"attack": {"attack": attack.name, **attack.to_dict()},
                    "estimator": {"estimator": estimator.name, **estimator.to_dict()},
                    "fraction": fraction, "seed": seed}
        out.append(compare(before, after, fraction, x_new, delta, settings=settings))
    return out
