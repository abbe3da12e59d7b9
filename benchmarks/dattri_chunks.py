"""Peak memory and time of dattri's influence functions by training chunk (issue 30).

The ViT and data of ``audit_scale.py`` (trained the same way at ``--n``), one estimator call
(seed 0) per subprocess: wall and CPU seconds and the high-water RSS (``ru_maxrss``), and its
scores, compared with those of the first configuration of the same estimator that finished
(listed first: dattri's ``attribute`` on one batch each, the package's call before). A cell
whose resident memory passes ``--cap-gib`` is stopped. ``--logra``: LoGra's dattri phases
instead (time and peak memory of each); ``--lissa-hessians``: |λ|max of the Hessians LiSSA
samples (one training point each). Results go to ``dattri_chunks.json``.

Run: ``PYTHONPATH=src OMP_NUM_THREADS=1 python benchmarks/dattri_chunks.py --n 300``.
"""

from __future__ import annotations

import argparse
import copy
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).parent))
import audit_scale  # noqa: E402

RESULTS = Path(__file__).with_name("dattri_chunks.json")
#: (estimator, chunk); chunk 0: dattri's own ``attribute`` on one batch of each set, as the
#: package called it before (commit 3fc9e19). The package's call solves once, for the mean
#: test gradient (the results file's earlier rows, keyed ``test_chunk``, solved per test point).
CONFIGS = (("if-cg", 0), ("if-cg", 256), ("if-lissa", 0), ("if-lissa", 256),
           ("if-lissa", 64), ("if-arnoldi", 0), ("if-arnoldi", 256))


def one_batch(est, model, x, y, xt, yt) -> torch.Tensor:
    """The scores as the package computed them before: dattri's ``cache`` and ``attribute``
    on one batch of the training and one of the test set, under autograd."""
    from dattri.algorithm import influence_function as dif
    from torch.nn.attention import SDPBackend, sdpa_kernel
    from torch.utils.data import DataLoader, TensorDataset

    train, test = (DataLoader(TensorDataset(a, b), batch_size=len(a)) for a, b in
                   ((x, y), (xt, yt)))
    with torch.random.fork_rng(devices=[]), sdpa_kernel([SDPBackend.MATH]):
        torch.manual_seed(0)
        attributor = getattr(dif, est.attributor)(est._task(model, x), device="cpu",
                                                   **est.options(0))
        attributor.cache(train)
        return attributor.attribute(train, test).mean(1).detach().to(torch.float64)


def _trained(n: int, folder: Path):
    """The data of ``audit_scale.py`` at ``n`` and its ViT with the weights trained into
    ``folder``, as a classifier, on one thread."""
    from malleability.model_outputs import as_classifier

    torch.set_num_threads(1)
    x, y, xt, yt = audit_scale.data(n)
    model = audit_scale.vit()
    model.load_state_dict(torch.load(folder / f"epoch{audit_scale.EPOCHS}.pt",
                                     weights_only=True))
    return x, y, xt, yt, as_classifier(model.eval())


def cell(n: int, estimator: str, chunk: int, folder: Path, out: Path) -> dict:
    """One call of the estimator's scores in this process; the scores are saved to ``out``."""
    from malleability.estimators import make_estimator

    x, y, xt, yt, model = _trained(n, folder)
    est = make_estimator(estimator, chunk=chunk or n)
    base = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20
    start, cpu = time.perf_counter(), time.process_time()
    scores = (est.scores(model, x, y, xt, yt, seed=0) if chunk else
              one_batch(est, copy.deepcopy(model).eval(), x, y, xt, yt))
    torch.save(scores, out)
    return {"seconds": time.perf_counter() - start, "cpu_seconds": time.process_time() - cpu,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20,
            "rss_before_gib": base}


def _rss_gib(pid: int) -> float:
    with open(f"/proc/{pid}/status") as status:
        kib = next(ln.split()[1] for ln in status if ln.startswith("VmRSS:"))
    return int(kib) / 2**20


