"""The pipeline on a second device gives the CPU's numbers: training, kernels, exact LOO
influence and attacks. The device is ``$MALLEABILITY_TEST_DEVICE`` (default: cuda when present);
without one the module is skipped. Run on a GPU machine as
``MALLEABILITY_TEST_DEVICE=cuda pytest tests/test_device.py``."""

from __future__ import annotations

import os

import pytest
import torch

import malleability as M

DEVICE = os.environ.get("MALLEABILITY_TEST_DEVICE",
                        "cuda" if torch.cuda.is_available() else "")
pytestmark = pytest.mark.skipif(
    not DEVICE or (DEVICE.startswith("cuda") and not torch.cuda.is_available()),
    reason="no second device (set MALLEABILITY_TEST_DEVICE, or run on a CUDA machine)")


@pytest.fixture(scope="module")
def digits(digits_split) -> tuple[M.Dataset, M.Dataset]:
    return digits_split(None, 200, 60)


def _trained(data: M.Dataset, device: str, attention: str | None) -> M.TwoLayerNet:
    net = M.TwoLayerNet.for_data(data, M.ModelSettings(width=64, seed=3), attention).to(device)
    M.train(net, data.pixels.to(device), data.targets().to(device),
            M.TrainSettings(epochs=3, lr=1e-2, l2_to_init=0.0, seed=1, progress=False))
    return net


@pytest.mark.parametrize("attention", [None, "linear"])
def test_training_kernels_influence_match_cpu(digits, attention):
    train, test = digits
    results = {}
    for device in ("cpu", DEVICE):
        net = _trained(train, device, attention)
        assert net.weight.device.type == torch.device(device).type
        x, y = train.pixels.to(device), train.targets().to(device)
        xt, yt = test.pixels.to(device), test.targets().to(device)
        infl = M.network_influence(net, x, y, xt, yt, ridge=1e-3)
        z = net.inputs(x)
        results[device] = (net.weight.detach().cpu(), M.empirical_ntk(net, z).cpu(),
                           infl.scores.cpu())
    (w0, k0, s0), (w1, k1, s1) = results["cpu"], results[DEVICE]
    torch.testing.assert_close(w1, w0, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(k1, k0, rtol=1e-8, atol=1e-10)
    torch.testing.assert_close(s1, s0, rtol=1e-6, atol=1e-10)


def test_attacks_stay_in_the_ball_on_device(digits):
    train, _ = digits
    net = _trained(train, DEVICE, None)
    x, y = train.pixels[:40].to(DEVICE), train.targets()[:40].to(DEVICE)
    rows = torch.arange(0, 40, 4)
    for attack in ("fgsm", "pgd", "mim"):
        settings = M.AttackSettings(attack, eps=0.1, steps=5)
        x_new = M.perturb_rows(net, x, y, rows, settings)
        assert x_new.device == x.device
        assert float((x_new - x).abs().amax()) <= 0.1 + 1e-6
        assert float(x_new.min()) >= 0.0 and float(x_new.max()) <= 1.0
        untouched = torch.ones(40, dtype=torch.bool)
        untouched[rows] = False
        assert torch.equal(x_new[untouched.to(DEVICE)], x[untouched.to(DEVICE)])
