"""The generic empirical NTK against a hand-written Jacobian contraction (torch.autograd loops)."""

import pytest
import torch
from torch import nn

from malleability.jacobian_ntk import jacobian_ntk, last_layers, select_parameters

F64 = torch.float64


class TokenClassifier(nn.Module):
    """A foreign module: LayerNorm, multi-head softmax attention over tokens, mean-pool, head."""

    def __init__(self, d: int = 6, classes: int = 3) -> None:
        super().__init__()
        self.norm = nn.LayerNorm(d)
        self.attn = nn.MultiheadAttention(d, num_heads=2, batch_first=True)
        self.head = nn.Linear(d, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.norm(x)
        h = h + self.attn(h, h, h, need_weights=False)[0]
        return self.head(h.mean(1))


def _hand_ntk(model, x1, x2, names):
    """(1/C) Σ_c J_c(x1) J_c(x2)ᵀ with each Jacobian row from torch.autograd.grad."""
    params = [p for k, p in model.named_parameters() if k in names]

    def jac(x):
        rows = []
        for xi in x:
            out = model(xi[None])[0].reshape(-1)
            rows.append(torch.stack([
                torch.cat([g.reshape(-1) for g in torch.autograd.grad(out[c], params,
                                                                     retain_graph=True)])
                for c in range(out.numel())]))
        return torch.stack(rows)  # n × C × P

    j1, j2 = jac(x1), jac(x2)
    return torch.einsum("acp,bcp->ab", j1, j2) / j1.shape[1]


@pytest.fixture
def token_model():
    torch.manual_seed(0)
    return TokenClassifier().to(F64)


def _tokens(n, seed):
    return torch.randn(n, 4, 6, generator=torch.Generator().manual_seed(seed), dtype=F64)


@pytest.mark.parametrize("memory", [2**30, 1])  # everything at once; one row per block
def test_matches_hand_written_contraction_with_layernorm_and_attention(token_model, memory):
    x1, x2 = _tokens(4, 1), _tokens(2, 2)
    names = select_parameters(token_model)
    for a, b in [(x1, None), (x1, x2)]:
        got = jacobian_ntk(token_model, a, b, max_memory_bytes=memory)
        want = _hand_ntk(token_model, a, a if b is None else b, names)
        torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)


def test_parameter_subset_and_class_chunks(token_model):
    x = _tokens(6, 3)
    names = select_parameters(token_model, ["attn.out_proj", "head"])
    assert names == ["attn.out_proj.weight", "attn.out_proj.bias", "head.weight", "head.bias"]
    want = _hand_ntk(token_model, x, x, names)
    p = sum(dict(token_model.named_parameters())[k].numel() for k in names)
    # room for 6 rows × 2 classes: two passes over the 3 classes (2 + 1)
    got = jacobian_ntk(token_model, x, parameters=["attn.out_proj", "head"],
                       max_memory_bytes=6 * p * 8 * 2)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert last_layers(token_model, 1) == ["head"]


def test_float32_model_is_evaluated_in_float64_without_changing_it():
    torch.manual_seed(1)
    net = nn.Sequential(nn.Linear(3, 5), nn.LayerNorm(5), nn.Tanh(), nn.Linear(5, 1))
    x = torch.randn(4, 3)
    k = jacobian_ntk(net, x)
    assert k.dtype == F64 and net[0].weight.dtype == torch.float32
    want = _hand_ntk(net.to(F64), x.to(F64), x.to(F64), select_parameters(net))
    torch.testing.assert_close(k, want, rtol=1e-10, atol=1e-12)


def test_one_line_errors(token_model):
    x = _tokens(3, 0)
    with pytest.raises(ValueError, match=r"^parameters: 'nope' matches no trainable"):
        jacobian_ntk(token_model, x, parameters=["nope"])
    with pytest.raises(ValueError, match=r"^x2: expected trailing shape"):
        jacobian_ntk(token_model, x, _tokens(2, 0)[:, :3])
    with pytest.raises(ValueError, match=r"^model: expected outputs of shape \(n, C\)"):
        jacobian_ntk(token_model.norm, x)


def test_empirical_ntk_of_a_foreign_module_is_the_generic_one(token_model):
    from malleability import empirical_ntk

    x = _tokens(3, 4)
    torch.testing.assert_close(empirical_ntk(token_model, x), jacobian_ntk(token_model, x))
