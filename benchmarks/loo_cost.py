"""Exact LOO influence against one Cholesky plus one GEMM, in CPU time (issue 30 §4).

Run with ``OMP_NUM_THREADS=1 .venv/bin/python benchmarks/loo_cost.py``. K is the
infinite-width NTK of random unit rows (d = 784, SPD), n_test = 500, C = 10 one-hot targets,
λ = 1e-3, float64. The baseline is ``torch.linalg.cholesky(K + λI)`` plus the
(n_test × n)·(n × n) GEMM ``K_t (K + λI)``; ``ntk_influence`` (MSE and cross-entropy, with its
A.9 estimates) is timed beside it in 5 interleaved rounds after a warm-up round, medians.
CPU time (``time.process_time``) on one thread is what is compared: on a shared machine other
jobs change wall times by up to 3×, CPU time much less. Wall medians are kept too.
Writes ``benchmarks/loo_cost.json``.
"""

from __future__ import annotations

import json
import os
import statistics
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from malleability.influence import ntk_influence  # noqa: E402
from malleability.kernel_ridge import _estimated_report, fit_kernel_ridge  # noqa: E402
from malleability.linalg import tri_inverse_  # noqa: E402
from malleability.ntk import infinite_ntk  # noqa: E402

RESULTS = Path(__file__).with_name("loo_cost.json")
SIZES, N_TEST, C, RIDGE, ROUNDS = (3000, 5000), 500, 10, 1e-3, 5
F64 = torch.float64


def timed(fns: dict, rounds: int) -> dict:
    for fn in fns.values():
        fn()
    cpu, wall = {k: [] for k in fns}, {k: [] for k in fns}
    for _ in range(rounds):
        for name, fn in fns.items():
            c0, w0 = time.process_time(), time.perf_counter()
            fn()
            cpu[name].append(time.process_time() - c0)
            wall[name].append(time.perf_counter() - w0)
    return {name: {"cpu_s": statistics.median(cpu[name]), "wall_s": statistics.median(wall[name])}
            for name in fns}


def main() -> None:
    gen = torch.Generator().manual_seed(0)
    rows = []
    for n in SIZES:
        x = torch.randn(n + N_TEST, 784, generator=gen, dtype=F64)
        x /= x.norm(dim=1, keepdim=True)
        k_all = infinite_ntk(x)
        k, k_t = k_all[:n, :n].clone(), k_all[n:, :n].clone()
        del k_all
        eye = torch.eye(C, dtype=F64)
        y = eye[torch.randint(0, C, (n,), generator=gen)]
        y_t = eye[torch.randint(0, C, (N_TEST,), generator=gen)]
        reg = k + RIDGE * torch.eye(n, dtype=F64)
        chol = torch.linalg.cholesky(reg)
        fit = fit_kernel_ridge(k, y, RIDGE)
        fns = {
            "cholesky + GEMM": lambda reg=reg, k_t=k_t: (torch.linalg.cholesky(reg), k_t @ reg),
            "mse": lambda k=k, k_t=k_t, y=y, y_t=y_t: ntk_influence(k, k_t, y, y_t, RIDGE),
            "ce": lambda k=k, k_t=k_t, y=y, y_t=y_t: ntk_influence(k, k_t, y, y_t, RIDGE, "ce"),
            "step: cholesky": lambda reg=reg: torch.linalg.cholesky(reg),
            "step: GEMM": lambda reg=reg, k_t=k_t: k_t @ reg,
            "step: factor inverse": lambda chol=chol: tri_inverse_(chol.clone()),
            "step: K_t H": lambda fit=fit, k_t=k_t: fit.times_inverse(k_t),
            "step: A.9 estimates": lambda fit=fit, k=k: _estimated_report(
                fit.factor_inverse, k, RIDGE),
        }
        t = timed(fns, ROUNDS if n == SIZES[0] else 3)
        base = t["cholesky + GEMM"]["cpu_s"]
        row = {"n": n, "n_test": N_TEST, "C": C, "times": t,
               "ratio_cpu": {name: v["cpu_s"] / base for name, v in t.items()}}
        rows.append(row)
        print(json.dumps({"n": n, **{k_: round(v, 2) for k_, v in row["ratio_cpu"].items()}}),
              flush=True)
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "torch": torch.__version__,
            "threads": torch.get_num_threads(), "load_average": os.getloadavg(),
            "rounds": ROUNDS}
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
