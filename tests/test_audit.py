"""audit(), the influence estimators and the small classifiers, against exact identities,
refitting and hand-written gradients."""

import json

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional as F

from malleability.attacks import make_attack, perturb_rows
from malleability.auditing import audit, load_split, representation, spectral_step
from malleability.classifiers import MLPClassifier, VisionTransformer, fit_classifier
from malleability.estimators import ESTIMATORS, influence_scores
from malleability.jacobian_ntk import jacobian_ntk
from malleability.spectral import effective_condition_number


@pytest.fixture(scope="module")
def digits(small_classifier):
    """40 training and 12 test digits of classes 0–2, as [0, 1] pixels and class indices."""
    return small_classifier[1]


@pytest.fixture(scope="module")
def mlp(small_classifier):
    return small_classifier[0]  # P = 423


def test_eps_zero_gives_no_flips_and_rank_one(mlp, digits):
    for estimator in ("ntk-loo", "tracin"):
        r = audit(mlp, *digits, estimator=estimator, eps=0.0, seeds=(0, 1))
        assert r.flip_rate == 0.0 and r.spearman == pytest.approx(1.0)
        assert r.top_k_overlap == 1.0


def test_identical_checkpoints_agree_exactly(mlp, digits):
    state = mlp.state_dict()
    r = audit(mlp, *digits, eps=0.0, checkpoints=[state, state])
    agreement = r.checkpoint_agreement
    assert agreement["spearman"] == [[1.0, 1.0], [1.0, 1.0]]
    assert agreement["top_k_overlap"] == [[1.0, 1.0], [1.0, 1.0]]
    assert agreement["ensemble"]["adversarial"]["flip_rate"] == 0.0
    json.loads(r.to_json())  # strict JSON (allow_nan=False)


def test_attack_moves_scores_and_report_is_strict_json(mlp, digits):
    r = audit(mlp, *digits, attack="fgsm", eps=0.3, seeds=(0, 1, 2))
    d = json.loads(r.to_json())
    assert 0.0 <= d["flip_rate"]["mean"] <= 1.0 and d["spearman"]["mean"] < 1.0
    assert d["rank"] == r.rank <= 40 and set(d["width_threshold"]) == {"mlp_attention", "relu"}
    assert d["flip_rate"]["low"] is not None  # three seeds give an interval


def test_ntk_loo_equals_refitting_without_each_point(mlp, digits):
    x, y, xt, yt = digits
    ridge = 1e-2
    scores = influence_scores(mlp, x, y, xt, yt, "ntk-loo", ridge=ridge)
    k_all = jacobian_ntk(mlp, torch.cat([x, xt]))
    n = x.shape[0]
    k, k_t = k_all[:n, :n], k_all[n:, :n]
    lam = ridge  # absolute λ: the package's one ridge convention
    targets = F.one_hot(y, 3).double()

    def test_loss(keep):
        kk = k[keep][:, keep]
        alpha = torch.linalg.solve(kk + lam * torch.eye(len(keep), dtype=kk.dtype), targets[keep])
        f = k_t[:, keep] @ alpha
        return F.cross_entropy(f, yt, reduction="none")

    full = test_loss(list(range(n)))
    refit = torch.stack([(test_loss([j for j in range(n) if j != i]) - full).mean()
                         for i in range(n)])
    torch.testing.assert_close(scores, refit, rtol=1e-6, atol=1e-10)


