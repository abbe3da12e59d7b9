"""κ routine against known spectra and numpy; thresholds; feature collapse."""

import math

import numpy as np
import pytest
import torch

from malleability import effective_condition_number, mean_pairwise_cosine, width_threshold
from malleability.diagnostic import diagnose
from malleability.spectral import softmax_amplification

F64 = torch.float64


def _with_singular_values(n, d, s, seed=0):
    rng = np.random.default_rng(seed)
    u, _ = np.linalg.qr(rng.standard_normal((n, len(s))))
    v, _ = np.linalg.qr(rng.standard_normal((d, len(s))))
    return torch.from_numpy(u @ np.diag(s) @ v.T)


@pytest.mark.parametrize("shape", [(40, 10), (10, 40)])
def test_known_spectrum(shape):
    s = np.geomspace(10.0, 0.1, 10)
    report = effective_condition_number(_with_singular_values(*shape, s))
    assert report.r == 10 and report.rank == 10
    assert report.kappa == pytest.approx((s[0] / s[-1]) ** 2, rel=1e-8)
    assert report.kappa_effective == pytest.approx(report.kappa, rel=1e-12)
    np.testing.assert_allclose(report.eigenvalues.numpy(), s**2, rtol=1e-8)


def test_rank_deficient_reports_rank_and_infinite_kappa():
    s = np.array([5.0, 2.0, 1.0, 0.5, 0, 0])
    report = effective_condition_number(_with_singular_values(50, 6, s))
    assert report.rank == 4 and report.r == 6
    assert math.isinf(report.kappa)
    assert report.kappa_effective == pytest.approx((5.0 / 0.5) ** 2, rel=1e-8)
    assert (report.eigenvalues >= 0).all()


@pytest.mark.parametrize("shape", [(30, 80), (300, 25)])
def test_matches_numpy_eigvalsh(shape):
    x = torch.randn(*shape, generator=torch.Generator().manual_seed(1), dtype=F64)
    eig = np.linalg.eigvalsh((x @ x.T).numpy())[::-1][: min(shape)]
    report = effective_condition_number(x)
    assert report.kappa == pytest.approx(eig[0] / eig[-1], rel=1e-8)


def test_streamed_and_in_memory_agree():
    x = torch.randn(500, 20, generator=torch.Generator().manual_seed(2), dtype=F64)
    a = effective_condition_number(x, block_rows=37)
    b = effective_condition_number(x, block_rows=10_000)
    np.testing.assert_allclose(a.eigenvalues.numpy(), b.eigenvalues.numpy(), rtol=1e-11)


def test_randomized_top_k_matches_exact():
    s = np.geomspace(100.0, 1.0, 30)
    x = _with_singular_values(200, 60, s, seed=3)
    report = effective_condition_number(x, method="randomized", k=8)
    np.testing.assert_allclose(report.eigenvalues.numpy(), s[:8] ** 2, rtol=1e-6)
    assert report.kappa == pytest.approx((s[0] / s[7]) ** 2, rel=1e-6)


def test_thresholds_and_overflow():
    assert width_threshold(10.0, 100, 6) == pytest.approx(1e6 * 100 * math.log(100))
    assert width_threshold(10.0, 100, 2) == pytest.approx(1e2 * 100 * math.log(100))
    assert width_threshold(1e60, 100, 6) == math.inf
    assert width_threshold(math.inf, 100, 2) == math.inf


def test_mean_pairwise_cosine():
    z = torch.tensor([[1.0, 0.0], [0.0, 3.0], [2.0, 2.0]], dtype=F64)
    brute = np.mean([0.0, 1 / math.sqrt(2), 1 / math.sqrt(2)])
    assert mean_pairwise_cosine(z) == pytest.approx(brute)
    assert mean_pairwise_cosine(torch.ones(5, 3, dtype=F64)) == pytest.approx(1.0)


