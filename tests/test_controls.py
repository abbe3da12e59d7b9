"""controls: excess over the controls, paired by seed, and its verdict, against hand-computed
cases; estimator_checks: the Hessian's |λ|max against its explicit eigenvalues and the
degenerate-setting rules."""

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from malleability.controls import (
    MALLEABLE,
    NOISE,
    NOISELESS,
    NOT_MALLEABLE,
    SAME_IN_EVERY_SEED,
    UNDECIDED,
    against_controls,
    excess,
    metrics,
    summary_verdict,
    verdict,
)
from malleability.estimator_checks import degenerate_settings, hessian_top_eigenvalue
from malleability.intervals import Estimate
from malleability.losses import training_loss

SEEDS = (0, 1, 2)


def test_excess_is_adversarial_minus_the_worst_control_seed_by_seed():
    adv = Estimate([0.5, 0.4, 0.3], SEEDS)
    noise = Estimate([0.1, 0.45, 0.0], SEEDS)
    rnd = Estimate([0.2, 0.1, 0.35], SEEDS)
    ex = excess("flip_rate", adv, noise, rnd)
    # per seed: 0.5 − max(0.1, 0.2), 0.4 − max(0.45, 0.1), 0.3 − max(0.0, 0.35)
    assert ex.values == pytest.approx((0.3, -0.05, -0.05)) and ex.seeds == SEEDS
    # mean(adv) − max(mean(controls)) would be 0.4 − 0.2 = 0.2: pairing matters
    assert float(ex) == pytest.approx(0.2 / 3)


def test_excess_of_rho_and_overlap_counts_a_fall_as_positive():
    adv = Estimate([0.2, 0.5, 0.8], SEEDS)
    rnd = Estimate([0.9, 0.6, 0.7], SEEDS)
    ex = excess("spearman", adv, NOISELESS["spearman"], rnd)
    # min(1, 0.9) − 0.2, min(1, 0.6) − 0.5, min(1, 0.7) − 0.8
    assert ex.values == pytest.approx((0.7, 0.1, -0.1))


def test_deterministic_noise_broadcasts_and_excess_rejects_bad_input():
    adv = Estimate([0.3, 0.3, 0.3], SEEDS)
    assert excess("flip_rate", adv, NOISELESS["flip_rate"]).values == (0.3, 0.3, 0.3)
    with pytest.raises(ValueError, match="metric"):
        excess("flips", adv, 0.0)
    with pytest.raises(ValueError, match="controls"):
        excess("flip_rate", adv)


def test_verdict_rules():
    def near(v):  # v ± 0.01: an interval of half-width 4.3 · 0.01/√3 ≈ 0.025 around v
        return Estimate([v - 0.01, v, v + 0.01], SEEDS)

    assert verdict(near(0.2)) == MALLEABLE
    assert verdict(near(0.0)) == NOT_MALLEABLE  # [−0.025, 0.025] lies below the 0.05 margin
    assert verdict(near(-0.3)) == NOT_MALLEABLE
    assert verdict(near(0.04), margin=0.05) == MALLEABLE  # above 0 wins
    spread = Estimate([-0.3, 0.0, 0.3], SEEDS)  # interval contains 0 and exceeds the margin
    assert spread.interval[0] < 0 < 0.05 < spread.interval[1]
    assert verdict(spread) == NOISE
    assert verdict(Estimate([0.5], (0,))) == UNDECIDED  # one seed: no interval
    assert verdict(0.5) == UNDECIDED
    assert verdict(Estimate([0.2] * 3, SEEDS)) == SAME_IN_EVERY_SEED  # zero width
    assert verdict(Estimate([0.2] * 2, SEEDS[:2])) == UNDECIDED
    assert verdict(Estimate([0.2, 0.3, 0.2], SEEDS)) == MALLEABLE  # ties between seeds are kept
    with pytest.raises(ValueError, match="margin"):
        verdict(near(0.1), margin=-1)


