"""The audit's time and peak memory per estimator at growing n (issue 30, item 5): a
Hugging Face ViT of about 90k parameters, trained briefly on n CIFAR-10 images, audited with
PGD-40 at ε = 8/255 on the top 10 %, 2 seeds, κ at its first block; beside each audit, the
estimator's own cost (one call of its scores, seed 0).

Each figure is one subprocess: wall time and the high-water RSS (``ru_maxrss``) of that
process, so estimators do not share a peak. Results go to audit_scale_estimators.json
(written after every cell; a rerun skips the cells it has). NTK-LOO's row is helper NTK's
(benchmarks/audit_scale.py); fold the two when merged.

Run: ``PYTHONPATH=src python benchmarks/audit_scale_estimators.py --n 500 2000``.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

RESULTS = Path(__file__).with_name("audit_scale_estimators.json")
ESTIMATORS = ("tracin", "trak", "ekfac", "kfac", "if-datainf")
N_TEST, EPOCHS, SEEDS, EPS, LAYER = 50, 3, (0, 1), 8 / 255, "vit.layers.0"
DATA = Path(os.environ.get("MALLEABILITY_DATA", Path(__file__).parents[1] / "../shared/data"))


def vit():
    """A ViT for 32 × 32 RGB: 16 patches of 8 × 8, width 48, 4 blocks of 3 heads."""
    import transformers

    torch.manual_seed(0)
    config = transformers.ViTConfig(image_size=32, patch_size=8, num_channels=3, hidden_size=48,
                                    num_hidden_layers=4, num_attention_heads=3,
                                    intermediate_size=96, num_labels=10)
    return transformers.ViTForImageClassification(config)


def data(n: int):
    from malleability.auditing import load_split
    from malleability.data import load_dataset

    train = load_dataset("cifar10", "train", DATA, n=n, seed=0, download=False)
    test = load_dataset("cifar10", "test", DATA, n=N_TEST, seed=0, download=False)
    return (*load_split(train, None, "x_train"), *load_split(test, None, "x_test"))


def train(n: int, path: Path) -> dict:
    """Train the ViT briefly on the n images (Adam, batch 64) and save its state dict."""
    from malleability.model_outputs import as_classifier

    x, y, xt, yt = data(n)
    model = as_classifier(vit())
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(EPOCHS):
        for batch in torch.randperm(n, generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(model(x[batch]), y[batch]).backward()
            opt.step()
    model.eval()
    with torch.no_grad():
        acc = float((model(xt).argmax(1) == yt).float().mean())
    torch.save(model.model.state_dict(), path)
    return {"parameters": sum(p.numel() for p in model.parameters()), "test_accuracy": acc}


def cell(n: int, estimator: str, what: str, weights: str) -> dict:
    """One measurement in this process: the estimator alone, or the whole audit."""
    from malleability.auditing import audit
    from malleability.estimators import make_estimator
    from malleability.model_outputs import as_classifier

    torch.set_num_threads(1)
    x, y, xt, yt = data(n)
    model = vit()
    model.load_state_dict(torch.load(weights, weights_only=True))
    model.eval()
    start = time.perf_counter()
    if what == "estimator":
        make_estimator(estimator).scores(as_classifier(model), x, y, xt, yt, seed=0)
        out = {}
    else:
        report = audit(model, x, y, xt, yt, estimator=estimator, seeds=SEEDS, eps=EPS,
                       steps=40, fraction=0.1, layer=LAYER)
        out = {"flip_rate": float(report.flip_rate), "spearman": float(report.spearman)}
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 2**20  # KiB → GiB
    return {"seconds": seconds, "peak_rss_gib": peak, **out}


def run(sizes: list[int], estimators: list[str], path: Path = RESULTS) -> None:
    results = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    results["settings"] = {"model": "transformers ViTForImageClassification, 32x32, patch 8, "
                           "width 48, 4 blocks, 3 heads", "epochs": EPOCHS, "n_test": N_TEST,
                           "attack": "pgd", "steps": 40, "eps": EPS, "fraction": 0.1,
                           "seeds": list(SEEDS), "layer": LAYER, "threads": 1}
    for n in sizes:
        with tempfile.TemporaryDirectory() as folder:
            weights = Path(folder) / "vit.pt"
            results.setdefault("models", {})[str(n)] = train(n, weights)
            for est in estimators:
                key = f"{n}/{est}"
                if key in results["cells"]:
                    continue
                row = {}
                for what in ("estimator", "audit"):
                    proc = subprocess.run(
                        [sys.executable, __file__, "--cell", str(n), est, what, str(weights)],
                        capture_output=True, text=True, env={**os.environ, "OMP_NUM_THREADS": "1"})
                    lines = proc.stdout.strip().splitlines()
                    row[what] = (json.loads(lines[-1]) if proc.returncode == 0 and lines else
                                 {"error": (proc.stderr.strip().splitlines() or ["?"])[-1]})
                    print(key, what, row[what], flush=True)
                results["cells"][key] = row
                path.write_text(json.dumps(results, indent=1, allow_nan=False))


def table(path: Path = RESULTS) -> str:
    """The markdown table of benchmarks/README.md from the results file."""
    results = json.loads(path.read_text())
    rows = ["| n | estimator | audit s | audit peak GiB | estimator alone s | alone peak GiB | "
            "flip rate | Spearman ρ |", "|---|---|---|---|---|---|---|---|"]
    for key, row in results["cells"].items():
        n, est = key.split("/")
        a, e = row["audit"], row["estimator"]
        if "error" in a:
            rows.append(f"| {n} | {est} | fails: {a['error']} | | | | | |")
            continue
        alone = (f"{e['seconds']:.1f} | {e['peak_rss_gib']:.2f}" if "error" not in e
                 else f"fails: {e['error']} |")
        rows.append(f"| {n} | {est} | {a['seconds']:.0f} | {a['peak_rss_gib']:.2f} | {alone} | "
                    f"{a['flip_rate']:.2f} | {a['spearman']:.3f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, nargs="+", default=[500, 2000])
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    parser.add_argument("--table", action="store_true", help="Print the README's table.")
    parser.add_argument("--cell", nargs=4, metavar=("N", "ESTIMATOR", "WHAT", "WEIGHTS"))
    args = parser.parse_args()
    if args.table:
        print(table())
    elif args.cell:
        n, est, what, weights = args.cell
        print(json.dumps(cell(int(n), est, what, weights)))
    else:
        run(args.n, args.estimators)
