"""Two-layer ReLU networks with an optional attention front (eq. 2, Appendix A.1).

Three data spaces, one owner each: pixels x → network inputs z = preprocessing(x) →
hidden-layer inputs h = z (2L-ReLU) or h = φ(z) (MLP-Attn) → outputs f = (1/√m) σ(W h)ᵀ A,
σ = ReLU, W ∈ R^{m×d} trainable, initialised N(0, s²) (s = ``init_scale``), A ∈ {±1}^{m×C}
fixed. See docs/method.md §3. The architectures by name: :data:`ARCHITECTURES`.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import Literal

import torch
from torch import nn

from ._validation import as_tensor, check_positive, check_positive_int, check_seed, parse_enum
from .attention import (
    AttentionFeatures,
    AttentionKind,
    Projection,
    Stacking,
    TrainableProjections,
    projection_matrices,
)
from .data import Dataset
from .memory import check_memory, network_bytes
from .settings import Settings, setting

#: Architectures by name: 2L-ReLU (no attention front) and MLP-Attn with each attention map.
ARCHITECTURES: dict[str, AttentionKind | None] = {
    "relu": None,
    "attn": AttentionKind.LINEAR,
    "attn-softmax": AttentionKind.SOFTMAX,
    "attn-exponential": AttentionKind.EXPONENTIAL,
    "attn-qkv": AttentionKind.LINEAR,
}
#: The architecture whose QKV projections train with W (Proposition 4.13): :class:`QKVNet`.
TRAINABLE_QKV = "attn-qkv"

#: The paper's names of the architectures.
ARCHITECTURE_NAMES = {"relu": "2L-ReLU", "attn": "MLP-Attn", "attn-softmax": "MLP-Attn (softmax)",
                      "attn-exponential": "MLP-Attn (exponential)",
                      "attn-qkv": "MLP-Attn (trainable QKV)"}


def check_architecture(value: object, name: str) -> str:
    """An architecture's name in :data:`ARCHITECTURES`; its attention map (or None for
    2L-ReLU) is accepted too."""
    if value in ARCHITECTURES:
        return str(value)
    for arch, kind in ARCHITECTURES.items():
        if value == kind:
            return arch
    raise ValueError(f"{name}: expected one of {', '.join(ARCHITECTURES)}, got {value!r}")


@dataclass(frozen=True)
class ModelSettings(Settings):
    """Network construction. ``init_scale`` s: the paper's value is lost (default 1);
    ``dtype``: float32 trains faster, kernels are always float64."""

    width: int = setting(1024, "Hidden width m (paper: 16, 1024, 4096).", check_positive_int)
    init_scale: float = setting(1.0, "Init scale s of W ~ N(0, s²) (paper: value lost).",
                                check_positive)
    seed: int = setting(42, "Seed of W₀, A and the projections (paper: 42).", check_seed)
    projection: Projection = setting(Projection.IDENTITY, "QKV projections of the attention "
                                                          "front.")
    dtype: Literal["float32", "float64"] = setting("float64", "Parameter dtype for training.")


class TwoLayerNet(nn.Module):
    """2L-ReLU (``attention=None``) or MLP-Attn (``attention`` = linear/softmax/exponential).

    ``preprocessing`` maps the caller's inputs x to network inputs z (e.g.
    :class:`~malleability.data.Preprocessing` for pixels; None: the caller passes z).
    ``reference`` is the training network inputs z (n_R × in_features) the attention front
    attends to; ``projection`` picks the QKV projections of the front (identity by default);
    ``attention_rank``, ``attention_layers`` and ``stacking`` are the truncation and stacking
    options of :class:`AttentionFeatures` (Remark 4.10), ``temperature`` τ its softmax /
    exponential temperature (scores/(τ√d); 1: the paper's maps). The random draws (W, A,
    projections) come from ``seed``; parameters have ``dtype``.
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
        preprocessing: nn.Module | None = None,
        *,
        attention_rank: int | None = None,
        attention_layers: int = 1,
        stacking: Stacking | str = Stacking.REFERENCE,
        temperature: float = 1.0,
    ) -> None:
        super().__init__()
        self.preprocessing = preprocessing
        self.temperature = check_positive(temperature, "temperature")
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

    @classmethod
    def for_architecture(cls, architecture: str | AttentionKind | None, z: torch.Tensor,
                         num_outputs: int, settings: ModelSettings = ModelSettings(), *,
                         width: int | None = None, reference: torch.Tensor | None = None,
                         preprocessing: nn.Module | None = None,
                         attention_rank: int | None = None, temperature: float = 1.0
                         ) -> TwoLayerNet:
        """An untrained network of ``architecture`` (:func:`check_architecture`) on network
        inputs like ``z`` (n × d) with ``num_outputs`` outputs; MLP-Attn attends to
        ``reference`` (default ``z``), truncated to its top ``attention_rank`` singular
        directions when given (Remark 4.10), softmax/exponential at ``temperature``."""
        name = check_architecture(architecture, "model")
        attention = ARCHITECTURES[name]
        if attention is not None and reference is None:
            reference = z
        if name == TRAINABLE_QKV:
            return QKVNet(z.shape[1], width or settings.width, num_outputs, reference,
                          settings.init_scale, settings.seed, getattr(torch, settings.dtype),
                          preprocessing)
        return cls(z.shape[1], width or settings.width, num_outputs, attention,
                   reference if attention else None, settings.init_scale, settings.seed,
                   settings.projection, getattr(torch, settings.dtype), preprocessing,
                   attention_rank=attention_rank if attention else None,
                   temperature=temperature)

    @classmethod
    def for_data(cls, data: Dataset, settings: ModelSettings = ModelSettings(),
                 architecture: str | AttentionKind | None = "relu",
                 width: int | None = None) -> TwoLayerNet:
        """A network of ``architecture`` on ``data``'s pixels: its preprocessing, its number
        of outputs and, for MLP-Attn, its network inputs as the attention reference."""
        return cls.for_architecture(architecture, data.inputs(), data.targets().shape[1],
                                    settings, width=width, preprocessing=data.preprocessing)

    def inputs(self, x: torch.Tensor) -> torch.Tensor:
        """z: the network inputs of ``x`` (``preprocessing(x)``, or ``x`` without one)."""
        return x if self.preprocessing is None else self.preprocessing(x)

    def hidden_inputs(self, z: torch.Tensor) -> torch.Tensor:
        """h: the input of the hidden layer (z, or φ(z) for MLP-Attn), in the weights' dtype."""
        if z.ndim != 2 or z.shape[1] != self.in_features:
            raise ValueError(f"z: expected shape (n, {self.in_features}), got {tuple(z.shape)}")
        z = z.to(self.weight.dtype)
        return z if self.front is None else self.front(z)

    def head(self, h: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
        """σ(h Wᵀ) A / √m on hidden-layer inputs h, shape (n, C); ``weight`` replaces W."""
        w = self.weight if weight is None else weight
        return torch.relu(h @ w.T) @ self.readout.to(w.dtype) / math.sqrt(self.width)

    def linearized_head(self, h: torch.Tensor, weight: torch.Tensor, at: torch.Tensor
                        ) -> torch.Tensor:
        """The head linearised in W at ``at`` = W₀, evaluated at ``weight`` = W:
        f(h; W₀) + ⟨∇_W f(h; W₀), W − W₀⟩ = (1[h W₀ᵀ > 0] ⊙ h Wᵀ) A / √m (ReLU is
        positively homogeneous)."""
        gate = (h @ at.to(weight.dtype).T > 0).to(weight.dtype)
        return (gate * (h @ weight.T)) @ self.readout.to(weight.dtype) / math.sqrt(self.width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """f(x) = head(hidden_inputs(inputs(x))), shape (n, C)."""
        return self.head(self.hidden_inputs(self.inputs(x)))

    def reinitialized(self, reference: torch.Tensor | None = None) -> TwoLayerNet:
        """A fresh network with the same construction (so the same W₀, A and projections),
        attending to ``reference`` (default: the current reference set)."""
        if reference is None and self.front is not None:
            reference = self.front.reference
        return TwoLayerNet(self.in_features, self.width, self.num_classes, self.attention,
                           reference, self.init_scale, self.seed, self.projection,
                           self.dtype, self.preprocessing, attention_rank=self.attention_rank,
                           attention_layers=self.attention_layers,
                           stacking=self.stacking,
                           temperature=self.temperature).to(self.weight.device)

    def reinitialized_on(self, x: torch.Tensor) -> TwoLayerNet:
        """A fresh network with the same construction, to be trained on the training set
        ``x`` (the caller's inputs): MLP-Attn's front attends to its network inputs."""
        if self.front is None:
            return self.reinitialized()
        with torch.no_grad():
            return self.reinitialized(self.inputs(x))

    def with_reference(self, reference: torch.Tensor) -> TwoLayerNet:
        """A copy with the same weights whose attention front attends to ``reference``
        (network inputs z)."""
        if self.front is None:
            raise ValueError("reference: this network has no attention front")
        new = copy.deepcopy(self)
        new.front = self._attention_front(reference, self.front.kind)
        return new

    def attending_to(self, x: torch.Tensor) -> TwoLayerNet:
        """This network on the training set ``x`` (the caller's inputs): MLP-Attn's front
        attends to its network inputs (same weights, :meth:`with_reference`); 2L-ReLU, whose
        features do not depend on the training set, is returned as it is."""
        if self.front is None:
            return self
        with torch.no_grad():
            return self.with_reference(self.inputs(x))

    def with_front(self, front: AttentionFeatures) -> TwoLayerNet:
        """A shallow copy sharing this network's weights, with attention front ``front``."""
        if self.front is None:
            raise ValueError("front: this network has no attention front")
        new = copy.copy(self)
        new._modules = dict(self._modules)
        new.front = front
        return new

    def _checked_reference(self, reference: torch.Tensor) -> torch.Tensor:
        """``reference`` as an (n, in_features) tensor of this network's dtype."""
        reference = as_tensor(reference, "reference", ndim=2, dtype=self.weight.dtype)
        if reference.shape[1] != self.in_features:
            raise ValueError(f"reference: expected {self.in_features} columns (in_features), "
                             f"got {reference.shape[1]}")
        return reference

    def _attention_front(self, reference: torch.Tensor, kind: AttentionKind) -> AttentionFeatures:
        """The attention front on ``reference``; projections are redrawn from ``seed + 1``."""
        dtype = self.weight.dtype
        reference = self._checked_reference(reference)
        mats = projection_matrices(self.in_features, self.projection, seed=self.seed + 1)
        if mats is not None:
            mats = (mats[0].to(dtype), mats[1].to(dtype), mats[2].to(dtype))
        return AttentionFeatures(reference, kind, mats, rank=self.attention_rank,
                                 layers=self.attention_layers, stacking=self.stacking,
                                 temperature=self.temperature)


class QKVNet(TwoLayerNet):
    """MLP-Attn with trainable QKV projections (Proposition 4.13): the linearized front
    φ(z) = rownorm((z W_Q)(R W_K)ᵀ(R W_V)) (:class:`~malleability.attention.TrainableProjections`)
    with W_Q, W_K, W_V ∈ R^{d×d} He-initialised, entries N(0, 2/d), drawn from ``seed + 1`` as
    the fixed "he" projections of :class:`TwoLayerNet` are (``ModelSettings.projection`` does
    not apply), then trained with W: ``train`` updates all four and ``empirical_ntk``
    differentiates all four."""

    def __init__(self, in_features: int, width: int, num_classes: int, reference: torch.Tensor,
                 init_scale: float = 1.0, seed: int = 0, dtype: torch.dtype = torch.float64,
                 preprocessing: nn.Module | None = None) -> None:
        super().__init__(in_features, width, num_classes, AttentionKind.LINEAR, reference,
                         init_scale, seed, Projection.HE, dtype, preprocessing)

    def _attention_front(self, reference: torch.Tensor, kind: AttentionKind
                         ) -> TrainableProjections:
        """The front on ``reference``: this network's current projections when it has a front
        already (:meth:`with_reference`), else fresh He draws from ``seed + 1``."""
        current = getattr(self, "front", None)
        if isinstance(current, TrainableProjections):
            return current.attending_to(reference)
        dtype = self.weight.dtype
        reference = self._checked_reference(reference)
        mats = projection_matrices(self.in_features, Projection.HE, seed=self.seed + 1)
        return TrainableProjections(reference, tuple(w.to(dtype) for w in mats))

    def reinitialized(self, reference: torch.Tensor | None = None) -> QKVNet:
        """A fresh network with the same construction (W₀, A and the He projections at their
        initial draws), attending to ``reference`` (default: the current reference set)."""
        reference = self.front.reference if reference is None else reference
        return QKVNet(self.in_features, self.width, self.num_classes, reference,
                      self.init_scale, self.seed, self.dtype,
                      self.preprocessing).to(self.weight.device)
