"""The audit's estimators at realistic sizes: time and peak memory on CIFAR-10 with a ViT of
about 100k parameters (issue 30 §5). This file measures NTK-LOO.

Run with ``.venv/bin/python benchmarks/audit_scale.py [--n 500,2000] [--limit-s 900]``.
Each n runs in a fresh process (so its peak resident memory, ``ru_maxrss``, is its own) and is
killed after ``--limit-s`` seconds (then reported as not finished). A worker reads the first n
CIFAR-10 training images, builds ``VisionTransformer(32, patch 4, 3 channels, dim 64, depth 3,
4 heads)`` (108,426 parameters, seed 0), trains it for one epoch (float32, Adam, batch 64), and
times NTK-LOO as the audit's default calls it (test set = training set): the float64 empirical
NTK K = Θ(X, X) by :func:`~malleability.jacobian_ntk.jacobian_ntk` (default memory bound) and
the exact leave-one-out (:func:`~malleability.influence.ntk_influence`, cross-entropy). Beside
it, the floor of the kernel: its n²·C·P flops (the lower triangle of J Jᵀ) at the rate of a
2048² float64 GEMM measured in the same process. Writes ``benchmarks/audit_scale.json``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

RESULTS = Path(__file__).with_name("audit_scale.json")
CIFAR = Path(__file__).resolve().parents[1] / ".." / "shared" / "data" / "cifar-10-subset"
VIT = {"image_size": 32, "patch": 4, "channels": 3, "dim": 64, "depth": 3, "heads": 4,
       "num_classes": 10}
RIDGE = 1e-3


def peak_gb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20


def gemm_rate() -> float:
    """GFLOP/s of a 2048² float64 GEMM, best of 3 after a warm-up."""
    import torch

    a = torch.randn(2048, 2048, dtype=torch.float64)
    a @ a
    best = float("inf")
    for _ in range(3):
        t0 = time.perf_counter()
        a @ a
        best = min(best, time.perf_counter() - t0)
    return 2 * 2048**3 / best / 1e9


def ntk_loo_worker(n: int, data_root: Path) -> dict:
    import torch

    from malleability.classifiers import VisionTransformer, fit_classifier
    from malleability.data import read_cifar10
    from malleability.influence import ntk_influence
    from malleability.jacobian_ntk import block_plan, jacobian_ntk
    from malleability.memory import working_memory

    arrays = read_cifar10(data_root / "cifar-10-python.tar.gz")
    x = torch.from_numpy(arrays.train_images[:n]).float() / 255
    y = torch.from_numpy(arrays.train_labels[:n]).long()
    model = VisionTransformer(**VIT, seed=0)
    params = sum(p.numel() for p in model.parameters())
    t0 = time.perf_counter()
    fit_classifier(model, x, y, epochs=1, seed=0)
    train_s = time.perf_counter() - t0
    rss_before = peak_gb()
    budget = working_memory("cpu")
    plan = block_plan(n, VIT["num_classes"], params, budget)
    t0, c0 = time.perf_counter(), time.process_time()
    k = jacobian_ntk(model, x)
    kernel_s, kernel_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    t0, c0 = time.perf_counter(), time.process_time()
    targets = torch.nn.functional.one_hot(y, VIT["num_classes"]).double()
    result = ntk_influence(k, k, targets, targets, RIDGE * float(k.diagonal().mean()), "ce")
    loo_s, loo_cpu_s = time.perf_counter() - t0, time.process_time() - c0
    rate = gemm_rate()
    floor_s = n * n * VIT["num_classes"] * params / (rate * 1e9)
    return {
        "n": n, "n_test": n, "params": params, "classes": VIT["num_classes"],
        "threads": torch.get_num_threads(), "train_1_epoch_s": train_s,
        "memory_budget_gb": budget / 2**30,
        "plan": plan.__dict__ | {"bytes_gb": plan.bytes / 2**30},
        "kernel_s": kernel_s, "loo_s": loo_s, "ntk_loo_s": kernel_s + loo_s,
        "kernel_cpu_s": kernel_cpu_s, "loo_cpu_s": loo_cpu_s,
        "peak_rss_gb": peak_gb(), "peak_rss_before_ntk_gb": rss_before,
        "gemm_gflops": rate, "kernel_floor_s": floor_s, "kernel_over_floor": kernel_s / floor_s,
        "kernel_cpu_over_floor": kernel_cpu_s / floor_s,
        "scores_finite": bool(torch.isfinite(result.scores).all()),
        "condition_number": result.stability.condition_number,
    }


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--n", default="500,2000")
    parser.add_argument("--limit-s", type=float, default=900.0)
    parser.add_argument("--data", type=Path, default=CIFAR)
    parser.add_argument("--worker", type=int)
    args = parser.parse_args()
    if args.worker:
        print(json.dumps(ntk_loo_worker(args.worker, args.data.resolve())))
        return
    old = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"rows": []}
    rows = {(r["estimator"], r["n"]): r for r in old["rows"]}
    for n in (int(v) for v in args.n.split(",")):
        t0 = time.perf_counter()
        cmd = [sys.executable, __file__, "--worker", str(n), "--data", str(args.data)]
        try:
            proc = subprocess.run(cmd, capture_output=True, text=True, timeout=args.limit_s)
            if proc.returncode == 0:
                row = json.loads(proc.stdout.strip().splitlines()[-1])
            else:
                row = {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]}
        except subprocess.TimeoutExpired:
            row = {"not_finished": f"stopped after {args.limit_s:g} s"}
        row = {"estimator": "ntk-loo", "n": n, "wall_s": time.perf_counter() - t0,
               "load_average": os.getloadavg(), "date": time.strftime("%Y-%m-%d %H:%M"), **row}
        rows[("ntk-loo", n)] = row
        print(json.dumps(row), flush=True)
        meta = {"cpus": os.cpu_count(), "omp_num_threads": os.environ.get("OMP_NUM_THREADS"),
                "omp_wait_policy": os.environ["OMP_WAIT_POLICY"]}
        RESULTS.write_text(json.dumps({"meta": meta, "rows": list(rows.values())}, indent=2)
                           + "\n")


if __name__ == "__main__":
    main()
