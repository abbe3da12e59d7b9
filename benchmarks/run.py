"""Benchmarks of the NTK, LOO-influence, κ and training routines against plain torch kernels.

Run with ``make bench`` (``.venv/bin/python benchmarks/run.py``); prints a table and writes
``benchmarks/results.json``. Every row is "A vs B" with the ratio A/B; see benchmarks/README.md.
"""

from __future__ import annotations

import datetime
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

# Idle OpenMP threads sleep instead of spinning: with spinning, any other load on the cores
# slows LAPACK calls with many barriers (cholesky_inverse, eigvalsh) by up to 100×. Must be set
# before torch loads its OpenMP runtime; OMP_WAIT_POLICY=ACTIVE overrides. See README.md.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import torch  # noqa: E402

from malleability._validation import as_tensor  # noqa: E402
from malleability.influence import loo_influence, ntk_influence  # noqa: E402
from malleability.kernel_ridge import _estimated_report, fit_kernel_ridge  # noqa: E402
from malleability.linalg import tri_inverse_  # noqa: E402
from malleability.models import TwoLayerNet  # noqa: E402
from malleability.ntk import autograd_ntk, empirical_ntk, infinite_ntk  # noqa: E402
from malleability.spectral import effective_condition_number  # noqa: E402
from malleability.training import TrainSettings, train, train_batched  # noqa: E402

SEED = 0
F64 = torch.float64
RESULTS = Path(__file__).with_name("results.json")
SCALING = Path(__file__).with_name("loo_scaling.json")

# Sizes of the three sections.
NTK_N, NTK_M, NTK_D = 1000, 1024, 784
# Autograd blocks (rows × cols of the n×n kernel) timed and extrapolated by area.
AUTOGRAD_BLOCKS = {1: (20, NTK_N), 10: (2, 100)}
LOO_SIZES, LOO_N_TEST, LOO_C, LOO_RIDGE = (3000, 5000), 500, 10, 1e-3
KAPPA_SHAPE = (60000, 784)
TRAIN_N, TRAIN_BATCH, TRAIN_BATCHED, TRAIN_EPOCHS = 6000, 128, 4, 3
SQUARE_GEMM = 2048
# Environment that changes threaded BLAS/LAPACK timings (recorded in the output).
THREAD_ENV = ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OMP_WAIT_POLICY")


@dataclass
class Row:
    """One table row: routine A against reference B, ratio = A/B (wall seconds)."""

    name: str
    a: str
    a_s: float
    b: str
    b_s: float
    note: str = ""

    @property
    def ratio(self) -> float:
        return self.a_s / self.b_s


def bench(fn: Callable[[], object], repeats: int = 3, warmup: bool = True) -> float:
    """Median wall time (s, ``time.perf_counter``) of ``repeats`` calls after one warm-up."""
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def bench_interleaved(fns: dict[str, Callable[[], object]], rounds: int = 5
                      ) -> dict[str, float]:
    """Median wall time (s) of each fn over ``rounds`` interleaved rounds, after one warm-up.

    Interleaving keeps slow drifts in machine load from favouring one of them.
    """
    times: dict[str, list[float]] = {k: [] for k in fns}
    for r in range(rounds + 1):
        for k, fn in fns.items():
            start = time.perf_counter()
            fn()
            if r:
                times[k].append(time.perf_counter() - start)
    return {k: statistics.median(v) for k, v in times.items()}


