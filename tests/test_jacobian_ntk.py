"""The generic empirical NTK against a hand-written Jacobian contraction (torch.autograd loops)."""

import importlib

import pytest
import torch
from torch import nn

from malleability.jacobian_ntk import (
    block_plan,
    jacobian_ntk,
    last_layers,
    select_parameters,
    train_test_ntk,
    updated_ntk,
)

F64 = torch.float64
jn = importlib.import_module("malleability.jacobian_ntk")  # the module, not the function


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


def _spy_rows(monkeypatch):
    """Record the rows of every flat Jacobian formed and of every vmap call inside it."""
    calls, vmapped = [], []
    call, init = jn._Jacobians.__call__, jn._Jacobians.__init__

    def spy_init(self, *args):
        init(self, *args)
        fn = self.fn
        self.fn = lambda p, x: (vmapped.append(x.shape[0]), fn(p, x))[1]

    def spy_call(self, x, *buffer):
        calls.append(x.shape[0])
        return call(self, x, *buffer)

    monkeypatch.setattr(jn._Jacobians, "__init__", spy_init)
    monkeypatch.setattr(jn._Jacobians, "__call__", spy_call)
    return calls, vmapped


@pytest.mark.parametrize("x2_rows", [None, 3, 9])  # symmetric; cross with x1 larger, smaller
def test_panels_and_streamed_blocks_equal_the_hand_contraction(token_model, monkeypatch, x2_rows):
    x1 = _tokens(7, 5)
    x2 = None if x2_rows is None else _tokens(x2_rows, 6)
    names = select_parameters(token_model)
    per_class = sum(p.numel() for p in token_model.parameters()) * 8
    memory = 9 * per_class  # one class per pass; panel 3 rows, blocks of 1, streams of 4
    n_panel = 7 if x2 is None else min(7, x2_rows)
    plan = block_plan(n_panel, 3, per_class // 8, memory, block=1)
    assert (plan.classes, plan.panel, plan.block) == (1, 3, 1) and plan.bytes <= memory
    calls, vmapped = _spy_rows(monkeypatch)
    got = jacobian_ntk(token_model, x1, x2, max_memory_bytes=memory, block=1)
    want = _hand_ntk(token_model, x1, x1 if x2 is None else x2, names)
    torch.testing.assert_close(got, want, rtol=1e-10, atol=1e-12)
    assert plan.stream == jn.STREAM_BLOCKS
    assert max(calls) <= max(plan.panel, plan.stream) and max(vmapped) == 1  # never more
    if x2 is None:
        torch.testing.assert_close(got, got.T, rtol=0, atol=0)


def test_all_rows_of_a_class_fit_so_no_jacobian_is_recomputed(token_model, monkeypatch):
    x1, x2 = _tokens(6, 7), _tokens(4, 8)
    per_class = sum(p.numel() for p in token_model.parameters()) * 8
    memory = 2 * (6 + (jn.STREAM_BLOCKS + 2) * 2) * per_class  # two of three classes per pass
    calls, _ = _spy_rows(monkeypatch)
    got = jacobian_ntk(token_model, x1, max_memory_bytes=memory, block=2)
    assert block_plan(6, 3, per_class // 8, memory, block=2).classes == 2
    assert sum(calls) == 6 * 2  # two passes (2 + 1 classes), each row once per pass
    torch.testing.assert_close(got, _hand_ntk(token_model, x1, x1, select_parameters(
        token_model)), rtol=1e-10, atol=1e-12)
    calls.clear()
    jacobian_ntk(token_model, x1, x2, max_memory_bytes=memory, block=2)
    assert calls[0] == 4 and sum(calls) == 2 * (4 + 6)  # x2 (smaller) resident, x1 streamed


def test_plan_bytes_within_the_bound_and_block_rows():
    per_class = 108_426 * 8
    for n, memory in [(500, 2**31), (2000, 2**31), (5000, 2**31), (64, 2**30), (10, 2**24)]:
        plan = block_plan(n, 10, 108_426, memory)
        assert plan.bytes <= memory and 1 <= plan.block <= jn.MAX_BLOCK
        assert plan.bytes == ((plan.panel + plan.stream + 2 * plan.block) * plan.classes
                              * per_class)
    # n = 2000 at 2 GiB: one class per pass and every row resident (1.7 GB of 2 GiB)
    assert block_plan(2000, 10, 108_426, 2**31).panel == 2000
    with pytest.raises(ValueError, match=r"^block: expected a positive integer"):
        block_plan(10, 1, 10, 2**20, block=0)


def test_default_bound_is_a_share_of_free_memory(monkeypatch):
    from malleability import memory

    monkeypatch.setattr(memory, "free_memory", lambda device=None: 2**30)
    assert memory.working_memory("cpu") == 2**28
    monkeypatch.setattr(memory, "free_memory", lambda device=None: 64 * 2**30)
    assert memory.working_memory("cpu") == memory.CPU_WORKING_CAP
    monkeypatch.setattr(memory, "free_memory", lambda device=None: None)
    assert memory.working_memory("cpu") == memory.MIN_WORKING


def test_free_memory_is_at_most_the_machine_total():
    from malleability import memory

    free, total = memory.free_memory("cpu"), memory.memory_limit("cpu")
    assert free is not None and 0 < free <= total
    assert memory.free_memory("meta") is None


def test_updated_ntk_recomputes_only_the_changed_rows(token_model, monkeypatch):
    x = _tokens(7, 9)
    changed = torch.tensor([5, 1, 5])  # duplicates are ignored
    x_new = x.clone()
    x_new[[1, 5]] += 0.3 * _tokens(2, 10)
    kernel = jacobian_ntk(token_model, x)
    calls, _ = _spy_rows(monkeypatch)
    new, cross = updated_ntk(token_model, kernel, x, x_new, changed)
    assert sum(calls) == 2 + 7 + 2  # the changed rows, against x_new and x[S]
    names = select_parameters(token_model)
    torch.testing.assert_close(new, _hand_ntk(token_model, x_new, x_new, names),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(cross, _hand_ntk(token_model, x, x_new, names),
                               rtol=1e-10, atol=1e-12)
    torch.testing.assert_close(kernel, jacobian_ntk(token_model, x), rtol=0, atol=0)
    with pytest.raises(ValueError, match=r"^kernel: expected"):
        updated_ntk(token_model, kernel[:3], x, x_new, changed)


@pytest.mark.parametrize("memory", [None, 2**16])  # one panel; panels of 287 + 13, blocks of 56
def test_linear_model_kernel_in_closed_form_over_many_rows(memory):
    # f(x) = W x + b: ∂f_c/∂W = e_c xᵀ, ∂f_c/∂b = e_c, so Θ(x, x') = x·x' + 1 exactly;
    # 300 rows exercise the recursive half-product (leaves of 128) and the mirrored blocks.
    torch.manual_seed(2)
    net = nn.Linear(5, 3).to(F64)
    x = torch.randn(300, 5, dtype=F64)
    x2 = torch.randn(40, 5, dtype=F64)
    torch.testing.assert_close(jacobian_ntk(net, x, max_memory_bytes=memory),
                               x @ x.T + 1, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(jacobian_ntk(net, x, x2, max_memory_bytes=memory),
                               x @ x2.T + 1, rtol=1e-12, atol=1e-12)


def test_train_test_ntk_computes_each_jacobian_row_once(token_model, monkeypatch):
    x, x_t = _tokens(6, 11), _tokens(3, 12)
    names = select_parameters(token_model)
    calls, _ = _spy_rows(monkeypatch)
    kernel, cross = train_test_ntk(token_model, x, x_t)
    assert sum(calls) == 6 + 3  # one pass over [x; x_test]
    torch.testing.assert_close(kernel, _hand_ntk(token_model, x, x, names), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(cross, _hand_ntk(token_model, x_t, x, names), rtol=1e-10,
                               atol=1e-12)
    calls.clear()
    same, again = train_test_ntk(token_model, x, x.clone())
    assert same is again and sum(calls) == 6


def test_updated_ntk_against_a_separate_test_set(token_model, monkeypatch):
    x, x_t = _tokens(7, 13), _tokens(4, 14)
    x_new = x.clone()
    x_new[[0, 3]] -= 0.2 * _tokens(2, 15)
    kernel, cross = train_test_ntk(token_model, x, x_t)
    calls, _ = _spy_rows(monkeypatch)
    new, new_cross = updated_ntk(token_model, kernel, x, x_new, [3, 0], x_t, cross)
    assert sum(calls) == 2 + 7 + 4  # the changed rows, against x_new and x_test
    names = select_parameters(token_model)
    torch.testing.assert_close(new, _hand_ntk(token_model, x_new, x_new, names), rtol=1e-10,
                               atol=1e-12)
    torch.testing.assert_close(new_cross, _hand_ntk(token_model, x_t, x_new, names),
                               rtol=1e-10, atol=1e-12)
    with pytest.raises(ValueError, match=r"^cross: expected x_test and cross"):
        updated_ntk(token_model, kernel, x, x_new, [0], x_t)
    with pytest.raises(ValueError, match=r"^cross: expected Θ\(x_test, x\) of shape"):
        updated_ntk(token_model, kernel, x, x_new, [0], x_t, cross[:2])
