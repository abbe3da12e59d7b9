"""The generic empirical NTK beside torch.func's one-shot recipe and neural-tangents.

Run with ``.venv/bin/python benchmarks/ntk_generic.py [--nt-python /work/nt-venv/bin/python]``.
Every measurement runs in a fresh process (so its peak resident memory is its own) on the same
network and inputs: the 2L-ReLU f(x) = σ(x Wᵀ) A/√m, W ∈ R^{m×d} trained, A ∈ {±1}^{m×C},
float64. Writes ``benchmarks/ntk_generic.json``; see benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

RESULTS = Path(__file__).with_name("ntk_generic.json")
NT_WORKER = Path(__file__).with_name("ntk_nt_worker.py")
D, M = 784, 1024
# (method, n, C, repeats); methods whose Jacobians need more than ~8 GB are not run here.
CASES = [
    ("jacobian_ntk", 200, 1, 3), ("torch.func one-shot", 200, 1, 3),
    ("nt JACOBIAN_CONTRACTION", 200, 1, 3),
    ("jacobian_ntk", 40, 10, 3), ("torch.func one-shot", 40, 10, 3),
    ("nt JACOBIAN_CONTRACTION", 40, 10, 3),
    ("jacobian_ntk", 200, 10, 1),
    ("empirical_ntk (closed form)", 1000, 1, 5), ("nt STRUCTURED_DERIVATIVES", 1000, 1, 2),
]
NOT_RUN = {
    ("torch.func one-shot", 200, 10): "its Jacobian alone is n·C·P·8 B = 12.8 GB",
    ("nt JACOBIAN_CONTRACTION", 200, 10): "needs 25.7 GB (two copies of the 12.8 GB Jacobian)",
}


def make_problem(path: Path, n: int, c: int, seed: int = 0) -> None:
    """Unit-norm inputs x (n×d), W ~ N(0, 1) (m×d), A ∈ {±1}^{m×C}: saved as .npz."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n, D))
    x /= np.linalg.norm(x, axis=1, keepdims=True)
    np.savez(path, x=x, w=rng.standard_normal((M, D)), a=rng.choice([-1.0, 1.0], (M, c)))


def torch_worker(method: str, problem: Path, repeats: int, out: Path) -> dict:
    import torch
    from torch.func import functional_call, jacrev, vmap

    from malleability.jacobian_ntk import jacobian_ntk
    from malleability.models import TwoLayerNet
    from malleability.ntk import empirical_ntk

    data = np.load(problem)
    x = torch.from_numpy(data["x"])
    net = TwoLayerNet(D, M, data["a"].shape[1], seed=0)
    with torch.no_grad():
        net.weight.copy_(torch.from_numpy(data["w"]))
        net.readout.copy_(torch.from_numpy(data["a"]))

    def one_shot(x):
        params = {k: v.detach() for k, v in net.named_parameters()}

        def f(p, xi):
            return functional_call(net, p, (xi.unsqueeze(0),)).reshape(-1)
        j = vmap(jacrev(f), in_dims=(None, 0))(params, x)["weight"]
        j = j.reshape(j.shape[0], j.shape[1], -1)
        return torch.einsum("acp,bcp->ab", j, j) / j.shape[1]

    fn = {"jacobian_ntk": lambda: jacobian_ntk(net, x),
          "torch.func one-shot": lambda: one_shot(x),
          "empirical_ntk (closed form)": lambda: empirical_ntk(net, x)}[method]
    t0 = time.perf_counter()
    k = fn()
    first = time.perf_counter() - t0
    times, cpu = [], []
    for _ in range(repeats - 1 if repeats > 1 else 0):
        t0, c0 = time.perf_counter(), time.process_time()
        k = fn()
        times.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    np.save(out, k.numpy())
    return {"first_s": first, "seconds": statistics.median(times) if times else first,
            "cpu_s": statistics.median(cpu) if cpu else None,
            "threads": torch.get_num_threads()}


def run_case(method: str, n: int, c: int, repeats: int, nt_python: str, tmp: Path) -> dict:
    problem, kernel = tmp / f"p{n}_{c}.npz", tmp / f"{method.replace(' ', '_')}_{n}_{c}.npy"
    if not problem.exists():
        make_problem(problem, n, c)
    if method.startswith("nt "):
        cmd = [nt_python, str(NT_WORKER), method.split()[1], str(problem), str(repeats),
               str(kernel)]
    else:
        cmd = [sys.executable, __file__, "--worker", method, str(problem), str(repeats),
               str(kernel)]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        lines = [ln for ln in proc.stderr.splitlines() if not ln.startswith(("I0000", "WARNING"))]
        return {"error": (lines or ["(no message)"])[-1], "returncode": proc.returncode}
    row = json.loads(proc.stdout.strip().splitlines()[-1])
    row["kernel"] = str(kernel)
    return row


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--nt-python", default="/work/nt-venv/bin/python")
    parser.add_argument("--worker", nargs=4, metavar=("METHOD", "PROBLEM", "REPEATS", "OUT"))
    parser.add_argument("--cases", help="comma-separated indices into CASES (default: all); "
                        "rows of the other cases are kept from the previous JSON")
    args = parser.parse_args()
    if args.worker:
        method, problem, repeats, out = args.worker
        row = torch_worker(method, Path(problem), int(repeats), Path(out))
        row["peak_rss_gb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
        print(json.dumps(row))
        return
    rows = []
    chosen = (range(len(CASES)) if args.cases is None
              else [int(i) for i in args.cases.split(",")])
    with tempfile.TemporaryDirectory() as tmp:
        for method, n, c, repeats in (CASES[i] for i in chosen):
            row = {"method": method, "n": n, "C": c, "P": M * D, "repeats": repeats,
                   **run_case(method, n, c, repeats, args.nt_python, Path(tmp))}
            rows.append(row)
            print(json.dumps({k: v for k, v in row.items() if k != "kernel"}), flush=True)
        reference = {(r["n"], r["C"]): np.load(r["kernel"]) for r in rows
                     if r["method"] in ("jacobian_ntk", "empirical_ntk (closed form)")
                     and "kernel" in r}
        for r in rows:
            if "kernel" in r:
                k, ref = np.load(r.pop("kernel")), reference[(r["n"], r["C"])]
                r["max_rel_diff_vs_ours"] = float(np.abs(k - ref).max() / np.abs(ref).max())
    meta = {"date": time.strftime("%Y-%m-%d %H:%M"), "cpus": os.cpu_count(),
            "load_average": os.getloadavg(), "omp_wait_policy": os.environ["OMP_WAIT_POLICY"],
            "omp_num_threads": os.environ.get("OMP_NUM_THREADS")}
    for r in rows:
        r["run"] = meta["date"]
    if args.cases is not None and RESULTS.exists():  # keep the rows of the cases not rerun
        done = {(r["method"], r["n"], r["C"]) for r in rows}
        rows = [r for r in json.loads(RESULTS.read_text())["rows"]
                if (r["method"], r["n"], r["C"]) not in done and "not_run" not in r] + rows
    rows += [{"method": m, "n": n, "C": c, "not_run": why} for (m, n, c), why in NOT_RUN.items()]
    RESULTS.write_text(json.dumps({"meta": meta, "rows": rows}, indent=2) + "\n")
    print(f"wrote {RESULTS}")


if __name__ == "__main__":
    main()
