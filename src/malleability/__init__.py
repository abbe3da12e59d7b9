"""malleability: can an attention model be in the kernel (NTK) regime, and how far can its
influence scores be trusted? An implementation of arXiv 2603.13085."""

from .attention import AttentionFeatures, AttentionKind, Projection, attention_features
from .diagnostic import Diagnosis, diagnose
from .influence import InfluenceResult, Loss, loo_influence, ntk_influence
from .kernel_ridge import KernelRidgeFit, StabilityReport, fit_kernel_ridge, kernel_ridge_predict
from .models import TwoLayerNet
from .ntk import autograd_ntk, empirical_ntk, function_distance, infinite_ntk, kernel_distance
from .spectral import (
    ConditionReport,
    SpectrumMethod,
    effective_condition_number,
    mean_pairwise_cosine,
    width_threshold,
)

__version__ = "0.1.0"

__all__ = [
    "AttentionFeatures",
    "AttentionKind",
    "ConditionReport",
    "Diagnosis",
    "InfluenceResult",
    "KernelRidgeFit",
    "Loss",
    "Projection",
    "SpectrumMethod",
    "StabilityReport",
    "TwoLayerNet",
    "attention_features",
    "autograd_ntk",
    "diagnose",
    "effective_condition_number",
    "empirical_ntk",
    "fit_kernel_ridge",
    "function_distance",
    "infinite_ntk",
    "kernel_distance",
    "kernel_ridge_predict",
    "loo_influence",
    "mean_pairwise_cosine",
    "ntk_influence",
    "width_threshold",
]
