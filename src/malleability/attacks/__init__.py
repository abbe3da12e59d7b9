"""ℓ∞ attacks by name (docs/method.md §6): the registry :data:`ATTACKS`, one module per attack.

Every attack is a settings dataclass meeting :class:`AttackMethod` (``name``, ``eps``,
``perturb(loss_fn, x, y, bounds)``); :func:`make_attack` builds one by name. Adding an attack
is one module defining its function and settings class, plus its entry in :data:`ATTACKS`;
the presets, the reproduction, ``audit`` and the CLI take it from here.
:class:`AttackSettings` is the shared table of a preset or command (every attack's settings
in one place) and names the attack to run.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from .._validation import check_nonnegative, check_positive, check_positive_int, check_seed
from ..settings import Settings, setting
from .base import (
    UNIT_BOX,
    Attack,
    AttackLoss,
    AttackMethod,
    Bounds,
    LossFn,
    check_eps,
    margin_loss,
    model_loss,
    perturb_rows,
)
from .fgsm import FGSM, fgsm
from .mim import MIM, mim
from .pgd import PGD, pgd, worst_case
from .random_sign import RandomSign, random_sign
from .square import Square, square

#: Every attack by its name.
ATTACKS: dict[str, type] = {cls.name: cls for cls in (FGSM, PGD, MIM, RandomSign, Square)}


def check_attack(value: Any, name: str) -> str:
    """The registry name of an attack (any case)."""
    key = value.lower() if isinstance(value, str) else value
    if key not in ATTACKS:
        raise ValueError(f"{name}: expected one of {', '.join(ATTACKS)}, got {value!r}")
    return str(key)


def make_attack(attack: str, **settings: Any) -> AttackMethod:
    """The attack named ``attack`` with those of ``settings`` its class has (the others are
    ignored: FGSM has no step size, random-sign no loss)."""
    cls = ATTACKS[check_attack(attack, "attack")]
    known = {f.name for f in dataclasses.fields(cls)}
    return cls(**{k: v for k, v in settings.items() if k in known})


def run_attack(attack: str, loss_fn: LossFn, x: Any, y: Any, eps: float,
               bounds: Bounds = UNIT_BOX, **settings: Any) -> torch.Tensor:
    """The attack named ``attack`` (any case) at budget ``eps``; ``settings`` as in
    :func:`make_attack`."""
    return make_attack(attack, eps=eps, **settings).perturb(loss_fn, x, y, bounds)


@dataclass(frozen=True)
class AttackSettings(Settings):
    """An ℓ∞ attack in [0,1] pixel space and the settings of every attack; defaults are the
    paper's (ε = 0.3, 40 × 0.01, μ = 1). Each attack uses the settings it has."""

    attack: str = setting(Attack.PGD.value, f"Attack: {', '.join(ATTACKS)}.", check_attack,
                          cli=False)
    eps: float = setting(0.3, "ℓ∞ budget ε in [0,1] pixel units (paper: 0.3).", check_eps)
    alpha: float = setting(0.01, "PGD/MIM step size α (paper: 0.01).", check_positive)
    steps: int = setting(40, "PGD/MIM steps (paper: 40).", check_positive_int)
    momentum: float = setting(1.0, "MIM momentum μ (paper: 1.0).", check_nonnegative)
    seed: int = setting(0, "Seed of PGD's random start (and of random-sign's signs).",
                        check_seed)
    loss: AttackLoss = setting(AttackLoss.TARGET, "Loss maximised against a model: target "
                               "(the training loss) or margin (Carlini & Wagner).")
    restarts: int = setting(1, "PGD random restarts; the worst case per point is kept "
                                 "(FGSM and MIM are deterministic and ignore it).",
                            check_positive_int)

    def method(self) -> AttackMethod:
        """The attack these settings name, with its settings."""
        return make_attack(self.attack, **{k: v for k, v in self.to_dict().items()
                                           if k != "attack"})

    def perturb(self, loss_fn: LossFn, x: torch.Tensor, y: Any,
                bounds: Bounds = UNIT_BOX) -> torch.Tensor:
        return self.method().perturb(loss_fn, x, y, bounds)

    def model_loss(self, model: nn.Module) -> LossFn:
        """``loss_fn(x, y)`` of this attack against ``model``."""
        return model_loss(model, self.loss)


__all__ = [
    "ATTACKS",
    "FGSM",
    "MIM",
    "PGD",
    "UNIT_BOX",
    "Attack",
    "AttackLoss",
    "AttackMethod",
    "AttackSettings",
    "Bounds",
    "LossFn",
    "RandomSign",
    "Square",
    "check_attack",
    "check_eps",
    "fgsm",
    "make_attack",
    "margin_loss",
    "mim",
    "model_loss",
    "perturb_rows",
    "pgd",
    "random_sign",
    "run_attack",
    "square",
    "worst_case",
]
