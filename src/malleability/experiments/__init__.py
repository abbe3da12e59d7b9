"""Experiments for every table and figure of the paper. Each module defines a settings
dataclass (``SETTINGS``), ``cells(settings)`` (the independent units of work) and
``run(settings, cell, ctx)`` → a JSON-ready dict; they compose library functions only."""

from types import ModuleType

from . import (
    adversarial_training,
    collapse,
    complexity,
    data_interventions,
    flip_rates,
    influential,
    loss_landscape,
    ntk_distance,
    spectrum,
)
from .common import DataSettings, ModelSettings, RunContext

#: Experiments by name, in the order a run executes them.
EXPERIMENTS: dict[str, ModuleType] = {
    "spectrum": spectrum,
    "collapse": collapse,
    "flip_rates": flip_rates,
    "ntk_distance": ntk_distance,
    "adversarial_training": adversarial_training,
    "interventions": data_interventions,
    "complexity": complexity,
    "landscape": loss_landscape,
    "influential": influential,
}

__all__ = ["EXPERIMENTS", "DataSettings", "ModelSettings", "RunContext"]
