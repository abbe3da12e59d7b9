"""dattri's second-order estimators on a model with fused attention
(``F.scaled_dot_product_attention``): the fused CPU kernel has no double backward and no
forward AD, so the estimators run it on the math backend; their scores equal those of the
same weights with attention written out as softmax(QKᵀ/√d)V."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn
from torch.nn import functional as F

from malleability.estimators import make_estimator


class TinyAttention(nn.Module):
    """4 tokens of width 6 from a 24-pixel input, 2 attention heads, a linear head."""

    def __init__(self, fused: bool) -> None:
        super().__init__()
        self.fused = fused
        self.qkv = nn.Linear(6, 18)
        self.head = nn.Linear(6, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b = x.shape[0]
        qkv = self.qkv(x.reshape(b, 4, 6)).reshape(b, 4, 3, 2, 3).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)  # (batch, 2 heads, 4 tokens, 3)
        if self.fused:
            h = F.scaled_dot_product_attention(q, k, v)
        else:
            h = torch.softmax(q @ k.mT / math.sqrt(3), dim=-1) @ v
        return self.head(h.transpose(1, 2).reshape(b, 4, 6).mean(1))


@pytest.mark.parametrize("name", ["if-cg", "if-lissa", "if-arnoldi", "if-explicit"])
def test_second_order_estimators_run_on_fused_attention(name):
    torch.manual_seed(0)
    fused, written = TinyAttention(fused=True), TinyAttention(fused=False)
    written.load_state_dict(fused.state_dict())
    x, y = torch.randn(24, 24), torch.randint(0, 3, (24,))
    x_t, y_t = torch.randn(5, 24), torch.randint(0, 3, (5,))
    options = {"proj_dim": 5} if name == "if-arnoldi" else {}
    est = make_estimator(name, damping=1.0, **options)
    got = est.scores(fused, x, y, x_t, y_t, seed=0)
    want = est.scores(written, x, y, x_t, y_t, seed=0)
    assert torch.isfinite(got).all()
    torch.testing.assert_close(got, want, rtol=1e-4, atol=1e-6 * float(want.abs().max()))
