"""Adversarial training (Table 3): the margin loss, PGD restarts, the ε ramp, the ε-ball of
every training batch, and the "not tested" rule of the report section."""

from pathlib import Path

import pytest
import torch

from malleability import AttackSettings, ModelSettings, TwoLayerNet, interventions, perturb_rows
from malleability.attacks import margin_loss, pgd
from malleability.interventions import adversarial_train, ramped_eps
from malleability.repro import figures
from malleability.repro.blocks import Table
from malleability.repro.experiments import adversarial_training as at
from malleability.repro.seeds import Estimate, merge_seeds
from malleability.training import TrainSettings, train

F64 = torch.float64


@pytest.fixture(scope="module")
def digits(digits_split):
    return digits_split("0,1,2,3", 160, 60)


def _net(ds, width=32, seed=1):
    return TwoLayerNet.for_data(ds, ModelSettings(width=width, seed=seed), None)


# --- margin loss ------------------------------------------------------------------------------


def test_margin_loss_by_hand():
    f = torch.tensor([[1.0, 3.0, 2.0], [1.0, 3.0, 2.0], [0.5, -4.0, 0.5]], dtype=F64)
    y = torch.eye(3, dtype=F64)[[0, 1, 2]]
    # class 0: max(3, 2) − 1 = 2; class 1: max(1, 2) − 3 = −1; class 2: max(0.5, −4) − 0.5 = 0
    assert margin_loss(f, y).tolist() == [2.0, -1.0, 0.0]
    fb = torch.tensor([[0.5], [0.5], [-2.0]], dtype=F64)
    yb = torch.tensor([[1.0], [-1.0], [1.0]], dtype=F64)
    assert margin_loss(fb, yb).tolist() == [-0.5, 0.5, 2.0]  # −y·f


def test_margin_loss_positive_exactly_when_misclassified():
    gen = torch.Generator().manual_seed(0)
    f = torch.randn(500, 7, generator=gen, dtype=F64)
    labels = torch.randint(0, 7, (500,), generator=gen)
    y = torch.nn.functional.one_hot(labels, 7).to(F64)
    assert torch.equal(margin_loss(f, y) > 0, f.argmax(1) != labels)


def test_attack_settings_pick_the_loss(digits):
    tr, _ = digits
    net, x, y = _net(tr), tr.pixels[:5].to(F64), tr.targets()[:5]
    target = AttackSettings().model_loss(net)(x, y)
    margin = AttackSettings(loss="margin").model_loss(net)(x, y)
    f = net(x)
    assert torch.allclose(target, torch.logsumexp(f, 1) - (f * y).sum(1))
    assert torch.equal(margin, margin_loss(f, y))


# --- restarts ---------------------------------------------------------------------------------


def test_restarts_keep_the_start_of_largest_loss_per_point():
    """floor(·) has zero gradient, so PGD stays at its random start: restart r returns the start
    drawn with seed + r, and the worst case per point is the start of largest Σ floor(10 x)."""
    x = torch.rand(12, 1, 3, 3, generator=torch.Generator().manual_seed(1), dtype=F64)
    y = torch.zeros(12, 1, dtype=F64)

    def loss_fn(xb, yb):
        return torch.floor(10 * xb).flatten(1).sum(1) + 0 * yb[:, 0]

    eps, seed = 0.2, 5
    starts = []
    for r in range(3):
        u = torch.rand(x.shape, generator=torch.Generator().manual_seed(seed + r), dtype=F64)
        starts.append(torch.clamp(x + eps * (2 * u - 1), x - eps, x + eps).clamp(0, 1))
    losses = torch.stack([loss_fn(s, y) for s in starts])  # (3, 12)
    worst = torch.stack(starts)[losses.argmax(0), torch.arange(12)]
    assert len(set(losses.argmax(0).tolist())) > 1  # the worst restart differs between points
    out = pgd(loss_fn, x, y, eps, alpha=0.05, steps=3, seed=seed, restarts=3)
    assert torch.equal(out, worst)
    assert torch.equal(pgd(loss_fn, x, y, eps, steps=3, seed=seed), starts[0])


