"""Small image classifiers to audit: a vision transformer and an MLP of similar size.

Both take [0, 1] pixels (n, channels, H, W) and own their preprocessing (x − 0.5)/0.5.

- ``VisionTransformer``: non-overlapping p×p patches → linear embedding + learned positions →
  ``depth`` pre-LayerNorm blocks [attention, 2-layer GELU MLP, both residual] → mean over
  tokens → LayerNorm → linear head. Attention per head with Q, K, V = H W_Q, H W_K, H W_V:
  softmax: softmax(Q Kᵀ/√d_h) V; linear (the paper's linearized attention, Definition 3.1):
  rownorm(Q Kᵀ V), each token's output scaled to unit ℓ2 norm.
- ``MLPClassifier``: flatten → Linear → ReLU → Linear → ReLU → Linear.
"""

from __future__ import annotations

import math

import torch
from torch import nn
from torch.nn import functional as F

from ._validation import check_positive_int, parse_enum
from .attention import AttentionKind
from .linalg import rownorm


class SelfAttention(nn.Module):
    """Multi-head self-attention over tokens (n, T, d), softmax or linearized."""

    def __init__(self, dim: int, heads: int, kind: AttentionKind | str) -> None:
        super().__init__()
        if dim % heads:
            raise ValueError(f"heads: expected a divisor of dim = {dim}, got {heads}")
        self.kind = parse_enum(kind, AttentionKind, "attention")
        if self.kind is AttentionKind.EXPONENTIAL:
            raise ValueError("attention: expected softmax or linear, got exponential")
        self.heads = heads
        self.qkv = nn.Linear(dim, 3 * dim)
        self.out = nn.Linear(dim, dim)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        n, t, d = h.shape
        q, k, v = self.qkv(h).reshape(n, t, 3, self.heads, d // self.heads).unbind(2)
        q, k, v = (a.transpose(1, 2) for a in (q, k, v))  # n × heads × T × d_h
        scores = q @ k.transpose(-1, -2)
        if self.kind is AttentionKind.SOFTMAX:
            mixed = torch.softmax(scores / math.sqrt(d // self.heads), dim=-1) @ v
        else:
            mixed = rownorm(scores @ v)
        return self.out(mixed.transpose(1, 2).reshape(n, t, d))


class Block(nn.Module):
    """Pre-LayerNorm transformer block: h + attn(LN h), then h + MLP(LN h)."""

    def __init__(self, dim: int, heads: int, kind: AttentionKind | str, hidden: int) -> None:
        super().__init__()
        self.norm1, self.norm2 = nn.LayerNorm(dim), nn.LayerNorm(dim)
        self.attn = SelfAttention(dim, heads, kind)
        self.mlp = nn.Sequential(nn.Linear(dim, hidden), nn.GELU(), nn.Linear(hidden, dim))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))


class VisionTransformer(nn.Module):
    """A small ViT on (n, channels, H, W) pixels in [0, 1]; see the module docstring."""

    def __init__(self, image_size: int = 8, patch: int = 2, channels: int = 1, dim: int = 32,
                 depth: int = 2, heads: int = 2, num_classes: int = 10,
                 attention: AttentionKind | str = AttentionKind.SOFTMAX, seed: int = 0) -> None:
        super().__init__()
        patch = check_positive_int(patch, "patch")
        if image_size % patch:
            raise ValueError(f"patch: expected a divisor of image_size = {image_size}, "
                             f"got {patch}")
        tokens = (image_size // patch) ** 2
        self.patch, self.image_size, self.channels = patch, image_size, channels
        with torch.random.fork_rng(devices=[]):  # initialise from ``seed``, global RNG untouched
            torch.manual_seed(seed)
            self.embed = nn.Linear(channels * patch * patch, dim)
            self.position = nn.Parameter(0.02 * torch.randn(tokens, dim))
            self.blocks = nn.Sequential(*(Block(dim, heads, attention, 2 * dim)
                                          for _ in range(check_positive_int(depth, "depth"))))
            self.norm = nn.LayerNorm(dim)
            self.head = nn.Linear(dim, num_classes)

    def patches(self, x: torch.Tensor) -> torch.Tensor:
        """(n, channels, H, W) pixels → (n, T, channels·p²) preprocessed patches."""
        if x.ndim != 4 or x.shape[1:] != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"x: expected shape (n, {self.channels}, {self.image_size}, "
                             f"{self.image_size}), got {tuple(x.shape)}")
        z = F.unfold((x - 0.5) / 0.5, self.patch, stride=self.patch)  # n × c·p² × T
        return z.transpose(1, 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.embed(self.patches(x)) + self.position
        return self.head(self.norm(self.blocks(h).mean(1)))


class MLPClassifier(nn.Module):
    """flatten((x − 0.5)/0.5) → Linear → ReLU → Linear → ReLU → Linear."""

    def __init__(self, in_features: int = 64, hidden: int = 160, num_classes: int = 10,
                 seed: int = 0) -> None:
        super().__init__()
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(seed)
            self.net = nn.Sequential(nn.Flatten(), nn.Linear(in_features, hidden), nn.ReLU(),
                                     nn.Linear(hidden, hidden // 2), nn.ReLU(),
                                     nn.Linear(hidden // 2, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net((x - 0.5) / 0.5)


def fit_classifier(model: nn.Module, x: torch.Tensor, y: torch.Tensor, epochs: int = 100,
                   lr: float = 3e-3, batch_size: int = 64, seed: int = 0,
                   checkpoint_every: int | None = None) -> list[dict[str, torch.Tensor]]:
    """Adam on the mean cross-entropy, shuffled mini-batches drawn with ``seed``; returns the
    state_dict copies taken every ``checkpoint_every`` epochs (and at the end)."""
    epochs = check_positive_int(epochs, "epochs")
    gen = torch.Generator().manual_seed(seed)
    opt = torch.optim.Adam(model.parameters(), lr=lr)
    snapshots = []
    model.train()
    for epoch in range(1, epochs + 1):
        order = torch.randperm(x.shape[0], generator=gen)
        for s in range(0, x.shape[0], batch_size):
            idx = order[s:s + batch_size]
            opt.zero_grad()
            F.cross_entropy(model(x[idx]), y[idx]).backward()
            opt.step()
        if epoch == epochs or (checkpoint_every and epoch % checkpoint_every == 0):
            snapshots.append({k: v.detach().clone() for k, v in model.state_dict().items()})
    model.eval()
    return snapshots
