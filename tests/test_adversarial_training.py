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
from malleability.repro.experiments import numerics
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
    seeds = (0, 1, 2, 3)
    flat = Estimate([0.2, 0.21, 0.19, 0.2], seeds)
    assert at.table3_verdict(flat, Estimate([0.4, 0.03, 0.3, 0.1], seeds),
                             robust=False) == at.NOT_TESTED
    # robustness cannot be decided on fewer than 3 seeds (no interval): not "not tested"
    assert at.table3_verdict(0.03, 0.4, robust=False) == "too few seeds"
    assert at.table3_verdict(Estimate([0.4, 0.3], (0, 1)), Estimate([0.03, 0.1], (0, 1)),
                             robust=False) == "too few seeds"
    low = Estimate([0.03, 0.05, 0.04, 0.02], seeds)
    high = Estimate([0.40, 0.45, 0.38, 0.42], seeds)
    assert at.table3_verdict(low, high, robust=True) == "agrees"
    assert at.table3_verdict(high, low, robust=True) == "disagrees"
    assert at.table3_verdict(0.03, 0.4, robust=True) == "too few seeds"  # one seed: no interval
    mixed = Estimate([0.45, 0.01, 0.40, 0.02], seeds)  # rises for some seeds, falls for others
    assert at.table3_verdict(Estimate([0.2] * 4, seeds), mixed, robust=True) == "inconclusive"


def test_relative_robustness_is_the_two_proportion_interval_plus_the_seeds():
    """Equal seeds: the Wald interval of two independent proportions, d ± 1.96·√((p_a q_a +
    p_s q_s)/n); paired: McNemar's, d ± 1.96·√((q − d²)/n); fewer than 3 seeds: no interval."""
    seeds = (0, 1, 2)
    std, adv = Estimate([0.3] * 3, seeds), Estimate([0.5] * 3, seeds)
    gain, (lo, hi) = at.relative_robustness(std, adv, 500)
    half = 1.959964 * ((0.5 * 0.5 + 0.3 * 0.7) / 1500) ** 0.5  # k = 3 seeds of 500 points
    assert gain == pytest.approx(0.2) and (lo, hi) == pytest.approx((0.2 - half, 0.2 + half))
    _, (lo, hi) = at.relative_robustness(std, adv, 500, discordant=Estimate([0.3] * 3, seeds))
    half = 1.959964 * ((0.3 - 0.04) / 1500) ** 0.5
    assert (lo, hi) == pytest.approx((0.2 - half, 0.2 + half))
    spread = Estimate([0.4, 0.6, 0.5], seeds)  # the seeds' t error adds in quadrature
    _, wide = at.relative_robustness(std, spread, 500)
    t_half = 4.302653 * 0.1 / 3**0.5
    b_half = 1.959964 * ((0.3 * 0.7 + sum(p * (1 - p) for p in (0.4, 0.6, 0.5)) / 3) / 1500) ** 0.5
    assert wide == pytest.approx((0.2 - (t_half**2 + b_half**2) ** 0.5,
                                  0.2 + (t_half**2 + b_half**2) ** 0.5), rel=1e-5)
    assert at.relative_robustness(0.3, 0.5, 500) == (pytest.approx(0.2), None)
    two = (0, 1)  # two seeds may not decide, as everywhere
    assert at.relative_robustness(Estimate([0.3, 0.31], two), Estimate([0.5, 0.52], two),
                                  500) == (pytest.approx(0.205), None)
    assert at.relative_text(0.2, (0.15, 0.25), 0.1).startswith("yes (+20.0 [15.0, 25.0]")
    assert at.relative_text(0.2, (0.05, 0.35), 0.1).startswith("undecided")  # straddles 10
    assert at.relative_text(0.05, (0.02, 0.08), 0.1).startswith("no")  # above 0, below 10
    assert at.relative_text(0.2, None, 0.1).startswith("undecided")
    assert at.more_robust((0.15, 0.25), 0.1) and not at.more_robust((0.05, 0.35), 0.1)


def _record(eps, robust, before=0.1, after=0.3):
    solve = {"min_eigenvalue": 1e-3, "condition_number": 1e5, "inversion_residual": 1e-12,
             "symmetry_error": 0.0}
    net = {"flip_rate": before, "test_accuracy": 0.9, "pgd_test_accuracy": 0.0,
           "strong_test_accuracy": 0.0, "top_k_overlap": 0.4, "spearman": 0.8,
           "stability": solve, "perturbed_stability": solve}
    return {"cell": {"task": "mnist", "model": "relu", "eps": eps},
            "settings": {"tasks": [{"dataset": "mnist", "classes": None, "n_test": 500}],
                         "robust_margin": 0.1},
            "result": {"standard": net, "robust": robust,
                       "adversarial": {**net, "flip_rate": after,
                                       "strong_test_accuracy": 0.5 if robust else 0.05}}}


