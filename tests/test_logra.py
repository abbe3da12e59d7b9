"""LoGra (dattri's LoGraAttributor) through the estimator protocol, against an independent
ground truth: per-example gradients by autograd, projected by the factors dattri drew (read
off its compressors by projecting unit vectors), then the block-diagonal projected-Fisher
influence function in float64. Three models meet dattri's batch format through the adapter:
a 3-class MLP, a token model (3-d activations: gradients summed over tokens) and a one-score
model (logits (0, z))."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from malleability.estimators import make_estimator
from malleability.estimators.logra import LoGra
from malleability.losses import training_loss

DAMPING, PROJ_DIM = 1e-3, 16


class Tokens(nn.Module):
    """(n, T, d) float inputs → Linear per token → tanh → mean over tokens → Linear."""

    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(3, 4), nn.Linear(4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x)).mean(1))


class OneScore(nn.Module):
    def __init__(self):
        super().__init__()
        self.a, self.b = nn.Linear(5, 4), nn.Linear(4, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.b(torch.tanh(self.a(x))).squeeze(-1)


def _case(kind: str):
    torch.manual_seed(0)
    g = torch.Generator().manual_seed(1)
    model, shape, classes = {"mlp": (nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3)),
                                     (5,), 3),
                             "tokens": (Tokens(), (6, 3), 3), "one score": (OneScore(), (5,), 2)
                             }[kind]
    return (model, torch.rand(24, *shape, generator=g), torch.randint(0, classes, (24,),
                                                                      generator=g),
            torch.rand(5, *shape, generator=g), torch.randint(0, classes, (5,), generator=g))


def _projected(model, layers, factors, x, y) -> list[torch.Tensor]:
    """Per layer, the (n, k²) projected per-example gradients P_out [∇W | ∇b] P_inᵀ."""
    out = [[] for _ in layers]
    for i in range(x.shape[0]):
        model.zero_grad()
        training_loss(model(x[i:i + 1]), y[i:i + 1]).sum().backward()
        for j, layer in enumerate(layers):
            grad = torch.cat([layer.weight.grad, layer.bias.grad[:, None]], 1).double()
            p_out, p_in = factors[j]
            out[j].append((p_out @ grad @ p_in.T).reshape(-1))
    return [torch.stack(rows) for rows in out]


@pytest.mark.parametrize("kind", ["mlp", "tokens", "one score"])
def test_logra_equals_the_projected_fisher_influence_function(kind, monkeypatch):
    from dattri.algorithm import LoGraAttributor

    model, x, y, xt, yt = _case(kind)
    made = []
    cache = LoGraAttributor.cache
    monkeypatch.setattr(LoGraAttributor, "cache", lambda self, d: made.append(self) or
                        cache(self, d))
    got = LoGra(damping=DAMPING, proj_dim=PROJ_DIM).scores(model, x, y, xt, yt, seed=2)
    layers = [m for m in model.modules() if isinstance(m, nn.Linear)]
    factors = []
    for layer, compressor in zip(layers, made[0].compressors, strict=True):
        s_out, s_in = compressor.sparsifier.sparsifier_comp
        factors.append(tuple(s(torch.eye(d), ensemble_id=0).T.double() for s, d in (
            (s_out, layer.out_features), (s_in, layer.in_features + 1))))
    train, test = _projected(model, layers, factors, x, y), _projected(model, layers, factors,
                                                                        xt, yt)
    want = torch.zeros(x.shape[0], dtype=torch.float64)
    for g, gt in zip(train, test, strict=True):
        fisher = g.T @ g / g.shape[0]
        damped = fisher + DAMPING * fisher.trace() / fisher.shape[0] * torch.eye(len(fisher),
                                                                             dtype=torch.float64)
        want += (g @ torch.linalg.solve(damped, gt.T)).mean(1)
    torch.testing.assert_close(got, want, rtol=0, atol=2e-3 * float(want.abs().max()))


def test_logra_is_seeded_and_checks_its_settings():
    model, x, y, xt, yt = _case("mlp")
    est = make_estimator("logra")
    assert est.randomized and est.proj_dim == 4096
    small = LoGra(proj_dim=PROJ_DIM)
    a, b = (small.scores(model, x, y, xt, yt, seed=s) for s in (0, 1))
    assert torch.equal(a, small.scores(model, x, y, xt, yt, seed=0)) and not torch.equal(a, b)
    with pytest.raises(ValueError, match=r"^proj_dim: expected a perfect square .*got 10$"):
        LoGra(proj_dim=10)
    with pytest.raises(ValueError, match=r"^estimator: logra cannot audit Identity "):
        LoGra().check(nn.Identity(), x)
    with pytest.raises(ValueError, match=r"^parameters: logra tracks nn.Linear modules"):
        LoGra().check(nn.Sequential(nn.Linear(5, 3), nn.LayerNorm(3)), x, ["1"])
