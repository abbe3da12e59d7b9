"""The audit of docs/audit.md at a realistic size: Hugging Face models built from configs and
trained briefly here (no downloads) — a ViT and a ResNet control (no attention) on CIFAR-10,
and a BERT-style classifier on generated token data attacked at its word embeddings — each
audited with every estimator that handles it.

Token data: ids uniform in 0..99, length 16, from a seeded generator; the class is 1 when
more of the ids are below 50 than not (ties: the first id's parity), a label that needs the
whole sequence. The BERT's attack is on ``bert.embeddings.word_embeddings`` with ε = 0.1 ×
the RMS of those embeddings on the training set.

Run: ``PYTHONPATH=src python docs/audit_realistic.py [--n 2000]``; each (model, estimator)
cell is written to docs/audit_realistic.json when done, and a rerun resumes. The size run on
2 shared cores is recorded in that file's settings.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from torch.nn import functional as F

from malleability.auditing import audit, load_split
from malleability.data import load_dataset
from malleability.jsonsafe import loads_strict, to_strict_json
from malleability.model_outputs import as_classifier

RESULTS = Path(__file__).with_name("audit_realistic.json")
DATA = Path(os.environ.get("MALLEABILITY_DATA", Path(__file__).parents[1] / "../shared/data"))
N_TEST, EPOCHS, SEEDS, EPS, STEPS = 50, 3, (0, 1), 8 / 255, 40
ESTIMATORS = ("tracin", "ekfac", "trak")  # kfac works too (tests); left out for time
WORDS = "bert.embeddings.word_embeddings"


def hf_vit():
    import transformers

    torch.manual_seed(0)
    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=32, patch_size=8, num_channels=3, hidden_size=48, num_hidden_layers=4,
        num_attention_heads=3, intermediate_size=96, num_labels=10))


def hf_resnet():
    import transformers

    torch.manual_seed(0)
    return transformers.ResNetForImageClassification(transformers.ResNetConfig(
        num_channels=3, embedding_size=16, hidden_sizes=[16, 32, 64], depths=[1, 1, 1],
        layer_type="basic", num_labels=10))


def hf_bert():
    import transformers

    torch.manual_seed(0)
    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=2))


def tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 100, (n, 16), generator=torch.Generator().manual_seed(seed))
    low = (x < 50).sum(1)
    return x, torch.where(low == 8, x[:, 0] % 2, (low > 8).long())


def cifar(n: int):
    train = load_dataset("cifar10", "train", DATA, n=n, seed=0, download=False)
    test = load_dataset("cifar10", "test", DATA, n=N_TEST, seed=0, download=False)
    return (*load_split(train, None, "x_train"), *load_split(test, None, "x_test"))


def fit(model, x, y, xt, yt, epochs: int = EPOCHS) -> dict:
    """Adam, batch 64, ``epochs`` epochs; the test accuracy after."""
    clf = as_classifier(model)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(clf(x[batch]), y[batch]).backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        acc = float((clf(xt).argmax(1) == yt).float().mean())
    return {"parameters": sum(p.numel() for p in model.parameters()), "test_accuracy": acc}


def write_atomic(path: Path, payload: dict) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as fh:
        json.dump(to_strict_json(payload), fh, indent=1, allow_nan=False)
    os.replace(fh.name, path)


def run(n: int, estimators: tuple[str, ...], path: Path = RESULTS) -> None:
    results = loads_strict(path.read_text()) if path.exists() else {"cells": {}}
    if results.get("settings", {}).get("n_train", n) != n:
        results = {"cells": {}}
    results["settings"] = {"n_train": n, "n_test": N_TEST, "epochs": EPOCHS,
                           "seeds": list(SEEDS), "attack": "pgd", "steps": STEPS,
                           "fraction": 0.1, "eps_images": EPS, "threads": 1}
    x, y, xt, yt = cifar(n)
    xs, ys = tokens(n, 0)
    xst, yst = tokens(N_TEST, 1)
    cases = {"HF ViT": (hf_vit, (x, y, xt, yt), {"layer": "vit.layers.0", "eps": EPS}),
             "HF ResNet (control)": (hf_resnet, (x, y, xt, yt),
                                     {"layer": "resnet.encoder", "eps": EPS}),
             "HF BERT (tokens)": (hf_bert, (xs, ys, xst, yst),
                                  {"layer": "bert.encoder", "perturb": WORDS})}
    for name, (build, data, options) in cases.items():
        model = build()
        results.setdefault("models", {})[name] = fit(model, *data)
        if "perturb" in options:
            with torch.no_grad():
                rms = float(model.get_submodule(WORDS)(data[0]).pow(2).mean().sqrt())
            options = {**options, "eps": 0.1 * rms}
            results["models"][name]["eps"] = options["eps"]
        for est in estimators:
            key = f"{name}/{est}"
            if key in results["cells"]:
                continue
            start = time.perf_counter()
            try:
                report = audit(model, *data, estimator=est, seeds=SEEDS, steps=STEPS,
                               fraction=0.1, **options).to_dict()
                report["seconds"] = time.perf_counter() - start
            except ValueError as err:
                report = {"error": str(err)}
            print(key, report.get("seconds"), report.get("error"), flush=True)
            results["cells"][key] = report
            write_atomic(path, results)


def table(path: Path = RESULTS) -> str:
    """The markdown table of docs/audit.md from the results file."""
    results = loads_strict(path.read_text())
    rows = ["| model | parameters | test acc. | estimator | κ (layer) | flip rate | Spearman ρ | "
            "top-K overlap | s |", "|---|---|---|---|---|---|---|---|---|"]

    def estimate(e: dict) -> str:
        low, high = e["low"], e["high"]
        return f"{e['mean']:.2f}" + ("" if low is None else f" [{low:.2f}, {high:.2f}]")

    for key, r in results["cells"].items():
        name, est = key.split("/")
        m = results["models"][name]
        head = f"| {name} | {m['parameters']} | {m['test_accuracy']:.2f} | {est} |"
        if "error" in r:
            rows.append(f"{head} fails: {r['error']} | | | | |")
            continue
        kappa = r["kappa"]
        rows.append(f"{head} {kappa:.3g} ({r['representation']['layer']}) | "
                    f"{estimate(r['flip_rate'])} | {estimate(r['spearman'])} | "
                    f"{estimate(r['top_k_overlap'])} | {r['seconds']:.0f} |")
    return "\n".join(rows)


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=500, help="CIFAR-10 training images and "
                        "token sequences (the realistic size: 2000; 500 fits 2 shared cores)")
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    parser.add_argument("--table", action="store_true", help="Print docs/audit.md's table.")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.table:
        print(table())
    else:
        run(args.n, tuple(args.estimators))
