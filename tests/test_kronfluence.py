"""kronfluence's K-FAC, EK-FAC, diagonal and identity influence, against refitting and hand-made
gradients, on a linear softmax model and on tiny Hugging Face ViT and BERT (3-d token
activations, where dattri's EK-FAC fails)."""

from __future__ import annotations

import tempfile

import pytest
import torch
from torch import nn
from torch.func import functional_call, grad, hessian, vmap
from torch.nn import functional as F

pytest.importorskip("kronfluence")
from malleability.kronfluence_adapter import kronfluence_scores  # noqa: E402


@pytest.fixture(scope="module")
def kronecker_case():
    """A linear softmax model at W = 0, b = 0, with every input present once with each label.

    Every prediction is uniform, so the Hessian of the mean cross-entropy is M ⊗ A
    (M = diag(p) − ppᵀ, A the mean of aaᵀ over inputs a = [x, 1]), the empirical Fisher equals
    it (the labels are independent of the inputs), and W = 0 is the minimiser. K-FAC's and
    EK-FAC's factors are then exact. The ground truth is refitting: with point i's weight 1 ∓ ε
    in (1/n) Σ w_j L_j + (λ/2)‖θ‖², I_i = n · dL_test/dε, by a central difference (error
    O(ε²) ≈ 1e-9 relative at ε = 1e-4) of Newton refits converged to round-off.
    """
    g = torch.Generator().manual_seed(0)
    d, classes, k, lam, eps = 3, 3, 8, 1e-2, 1e-4
    x = torch.randn(k, d, generator=g, dtype=torch.float64).repeat_interleave(classes, 0)
    y = torch.arange(classes).repeat(k)
    x_test = torch.randn(6, d, generator=g, dtype=torch.float64)
    y_test = torch.randint(0, classes, (6,), generator=g)
    n, p = len(y), d * classes + classes
    model = nn.Linear(d, classes).double()
    with torch.no_grad():
        model.weight.zero_()
        model.bias.zero_()

    def params(v):
        return {"weight": v[: d * classes].reshape(classes, d), "bias": v[d * classes:]}

    def objective(v, w):
        losses = F.cross_entropy(functional_call(model, params(v), (x,)), y, reduction="none")
        return (w * losses).mean() + lam / 2 * v @ v

    def test_loss(v):
        return F.cross_entropy(functional_call(model, params(v), (x_test,)), y_test)

    eye = torch.eye(n, dtype=torch.float64)
    w = torch.cat([1 - eps * eye, 1 + eps * eye])
    v = torch.zeros(2 * n, p, dtype=torch.float64)
    for _ in range(3):  # Newton from the unperturbed minimiser, O(ε) away
        v = v - torch.linalg.solve(vmap(hessian(objective))(v, w), vmap(grad(objective))(v, w))
    assert float(vmap(grad(objective))(v, w).abs().max()) < 1e-14
    loss = vmap(test_loss)(v)
    refit = n * (loss[:n] - loss[n:]) / (2 * eps)
    return model, x, y, x_test, y_test, lam, refit


@pytest.mark.parametrize("strategy", ["kfac", "ekfac"])
@pytest.mark.parametrize("wrapped, batch_size", [(False, 128), (True, 5)])
def test_kfac_and_ekfac_equal_refitting_where_the_fisher_is_kronecker(kronecker_case, strategy,
                                                                     wrapped, batch_size):
    model, x, y, x_test, y_test, lam, refit = kronecker_case
    if wrapped:  # the same layer inside a container, not as the root module
        model = nn.Sequential(model)
    scores = kronfluence_scores(model, x, y, x_test, y_test, strategy=strategy, damping=lam,
                                empirical_fisher=True, batch_size=batch_size)
    assert scores.dtype == torch.float64 and scores.shape == refit.shape
    assert float((scores - refit).abs().max()) < 1e-6 * float(refit.abs().max())


def _mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(4, 6), nn.Tanh(), nn.Linear(6, 3)).double()


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    return torch.randn(n, 4, generator=g, dtype=torch.float64), torch.randint(0, 3, (n,),
                                                                                generator=g)


def _per_example_gradients(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """(n, P) gradients of each example's cross-entropy with respect to every parameter."""
    params = {k: v.detach() for k, v in model.named_parameters()}

    def loss(p, xb, yb):
        return F.cross_entropy(functional_call(model, p, (xb[None],)), yb[None])

    grads = vmap(grad(loss), in_dims=(None, 0, 0))(params, x, y)
    return torch.cat([g.reshape(len(x), -1) for g in grads.values()], dim=1)


def test_diagonal_is_the_influence_of_the_damped_empirical_fisher_diagonal():
    model, lam = _mlp(), 1e-2
    (x, y), (x_test, y_test) = _data(30, 1), _data(5, 2)
    g_train = _per_example_gradients(model, x, y)
    g_test = _per_example_gradients(model, x_test, y_test)
    expected = (g_test / ((g_train**2).mean(0) + lam) @ g_train.T).mean(0)
    scores = kronfluence_scores(model, x, y, x_test, y_test, strategy="diagonal", damping=lam,
                                empirical_fisher=True)
    assert torch.allclose(scores, expected, rtol=1e-10, atol=1e-12)


def _tiny_vit() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=8, patch_size=4, num_channels=3, hidden_size=8,
                                    num_hidden_layers=1, num_attention_heads=2,
                                    intermediate_size=16, num_labels=3)
    x = torch.rand(24, 3, 8, 8, dtype=torch.float64)
    return transformers.ViTForImageClassification(config).double(), x, torch.arange(24) % 3


