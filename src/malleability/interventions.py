"""Data interventions (Table 5) and adversarial training (Table 3), §5.4.

From a trained baseline and its influence scores, S = the top 10% most helpful points:
- Curated: drop S and retrain;
- Transformed: replace S by its PGD versions and retrain;
- Adversarial: replace every training point by its PGD version and retrain.
Each retrained network starts from the baseline's initialisation (same seed); for MLP-Attn its
reference set is the new training set. Reported: test accuracy by epoch and the malleability
metrics between the baseline's scores and the retrained network's scores on the points both
training sets hold. Adversarial training replaces every batch by PGD examples against the
current weights, with ε ramped up from 0 over the first epochs.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum

import torch

from ._validation import parse_enum
from .attacks import AttackSettings, LossFn, perturb_rows
from .estimators import NTKLOO, Attribution
from .influence import InfluenceSettings
from .measure import Measurement, compare
from .metrics import top_fraction
from .models import TwoLayerNet
from .training import Adversary, TrainHistory, TrainSettings, train


class Intervention(StrEnum):
    """The training-set interventions of Table 5."""

    CURATED = "curated"
    TRANSFORMED = "transformed"
    ADVERSARIAL = "adversarial"


def report_epochs(epochs: int) -> list[int]:
    """1, 10, 100, … up to ``epochs``, and ``epochs`` itself."""
    marks, e = [], 1
    while e < epochs:
        marks.append(e)
        e *= 10
    return [*marks, epochs]


@dataclass
class InterventionResult:
    """Accuracy by epoch of the retrained network and its malleability against the baseline;
    the retrained ``model``, the points it is scored on (``x_scored``, ``y_scored``: the
    influence-set points the new training set holds) and their positions ``held`` among the
    baseline's scored rows."""

    intervention: Intervention
    history: TrainHistory
    malleability: Measurement
    n_train: int
    model: TwoLayerNet
    x_scored: torch.Tensor
    y_scored: torch.Tensor
    held: torch.Tensor

    def accuracy_by_epoch(self) -> dict[int, float]:
        acc = self.history.test_accuracy
        return {e: acc[e - 1] for e in report_epochs(len(acc))} if acc else {}

    def summary(self) -> dict:
        return {"intervention": self.intervention.value, "n_train": self.n_train,
                "accuracy_by_epoch": self.accuracy_by_epoch(),
                "history": self.history.to_dict(), **self.malleability.summary()}


def intervene(
    intervention: Intervention | str,
    model: TwoLayerNet,
    x: torch.Tensor,
    y: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    train_settings: TrainSettings,
    attack: AttackSettings = AttackSettings(),
    influence: InfluenceSettings = InfluenceSettings(),
    baseline: Attribution | None = None,
    subset: torch.Tensor | None = None,
    adversary: Adversary | None = None,
) -> InterventionResult:
    """Apply ``intervention`` to the training set (``x``, ``y``, in the model's input space)
    of the trained ``model`` and retrain on the whole (intervened) set, adversarially with
    ``adversary`` (:class:`RampedAdversary`).

    Influence is computed on the training rows ``subset`` (the influence set; default all) and
    S is the top fraction of them; ``baseline`` (if given) is the NTK-LOO attribution on those
    rows.
    The flip rate compares the scores of the influence-set points the new training set still
    holds."""
    intervention = parse_enum(intervention, Intervention, "intervention")
    fraction, estimator = influence.fraction, NTKLOO(influence.ridge)
    n = x.shape[0]
    rows = torch.arange(n, device=x.device) if subset is None else subset.to(x.device)
    if baseline is None:
        baseline = estimator.attribute(model, x[rows], y[rows], x_test, y_test)
    selected = rows[top_fraction(baseline.scores, fraction)]  # S, as training rows
    kept = torch.arange(n, device=x.device)
    if intervention is Intervention.CURATED:
        kept = kept[~torch.isin(kept, selected)]
        x_new = x[kept]
    elif intervention is Intervention.TRANSFORMED:
        x_new = perturb_rows(model, x, y, selected, attack.method())
    else:
        x_new = perturb_rows(model, x, y, kept, attack.method())
    y_new = y[kept]
    # influence-set points the new set holds: their positions in the subset and in the new set
    position = torch.full((n,), -1, dtype=torch.long, device=x.device)
    position[kept] = torch.arange(kept.numel(), device=x.device)
    held = (position[rows] >= 0).nonzero().flatten()
    rows_new = position[rows[held]]
    new_model = model.reinitialized_on(x_new)
    history = train(new_model, x_new, y_new, train_settings, x_test, y_test, adversary)
    x_scored, y_scored = x_new[rows_new], y_new[rows_new]
    after = estimator.attribute(new_model, x_scored, y_scored, x_test, y_test)
    result = compare(baseline, after, fraction, x_new, float((x_new - x[kept]).abs().amax()),
                     kept=held, settings={"intervention": intervention.value,
                                          "attack": attack.to_dict(), "fraction": fraction,
                                          "ridge": influence.ridge,
                                          "train": train_settings.to_dict()})
    return InterventionResult(intervention, history, result, int(kept.numel()), new_model,
                              x_scored, y_scored, held)


def ramped_eps(eps: float, epoch: int, ramp_epochs: int) -> float:
    """ε_e = ε · min(1, e / ramp_epochs) at epoch e = 1, 2, … (ε throughout when
    ``ramp_epochs`` = 0): a linear ramp from 0 that reaches ε at epoch ``ramp_epochs``."""
    if ramp_epochs <= 0 or epoch >= ramp_epochs:
        return eps
    return eps * epoch / ramp_epochs


def adversarial_train(
    model: TwoLayerNet,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    attack: AttackSettings = AttackSettings(),
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    ramp_epochs: int = 0,
) -> TrainHistory:
    """PGD adversarial training (Madry et al. 2018): every batch is replaced by ``attack``
    examples against the current weights, in the space of ``x``, at the ε of
    :class:`RampedAdversary`."""
    if isinstance(ramp_epochs, bool) or not isinstance(ramp_epochs, int) \
            or not 0 <= ramp_epochs <= settings.epochs:
        raise ValueError(f"ramp_epochs: expected an integer in 0..{settings.epochs} (the "
                         f"training epochs), got {ramp_epochs!r}")
    return train(model, x, y, settings, x_test, y_test,
                 adversary=RampedAdversary(attack, ramp_epochs))


@dataclass(frozen=True)
class RampedAdversary:
    """The adversary of PGD adversarial training: at epoch e, ``attack`` at
    ε_e = :func:`ramped_eps` (``attack.eps``, e, ``ramp_epochs``) with step α·ε_e/ε, so the
    number of steps to cross the ball is kept. A dataclass, so that a killed training with it
    can be resumed (:func:`~.training.resumable_adversary`)."""

    attack: AttackSettings
    ramp_epochs: int

    def __call__(self, loss_fn: LossFn, xb: torch.Tensor, yb: torch.Tensor,
                 epoch: int) -> torch.Tensor:
        eps = ramped_eps(self.attack.eps, epoch, self.ramp_epochs)
        scale = eps / self.attack.eps if self.attack.eps > 0 else 1.0
        return self.attack.replace(eps=eps, alpha=self.attack.alpha * scale).perturb(
            loss_fn, xb, yb)
