"""The field's influence functions through dattri 0.3.0: the score of training point i is
∇L_i · (H + δI)⁻¹ ḡ, ḡ the mean test-loss gradient (the mean over test points t of
∇L_i · (H + δI)⁻¹ ∇L_t), with the Hessian H inverted explicitly, by CG, LiSSA, Arnoldi or
EK-FAC (damping δ = ``damping``, 1e-3 by default). One inverse-Hessian product, of ḡ, serves
every test point: exact for the explicit, Arnoldi and EK-FAC inverses and for LiSSA's
recursion on given draws (all linear in the vector); CG's 10 iterations solve for ḡ itself,
where dattri's ``attribute`` would run them once per test point and average (Koh & Liang's
influence on a test set's loss takes the same single solve).

TracIn, TRAK and DataInf are the package's own on batched per-example gradients
(:mod:`.tracin`, :mod:`.trak`, :mod:`.datainf`; TRAK and DataInf take dattri's formulas).

The loss is the model's training loss (:func:`~malleability.losses.training_loss`):
cross-entropy on logits (C ≥ 2), the logistic loss on one score. dattri builds float32
tensors internally, so these estimators compute in float32; scores are returned as float64.
``seed`` also seeds the global RNG (restored afterwards) that LiSSA and Arnoldi draw from.
dattri's own tqdm bars are off while it runs (:class:`_SilentBars`): the package's bars (and
``--quiet``) decide what a user sees.
"""

from __future__ import annotations

import copy
import functools
import sys
import threading
import warnings
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, ClassVar

import torch
from torch import nn
from torch.nn.attention import SDPBackend, sdpa_kernel

from .._validation import check_positive, check_positive_int, check_seed
from ..estimator_checks import mean_loss_hvp
from ..jacobian_ntk import select_parameters
from ..losses import as_labels, training_loss
from ..settings import setting
from .base import Estimator
from .gradients import flat, per_example_gradients