def test_against_controls_and_summary():
    adv = {"flip_rate": Estimate([0.49, 0.5, 0.51], SEEDS),
           "spearman": Estimate([0.89, 0.9, 0.91], SEEDS),
           "top_k_overlap": Estimate([0.19, 0.2, 0.21], SEEDS)}
    rnd = {"flip_rate": Estimate([0.1] * 3, SEEDS), "spearman": Estimate([0.95] * 3, SEEDS),
           "top_k_overlap": Estimate([0.9] * 3, SEEDS)}
    out = against_controls({"adversarial": adv, "random": rnd, "noise": dict(NOISELESS)})
    assert float(out["flip_rate"]["excess"]) == pytest.approx(0.4)
    assert float(out["spearman"]["excess"]) == pytest.approx(0.05)
    assert float(out["top_k_overlap"]["excess"]) == pytest.approx(0.7)
    verdicts = {k: v["verdict"] for k, v in out.items()}
    assert verdicts == {"flip_rate": MALLEABLE, "spearman": MALLEABLE,
                        "top_k_overlap": MALLEABLE}
    assert summary_verdict(verdicts) == MALLEABLE
    assert summary_verdict({**verdicts, "spearman": NOISE}) == (
        f"{MALLEABLE} (by ρ or top-K overlap: {NOISE})")


def test_metrics_of_identical_scores_are_noiseless():
    s = torch.tensor([3.0, -1.0, 2.0, 0.5, -2.0])
    assert metrics(s, s.clone(), 0.4) == pytest.approx(NOISELESS)
    flipped = torch.tensor([-3.0, -1.0, 2.0, 0.5, -2.0])  # top 2 = {0, 2}: point 0 flips
    assert metrics(s, flipped, 0.4)["flip_rate"] == 0.5


def test_hessian_top_eigenvalue_matches_the_explicit_hessian():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 3)).double()
    x, y = torch.randn(20, 3, dtype=torch.float64), torch.arange(20) % 3
    params = dict(model.named_parameters())
    names = list(params)
    flat = torch.cat([p.reshape(-1) for p in params.values()])

    def loss(vec):
        chunks, i = {}, 0
        for k in names:
            n = params[k].numel()
            chunks[k] = vec[i:i + n].reshape(params[k].shape)
            i += n
        out = torch.func.functional_call(model, chunks, (x,))
        return training_loss(out, y).mean()

    h = torch.autograd.functional.hessian(loss, flat)
    exact = float(torch.linalg.eigvalsh(h).abs().max())
    assert hessian_top_eigenvalue(model, x, y, iterations=300) == pytest.approx(exact, rel=1e-4)
    # Hessian-vector products summed over blocks of 7 rows
    assert hessian_top_eigenvalue(model, x, y, iterations=300, chunk=7) == pytest.approx(
        exact, rel=1e-4)
    # restricted to the last layer: that block's own top eigenvalue
    last = slice(flat.numel() - 15, flat.numel())
    exact_last = float(torch.linalg.eigvalsh(h[last, last]).abs().max())
    assert hessian_top_eigenvalue(model, x, y, ["2"], iterations=300) == pytest.approx(
        exact_last, rel=1e-4)


    # a parameter outside the graph (as some of a BERT's are) adds a zero block
    assert hessian_top_eigenvalue(_WithUnused(model), x, y, iterations=300) == pytest.approx(
        exact, rel=1e-4)


class _WithUnused(nn.Module):
    def __init__(self, net: nn.Module) -> None:
        super().__init__()
        self.unused = nn.Parameter(torch.ones(2, dtype=torch.float64))
        self.net = net

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x)


