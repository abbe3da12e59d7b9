"""Influence estimators by name: the registry :data:`ESTIMATORS` (docs/method.md §5).

Every estimator is a frozen settings dataclass meeting :class:`InfluenceEstimator`
(``name``, ``randomized``, ``dtype``, ``scores(model, x_train, y_train, x_test, y_test, *,
seed, parameters)`` → (n_train,) float64); :func:`make_estimator` builds one by name. Adding
an estimator is one module defining its class (subclass :class:`Estimator`), plus its entry
in :data:`ESTIMATORS`; ``audit``, the CLI and the reproduction take it from here.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from typing import Any

import torch
from torch import nn

from .base import Attribution, Estimator, InfluenceEstimator
from .datainf import IFDataInf
from .dattri import DATTRI_ESTIMATORS, DattriEstimator
from .kronfluence import KRONFLUENCE_ESTIMATORS, KronfluenceEstimator
from .logra import LoGra
from .ntk_loo import NTKLOO
from .tracin import TracIn
from .trak import TRAK

#: Every estimator class by its name.
ESTIMATORS: dict[str, type] = {cls.name: cls for cls in (NTKLOO, TracIn, TRAK, IFDataInf,
                                                  *DATTRI_ESTIMATORS,
                                                  *KRONFLUENCE_ESTIMATORS, LoGra)}


def parse_estimator(spec: str, name: str = "estimator") -> tuple[str, dict[str, int | float]]:
    """``NAME`` or ``NAME[key=value,...]`` (e.g. ``if-arnoldi[hessian_points=150,proj_dim=50]``)
    → the registry name and its settings, each value read as its field's type (an integer
    field takes an integer); an unknown name or setting is a one-line error naming ``name``."""
    text = str(spec)
    base, bracket, rest = text.partition("[")
    if base not in ESTIMATORS or (bracket and not rest.endswith("]")):
        form = "NAME or NAME[key=value,...] with NAME " if bracket else ""
        raise ValueError(f"{name}: expected {form}one of {', '.join(ESTIMATORS)}, got {spec!r}")
    fields = {f.name: str(f.type) for f in dataclasses.fields(ESTIMATORS[base])}
    settings: dict[str, int | float] = {}
    for item in filter(str.strip, rest[:-1].split(",") if bracket else ()):
        key, equals, value = (part.strip() for part in item.partition("="))
        if key not in fields or not equals:
            raise ValueError(f"{name}: expected key=value with key one of "
                             f"{', '.join(sorted(fields))} ({base}'s settings), got {item!r} "
                             f"in {spec!r}")
        integer = "float" not in fields[key]
        try:
            settings[key] = int(value) if integer else float(value)
        except ValueError:
            raise ValueError(f"{name}: {key} of {base} expects "
                             f"{'an integer' if integer else 'a number'}, got {value!r} in "
                             f"{spec!r}") from None
    return base, settings


def check_estimator(value: Any, name: str) -> str:
    """The registry name of an estimator: of an instance, or of a name with optional
    settings (:func:`parse_estimator`)."""
    if isinstance(value, Estimator):
        return value.name
    return parse_estimator(value, name)[0]


#: Settings every estimator is offered (the audit passes both); one without it ignores it.
SHARED_SETTINGS = ("ridge", "damping")


def make_estimator(estimator: str | Estimator, **settings: Any) -> InfluenceEstimator:
    """The estimator named ``estimator`` (with settings in brackets, :func:`parse_estimator`,
    which take precedence) with ``settings``: ``ridge`` and ``damping`` are ignored where its
    class has none (NTK-LOO has a ridge, the influence functions a damping); any other
    setting it lacks is a one-line error (a misspelt setting would otherwise be silently
    dropped). An estimator instance is returned as it is (its own settings kept)."""
    if isinstance(estimator, Estimator):
        return estimator
    name, given = parse_estimator(estimator, "estimator")
    cls, settings = ESTIMATORS[name], {**settings, **given}
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(settings) - known - set(SHARED_SETTINGS))
    if unknown:
        raise ValueError(f"{unknown[0]}: {cls.name} has no such setting; expected one of "
                         f"{', '.join(sorted(known))}")
    return cls(**{k: v for k, v in settings.items() if k in known})


def influence_scores(model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                     x_test: torch.Tensor, y_test: torch.Tensor, estimator: str = NTKLOO.name,
                     *, parameters: Sequence[str] | None = None, seed: int = 0,
                     **settings: Any) -> torch.Tensor:
    """Per-training-point scores (n_train,) of the estimator named ``estimator`` (with
    ``settings``, e.g. ``ridge`` or ``damping``) on ``model``."""
    return make_estimator(estimator, **settings).scores(
        model, x_train, y_train, x_test, y_test, seed=seed, parameters=parameters)


__all__ = [
    "ESTIMATORS",
    "NTKLOO",
    "TRAK",
    "Attribution",
    "DattriEstimator",
    "Estimator",
    "InfluenceEstimator",
    "KronfluenceEstimator",
    "check_estimator",
    "parse_estimator",
    "influence_scores",
    "make_estimator",
]
