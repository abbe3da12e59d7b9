"""Square attack (attacks/square.py) against closed-form worst cases: a linear binary model's
worst ℓ∞ perturbation is −ε·y·sign(w) (so the points it can fool are known exactly), and a
gradient-masked copy of that model (inputs rounded, zero gradient) hides them from PGD but not
from a query-based search."""

import pytest
import torch

from malleability.attacks import make_attack, margin_loss, pgd, square
from malleability.attacks.square import image_shape, window_share


def linear_problem(n: int = 60, d: int = 16, seed: int = 0):
    """x in [0.3, 0.7] (bounds never bind at ε ≤ 0.3), ±1 labels of sign(w·x − b), and the
    exact worst-case margins y(w·x − b) − ε‖w‖₁."""
    gen = torch.Generator().manual_seed(seed)
    w = torch.randn(d, generator=gen, dtype=torch.float64)
    x = 0.3 + 0.4 * torch.rand(n, d, generator=gen, dtype=torch.float64)
    b = float((x @ w).mean())  # no point on the boundary (y = 0)
    y = torch.sign(x @ w - b)[:, None]
    return w, b, x, y


def margin_of(f, y):
    return margin_loss(f, y)


@pytest.mark.parametrize(("features", "shape"), [(3072, (3, 32, 32)), (784, (1, 28, 28)),
                                                 (64, (1, 8, 8)), (10, (1, 1, 10))])
def test_image_shape(features, shape):
    assert image_shape(features) == shape


def test_window_share_halves_at_the_papers_marks():
    assert window_share(0.4, 0, 10_000) == 0.4
    assert window_share(0.4, 11, 10_000) == 0.2
    assert window_share(0.4, 9_999, 10_000) == 0.4 / 2**9
    assert window_share(0.4, 100, 1000) == window_share(0.4, 1000, 10_000)


def test_square_fools_exactly_the_points_a_worst_case_attack_can():
    w, b, x, y = linear_problem()
    eps = 0.02
    worst = y[:, 0] * (x @ w - b) - eps * w.abs().sum()

    def loss_fn(xb, yb):
        return margin_of((xb @ w - b)[:, None], yb)

    out = square(loss_fn, x, y, eps, steps=2000, seed=3)
    fooled = margin_of((out @ w - b)[:, None], y) > 0
    assert float((out - x).abs().amax()) <= eps + 1e-12
    clear = worst.abs() > 0.05 * eps * w.abs().sum()  # away from the boundary
    assert torch.equal(fooled[clear], (worst < 0)[clear])
    assert int((worst < 0).sum()) > 5  # some points can be fooled, some cannot
    assert int((worst > 0).sum()) > 5
    # PGD finds the same points on this smooth model
    pgd_out = pgd(loss_fn, x, y, eps, alpha=eps / 4, steps=20)
    assert torch.equal((margin_of((pgd_out @ w - b)[:, None], y) > 0)[clear], fooled[clear])


def test_square_is_not_fooled_by_gradient_masking():
    w, b, x, y = linear_problem(seed=1)
    eps = 0.02
    worst = y[:, 0] * (x @ w - b) - eps * w.abs().sum()

    def masked(xb, yb):  # the same classifier on inputs rounded to 1/1000: zero gradient
        return margin_of((torch.round(xb * 1000) / 1000 @ w - b)[:, None], yb)

    attackable = worst < -0.05 * eps * w.abs().sum()
    pgd_out = pgd(masked, x, y, eps, alpha=eps / 4, steps=20, random_start=False)
    sq_out = square(masked, x, y, eps, steps=2000, seed=0)
    assert torch.equal(pgd_out, x)  # sign(0) = 0: PGD never moves
    fooled_sq = masked(sq_out, y) > 0
    assert bool(fooled_sq[attackable].all()) and int(attackable.sum()) > 5


def test_square_is_seeded_and_deterministic():
    w, b, x, y = linear_problem()
    attack = make_attack("square", eps=0.2, steps=50, seed=5)

    def loss_fn(xb, yb):
        return margin_of((xb @ w - b)[:, None], yb)

    first = attack.perturb(loss_fn, x, y)
    assert torch.equal(first, attack.perturb(loss_fn, x, y))
    assert not torch.equal(first, attack.replace(seed=6).perturb(loss_fn, x, y))
    assert set((first - x).abs().round(decimals=9).unique().tolist()) <= {0.2}


def test_square_rejects_a_bad_share():
    w, b, x, y = linear_problem()
    with pytest.raises(ValueError, match=r"^p_init: expected a share in \(0, 1\], got 2"):
        square(lambda a, c: margin_of((a @ w)[:, None], c), x, y, 0.1, p_init=2)
