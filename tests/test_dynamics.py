"""Issue 32 item 4: influence over training (A.6.1, A.6.2) and Table 5's adversarially trained
half. Formulas against independent ground truth (statistics.stdev, training stopped early, the
experiments that measure the same quantity at the last epoch by their own code path), the
claims on hand-made records, and the cells through the quick preset."""

from __future__ import annotations

import json
import math
import statistics
from pathlib import Path

import pytest
import torch

from malleability.dynamics import (
    change,
    check_record_epochs,
    fluctuation,
    score_metrics,
    weights_of,
)
from malleability.interventions import RampedAdversary, adversarial_train, intervene
from malleability.metrics import flip_rate, spearman, top_k_overlap
from malleability.repro.experiments import (
    EXPERIMENTS,
    adversarial_interventions,
    adversarial_training,
    flip_dynamics,
    flip_rates,
    intervention_dynamics,
    interventions,
)
from malleability.repro.problem import RunContext, build_model, load_problem, trained_model
from malleability.repro.report import to_markdown
from malleability.repro.runner import load_preset, reproduce
from malleability.repro.seeds import Estimate
from malleability.repro.store import settings_key
from malleability.training import train

TINY = Path(__file__).parent / "data" / "tiny.toml"
NEW = ("adversarial_interventions", "intervention_dynamics", "flip_dynamics")
SEEDS = (0, 1, 2)


@pytest.fixture(scope="module")
def tiny():
    return load_preset(str(TINY))


def test_fluctuation_and_change_against_the_standard_library() -> None:
    values = [0.31, 0.12, 0.55, 0.4, 0.38]
    assert fluctuation(values) == pytest.approx(statistics.stdev(values), rel=1e-12)
    assert change(values) == pytest.approx(0.38 - 0.31)
    assert math.isnan(fluctuation([0.1, math.nan, 0.2]))
    with pytest.raises(ValueError, match="^values: expected at least two epochs"):
        fluctuation([0.1])


