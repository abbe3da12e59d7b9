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


@pytest.mark.parametrize("block", [2**24, 30, 60])  # one block; 7 blocks of 1 row; 3+1 of 2
@pytest.mark.parametrize("projection", ["identity", "orthogonal", "he"])
def test_maps_match_direct_numpy_formulas(projection, block, monkeypatch):
    monkeypatch.setattr("malleability.attention.SCORE_BLOCK", block)
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


@pytest.mark.parametrize("kind", ["softmax", "exponential"])
def test_score_blocks_keep_the_gradient(kind, monkeypatch):
    r, x = _data(25, 8, 1), _data(7, 8, 2)
    grads = []
    for block in (2**24, 30):
        monkeypatch.setattr("malleability.attention.SCORE_BLOCK", block)
        xg = x.clone().requires_grad_(True)
        (attention_features(xg, r, kind) ** 3).sum().backward()
        grads.append(xg.grad)
    torch.testing.assert_close(grads[1], grads[0], rtol=1e-12, atol=1e-14)


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


# Remark 4.10: truncated and stacked attention against exact spectral identities.

def _unit_rows(n, d, seed):
    x = _data(n, d, seed)
    return x / x.norm(dim=1, keepdim=True)


def _gram_eigenvalues(x):
    """Eigenvalues of G = X Xᵀ by numpy, descending."""
    xn = x.numpy()
    return np.linalg.eigvalsh(xn @ xn.T)[::-1]


def test_truncated_reference_is_the_best_rank_k_approximation():
    from malleability.attention import truncate_reference
    r = _data(12, 9, 7)
    u, s, vt = np.linalg.svd(r.numpy(), full_matrices=False)
    want = u[:, :4] * s[:4] @ vt[:4]
    np.testing.assert_allclose(truncate_reference(r, 4).numpy(), want, atol=1e-12)
    with pytest.raises(ValueError, match="rank"):
        truncate_reference(r, 10)


@pytest.mark.parametrize("rank", [1, 3, 6])
def test_truncated_linear_attention_kappa_is_lambda1_over_lambdak_cubed(rank):
    x = _unit_rows(10, 25, 8)  # n ≤ d: G full rank
    lam = _gram_eigenvalues(x)
    phi = AttentionFeatures(x, "linear", normalize=False, rank=rank)(x)
    report = effective_condition_number(phi)
    assert report.rank == rank
    assert report.kappa_effective == pytest.approx((lam[0] / lam[rank - 1]) ** 3, rel=1e-8)
    # the features' Gram is G_k³ = U_k Λ_k³ U_kᵀ
    gram = (phi @ phi.T).numpy()
    w, u = np.linalg.eigh(x.numpy() @ x.numpy().T)
    u_k, w_k = u[:, ::-1][:, :rank], w[::-1][:rank]
    np.testing.assert_allclose(gram, (u_k * w_k**3) @ u_k.T, atol=1e-10)


@pytest.mark.parametrize("layers", [1, 2, 3])
def test_stacking_on_the_original_reference_gives_g_to_the_2l_plus_1(layers):
    x = _unit_rows(8, 20, 9)
    g = (x @ x.T).numpy()
    phi = attention_features(x, x, "linear", normalize=False, layers=layers,
                             stacking="reference").numpy()
    want = np.linalg.matrix_power(g, 2 * layers + 1)
    np.testing.assert_allclose(phi @ phi.T, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    lam = _gram_eigenvalues(x)
    kappa = effective_condition_number(torch.from_numpy(phi)).kappa_effective
    assert kappa == pytest.approx((lam[0] / lam[-1]) ** (2 * layers + 1), rel=1e-6)


@pytest.mark.parametrize("layers", [1, 2])
def test_stacking_on_the_previous_output_gives_g_to_the_3_to_the_l(layers):
    x = _unit_rows(8, 20, 10)
    g = (x @ x.T).numpy()
    phi = attention_features(x, x, "linear", normalize=False, layers=layers,
                             stacking="previous").numpy()
    want = np.linalg.matrix_power(g, 3**layers)
    np.testing.assert_allclose(phi @ phi.T, want, rtol=1e-9, atol=1e-9 * np.abs(want).max())
    lam = _gram_eigenvalues(x)
    kappa = effective_condition_number(torch.from_numpy(phi)).kappa_effective
    assert kappa == pytest.approx((lam[0] / lam[-1]) ** (3**layers), rel=1e-6)


def test_truncated_and_stacked_on_reference_gives_lambda_ratio_to_2l_plus_1():
    x = _unit_rows(9, 20, 11)
    lam = _gram_eigenvalues(x)
    phi = attention_features(x, x, "linear", normalize=False, rank=4, layers=2)
    report = effective_condition_number(phi)
    assert report.rank == 4
    assert report.kappa_effective == pytest.approx((lam[0] / lam[3]) ** 5, rel=1e-8)


@pytest.mark.parametrize("stacking", ["reference", "previous"])
@pytest.mark.parametrize("kind", ["softmax", "exponential", "linear"])
def test_stacked_maps_compose_single_layer_maps(kind, stacking):
    r = _data(15, 6, 12)
    x = _data(4, 6, 13)
    mats = projection_matrices(6, "orthogonal", seed=1)
    got = attention_features(x, r, kind, mats, layers=3, stacking=stacking, rank=5)
    ref, out = r, x
    for _ in range(3):  # each layer: one-layer map against R (reference) or φ(R) (previous)
        out_next = attention_features(out, ref, kind, mats, rank=5)
        if stacking == "previous":
            ref = attention_features(ref, ref, kind, mats, rank=5)
        out = out_next
    torch.testing.assert_close(got, out, rtol=1e-12, atol=1e-14)


def test_two_layer_net_threads_rank_and_layers():
    from malleability import TwoLayerNet
    r = _data(12, 6, 14)
    net = TwoLayerNet(6, 32, 2, "linear", r, attention_rank=2, attention_layers=2,
                      stacking="previous")
    want = AttentionFeatures(r, "linear", rank=2, layers=2, stacking="previous")(r)
    torch.testing.assert_close(net.hidden_inputs(r), want, rtol=0, atol=0)
    again = net.reinitialized()
    torch.testing.assert_close(again.hidden_inputs(r), want, rtol=0, atol=0)
    assert again.front.rank == 2 and again.front.layers == 2


def test_replacing_reference_rows_equals_rebuilding_the_front():
    r, x = _data(40, 8, 1), _data(5, 8, 2)
    mats = projection_matrices(8, "he", seed=3)
    new_rows = r[[3, 7, 9]].clone()
    new_rows[1] += 0.3 * _data(1, 8, 4)[0]  # rows 3 and 9 unchanged, row 7 moved
    new_rows.requires_grad_(True)
    moved = r.clone()
    moved[7] = new_rows[1].detach()
    front = AttentionFeatures(r, "linear", mats)
    fast = front.with_rows_replaced(r[[3, 7, 9]], new_rows)
    torch.testing.assert_close(fast(x), AttentionFeatures(moved, "linear", mats)(x),
                               rtol=1e-12, atol=1e-13)
    fast(x).sum().backward()  # differentiable in the new rows; unchanged rows get no gradient
    assert new_rows.grad[1].abs().sum() > 0 and new_rows.grad[[0, 2]].abs().sum() == 0
    for bad in (AttentionFeatures(r, "softmax"), AttentionFeatures(r, "linear", rank=3)):
        with pytest.raises(ValueError, match="^attention: rows can be replaced"):
            bad.with_rows_replaced(r[:1], r[:1])
