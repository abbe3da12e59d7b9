"""Malleability metrics on hand-made cases; the measurement and interventions end to end."""

import math

import numpy as np
import pytest
import torch
from scipy.stats import spearmanr

from malleability import (
    ARCHITECTURES,
    AttackSettings,
    InfluenceSettings,
    ModelSettings,
    TwoLayerNet,
)
from malleability.data import load_dataset
from malleability.estimators import NTKLOO
from malleability.influence import network_influence
from malleability.interventions import Intervention, intervene, report_epochs
from malleability.measure import measure
from malleability.metrics import flip_rate, spearman, top_fraction, top_k_overlap
from malleability.training import TrainSettings, train

F64 = torch.float64


def test_flip_rate_identical_and_negated():
    s = torch.arange(-10, 30, dtype=F64) / 10  # holds an exact 0
    assert flip_rate(s, s.clone(), 0.1) == 0.0
    negated = s.clone()
    top = top_fraction(s, 0.1)
    negated[top] *= -1
    assert flip_rate(s, negated, 0.1) == 1.0
    half = s.clone()
    half[top[:2]] *= -1
    assert flip_rate(s, half, 0.1) == 0.5  # |S| = ⌈0.1·40⌉ = 4
    assert flip_rate(s, -s, fraction=1.0) == pytest.approx(39 / 40)  # the 0 keeps its sign


def test_top_fraction_size_and_order():
    s = torch.tensor([0.3, -1.0, 2.0, 0.5, 0.1], dtype=F64)
    assert top_fraction(s, 0.1).tolist() == [2]  # ⌈0.5⌉ = 1
    assert top_fraction(s, 0.5).tolist() == [2, 3, 0]


@pytest.mark.parametrize("seed", [0, 1])
def test_spearman_matches_scipy_with_ties(seed):
    rng = np.random.default_rng(seed)
    a = rng.integers(0, 6, 50).astype(float)
    b = a + rng.normal(0, 2, 50).round()
    expected = spearmanr(a, b).statistic
    assert spearman(torch.from_numpy(a), torch.from_numpy(b)) == pytest.approx(expected)


def test_top_k_overlap_hand_made():
    s = torch.arange(10, dtype=F64)  # top 20% = {9, 8}
    assert top_k_overlap(s, s, 0.2) == 1.0
    t = s.clone()
    t[9] = -5  # new top 2 = {8, 7}
    assert top_k_overlap(s, t, 0.2) == 0.5
    assert top_k_overlap(s, -s, 0.2) == 0.0


def test_bad_metric_inputs():
    s = torch.ones(5, dtype=F64)
    for fraction in (0.0, 1.5, -0.1):
        with pytest.raises(ValueError, match="^fraction: expected a number in"):
            flip_rate(s, s, fraction)
    with pytest.raises(ValueError, match="^perturbed_scores: expected 5 scores"):
        flip_rate(s, s[:3], 0.1)
    with pytest.raises(ValueError, match="^scores: contains NaN"):
        spearman(s * math.nan, s)


@pytest.fixture(scope="module")
def trained():
    tr = load_dataset("digits", "train", n=150, seed=0)
    te = load_dataset("digits", "test", n=60, seed=0)
    models = {}
    for name, attention in (("relu", None), ("attn", "linear")):
        model = TwoLayerNet.for_data(tr, ModelSettings(width=64, seed=0), attention)
        train(model, tr.pixels, tr.targets(), TrainSettings(epochs=5, lr=1e-2, progress=False))
        models[name] = model
    return tr, te, models


@pytest.mark.parametrize("name", ["relu", "attn"])
@pytest.mark.parametrize("attack", ["fgsm", "pgd", "mim"])
def test_measure_end_to_end(trained, name, attack):
    tr, te, models = trained
    settings = AttackSettings(attack, eps=0.3, steps=5, alpha=0.05)
    x = tr.pixels.to(F64)
    result = measure(models[name], x, tr.targets(), te.pixels.to(F64), te.targets(), NTKLOO(),
                     settings.method())
    assert result.selected.numel() == 15
    assert 0.0 <= result.flip_rate <= 1.0 and -1.0 <= result.spearman <= 1.0
    assert result.max_perturbation <= 0.3 + 1e-12 and result.max_perturbation > 0.1
    assert result.diagnostics["stability"].min_eigenvalue > 0
    assert result.perturbed_diagnostics["stability"].min_eigenvalue > 0
    assert not torch.equal(result.scores, result.perturbed_scores)
    # the perturbed inputs it returns: S moved, every other row as it was
    moved = (result.perturbed_inputs != x).flatten(1).any(1).nonzero().flatten()
    assert set(moved.tolist()) <= set(result.selected.tolist())
    # the perturbed scores are those of the model attending to the perturbed inputs
    after = NTKLOO().scores(models[name].attending_to(result.perturbed_inputs),
                            result.perturbed_inputs, tr.targets(), te.pixels.to(F64),
                            te.targets())
    assert torch.equal(after, result.perturbed_scores)


