"""The trainer, gradients through preprocessing and attention, adversarial training."""

import pytest
import torch

from malleability import AttackSettings, ModelSettings, TwoLayerNet, perturb_rows
from malleability.data import load_dataset
from malleability.interventions import adversarial_train
from malleability.training import (
    TrainSettings,
    evaluate,
    objective,
    objective_and_gradient_,
    train,
    train_batched,
)

F64 = torch.float64


def _net(ds, attention=None, width=64, seed=1):
    return TwoLayerNet.for_data(ds, ModelSettings(width=width, seed=seed), attention)


@pytest.mark.parametrize("attention", [None, "linear"])
def test_training_lowers_the_loss_and_is_deterministic(digits, attention):
    tr, te = digits
    settings = TrainSettings(epochs=15, lr=1e-2, seed=3, checkpoints=(0, 1, 15), progress=False)
    runs = []
    for _ in range(2):
        model = _net(tr, attention)
        history = train(model, tr.pixels, tr.targets(), settings, te.pixels, te.targets())
        runs.append((model.weight.detach().clone(), history))
    (w_a, h_a), (w_b, h_b) = runs
    assert torch.equal(w_a, w_b) and h_a.train_loss == h_b.train_loss
    assert h_a.train_loss[-1] < 0.9 * h_a.train_loss[0]
    assert len(h_a.test_accuracy) == 15 and h_a.test_accuracy[-1] > 0.4  # chance: 0.25
    assert set(h_a.checkpoints) == {0, 1, 15}
    assert torch.equal(h_a.checkpoints[15], w_a)
    assert not torch.equal(h_a.checkpoints[0], w_a)


def test_l2_to_init_term_is_zero_at_initialisation(digits):
    tr, _ = digits
    model = _net(tr)
    z, y = tr.inputs(), tr.targets()
    w0 = model.weight.detach().clone()
    with_term = objective(model, w0, z, y, "ce", l2_to_init=10.0)
    without = objective(model, w0, z, y, "ce", l2_to_init=0.0)
    assert float(with_term.detach()) == float(without.detach())
    model.weight.data += 0.1
    moved = objective(model, w0, z, y, "ce", 10.0) - objective(model, w0, z, y, "ce", 0.0)
    assert float(moved.detach()) == pytest.approx(10.0 * 0.01 * model.weight.numel())
    mean = (objective(model, w0, z, y, "ce", 10.0, "mean")
            - objective(model, w0, z, y, "ce", 0.0, "mean"))
    assert float(mean.detach()) == pytest.approx(10.0 * 0.01)


@pytest.mark.parametrize("attention", [None, "linear", "softmax"])
def test_gradients_reach_pixels_through_preprocessing_and_attention(digits, attention):
    tr, _ = digits
    model = _net(tr, attention, width=16)
    pixels = tr.pixels[:3].to(F64).clone().clamp(0.05, 0.95)
    y = tr.targets()[:3]

    def loss(p):
        return torch.nn.functional.cross_entropy(model(p), y.argmax(1),
                                                 reduction="sum")

    p = pixels.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(loss(p), p)
    h = 1e-6
    for idx in [(0, 0, 3, 4), (1, 0, 5, 2), (2, 0, 6, 6)]:
        up, down = pixels.clone(), pixels.clone()
        up[idx] += h
        down[idx] -= h
        numeric = (loss(up) - loss(down)) / (2 * h)
        assert float(grad[idx]) == pytest.approx(float(numeric.detach()), rel=1e-5, abs=1e-9)
    assert float(grad.abs().sum()) > 0


def test_adversarial_training_raises_pgd_accuracy():
    tr = load_dataset("digits", "train", classes="3,8", n=240, seed=0)
    te = load_dataset("digits", "test", classes="3,8", n=90, seed=0)
    attack = AttackSettings("pgd", eps=0.1, alpha=0.025, steps=5)
    settings = TrainSettings(epochs=30, lr=1e-2, seed=0, progress=False)
    standard, robust = _net(tr, width=64), _net(tr, width=64)
    train(standard, tr.pixels, tr.targets(), settings)
    adversarial_train(robust, tr.pixels, tr.targets(), settings, attack)
    accs = []
    for model in (standard, robust):
        idx = torch.arange(len(te))
        x_adv = perturb_rows(model, te.pixels.to(F64), te.targets(), idx, attack)
        accs.append(evaluate(model, x_adv, te.targets())[1])
    assert accs[1] > accs[0] + 0.15, accs


