"""Attention feature maps against direct formulas; the G³ and κ³ identities (Theorem 4.2/4.8)."""

import math

import numpy as np
import pytest
import torch

from malleability import AttentionFeatures, attention_features, effective_condition_number
from malleability.attention import projection_matrices

F64 = torch.float64


def _data(n=30, d=12, seed=0):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)


def _unit(z):
    return z / np.linalg.norm(z, axis=1, keepdims=True)


@pytest.mark.parametrize("projection", ["identity", "orthogonal", "he"])
def test_maps_match_direct_numpy_formulas(projection):
    r = _data(25, 8, 1)
    x = _data(7, 8, 2)
    mats = projection_matrices(8, projection, seed=3)
    wq, wk, wv = (np.eye(8),) * 3 if mats is None else (m.numpy() for m in mats)
    xn, rn = x.numpy(), r.numpy()
    q, k, v = xn @ wq, rn @ wk, rn @ wv
    scores = q @ k.T / math.sqrt(8)
    softmax = np.exp(scores - scores.max(1, keepdims=True))
    softmax /= softmax.sum(1, keepdims=True)
    expected = {
        "linear": _unit(q @ k.T @ v),
        "softmax": _unit(softmax @ v),
        "exponential": _unit(np.exp(scores) @ v),
    }
    for kind, want in expected.items():
        got = attention_features(x, r, kind, mats).numpy()
        np.testing.assert_allclose(got, want, rtol=1e-12, atol=1e-14)


def test_reference_and_new_points_use_the_same_map():
    r = _data(20, 6, 4)
    front = AttentionFeatures(r, "softmax")
    both = front(torch.cat([r, _data(3, 6, 5)]))
    torch.testing.assert_close(both[:20], front(r), rtol=0, atol=1e-15)


def test_orthogonal_projections_are_orthogonal():
    for w in projection_matrices(10, "orthogonal", seed=0):
        torch.testing.assert_close(w.T @ w, torch.eye(10, dtype=F64), rtol=0, atol=1e-12)


def test_unnormalised_linear_attention_gram_is_g_cubed():
    x = _data(15, 40, 6)  # n ≤ d: G full rank
    phi = AttentionFeatures(x, "linear", normalize=False)(x)
    g = x @ x.T
    torch.testing.assert_close(phi @ phi.T, g @ g @ g, rtol=1e-11, atol=1e-9)


def test_condition_number_is_cubed_on_well_conditioned_data():
    x = _data(12, 30, 7)
    phi = AttentionFeatures(x, "linear", normalize=False)(x)
    eig = np.linalg.eigvalsh((x @ x.T).numpy())
    kappa_g = eig[-1] / eig[0]
    kappa_phi = effective_condition_number(phi).kappa
    assert kappa_g > 5  # not trivially conditioned
    assert kappa_phi == pytest.approx(kappa_g**3, rel=1e-8)


def test_attention_rejects_bad_input():
    with pytest.raises(ValueError, match="^attention: expected one of"):
        AttentionFeatures(_data(), "cosine")
    with pytest.raises(ValueError, match="^reference: contains NaN"):
        AttentionFeatures(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="^x: expected shape"):
        AttentionFeatures(_data(5, 4))(_data(5, 3))
    with pytest.raises(ValueError, match="^projection: expected one of"):
        projection_matrices(4, "random")
