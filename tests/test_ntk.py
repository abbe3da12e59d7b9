"""Closed-form NTKs against autograd (torch.func), hand-written Jacobians and Monte Carlo."""

import math

import numpy as np
import pytest
import torch
from torch import nn

from malleability import (
    TwoLayerNet,
    autograd_ntk,
    empirical_ntk,
    function_distance,
    infinite_ntk,
    kernel_distance,
)

F64 = torch.float64


def _x(n, d, seed):
    x = torch.randn(n, d, generator=torch.Generator().manual_seed(seed), dtype=F64)
    return x / x.norm(dim=1, keepdim=True)


@pytest.mark.parametrize("attention", [None, "linear", "softmax", "exponential"])
@pytest.mark.parametrize("num_classes", [1, 3])
def test_closed_form_matches_autograd(attention, num_classes):
    x, xt = _x(24, 7, 0), _x(9, 7, 1)
    model = TwoLayerNet(7, 48, num_classes, attention=attention,
                        reference=x if attention else None, init_scale=0.7, seed=2)
    for a, b in [(x, None), (xt, x)]:
        closed = empirical_ntk(model, a, b)
        auto = autograd_ntk(model, a, b)
        assert closed.shape == (a.shape[0], (b if b is not None else a).shape[0])
        assert (closed - auto).abs().max() <= 1e-10 * closed.abs().max()


def test_closed_form_matches_autograd_with_projections_and_small_blocks():
    x = _x(12, 5, 3)
    model = TwoLayerNet(5, 16, 2, attention="linear", reference=x, projection="he", seed=1)
    auto = autograd_ntk(model, x, block_bytes=1)  # one row per block
    torch.testing.assert_close(empirical_ntk(model, x), auto, rtol=1e-10, atol=1e-12)


def test_autograd_ntk_matches_direct_jacobian_contraction_on_foreign_mlp():
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).to(F64)
    net[0].bias.requires_grad_(False)  # a subset of trainable parameters
    x1, x2 = _x(5, 4, 4), _x(3, 4, 5)
    trainable = [p for p in net.parameters() if p.requires_grad]

    def jac(x):
        rows = []
        for xi in x:
            out = net(xi[None])[0]
            per_out = []
            for c in range(out.numel()):
                g = torch.autograd.grad(out[c], trainable, retain_graph=True)
                per_out.append(torch.cat([t.reshape(-1) for t in g]))
            rows.append(torch.stack(per_out))
        return torch.stack(rows)  # n × C × P

    j1, j2 = jac(x1), jac(x2)
    expected = np.einsum("acp,bcp->ab", j1.numpy(), j2.numpy()) / 3
    np.testing.assert_allclose(autograd_ntk(net, x1, x2).numpy(), expected, rtol=1e-12)


def test_infinite_ntk_is_monte_carlo_limit_with_inverse_sqrt_rate():
    z = _x(10, 6, 6) * torch.linspace(0.5, 2.0, 10, dtype=F64)[:, None]
    target = infinite_ntk(z)
    widths, seeds = [16, 256, 4096], 12
    single, averaged = [], []
    for m in widths:
        ks = [empirical_ntk(TwoLayerNet(6, m, 1, init_scale=0.3, seed=s), z) for s in range(seeds)]
        errs = [float(torch.linalg.norm(k - target) / torch.linalg.norm(target)) for k in ks]
        single.append(np.mean(errs))
        mean_k = torch.stack(ks).mean(0)
        averaged.append(float(torch.linalg.norm(mean_k - target) / torch.linalg.norm(target)))
    slope = np.polyfit(np.log(widths), np.log(single), 1)[0]
    assert -0.65 < slope < -0.35, (single, slope)
    slope_avg = np.polyfit(np.log(widths), np.log(averaged), 1)[0]
    assert -0.75 < slope_avg < -0.25, (averaged, slope_avg)
    assert averaged[-1] < 0.01


def test_infinite_ntk_known_values():
    z = torch.tensor([[1.0, 0.0], [0.0, 2.0], [-3.0, 0.0]], dtype=F64)
    k = infinite_ntk(z)
    assert k[0, 0] == pytest.approx(0.5)  # ρ = 1: z·z/2
    assert k[1, 1] == pytest.approx(2.0)
    assert k[0, 1] == 0.0  # orthogonal
    assert k[0, 2] == pytest.approx(0.0)  # ρ = −1: π − π = 0


def test_distances():
    a = torch.tensor([[1.0, 2.0], [3.0, 4.0]], dtype=F64)
    assert function_distance(a, a + torch.tensor([[3.0, 0.0], [0.0, 4.0]])) == pytest.approx(5.0)
    assert kernel_distance(a, 2 * a) == pytest.approx(0.0, abs=1e-15)
    assert kernel_distance(torch.eye(2), torch.tensor([[0.0, 1.0], [1.0, 0.0]])) == 1.0
    with pytest.raises(ValueError, match="^f_b: expected shape"):
        function_distance(a, a[:1])


def test_bad_inputs_name_the_argument():
    x = _x(4, 3, 0)
    for width in (0, -2):
        with pytest.raises(ValueError, match="^width: expected a positive integer"):
            TwoLayerNet(3, width, 1)
    model = TwoLayerNet(3, 8, 1)
    bad = x.clone()
    bad[0, 0] = float("nan")
    cases = [
        (lambda: empirical_ntk(model, bad), "x1: contains NaN"),
        (lambda: empirical_ntk(model, x[0]), "x1: expected a 2-d array"),
        (lambda: empirical_ntk(model, x, _x(2, 5, 1)), "x2: expected 3 columns"),
        (lambda: empirical_ntk(model, x[:0]), "x1: expected a non-empty array"),
        (lambda: infinite_ntk(x, x[:, :2]), "x2: expected 3 columns"),
        (lambda: TwoLayerNet(3, 8, 1, attention="linear"), "reference: required"),
        (lambda: TwoLayerNet(3, 8, 1, init_scale=-1.0), "init_scale: expected a positive number"),
    ]
    for call, message in cases:
        with pytest.raises(ValueError) as info:
            call()
        assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_with_reference_keeps_weights_and_moves_features():
    x = _x(10, 4, 1)
    model = TwoLayerNet(4, 8, 2, attention="linear", reference=x, seed=3)
    moved = model.with_reference(x + 0.1)
    assert torch.equal(moved.weight, model.weight)
    assert not torch.allclose(moved.hidden_inputs(x), model.hidden_inputs(x))
    assert math.isclose(float(moved.hidden_inputs(x).norm(dim=1).max()), 1.0)
