"""Temperature-scaled softmax (attention.py, models.py) against a by-hand softmax."""

import math

import pytest
import torch

from malleability.attention import AttentionFeatures, attention_features
from malleability.models import ModelSettings, TwoLayerNet


def by_hand(x: torch.Tensor, r: torch.Tensor, tau: float) -> torch.Tensor:
    """rownorm(softmax(x Rᵀ/(τ√d)) R), entry by entry."""
    d = x.shape[1]
    out = torch.zeros(x.shape[0], d, dtype=torch.float64)
    for i in range(x.shape[0]):
        scores = [float(x[i] @ r[j]) / (tau * math.sqrt(d)) for j in range(r.shape[0])]
        top = max(scores)
        weights = [math.exp(s - top) for s in scores]
        total = sum(weights)
        for j in range(r.shape[0]):
            out[i] += weights[j] / total * r[j]
        out[i] /= out[i].norm()
    return out


@pytest.mark.parametrize("tau", [0.05, 1.0, 7.0])
def test_tempered_softmax_matches_the_formula(tau):
    gen = torch.Generator().manual_seed(0)
    x = torch.randn(4, 3, generator=gen, dtype=torch.float64)
    r = torch.randn(6, 3, generator=gen, dtype=torch.float64)
    got = attention_features(x, r, "softmax", temperature=tau)
    assert torch.allclose(got, by_hand(x, r, tau), atol=1e-12)


def test_temperature_limits_and_the_default():
    gen = torch.Generator().manual_seed(1)
    r = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    assert torch.equal(attention_features(r, r, "softmax", temperature=1.0),
                       attention_features(r, r, "softmax"))
    # τ → ∞: uniform weights, every row the normalised mean of R (total collapse)
    hot = attention_features(r, r, "softmax", temperature=1e9)
    mean = r.mean(0) / r.mean(0).norm()
    assert torch.allclose(hot, mean.expand_as(hot), atol=1e-6)
    # τ → 0: each reference row attends to the row of largest score
    cold = attention_features(r, r, "softmax", temperature=1e-6)
    pick = (r @ r.T).argmax(1)
    assert torch.allclose(cold, r[pick] / r[pick].norm(dim=1, keepdim=True), atol=1e-9)


def test_temperature_is_refused_for_linear_attention_and_kept_by_networks():
    r = torch.randn(5, 3, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^temperature: linearized attention has no temp"):
        AttentionFeatures(r, "linear", temperature=2.0)
    with pytest.raises(ValueError, match=r"^temperature: expected"):
        AttentionFeatures(r, "softmax", temperature=0.0)
    net = TwoLayerNet.for_architecture("attn-softmax", r, 2, ModelSettings(width=4),
                                       temperature=0.5)
    assert net.front.temperature == 0.5 and net.reinitialized().front.temperature == 0.5
    assert torch.allclose(net.hidden_inputs(r),
                          attention_features(r, r, "softmax", temperature=0.5))