def test_section_on_one_seed_reads_too_few_seeds(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(figures, "bar_panels", lambda path, *args, **kwargs: path)
    blocks = at.section([_record(0.3, False), _record(0.1, True)], tmp_path)
    table = next(b for b in blocks if isinstance(b, Table) and "ε" in b.header)
    rows = {row[2]: row for row in table.rows}
    assert rows["0.3"][-1] == "too few seeds" and rows["0.3"][-4] == "no"
    assert rows["0.3"][5] == "3.3 → 43.4"  # the paper's Table 3 beside ε = 0.3 only
    # robust by the absolute rule, but one seed gives no interval: robustness relative to
    # the standard network is undecided for want of seeds, so the verdict says so
    assert rows["0.1"][-1] == "too few seeds" and rows["0.1"][-4] == "yes"
    assert rows["0.1"][-3].startswith("undecided (+50.0")
    assert rows["0.1"][5] == "—"


def test_section_needs_robustness_in_every_seed(tmp_path: Path, monkeypatch):
    """Seeds merged by the report: a row robust in some seeds only reads "k of n seeds" and is
    not tested; robust in all, its paired change carries the interval over seeds, and so do
    the figure's bars (in %)."""
    drawn = {}
    monkeypatch.setattr(figures, "bar_panels",
                        lambda path, bars, *args, **kwargs: drawn.update(bars) or path)
    records = []
    for seed, robust in enumerate((True, False, True)):
        for eps, ok in ((0.3, robust), (0.1, True)):
            record = _record(eps, ok, before=0.1 + 0.01 * seed, after=0.3 + 0.02 * seed)
            record["cell"]["seed"] = seed
            records.append(record)
    blocks = at.section(merge_seeds(records), tmp_path)
    table = next(b for b in blocks if isinstance(b, Table) and "ε" in b.header)
    rows = {row[2]: row for row in table.rows}
    assert rows["0.3"][-4] == "2 of 3 seeds" and rows["0.3"][-1] == at.NOT_TESTED
    assert rows["0.3"][-3].startswith("undecided")  # gains 50, 5, 50 points: t error
    assert rows["0.1"][-4] == "yes" and rows["0.1"][-1] == "agrees"
    assert rows["0.1"][-3].startswith("yes (+50.0 [")
    assert rows["0.1"][-2].startswith("21 [") and rows["0.1"][-2].endswith("]")
    bar = next(iter(drawn.values()))["2L-ReLU ε=0.1"]["adversarial"]
    assert bar.values == pytest.approx((30.0, 32.0, 34.0)) and bar.interval is not None


def test_a9_columns_show_the_worst_solve_over_seeds():
    seeds = (0, 1, 2)
    good = {"min_eigenvalue": Estimate([1e-3, 2e-3, 5e-4], seeds),
            "condition_number": Estimate([1e4, 3e4, 2e4], seeds),
            "inversion_residual": Estimate([1e-12, 3e-12, 2e-12], seeds),
            "symmetry_error": Estimate([0.0, 1e-16, 0.0], seeds)}
    bad = {**good, "min_eigenvalue": Estimate([1e-3, -1e-9, 1e-3], seeds)}
    assert numerics.a9_cells([good]) == ["0.0005", "3e4", "3e-12", "1e-16", "yes"]
    assert numerics.worst(good["condition_number"], True) == 3e4
    assert numerics.worst(good["min_eigenvalue"], False) == 5e-4
    assert numerics.a9_cells([good, bad])[-1] == "no"  # one seed's K + λI not positive definite
    inaccurate = {**good, "inversion_residual": 1e-3}
    assert numerics.a9_cells([inaccurate])[-1] == "no"


def test_section_reports_top_k_and_the_a9_checks(tmp_path: Path, monkeypatch):
    monkeypatch.setattr(figures, "bar_panels", lambda path, *args, **kwargs: path)
    blocks = at.section([_record(0.1, True)], tmp_path)
    table = next(b for b in blocks if isinstance(b, Table) and "A.9 holds" in b.header)
    assert [row[3:6] for row in table.rows] == [["standard", "40", "80"],
                                                ["adversarial", "40", "80"]]
    assert all(row[-1] == "yes" for row in table.rows)


def test_bad_settings():
    with pytest.raises(ValueError, match=r"^epsilons\[1\]: ε = 0.3 given twice"):
        at.AdversarialTrainingSettings(epsilons=(0.3, 0.3))
    with pytest.raises(ValueError, match=r"^epsilons\[0\]: expected a number in \[0, 1\]"):
        at.AdversarialTrainingSettings(epsilons=(1.5,))
    with pytest.raises(ValueError, match=r"^ramp: expected a fraction"):
        at.AdversarialTrainingSettings(ramp=2.0)
    with pytest.raises(ValueError, match=r"^strong.attack: expected pgd"):
        at.AdversarialTrainingSettings(strong=AttackSettings("mim"))
