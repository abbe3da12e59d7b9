"""CUDA check of the generic NTK and the audit (run on a GPU machine; prints JSON lines).

1. ``jacobian_ntk`` on a module with LayerNorm and attention: CUDA against CPU.
2. The 2L-ReLU of benchmarks/ntk_generic.py at n = 200, C = 10, P = 802 816 (float64):
   ``jacobian_ntk`` (default and one-pass memory settings) against the torch.func one-shot
   recipe, which fits in a GPU's memory.
3. ``audit`` of a small ViT on random [0, 1] images on CUDA against the same on CPU.
"""

from __future__ import annotations

import json
import sys
import time

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from malleability.auditing import audit
from malleability.classifiers import VisionTransformer, fit_classifier
from malleability.jacobian_ntk import jacobian_ntk
from malleability.models import TwoLayerNet


def timed(fn, repeats=3):
    sync = torch.cuda.synchronize if torch.cuda.is_available() else (lambda: None)
    out = fn()
    sync()
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        out = fn()
        sync()
        times.append(time.perf_counter() - t0)
    return out, sorted(times)[len(times) // 2]


def main(dev: str = "cuda") -> None:
    """``dev="cpu"`` is a dry run at n = 20 (no one-shot memory to spare here)."""
    if dev == "cuda":
        print(json.dumps({"device": torch.cuda.get_device_name(), "torch": torch.__version__}))
    torch.manual_seed(0)
    token = nn.Sequential(nn.LayerNorm(6), nn.TransformerEncoderLayer(6, 2, 12, 0.0,
                          batch_first=True), nn.Flatten(), nn.Linear(24, 3)).double()
    x = torch.randn(7, 4, 6, dtype=torch.float64)
    k_cpu = jacobian_ntk(token.eval(), x)
    k_gpu = jacobian_ntk(token.to(dev).eval(), x.to(dev)).cpu()
    print(json.dumps({"check": "token module cpu vs cuda",
                      "max_rel_diff": float((k_cpu - k_gpu).abs().max() / k_cpu.abs().max())}))

    n, d, m, c = (200 if dev == "cuda" else 20), 784, 1024, 10
    net = TwoLayerNet(d, m, c, seed=0).to(dev)
    xs = torch.randn(n, d, dtype=torch.float64, device=dev)
    xs = xs / xs.norm(dim=1, keepdim=True)

    def one_shot():
        params = {k: v.detach() for k, v in net.named_parameters()}

        def f(p, xi):
            return functional_call(net, p, (xi.unsqueeze(0),)).reshape(-1)
        j = vmap(jacrev(f), in_dims=(None, 0))(params, xs)["weight"].reshape(n, c, -1)
        return torch.einsum("acp,bcp->ab", j, j) / c

    rows = {}
    for name, fn in [("jacobian_ntk (2 GiB)", lambda: jacobian_ntk(net, xs)),
                     ("jacobian_ntk (16 GiB, one pass)",
                      lambda: jacobian_ntk(net, xs, max_memory_bytes=16 * 2**30)),
                     ("torch.func one-shot", one_shot)]:
        if dev == "cuda":
            torch.cuda.reset_peak_memory_stats()
        k, s = timed(fn)
        rows[name] = k
        peak = torch.cuda.max_memory_allocated() / 1e9 if dev == "cuda" else None
        print(json.dumps({"check": f"2L-ReLU n={n} C=10 P=802816 float64", "method": name,
                          "seconds": s, "peak_gpu_gb": peak,
                          "max_rel_diff_vs_first": float((k - rows["jacobian_ntk (2 GiB)"])
                                                         .abs().max() / k.abs().max())}))

    gen = torch.Generator().manual_seed(0)
    xi = torch.rand(120, 1, 8, 8, generator=gen)
    yi = torch.randint(0, 10, (120,), generator=gen)
    vit = VisionTransformer(attention="linear", seed=0)
    fit_classifier(vit, xi[:100], yi[:100], epochs=5)
    out = {}
    for where in ("cpu", dev):
        t0 = time.perf_counter()
        r = audit(vit.to(where), xi[:100], yi[:100], xi[100:], yi[100:], estimator="ntk-loo",
                  seeds=(0, 1), layer="blocks.0")
        out[where] = r
        print(json.dumps({"check": "audit ViT ntk-loo", "device": where,
                          "seconds": time.perf_counter() - t0, "kappa": r.kappa,
                          "flip_rate": r.flip_rate.values, "spearman": r.spearman.values}))


if __name__ == "__main__":
    main(*sys.argv[1:])
