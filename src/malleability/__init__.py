"""malleability: can an attention model be in the kernel (NTK) regime, and how far can its
influence scores be trusted? An implementation of arXiv 2603.13085; the formulas and protocol
are in docs/method.md.

Extension points are registries by name: influence estimators (:data:`ESTIMATORS`,
:mod:`malleability.estimators`), attacks (:data:`ATTACKS`, :mod:`malleability.attacks`) and
architectures (:data:`ARCHITECTURES`); :func:`measure` is the one pipeline of Definition 3.4.

Data spaces: pixels x → network inputs z (``TwoLayerNet.inputs``) → hidden-layer inputs h
(``TwoLayerNet.hidden_inputs``) → outputs (``TwoLayerNet.head``). The reproduction machinery
(experiments, presets, runner, report) lives in :mod:`malleability.repro`.
"""

from . import _env  # noqa: F401  (must run before torch is imported)
from ._validation import NonFiniteError
from ._version import __version__ as __version__
from .attacks import (
    ATTACKS,
    Attack,
    AttackMethod,
    AttackSettings,
    fgsm,
    make_attack,
    mim,
    perturb_rows,
    pgd,
    random_sign,
    run_attack,
)
from .attention import AttentionFeatures, AttentionKind, Projection, attention_features
from .auditing import AuditReport, AuditSettings, audit
from .data import (
    Dataset,
    DataSettings,
    DownloadError,
    Preprocessing,
    dataset_status,
    load_dataset,
    preprocess,
)
from .diagnostic import Diagnosis, diagnose
from .estimators import (
    ESTIMATORS,
    Attribution,
    InfluenceEstimator,
    influence_scores,
    make_estimator,
)
from .influence import (
    InfluenceResult,
    InfluenceSettings,
    loo_influence,
    network_influence,
    ntk_influence,
)
from .interventions import Intervention, adversarial_train, intervene
from .jacobian_ntk import jacobian_ntk, last_layers, select_parameters
from .kernel_ridge import KernelRidgeFit, StabilityReport, fit_kernel_ridge, kernel_ridge_predict
from .losses import Loss, accuracy, loss_for_targets, per_example_loss
from .measure import Measurement, measure
from .metrics import flip_rate, spearman, top_fraction, top_k_overlap
from .models import ARCHITECTURE_NAMES, ARCHITECTURES, ModelSettings, TwoLayerNet
from .ntk import autograd_ntk, empirical_ntk, function_distance, infinite_ntk, kernel_distance
from .spectral import (
    ConditionReport,
    SpectrumMethod,
    effective_condition_number,
    mean_pairwise_cosine,
    width_threshold,
)
from .training import TrainHistory, TrainSettings, evaluate, train

__all__ = [
    "ARCHITECTURES",
    "ARCHITECTURE_NAMES",
    "ATTACKS",
    "Attack",
    "AttackMethod",
    "AttackSettings",
    "AttentionFeatures",
    "AttentionKind",
    "Attribution",
    "AuditReport",
    "AuditSettings",
    "ConditionReport",
    "DataSettings",
    "Dataset",
    "Diagnosis",
    "DownloadError",
    "ESTIMATORS",
    "InfluenceEstimator",
    "InfluenceResult",
    "InfluenceSettings",
    "Intervention",
    "KernelRidgeFit",
    "Loss",
    "Measurement",
    "ModelSettings",
    "NonFiniteError",
    "Preprocessing",
    "Projection",
    "SpectrumMethod",
    "StabilityReport",
    "TrainHistory",
    "TrainSettings",
    "TwoLayerNet",
    "accuracy",
    "adversarial_train",
    "attention_features",
    "audit",
    "autograd_ntk",
    "dataset_status",
    "diagnose",
    "effective_condition_number",
    "empirical_ntk",
    "evaluate",
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
    "loss_for_targets",
    "make_attack",
    "make_estimator",
    "mean_pairwise_cosine",
    "measure",
    "mim",
    "network_influence",
    "ntk_influence",
    "per_example_loss",
    "perturb_rows",
    "pgd",
    "preprocess",
    "random_sign",
    "run_attack",
    "select_parameters",
    "spearman",
    "top_fraction",
    "top_k_overlap",
    "train",
    "width_threshold",
]
