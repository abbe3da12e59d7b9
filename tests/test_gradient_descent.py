"""Gradient descent in the kernel regime (ntk.py: ntk_step, kernel_gd, kernel_gd_steps;
training.py: train_gd) against explicit iterations and autograd, and the width rate of
repro/experiments/ntk_distance_gd.py against exact power laws."""

import math

import numpy as np
import pytest
import torch

from malleability._validation import NonFiniteError
from malleability.intervals import Estimate
from malleability.losses import Loss, per_example_loss
from malleability.models import TwoLayerNet
from malleability.ntk import (
    empirical_ntk,
    infinite_ntk,
    kernel_gd,
    kernel_gd_steps,
    network_ntk_top,
    ntk_step,
)
from malleability.repro.experiments.ntk_distance_gd import log_slope, width_rate
from malleability.training import train_gd


def psd(n: int, seed: int, null: int = 0) -> torch.Tensor:
    gen = torch.Generator().manual_seed(seed)
    a = torch.randn(n, n - null, generator=gen, dtype=torch.float64)
    return a @ a.T


def explicit_gd(k, k_t, f0, f0_t, y, lr, steps):
    """f_{s+1} = f_s − (η/n) Θ (f_s(X) − y), step by step."""
    f, f_t, n = f0.clone(), f0_t.clone(), k.shape[0]
    losses = [float(0.5 * (f - y).square().sum(1).mean())]
    for _ in range(steps):
        r = f - y
        f, f_t = f - lr / n * k @ r, f_t - lr / n * k_t @ r
        losses.append(float(0.5 * (f - y).square().sum(1).mean()))
    return f, f_t, losses


@pytest.mark.parametrize("null", [0, 3])  # a singular kernel: its null space keeps ηt/n
def test_kernel_gd_matches_the_explicit_iteration(null):
    n, n_t, c = 12, 5, 3
    k_all = psd(n + n_t, 0, null)
    k, k_t = k_all[:n, :n], k_all[n:, :n]
    gen = torch.Generator().manual_seed(1)
    f0, f0_t, y = (torch.randn(*s, generator=gen, dtype=torch.float64)
                   for s in ((n, c), (n_t, c), (n, c)))
    lr = ntk_step(k, 0.9)
    for steps in (0, 1, 7, 60):
        want, want_t, _ = explicit_gd(k, k_t, f0, f0_t, y, lr, steps)
        got, got_t = kernel_gd(k, k_t, f0, f0_t, y, lr, steps)
        assert torch.allclose(got, want, atol=1e-9) and torch.allclose(got_t, want_t, atol=1e-9)