def _tiny_bert() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    transformers = pytest.importorskip("transformers")
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=20, hidden_size=8, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=16,
                                     max_position_embeddings=6, num_labels=3)
    x = torch.randint(0, 20, (24, 6), generator=torch.Generator().manual_seed(0))
    return transformers.BertForSequenceClassification(config).double(), x, x[:, 0] % 3


TOKEN_MODELS = {"hf-vit": _tiny_vit, "hf-bert": _tiny_bert}


def _tracked_gradient_dot_products(model, x, y, x_test, y_test) -> torch.Tensor:
    """mean_t ∇L_t · ∇L_i over the weights and biases of every nn.Linear and nn.Conv2d (what
    kronfluence tracks), example by example."""
    params = [p for m in model.modules() if isinstance(m, nn.Linear | nn.Conv2d)
              for p in m.parameters()]

    def gradients(xs, ys):
        rows = []
        for xi, yi in zip(xs, ys, strict=True):
            loss = F.cross_entropy(model(xi[None]).logits, yi[None])
            rows.append(torch.cat([g.reshape(-1) for g in torch.autograd.grad(loss, params)]))
        return torch.stack(rows)

    return (gradients(x_test, y_test) @ gradients(x, y).T).mean(0)


@pytest.mark.parametrize("name", list(TOKEN_MODELS))
def test_identity_on_token_models_is_the_gradient_dot_product(name):
    model, x, y = TOKEN_MODELS[name]()
    model.eval()
    expected = _tracked_gradient_dot_products(model, x[:16], y[:16], x[16:], y[16:])
    scores = kronfluence_scores(model, x[:16], y[:16], x[16:], y[16:], strategy="identity")
    assert torch.allclose(scores, expected, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("strategy", ["kfac", "ekfac"])
@pytest.mark.parametrize("name", list(TOKEN_MODELS))
def test_kfac_and_ekfac_on_token_models_tend_to_the_gradient_dot_product(name, strategy):
    """(G + λI)⁻¹ = I/λ + O(‖G‖/λ²): at λ = 1e8, λ·I_i is the gradient dot product to about
    ‖G‖/λ ≈ 1e-8 relative; a wrong eigenbasis rotation for 3-d activations would not vanish."""
    model, x, y = TOKEN_MODELS[name]()
    lam = 1e8
    dot = kronfluence_scores(model, x[:16], y[:16], x[16:], y[16:], strategy="identity")
    scores = kronfluence_scores(model, x[:16], y[:16], x[16:], y[16:], strategy=strategy,
                                damping=lam)
    assert torch.allclose(lam * scores, dot, rtol=1e-5, atol=1e-5 * float(dot.abs().max()))


def test_dattris_ekfac_fails_on_token_activations_which_is_why_kronfluence_is_used():
    """Pins dattri 0.3.0's UnboundLocalError on nn.Linear layers with 3-d inputs."""
    dif = pytest.importorskip("dattri.algorithm.influence_function")
    from dattri.task import AttributionTask
    from torch.utils.data import DataLoader, TensorDataset

    model, x, y = _tiny_bert()
    model = model.float().eval()

    def loss(params, data):
        xb, yb = data
        return F.cross_entropy(functional_call(model, params, (xb,)).logits, yb)

    task = AttributionTask(loss_func=loss, model=model, checkpoints=model.state_dict())
    attributor = dif.IFAttributorEKFAC(task, device="cpu", damping=1e-3)
    with pytest.raises(UnboundLocalError, match="a_prev"):
        attributor.cache(DataLoader(TensorDataset(x, y), batch_size=len(x)))
    model, x, y = _tiny_bert()  # a fresh one: dattri's failed cache left its hooks behind
    assert kronfluence_scores(model, x[:16], y[:16], x[16:], y[16:]).isfinite().all()


def test_the_true_fisher_draws_its_labels_from_the_seed_and_leaves_no_trace(tmp_path,
                                                                            monkeypatch):
    model = _mlp()
    (x, y), (x_test, y_test) = _data(30, 1), _data(5, 2)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    torch.manual_seed(123)
    state = torch.random.get_rng_state()
    a = kronfluence_scores(model, x, y, x_test, y_test, seed=0)
    b = kronfluence_scores(model, x, y, x_test, y_test, seed=0)
    c = kronfluence_scores(model, x, y, x_test, y_test, seed=1)
    assert torch.equal(a, b) and not torch.equal(a, c)
    assert torch.equal(torch.random.get_rng_state(), state)
    assert list(tmp_path.iterdir()) == []
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())
    assert all(p.requires_grad for p in model.parameters())
    assert not any(m._forward_hooks or m._forward_pre_hooks for m in model.modules())


@pytest.mark.parametrize("kwargs, message", [
    ({"strategy": "kfca"}, r"^strategy: expected one of identity, diagonal, kfac, ekfac, "
                           r"got 'kfca'$"),
    ({"modules": ["3"]}, r"^modules: '3' names no submodule of Sequential$"),
    ({"modules": ["1"]}, r"^modules: '1' is a Tanh; kronfluence tracks only nn.Linear and "
                         r"nn.Conv2d$"),
    ({"damping": 0.0}, r"^damping: expected a positive number, got 0.0$"),
])
def test_bad_settings_get_one_line_errors(kwargs, message):
    (x, y), (x_test, y_test) = _data(10, 1), _data(3, 2)
    with pytest.raises(ValueError, match=message):
        kronfluence_scores(_mlp(), x, y, x_test, y_test, **kwargs)


def test_a_model_without_linear_or_conv_layers_is_refused():
    x, y = torch.randn(4, 3), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^model: kronfluence tracks .* and Softmax has none$"):
        kronfluence_scores(nn.Softmax(dim=1), x, y, x, y)
