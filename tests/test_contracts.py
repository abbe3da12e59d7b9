"""Every registered estimator and attack meets its protocol (scikit-learn's check_estimator
habit): shapes, dtypes, the same result for the same seed; attacks stay in the ε-ball and the
bounds. A new registry entry is tested here without a line of test code."""

from __future__ import annotations

import dataclasses

import pytest
import torch
from torch import nn

from malleability.attacks import ATTACKS, UNIT_BOX, AttackMethod, make_attack, model_loss
from malleability.estimators import (
    ESTIMATORS,
    Attribution,
    InfluenceEstimator,
    make_estimator,
    parse_estimator,
)


@pytest.mark.parametrize("name", sorted(ESTIMATORS))
def test_estimator_meets_its_protocol(name, small_classifier):
    model, (x, y, xt, yt) = small_classifier
    x, y, xt, yt = x[:16], y[:16], xt[:4], yt[:4]
    estimator = make_estimator(name)
    assert isinstance(estimator, InfluenceEstimator) and estimator.name == name
    assert isinstance(estimator.randomized, bool) and isinstance(estimator.dtype, torch.dtype)
    first = estimator.scores(model, x, y, xt, yt, seed=3)
    again = estimator.attribute(model, x, y, xt, yt, seed=3)
    assert first.shape == (16,) and first.dtype == torch.float64
    assert bool(torch.isfinite(first).all())
    assert isinstance(again, Attribution) and torch.equal(again.scores, first)
    settings = estimator.to_dict()  # its settings are plain values (recorded with results)
    assert all(isinstance(v, (int, float, str, bool, type(None))) for v in settings.values())


@pytest.fixture
def problem():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(12, 6), nn.Tanh(), nn.Linear(6, 3)).double()
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(8, 3, 2, 2, generator=gen, dtype=torch.float64)
    x[0] = 0.0  # on the box's faces
    x[1] = 1.0
    return model, x, torch.randint(0, 3, (8,), generator=gen)


@pytest.mark.parametrize("bounds", [UNIT_BOX, (-1.0, 2.0)])
@pytest.mark.parametrize("name", sorted(ATTACKS))
def test_attack_meets_its_protocol(name, bounds, problem):
    model, x, y = problem
    eps = 0.2
    fields = {f.name for f in dataclasses.fields(ATTACKS[name])}
    attack = make_attack(name, eps=eps, steps=5, seed=7)
    assert isinstance(attack, AttackMethod) and attack.name == name and "eps" in fields
    loss_fn = model_loss(model, getattr(attack, "loss", "target"))
    out = attack.perturb(loss_fn, x, y, bounds)
    assert out.shape == x.shape and out.dtype == x.dtype and not out.requires_grad
    assert float((out - x).abs().amax()) <= eps + 1e-12
    assert float(out.min()) >= bounds[0] and float(out.max()) <= bounds[1]
    assert torch.equal(out, attack.perturb(loss_fn, x, y, bounds))  # same seed, same result
    assert not torch.equal(out, x)
    assert all(p.grad is None for p in model.parameters())
    assert torch.equal(attack.replace(eps=0.0).perturb(loss_fn, x, y, bounds), x)
    with pytest.raises(ValueError, match=r"^x: expected values in"):
        attack.perturb(loss_fn, x + 3.0, y, bounds)


def test_random_sign_moves_every_coordinate_by_eps_inside_the_box():
    x = torch.full((5, 7), 0.5, dtype=torch.float64)
    out = make_attack("random-sign", eps=0.1, seed=0).perturb(None, x, torch.zeros(5))
    assert torch.allclose((out - x).abs(), torch.full_like(x, 0.1))
    signs = torch.sign(out - x)
    assert 0 < int((signs > 0).sum()) < x.numel()  # both signs drawn
    other = make_attack("random-sign", eps=0.1, seed=1).perturb(None, x, torch.zeros(5))
    assert not torch.equal(out, other)
    edge = make_attack("random-sign", eps=0.3, seed=0).perturb(None, torch.ones(2, 3), None)
    assert float(edge.max()) == 1.0 and float(edge.min()) == pytest.approx(0.7)


def test_registries_reject_unknown_names():
    with pytest.raises(ValueError, match=r"^attack: expected one of fgsm, pgd, mim, random-sign"):
        make_attack("cw")
    with pytest.raises(ValueError, match=r"^estimator: expected one of ntk-loo"):
        make_estimator("magic")
    with pytest.raises(ValueError, match=r"^hessian_point: if-arnoldi has no such setting; "
                       r"expected one of chunk, damping, hessian_points, iterations, proj_dim$"):
        make_estimator("if-arnoldi", hessian_point=150)
    assert make_estimator("tracin", ridge=1.0, damping=2.0) == make_estimator("tracin")


def test_estimator_settings_in_brackets_are_the_keyword_settings():
    """``make_estimator("NAME[key=value,...]")`` equals the keyword form, each value typed as
    its field; bracketed settings take precedence over the audit-wide ridge and damping."""
    spec = "if-arnoldi[hessian_points=150, proj_dim=50]"
    assert parse_estimator(spec) == ("if-arnoldi", {"hessian_points": 150, "proj_dim": 50})
    assert make_estimator(spec) == make_estimator("if-arnoldi", hessian_points=150,
                                                  proj_dim=50)
    lissa = make_estimator("if-lissa[scaling=1000,damping=0.5]", damping=1e-3)
    assert lissa.scaling == 1000.0 and isinstance(lissa.scaling, float)
    assert lissa.damping == 0.5
    assert make_estimator("ntk-loo[]", ridge=2.0) == make_estimator("ntk-loo", ridge=2.0)
    with pytest.raises(ValueError, match=r"^estimator: iterations of if-arnoldi expects an "
                       r"integer, got '1e2'"):
        make_estimator("if-arnoldi[iterations=1e2]")
    with pytest.raises(ValueError, match=r"^hessian_points: expected a non-negative integer"):
        make_estimator("if-arnoldi[hessian_points=-1]")
