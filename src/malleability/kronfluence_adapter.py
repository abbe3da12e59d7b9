"""Influence functions with kronfluence's K-FAC and EK-FAC (Grosse et al. 2023, arXiv 2308.03296).

    I_i = mean over test points t of ∇L_t · (G + λI)⁻¹ ∇L_i,

with L the training loss (cross-entropy on the logits, the logistic loss on one score:
``losses.training_loss``) and G kronfluence's block-diagonal approximation of the Fisher
(the Gauss-Newton Hessian of the mean training loss) over the tracked ``nn.Linear`` and
``nn.Conv2d`` modules:

- ``identity``: no preconditioning, the gradient dot product ∇L_t · ∇L_i (λ unused);
- ``diagonal``: the Fisher's diagonal;
- ``kfac``: G = A ⊗ S per module, A the mean outer product of the module's inputs (one per
  token for 3-d activations), S that of the gradients at its outputs (Martens & Grosse 2015);
- ``ekfac``: K-FAC's eigenbasis with the Fisher's exact diagonal in it (George et al. 2018).

Sign: kronfluence's score is ∇L_t · (G + λI)⁻¹ ∇L_i, and removing training point i moves θ by
about +(G + λI)⁻¹ ∇L_i / n, raising the test loss by the score / n. So I_i > 0 when point i helps
the test predictions (the convention of ``estimators``, and dattri's). λ is added to G's
eigenvalues, in absolute units (None: kronfluence's 0.1 × their mean). The Fisher is the
true one (labels drawn from the model, seeded) or, with ``empirical_fisher``, the empirical one
(the training labels). Factors and scores are computed in float64, on the CPU, in a temporary
folder that is removed.
"""

from __future__ import annotations

import copy
import gc
import logging
import tempfile
import warnings
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from enum import StrEnum
from typing import Any

import torch
from kronfluence.analyzer import Analyzer, prepare_model
from kronfluence.arguments import FactorArguments, ScoreArguments
from kronfluence.task import Task
from torch import nn
from torch.nn import functional as F
from torch.utils.data import TensorDataset

from ._validation import (
    check_positive,
    check_positive_int,
    check_rows_match,
    check_seed,
    parse_enum,
)
from .losses import training_loss
from .model_outputs import check_labels, logit_count, logits_of


class Strategy(StrEnum):
    """kronfluence's Fisher approximations, by name."""

    IDENTITY = "identity"
    DIAGONAL = "diagonal"
    KFAC = "kfac"
    EKFAC = "ekfac"


TRACKED = (nn.Linear, nn.Conv2d)  # the module types kronfluence can track


def tracked_modules(model: nn.Module, modules: Sequence[str] | None) -> list[str]:
    """The names of the modules kronfluence tracks: ``modules`` (each must name an
    ``nn.Linear`` or ``nn.Conv2d`` of ``model``) or, for None, all of them."""
    found = {name: m for name, m in model.named_modules() if isinstance(m, TRACKED)}
    if modules is None:
        if not found:
            raise ValueError(f"model: kronfluence tracks nn.Linear and nn.Conv2d modules, and "
                             f"{type(model).__name__} has none")
        return list(found)
    names = [modules] if isinstance(modules, str) else list(modules)
    if not names:
        raise ValueError("modules: expected at least one module name (None: every nn.Linear "
                         "and nn.Conv2d)")
    everything = dict(model.named_modules())
    for name in names:
        if name not in everything:
            raise ValueError(f"modules: {name!r} names no submodule of {type(model).__name__}")
        if name not in found:
            raise ValueError(f"modules: {name!r} is a {type(everything[name]).__name__}; "
                             "kronfluence tracks only nn.Linear and nn.Conv2d")
    return names


def called_modules(model: nn.Module, names: list[str], x: torch.Tensor, named: bool
                   ) -> list[str]:
    """Those of ``names`` that ``model``'s forward on ``x`` calls (kronfluence fails on a
    tracked module it never sees); one the user ``named`` that is not called is a ValueError."""
    seen: set[str] = set()
    handles = [model.get_submodule(n).register_forward_hook(
        lambda *_, n=n: seen.add(n)) for n in names]
    try:
        with torch.no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    unused = [n for n in names if n not in seen]
    if named and unused:
        raise ValueError(f"modules: {unused[0]!r} is not called by {type(model).__name__}'s "
                         "forward")
    if len(unused) == len(names):
        raise ValueError(f"model: {type(model).__name__}'s forward calls none of its nn.Linear "
                         "and nn.Conv2d modules")
    return [n for n in names if n in seen]


