"""TRAK (Park et al. 2023, §3) on the package's batched per-example gradients, with dattri
0.3.0's projection and formula (TRAKAttributor), in bounded memory.

For checkpoints k = 1..K (one: the model) with parameters θ_k, g_i,k = ∇L(x_i, y_i; θ_k) over
the selected ``parameters`` (:func:`~.gradients.per_example_gradients`, ``chunk`` rows at a
time), R_k the P × d Gaussian projection of dattri's BasicProjector (columns in blocks of
100, block b drawn from seed + 1000·b + 10⁵·k) and d = :meth:`TRAK.projection`:

    φ_i,k = g_i,kᵀ R_k,   Φ_k = [φ_1,k; …; φ_n,k] (n × d),   φ̄_k = (mean_t ∇L_t)ᵀ R_k,
    I_i = Q̄_i · mean_k φ̄_k (Φ_kᵀΦ_k)⁻¹ φ_i,k,   Q̄_i = mean_k (1 − p_k(y_i | x_i)),

the mean over test points t of dattri's φ_t,k (Φ_kᵀΦ_k)⁻¹ Φ_kᵀ ⊙ Q̄ (it is linear in φ_t, so
one projected mean test gradient suffices; dattri's 1/√P and 1/√d scalings cancel in it). The
projection is a float32 GEMM per block of rows (dattri's dtype), ΦᵀΦ and its solve are
float64. Memory: O(chunk · P + P · d + n · d); no n × P matrix is held.

Rescoring after an attack (:meth:`TRAK.rescore`, :func:`~malleability.measure.measure` with
the same weights): the features Φ_k, φ̄_k and Q of the clean scores (``Attribution.reuse``) are
kept for every row whose input did not change, and only the changed rows' gradients are
computed. Without them (clean scores read from a file) they are recomputed from the clean
inputs as the clean scores computed them, so the result is the same bit for bit either way.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

import torch
from torch import nn
from torch.func import grad

from .._validation import check_positive_int
from ..losses import as_labels, training_loss
from ..settings import setting
from .base import Attribution
from .gradients import PerExampleEstimator, flat, mean_loss, per_example_gradients, trainable

#: Columns of the projection drawn per generator seed (dattri's BasicProjector block_size).
BLOCK = 100
#: TRAK's and dattri's projection dimension, used from 1,024 training points on.
DEFAULT_DIM = 512


def projection_matrix(p: int, d: int, seed: int, checkpoint: int = 0) -> torch.Tensor:
    """dattri 0.3.0's BasicProjector matrix (normal, float32, P × d, unscaled): columns in
    blocks of min(d, 100), block b drawn by ``normal_`` from seed + 1000·b + 10⁵·checkpoint."""
    width = min(d, BLOCK)
    blocks = []
    for b, start in enumerate(range(0, d, width)):
        gen = torch.Generator().manual_seed(seed + 1000 * b + 100_000 * checkpoint)
        blocks.append(torch.empty(p, width).normal_(generator=gen)[:, :min(width, d - start)])
    return torch.cat(blocks, 1)


def size(params: dict[str, torch.Tensor]) -> int:
    """P: the number of entries of ``params``."""
    return sum(v.numel() for v in params.values())


def evaluated(models: Sequence[nn.Module]) -> list[nn.Module]:
    """``models`` in eval mode (a copy of any in training mode; the caller's are left as
    they are)."""
    return [copy.deepcopy(m).eval() if m.training else m for m in models]


@dataclass(frozen=True)
class Features:
    """What TRAK's scores are computed from, per checkpoint: the training features Φ_k
    (n × d, float32), the projected mean test gradient φ̄_k, and 1 − p_k(correct) (n,); with
    the seed and dimension they were projected with."""

    phi: list[torch.Tensor]
    test: list[torch.Tensor]
    q: list[torch.Tensor]
    seed: int
    dim: int


@dataclass(frozen=True)
class TRAK(PerExampleEstimator):
    """TRAK with dattri's projection (module docstring), seeded; randomized."""

    name: ClassVar[str] = "trak"
    randomized: ClassVar[bool] = True
    dtype: ClassVar[torch.dtype] = torch.float32  # features; ΦᵀΦ and its solve in float64
    proj_dim: int | None = setting(None, "TRAK's projection dimension k < n (default: dattri's "
                                   "512, or n // 2 below 1,024 points).", check_positive_int)

    def projection(self, n: int) -> int:
        """k for ``n`` training points: ``proj_dim`` checked below n, or min(512, n // 2): at
        k near n, ΦᵀΦ nearly interpolates the n gradients (:mod:`~malleability.trak_projection`)
        and the scores follow round-off (docs/audit.md, the realistic audit)."""
        from ..trak_projection import check_trak_projection
        return check_trak_projection(max(1, min(DEFAULT_DIM, n // 2)) if self.proj_dim is None
                                     else self.proj_dim, n)

    def check(self, model: nn.Module, x: torch.Tensor,
              parameters: Sequence[str] | None = None) -> None:
        self.projection(x.shape[0])

    def _rows(self, model: nn.Module, params: dict[str, torch.Tensor], proj: torch.Tensor,
              x: torch.Tensor, y: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Φ (rows × d) and 1 − p(correct) of the rows (``x``, ``y``), ``chunk`` at a time."""
        phi = [flat(g, len(rows)) @ proj.to(x.dtype)
               for rows, g in per_example_gradients(model, params, x, y, self.chunk)]
        with torch.no_grad():
            q = torch.cat([1 - torch.exp(-training_loss(model(x[r]), y[r]))
                           for r in torch.arange(x.shape[0], device=x.device).split(self.chunk)])
        return torch.cat(phi).detach(), q.detach()

    def features(self, models: Sequence[nn.Module], x_train: torch.Tensor,
                 y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                 seed: int = 0, parameters: Sequence[str] | None = None) -> Features:
        """Φ_k, φ̄_k and 1 − p_k(correct) of every checkpoint in ``models`` (module
        docstring)."""
        y_train, y_test = as_labels(y_train), as_labels(y_test)
        d = self.projection(x_train.shape[0])
        params = [trainable(m, parameters) for m in models]
        phi, test, q = [], [], []
        for k, (model, p) in enumerate(zip(models, params, strict=True)):
            proj = projection_matrix(size(p), d, seed, k).to(x_train.device)
            g = grad(lambda p_, m=model: mean_loss(m, p_, x_test, y_test))(p)
            test.append((flat(g, 1)[0] @ proj.to(x_test.dtype)).detach())
            f, qk = self._rows(model, p, proj, x_train, y_train)
            phi.append(f)
            q.append(qk)
        return Features(phi, test, q, seed, d)

    @staticmethod
    def from_features(feats: Features) -> torch.Tensor:
        """I_i = Q̄_i · mean_k φ̄_k (Φ_kᵀΦ_k)⁻¹ φ_i,k, the kernel and solve in float64."""
        terms = []
        for phi, test in zip(feats.phi, feats.test, strict=True):
            phi64 = phi.to(torch.float64)
            try:
                solved = torch.linalg.solve(phi64.T @ phi64, test.to(torch.float64))
            except torch.linalg.LinAlgError as err:
                raise ValueError(f"estimator: trak's kernel ΦᵀΦ ({feats.dim} × {feats.dim}) is "
                                 "singular: the projected gradients span fewer dimensions; "
                                 "use a smaller proj_dim") from err
            terms.append(phi64 @ solved)
        q = sum(qk.to(torch.float64) for qk in feats.q) / len(feats.q)
        return sum(terms) / len(terms) * q

    def ensemble_attribute(self, models: Sequence[nn.Module], x_train: torch.Tensor,
                           y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor,
                           *, seed: int = 0, parameters: Sequence[str] | None = None
                           ) -> Attribution:
        """TRAK over checkpoints ``models`` (one: the model), with its features kept for
        :meth:`rescore` (``reuse``)."""
        models = evaluated(models)
        feats = self.features(models, x_train, y_train, x_test, y_test, seed=seed,
                              parameters=parameters)
        return Attribution(self._checked(self.from_features(feats)), reuse=feats)

    def ensemble_scores(self, models: Sequence[nn.Module], x_train: torch.Tensor,
                        y_train: torch.Tensor, x_test: torch.Tensor, y_test: torch.Tensor, *,
                        seed: int = 0, parameters: Sequence[str] | None = None
                        ) -> torch.Tensor:
        """TRAK's ensemble over checkpoints ``models`` (one architecture): the mean over
        checkpoints of φ_t,k (Φ_kᵀΦ_k)⁻¹ Φ_kᵀ times the checkpoints' mean 1 − p(correct)."""
        return self.ensemble_attribute(models, x_train, y_train, x_test, y_test, seed=seed,
                                       parameters=parameters).scores

    def attribute(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
                  x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
                  parameters: Sequence[str] | None = None) -> Attribution:
        return self.ensemble_attribute([model], x_train, y_train, x_test, y_test, seed=seed,
                                       parameters=parameters)

    def scores(self, model: nn.Module, x_train: torch.Tensor, y_train: torch.Tensor,
               x_test: torch.Tensor, y_test: torch.Tensor, *, seed: int = 0,
               parameters: Sequence[str] | None = None) -> torch.Tensor:
        return self.attribute(model, x_train, y_train, x_test, y_test, seed=seed,
                              parameters=parameters).scores

    def rescore(self, models: Sequence[nn.Module], before: Attribution, x_old: torch.Tensor,
                xs_new: Sequence[torch.Tensor], y_train: torch.Tensor, x_test: torch.Tensor,
                y_test: torch.Tensor, *, seed: int = 0,
                parameters: Sequence[str] | None = None) -> list[Attribution]:
        """TRAK on each training set of ``xs_new`` with the weights of ``models`` unchanged,
        from the features of the clean inputs ``x_old`` (``before.reuse`` when it holds them
        at this seed, else recomputed) with the rows where it differs recomputed."""
        models = evaluated(models)
        feats = before.reuse
        if not (isinstance(feats, Features) and feats.seed == seed and len(feats.phi) ==
                len(models) and feats.phi[0].shape[0] == x_old.shape[0]):
            feats = self.features(models, x_old, y_train, x_test, y_test, seed=seed,
                                  parameters=parameters)
        return [self._updated(models, feats, x_old, x_new, y_train, seed, parameters)
                for x_new in xs_new]

    def _updated(self, models: list[nn.Module], feats: Features, x_old: torch.Tensor,
                 x_new: torch.Tensor, y_train: torch.Tensor, seed: int,
                 parameters: Sequence[str] | None) -> Attribution:
        changed = (x_new != x_old).reshape(x_new.shape[0], -1).any(1).nonzero().flatten()
        if changed.numel() == 0:
            return Attribution(self._checked(self.from_features(feats)), reuse=feats)
        y = as_labels(y_train)[changed]
        phi, q = [], []
        for k, model in enumerate(models):
            params = trainable(model, parameters)
            proj = projection_matrix(size(params), feats.dim, seed, k).to(x_new.device)
            f, qk = self._rows(model, params, proj, x_new[changed], y)
            phi.append(feats.phi[k].index_copy(0, changed, f))
            q.append(feats.q[k].index_copy(0, changed, qk))
        new = Features(phi, feats.test, q, seed, feats.dim)
        return Attribution(self._checked(self.from_features(new)), reuse=new)

    def _checked(self, scores: torch.Tensor) -> torch.Tensor:
        if not bool(torch.isfinite(scores).all()):
            raise ValueError("estimator: trak returned non-finite scores (a gradient or "
                             "1 − p(correct) is not finite, or ΦᵀΦ is singular)")
        return scores
