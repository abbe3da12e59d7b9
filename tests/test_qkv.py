"""Trainable He-initialised QKV projections (Prop. 4.13): the network against the formula, its
closed-form NTK against autograd, and its training against finite differences."""

import math

import pytest
import torch

from malleability import TwoLayerNet, autograd_ntk, empirical_ntk
from malleability.attention import projection_matrices
from malleability.models import ModelSettings, QKVNet
from malleability.ntk import projection_ntk
from malleability.repro.experiments.qkv_projections import w_block_ntk
from malleability.training import TrainSettings, train

F64 = torch.float64


def _x(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("num_classes", [1, 3])
def test_closed_form_ntk_with_trainable_qkv_matches_autograd_over_all_parameters(num_classes):
    x, xt = _x(14, 6, 0), _x(5, 6, 1)
    net = QKVNet(6, 40, num_classes, x, init_scale=0.8, seed=2)
    assert {n for n, p in net.named_parameters() if p.requires_grad} == {
        "weight", "front.w_q", "front.w_k", "front.w_v"}
    for a, b in [(x, None), (xt, x)]:
        closed, auto = empirical_ntk(net, a, b), autograd_ntk(net, a, b)
        assert (closed - auto).abs().max() <= 1e-10 * auto.abs().max()
    # the W block alone is the 2L-ReLU closed form on φ(x), the rest the QKV block
    torch.testing.assert_close(empirical_ntk(net, x) - projection_ntk(net, x, x),
                               w_block_ntk(net, x), rtol=1e-10, atol=1e-12)


def test_features_at_init_are_the_he_projected_map_by_hand():
    x = _x(9, 5, 3)
    net = QKVNet(5, 8, 2, x, seed=4)
    w_q, w_k, w_v = projection_matrices(5, "he", seed=5)
    by_hand = (x @ w_q) @ (x @ w_k).T @ (x @ w_v)
    torch.testing.assert_close(net.hidden_inputs(x), by_hand / by_hand.norm(dim=1, keepdim=True))
    fixed = TwoLayerNet(5, 8, 2, "linear", x, seed=4, projection="he")
    torch.testing.assert_close(net.hidden_inputs(x), fixed.hidden_inputs(x))
    assert torch.equal(net.weight, fixed.weight)
    # He: entries N(0, 2/d)
    big = projection_matrices(400, "he", seed=0)[0]
    assert abs(float(big.var()) * 400 / 2 - 1) < 0.02


def test_training_moves_every_parameter_against_its_finite_difference_gradient():
    """One full-batch Adam step moves each entry by −lr·g/(|g| + ε): its sign is −sign(g), g
    the central finite difference of the loss."""
    x = _x(12, 4, 6)
    y = torch.where(x[:, :1] > 0, 1.0, -1.0).to(F64)
    net = QKVNet(4, 10, 1, x, seed=7)
    before = {n: p.detach().clone() for n, p in net.named_parameters()}

    def loss() -> float:
        with torch.no_grad():
            return float(0.5 * ((net(x) - y) ** 2).mean())

    grads = {}
    for name, p in net.named_parameters():
        for index in [(0, 0), (1, 2), (3, 1)]:
            h = 1e-6
            with torch.no_grad():
                p[index] += h
                up = loss()
                p[index] -= 2 * h
                down = loss()
                p[index] += h
            grads[name, index] = (up - down) / (2 * h)
    train(net, x, y, TrainSettings(epochs=1, batch_size=12, lr=1e-3, progress=False))
    params = {n: p.detach() for n, p in net.named_parameters()}
    for (name, index), g in grads.items():
        step = float(params[name][index] - before[name][index])
        assert abs(g) > 1e-9, (name, index)
        assert math.isclose(step, -1e-3 * math.copysign(1, g), rel_tol=1e-3), (name, index)


def test_reference_changes_keep_the_trained_projections_and_reinit_restores_the_draw():
    x, x2 = _x(10, 4, 8), _x(10, 4, 9)
    net = QKVNet.for_architecture("attn-qkv", x, 2, ModelSettings(width=6, seed=1))
    assert isinstance(net, QKVNet)
    fresh = net.reinitialized()
    with torch.no_grad():
        net.front.w_v.add_(0.3)
    moved = net.with_reference(x2)
    assert torch.equal(moved.front.w_v, net.front.w_v)
    assert torch.equal(moved.front.reference, x2)
    assert isinstance(moved.reinitialized(), QKVNet)
    assert torch.equal(moved.reinitialized().front.w_v, fresh.front.w_v)
    assert not torch.equal(fresh.front.w_v, net.front.w_v)


def test_adversarial_training_of_projections_is_refused():
    x = _x(6, 3, 10)
    net = QKVNet(3, 4, 1, x)
    with pytest.raises(ValueError, match="^adversary: adversarial training of trainable"):
        train(net, x, torch.ones(6, 1, dtype=F64), TrainSettings(epochs=1, progress=False),
              adversary=lambda loss, xb, yb, epoch: xb)