class _SilentBars:
    """Inside ``with``, every loaded ``dattri.*`` module's ``tqdm`` (bound there by ``from tqdm
    import tqdm``; dattri has no switch of its own) draws nothing; the last exit, counted across
    threads, restores it. Other modules' tqdm is untouched."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._depth = 0
        self._saved: dict[str, Any] = {}

    def __enter__(self) -> None:
        import dattri.algorithm  # noqa: F401  (loads every module that draws a bar)
        from tqdm import tqdm
        with self._lock:
            if self._depth == 0:
                for name, module in list(sys.modules.items()):
                    if name.startswith("dattri.") and getattr(module, "tqdm", None) is tqdm:
                        self._saved[name] = tqdm
                        module.tqdm = functools.partial(tqdm, disable=True)
            self._depth += 1

    def __exit__(self, *exc: object) -> None:
        with self._lock:
            self._depth -= 1
            if self._depth == 0:
                for name, bar in self._saved.items():
                    sys.modules[name].tqdm = bar
                self._saved.clear()


_SILENT_BARS = _SilentBars()


@dataclass(frozen=True)
class DattriEstimator(Estimator):
    """One of dattri's attributors; subclasses name it (``attributor``) and its options."""

    randomized: ClassVar[bool] = False
    dtype: ClassVar[torch.dtype] = torch.float32
    attributor: ClassVar[str] = ""
    damping: float = setting(1e-3, "Damping δ of the Hessian inverse (influence functions).",
                             check_positive)
    chunk: int = setting(256, "Training and test examples whose gradients (Arnoldi: Hessian-"
                         "vector products) are computed at once (memory only).",
                         check_positive_int)

    def options(self, seed: int) -> dict[str, Any]:
        """Keyword arguments of the attributor."""
        return {"regularization": self.damping}

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        """``_attribute`` on a copy of ``model`` (dattri may leave hooks behind), seeded and
        without dattri's bars, its failures and non-finite scores as one-line errors; fused
        attention (``scaled_dot_product_attention``) on its math backend, as Hessian-vector
        products need its double backward and Arnoldi its forward AD, which the fused CPU
        kernels lack."""
        model = copy.deepcopy(model).eval()
        y_train, y_test = as_labels(y_train), as_labels(y_test)
        try:
            with torch.random.fork_rng(devices=[]), _SILENT_BARS, sdpa_kernel([SDPBackend.MATH]):
                torch.manual_seed(seed)
                scores = self._attribute(model, x_train, y_train, x_test, y_test,
                                         parameters, seed).detach()
        except (RuntimeError, UnboundLocalError, TypeError, IndexError) as err:
            raise ValueError(f"estimator: {self.name} failed inside dattri "
                             f"({type(err).__name__}: {str(err).splitlines()[0]})") from err
        if not bool(torch.isfinite(scores).all()):
            raise ValueError(f"estimator: {self.name} returned non-finite scores "
                             f"({self.nonfinite_cause()})")
        return scores

    def nonfinite_cause(self) -> str:
        """Why this estimator's scores can be NaN, for the error message."""
        return "dattri 0.3.0; see docs/audit.md"

    @staticmethod
    def _task(model: nn.Module, x_train: torch.Tensor):
        """dattri's task on ``model``'s training loss (params, batch) → mean at its
        weights."""
        from dattri.task import AttributionTask
        from torch.func import functional_call

        sample_ndim = x_train.ndim - 1

        def loss_fn(params, data):
            x, y = data  # one unbatched sample or a batch
            if x.ndim == sample_ndim:
                x, y = x.unsqueeze(0), y.reshape(1)
            return training_loss(functional_call(model, params, (x,)), y).mean()

        return AttributionTask(loss_func=loss_fn, model=model, checkpoints=model.state_dict())

    @staticmethod
    def _full_batch(x: torch.Tensor, y: torch.Tensor):
        """The training set as one batch: dattri's cache sums one inverse-Hessian product per
        batch of its loader, so only one batch gives the influence function."""
        from torch.utils.data import DataLoader, TensorDataset

        return DataLoader(TensorDataset(x, y), batch_size=x.shape[0], shuffle=False)

    def _inner_products(self, attributor, model, x_train, y_train, x_test,
                        y_test) -> torch.Tensor:
        """dattri's ``BaseInnerProductAttributor.attribute`` at one checkpoint, mean over the
        test points, with one inverse-Hessian product: dattri's transform of the mean test
        gradient ḡ (module docstring), dotted with dattri's transform of each training
        gradient. Per-example gradients come from :func:`~.gradients.per_example_gradients`,
        ``chunk`` rows at a time, flattened in dattri's parameter order: dattri's own (``vmap``
        of ``grad`` in one flat parameter vector) holds a P-vector per parameter tensor per
        example. Under ``no_grad``: dattri's solvers differentiate with torch.func, and plain
        autograd would also record their steps through the parameters (CG's result kept all
        its Hessian-vector product graphs; benchmarks/README.md)."""
        names = attributor.layer_name or select_parameters(model)
        named = dict(model.named_parameters())
        params = {k: named[k].detach() for k in names}

        def flat_gradients(x, y):
            for rows, g in per_example_gradients(model, params, x, y, self.chunk):
                yield flat(g, len(rows))

        with torch.no_grad():
            mean_test = sum(g.sum(0) for g in flat_gradients(x_test, y_test)) / x_test.shape[0]
            solved = attributor.transform_test_rep(0, mean_test[None])[0]
            return torch.cat([attributor.transform_train_rep(0, g) @ solved
                              for g in flat_gradients(x_train, y_train)]).to(torch.float64)

    def _attribute(self, model, x_train, y_train, x_test, y_test, parameters, seed):
        from dattri.algorithm import influence_function as dif
        task = self._task(model, x_train)
        cls = getattr(dif, self.attributor)
        names = None if parameters is None else select_parameters(model, parameters)
        attributor = cls(task, layer_name=names, device=str(x_train.device),
                         **self.options(seed))
        with torch.no_grad():  # torch.func differentiates inside; nothing else needs autograd
            attributor.cache(self._full_batch(x_train, y_train))
        return self._inner_products(attributor, model, x_train, y_train, x_test, y_test)


@dataclass(frozen=True)
class IFExplicit(DattriEstimator):
    """Influence function with the explicit Hessian (IFAttributorExplicit)."""

    name: ClassVar[str] = "if-explicit"
    attributor: ClassVar[str] = "IFAttributorExplicit"

    def check(self, model: nn.Module, x: torch.Tensor,
              parameters: Sequence[str] | None = None) -> None:
        """Refuse a Hessian (P × P, float32) larger than the device's memory."""
        from ..memory import check_memory

        names = set(select_parameters(model, parameters))
        count = sum(p.numel() for k, p in model.named_parameters() if k in names)
        check_memory(4 * count * count, "estimator", f"if-explicit's explicit Hessian of "
                     f"{count} parameters (P × P, float32)", x.device)


@dataclass(frozen=True)
class IFCG(DattriEstimator):
    """Influence function by conjugate gradients, 10 iterations (IFAttributorCG)."""

    name: ClassVar[str] = "if-cg"
    attributor: ClassVar[str] = "IFAttributorCG"

    def options(self, seed: int) -> dict[str, Any]:
        return {"regularization": self.damping, "max_iter": 10}