def test_diagnose_attention_kappa_is_measured_beside_cube():
    x = torch.randn(20, 50, generator=torch.Generator().manual_seed(4), dtype=F64)
    x = x / x.norm(dim=1, keepdim=True)
    d = diagnose(x)
    eig = np.linalg.eigvalsh((x @ x.T).numpy())
    assert d.kappa_cubed == pytest.approx((eig[-1] / eig[0]) ** 3, rel=1e-8)
    unit = x.numpy() @ (x.T @ x).numpy()
    unit /= np.linalg.norm(unit, axis=1, keepdims=True)
    attn = np.linalg.eigvalsh(unit @ unit.T)
    assert d.attention.kappa == pytest.approx(attn[-1] / attn[0], rel=1e-6)
    assert d.attention.kappa > d.inputs.kappa  # amplification survives row normalisation
    assert d.threshold_attention > d.threshold_relu
    assert set(d.collapse) == {"raw", "linear", "softmax", "exponential"}
    # intrinsic sensitivity (Def. C.12, Prop. C.13): unit rows, ‖Y‖ = √n, λ = 1e-3
    s_attn = eig[-1] ** 2 * math.sqrt(20) * math.sqrt(20) / 1e-6
    s_relu = (1 + math.pi) / (2 * math.pi) * math.sqrt(20) * math.sqrt(20) / 1e-6
    assert d.sensitivity["attention"] == pytest.approx(s_attn, rel=1e-10)
    assert d.sensitivity["relu"] == pytest.approx(s_relu, rel=1e-10)
    assert d.sensitivity["gap"] == pytest.approx(s_attn / s_relu, rel=1e-10)


def test_bad_inputs():
    with pytest.raises(ValueError, match="^x: expected a 2-d array"):
        effective_condition_number(torch.ones(3))
    with pytest.raises(ValueError, match="^x: contains NaN"):
        effective_condition_number(torch.full((3, 2), float("nan")))
    with pytest.raises(ValueError, match="^k: expected at most"):
        effective_condition_number(torch.ones(4, 3), method="randomized", k=5)
    with pytest.raises(ValueError, match="^x: has no eigenvalue above"):
        effective_condition_number(torch.zeros(4, 3))


def _exact_softmax_log_kappa(x: torch.Tensor, temperature: float) -> float:
    """ln κ of ΦΦᵀ, Φ = expm(XXᵀ/τ) X, over its nonzero eigenvalues (brute force)."""
    g = x @ x.T
    phi = torch.linalg.matrix_exp(g / temperature) @ x
    eig = torch.linalg.eigvalsh(phi @ phi.T).flip(0)[:min(x.shape)]
    return math.log(float(eig[0] / eig[-1]))


@pytest.mark.parametrize(("n", "d"), [(5, 8), (9, 4)])  # full row rank, and rank d < n
@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_softmax_amplification_matches_the_exact_kernel_spectrum(n, d, temperature):
    x = torch.rand(n, d, generator=torch.Generator().manual_seed(n + d), dtype=torch.float64)
    x = x / float(torch.linalg.matrix_norm(x, ord=2)) * 1.8  # λ₁ = 3.24: e^{2λ₁} stays exact
    amp = softmax_amplification(x, temperature)
    assert amp.rank == min(n, d)
    assert amp.log_kappa_softmax == pytest.approx(_exact_softmax_log_kappa(x, temperature),
                                                  rel=1e-8)
    assert amp.log_kappa_linear == pytest.approx(3 * amp.log_kappa)


def test_softmax_amplification_exceeds_the_cubic_exactly_when_the_gap_exceeds_ln_kappa():
    # G with eigenvalues 1.5 and 1: gap 0.5 against ln κ = ln 1.5 ≈ 0.405
    x = torch.diag(torch.tensor([1.5, 1.0], dtype=torch.float64).sqrt())
    for temperature, exceeds in ((1.0, True), (2.0, False)):
        amp = softmax_amplification(x, temperature)
        exact = _exact_softmax_log_kappa(x, temperature)
        assert amp.exceeds_linear is exceeds
        assert (exact > 3 * math.log(1.5)) is exceeds
    with pytest.raises(ValueError, match="^temperature: expected a positive number"):
        softmax_amplification(x, 0.0)
