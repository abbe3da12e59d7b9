"""Influence over training (Appendix A.6.1, A.6.2): a trained network's weights at recorded
epochs (the training loop's checkpoints), the malleability metrics between two attributions
at each of them, and the two summaries of a curve over epochs that the paper's words call
for: its change from the first recorded epoch to the last ("decline", "recover and
increase") and its fluctuation ("fluctuate across training")."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence

import numpy as np
import torch

from .metrics import flip_rate, spearman, top_k_overlap
from .models import TwoLayerNet


def check_record_epochs(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    """Recorded epochs: positive integers in increasing order, at least two."""
    if len(value) < 2:
        raise ValueError(f"{name}: expected at least two epochs, got {list(value)}")
    for i, epoch in enumerate(value):
        if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
            raise ValueError(f"{name}[{i}]: expected a positive integer, got {epoch!r}")
        if i and epoch <= value[i - 1]:
            raise ValueError(f"{name}[{i}]: expected epochs in increasing order, got {epoch} "
                             f"after {value[i - 1]}")
    return value


@contextlib.contextmanager
def weights_of(net: TwoLayerNet, weight: torch.Tensor) -> Iterator[TwoLayerNet]:
    """``net`` with first-layer weights ``weight`` (e.g. a checkpoint) inside the block, its
    own weights again after it."""
    saved = net.weight.data
    net.weight.data = weight.to(device=saved.device, dtype=saved.dtype)
    try:
        yield net
    finally:
        net.weight.data = saved


def score_metrics(before: torch.Tensor, after: torch.Tensor, fraction: float) -> dict:
    """Flip rate over the top ``fraction`` of ``before``, Spearman ρ and top-K overlap
    between two score vectors of the same points (Definition 3.4, A.5.2)."""
    return {"flip_rate": flip_rate(before, after, fraction),
            "spearman": spearman(before, after),
            "top_k_overlap": top_k_overlap(before, after, fraction)}


def change(values: Sequence[float]) -> float:
    """v_last − v_first: the net change of a curve over the recorded epochs."""
    if len(values) < 2:
        raise ValueError(f"values: expected at least two epochs, got {len(values)}")
    return float(values[-1]) - float(values[0])


def fluctuation(values: Sequence[float]) -> float:
    """The sample standard deviation (ddof 1) of a curve's values over the recorded epochs;
    NaN when a value is missing."""
    v = np.asarray(values, dtype=np.float64)
    if v.size < 2:
        raise ValueError(f"values: expected at least two epochs, got {v.size}")
    return float(v.std(ddof=1)) if np.isfinite(v).all() else math.nan
