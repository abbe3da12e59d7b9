"""audit on models beyond the package's own: Hugging Face outputs, token models attacked at a
named submodule, kronfluence's estimators, TRAK's checkpoint ensemble, and the one-line
errors before any computation (issue 30)."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, vmap
from torch.nn import functional as F

from malleability.auditing import AuditSettings, audit, prepare_model, representation
from malleability.estimators import ESTIMATORS, make_estimator
from malleability.estimators.dattri import IFArnoldi
from malleability.estimators.kronfluence import tracked_modules_of
from malleability.estimators.trak import TRAK

transformers = pytest.importorskip("transformers")
CLASSES = 3
WORDS = "bert.embeddings.word_embeddings"
FAST = {"eps": 0.05, "steps": 3, "fraction": 0.2, "seeds": (0,)}


def _train(model: nn.Module, x: torch.Tensor, y: torch.Tensor, steps: int = 10) -> nn.Module:
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(steps):
        opt.zero_grad()
        out = model(x)
        F.cross_entropy(getattr(out, "logits", out), y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval()


@pytest.fixture(scope="module")
def vit():
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=1, hidden_size=8,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=16, num_labels=CLASSES)
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, CLASSES, (24,), generator=g)
    x = 0.4 * torch.rand(24, 1, 8, 8, generator=g)
    x[torch.arange(24), 0, y] += 0.5  # the class is the brightest row
    return _train(transformers.ViTForImageClassification(config), x, y), x, y


@pytest.fixture(scope="module")
def bert():
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16,
                                     max_position_embeddings=6, num_labels=CLASSES)
    x = torch.randint(0, 20, (24, 6), generator=torch.Generator().manual_seed(0))
    y = x[:, 0] % CLASSES
    return _train(transformers.BertForSequenceClassification(config), x, y), x, y


def test_hf_vit_audit_names_layers_on_the_users_model(vit):
    model, x, y = vit
    layer = "vit.layers.0"
    report = audit(model, x, y, x, y, estimator="tracin", layer=layer, eps=0.0, steps=2)
    grabbed = []
    hook = model.get_submodule(layer).register_forward_pre_hook(
        lambda _m, args: grabbed.append(args[0]))
    with torch.no_grad():
        model(x)
    hook.remove()
    assert report.representation["layer"] == layer
    assert report.representation["shape"] == list(grabbed[0].shape)  # (24, 5 tokens, 8)
    assert float(report.flip_rate) == 0.0 and float(report.spearman) == pytest.approx(1.0)


def test_perturb_attacks_the_embeddings_in_their_units(bert):
    model, x, y = bert
    settings = AuditSettings(eps=0.1, steps=3)
    ready = prepare_model(model, x, x, None, settings, perturb=WORDS)
    h = model.get_submodule(WORDS)(x)
    torch.testing.assert_close(ready.x, h.detach())  # the audit runs on h(x) ...
    with torch.no_grad():  # ... through the model as a function of h
        torch.testing.assert_close(ready.model(ready.x), model(x).logits)
    assert ready.settings.bounds == (-float("inf"), float("inf"))
    assert ready.settings.step() == pytest.approx(2.5 * 0.1 / 3)
    report = audit(model, x, y, x, y, estimator="tracin", perturb=WORDS,
                   layer="bert.encoder", **FAST)
    assert report.representation["layer"] == "bert.encoder"
    assert report.representation["shape"] == [24, 6, 8]
    assert 0 <= float(report.flip_rate) <= 1 and report.settings["perturb"] == WORDS
    report.to_json()  # strict JSON with the unbounded box


def test_kronfluence_estimators_audit_a_token_model(bert):
    model, x, y = bert
    report = audit(model, x, y, x[:6], y[:6], estimator="ekfac", perturb=WORDS,
                   parameters=("classifier",), **FAST)
    assert report.estimator == "ekfac" and 0 <= float(report.flip_rate) <= 1


def test_parameters_select_the_modules_that_own_them(bert):
    model = bert[0]
    assert tracked_modules_of(model, ["classifier"], "ekfac") == ["classifier"]
    layer = "bert.encoder.layer.0.attention.self"
    assert tracked_modules_of(model, [layer], "ekfac") == [f"{layer}.{k}" for k in
                                                          ("query", "key", "value")]
    with pytest.raises(ValueError, match=r"^parameters: ekfac tracks nn.Linear"):
        tracked_modules_of(model, ["bert.embeddings.LayerNorm"], "ekfac")


def test_registered_kronfluence_scores_equal_the_adapters():
    from malleability.kronfluence_adapter import kronfluence_scores

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 5), nn.Tanh(), nn.Linear(5, 3)).double()
    g = torch.Generator().manual_seed(1)
    x, y = torch.randn(20, 4, generator=g, dtype=torch.float64), torch.arange(20) % 3
    for name in ("ekfac", "kfac"):
        got = make_estimator(name, damping=1e-2).scores(model, x, y, x[:4], y[:4], seed=3,
                                                         parameters=["2"])
        want = kronfluence_scores(model, x, y, x[:4], y[:4], strategy=name, modules=["2"],
                                  damping=1e-2, seed=3)
        assert torch.equal(got, want)
    assert {"ekfac", "kfac"} <= set(ESTIMATORS)


def test_trak_ensembles_its_checkpoints_as_trak_defines():
    """With proj_dim = P (< n) the projection is square and invertible, so each checkpoint's
    φ_t (ΦᵀΦ)⁻¹ Φᵀ equals the unprojected one, computed here from torch.func gradients of the
    logistic loss (one score: no softmax's null directions, so ΦᵀΦ is invertible):
    scores = mean_t [mean_k G_t,k (G_kᵀG_k)⁻¹ G_kᵀ] ⊙ mean_k (1 − p_k(correct))."""
    g = torch.Generator().manual_seed(0)
    x, y = torch.randn(40, 4, generator=g), torch.arange(40) % 2
    xt, yt = torch.randn(5, 4, generator=g), torch.arange(5) % 2
    models = []
    for seed in (0, 1):
        torch.manual_seed(seed)
        models.append(nn.Linear(4, 1))  # P = 5, gradients well conditioned (float32)
    terms, q = [], []
    for m in models:
        exact = copy.deepcopy(m).double()
        params = {k: v.detach() for k, v in exact.named_parameters()}

        def loss(p, xb, yb, exact=exact):
            f = functional_call(exact, p, (xb[None],)).reshape(())
            return F.binary_cross_entropy_with_logits(f, yb.double())

        def flat(xs, ys, p=params, loss=loss):
            grads = vmap(grad(loss), in_dims=(None, 0, 0))(p, xs.double(), ys)
            return torch.cat([grads[k].reshape(len(xs), -1) for k in p], 1)

        gt, gtest = flat(x, y), flat(xt, yt)
        terms.append(gtest @ torch.linalg.solve(gt.T @ gt, gt.T))
        with torch.no_grad():
            p1 = torch.sigmoid(exact(x.double()).reshape(-1))
            q.append(1 - torch.where(y == 1, p1, 1 - p1))
    want = (sum(terms) / 2 * (sum(q) / 2)).mean(0)
    got = TRAK(proj_dim=5).ensemble_scores(models, x, y, xt, yt, seed=0)
    torch.testing.assert_close(got, want, rtol=0, atol=1e-3 * float(want.abs().max()))
    single = TRAK(proj_dim=5).scores(models[0], x, y, xt, yt, seed=0)
    assert not torch.allclose(got, single, atol=1e-2 * float(want.abs().max()))


def test_bad_inputs_are_refused_in_one_line_before_computation(vit, bert):
    model, x, y = vit
    tokens, labels = bert[0], bert[1:]

    class Named(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(64, 3)

        def forward(self, x):
            return {"scores": self.lin(x.flatten(1))}

    class Gain(nn.Module):  # no module kronfluence can track
        def __init__(self):
            super().__init__()
            self.gain = nn.Parameter(torch.ones(3))

        def forward(self, x):
            return x.flatten(1)[:, :3] * self.gain

    cases = [
        (dict(model=Named(), x=x), r"^model: expected its output to be a tensor, an object "
                                   r"with \.logits"),
        (dict(model=model, x=x, perturb="nope"), r"^perturb: 'nope' names no submodule"),
        (dict(model=model, x=x, layer="nope"), r"^layer: no submodule named 'nope'"),
        (dict(model=tokens, x=labels[0]), r"^x_train: torch.int64 inputs \(token ids\) cannot "
                                          r"be perturbed; name the submodule .* perturb"),
        (dict(model=tokens, x=labels[0], perturb=WORDS, estimator="if-ekfac"),
         r"^estimator: if-ekfac \(dattri\) handles 2-d activations only.*use 'ekfac'"),
        (dict(model=model, x=x, estimator=TRAK(proj_dim=24)), r"^proj_dim: TRAK's kernel"),
        (dict(model=model, x=x, estimator=IFArnoldi(proj_dim=10**6)),
         r"^proj_dim: if-arnoldi keeps 1000000 eigenpairs of a Hessian of \d+ parameters"),
        (dict(model=model, x=x, estimator=IFArnoldi(proj_dim=20, iterations=10)),
         r"^iterations: if-arnoldi needs at least proj_dim = 20 iterations"),
        (dict(model=Gain(), x=x, estimator="kfac"),
         r"^estimator: kfac cannot audit Gain \(model: kronfluence tracks nn.Linear"),
        (dict(model=model, x=x, checkpoints=[nn.Linear(2, 2).state_dict()]),
         r"^checkpoints\[0\]: does not fit ViTForImageClassification"),
    ]
    for case, message in cases:
        inputs = case.pop("x")
        labels_ = bert[2] if inputs.dtype == torch.long else y
        with pytest.raises(ValueError, match=message) as err:
            audit(case.pop("model"), inputs, labels_, inputs, labels_, **case)
        assert "\n" not in str(err.value)


def test_representation_of_the_wrapper_is_the_users_layer(vit):
    model, x, _ = vit
    ready = prepare_model(model, x, x, None, AuditSettings(layer="vit.layernorm"))
    assert ready.settings.layer == "model.vit.layernorm"
    torch.testing.assert_close(representation(ready.model, x, ready.settings.layer),
                               representation(model, x, "vit.layernorm"))


def test_cli_perturb_audits_a_token_model(tmp_path, bert):
    import json

    import numpy as np
    from click.testing import CliRunner

    from malleability.cli import main

    model, x, y = bert
    torch.save(model.state_dict(), tmp_path / "bert.pt")
    (tmp_path / "build.py").write_text(
        "import transformers\n"
        "def build():\n"
        "    return transformers.BertForSequenceClassification(transformers.BertConfig(\n"
        "        vocab_size=20, hidden_size=8, num_hidden_layers=1, num_attention_heads=2,\n"
        "        intermediate_size=16, max_position_embeddings=6, num_labels=3))\n")
    np.savez(tmp_path / "data.npz", x=x.numpy(), y=y.numpy())
    common = ["audit", "--model", str(tmp_path / "bert.pt"), "--builder",
              f"{tmp_path / 'build.py'}:build", "--train", str(tmp_path / "data.npz"),
              "--test", str(tmp_path / "data.npz"), "--estimator", "tracin", "--eps", "0.05",
              "--steps", "2"]
    result = CliRunner().invoke(main, [*common, "--perturb", WORDS, "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)[0]
    assert report["settings"]["perturb"] == WORDS and report["representation"]["layer"] == WORDS
    result = CliRunner().invoke(main, common)
    assert result.exit_code != 0 and "--perturb" in result.output
