"""Two-layer ReLU networks with an optional attention front (eq. 2, Appendix A.1).

f(x) = (1/√m) σ(W z)ᵀ A with z = x (2L-ReLU) or z = φ(x) (MLP-Attn), σ = ReLU,
W ∈ R^{m×d} trainable, initialised N(0, s²) (s = ``init_scale``), A ∈ {±1}^{m×C} fixed.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn

from ._validation import as_tensor, check_positive, check_positive_int, parse_enum
from .attention import (
    AttentionFeatures,
    AttentionKind,
    Projection,
    Stacking,
    projection_matrices,
)
from .memory import check_memory, network_bytes


class TwoLayerNet(nn.Module):
    """2L-ReLU (``attention=None``) or MLP-Attn (``attention`` = linear/softmax/exponential).

    ``reference`` is the training inputs (n_R × in_features) the attention front attends to;
    ``projection`` picks the QKV projections of the front (identity by default);
    ``attention_rank``, ``attention_layers`` and ``stacking`` are the truncation and stacking
    options of :class:`AttentionFeatures` (Remark 4.10). The random draws (W, A, projections)
    come from ``seed``; parameters have ``dtype``.
    """

    def __init__(
        self,
        in_features: int,
        width: int,
        num_classes: int,
        attention: AttentionKind | str | None = None,
        reference: torch.Tensor | None = None,
        init_scale: float = 1.0,
        seed: int = 0,
        projection: Projection | str = Projection.IDENTITY,
        dtype: torch.dtype = torch.float64,
        *,
        attention_rank: int | None = None,
        attention_layers: int = 1,
        stacking: Stacking | str = Stacking.REFERENCE,
    ) -> None:
        super().__init__()
        d = check_positive_int(in_features, "in_features")
        m = check_positive_int(width, "width")
        c = check_positive_int(num_classes, "num_classes")
        s = check_positive(init_scale, "init_scale")
        check_memory(network_bytes(d, m, c, itemsize=dtype.itemsize), "width",
                     f"TwoLayerNet({d}, {m}, {c}) with {dtype} parameters")
        gen = torch.Generator().manual_seed(int(seed))
        self.width, self.num_classes, self.init_scale, self.seed = m, c, s, int(seed)
        self.dtype = dtype
        self.weight = nn.Parameter(torch.randn(m, d, generator=gen, dtype=dtype) * s)
        signs = torch.randint(0, 2, (m, c), generator=gen).to(dtype) * 2 - 1
        self.register_buffer("readout", signs)
        self.projection = parse_enum(projection, Projection, "projection")
        self.attention_rank, self.attention_layers = attention_rank, attention_layers
        self.stacking = parse_enum(stacking, Stacking, "stacking")
        if attention is None:
            if reference is not None:
                raise ValueError("reference: given without an attention front (attention=None)")
            self.front: AttentionFeatures | None = None
        else:
            if reference is None:
                raise ValueError("reference: required when attention is set")
            self.front = self._attention_front(reference, parse_enum(
                attention, AttentionKind, "attention"))

    @property
    def in_features(self) -> int:
        return self.weight.shape[1]

    @property
    def attention(self) -> AttentionKind | None:
        return None if self.front is None else self.front.kind

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """z: the input of the hidden layer (x, or φ(x) for MLP-Attn)."""
        if x.ndim != 2 or x.shape[1] != self.in_features:
            raise ValueError(f"x: expected shape (n, {self.in_features}), got {tuple(x.shape)}")
        x = x.to(self.weight.dtype)
        return x if self.front is None else self.front(x)

    def head(self, z: torch.Tensor) -> torch.Tensor:
        """σ(z Wᵀ) A / √m on hidden-layer inputs z, shape (n, C)."""
        return torch.relu(z @ self.weight.T) @ self.readout / math.sqrt(self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = σ(z Wᵀ) A / √m with z = features(x), shape (n, C)."""
        return self.head(self.features(x))

    def reinitialized(self, reference: torch.Tensor | None = None) -> TwoLayerNet:
        """A fresh network with the same construction (so the same W₀, A and projections),
        attending to ``reference`` (default: the current reference set)."""
        if reference is None and self.front is not None:
            reference = self.front.reference
        return TwoLayerNet(self.in_features, self.width, self.num_classes, self.attention,
                           reference, self.init_scale, self.seed, self.projection,
                           self.dtype, attention_rank=self.attention_rank,
                           attention_layers=self.attention_layers,
                           stacking=self.stacking).to(self.weight.device)

    def with_reference(self, reference: torch.Tensor) -> TwoLayerNet:
        """A copy with the same weights whose attention front attends to ``reference``."""
        if self.front is None:
            raise ValueError("reference: this network has no attention front")
        new = copy.deepcopy(self)
        new.front = self._attention_front(reference, self.front.kind)
        return new

    def _attention_front(self, reference: torch.Tensor, kind: AttentionKind) -> AttentionFeatures:
        """The attention front on ``reference``; projections are redrawn from ``seed + 1``."""
        dtype = self.weight.dtype
        reference = as_tensor(reference, "reference", ndim=2, dtype=dtype)
        if reference.shape[1] != self.in_features:
            raise ValueError(f"reference: expected {self.in_features} columns (in_features), "
                             f"got {reference.shape[1]}")
        mats = projection_matrices(self.in_features, self.projection, seed=self.seed + 1)
        if mats is not None:
            mats = (mats[0].to(dtype), mats[1].to(dtype), mats[2].to(dtype))
        return AttentionFeatures(reference, kind, mats, rank=self.attention_rank,
                                 layers=self.attention_layers, stacking=self.stacking)