def test_ntk_loo_takes_class_indices_or_one_hot_targets(trained):
    tr, te, models = trained
    x, xt, y, yt = tr.pixels.to(F64), te.pixels.to(F64), tr.targets(), te.targets()
    for model in models.values():
        hot = NTKLOO().scores(model, x, y, xt, yt)
        index = NTKLOO().scores(model, x, y.argmax(1), xt, yt.argmax(1))
        assert torch.equal(hot, index)


def test_zero_budget_changes_nothing(trained):
    tr, te, models = trained
    for model in models.values():
        result = measure(model, tr.pixels.to(F64), tr.targets(), te.pixels.to(F64),
                         te.targets(), NTKLOO(), AttackSettings("pgd", eps=0.0).method())
        assert result.flip_rate == 0.0 and result.top_k_overlap == 1.0
        torch.testing.assert_close(result.scores, result.perturbed_scores)


@pytest.mark.parametrize("intervention", list(Intervention))
def test_interventions(trained, intervention):
    tr, te, models = trained
    settings = TrainSettings(epochs=3, lr=1e-2, progress=False)
    result = intervene(intervention, models["attn"], tr.pixels.to(F64), tr.targets(),
                       te.pixels.to(F64), te.targets(), settings,
                       AttackSettings("pgd", steps=3, alpha=0.1), InfluenceSettings())
    expected_n = 135 if intervention is Intervention.CURATED else 150
    assert result.n_train == expected_n
    assert result.malleability.scores.numel() == expected_n
    assert list(result.accuracy_by_epoch()) == [1, 3]
    assert 0 <= result.malleability.flip_rate <= 1


def test_report_epochs():
    assert report_epochs(500) == [1, 10, 100, 500]
    assert report_epochs(1) == [1]
    assert report_epochs(100) == [1, 10, 100]


def test_interventions_on_an_influence_subset(trained):
    """Influence on a subset of the training rows, S drawn from it, retraining on the whole
    intervened set: checked against retraining by hand and against a zero budget."""
    tr, te, _ = trained
    x, y, xt, yt = tr.pixels.to(F64), tr.targets(), te.pixels.to(F64), te.targets()
    model = TwoLayerNet.for_data(tr, ModelSettings(width=32, seed=0))
    settings = TrainSettings(epochs=2, lr=1e-2, progress=False)
    train(model, x, y, settings)
    subset = torch.arange(0, 150, 3)  # 50 influence points, |S| = 5
    base = network_influence(model, x[subset], y[subset], xt, yt, 1e-3)
    s_rows = subset[top_fraction(base.scores, 0.1)]
    held = ~torch.isin(subset, s_rows)

    curated = intervene("curated", model, x, y, xt, yt, settings, subset=subset)
    assert curated.n_train == 145
    torch.testing.assert_close(curated.malleability.scores, base.scores[held])
    by_hand = model.reinitialized()
    kept = ~torch.isin(torch.arange(150), s_rows)
    train(by_hand, x[kept], y[kept], settings)
    expected = network_influence(by_hand, x[subset[held]], y[subset[held]], xt, yt, 1e-3)
    torch.testing.assert_close(curated.malleability.perturbed_scores, expected.scores)

    same = intervene("transformed", model, x, y, xt, yt, settings, AttackSettings("pgd", eps=0.0),
                     subset=subset)
    assert same.n_train == 150 and same.malleability.flip_rate == 0.0
    torch.testing.assert_close(same.malleability.perturbed_scores, base.scores)


def test_attending_to_is_the_front_rebuilt_on_the_new_training_set(trained):
    tr, _, models = trained
    x = tr.pixels.to(F64)
    x_new = (x + 0.05).clamp(0, 1)
    attn, relu = models["attn"], models["relu"]
    moved = attn.attending_to(x_new)
    by_hand = attn.with_reference(attn.inputs(x_new))
    torch.testing.assert_close(moved(x[:7]), by_hand(x[:7]), rtol=0, atol=0)
    assert not torch.equal(moved(x[:7]), attn(x[:7]))
    assert relu.attending_to(x_new) is relu


@pytest.mark.parametrize("architecture", ["relu", "attn", "attn-softmax", "attn-exponential",
                                          "attn-qkv"])
def test_architecture_registry_builds_each_network(trained, architecture):
    tr, _, _ = trained
    net = TwoLayerNet.for_data(tr, ModelSettings(width=8, seed=0), architecture)
    assert net.attention is ARCHITECTURES[architecture]
    same = TwoLayerNet.for_data(tr, ModelSettings(width=8, seed=0), ARCHITECTURES[architecture])
    assert torch.equal(net.weight, same.weight) and net.attention is same.attention
    with pytest.raises(ValueError, match="^model: expected one of relu, attn"):
        TwoLayerNet.for_data(tr, ModelSettings(width=8), "transformer")
