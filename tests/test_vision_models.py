"""timm's ViT and torchvision's ResNet (the control without attention), built by
docs/audit_realistic.py's builders at tiny sizes, trained briefly on synthetic images, and
audited with TracIn, TRAK and kronfluence's EK-FAC under PGD: the audit's own contracts on
them (issue 30, "Models"). timm and torchvision import only in .venv-vision (PyPI's torchvision
cannot be imported beside torch 2.13.0+cpu), so these tests run with `make test-vision`."""

from __future__ import annotations

import importlib.util
import json
import math
from pathlib import Path

import pytest
import torch
from scipy import stats
from torch import nn

from malleability.auditing import audit, prepare
from malleability.controls import (
    MALLEABLE,
    METRICS,
    NOISE,
    NOISELESS,
    NOT_MALLEABLE,
    SAME_IN_EVERY_SEED,
    UNDECIDED,
)
from malleability.estimators import ESTIMATORS
from malleability.measure import measure

pytestmark = [pytest.mark.vision, pytest.mark.slow]
try:
    import timm
    import torchvision
except Exception as err:  # beside torch 2.13.0+cpu, torchvision raises RuntimeError
    pytest.skip(f"timm and torchvision do not import here ({type(err).__name__}); they run in "
                f".venv-vision: `make test-vision`", allow_module_level=True)

_spec = importlib.util.spec_from_file_location(
    "audit_realistic", Path(__file__).parents[1] / "docs" / "audit_realistic.py")
realistic = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(realistic)

CLASSES, N = 3, 150
# three seeds: the fewest whose interval may decide a verdict (malleability.intervals)
SETTINGS = {"eps": 8 / 255, "steps": 5, "fraction": 0.1, "seeds": (0, 1, 2)}
LAYERS = {"timm-vit": "blocks.0", "resnet": "layer4"}