@dataclass(frozen=True)
class IFLiSSA(DattriEstimator):
    """Influence function by LiSSA, recursion depth 100 (IFAttributorLiSSA); sampled.

    dattri's step is x ← v + (1 − d)x − H_i x / s and its result x / s, whose limit is
    (H + s·d I)⁻¹v: its damping d is relative to the scale. The package passes d = δ / s, so
    that the limit is (H + δI)⁻¹v, the damping δ of the other influence functions."""

    name: ClassVar[str] = "if-lissa"
    randomized: ClassVar[bool] = True
    attributor: ClassVar[str] = "IFAttributorLiSSA"

    scaling: float = setting(50.0, "LiSSA's scale s (dattri's 50): each step is x ← v + x − "
                             "(H_i + δI)x / s on one sampled training point's Hessian H_i, "
                             "which converges only where s > (λmax(H_i) + δ)/2.", check_positive)

    def options(self, seed: int) -> dict[str, Any]:
        return {"damping": self.damping / self.scaling, "recursion_depth": 100,
                "scaling": self.scaling}

    def check_hessian(self, top: float) -> None:
        """Refuse a model whose mean training loss has |λ|max(H) + δ > 2·``scaling``: the
        mean of the recursion then grows as |1 − (λ + δ)/s|^depth > 1 along the top
        eigenvector, so its scores overflow."""
        if top + self.damping > 2 * self.scaling:
            raise ValueError(f"estimator: if-lissa diverges on this model: the training loss's "
                             f"Hessian has |λ|max + δ ≈ {top + self.damping:.3g} > 2·scaling = "
                             f"{2 * self.scaling:g}; set scaling above "
                             f"{(top + self.damping) / 2:.3g}")

    def nonfinite_cause(self) -> str:
        return (f"LiSSA's recursion diverges once a sampled training point's Hessian has an "
                f"eigenvalue above 2·scaling = {2 * self.scaling:g}; raise scaling above half "
                f"of the largest (benchmarks/dattri_chunks.py --lissa-hessians measures them)")


@dataclass(frozen=True)
class IFArnoldi(DattriEstimator):
    """Influence function on the top ``proj_dim`` eigenpairs (λ_j, v_j) of H + δI by |λ|,
    from dattri's Arnoldi iteration (random start): score_i = Σ_j (v_j·∇L_i)(v_j·ḡ)/λ_j; H
    is the mean training loss's Hessian over all n points, or over ``hessian_points`` of them
    (:func:`hessian_sample`: each iteration then costs that many points' products, not n).

    dattri's own projector scales both sides by 1/√λ_j, which is NaN for a negative λ_j (a
    model not at a minimum; tests/test_dattri_arnoldi.py); dividing one side by λ_j is the
    same number wherever that is defined, and the restricted influence function elsewhere."""

    name: ClassVar[str] = "if-arnoldi"
    randomized: ClassVar[bool] = True
    proj_dim: int = setting(100, "Eigenpairs Arnoldi keeps (dattri's 100); below the number "
                            "of parameters.", check_positive_int)
    iterations: int = setting(100, "Arnoldi iterations (dattri's max_iter, 100): Hessian-vector "
                              "products on the Hessian's training points; at least proj_dim.",
                              check_positive_int)
    hessian_points: int = setting(0, "Training points H is averaged over: 0 = all n, else a "
                                  "uniform sample of that many drawn with the estimator's "
                                  "seed (the gradients are all n's).", check_seed)

    def check(self, model: nn.Module, x: torch.Tensor,
              parameters: Sequence[str] | None = None) -> None:
        names = select_parameters(model, parameters)
        count = sum(p.numel() for k, p in model.named_parameters() if k in names)
        if self.proj_dim >= count:
            raise ValueError(f"proj_dim: if-arnoldi keeps {self.proj_dim} eigenpairs of a "
                             f"Hessian of {count} parameters, where Arnoldi meets spurious "
                             f"Ritz values; use fewer than {count}")
        if self.iterations < self.proj_dim:
            raise ValueError(f"iterations: if-arnoldi needs at least proj_dim = "
                             f"{self.proj_dim} iterations for {self.proj_dim} eigenpairs, "
                             f"got {self.iterations}")
        hessian_sample(x.shape[0], self.hessian_points, 0)  # hessian_points ≤ n

    def nonfinite_cause(self) -> str:
        return ("an eigenvalue of H + δI among the top proj_dim is zero to float32 precision; "
                "raise damping")

    def _attribute(self, model, x_train, y_train, x_test, y_test, parameters, seed):
        from dattri.func.projection import ArnoldiProjector

        names = select_parameters(model, parameters)
        named = dict(model.named_parameters())
        params = [named[k] for k in names]
        rows = hessian_sample(x_train.shape[0], self.hessian_points, seed).to(x_train.device)
        product = mean_loss_hvp(model, x_train[rows], y_train[rows], params, self.chunk)

        def damped(v: torch.Tensor) -> torch.Tensor:  # (H + δI)v on the flat vector
            parts = product([t.reshape(p.shape) for t, p in
                             zip(v.split([p.numel() for p in params]), params, strict=True)])
            return torch.cat([h.reshape(-1) for h in parts]) + self.damping * v

        point = torch.cat([p.detach().reshape(-1) for p in params])
        with torch.no_grad(), warnings.catch_warnings():
            # its "adjusting proj_dim" on negative eigenvalues concerns its own 1/√λ only
            warnings.filterwarnings("ignore", "Encountered many negative eigenvalues")
            projector = ArnoldiProjector(len(point), self.proj_dim, None, point,
                                         max_iter=self.iterations, seed=seed,
                                         device=str(x_train.device))
            projector.hvp_at_x_func = damped  # the package's chunked product, not dattri's
            projector.get_eigenspace()
        return self._inner_products(_Eigenspace(names, projector.eigvals, projector.eigvecs),
                                    model, x_train, y_train, x_test, y_test)