@pytest.mark.parametrize(("value", "message"), [
    ((5,), r"^e: expected at least two epochs"),
    ((1, 0), r"^e\[1\]: expected a positive integer, got 0"),
    ((1, True), r"^e\[1\]: expected a positive integer"),
    ((2, 2), r"^e\[1\]: expected epochs in increasing order, got 2 after 2"),
])
def test_bad_record_epochs(value: tuple, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        check_record_epochs(value, "e")


def test_record_epochs_beyond_training_are_refused_at_load(tmp_path: Path) -> None:
    bad = tmp_path / "bad.toml"
    bad.write_text("[shared.train]\nepochs = 3\n[experiments.flip_dynamics]\n"
                   "record_epochs = [1, 4]\n")
    with pytest.raises(ValueError, match=r"^flip_dynamics\.record_epochs: expected epochs up "
                                         r"to train\.epochs \(3\), got 4"):
        load_preset(str(bad))


def test_score_metrics_are_the_definitions() -> None:
    a, b = torch.randn(50, generator=torch.Generator().manual_seed(0)), torch.randn(50)
    assert score_metrics(a, b, 0.2) == {"flip_rate": flip_rate(a, b, 0.2),
                                        "spearman": spearman(a, b),
                                        "top_k_overlap": top_k_overlap(a, b, 0.2)}


def test_checkpoints_are_the_weights_of_training_stopped_there(tiny, tmp_path: Path) -> None:
    """The checkpoint at epoch e equals a network trained for e epochs alone; the network
    without checkpoints keeps the cache key it had before checkpoints existed (so committed
    caches stay valid), and a second call reads the checkpoints back from the cache."""
    s = tiny.experiments["flip_dynamics"]
    p = load_problem(s.tasks[1])
    ctx = RunContext(tmp_path, progress=False)
    net, history = trained_model("relu", p, s.model, s.train, ctx, checkpoints=(1, 2))
    short = build_model("relu", p, s.model)
    train(short, p.x, p.y, s.train.replace(epochs=1, progress=False))
    assert torch.equal(history["checkpoints"][1], short.weight.detach())
    assert torch.equal(history["checkpoints"][2], net.weight.detach())
    with weights_of(net, history["checkpoints"][1]):
        assert torch.equal(net.weight, short.weight)
    assert torch.equal(net.weight, history["checkpoints"][2])  # restored
    _, again = trained_model("relu", p, s.model, s.train, ctx, checkpoints=(1, 2))
    assert all(torch.equal(again["checkpoints"][e], history["checkpoints"][e]) for e in (1, 2))
    plain, _ = trained_model("relu", p, s.model, s.train, ctx)
    key = settings_key("trained", "relu", p.data.replace(n_influence=None), s.model,
                       s.train.replace(progress=False, checkpoints=()), s.model.width)
    assert (tmp_path / "cache" / "models" / f"{key}.pt").exists()
    assert torch.equal(plain.weight, net.weight)


def test_adversarial_retraining_is_adversarial_training_on_the_intervened_set(tiny) -> None:
    """With an adversary, the Transformed retraining is adversarial_train (an independent
    call) from the same initialisation on the intervened set."""
    s = tiny.experiments["adversarial_interventions"]
    p = load_problem(s.tasks[1])
    settings = s.train.replace(epochs=2, progress=False)
    attack = s.train_attack(0.3)
    base = build_model("relu", p, s.model)
    train(base, p.x, p.y, settings)
    result = intervene("transformed", base, p.x, p.y, p.x_test, p.y_test, settings,
                       s.attack_as("pgd"), s.influence, adversary=RampedAdversary(attack, 1))
    x_new = p.x.clone()
    x_new[p.influence_rows[result.held]] = result.x_scored  # the whole set is scored here
    assert result.held.numel() == p.x.shape[0] and not torch.equal(x_new, p.x)
    twin = base.reinitialized_on(x_new)
    truth = adversarial_train(twin, x_new, p.y, settings, attack, ramp_epochs=1)
    assert result.history.train_loss == pytest.approx(truth.train_loss, rel=1e-6)
    assert torch.allclose(result.model.weight, twin.weight, atol=1e-6)


@pytest.mark.slow
def test_the_adversarial_intervention_moves_every_point_within_eps(tiny) -> None:
    s = tiny.experiments["intervention_dynamics"]
    p = load_problem(s.tasks[1])
    base = build_model("relu", p, s.model)
    settings = s.train.replace(progress=False)
    train(base, p.x, p.y, settings)
    result = intervene("adversarial", base, p.x, p.y, p.x_test, p.y_test, settings,
                       s.attack_as("pgd"), s.influence)
    moved = (result.x_scored - p.x[p.influence_rows]).flatten(1).abs().amax(dim=1)
    assert result.n_train == p.x.shape[0] and moved.max() <= s.attack.eps + 1e-12
    assert (moved > 0).float().mean() > 0.9  # every point attacked (a few may sit at a bound)


@pytest.mark.slow
def test_last_epoch_equals_the_experiments_that_measure_it_at_the_end(tiny,
                                                                     tmp_path: Path) -> None:
    """At the last recorded epoch (= the training's last), intervention_dynamics compares the
    same two networks as interventions, and flip_dynamics attacks the network flip_rates
    attacks; adversarial_interventions' two baselines are adversarial_training's at one
    epoch."""
    ctx = RunContext(tmp_path, progress=False)
    cell = {"task": "digits 3,8", "model": "attn"}
    dyn = intervention_dynamics.run(tiny.experiments["intervention_dynamics"],
                                    {**cell, "intervention": "transformed"}, ctx)
    end = interventions.run(tiny.experiments["interventions"],
                            {**cell, "intervention": "transformed"}, ctx)
    for key in ("spearman", "flip_rate", "top_k_overlap"):
        assert dyn["by_epoch"][key][-1] == pytest.approx(end[key], abs=1e-12)
    assert dyn["by_epoch"]["test_accuracy"][-1] == end["history"]["test_accuracy"][-1]
    flips = flip_dynamics.run(tiny.experiments["flip_dynamics"], {**cell, "attack": "pgd"}, ctx)
    flat = flip_rates.run(tiny.experiments["flip_rates"], {**cell, "attack": "pgd"}, ctx)
    for key in ("spearman", "flip_rate", "top_k_overlap"):
        assert flips["by_epoch"][key][-1] == pytest.approx(flat[key], abs=1e-12)
    s = tiny.experiments["adversarial_interventions"].replace(epochs=1)
    ours = adversarial_interventions.run(s, {**cell, "eps": 0.3, "intervention": "curated"},
                                         RunContext(tmp_path / "a", progress=False))
    table3 = adversarial_training.run(tiny.experiments["adversarial_training"],
                                      {**cell, "eps": 0.3}, RunContext(tmp_path / "b",
                                                                       progress=False))
    for name in ("standard", "adversarial"):
        for key in ("flip_rate", "test_accuracy", "strong_test_accuracy"):
            assert ours[name][key] == pytest.approx(table3[name][key], abs=1e-12), (name, key)


def _records(experiment: str, cells: list[dict], curves: list[dict]) -> list[dict]:
    return [{"experiment": experiment, "cell": c, "seeds": list(SEEDS),
             "result": {"epochs": [1, 10, 100],
                        "by_epoch": {k: [Estimate(v, SEEDS) for v in values]
                                     for k, values in curve.items()}}}
            for c, curve in zip(cells, curves, strict=True)]


def test_stability_claims_on_hand_made_curves() -> None:
    flat = {"spearman": [(0.8, 0.8, 0.8), (0.82, 0.79, 0.8), (0.81, 0.8, 0.79)]}
    fall = {"spearman": [(0.6, 0.5, 0.55), (0.4, 0.3, 0.35), (0.2, 0.12, 0.14)]}
    cells = [{"task": "fashion-mnist", "model": "relu", "intervention": "curated"},
             {"task": "fashion-mnist", "model": "attn", "intervention": "curated"},
             {"task": "fashion-mnist", "model": "relu", "intervention": "adversarial"},
             {"task": "mnist", "model": "relu", "intervention": "adversarial"}]
    rows = intervention_dynamics.claims(_records("intervention_dynamics", cells,
                                                 [flat, fall, fall, fall]))
    verdicts = {(r[1], r[0][:20]): (r[3], r[4]) for r in rows}
    # 2L-ReLU curated: per-seed changes (0.01, 0, −0.01): mean 0, interval ±0.025 inside ±0.1
    value, judged = verdicts[("fashion-mnist, 2L-ReLU, curated", "Influence stability ")]
    assert judged == "agrees" and value.values == pytest.approx((0.01, 0.0, -0.01))
    # MLP-Attn curated falls by 0.38–0.41 in every seed: not constant
    assert verdicts[("fashion-mnist, MLP-Attn, curated", "Influence stability ")][1] \
        == "disagrees"
    # Adversarial: a decline on Fashion-MNIST agrees; on MNIST 2L-ReLU should rise: disagrees
    assert verdicts[("fashion-mnist, 2L-ReLU, adversarial", "Under Adversarial, s")][1] \
        == "agrees"
    assert verdicts[("mnist, 2L-ReLU, adversarial", "Under Adversarial on")][1] == "disagrees"
    # mean over epochs of ρ(2L-ReLU) − ρ(MLP-Attn), by seed: (0.81−0.4, 0.7967−0.3, 0.7967−0.35)
    gap, judged = verdicts[("fashion-mnist, curated", "2L-ReLU's influence ")]
    expected = [statistics.mean(r[i] for r in flat["spearman"])
                - statistics.mean(r[i] for r in fall["spearman"]) for i in range(3)]
    assert gap.values == pytest.approx(expected) and judged == "agrees"


def test_flip_dynamics_claims_on_hand_made_curves(tmp_path: Path) -> None:
    erratic = {"flip_rate": [(0.1, 0.2, 0.1), (0.5, 0.6, 0.4), (0.1, 0.1, 0.2)]}
    steady = {"flip_rate": [(0.3, 0.3, 0.3), (0.31, 0.3, 0.32), (0.3, 0.31, 0.3)]}
    cells = [{"task": "fashion-mnist", "model": "relu", "attack": "fgsm"},
             {"task": "fashion-mnist", "model": "relu", "attack": "pgd"},
             {"task": "fashion-mnist", "model": "attn", "attack": "pgd"}]
    high = {"flip_rate": [(0.5, 0.6, 0.55)] * 3}
    records = _records("flip_dynamics", cells, [erratic, steady, high])
    rows = {r[0][:10]: r for r in flip_dynamics.claims(records)}
    excess = rows["FGSM's fli"][3]
    truth = [100 * (statistics.stdev(c[i] for c in erratic["flip_rate"])
                    - statistics.stdev(c[i] for c in steady["flip_rate"])) for i in range(3)]
    assert excess.values == pytest.approx(truth) and rows["FGSM's fli"][4] == "agrees"
    gap = rows["Under PGD,"][3]
    assert gap.values == pytest.approx([100 * (0.5 - 0.30333333), 100 * (0.6 - 0.30333333),
                                        100 * (0.55 - 0.30666667)], abs=1e-6)
    for record in records:
        record["result"]["by_epoch"].update(
            {k: record["result"]["by_epoch"]["flip_rate"]
             for k in ("spearman", "top_k_overlap", "test_accuracy")})
    markdown = to_markdown(flip_dynamics.section(records, tmp_path))
    assert "| fashion-mnist | 2L-ReLU | FGSM | 1: 13.3 [" in markdown
    assert (tmp_path / "flip_dynamics.png").exists()


@pytest.mark.slow
def test_the_new_experiments_run_through_the_quick_preset(tmp_path: Path) -> None:
    """One seed, one cell of each new experiment on the quick preset, resumable: a second
    run computes nothing."""
    preset = load_preset("quick").with_seeds(1)
    ctx = RunContext(tmp_path, progress=False)
    patterns = ("task=digits-3-8__model=relu__eps=0.3__intervention=transformed__seed=0",
                "task=digits-3-8__model=relu__intervention=adversarial__seed=0",
                "task=digits-3-8__model=relu__attack=fgsm__seed=0")
    paths = reproduce(preset, ctx, only=NEW, cells=patterns)
    assert [p.parent.name for p in paths] == list(NEW)
    records = [json.loads(p.read_text()) for p in paths]
    epochs = preset.experiments["intervention_dynamics"].record_epochs
    assert records[1]["result"]["epochs"] == list(epochs)
    assert len(records[2]["result"]["by_epoch"]["flip_rate"]) == len(epochs)
    assert set(records[0]["result"]["accuracy_by_epoch"]) == {"1", "10", "15"}
    stamps = [p.stat().st_mtime_ns for p in paths]
    reproduce(preset, ctx, only=NEW, cells=patterns)
    assert [p.stat().st_mtime_ns for p in paths] == stamps
    for name, record in zip(NEW, records, strict=True):
        markdown = to_markdown(EXPERIMENTS[name].section([{**record, "seeds": [0]}], tmp_path))
        assert "\n| " in markdown
    # one Transformed cell: no pair to compare, so the claims say so instead of an empty table
    assert "None yet: each compares two cells of one seed" in to_markdown(
        adversarial_interventions.section([{**records[0], "seeds": [0]}], tmp_path))


@pytest.mark.parametrize(("binary_attn", "verdict"), [
    ((0.5, 0.6, 0.55), "disagrees"),  # MLP-Attn above on both CIFAR-10 tasks: no dependence
    ((0.1, 0.15, 0.12), "agrees"),    # above on 10-class, below on binary: the sign differs
    ((0.3, 0.35, 0.28), "inconclusive"),  # the binary gap's interval straddles 0
])
def test_cifar10_class_count_claim_compares_the_signs_of_the_two_gaps(binary_attn, verdict):
    relu = {"flip_rate": [(0.3, 0.31, 0.3)] * 3}
    high = {"flip_rate": [(0.5, 0.6, 0.55)] * 3}
    cells = [{"task": task, "model": model, "attack": "pgd"}
             for task in ("cifar10", "cifar10 automobile,airplane") for model in ("relu", "attn")]
    curves = [relu, high, relu, {"flip_rate": [binary_attn] * 3}]
    rows = [r for r in flip_dynamics.claims(_records("flip_dynamics", cells, curves))
            if r[0].startswith("Under PGD on CIFAR-10")]
    assert [r[1] for r in rows] == ["cifar10", "cifar10 automobile,airplane"]
    assert {r[4] for r in rows} == {verdict}
    gap = rows[1][3]  # the binary task's gap, mean over epochs, per seed
    relu_seeds = (0.3, 0.31, 0.3)
    assert gap.values == pytest.approx([100 * (a - r) for a, r in zip(binary_attn, relu_seeds,
                                                                       strict=True)])