def test_hessian_top_eigenvalue_through_fused_attention():
    """A float32 model on scaled_dot_product_attention (the fused CPU kernel, which has no
    double backward): power iteration against the explicit Hessian's |λ|max, both on the
    math attention backend."""
    from torch.nn.attention import SDPBackend, sdpa_kernel

    class Attention(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.qkv, self.out = nn.Linear(4, 12), nn.Linear(4, 3)

        def forward(self, x: torch.Tensor) -> torch.Tensor:
            q, k, v = self.qkv(x)[:, None].chunk(3, dim=-1)
            return self.out(F.scaled_dot_product_attention(q, k, v)[:, 0].mean(1))

    torch.manual_seed(0)
    model = Attention()
    x, y = torch.randn(16, 5, 4), torch.arange(16) % 3
    names = [k for k, _ in model.named_parameters()]
    shapes = [p.shape for p in model.parameters()]

    def loss(vec):
        chunks = dict(zip(names, [c.reshape(s) for c, s in zip(
            vec.split([s.numel() for s in shapes]), shapes, strict=True)], strict=True))
        return training_loss(torch.func.functional_call(model, chunks, (x,)), y).mean()

    with sdpa_kernel([SDPBackend.MATH]):
        h = torch.autograd.functional.hessian(
            loss, torch.cat([p.detach().reshape(-1) for p in model.parameters()]))
    exact = float(torch.linalg.eigvalsh(h.double()).abs().max())
    assert hessian_top_eigenvalue(model, x, y, iterations=300) == pytest.approx(exact, rel=1e-3)

def test_degenerate_settings():
    assert len(degenerate_settings("trak", 500, 1, projection_dim=512)) == 2
    assert degenerate_settings("trak", 2000, 3, projection_dim=512) == []
    warn = degenerate_settings("if-explicit", 100, damping=1.0, hessian_top=0.5)
    assert len(warn) == 1 and "damping 1" in warn[0]
    assert degenerate_settings("if-explicit", 100, damping=1e-3, hessian_top=0.5) == []
    assert degenerate_settings("tracin", 10, 1, damping=1.0, hessian_top=0.0) == []
    warn = degenerate_settings("if-arnoldi", 100, ritz=(100, 100))
    assert len(warn) == 1 and warn[0].startswith("Arnoldi keeps 100 of the Ritz pairs of 100")
    assert degenerate_settings("if-arnoldi", 100, ritz=(100, 200)) == []
    layers = {"a": 3136, "b": 2304, "c": 640}
    warn = degenerate_settings("logra", 2000, projected_layers=layers)
    assert len(warn) == 1 and warn[0].startswith("LoGra projects 2 of 3 layers' gradients to "
                                                 "≥ n = 2000 dimensions (3136 for a)")
    assert degenerate_settings("logra", 4000, projected_layers=layers) == []
    assert not math.isnan(hessian_top_eigenvalue(nn.Linear(2, 2), torch.rand(4, 2),
                                                  torch.tensor([0, 1, 0, 1])))


def test_logra_projected_dims_are_the_projections_rank_per_layer():
    """k = √proj_dim rows per factor: a layer's projected gradients P_out G P_inᵀ span
    min(k, out)·min(k, in + bias) dimensions (the rank of P_out ⊗ P_in on out × (in + 1))."""
    from malleability.estimators import make_estimator

    model = nn.Sequential(nn.Linear(48, 96), nn.ReLU(), nn.Linear(96, 10, bias=False))
    assert make_estimator("logra", proj_dim=4096).projected_dims(model) == {
        "0": 64 * 49, "2": 10 * 64}
    assert make_estimator("logra", proj_dim=256).projected_dims(model, ["2.weight"]) == {
        "2": 10 * 16}
    # measured: the rank of P_out ⊗ P_in (16 rows each) on the second layer's 10 × 96 weights
    g = torch.Generator().manual_seed(0)
    p_out, p_in = (torch.randn(16, d, generator=g, dtype=torch.float64) for d in (10, 96))
    assert int(torch.linalg.matrix_rank(torch.kron(p_out, p_in))) == 160