def kronfluence_scores(
    model: nn.Module,
    x_train: torch.Tensor,
    y_train: torch.Tensor,
    x_test: torch.Tensor,
    y_test: torch.Tensor,
    *,
    strategy: Strategy | str = Strategy.EKFAC,
    modules: Sequence[str] | None = None,
    damping: float | None = 1e-3,
    empirical_fisher: bool = False,
    batch_size: int = 128,
    seed: int = 0,
) -> torch.Tensor:
    """Per-training-point influence scores (n_train,), float64, of kronfluence's ``strategy``.

    ``y`` are class indices (0/1 for one output); the model's output may be anything
    :func:`~malleability.model_outputs.logits_of` reads. ``modules`` names the tracked modules
    (default: every ``nn.Linear`` and ``nn.Conv2d``). ``batch_size`` bounds the examples whose
    per-example gradients are held at once (memory, not the result). ``seed`` draws the true
    Fisher's labels. The caller's model is left untouched (kronfluence wraps a deep copy).
    """
    strategy = parse_enum(strategy, Strategy, "strategy")
    if damping is not None:
        damping = check_positive(damping, "damping")
    batch_size = check_positive_int(batch_size, "batch_size")
    seed = check_seed(seed)
    check_rows_match(x_train, y_train, "x_train", "y_train")
    check_rows_match(x_test, y_test, "x_test", "y_test")
    for t, name in ((x_train, "x_train"), (x_test, "x_test")):
        if t.shape[0] == 0:
            raise ValueError(f"{name}: expected at least one row")
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise ValueError(f"{name}: contains NaN or infinite values")
    outputs = logit_count(model, x_train)
    check_labels(y_train, outputs, "y_train")
    check_labels(y_test, outputs, "y_test")
    names = called_modules(model, tracked_modules(model, modules), x_train[:1],
                           modules is not None)
    model = copy.deepcopy(model).eval()
    if isinstance(model, TRACKED):  # kronfluence cannot wrap the root: give it a parent
        model, names = nn.Sequential(model), ["0"]
    task = _ClassificationTask(names)
    model = prepare_model(model, task)
    f64 = torch.float64
    factor_args = FactorArguments(
        strategy=strategy.value, use_empirical_fisher=empirical_fisher,
        activation_covariance_dtype=f64, gradient_covariance_dtype=f64,
        eigendecomposition_dtype=f64, per_sample_gradient_dtype=f64, lambda_dtype=f64)
    score_args = ScoreArguments(damping_factor=damping, per_sample_gradient_dtype=f64,
                                precondition_dtype=f64, score_dtype=f64)
    train, test = TensorDataset(x_train, y_train), TensorDataset(x_test, y_test)
    with tempfile.TemporaryDirectory(prefix="kronfluence-") as folder, \
            torch.random.fork_rng(devices=[]), _frozen_heap():
        torch.manual_seed(seed)
        analyzer = Analyzer("audit", model, task, cpu=True, disable_tqdm=True,
                            log_level=logging.WARNING, output_dir=folder)
        analyzer.fit_all_factors("factors", train, per_device_batch_size=batch_size,
                                 factor_args=factor_args)
        analyzer.compute_pairwise_scores("scores", "factors", test, train,
                                         per_device_query_batch_size=batch_size,
                                         per_device_train_batch_size=batch_size,
                                         score_args=score_args)
        scores = analyzer.load_pairwise_scores("scores")["all_modules"]
    return scores.to(f64).mean(0)


class _ClassificationTask(Task):
    """kronfluence's task for a classifier: the summed training loss, with labels drawn from the
    model for the true Fisher (``sample``), and the summed test loss as the measurement."""

    def __init__(self, modules: list[str]):
        self.modules = modules

    def compute_train_loss(self, batch: Any, model: nn.Module,
                           sample: bool = False) -> torch.Tensor:
        x, y = batch
        logits = logits_of(model(x))
        if sample:
            y = _sample_labels(logits.detach())
        return training_loss(logits, y).sum()

    def compute_measurement(self, batch: Any, model: nn.Module) -> torch.Tensor:
        x, y = batch
        return training_loss(logits_of(model(x)), y).sum()

    def get_influence_tracked_modules(self) -> list[str]:
        return self.modules


@contextmanager
def _frozen_heap() -> Iterator[None]:
    """Exempt the objects alive now from the garbage collector while kronfluence runs (it calls
    ``gc.collect()`` after every step, about 1 s each once transformers is loaded), and silence
    its deprecation warnings about CUDA's GradScaler, which it builds disabled on the CPU."""
    gc.freeze()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", category=FutureWarning, module="kronfluence")
            yield
    finally:
        gc.unfreeze()


def _sample_labels(logits: torch.Tensor) -> torch.Tensor:
    """Labels drawn from the model's predictive distribution (softmax, or sigmoid for one
    score), from the global RNG (seeded by the caller)."""
    if logits.ndim == 2 and logits.shape[1] >= 2:
        return torch.multinomial(F.softmax(logits, dim=-1), 1).flatten()
    return torch.bernoulli(torch.sigmoid(logits.reshape(-1)))