def test_tracin_equals_hand_written_gradient_dot_products(mlp, digits):
    x, y, xt, yt = digits
    params = [p for p in mlp.parameters()]

    def grad(xi, yi):
        loss = F.cross_entropy(mlp(xi[None]), yi[None])
        return torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)])

    g_train = torch.stack([grad(a, b) for a, b in zip(x, y, strict=True)])
    g_test = torch.stack([grad(a, b) for a, b in zip(xt, yt, strict=True)])
    want = (g_train @ g_test.T).mean(1).double()
    # dattri projects gradients to 512 dimensions only when they are longer; here P = 423
    got = influence_scores(mlp, x, y, xt, yt, "tracin")
    torch.testing.assert_close(got.double(), want, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("estimator", [e for e in ESTIMATORS if e not in
                                       ("ntk-loo", "tracin")])
def test_dattri_estimators_give_finite_scores(mlp, digits, estimator):
    x, y, xt, yt = digits
    scores = influence_scores(mlp, x, y, xt, yt, estimator)
    assert scores.shape == (40,) and bool(torch.isfinite(scores).all())


def test_token_representation_gets_both_grams():
    torch.manual_seed(0)
    vit = VisionTransformer(dim=8, depth=1, heads=2, num_classes=3, attention="linear")
    x = torch.rand(10, 1, 8, 8)
    rep = representation(vit, x, "blocks.0")
    torch.testing.assert_close(rep, vit.embed(vit.patches(x)) + vit.position)
    s = spectral_step(rep)
    tokens = effective_condition_number(rep.reshape(-1, 8).double())
    assert s["per_token"]["kappa"] == tokens.kappa_effective and s["per_token"]["rows"] == 160
    assert s["per_example"]["columns"] == 16 * 8


def test_attack_stays_in_general_bounds():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Flatten(), nn.Linear(4, 3))
    x = torch.rand(6, 1, 2, 2) * 2 - 1
    y = torch.tensor([0, 1, 2, 0, 1, 2])
    rows = torch.tensor([0, 3])
    attack = make_attack("pgd", eps=0.25, alpha=0.05, steps=10, seed=0)
    out = perturb_rows([model], x, y, rows, attack, (-1.0, 1.0))
    assert (out - x).abs().amax() <= 0.25 + 1e-6 and out.min() >= -1 and out.max() <= 1
    assert torch.equal(out[[1, 2, 4, 5]], x[[1, 2, 4, 5]]) and not torch.equal(out[0], x[0])


def test_one_line_errors(mlp, digits):
    x, y, xt, yt = digits
    conv = nn.Sequential(nn.Linear(8, 3))  # (n, 1, 8, 8) → (n, 1, 8, 3)
    with pytest.raises(ValueError, match=r"^model: expected outputs of shape \(n, C\) or \(n,\)"):
        audit(conv, x, y, xt, yt)
    with pytest.raises(ValueError, match=r"^layer: no submodule named 'nope'"):
        audit(mlp, x, y, xt, yt, layer="nope")
    with pytest.raises(ValueError, match=r"^x_train: expected values in bounds \[0, 1\]"):
        audit(mlp, x * 2, y, xt, yt)
    with pytest.raises(ValueError, match=r"^estimator: expected one of"):
        audit(mlp, x, y, xt, yt, estimator="magic")


def test_load_split_from_npz_and_pt(tmp_path, digits):
    x, y, _, _ = digits
    np.savez(tmp_path / "d.npz", x=x.numpy(), y=y.numpy())
    torch.save({"x": x, "y": y}, tmp_path / "d.pt")
    for name in ("d.npz", "d.pt"):
        xl, yl = load_split(tmp_path / name, None, "x_train")
        assert torch.equal(xl, x) and torch.equal(yl, y)


@pytest.mark.parametrize("kind", ["softmax", "linear"])
def test_self_attention_matches_its_formula(kind):
    from malleability.classifiers import SelfAttention

    torch.manual_seed(0)
    att = SelfAttention(4, 1, kind)
    h = torch.randn(3, 5, 4)
    q, k, v = att.qkv(h).split(4, dim=-1)
    s = q @ k.transpose(1, 2)
    if kind == "softmax":
        mixed = torch.softmax(s / 2.0, dim=-1) @ v
    else:
        mixed = s @ v
        mixed = mixed / mixed.norm(dim=-1, keepdim=True)
    torch.testing.assert_close(att(h), att.out(mixed))


def test_fit_classifier_snapshots_and_seeded_init(digits):
    x, y, _, _ = digits
    a, b = MLPClassifier(hidden=6, num_classes=3, seed=3), MLPClassifier(hidden=6, num_classes=3,
                                                                        seed=3)
    assert all(torch.equal(p, q) for p, q in zip(a.parameters(), b.parameters(), strict=True))
    snaps = fit_classifier(a, x, y, epochs=4, checkpoint_every=2)
    assert len(snaps) == 2 and torch.equal(snaps[-1]["net.1.weight"], a.net[1].weight)