def test_restarts_are_at_least_as_strong_as_each_restart(digits):
    tr, te = digits
    net = _net(tr)
    train(net, tr.pixels, tr.targets(), TrainSettings(epochs=3, lr=1e-2, progress=False))
    x, y = te.pixels.to(F64), te.targets()
    rows = torch.arange(len(te))
    strong = AttackSettings(eps=0.05, steps=5, alpha=0.02, loss="margin", seed=3)
    loss_fn = strong.model_loss(net)
    best = loss_fn(perturb_rows(net, x, y, rows, strong.replace(restarts=3)), y)
    singles = [loss_fn(perturb_rows(net, x, y, rows, strong.replace(seed=3 + r)), y)
               for r in range(3)]
    assert torch.equal(best, torch.stack(singles).amax(0))


def test_deterministic_attacks_ignore_restarts(digits):
    tr, _ = digits
    net, x, y = _net(tr), tr.pixels[:8].to(F64), tr.targets()[:8]
    rows = torch.arange(8)
    for name in ("fgsm", "mim"):
        one = perturb_rows(net, x, y, rows, AttackSettings(name, eps=0.1, steps=3))
        three = perturb_rows(net, x, y, rows, AttackSettings(name, eps=0.1, steps=3, restarts=3))
        assert torch.equal(one, three)
    with pytest.raises(ValueError, match="^restarts: expected a positive integer"):
        AttackSettings(restarts=0)


# --- the ε ramp and the ε-ball of adversarial training ----------------------------------------


def test_ramped_eps_values():
    assert [ramped_eps(0.3, e, 4) for e in range(1, 7)] == pytest.approx(
        [0.075, 0.15, 0.225, 0.3, 0.3, 0.3])
    assert [ramped_eps(0.3, e, 0) for e in (1, 2, 50)] == [0.3, 0.3, 0.3]
    s = at.AdversarialTrainingSettings(epochs=30, ramp=0.5)
    assert s.ramp_epochs == 15
    assert s.train_attack(0.1).alpha == pytest.approx(0.1 / 3)
    assert s.train_attack(0.3).alpha == pytest.approx(0.1)


def test_every_training_batch_stays_in_the_ramped_ball_and_unit_box(digits, monkeypatch):
    tr, _ = digits
    real_train, seen = interventions.train, []

    def spy(model, x, y, settings, x_test, y_test, adversary):
        def checked(loss_fn, xb, yb, epoch):
            out = adversary(loss_fn, xb, yb, epoch)
            seen.append((epoch, float((out - xb).abs().amax()), float(out.min()),
                         float(out.max())))
            return out
        return real_train(model, x, y, settings, x_test, y_test, adversary=checked)

    monkeypatch.setattr(interventions, "train", spy)
    attack = AttackSettings(eps=0.2, alpha=0.05, steps=4)
    adversarial_train(_net(tr), tr.pixels.to(F64), tr.targets(), TrainSettings(
        epochs=5, lr=1e-2, batch_size=64, progress=False), attack, ramp_epochs=3)
    assert {epoch for epoch, *_ in seen} == {1, 2, 3, 4, 5} and len(seen) == 15
    for epoch, delta, lo, hi in seen:
        assert delta <= ramped_eps(0.2, epoch, 3) + 1e-12 and 0 <= lo and hi <= 1
    # the batches use the ball: PGD reaches its boundary at every epoch's ε
    for epoch, delta, *_ in seen:
        assert delta == pytest.approx(ramped_eps(0.2, epoch, 3), rel=1e-9)


def test_adversarial_train_rejects_a_ramp_longer_than_training(digits):
    tr, _ = digits
    with pytest.raises(ValueError, match=r"^ramp_epochs: expected an integer in 0\.\.2"):
        adversarial_train(_net(tr), tr.pixels, tr.targets(), TrainSettings(epochs=2),
                          ramp_epochs=3)


# --- the "not tested" rule ----------------------------------------------------------------------


