"""Tests for malleability.attacks: constraint sets, closed forms, cross-checks, strength."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F
from sklearn.datasets import load_digits

from malleability.attacks import Attack, fgsm, mim, pgd, run_attack

ATTACKS = [a.value for a in Attack]


def _ce(model: torch.nn.Module):
    return lambda x, y: F.cross_entropy(model(x), y, reduction="none")


@pytest.fixture
def small() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """A random float64 MLP on image-shaped inputs (B, 1, 4, 4) in [0,1]."""
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Flatten(), torch.nn.Linear(16, 8), torch.nn.Tanh(), torch.nn.Linear(8, 3)
    ).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(12, 1, 4, 4, generator=gen, dtype=torch.float64)
    x[0] = 0.0  # pixels on the box's faces
    x[1] = 1.0
    y = torch.randint(0, 3, (12,), generator=gen)
    return model, x, y


@pytest.fixture(scope="module")
def trained_mlp() -> tuple[torch.nn.Module, torch.Tensor, torch.Tensor]:
    """MLP 64→32→10 trained with Adam on load_digits (pixels / 16), float64, seeded."""
    data = load_digits()
    x = torch.tensor(data.data / 16.0, dtype=torch.float64)
    y = torch.tensor(data.target)
    torch.manual_seed(0)
    model = torch.nn.Sequential(
        torch.nn.Linear(64, 32), torch.nn.ReLU(), torch.nn.Linear(32, 10)
    ).double()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(200):
        opt.zero_grad()
        F.cross_entropy(model(x), y).backward()
        opt.step()
    model.eval()
    with torch.no_grad():
        acc = (model(x).argmax(1) == y).double().mean().item()
    assert acc > 0.9, f"train accuracy {acc:.3f}"
    return model, x[:300], y[:300]


def _assert_max_diff(a: torch.Tensor, b: torch.Tensor, atol: float) -> None:
    assert a.shape == b.shape and a.dtype == b.dtype
    diff = (a - b).abs().max().item()
    assert diff <= atol, f"max |a - b| = {diff:g} > {atol:g}"


# ---- constraint set -----------------------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("eps", [0.05, 0.3])
def test_output_in_eps_ball_and_unit_box(small, attack, eps):
    model, x, y = small
    x_adv = run_attack(attack, _ce(model), x, y, eps, steps=10)
    assert x_adv.shape == x.shape and x_adv.dtype == x.dtype
    assert not x_adv.requires_grad
    assert (x_adv - x).abs().max().item() <= eps + 1e-12
    assert x_adv.min().item() >= 0.0 and x_adv.max().item() <= 1.0
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("attack", ATTACKS)
def test_eps_zero_returns_input_exactly(small, attack):
    model, x, y = small
    x_adv = run_attack(attack, _ce(model), x, y, 0.0)
    assert torch.equal(x_adv, x)
    assert x_adv.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("attack", ATTACKS)
def test_keeps_float32(small, attack):
    model, x, y = small
    model = model.float()
    x_adv = run_attack(attack, _ce(model), x.float(), y, 0.1, steps=3)
    assert x_adv.dtype == torch.float32
    assert (x_adv - x.float()).abs().max().item() <= 0.1 + 1e-6


# ---- closed forms on a linear loss (gradient = w everywhere) ------------------------------


def _linear_case() -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    gen = torch.Generator().manual_seed(2)
    w = torch.randn(2, 3, generator=gen, dtype=torch.float64)
    x = torch.rand(5, 2, 3, generator=gen, dtype=torch.float64)
    x[0, 0, 0], x[1, 0, 0] = 0.0, 1.0
    w[0, 0] = 1.0  # pushes x[1, 0, 0] past 1: the box clip must act
    return w, x, torch.zeros(5)


def _linear_loss(w: torch.Tensor):
    return lambda x, y: (x * w).flatten(1).sum(1)


def test_fgsm_closed_form_on_linear_loss():
    w, x, y = _linear_case()
    x_adv = fgsm(_linear_loss(w), x, y, 0.3)
    expected = (x + 0.3 * w.sign()).clamp(0, 1)
    _assert_max_diff(x_adv, expected, 1e-15)


@pytest.mark.parametrize("steps, eps", [(5, 0.3), (40, 0.3), (40, 0.1)])
@pytest.mark.parametrize("attack", [Attack.PGD, Attack.MIM])
def test_iterative_closed_form_on_linear_loss(attack, steps, eps):
    # Constant gradient w: every step moves α·sign(w) until the ε-ball or the box stops it.
    w, x, y = _linear_case()
    if attack is Attack.PGD:
        x_adv = pgd(_linear_loss(w), x, y, eps, alpha=0.01, steps=steps, random_start=False)
    else:
        x_adv = mim(_linear_loss(w), x, y, eps, alpha=0.01, steps=steps)
    expected = (x + min(0.01 * steps, eps) * w.sign()).clamp(0, 1)
    _assert_max_diff(x_adv, expected, 1e-12)


# ---- cross-checks between attacks ---------------------------------------------------------


def test_fgsm_equals_one_pgd_step_of_size_eps(small):
    model, x, y = small
    a = fgsm(_ce(model), x, y, 0.2)
    b = pgd(_ce(model), x, y, 0.2, alpha=0.2, steps=1, random_start=False)
    assert torch.equal(a, b)


def test_mim_without_momentum_equals_pgd_without_random_start(small):
    # sign(∇/‖∇‖₁) = sign(∇), so μ = 0 is PGD from x.
    model, x, y = small
    a = mim(_ce(model), x, y, 0.2, alpha=0.02, steps=15, momentum=0.0)
    b = pgd(_ce(model), x, y, 0.2, alpha=0.02, steps=15, random_start=False)
    assert torch.equal(a, b)


def test_mim_momentum_changes_the_path(small):
    model, x, y = small
    a = mim(_ce(model), x, y, 0.2, alpha=0.02, steps=15, momentum=1.0)
    b = mim(_ce(model), x, y, 0.2, alpha=0.02, steps=15, momentum=0.0)
    assert not torch.equal(a, b)


def _mim_reference(loss_fn, x, y, eps, alpha, steps, momentum):
    """MIM written out one example at a time, straight from Dong et al. 2018."""
    rows = []
    for x0, y0 in zip(x.unsqueeze(1), y.unsqueeze(1), strict=True):
        x_adv, g = x0.clone(), torch.zeros_like(x0)
        for _ in range(steps):
            xr = x_adv.clone().requires_grad_(True)
            (grad,) = torch.autograd.grad(loss_fn(xr, y0).sum(), xr)
            g = momentum * g + grad / grad.abs().sum()
            x_adv = x_adv + alpha * g.sign()
            x_adv = torch.minimum(torch.maximum(x_adv, x0 - eps), x0 + eps).clamp(0, 1)
        rows.append(x_adv)
    return torch.cat(rows)


@pytest.mark.parametrize("momentum", [0.5, 1.0])
def test_mim_matches_per_example_reference(trained_mlp, momentum):
    model, x, y = trained_mlp
    x, y = x[:40], y[:40]
    expected = _mim_reference(_ce(model), x, y, 0.3, 0.05, 20, momentum)
    got = mim(_ce(model), x, y, 0.3, alpha=0.05, steps=20, momentum=momentum)
    _assert_max_diff(got, expected, 1e-12)


def test_mim_invariant_to_per_example_loss_scale(trained_mlp):
    # ∇/‖∇‖₁ is per example, so scaling one example's loss leaves every path unchanged.
    model, x, y = trained_mlp
    x, y = x[:40], y[:40]
    scale = torch.logspace(-4, 4, x.shape[0], dtype=torch.float64)
    a = mim(_ce(model), x, y, 0.3, alpha=0.05, steps=20)
    b = mim(lambda x, y: scale * _ce(model)(x, y), x, y, 0.3, alpha=0.05, steps=20)
    _assert_max_diff(a, b, 1e-12)


# ---- randomness ---------------------------------------------------------------------------


def test_pgd_seeded_and_independent_of_global_rng(small):
    model, x, y = small
    state = torch.get_rng_state()
    a = pgd(_ce(model), x, y, 0.3, steps=5, seed=3)
    assert torch.equal(torch.get_rng_state(), state)
    torch.manual_seed(123)
    b = pgd(_ce(model), x, y, 0.3, steps=5, seed=3)
    c = pgd(_ce(model), x, y, 0.3, steps=5, seed=4)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)


def test_pgd_without_random_start_ignores_seed(small):
    model, x, y = small
    a = pgd(_ce(model), x, y, 0.3, steps=5, random_start=False, seed=3)
    b = pgd(_ce(model), x, y, 0.3, steps=5, random_start=False, seed=4)
    assert torch.equal(a, b)


# ---- strength on a trained network --------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("eps", [0.1, 0.3])
def test_attack_strength_on_trained_digits_mlp(trained_mlp, eps):
    model, x, y = trained_mlp
    loss_fn = _ce(model)
    gen = torch.Generator().manual_seed(5)
    signs = torch.randint(0, 2, x.shape, generator=gen, dtype=x.dtype) * 2 - 1
    with torch.no_grad():
        clean = loss_fn(x, y).mean().item()
        noise = loss_fn((x + eps * signs).clamp(0, 1), y).mean().item()
        loss_fgsm = loss_fn(fgsm(loss_fn, x, y, eps), y).mean().item()
        loss_pgd = loss_fn(pgd(loss_fn, x, y, eps), y).mean().item()
        loss_mim = loss_fn(mim(loss_fn, x, y, eps), y).mean().item()
    assert loss_pgd > noise
    assert loss_pgd >= loss_fgsm - 1e-3
    assert loss_mim > clean + 0.1
    assert loss_fgsm > noise


# ---- no side effects on the model ---------------------------------------------------------


@pytest.mark.parametrize("attack", ATTACKS)
@pytest.mark.parametrize("training", [True, False])
def test_model_untouched(small, attack, training):
    model, x, y = small
    model.train(training)
    before = [p.detach().clone() for p in model.parameters()]
    run_attack(attack, _ce(model), x, y, 0.1, steps=3)
    assert all(p.grad is None for p in model.parameters())
    assert model.training is training
    assert all(torch.equal(p, q) for p, q in zip(model.parameters(), before, strict=True))


@pytest.mark.parametrize("attack", ATTACKS)
def test_runs_under_no_grad(small, attack):
    model, x, y = small
    with torch.no_grad():
        x_adv = run_attack(attack, _ce(model), x, y, 0.1, steps=3)
    assert not torch.equal(x_adv, x)


@pytest.mark.parametrize("attack", ["FGSM", "pgd", Attack.MIM])
def test_run_attack_accepts_names(small, attack):
    model, x, y = small
    fn = {"fgsm": fgsm, "pgd": pgd, "mim": mim}[attack.lower()]
    assert torch.equal(run_attack(attack, _ce(model), x, y, 0.1), fn(_ce(model), x, y, 0.1))


# ---- bad input ----------------------------------------------------------------------------


def _bad_x(kind: str) -> torch.Tensor:
    x = torch.full((4, 16), 0.5, dtype=torch.float64)
    x[1, 2] = {"above": 1.5, "below": -0.1, "nan": math.nan}[kind]
    return x


BAD = [
    ("eps", {"eps": -0.1}),
    ("eps", {"eps": math.nan}),
    ("eps", {"eps": math.inf}),
    ("x", {"x": _bad_x("above")}),
    ("x", {"x": _bad_x("below")}),
    ("x", {"x": _bad_x("nan")}),
    ("y", {"y": torch.zeros(3, dtype=torch.long)}),
]
BAD_ITERATIVE = [
    ("alpha", {"alpha": 0.0}),
    ("alpha", {"alpha": -0.01}),
    ("steps", {"steps": 0}),
    ("steps", {"steps": 2.5}),
]


def _check_error(call, name: str) -> None:
    with pytest.raises(ValueError) as info:
        call()
    message = str(info.value)
    assert message.startswith(f"{name}: ") and "\n" not in message


def _call(attack, **changes):
    torch.manual_seed(0)
    model = torch.nn.Linear(16, 3).double()
    args = {
        "x": torch.full((4, 16), 0.5, dtype=torch.float64),
        "y": torch.zeros(4, dtype=torch.long),
        "eps": 0.1,
    }
    args.update(changes)
    x, y, eps = args.pop("x"), args.pop("y"), args.pop("eps")
    return lambda: attack(_ce(model), x, y, eps, **args)


@pytest.mark.parametrize("name, changes", BAD)
@pytest.mark.parametrize("attack", [fgsm, pgd, mim])
def test_bad_input_raises(attack, name, changes):
    _check_error(_call(attack, **changes), name)


@pytest.mark.parametrize("name, changes", BAD_ITERATIVE)
@pytest.mark.parametrize("attack", [pgd, mim])
def test_bad_iterative_settings_raise(attack, name, changes):
    _check_error(_call(attack, **changes), name)


def test_bad_momentum_and_attack_name_raise():
    _check_error(_call(mim, momentum=-1.0), "momentum")
    _check_error(_call(lambda *a: run_attack("cw", *a)), "attack")


def test_loss_fn_must_return_per_example_losses():
    x = torch.full((4, 16), 0.5, dtype=torch.float64)
    _check_error(lambda: fgsm(lambda x, y: x.sum(), x, torch.zeros(4), 0.1), "loss_fn")
