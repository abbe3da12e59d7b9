"""Attacks on a named submodule's output (token models): a tiny BERT's word embeddings."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from malleability.embedding_attack import (
    SubmoduleInput,
    attack_submodule,
    check_perturb,
    perturbed_output,
    submodule_output,
)

transformers = pytest.importorskip("transformers")

WORDS = "bert.embeddings.word_embeddings"


@pytest.fixture(scope="module")
def bert():
    """A float64 BERT classifier trained briefly on "class = first token mod 3", with its data."""
    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=20, hidden_size=16, num_hidden_layers=1,
                                     num_attention_heads=2, intermediate_size=32,
                                     max_position_embeddings=8, num_labels=3)
    model = transformers.BertForSequenceClassification(config).double()
    x = torch.randint(0, 20, (32, 8), generator=torch.Generator().manual_seed(0))
    y = x[:, 0] % 3
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    for _ in range(10):
        opt.zero_grad()
        F.cross_entropy(model(x).logits, y).backward()
        opt.step()
    model.zero_grad(set_to_none=True)
    return model.eval(), x, y


def _losses(model, x, y, delta=None):
    with torch.no_grad():
        if delta is None:
            return F.cross_entropy(model(x).logits, y, reduction="none")
        with perturbed_output(model, WORDS, delta):
            return F.cross_entropy(model(x).logits, y, reduction="none")


def test_pgd_stays_in_the_eps_ball_and_raises_every_examples_loss(bert):
    model, x, y = bert
    eps = 0.05
    delta = attack_submodule(model, x, y, WORDS, eps, steps=10, alpha=0.01, seed=0)
    h = submodule_output(model, WORDS, x)
    assert delta.shape == h.shape == (32, 8, 16)
    seen = []
    with perturbed_output(model, WORDS, delta):
        handle = model.get_submodule(WORDS).register_forward_hook(
            lambda _m, _a, out: seen.append(out.detach()))
        model(x)
        handle.remove()
    # hooks run in registration order: the later one sees h + δ
    assert torch.equal(seen[0], h + delta)
    assert float(delta.abs().max()) <= eps
    assert float((seen[0] - h).abs().max()) <= eps * (1 + 1e-12)  # h + δ − h, rounded
    assert bool((_losses(model, x, y, delta) > _losses(model, x, y)).all())
    assert not any(m._forward_hooks for m in model.modules())
    assert all(p.grad is None for p in model.parameters())


def test_fgsm_is_eps_times_the_sign_of_the_representation_gradient(bert):
    model, x, y = bert
    eps = 0.03
    zero = torch.zeros_like(submodule_output(model, WORDS, x), requires_grad=True)
    with perturbed_output(model, WORDS, zero):
        loss = F.cross_entropy(model(x).logits, y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, zero)
    expected = eps * grad.sign()
    assert torch.equal(attack_submodule(model, x, y, WORDS, eps, attack="fgsm"), expected)


def test_pgd_is_projected_sign_ascent_on_the_representation(bert):
    """The same PGD, written out in δ: a uniform start in the ball from the seeded generator,
    then δ ← clip(δ + α·sign ∇_δ L, −ε, ε)."""
    model, x, y = bert
    eps, alpha, steps, seed = 0.05, 0.02, 5, 3
    h = submodule_output(model, WORDS, x)
    r = torch.rand(h.shape, generator=torch.Generator().manual_seed(seed), dtype=h.dtype)
    delta = eps * (2 * r - 1)
    for _ in range(steps):
        delta = delta.detach().requires_grad_(True)
        with perturbed_output(model, WORDS, delta):
            loss = F.cross_entropy(model(x).logits, y, reduction="sum")
        (grad,) = torch.autograd.grad(loss, delta)
        delta = (delta + alpha * grad.sign()).clamp(-eps, eps)
    got = attack_submodule(model, x, y, WORDS, eps, alpha=alpha, steps=steps, seed=seed)
    assert torch.allclose(got, delta.detach(), rtol=0, atol=1e-12)


def test_several_checkpoints_attack_their_mean_loss(bert):
    model, x, y = bert
    one = attack_submodule(model, x[:8], y[:8], WORDS, 0.05, steps=4, alpha=0.02)
    two = attack_submodule([model, model], x[:8], y[:8], WORDS, 0.05, steps=4, alpha=0.02)
    assert torch.allclose(one, two, rtol=0, atol=1e-12)


def test_token_ids_without_perturb_are_refused_with_a_hint(bert):
    model, x, _ = bert
    with pytest.raises(ValueError, match=r"^x_train: torch.int64 inputs \(token ids\) cannot "
                                         r"be perturbed; name the submodule .* --perturb\), "
                                         r"e.g. 'bert.embeddings.word_embeddings'$"):
        check_perturb(model, x, None)
    check_perturb(model, x, WORDS)
    check_perturb(nn.Linear(2, 2), torch.rand(3, 2), None)


@pytest.mark.parametrize("name", ["bert.embeddings.nothing", "", "bert..embeddings"])
def test_a_perturb_that_names_no_submodule_is_refused(bert, name):
    model, x, y = bert
    with pytest.raises(ValueError, match=rf"^perturb: {name!r} names no submodule of "
                                         r"BertForSequenceClassification$"):
        check_perturb(model, x, name)
    with pytest.raises(ValueError, match=r"^perturb: .* names no submodule"):
        attack_submodule(model, x, y, name, 0.1)


def test_a_submodule_that_returns_no_tensor_is_refused():
    class Pair(nn.Module):
        def forward(self, x):
            return x, x

    class Model(nn.Module):
        def __init__(self):
            super().__init__()
            self.pair, self.head = Pair(), nn.Linear(2, 3)

        def forward(self, x):
            return self.head(self.pair(x)[0])

    x, y = torch.rand(4, 2), torch.zeros(4, dtype=torch.long)
    with pytest.raises(ValueError, match=r"^perturb: 'pair' returns tuple, not a tensor; "):
        attack_submodule(Model(), x, y, "pair", 0.1)


def test_submodule_input_is_the_model_as_a_function_of_the_perturbed_representation(bert):
    model, x, y = bert
    wrapped = SubmoduleInput(model, WORDS)
    h = wrapped.check(x)
    assert torch.equal(h, submodule_output(model, WORDS, x))
    delta = attack_submodule(model, x, y, WORDS, 0.05, steps=3, alpha=0.02)
    with torch.no_grad():
        with perturbed_output(model, WORDS, delta):
            expected = model(x).logits
        assert torch.equal(wrapped(h + delta), expected)
    assert not any(m._forward_hooks for m in model.modules())


def test_submodule_input_feeds_an_estimator(bert):
    kronfluence_adapter = pytest.importorskip("malleability.kronfluence_adapter")
    model, x, y = bert
    wrapped = SubmoduleInput(model, WORDS)
    h = wrapped.check(x)
    scores = kronfluence_adapter.kronfluence_scores(wrapped, h[:24], y[:24], h[24:], y[24:])
    direct = kronfluence_adapter.kronfluence_scores(model, x[:24], y[:24], x[24:], y[24:])
    assert torch.allclose(scores, direct, rtol=1e-9, atol=1e-12)  # the same tracked layers


def test_submodule_input_refuses_a_model_that_reads_its_ids_elsewhere():
    class TwoLookups(nn.Module):
        def __init__(self):
            super().__init__()
            self.words, self.extra = nn.Embedding(10, 4), nn.Embedding(10, 4)
            self.head = nn.Linear(4, 3)

        def forward(self, ids):
            return self.head((self.words(ids) + self.extra(ids)).mean(1))

    x = torch.randint(1, 10, (5, 6), generator=torch.Generator().manual_seed(0))
    with pytest.raises(ValueError, match=r"^perturb: TwoLookups reads its inputs beyond 'words' "):
        SubmoduleInput(TwoLookups(), "words").check(x)
