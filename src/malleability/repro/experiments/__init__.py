"""Experiments for every table and figure of the paper, one module each (see
:class:`.base.Experiment` for what a module holds). Registry keys are the module names."""

from types import ModuleType

from . import (
    adversarial_interventions,
    adversarial_training,
    collapse,
    complexity,
    flip_controls,
    flip_dynamics,
    flip_rates,
    influential,
    intervention_dynamics,
    interventions,
    kappa_mechanism,
    landscape,
    ntk_distance,
    ntk_distance_gd,
    ntk_distance_variants,
    qkv_projections,
    robust_evaluation,
    sensitivity,
    softmax_temperature,
    spectrum,
    theory,
    width_sensitivity,
)

#: Experiments by name, in the order a run executes them.
EXPERIMENTS: dict[str, ModuleType] = {
    module.__name__.rsplit(".", 1)[1]: module
    for module in (spectrum, kappa_mechanism, collapse, flip_rates, flip_controls, ntk_distance,
                   ntk_distance_gd, ntk_distance_variants, qkv_projections, softmax_temperature,
                   adversarial_training, robust_evaluation, interventions, complexity, landscape,
                   influential, theory, sensitivity, width_sensitivity, adversarial_interventions,
                   intervention_dynamics, flip_dynamics)
}

__all__ = ["EXPERIMENTS"]