def unit_rows(n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """An (n × d) float64 matrix of random unit-norm rows."""
    x = torch.randn(n, d, generator=gen, dtype=F64)
    return x / x.norm(dim=1, keepdim=True)


def cpu_model() -> str:
    """The CPU model name from /proc/cpuinfo (platform.processor() as a fallback)."""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def log(msg: str) -> None:
    print(f"  [{time.strftime('%H:%M:%S')}] {msg}", flush=True)


def bench_ntk(gen: torch.Generator, extra: dict[str, Any]) -> list[Row]:
    """Closed-form empirical NTK vs autograd_ntk, and the closed form's GEMM efficiency."""
    n, m, d = NTK_N, NTK_M, NTK_D
    x = unit_rows(n, d, gen)
    rows: list[Row] = []
    for c, (br, bc) in AUTOGRAD_BLOCKS.items():
        net = TwoLayerNet(d, m, c, seed=SEED)
        t_closed = bench(lambda net=net: empirical_ntk(net, x), repeats=5)
        log(f"empirical_ntk C={c}: {t_closed:.3f} s")
        autograd_ntk(net, x[:1], x[:1])  # warm-up (torch.func tracing), tiny
        start = time.perf_counter()
        block = autograd_ntk(net, x[:br], x[:bc])
        t_block = time.perf_counter() - start
        t_auto = t_block * (n * n) / (br * bc)
        err = float((block - empirical_ntk(net, x[:br], x[:bc])).abs().max())
        log(f"autograd_ntk C={c} on a {br}x{bc} block: {t_block:.1f} s "
            f"-> {t_auto:.0f} s extrapolated to {n}x{n}")
        rows.append(Row(
            f"NTK n={n} m={m} d={d} C={c}", "autograd_ntk", t_auto, "empirical_ntk", t_closed,
            f"autograd timed once on a {br}x{bc} block ({t_block:.1f} s), x{n * n // (br * bc)} "
            f"by area; max|diff| {err:.1e}"))

    net = TwoLayerNet(d, m, 1, seed=SEED)
    w = net.weight.detach()
    dmask = (x @ w.T > 0).to(F64)
    sq = torch.randn(SQUARE_GEMM, SQUARE_GEMM, generator=gen, dtype=F64)
    t = bench_interleaved({
        "closed": lambda: empirical_ntk(net, x), "ZZt": lambda: x @ x.T,
        "ZWt": lambda: x @ w.T, "DDt": lambda: dmask @ dmask.T, "square": lambda: sq @ sq})
    closed_c1, t_gemms, t_sq = t["closed"], t["ZZt"] + t["ZWt"] + t["DDt"], t["square"]
    gemm_flops = 2 * n * n * d + 2 * n * m * d + 2 * n * n * m
    closed_flops = gemm_flops + 2 * n * m + 2 * n * n  # + compare/convert, product/scale
    rate_closed = closed_flops / closed_c1 / 1e9
    rate_gemms = gemm_flops / t_gemms / 1e9
    rate_peak = 2 * SQUARE_GEMM**3 / t_sq / 1e9
    log(f"GFLOP/s: closed form {rate_closed:.1f}, its 3 GEMMs {rate_gemms:.1f}, "
        f"square GEMM {rate_peak:.1f}")
    rows.append(Row(
        "closed-form NTK vs its 3 GEMMs", "empirical_ntk", closed_c1,
        "ZZᵀ + ZWᵀ + DDᵀ", t_gemms,
        f"{rate_closed:.1f} vs {rate_gemms:.1f} GFLOP/s ({closed_flops / 1e9:.2f} GFLOP)"))
    rows.append(Row(
        f"closed-form NTK vs machine rate ({SQUARE_GEMM}² GEMM)", "empirical_ntk", closed_c1,
        "same flops at GEMM rate", closed_flops / (rate_peak * 1e9),
        f"machine rate {rate_peak:.1f} GFLOP/s; closed form at {rate_closed / rate_peak:.0%}"))
    extra["gflops"] = {"closed_form": rate_closed, "three_gemms": rate_gemms,
                       "square_gemm": rate_peak, "closed_form_gflop": closed_flops / 1e9,
                       "times_s": t}
    return rows


def bench_loo(gen: torch.Generator, extra: dict[str, Any]) -> list[Row]:
    """loo_influence (MSE, CE) vs one Cholesky + one (n_test×n)·(n×n) GEMM."""
    rows: list[Row] = []
    for n in LOO_SIZES:
        x = unit_rows(n + LOO_N_TEST, NTK_D, gen)
        k_all = infinite_ntk(x)
        k, k_t = k_all[:n, :n].clone(), k_all[n:, :n].clone()
        del k_all
        eye = torch.eye(LOO_C, dtype=F64)
        y = eye[torch.randint(0, LOO_C, (n,), generator=gen)]
        y_t = eye[torch.randint(0, LOO_C, (LOO_N_TEST,), generator=gen)]
        reg = k + LOO_RIDGE * torch.eye(n, dtype=F64)
        small = n == min(LOO_SIZES)  # interleaved rounds at the small n; the large n once
        fns: dict[str, Callable[[], object]] = {
            "base": lambda reg=reg, k_t=k_t: (torch.linalg.cholesky(reg), k_t @ reg)}
        for loss in ("mse", "ce"):
            fns[loss] = lambda k=k, k_t=k_t, y=y, y_t=y_t, loss=loss: loo_influence(
                k, k_t, y, y_t, LOO_RIDGE, loss)
        t = bench_interleaved(fns, rounds=3 if small else 1)
        for loss in ("mse", "ce"):
            log(f"loo_influence n={n} {loss}: {t[loss]:.2f} s (Cholesky + GEMM {t['base']:.2f} s)")
            rows.append(Row(
                f"LOO influence n={n} n_test={LOO_N_TEST} C={LOO_C} {loss}", "loo_influence",
                t[loss], "cholesky + GEMM", t["base"],
                "median of 3 interleaved rounds" if small else "one round after a warm-up"))
        if small:
            extra["loo_breakdown"] = loo_breakdown(k, k_t, y)
            log(f"breakdown n={n}: " + ", ".join(
                f"{step} {sec:.2f} s" for step, sec in extra["loo_breakdown"].items()))
    return rows


def loo_breakdown(k: torch.Tensor, k_t: torch.Tensor, y: torch.Tensor) -> dict[str, float]:
    """Times of the steps ntk_influence runs (fit_kernel_ridge, then K_t H and diag H)."""
    fit = fit_kernel_ridge(k, y, LOO_RIDGE)
    factor = k.clone()
    factor.diagonal().add_(LOO_RIDGE)
    chol = torch.linalg.cholesky(factor)
    info = torch.empty((), dtype=torch.int32)

    def cholesky_in_place() -> None:
        buf = k.clone()
        buf.diagonal().add_(LOO_RIDGE)
        torch.linalg.cholesky_ex(buf.mT, upper=True, out=(buf.mT, info))

    steps: dict[str, Callable[[], object]] = {
        "input checks (as_tensor on K)": lambda: as_tensor(k, "k", ndim=2),
        "copy K + Cholesky in place": cholesky_in_place,
        "tri_inverse_ (L → L⁻¹ in place)": lambda: tri_inverse_(chol.clone()),
        "α = H Y": lambda: fit.times_inverse(y.T),
        "A.9 estimates": lambda: _estimated_report(fit.factor_inverse, k, LOO_RIDGE),
        "K_t H": lambda: fit.times_inverse(k_t),
        "diag H": fit.inverse_diagonal,
    }
    return {name: bench(fn, repeats=1, warmup=False) for name, fn in steps.items()}


def bench_training(gen: torch.Generator, extra: dict[str, Any]) -> list[Row]:
    """``train`` (float32) vs its GEMM floor over TRAIN_EPOCHS epochs, and ``train_batched``
    on k networks vs k calls of ``train``."""
    n, d, m, c, bs = TRAIN_N, NTK_D, NTK_M, LOO_C, TRAIN_BATCH
    x = torch.rand(n, d, generator=gen)
    y = torch.eye(c)[torch.randint(0, c, (n,), generator=gen)]
    settings = TrainSettings(epochs=TRAIN_EPOCHS, batch_size=bs, progress=False)
    net = TwoLayerNet(d, m, c, seed=SEED, dtype=torch.float32)
    nets = [TwoLayerNet(d, m, c, seed=SEED + j, dtype=torch.float32)
            for j in range(TRAIN_BATCHED)]
    w, g = net.weight.detach().clone(), torch.randn(bs, m, generator=gen)
    sizes = [min(bs, n - s) for s in range(0, n, bs)]
    batches = [x[:b].clone() for b in sizes]

    def floor() -> None:
        for _ in range(TRAIN_EPOCHS):
            for xb in batches:  # forward h Wᵀ and weight gradient Gᵀ h of every step
                xb @ w.T
                g[:xb.shape[0]].T @ xb

    t = bench_interleaved({
        "floor": floor, "train": lambda: train(net, x, y, settings),
        "batched": lambda: train_batched(nets, x, y, settings),
        "sequential": lambda: [train(mdl, x, y, settings) for mdl in nets]}, rounds=3)
    flops = TRAIN_EPOCHS * sum(2 * 2 * b * d * m for b in sizes)
    rate = flops / t["floor"] / 1e9
    log(f"train {TRAIN_EPOCHS} epochs {t['train']:.3f} s, GEMM floor {t['floor']:.3f} s "
        f"({rate:.1f} GFLOP/s float32): {t['floor'] / t['train']:.0%} of the floor; train_batched ×"
        f"{TRAIN_BATCHED} {t['batched']:.3f} s vs sequential {t['sequential']:.3f} s")
    extra["training"] = {"times_s": t, "float32_gflops": rate,
                         "fraction_of_floor": t["floor"] / t["train"]}
    shape = f"n={n} d={d} m={m} C={c} batch {bs}, float32"
    return [
        Row(f"train {TRAIN_EPOCHS} epochs vs GEMM floor ({shape})", "train", t["train"],
            "h Wᵀ + Gᵀ h per step", t["floor"],
            f"floor at {rate:.1f} GFLOP/s; train at {t['floor'] / t['train']:.0%} of it"),
        Row(f"{TRAIN_BATCHED} networks, {TRAIN_EPOCHS} epochs", "train_batched", t["batched"],
            f"{TRAIN_BATCHED} × train", t["sequential"],
            f"speed-up {t['sequential'] / t['batched']:.2f}×; median of 3 interleaved rounds"),
    ]


def bench_kappa(gen: torch.Generator) -> list[Row]:
    """effective_condition_number on a 60000×784 matrix vs one XᵀX."""
    x = torch.randn(*KAPPA_SHAPE, generator=gen, dtype=F64)
    t = bench(lambda: effective_condition_number(x), repeats=3)
    t_base = bench(lambda: x.T @ x, repeats=3)
    log(f"effective_condition_number {KAPPA_SHAPE}: {t:.2f} s (XᵀX {t_base:.2f} s)")
    n, d = KAPPA_SHAPE
    return [Row(f"κ of {n}×{d}", "effective_condition_number", t, "x.T @ x", t_base,
                "median of 3")]


def peak_rss_bytes() -> int:
    """High-water mark of this process's resident memory (VmHWM), in bytes."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) * 1024
    raise RuntimeError("VmHWM not found in /proc/self/status")


def reset_peak_rss() -> None:
    """Reset VmHWM to the current RSS (Linux: ``echo 5 > /proc/self/clear_refs``)."""
    Path("/proc/self/clear_refs").write_text("5")


def loo_scaling_one(n: int) -> dict[str, Any]:
    """Exact LOO (MSE) at n training points on an empirical NTK, then the baseline Cholesky
    (in place) + GEMM; times and peak RSS of each phase (one process per n)."""
    gen = torch.Generator().manual_seed(SEED)
    net = TwoLayerNet(NTK_D, NTK_M, LOO_C, seed=SEED)
    x, x_t = unit_rows(n, NTK_D, gen), unit_rows(LOO_N_TEST, NTK_D, gen)
    eye = torch.eye(LOO_C, dtype=F64)
    y = eye[torch.randint(0, LOO_C, (n,), generator=gen)]
    y_t = eye[torch.randint(0, LOO_C, (LOO_N_TEST,), generator=gen)]
    matrix = 8 * n * n
    out: dict[str, Any] = {"n": n, "n_test": LOO_N_TEST, "C": LOO_C, "nxn_bytes": matrix}
    base_rss = peak_rss_bytes()
    reset_peak_rss()
    start = time.perf_counter()
    k, k_t = empirical_ntk(net, x), empirical_ntk(net, x_t, x)
    out["kernel_s"] = time.perf_counter() - start
    out["kernel_peak_nxn"] = (peak_rss_bytes() - base_rss) / matrix
    log(f"n={n}: empirical NTK {out['kernel_s']:.1f} s, peak +{out['kernel_peak_nxn']:.2f} n×n")
    reset_peak_rss()
    start = time.perf_counter()
    result = ntk_influence(k, k_t, y, y_t, LOO_RIDGE)
    out["loo_s"] = time.perf_counter() - start
    out["loo_peak_nxn"] = (peak_rss_bytes() - base_rss) / matrix
    out["stability"] = result.stability.to_dict()
    log(f"n={n}: ntk_influence {out['loo_s']:.1f} s, peak +{out['loo_peak_nxn']:.2f} n×n "
        f"over the process before the kernel (K itself is 1)")
    del result
    start = time.perf_counter()
    factor = k.clone()
    factor.diagonal().add_(LOO_RIDGE)
    info = torch.empty((), dtype=torch.int32)
    torch.linalg.cholesky_ex(factor.mT, upper=True, out=(factor.mT, info))
    k_t @ factor
    out["cholesky_gemm_s"] = time.perf_counter() - start
    out["ratio"] = out["loo_s"] / out["cholesky_gemm_s"]
    log(f"n={n}: Cholesky (in place) + GEMM {out['cholesky_gemm_s']:.1f} s, "
        f"ratio {out['ratio']:.2f}")
    return out


def loo_scaling(sizes: list[int]) -> None:
    """Each size in a fresh process (so peak RSS is its own); writes loo_scaling.json."""
    results = []
    for n in sizes:
        proc = subprocess.run([sys.executable, __file__, "--loo-scaling-one", str(n)],
                              check=True, stdout=subprocess.PIPE, text=True)
        results.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        print(proc.stdout.strip().splitlines()[-1], flush=True)
    meta = {"date": datetime.datetime.now().isoformat(timespec="seconds"),
            "torch": torch.__version__, "threads": torch.get_num_threads(),
            "cpu": cpu_model(), "ram_bytes": os.sysconf("SC_PAGE_SIZE")
            * os.sysconf("SC_PHYS_PAGES")}
    SCALING.write_text(json.dumps({"meta": meta, "sizes": results}, indent=2,
                                  ensure_ascii=False) + "\n")
    print(f"wrote {SCALING}")


def print_table(rows: list[Row]) -> None:
    head = f"{'benchmark':<46} {'A':<27} {'A (s)':>9} {'B':<25} {'B (s)':>8} {'A/B':>8}"
    print("\n" + head + "\n" + "-" * len(head))
    for r in rows:
        print(f"{r.name:<46} {r.a:<27} {r.a_s:>9.3f} {r.b:<25} {r.b_s:>8.3f} {r.ratio:>8.1f}")
        if r.note:
            print(f"{'':<46} └ {r.note}")


def main() -> None:
    """Run the three sections, print the table and write results.json."""
    torch.manual_seed(SEED)
    gen = torch.Generator().manual_seed(SEED)
    meta = {
        "date": datetime.datetime.now().isoformat(timespec="seconds"),
        "torch": torch.__version__, "threads": torch.get_num_threads(), "cpu": cpu_model(),
        "python": platform.python_version(), "mkl": torch.backends.mkl.is_available(),
        "cores": os.cpu_count(), "loadavg_start": round(os.getloadavg()[0], 2),
        **{v: os.environ.get(v, "") for v in THREAD_ENV},
    }
    print("malleability benchmarks — " + ", ".join(f"{k} {v}" for k, v in meta.items()))
    start = time.perf_counter()
    extra: dict[str, Any] = {}
    print("1. empirical NTK: closed form vs autograd", flush=True)
    rows = bench_ntk(gen, extra)
    print("2. exact LOO influence", flush=True)
    rows += bench_loo(gen, extra)
    print("3. condition number κ", flush=True)
    rows += bench_kappa(gen)
    print("4. training", flush=True)
    rows += bench_training(gen, extra)
    meta["total_s"] = round(time.perf_counter() - start, 1)
    meta["loadavg_end"] = round(os.getloadavg()[0], 2)
    print_table(rows)
    print(f"\ntotal {meta['total_s']} s, 1-min load average {meta['loadavg_start']} at start, "
          f"{meta['loadavg_end']} at end (> {meta['cores']} means other processes competed)")
    print("A/B > 1 means A is slower. NTK rows: A/B is the "
          "closed form's speed-up over autograd (extrapolated, see notes).")
    RESULTS.write_text(json.dumps(
        {"meta": meta, "rows": [{**asdict(r), "ratio": r.ratio} for r in rows], **extra},
        indent=2, ensure_ascii=False) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] == "--loo-scaling-one":
        print(json.dumps(loo_scaling_one(int(sys.argv[2]))), flush=True)
    elif len(sys.argv) == 3 and sys.argv[1] == "--loo-scaling":
        loo_scaling([int(v) for v in sys.argv[2].split(",")])
    elif len(sys.argv) == 1:
        main()
    else:
        sys.exit("usage: run.py [--loo-scaling 5000,10000,20000]")
