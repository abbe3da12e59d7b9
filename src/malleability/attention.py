"""Attention feature maps with an explicit (transductive) reference set (Definition 3.1, A.13).

For inputs x (rows) and a reference set R (the training split, fixed before training):

- linearized:  φ_lin(x) = rownorm((x W_Q)(R W_K)ᵀ (R W_V)) = rownorm(x · W_Q W_Kᵀ RᵀR W_V),
  evaluated as x times a d×d matrix computed once (cost n·d², not n²·d);
- softmax:     φ_sm(x)  = rownorm(softmax((x W_Q)(R W_K)ᵀ / (τ√d)) (R W_V));
- exponential: φ_exp(x) = rownorm(exp(s(x) − max s(x)) (R W_V)), s(x) = (x W_Q)(R W_K)ᵀ / (τ√d)
  (the per-row shift cancels under rownorm).

τ (``temperature``, default 1: the paper's maps) scales the scores of softmax and exponential
attention: the temperature-scaled softmax of the paper's open question (Limitations); τ → ∞
averages the values uniformly, τ → 0 picks the best-matching reference row.

Projections W_Q = W_K = W_V = I by default; orthogonal or He-initialised N(0, 2/d) projections
are options (Proposition 4.13). Without row normalisation and with identity projections the
linearized map of the reference set is φ(X) = X XᵀX, so φ(X)φ(X)ᵀ = G³ (Theorem 4.2).

Remark 4.10 options: ``rank=k`` attends to the best rank-k approximation R_k = R V_k V_kᵀ of the
reference (its top-k right singular directions), so the unnormalised linear Gram on R is
U_k Σ_k⁶ U_kᵀ and its κ is (λ₁/λ_k)³ over the eigenvalues λ of G. ``layers=L`` stacks L maps:
with ``Stacking.REFERENCE`` every layer attends to the original R (φ_L(X) = X (XᵀX)^L, Gram
G^{2L+1}); with ``Stacking.PREVIOUS`` layer l attends to layer l−1's output on R
(singular values σ^{3^L}, Gram G^{3^L}). Both identities hold without row normalisation.
"""

from __future__ import annotations

import copy
import math
from enum import StrEnum

import torch
from torch import nn

from ._validation import as_tensor, check_positive, check_positive_int, parse_enum
from .linalg import rownorm


class AttentionKind(StrEnum):
    """The attention feature maps of Definition 3.1 and Appendix A.13."""

    LINEAR = "linear"
    SOFTMAX = "softmax"
    EXPONENTIAL = "exponential"


class Projection(StrEnum):
    """Query/key/value projections (Proposition 4.13)."""

    IDENTITY = "identity"
    ORTHOGONAL = "orthogonal"
    HE = "he"


class Stacking(StrEnum):
    """What each stacked attention layer attends to (Remark 4.10)."""

    REFERENCE = "reference"  # the original reference R: Gram G^{2L+1}
    PREVIOUS = "previous"  # the previous layer's output on R: Gram G^{3^L}


def truncate_reference(reference: torch.Tensor, rank: int) -> torch.Tensor:
    """R_k = R V_k V_kᵀ: the best rank-k approximation of R (Eckart–Young), same shape and dtype.

    V_k holds the top-k right singular vectors of R; k may not exceed min(n_R, d).
    """
    rank = check_positive_int(rank, "rank")
    if rank > min(reference.shape):
        raise ValueError(f"rank: expected at most min(n_R, d) = {min(reference.shape)}, "
                         f"got {rank}")
    _, _, vh = torch.linalg.svd(reference, full_matrices=False)
    top = vh[:rank]
    return reference @ top.T @ top


