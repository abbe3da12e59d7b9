"""TRAK (estimators/trak.py) against dattri 0.3.0's TRAKAttributor, whose projection and
formula it takes, and its rescoring after an attack against a fresh computation."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn

from malleability.estimators import Attribution
from malleability.estimators import gradients as grads
from malleability.estimators.trak import TRAK, projection_matrix
from malleability.losses import training_loss

dattri_trak = pytest.importorskip("dattri.algorithm.trak")


@pytest.fixture
def counted(monkeypatch) -> list[int]:
    """The number of rows of each per-example gradient pass TRAK makes."""
    rows: list[int] = []
    original = grads.per_example_gradients

    def counting(model, params, xs, ys, chunk):
        rows.append(xs.shape[0])
        return original(model, params, xs, ys, chunk)

    monkeypatch.setattr("malleability.estimators.trak.per_example_gradients", counting)
    return rows


def _mlp(seed: int) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3))


def _data(n: int = 60, n_test: int = 7):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 6, generator=g), torch.randint(0, 3, (n,), generator=g),
            torch.randn(n_test, 6, generator=g), torch.randint(0, 3, (n_test,), generator=g))


def _dattri_scores(models, x, y, xt, yt, proj_dim: int, seed: int) -> torch.Tensor:
    """dattri's TRAKAttributor over the checkpoints ``models`` (one architecture), the mean
    of its (n × n_test) scores over the test points."""
    from dattri.task import AttributionTask
    from torch.func import functional_call
    from torch.utils.data import DataLoader, TensorDataset

    model = copy.deepcopy(models[0])  # dattri loads each checkpoint into it

    def loss(params, data):
        xb, yb = data
        return training_loss(functional_call(model, params, (xb[None],)), yb[None]).mean()

    task = AttributionTask(loss_func=loss, model=model,
                           checkpoints=[{k: v.clone() for k, v in m.state_dict().items()}
                                        for m in models])
    attributor = dattri_trak.TRAKAttributor(task, lambda p, d: torch.exp(-loss(p, d)),
                                            device="cpu")
    attributor.projector_kwargs = {**dattri_trak.DEFAULT_PROJECTOR_KWARGS,
                                   "proj_dim": proj_dim, "proj_seed": seed}
    attributor.cache(DataLoader(TensorDataset(x, y), batch_size=len(x)))
    return attributor.attribute(DataLoader(TensorDataset(xt, yt), batch_size=len(xt))).mean(1)


@pytest.mark.parametrize("checkpoints", [1, 2])
def test_trak_equals_dattris_trak_attributor(checkpoints):
    """Same projection, same formula: equal up to dattri's float32 solve."""
    x, y, xt, yt = _data()
    models = [_mlp(s) for s in range(checkpoints)]
    want = _dattri_scores(models, x, y, xt, yt, proj_dim=12, seed=5).double()
    got = TRAK(proj_dim=12).ensemble_scores(models, x, y, xt, yt, seed=5)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * float(want.abs().max()))


def test_projection_matrix_is_dattris_basic_projector():
    """Several blocks of 100 columns and another checkpoint's seeds: dattri's BasicProjector
    returns features @ R / √d."""
    from dattri.func.projection import random_project

    feats = torch.randn(4, 90, generator=torch.Generator().manual_seed(0))
    for d, checkpoint in ((12, 0), (230, 1)):
        project = random_project(feats, 4, proj_dim=d, proj_max_batch_size=32, proj_seed=3,
                                 device="cpu")
        want = project(feats, ensemble_id=checkpoint)
        got = feats @ projection_matrix(90, d, 3, checkpoint) / d ** 0.5
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


def test_rescoring_recomputes_only_changed_rows_and_matches_a_fresh_computation(counted):
    """After changing 6 rows: the changed rows' gradients only, bit for bit the same with the
    clean features passed or recomputed, equal to TRAK on the new inputs up to round-off;
    with nothing changed, the clean scores exactly."""
    x, y, xt, yt = _data()
    models = [_mlp(0), _mlp(1)]
    trak = TRAK(proj_dim=12, chunk=16)
    clean = trak.ensemble_attribute(models, x, y, xt, yt, seed=2)
    x_new = x.clone()
    changed = torch.tensor([3, 17, 18, 40, 41, 59])
    x_new[changed] += 0.3
    (reused,) = trak.rescore(models, clean, x, [x_new], y, xt, yt, seed=2)
    assert counted == [60, 60, 6, 6]  # the clean pass, then each checkpoint's changed rows
    (recomputed,) = trak.rescore(models, Attribution(clean.scores), x, [x_new], y, xt, yt,
                                 seed=2)
    assert torch.equal(reused.scores, recomputed.scores)
    fresh = trak.ensemble_scores(models, x_new, y, xt, yt, seed=2)
    torch.testing.assert_close(reused.scores, fresh, rtol=0,
                               atol=1e-5 * float(fresh.abs().max()))
    assert not torch.allclose(reused.scores, clean.scores)
    (same,) = trak.rescore(models, clean, x, [x.clone()], y, xt, yt, seed=2)
    assert torch.equal(same.scores, clean.scores)
    (other_seed,) = trak.rescore(models, clean, x, [x_new], y, xt, yt, seed=3)
    torch.testing.assert_close(other_seed.scores,
                               trak.ensemble_scores(models, x_new, y, xt, yt, seed=3),
                               rtol=0, atol=1e-5 * float(fresh.abs().max()))


def test_a_singular_kernel_is_a_one_line_error():
    """Selected parameters behind a dead ReLU: every gradient is 0, so ΦᵀΦ = 0 exactly."""
    model = nn.Sequential(nn.Linear(6, 4), nn.ReLU(), nn.Linear(4, 3))
    with torch.no_grad():
        model[0].bias.fill_(-100.0)
    x, y, xt, yt = _data()
    with pytest.raises(ValueError, match=r"^estimator: trak's kernel ΦᵀΦ \(5 × 5\) is singular"):
        TRAK(proj_dim=5).scores(model, x, y, xt, yt, parameters=["0"])


def test_measure_rescores_trak_from_the_clean_features(counted):
    """measure() with the same weights: the clean pass (n rows) and the perturbed rows of S
    only, and the scores after equal TRAK.rescore on the perturbed inputs bit for bit."""
    from malleability.attacks import RandomSign
    from malleability.measure import measure

    x, y, xt, yt = _data()
    x = torch.sigmoid(x)  # inside the unit box
    model, trak = _mlp(0), TRAK(proj_dim=12)
    m = measure(model, x, y, xt, yt, trak, RandomSign(eps=0.05, seed=1), fraction=0.1, seed=4)
    assert counted == [60, 6]
    (want,) = trak.rescore([model], Attribution(m.scores), x, [m.perturbed_inputs], y, xt,
                           yt, seed=4)
    assert torch.equal(m.perturbed_scores, want.scores)