def _watched(cmd: list[str], limit_s: float, cap_gib: float) -> dict:
    """Run ``cmd``; stop it after ``limit_s`` seconds or once its resident memory passes
    ``cap_gib`` (polled every 0.1 s, so the machine's other jobs are not starved)."""
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True,
                                env={**os.environ, "OMP_NUM_THREADS": "1"})
        start, rss = time.perf_counter(), 0.0
        while proc.poll() is None:
            try:
                rss = max(rss, _rss_gib(proc.pid))
            except (OSError, StopIteration):
                pass
            if rss > cap_gib or time.perf_counter() - start > limit_s:
                proc.kill()
                proc.wait()
                why = f"{rss:.1f} GiB" if rss > cap_gib else f"{limit_s:g} s"
                return {"error": f"stopped at {why}", "seconds_at_stop":
                        time.perf_counter() - start, "rss_at_stop_gib": rss}
            time.sleep(0.1)
        out.seek(0)
        err.seek(0)
        if proc.returncode == 0:
            return json.loads(out.read().strip().splitlines()[-1])
        return {"error": (err.read().strip().splitlines() or ["?"])[-1][:300],
                "seconds_at_error": time.perf_counter() - start, "rss_polled_peak_gib": rss}


def logra_phases(n: int, folder: Path) -> dict:
    """LoGra's scores (seed 0) with dattri's phases timed and their peak resident memory
    (``/proc`` polled every 20 ms: ``ru_maxrss`` cannot be reset between phases)."""
    import threading

    from dattri.algorithm.block_projected_if.block_projected_if import (
        BlockProjectedIFAttributor as Block,
    )

    from malleability.estimators import make_estimator

    x, y, xt, yt, model = _trained(n, folder)
    peak, phases, done = [0.0], {}, threading.Event()

    def poll() -> None:
        while not done.is_set():
            peak[0] = max(peak[0], _rss_gib(os.getpid()))
            time.sleep(0.02)

    def timed(name: str):
        method = getattr(Block, name)

        def wrapper(self, *args, **kwargs):
            before, start = _rss_gib(os.getpid()), time.perf_counter()
            peak[0] = before
            out = method(self, *args, **kwargs)
            phases[name] = {"seconds": time.perf_counter() - start, "rss_before_gib": before,
                            "peak_rss_gib": peak[0], "rss_after_gib": _rss_gib(os.getpid()),
                            "layer_dims": list(self.layer_dims or [])}
            return out
        return wrapper

    for name in ("compute_preconditioners", "compute_ifvp", "attribute"):
        setattr(Block, name, timed(name))
    threading.Thread(target=poll, daemon=True).start()
    start = time.perf_counter()
    make_estimator("logra").scores(model, x, y, xt, yt, seed=0)
    done.set()
    return {"seconds": time.perf_counter() - start, "phases": phases,
            "peak_rss_gib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20}


def lissa_hessians(n: int, folder: Path, count: int = 40) -> dict:
    """|λ|max of the Hessian of one training point's loss (what LiSSA samples per step) for
    ``count`` points drawn with seed 0, and of the mean training loss (power iteration of
    :func:`~malleability.estimator_checks.hessian_top_eigenvalue`)."""
    from malleability.estimator_checks import hessian_top_eigenvalue

    x, y, _, _, model = _trained(n, folder)
    rows = torch.randperm(n, generator=torch.Generator().manual_seed(0))[:count].tolist()
    tops = torch.tensor([hessian_top_eigenvalue(model, x[i:i + 1], y[i:i + 1]) for i in rows])
    return {"points": count, "max": float(tops.max()), "median": float(tops.median()),
            "above_100": int((tops > 100).sum()),
            "mean_loss": hessian_top_eigenvalue(model, x, y)}


def run(n: int, configs: list[tuple[str, int]], limit_s: float, cap_gib: float) -> None:
    results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"cells": {}}
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        subprocess.run([sys.executable, audit_scale.__file__, "--train", str(n), str(folder)],
                       capture_output=True, text=True, check=True,
                       env={**os.environ, "OMP_NUM_THREADS": "1"})
        first: dict[str, tuple[str, torch.Tensor]] = {}
        for est, chunk in configs:
            key = (f"{n}/{est}/chunk {chunk}/mean test gradient" if chunk else
                   f"{n}/{est}/dattri one batch (before)")
            out = folder / f"{est}-{chunk}.pt"
            cmd = [sys.executable, __file__, "--cell", str(n), est, str(chunk), str(folder),
                   str(out)]
            row = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()),
                   "load_before": os.getloadavg()[0]}
            row.update(_watched(cmd, limit_s, cap_gib))
            if out.exists():
                scores = torch.load(out)
                if est not in first:
                    first[est] = key, scores
                row["compared_with"], ref = first[est]
                row["max_abs_diff_over_max_abs"] = float((scores - ref).abs().max()
                                                         / ref.abs().max())
                row["pearson_with_first"] = float(torch.corrcoef(torch.stack([scores, ref]))[0, 1])
            row["load_after"] = os.getloadavg()[0]
            print(key, row, flush=True)
            results["cells"][key] = row
            RESULTS.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=300)
    parser.add_argument("--estimators", nargs="+", default=None)
    parser.add_argument("--limit-s", type=float, default=1800.0)
    parser.add_argument("--cap-gib", type=float, default=5.0,
                        help="Stop a cell whose resident memory passes this.")
    parser.add_argument("--configs", nargs="+", type=int, default=None,
                        help="Indices into CONFIGS (default: all of --estimators).")
    parser.add_argument("--logra", action="store_true",
                        help="LoGra's phases (time, peak memory) at --n instead.")
    parser.add_argument("--lissa-hessians", action="store_true",
                        help="|λ|max of single training points' Hessians at --n instead.")
    parser.add_argument("--logra-cell", nargs=2, metavar=("N", "FOLDER"))
    parser.add_argument("--lissa-cell", nargs=2, metavar=("N", "FOLDER"))
    parser.add_argument("--cell", nargs=5, metavar=("N", "ESTIMATOR", "CHUNK", "FOLDER", "OUT"))
    args = parser.parse_args()
    if args.logra_cell:
        print(json.dumps(logra_phases(int(args.logra_cell[0]), Path(args.logra_cell[1]))))
    elif args.lissa_cell:
        print(json.dumps(lissa_hessians(int(args.lissa_cell[0]), Path(args.lissa_cell[1]))))
    elif args.logra or args.lissa_hessians:
        what = "logra" if args.logra else "lissa"
        with tempfile.TemporaryDirectory() as tmp:
            subprocess.run([sys.executable, audit_scale.__file__, "--train", str(args.n), tmp],
                           capture_output=True, text=True, check=True,
                           env={**os.environ, "OMP_NUM_THREADS": "1"})
            row = _watched([sys.executable, __file__, f"--{what}-cell", str(args.n), tmp],
                           args.limit_s, args.cap_gib)
        results = json.loads(RESULTS.read_text()) if RESULTS.exists() else {"cells": {}}
        key = "logra/phases" if args.logra else "if-lissa/single-point Hessians"
        results["cells"][f"{args.n}/{key}"] = {
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), **row}
        RESULTS.write_text(json.dumps(results, indent=1, allow_nan=False) + "\n")
        print(row)
    elif args.cell:
        n, est, chunk, folder, out = args.cell
        print(json.dumps(cell(int(n), est, int(chunk), Path(folder), Path(out))))
    else:
        chosen = [CONFIGS[i] for i in args.configs] if args.configs else list(CONFIGS)
        run(args.n, [c for c in chosen if args.estimators is None or c[0] in args.estimators],
            args.limit_s, args.cap_gib)