def projection_matrices(
    d: int, projection: Projection | str = Projection.IDENTITY, seed: int = 0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None:
    """(W_Q, W_K, W_V), each d×d float64, or None for identity projections.

    Orthogonal: Q factor of a Gaussian matrix (sign-corrected, Haar); He: entries N(0, 2/d).
    """
    projection = parse_enum(projection, Projection, "projection")
    if projection is Projection.IDENTITY:
        return None
    gen = torch.Generator().manual_seed(seed)
    mats = []
    for _ in range(3):
        g = torch.randn(d, d, generator=gen, dtype=torch.float64)
        if projection is Projection.ORTHOGONAL:
            q, r = torch.linalg.qr(g)
            mats.append(q * torch.sign(torch.diagonal(r)))
        else:
            mats.append(g * math.sqrt(2.0 / d))
    return mats[0], mats[1], mats[2]


#: Most entries of one block of softmax/exponential scores (rows of x × reference rows): 2²⁴,
#: 64 MiB in float32, so φ of a whole training split never holds an n × n_R matrix.
SCORE_BLOCK = 2**24


def attention_features(
    x: torch.Tensor,
    reference: torch.Tensor,
    kind: AttentionKind | str = AttentionKind.LINEAR,
    projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
    normalize: bool = True,
    rank: int | None = None,
    layers: int = 1,
    stacking: Stacking | str = Stacking.REFERENCE,
    temperature: float = 1.0,
) -> torch.Tensor:
    """φ(x) for rows of ``x`` (n×d) against ``reference`` R (n_R×d); pure and differentiable.

    For repeated calls with the same reference use :class:`AttentionFeatures`, which caches
    the reference-side products. ``rank``, ``layers``, ``stacking``: see the module docstring.
    """
    return AttentionFeatures(reference, kind, projections, normalize, rank, layers, stacking,
                             temperature)(x)


class AttentionFeatures(nn.Module):
    """A parameter-free attention front: φ(x) against a fixed reference set R.

    Reference-side products are computed once at construction: for the linearized map the
    d×d matrix W_Kᵀ RᵀR W_V; for softmax/exponential the keys R W_K and values R W_V.
    Buffers keep the reference's dtype. With ``rank=k`` keys and values come from R_k
    (:func:`truncate_reference`); ``reference`` keeps R itself. With ``layers=L > 1`` the map
    is applied L times, each layer with the same projections and row normalisation; under
    ``Stacking.PREVIOUS`` the next layer is a nested front whose reference is this layer's
    output on R (truncated again to ``rank``).
    """

    def __init__(
        self,
        reference: torch.Tensor,
        kind: AttentionKind | str = AttentionKind.LINEAR,
        projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor] | None = None,
        normalize: bool = True,
        rank: int | None = None,
        layers: int = 1,
        stacking: Stacking | str = Stacking.REFERENCE,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        reference = as_tensor(reference, "reference", ndim=2, dtype=None)
        self.kind = parse_enum(kind, AttentionKind, "attention")
        self.temperature = check_positive(temperature, "temperature")
        if self.temperature != 1.0 and self.kind is AttentionKind.LINEAR:
            raise ValueError(f"temperature: linearized attention has no temperature, got "
                             f"{temperature!r}")
        self.normalize = normalize
        self.layers = check_positive_int(layers, "layers")
        self.stacking = parse_enum(stacking, Stacking, "stacking")
        self.rank = rank
        attended = reference if rank is None else truncate_reference(reference, rank)
        d = reference.shape[1]
        if projections is None:
            w_q = w_k = w_v = None
        else:
            w_q, w_k, w_v = (as_tensor(w, "projections", ndim=2, dtype=reference.dtype)
                             for w in projections)
            for w in (w_q, w_k, w_v):
                if w.shape != (d, d):
                    raise ValueError(
                        f"projections: expected {d}×{d} matrices, got {tuple(w.shape)}")
        self.register_buffer("w_q", w_q)
        self.register_buffer("reference", reference)
        keys = attended if w_k is None else attended @ w_k
        values = attended if w_v is None else attended @ w_v
        # W_K, W_V kept (outside the state dict) for with_rows_replaced
        self.register_buffer("w_k", w_k, persistent=False)
        self.register_buffer("w_v", w_v, persistent=False)
        if self.kind is AttentionKind.LINEAR:
            self.register_buffer("kv", keys.T @ values)  # W_Kᵀ RᵀR W_V, d×d
            self.register_buffer("keys", None)
            self.register_buffer("values", None)
        else:
            self.register_buffer("kv", None)
            self.register_buffer("keys", keys)
            self.register_buffer("values", values)
        self.in_features = d
        self.next_layer: AttentionFeatures | None = None
        if self.layers > 1 and self.stacking is Stacking.PREVIOUS:
            self.next_layer = AttentionFeatures(
                self._layer(reference), self.kind, projections, normalize, rank,
                self.layers - 1, self.stacking, self.temperature)

    def with_rows_replaced(self, old: torch.Tensor, new: torch.Tensor) -> AttentionFeatures:
        """A shallow copy attending to the reference with rows ``old`` replaced by ``new``
        (k × d each, row i of ``old`` a row of R). Linearized, untruncated, one layer:
        W_Kᵀ R′ᵀR′ W_V = kv + Σ_i (k′_i v′_iᵀ − k_i v_iᵀ) over the rows that differ,
        differentiable in ``new`` (O(k d²), not O(n_R d²)); its ``reference`` buffer still
        holds R. Other maps raise ValueError."""
        if self.kind is not AttentionKind.LINEAR or self.rank is not None or self.layers != 1:
            raise ValueError("attention: rows can be replaced in place only for one untruncated "
                             "linearized layer; rebuild the front on the new reference")
        if old.shape != new.shape or old.ndim != 2 or old.shape[1] != self.in_features:
            raise ValueError(f"new: expected the shape of old, (k, {self.in_features}), got "
                             f"{tuple(new.shape)} and {tuple(old.shape)}")
        moved = (old != new).any(dim=1)
        old, new = old[moved], new[moved]

        def outer(rows: torch.Tensor) -> torch.Tensor:
            keys = rows if self.w_k is None else rows @ self.w_k
            values = rows if self.w_v is None else rows @ self.w_v
            return keys.T @ values

        front = copy.copy(self)
        front._buffers = dict(self._buffers)
        front.kv = self.kv + outer(new) - outer(old)
        return front

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"x: expected shape (n, {self.in_features}), got {tuple(x.shape)}")
        out = self._layer(x)
        if self.next_layer is not None:
            return self.next_layer(out)
        for _ in range(self.layers - 1):  # Stacking.REFERENCE
            out = self._layer(out)
        return out

    def _layer(self, x: torch.Tensor) -> torch.Tensor:
        """One attention layer against this front's (possibly truncated) reference."""
        q = x if self.w_q is None else x @ self.w_q
        if self.kind is AttentionKind.LINEAR:
            out = q @ self.kv
        else:  # row blocks keep the n × n_R score matrix within SCORE_BLOCK entries
            rows = max(1, SCORE_BLOCK // self.keys.shape[0])
            out = torch.cat([self._attend(block) for block in q.split(rows)])
        return rownorm(out) if self.normalize else out

    def _attend(self, q: torch.Tensor) -> torch.Tensor:
        """softmax(q Kᵀ/(τ√d)) V, or exp(q Kᵀ/(τ√d) − row max) V, for a block of query rows."""
        scores = q @ self.keys.T / (self.temperature * math.sqrt(self.in_features))
        if self.kind is AttentionKind.SOFTMAX:
            weights = torch.softmax(scores, dim=1)
        else:
            weights = torch.exp(scores - scores.amax(dim=1, keepdim=True))
        return weights @ self.values

    def extra_repr(self) -> str:
        return (f"kind={self.kind.value}, reference={tuple(self.reference.shape)}, "
                f"normalize={self.normalize}, rank={self.rank}, layers={self.layers}, "
                f"stacking={self.stacking.value}, temperature={self.temperature:g}")


class TrainableProjections(nn.Module):
    """Linearized attention with trainable QKV projections (Proposition 4.13):
    φ(x) = rownorm((x W_Q)(R W_K)ᵀ(R W_V)) = rownorm(x W_Q W_Kᵀ (RᵀR) W_V), with W_Q, W_K,
    W_V ∈ R^{d×d} parameters initialised as ``projections`` (e.g. He, N(0, 2/d):
    :func:`projection_matrices`) and the reference R fixed (its d×d Gram RᵀR a buffer).

    Evaluated as (((x W_Q) W_Kᵀ) RᵀR) W_V: four n×d×d products, differentiable in x and in
    the projections. :meth:`parts` returns the intermediate rows the closed-form NTK needs.
    """

    kind = AttentionKind.LINEAR

    def __init__(self, reference: torch.Tensor,
                 projections: tuple[torch.Tensor, torch.Tensor, torch.Tensor]) -> None:
        super().__init__()
        reference = as_tensor(reference, "reference", ndim=2, dtype=None)
        d = reference.shape[1]
        mats = [as_tensor(w, "projections", ndim=2, dtype=reference.dtype) for w in projections]
        for w in mats:
            if w.shape != (d, d):
                raise ValueError(f"projections: expected {d}×{d} matrices, got {tuple(w.shape)}")
        self.w_q, self.w_k, self.w_v = (nn.Parameter(w.clone()) for w in mats)
        self.register_buffer("reference", reference)
        self.register_buffer("gram", reference.T @ reference)
        self.in_features = d

    def parts(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """(q, p, s, u) = (x W_Q, q W_Kᵀ, p RᵀR, s W_V) for rows x; φ = rownorm(u)."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(
                f"x: expected shape (n, {self.in_features}), got {tuple(x.shape)}")
        q = x @ self.w_q
        p = q @ self.w_k.T
        s = p @ self.gram
        return q, p, s, s @ self.w_v

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return rownorm(self.parts(x)[3])

    def attending_to(self, reference: torch.Tensor) -> TrainableProjections:
        """A copy with the current projections (as new parameters) attending to
        ``reference``."""
        return TrainableProjections(reference.to(self.w_q.dtype),
                                    (self.w_q.detach(), self.w_k.detach(), self.w_v.detach()))

    def extra_repr(self) -> str:
        return f"trainable QKV, reference={tuple(self.reference.shape)}"
