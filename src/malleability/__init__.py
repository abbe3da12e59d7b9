"""malleability: can an attention model be in the kernel (NTK) regime, and how far can its
influence scores be trusted? An implementation of arXiv 2603.13085."""

from . import _env  # noqa: F401  (must run before torch is imported)
from .attacks import Attack, fgsm, mim, pgd, run_attack
from .attention import AttentionFeatures, AttentionKind, Projection, attention_features
from .auditing import AuditReport, Interval, audit
from .data import Dataset, DownloadError, dataset_status, load_dataset, preprocess
from .diagnostic import Diagnosis, diagnose
from .estimators import Estimator, influence_scores
from .influence import InfluenceResult, Loss, loo_influence, ntk_influence
from .interventions import Intervention, adversarial_train, intervene
from .jacobian_ntk import jacobian_ntk, last_layers, select_parameters
from .kernel_ridge import KernelRidgeFit, StabilityReport, fit_kernel_ridge, kernel_ridge_predict
from .malleability import (
    AttackSettings,
    MalleabilityResult,
    flip_rate,
    measure_malleability,
    network_influence,
    spearman,
    top_k_overlap,
)
from .models import TwoLayerNet
from .ntk import autograd_ntk, empirical_ntk, function_distance, infinite_ntk, kernel_distance
from .spectral import (
    ConditionReport,
    SpectrumMethod,
    effective_condition_number,
    mean_pairwise_cosine,
    width_threshold,
)
from .training import TrainHistory, TrainSettings, train

__version__ = "0.1.0"

__all__ = [
    "Attack",
    "AttackSettings",
    "AttentionFeatures",
    "AttentionKind",
    "AuditReport",
    "ConditionReport",
    "Dataset",
    "Diagnosis",
    "DownloadError",
    "Estimator",
    "InfluenceResult",
    "Interval",
    "Intervention",
    "KernelRidgeFit",
    "Loss",
    "MalleabilityResult",
    "Projection",
    "SpectrumMethod",
    "StabilityReport",
    "TrainHistory",
    "TrainSettings",
    "TwoLayerNet",
    "adversarial_train",
    "attention_features",
    "audit",
    "autograd_ntk",
    "dataset_status",
    "diagnose",
    "effective_condition_number",
    "empirical_ntk",
    "fgsm",
    "fit_kernel_ridge",
    "flip_rate",
    "function_distance",
    "infinite_ntk",
    "influence_scores",
    "intervene",
    "jacobian_ntk",
    "kernel_distance",
    "kernel_ridge_predict",
    "last_layers",
    "load_dataset",
    "loo_influence",
    "mean_pairwise_cosine",
    "measure_malleability",
    "mim",
    "network_influence",
    "ntk_influence",
    "pgd",
    "preprocess",
    "run_attack",
    "select_parameters",
    "spearman",
    "top_k_overlap",
    "train",
    "width_threshold",
]