def test_ntk_step_and_the_calibrated_step_count():
    k = psd(10, 2)
    top = float(np.linalg.eigvalsh(k.numpy())[-1])
    assert ntk_step(k) == pytest.approx(10 / top) and ntk_step(k, 0.5) == pytest.approx(5 / top)
    with pytest.raises(ValueError, match=r"^scale: expected a number in \(0, 2\)"):
        ntk_step(k, 2.0)
    y = torch.randn(10, 2, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    zero = torch.zeros_like(y)
    lr = ntk_step(k)
    _, _, losses = explicit_gd(k, k[:1], zero, zero[:1], y, lr, 400)
    for tol in (0.5, 0.1, 0.01):
        first = next(t for t, v in enumerate(losses) if v <= tol * losses[0])
        assert kernel_gd_steps(k, zero, y, lr, tol, 400) == first
    assert kernel_gd_steps(k, zero, y, lr, 1e-30, 50) == 50  # never reached: the cap


def test_train_gd_is_gradient_descent_on_the_mean_mse():
    gen = torch.Generator().manual_seed(4)
    x = torch.randn(9, 5, generator=gen, dtype=torch.float64)
    y = torch.randn(9, 3, generator=gen, dtype=torch.float64)
    net = TwoLayerNet(5, 7, 3, seed=5)
    w = net.weight.detach().clone().requires_grad_(True)
    want = []
    for _ in range(6):  # autograd, an independent gradient
        loss = per_example_loss(net.head(x, w), y, Loss.MSE).mean()
        want.append(float(loss))
        (g,) = torch.autograd.grad(loss, w)
        w = (w - 0.3 * g).detach().requires_grad_(True)
    want.append(float(per_example_loss(net.head(x, w), y, Loss.MSE).mean()))
    losses = train_gd(net, x, y, lr=0.3, steps=6)
    assert losses == pytest.approx(want, rel=1e-12)
    assert torch.allclose(net.weight, w.detach(), atol=1e-12)


def test_wide_networks_follow_the_infinite_width_kernel_trajectory():
    """The NTK theorem on a small case: under GD with the NTK step the distance between the
    network's outputs and Θ_∞'s GD trajectory from the same start shrinks with width."""
    gen = torch.Generator().manual_seed(6)
    x = torch.randn(20, 4, generator=gen, dtype=torch.float64)
    x_t = torch.randn(8, 4, generator=gen, dtype=torch.float64)
    y = torch.sign(x[:, :1])
    k, k_t = infinite_ntk(x), infinite_ntk(x_t, x)
    lr = ntk_step(k)
    distances = []
    for width in (64, 1024, 16384):
        net = TwoLayerNet(4, width, 1, seed=7)
        with torch.no_grad():
            f0, f0_t = net(x), net(x_t)
        train_gd(net, x, y, lr, 100)
        _, kernel_t = kernel_gd(k, k_t, f0, f0_t, y, lr, 100)
        with torch.no_grad():
            distances.append(float((net(x_t) - kernel_t).norm() / kernel_t.norm()))
    assert distances[0] > distances[1] > distances[2] and distances[2] < 0.05


def test_train_gd_names_a_non_finite_loss():
    net = TwoLayerNet(3, 8, 1, seed=0)
    x = torch.ones(4, 3, dtype=torch.float64) * 1e200  # f² overflows float64
    with pytest.raises(NonFiniteError, match=r"^lr: the gradient-descent training loss is not "
                                             r"finite from step 0 on"):
        train_gd(net, x, torch.ones(4, 1, dtype=torch.float64), lr=1.0, steps=2)


def test_width_rate_recovers_exact_power_laws_per_seed():
    widths = [16, 256, 4096]
    assert log_slope(widths, [3 * m**-0.5 for m in widths]) == pytest.approx(-0.5)
    assert math.isnan(log_slope(widths, [1.0, 0.0, 2.0]))
    seeds = (0, 1, 2)
    values = [Estimate([2 * m**a for a in (-0.5, -0.4, -0.6)], seeds) for m in widths]
    rate = width_rate(widths, values)
    assert rate.values == pytest.approx((-0.5, -0.4, -0.6)) and rate.interval[0] < -0.5


def test_trajectory_claims_decide_each_rate_and_their_paired_gap():
    """Table 1 in the NTK theorem's sense: per-seed power laws m^α of the distance to Θ_∞'s GD
    trajectory give each architecture's claim and the paired gap α(MLP-Attn) − α(2L-ReLU)."""
    from malleability.repro.experiments.ntk_distance_gd import GEOMETRIC, paper_claims
    from malleability.repro.seeds import merge_seeds

    widths, rates = (16, 256, 4096), {"relu": (-0.5, -0.45, -0.55), "attn": (-0.2, -0.1, -0.2)}
    cells = [{"cell": {"task": "t", "model": model, "optimizer": "gd", "width": m, "seed": s},
              "result": {"function_distance_trained": 10.0 * m ** 0.1,
                         "distance_to_kernel_gd": 3.0 * m ** alpha[s]}}
             for model, alpha in rates.items() for m in widths for s in range(3)]
    claims = {c.key: c for c in paper_claims(merge_seeds(cells, GEOMETRIC))}
    relu, attn = claims[("table1_trajectory", "t", "relu")], claims[("table1_trajectory", "t",
                                                                       "attn")]
    assert relu.verdict == "agrees" and relu.measured.startswith("rate α = -0.5 [")
    assert attn.verdict == "disagrees" and attn.measured.startswith("rate α = -0.167 [")
    gap = claims[("table1_trajectory_gap", "t")]
    assert gap.verdict == "agrees" and gap.measured.startswith("α(MLP-Attn) − α(2L-ReLU) = 0.333 [")
    assert gap.measured.endswith("both on m = 16/256/4096")
    # MLP-Attn without m = 4096: the gap compares both rates on m = 16/256 only
    partial = [c for c in cells if c["cell"]["model"] == "relu" or c["cell"]["width"] < 4096]
    gap = {c.key: c for c in paper_claims(merge_seeds(partial, GEOMETRIC))}[
        ("table1_trajectory_gap", "t")]
    assert gap.measured.startswith("α(MLP-Attn) − α(2L-ReLU) = 0.333 [")
    assert gap.measured.endswith("both on m = 16/256")
    # Adam records have no trajectory: only the paper's quantity is claimed
    adam = [{**c, "cell": {**c["cell"], "optimizer": "adam"},
             "result": {**c["result"], "distance_to_kernel_gd": None}} for c in cells]
    assert {c.key[0] for c in paper_claims(merge_seeds(adam, GEOMETRIC))} == {"table1_optimizer"}


def test_network_ntk_top_is_the_top_eigenvalue_of_the_full_jacobian_gram():
    """λ_max(J Jᵀ) over all n·C outputs against the explicit Jacobian (torch.func.jacrev); with
    one output it is the closed-form Θ_m's; with three at m = 5 the cross-output blocks lift
    it above Θ_m's (a diagonal block of J Jᵀ); at m = 20,000 it is Θ_∞'s."""
    h = torch.randn(9, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    net = TwoLayerNet(4, 5, 3, seed=1)
    jac = torch.func.jacrev(lambda w: net.head(h, w))(net.weight.detach()).reshape(27, 20)
    top = float(torch.linalg.eigvalsh(jac @ jac.T)[-1])
    assert network_ntk_top(net, h) == pytest.approx(top, rel=1e-6)
    assert top > 1.05 * float(torch.linalg.eigvalsh(empirical_ntk(net, h))[-1])
    single = TwoLayerNet(4, 5, 1, seed=1)
    assert network_ntk_top(single, h) == pytest.approx(
        float(torch.linalg.eigvalsh(empirical_ntk(single, h))[-1]), rel=1e-6)
    # Monte Carlo: as m → ∞ the cross-output blocks vanish and Θ_m → Θ_∞ (A_rc² = 1)
    wide = TwoLayerNet(4, 20000, 3, seed=2)
    assert network_ntk_top(wide, h) == pytest.approx(
        float(torch.linalg.eigvalsh(infinite_ntk(h))[-1]), rel=0.03)
    with pytest.raises(ValueError, match=r"^h: expected 4 columns"):
        network_ntk_top(net, h[:, :3])


def test_a_diverged_gd_run_is_recorded_with_its_step_against_the_network_bound(monkeypatch,
                                                                              tmp_path):
    """The tiny preset's GD cell as it is (it converges) and with the network's step forced
    10³⁰× larger (the kernel's kept): the run overflows, the cell keeps the kernel's side and
    the network at initialisation, and nulls what a trained network would have given."""
    from malleability.repro.experiments import ntk_distance_gd as gd
    from malleability.repro.problem import RunContext
    from malleability.repro.runner import load_preset

    settings = load_preset("tests/data/tiny.toml").experiments["ntk_distance_gd"]
    cell = next(c for c in gd.cells(settings) if c["optimizer"] == "gd")
    stable = gd.run(settings, {**cell, "seed": 0}, RunContext(tmp_path, progress=False))
    assert stable["diverged"] is False and stable["network_step_ratio"] > 0
    assert all(stable[k] is not None for k in gd.DIVERGED_MISSING)
    monkeypatch.setattr(gd, "train_gd", lambda net, x, y, lr, steps:
                        train_gd(net, x, y, 1e30 * lr, steps))
    broken = gd.run(settings, {**cell, "seed": 0}, RunContext(tmp_path, progress=False))
    assert list(broken) == list(stable) and broken["diverged"] is True
    assert all(broken[k] is None for k in gd.DIVERGED_MISSING)
    for key in ("function_distance_init", "initial_train_loss", "network_step_ratio",
                "kernel_train_loss"):
        assert broken[key] == pytest.approx(stable[key])


def test_a_diverged_seed_takes_its_width_out_of_the_rate(tmp_path):
    """Seed 1 diverged at m = 16: the rate is fitted on m = 256, 4096 in every seed, the claim
    names those widths, and the training table counts the diverged seed."""
    from malleability.repro.blocks import Table
    from malleability.repro.experiments.ntk_distance_gd import GEOMETRIC, paper_claims, section
    from malleability.repro.seeds import merge_seeds

    cells = [{"cell": {"task": "t", "model": "relu", "optimizer": "gd", "width": m, "seed": s},
              "result": {**dict.fromkeys(("lr", "network_step_ratio", "steps",
                                          "kernel_train_loss", "ntk_test_accuracy"), 1.0),
                         "test_accuracy": 0.5, "final_train_loss": 0.1,
                         "function_distance_trained": 3.0 * m ** (-0.5 - 0.1 * s),
                         "distance_to_kernel_gd": 2.0 * m ** -0.5, "diverged": False}}
             for m in (16, 256, 4096) for s in range(3)]
    cells[1]["result"] = {**cells[1]["result"], "function_distance_trained": None,
                          "distance_to_kernel_gd": None, "diverged": True}
    merged = merge_seeds(cells, GEOMETRIC)
    claims = {c.key: c for c in paper_claims(merged)}
    paper = claims[("table1_optimizer", "t", "relu", "gd")]
    assert paper.measured.startswith("rate α = -0.6 [") and "m = 256/4096)" in paper.measured
    # a width run in one seed only stays out of the rate of the others
    extra = [{**c, "cell": {**c["cell"], "width": 65536}} for c in cells if
             c["cell"]["width"] == 4096 and c["cell"]["seed"] == 2]
    paper = {c.key: c for c in paper_claims(merge_seeds(cells + extra, GEOMETRIC))}[
        ("table1_optimizer", "t", "relu", "gd")]
    assert paper.measured.startswith("rate α = -0.6 [") and "m = 256/4096)" in paper.measured
    # a model measured at one width only has no rate, so no claim
    alone = [{**c, "cell": {**c["cell"], "model": "attn"}} for c in cells if
             c["cell"]["width"] == 16]
    assert {c.key for c in paper_claims(merge_seeds(alone, GEOMETRIC))} == set()
    tables = [b for b in section(merged, tmp_path) if isinstance(b, Table)]
    assert [r[6] for r in tables[1].rows] == ["1 of 3", "no", "no"]
    assert tables[0].rows[0][-1].endswith("(m = 256/4096)")
