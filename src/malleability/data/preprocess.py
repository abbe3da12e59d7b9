"""The differentiable map from [0, 1] pixels x to network inputs z (docs/method.md §1)."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn

from .._validation import as_tensor
from ..linalg import rownorm


def preprocess(
    pixels: torch.Tensor, mean: Sequence[float] | torch.Tensor, std: Sequence[float] | torch.Tensor
) -> torch.Tensor:
    """Network inputs z = rownorm(flatten((x − mean_c) / std_c)), float64 N × (C·H·W).

    ``pixels`` x: N×C×H×W in [0, 1]; ``mean``, ``std``: C per-channel constants. Flattening is
    channel-major (C, H, W). Differentiable in ``pixels`` (attacks act on the pixels).
    """
    x = as_tensor(pixels, "pixels", ndim=4)
    channels = x.shape[1]
    m = as_tensor(mean, "mean", ndim=1, device=x.device)
    s = as_tensor(std, "std", ndim=1, device=x.device)
    for name, v in (("mean", m), ("std", s)):
        if v.shape[0] != channels:
            raise ValueError(f"{name}: expected {channels} per-channel values, got {v.shape[0]}")
    if not torch.compiler.is_exporting() and bool((s <= 0).any()):
        raise ValueError(f"std: expected positive values, got {s.tolist()}")
    z = (x - m.view(1, -1, 1, 1)) / s.view(1, -1, 1, 1)
    return rownorm(z.flatten(1))


class Preprocessing(nn.Module):
    """The map pixels x → network inputs z = rownorm(flatten((x − mean_c) / std_c)), float64.

    Held by a network (``TwoLayerNet(preprocessing=…)``) so that the network maps pixels to
    outputs and attacks differentiate through it. The constants are plain floats, not buffers:
    casting the network to another dtype leaves them exact.
    """

    def __init__(self, mean: Sequence[float], std: Sequence[float]) -> None:
        super().__init__()
        self.mean = tuple(float(v) for v in mean)
        self.std = tuple(float(v) for v in std)
        preprocess(torch.zeros(1, len(self.mean), 1, 1), self.mean, self.std)  # checks them

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return preprocess(x, self.mean, self.std)

    def extra_repr(self) -> str:
        return f"mean={self.mean}, std={self.std}"