def test_report_json_marks_infinities_and_round_trips(mlp, digits):
    from malleability.jsonsafe import dumps_strict, loads_strict

    r = audit(mlp, *digits, estimator="tracin", eps=0.0)
    plain = r.to_dict()
    plain["representation"]["per_example"]["kappa_d"] = float("inf")  # as for a singular Gram
    assert loads_strict(dumps_strict(plain))["representation"]["per_example"]["kappa_d"] == \
        float("inf")
    assert json.loads(r.to_json())["flip_rate"]["mean"] == 0.0


def test_controls_beside_the_attack(mlp, digits):
    from malleability.attacks import RandomSign
    from malleability.controls import NOISELESS
    from malleability.measure import measure

    x, y, xt, yt = digits
    r = audit(mlp, *digits, estimator="tracin", attack="fgsm", eps=0.2, seeds=(0, 1, 2))
    # deterministic estimator: its noise is exact, not measured
    assert r.controls["noise"] == NOISELESS and r.diagnostics["rank_stability"] == 1.0
    # the random control is measure() with random-sign at the same ε, seed by seed
    est = ESTIMATORS["tracin"]()
    for i, seed in enumerate((0, 1, 2)):
        m = measure(mlp, x, y, xt, yt, est, RandomSign(eps=0.2, seed=seed), seed=0)
        assert r.controls["random"]["flip_rate"].values[i] == m.flip_rate
        adv = r.flip_rate.values[i]
        assert r.excess["flip_rate"].values[i] == pytest.approx(adv - max(0.0, m.flip_rate))
    # a verdict is decided only from 3 seeds whose excesses are not all equal
    excess = r.excess["flip_rate"].values
    decided = len(excess) >= 3 and len(set(excess)) > 1
    assert r.verdict.split(" (")[0] in (("malleable", "not malleable",
                                         "not distinguishable from noise") if decided
                                        else ("no spread over seeds",) if len(excess) >= 3
                                        else ("too few seeds",))
    d = json.loads(r.to_json())
    assert d["controls"]["noise"]["flip_rate"] == 0.0 and "low" in d["excess"]["spearman"]


def test_randomized_estimator_noise_is_two_seeds_without_perturbation(mlp, digits):
    from malleability.auditing import NOISE_PARTNER
    from malleability.metrics import flip_rate, spearman

    x, y, xt, yt = digits
    r = audit(mlp, *digits, estimator="trak", eps=0.0, seeds=(0, 1))
    for i, seed in enumerate((0, 1)):
        a = influence_scores(mlp, x, y, xt, yt, "trak", seed=seed)
        b = influence_scores(mlp, x, y, xt, yt, "trak", seed=seed + NOISE_PARTNER)
        assert r.controls["noise"]["flip_rate"].values[i] == flip_rate(a, b, 0.1)
        assert r.diagnostics["rank_stability"].values[i] == spearman(a, b)
    # ε = 0: neither perturbation moves anything, so the excess is 0 − noise ≤ 0
    assert r.flip_rate == 0.0 and r.controls["random"]["flip_rate"] == 0.0
    assert all(v <= 0 for v in r.excess["flip_rate"].values)
    assert any("single checkpoint" in w for w in r.diagnostics["warnings"])


def test_dattri_draws_no_progress_bars_and_gets_its_tqdm_back(mlp, digits, capfd):
    import dattri.algorithm.base as dattri_base
    import dattri.algorithm.trak as dattri_trak
    from tqdm import tqdm
    for estimator in ("trak", "if-explicit"):
        audit(mlp, *digits, estimator=estimator, eps=0.1, seeds=(0, 1))
    err = capfd.readouterr().err
    assert "calculating gradient" not in err and "it/s" not in err, err
    assert dattri_trak.tqdm is tqdm and dattri_base.tqdm is tqdm


def test_dattri_bars_come_back_only_after_the_last_overlapping_user_leaves():
    import threading

    import dattri.algorithm.trak as dattri_trak
    from tqdm import tqdm

    from malleability.estimators.dattri import _SILENT_BARS

    def other_user():
        with _SILENT_BARS:
            assert dattri_trak.tqdm is not tqdm

    with _SILENT_BARS:
        with _SILENT_BARS:
            assert dattri_trak.tqdm is not tqdm
        worker = threading.Thread(target=other_user)
        worker.start()
        worker.join()
        assert dattri_trak.tqdm is not tqdm
        assert list(dattri_trak.tqdm(range(3))) == [0, 1, 2]  # still iterates, silently
    assert dattri_trak.tqdm is tqdm