def test_robustness_rule_and_verdicts():
    assert at.chance_accuracy(10) == 0.1 and at.chance_accuracy(1) == 0.5
    assert at.robustness_measurable(0.2, 0.1, 0.1)
    assert not at.robustness_measurable(0.06, 0.1, 0.1)
    assert at.table3_verdict(0.03, 0.4, robust=False) == at.NOT_TESTED
    assert at.table3_verdict(0.4, 0.03, robust=False) == at.NOT_TESTED
    seeds = (0, 1, 2, 3)
    low = Estimate([0.03, 0.05, 0.04, 0.02], seeds)
    high = Estimate([0.40, 0.45, 0.38, 0.42], seeds)
    assert at.table3_verdict(low, high, robust=True) == "agrees"
    assert at.table3_verdict(high, low, robust=True) == "disagrees"
    assert at.table3_verdict(0.03, 0.4, robust=True) == "inconclusive"  # one seed: no interval
    mixed = Estimate([0.45, 0.01, 0.40, 0.02], seeds)  # rises for some seeds, falls for others
    assert at.table3_verdict(Estimate([0.2] * 4, seeds), mixed, robust=True) == "inconclusive"


def _record(eps, robust, before=0.1, after=0.3):
    net = {"flip_rate": before, "test_accuracy": 0.9, "pgd_test_accuracy": 0.0,
           "strong_test_accuracy": 0.0}
    return {"cell": {"task": "mnist", "model": "relu", "eps": eps},
            "result": {"standard": net, "robust": robust,
                       "adversarial": {**net, "flip_rate": after,
                                       "strong_test_accuracy": 0.5 if robust else 0.05}}}


def test_section_reports_not_tested_without_robustness(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(figures, "bar_panels", lambda path, *args, **kwargs: path)
    blocks = at.section([_record(0.3, False), _record(0.1, True)], tmp_path)
    table = next(b for b in blocks if isinstance(b, Table) and "ε" in b.header)
    rows = {row[2]: row for row in table.rows}
    assert rows["0.3"][-1] == at.NOT_TESTED and rows["0.3"][-3] == "no"
    assert rows["0.3"][5] == "3.3 → 43.4"  # the paper's Table 3 beside ε = 0.3 only
    # robust, so tested; one seed gives no interval, so the rise is not decided
    assert rows["0.1"][-1] == "inconclusive" and rows["0.1"][-3] == "yes"
    assert rows["0.1"][5] == "—"


def test_section_needs_robustness_in_every_seed(tmp_path: Path, monkeypatch):
    """Seeds merged by the report: a row robust in some seeds only reads "k of n seeds" and is
    not tested; robust in all, its paired change carries the interval over seeds."""
    monkeypatch.setattr(figures, "bar_panels", lambda path, *args, **kwargs: path)
    records = []
    for seed, robust in enumerate((True, False, True)):
        for eps, ok in ((0.3, robust), (0.1, True)):
            record = _record(eps, ok, before=0.1 + 0.01 * seed, after=0.3 + 0.02 * seed)
            record["cell"]["seed"] = seed
            records.append(record)
    blocks = at.section(merge_seeds(records), tmp_path)
    table = next(b for b in blocks if isinstance(b, Table) and "ε" in b.header)
    rows = {row[2]: row for row in table.rows}
    assert rows["0.3"][-3] == "2 of 3 seeds" and rows["0.3"][-1] == at.NOT_TESTED
    assert rows["0.1"][-3] == "yes" and rows["0.1"][-1] == "agrees"
    assert rows["0.1"][-2].startswith("21 [") and rows["0.1"][-2].endswith("]")


def test_bad_settings():
    with pytest.raises(ValueError, match=r"^epsilons\[1\]: ε = 0.3 given twice"):
        at.AdversarialTrainingSettings(epsilons=(0.3, 0.3))
    with pytest.raises(ValueError, match=r"^epsilons\[0\]: expected a number in \[0, 1\]"):
        at.AdversarialTrainingSettings(epsilons=(1.5,))
    with pytest.raises(ValueError, match=r"^ramp: expected a fraction"):
        at.AdversarialTrainingSettings(ramp=2.0)
    with pytest.raises(ValueError, match=r"^strong.attack: expected pgd"):
        at.AdversarialTrainingSettings(strong=AttackSettings("mim"))