def hessian_sample(n: int, points: int, seed: int) -> torch.Tensor:
    """The training rows whose mean loss's Hessian Arnoldi factors: all n when ``points`` is
    0 or n, else ``points`` of them uniformly without replacement, seeded (dattri's
    attributor has ``precompute_data_ratio``: the first batches of its loader)."""
    if points > n:
        raise ValueError(f"hessian_points: expected at most n = {n} training points (0 for "
                         f"all), got {points}")
    if points in (0, n):
        return torch.arange(n)
    return torch.randperm(n, generator=torch.Generator().manual_seed(seed))[:points].sort().values


@dataclass(frozen=True)
class _Eigenspace:
    """dattri's attributor transforms for the top-k influence function: training gradients
    onto the eigenvectors V (k × P), the test gradient onto them divided by the eigenvalues."""

    layer_name: list[str] | None
    eigvals: torch.Tensor
    eigvecs: torch.Tensor

    def transform_train_rep(self, ckpt_idx: int, rep: torch.Tensor) -> torch.Tensor:
        return rep @ self.eigvecs.T

    def transform_test_rep(self, ckpt_idx: int, rep: torch.Tensor) -> torch.Tensor:
        return rep @ self.eigvecs.T / self.eigvals


@dataclass(frozen=True)
class IFEKFAC(DattriEstimator):
    """Influence function with the EK-FAC Hessian (IFAttributorEKFAC); ``parameters`` name
    modules."""

    name: ClassVar[str] = "if-ekfac"
    attributor: ClassVar[str] = "IFAttributorEKFAC"

    def options(self, seed: int) -> dict[str, Any]:
        return {"damping": self.damping}  # dattri's EK-FAC names its damping so

    def check(self, model: nn.Module, x: torch.Tensor,
              parameters: Sequence[str] | None = None) -> None:
        """dattri 0.3.0's EK-FAC takes 2-d activations only (``UnboundLocalError: a_prev``
        on token activations): refuse a model whose Linear modules see more dimensions."""
        seen: list[tuple[str, tuple[int, ...]]] = []
        hooks = [m.register_forward_pre_hook(
            lambda _m, args, name=name: seen.append((name, tuple(args[0].shape))))
            for name, m in model.named_modules() if isinstance(m, nn.Linear)]
        try:
            with torch.no_grad():
                model(x[:1])
        finally:
            for hook in hooks:
                hook.remove()
        deep = next(((n, s) for n, s in seen if len(s) > 2), None)
        if deep is not None:
            raise ValueError(f"estimator: if-ekfac (dattri) handles 2-d activations only, and "
                             f"{deep[0]!r} gets {deep[1]} (tokens); use 'ekfac' (kronfluence)")

    def _attribute(self, model, x_train, y_train, x_test, y_test, parameters, seed):
        from dattri.algorithm import influence_function as dif
        task = self._task(model, x_train)
        attributor = dif.IFAttributorEKFAC(
            task, module_name=None if parameters is None else list(parameters),
            device=str(x_train.device), **self.options(seed))
        attributor.cache(self._full_batch(x_train, y_train))
        return self._inner_products(attributor, model, x_train, y_train, x_test, y_test)


#: dattri's estimators, in the order the audit lists them.
DATTRI_ESTIMATORS = (IFExplicit, IFCG, IFLiSSA, IFEKFAC, IFArnoldi)