def _images(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Pixels in [0, 1] whose class is the colour channel that is brightest."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, CLASSES, (n,), generator=g)
    x = 0.3 + 0.3 * torch.rand(n, 3, 16, 16, generator=g)
    x[torch.arange(n), y] += 0.3
    return x, y


def _build(name: str) -> nn.Module:
    torch.manual_seed(0)
    if name == "timm-vit":
        return realistic.timm_vit(image=16, patch=4, width=16, depth=2, heads=2,
                                  classes=CLASSES)
    return realistic.narrow_resnet(widths=(4, 8, 8, 16), blocks=(1, 1, 1, 1), classes=CLASSES)


@pytest.fixture(scope="module", params=list(LAYERS))
def trained(request):
    """(name, model trained by the example's own ``fit``, x, y, x_test, y_test)."""
    x, y = _images(N, 0)
    xt, yt = _images(30, 1)
    model = _build(request.param)
    record = realistic.fit(model, x, y, xt, yt, epochs=15)
    assert record["train_accuracy"] > 0.6, record  # chance: 1/3
    return request.param, model, x, y, xt, yt


def test_the_models_are_timm_and_torchvision_and_only_the_vit_attends():
    vit, resnet = _build("timm-vit"), _build("resnet")
    assert isinstance(vit, timm.models.vision_transformer.VisionTransformer)
    assert isinstance(resnet, torchvision.models.ResNet)
    assert {type(b) for n, b in resnet.named_modules() if n.count(".") == 1
            and n.startswith("layer")} == {torchvision.models.resnet.BasicBlock}
    assert [n for n, m in vit.named_modules() if isinstance(m, timm.layers.Attention)]
    assert not [n for n, m in resnet.named_modules() if "attention" in type(m).__name__.lower()]
    x = _images(4, 0)[0]
    assert vit(x).shape == resnet(x).shape == (4, CLASSES)


def _hooked_input(model: nn.Module, x: torch.Tensor, layer: str) -> torch.Tensor:
    grabbed = []
    hook = model.get_submodule(layer).register_forward_pre_hook(
        lambda _m, args: grabbed.append(args[0]) if not grabbed else None)
    with torch.no_grad():
        model(x)
    hook.remove()
    return grabbed[0]


@pytest.mark.parametrize("estimator", ["tracin", "trak", "ekfac"])
def test_audit_contracts_on_timm_and_torchvision(trained, estimator):
    name, model, x, y, xt, yt = trained
    layer = LAYERS[name]
    report = audit(model, x, y, xt, yt, estimator=estimator, layer=layer, **SETTINGS)
    out = json.loads(report.to_json())  # strict JSON
    assert out["estimator"] == estimator and out["settings"]["layer"] == layer

    # κ of the input of the named layer: timm's tokens (both Grams), the ResNet's feature map
    rep = _hooked_input(model.eval(), x, layer)
    assert report.representation["layer"] == layer
    assert report.representation["shape"] == list(rep.shape)
    columns = math.prod(rep.shape[1:])
    per_example = report.representation["per_example"]
    assert (per_example["rows"], per_example["columns"]) == (N, columns)
    assert 1 <= report.rank <= min(N, columns) and 1 <= report.kappa < math.inf
    assert ("per_token" in report.representation) == (rep.ndim == 3) == (name == "timm-vit")

    # the three flip rates, each over the three seeds, and the excess paired by seed
    noise, random = report.controls["noise"], report.controls["random"]
    randomized = ESTIMATORS[estimator].randomized  # TRAK's projection, EK-FAC's sampled labels
    assert randomized == (estimator != "tracin")
    for metric in METRICS:
        assert report.flip_rate.seeds == random[metric].seeds == SETTINGS["seeds"]
        if randomized:  # its noise is measured per seed
            assert noise[metric].seeds == SETTINGS["seeds"]
        else:
            assert noise[metric] == NOISELESS[metric]
    for values in (report.flip_rate.values, random["flip_rate"].values):
        assert all(0 <= v <= 1 for v in values)
    k = len(SETTINGS["seeds"])
    noise_flips = noise["flip_rate"].values if randomized else (0.0,) * k
    want = [a - max(r, z) for a, r, z in zip(report.flip_rate.values,
                                              random["flip_rate"].values, noise_flips,
                                              strict=True)]
    assert report.excess["flip_rate"].values == pytest.approx(want)
    want_rho = [min(r, z) - a for a, r, z in zip(
        report.spearman.values, random["spearman"].values,
        noise["spearman"].values if randomized else (1.0,) * k, strict=True)]
    assert report.excess["spearman"].values == pytest.approx(want_rho)

    # the verdict, by its rule on the excess's 95 % Student-t interval over the three seeds
    # (computed here from the per-seed excess), "no spread" where every seed agrees
    values = report.excess["flip_rate"].values
    half = stats.t.ppf(0.975, k - 1) * stats.tstd(values) / math.sqrt(k)
    low, high = sum(values) / k - half, sum(values) / k + half
    assert report.excess["flip_rate"].interval == pytest.approx((low, high))
    margin = report.settings["margin"]
    rule = (SAME_IN_EVERY_SEED if len(set(values)) == 1 else MALLEABLE if low > 0
            else NOT_MALLEABLE if high < margin else NOISE)
    assert report.verdicts["flip_rate"] == rule
    assert report.verdict.startswith(rule)
    assert report.diagnostics["rank_stability"] == noise["spearman"]


def test_two_seeds_have_an_interval_but_decide_no_verdict(trained):
    """Two seeds give a (wide) interval but fewer than the three a verdict needs: TRAK, whose
    excess differs between seeds, so it is the seed count, not a zero-width interval, that
    leaves the verdict undecided."""
    name, model, x, y, xt, yt = trained
    report = audit(model, x, y, xt, yt, estimator="trak", layer=LAYERS[name],
                   **{**SETTINGS, "seeds": (0, 1)})
    assert len(set(report.excess["flip_rate"].values)) == 2
    for metric in METRICS:
        assert report.excess[metric].seeds == (0, 1)
        assert report.excess[metric].interval is not None
        assert report.verdicts[metric] == UNDECIDED
    assert report.verdict == UNDECIDED


def test_pgd_and_its_control_stay_in_the_eps_ball_on_the_top_points(trained):
    name, model, x, y, xt, yt = trained
    p = prepare(model, x, y, xt, yt, estimator="tracin", layer=LAYERS[name], **SETTINGS)
    eps = SETTINGS["eps"]
    for attack in (p.settings.attack_at(0), p.settings.control_at(0)):
        m = measure([p.model], *p.data, p.estimator, attack, fraction=0.1, seed=0,
                    bounds=p.settings.bounds)
        moved = (m.perturbed_inputs != x).flatten(1).any(1)
        assert set(moved.nonzero().flatten().tolist()) <= set(m.selected.tolist())
        assert moved.any() and m.selected.numel() == math.ceil(0.1 * N)
        assert 0 < m.max_perturbation <= eps + 1e-6
        assert float(m.perturbed_inputs.min()) >= 0 and float(m.perturbed_inputs.max()) <= 1


def test_a_layer_the_resnet_lacks_is_one_line_before_computation():
    resnet = _build("resnet")
    x, y = _images(20, 0)
    with pytest.raises(ValueError, match=r"^layer: no submodule named 'layer5'") as err:
        audit(resnet, x, y, x, y, estimator="tracin", layer="layer5", **SETTINGS)
    assert "\n" not in str(err.value)