def test_bad_settings():
    for kwargs, message in [({"epochs": 0}, "epochs: expected a positive integer"),
                            ({"lr": -1.0}, "lr: expected a positive number"),
                            ({"checkpoints": (7,), "epochs": 5}, "checkpoints: expected")]:
        with pytest.raises(ValueError, match=f"^{message}"):
            TrainSettings(**kwargs)
    with pytest.raises(ValueError, match="^eps: expected a non-negative"):
        AttackSettings(eps=-0.1)
    with pytest.raises(ValueError, match="^attack: expected one of"):
        AttackSettings(attack="cw")


def test_mismatched_labels(digits):
    tr, _ = digits
    with pytest.raises(ValueError, match="^y: expected 240 rows to match x"):
        train(_net(tr), tr.pixels, tr.targets()[:10], TrainSettings(epochs=1))


@pytest.mark.parametrize("l2", [0.0, 0.3])
@pytest.mark.parametrize("loss", ["mse", "ce"])
def test_analytic_gradient_matches_autograd(digits, loss, l2):
    tr, _ = digits
    z, y = tr.inputs()[:50], tr.targets()[:50]
    y = y[:, :1] * 2 - 1 if loss == "mse" else y  # ±1 targets with MSE
    model = TwoLayerNet(z.shape[1], 32, y.shape[1], attention="linear", reference=z, seed=2)
    h = model.hidden_inputs(z).detach()
    w0 = model.weight.detach().clone()
    model.weight.data += 0.05 * torch.randn_like(w0)
    value = objective(model, w0, h, y, loss, l2_to_init=l2)
    (expected,) = torch.autograd.grad(value, model.weight)
    grad = torch.empty_like(w0)
    got = objective_and_gradient_(model.weight, w0, model.readout[None], h, y, loss, l2, grad)
    assert got.shape == (1,)
    torch.testing.assert_close(got[0], value.detach(), rtol=1e-12, atol=0)
    torch.testing.assert_close(grad, expected, rtol=1e-10, atol=1e-14)


def test_batched_training_follows_each_networks_own_trajectory(digits):
    tr, te = digits
    settings = TrainSettings(epochs=3, lr=1e-2, seed=5, checkpoints=(0, 3), progress=False)
    z, y, zt, yt = tr.pixels, tr.targets(), te.pixels, te.targets()
    alone = []
    for seed in (1, 2, 3):
        model = _net(tr, seed=seed)
        history = train(model, z, y, settings, x_test=zt, y_test=yt)
        alone.append((model.weight.detach(), history))
    nets = [_net(tr, seed=seed) for seed in (1, 2, 3)]
    histories = train_batched(nets, z, y, settings, x_test=zt, y_test=yt)
    for net, hist, (w, ref) in zip(nets, histories, alone, strict=True):
        torch.testing.assert_close(net.weight.detach(), w, rtol=1e-9, atol=1e-12)
        assert hist.train_loss == pytest.approx(ref.train_loss, rel=1e-9)
        assert hist.test_accuracy == ref.test_accuracy
        assert set(hist.checkpoints) == {0, 3}
        torch.testing.assert_close(hist.checkpoints[3], w)
    with pytest.raises(ValueError, match="^models: expected networks with the same"):
        train_batched([_net(tr), _net(tr, "linear")], z, y, settings)


@pytest.mark.parametrize("convention", ["sum", "mean"])
def test_analytic_gradient_follows_the_l2_convention(digits, convention):
    tr, _ = digits
    settings = TrainSettings(epochs=2, lr=1e-2, l2_to_init=0.5, l2_convention=convention,
                             seed=5, progress=False)
    model = _net(tr, seed=4)
    w0 = model.weight.detach().clone()
    train(model, tr.pixels, tr.targets(), settings)
    h = model.hidden_inputs(model.inputs(tr.pixels[:40])).detach()
    value = objective(model, w0, h, tr.targets()[:40], "ce", 0.5, convention)
    (expected,) = torch.autograd.grad(value, model.weight)
    mean = (model.weight.detach() - w0).square().mean() * 0.5
    reg = mean if convention == "mean" else mean * w0.numel()
    data = objective(model, w0, h, tr.targets()[:40], "ce", 0.0)
    torch.testing.assert_close(value - data, reg, rtol=1e-10, atol=0)
    grad = torch.empty_like(w0)
    l2 = 0.5 / w0.numel() if convention == "mean" else 0.5
    got = objective_and_gradient_(model.weight, w0, model.readout[None], h,
                                  tr.targets()[:40], "ce", l2, grad)
    torch.testing.assert_close(got[0], value.detach(), rtol=1e-10, atol=0)
    torch.testing.assert_close(grad, expected, rtol=1e-9, atol=1e-14)
