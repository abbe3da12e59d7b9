"""The audit of docs/audit.md: a small ViT (softmax and linearized attention) and an MLP on
digits, each audited with five estimators (checkpoint agreement for two of them).

Run: ``.venv/bin/python docs/audit_digits.py`` (about an hour on 2 shared cores); each
(model, estimator) cell is written to docs/audit_digits.json when done, and a rerun resumes.
``--table`` prints the markdown tables of docs/audit.md from that file.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from pathlib import Path

import torch
from tqdm import tqdm

from malleability.auditing import (
    audit,
    load_split,
    representation,
    spectral_step,
)
from malleability.classifiers import MLPClassifier, VisionTransformer, fit_classifier
from malleability.data import load_dataset
from malleability.jsonsafe import to_strict_json

RESULTS = Path(__file__).with_name("audit_digits.json")
N_TRAIN, N_TEST, EPOCHS, CHECKPOINT_EVERY = 200, 50, 40, 10
SEEDS = (0, 1, 2)
MODELS = {
    "ViT (softmax)": lambda: VisionTransformer(attention="softmax", seed=0),
    "ViT (linearized)": lambda: VisionTransformer(attention="linear", seed=0),
    "MLP": lambda: MLPClassifier(seed=0),
}
LAYER = {"ViT (softmax)": "blocks.0", "ViT (linearized)": "blocks.0", "MLP": None}
ESTIMATORS = ("ntk-loo", "tracin", "trak", "if-datainf", "if-ekfac")
#: Estimators also run at every checkpoint (checkpoint agreement costs 4× the estimator calls).
CHECKPOINTED = ("ntk-loo", "trak")


def write_atomic(path: Path, payload: dict) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as fh:
        json.dump(to_strict_json(payload), fh, indent=1, allow_nan=False)
    os.replace(fh.name, path)


def run(models: list[str], path: Path = RESULTS, estimators: tuple[str, ...] = ESTIMATORS
        ) -> None:
    results = json.loads(path.read_text()) if path.exists() else {"cells": {}}
    train = load_dataset("digits", split="train", n=N_TRAIN, seed=0)
    test = load_dataset("digits", split="test", n=N_TEST, seed=0)
    full_test = load_dataset("digits", split="test")
    x, y = load_split(train, None, "x_train")
    xt_all, yt_all = load_split(full_test, None, "x_test")
    results["settings"] = {"n_train": N_TRAIN, "n_test": N_TEST, "epochs": EPOCHS,
                           "checkpoints": f"every {CHECKPOINT_EVERY} epochs from 20",
                           "seeds": list(SEEDS), "attack": "pgd", "eps": 0.3,
                           "fraction": 0.1, "torch_threads": torch.get_num_threads()}
    cells = [(m, e) for m in models for e in estimators]
    for model_name in models:
        model = MODELS[model_name]()
        t0 = time.perf_counter()
        snaps = fit_classifier(model, x, y, epochs=EPOCHS, seed=0,
                               checkpoint_every=CHECKPOINT_EVERY)[1:]  # epochs 20, 30, 40
        with torch.no_grad():
            acc = float((model(xt_all).argmax(1) == yt_all).double().mean())
        results.setdefault("models", {})[model_name] = {
            "test_accuracy": acc, "train_seconds": time.perf_counter() - t0,
            "parameters": sum(p.numel() for p in model.parameters()),
            "input_gram": spectral_step(representation(model, x, None))["per_example"]}
        for m, estimator in tqdm([c for c in cells if c[0] == model_name], desc=model_name):
            key = f"{m} | {estimator}"
            if key in results["cells"]:
                continue
            t1 = time.perf_counter()
            try:
                ckpts = snaps if estimator in CHECKPOINTED else None
                report = audit(model, train, None, test, None, estimator=estimator,
                               seeds=SEEDS, checkpoints=ckpts, layer=LAYER[m]).to_dict()
            except ValueError as err:
                report = {"error": str(err)}
            report["seconds"] = time.perf_counter() - t1
            results["cells"][key] = report
            write_atomic(path, results)
    write_atomic(path, results)


def fmt(interval: dict) -> str:
    if interval["low"] is None:
        return f"{interval['mean']:.2f}"
    return f"{interval['mean']:.2f} [{interval['low']:.2f}, {interval['high']:.2f}]"


def table() -> None:
    results = json.loads(RESULTS.read_text())
    print("| model | parameters | test acc. | κ input | κ at audited layer (per example) "
          "| κ per token | width MLP-Attn κ⁶ n log n |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    for name, info in results["models"].items():
        cell = next(c for k, c in results["cells"].items() if k.startswith(name)
                    and "representation" in c)
        rep = cell["representation"]
        token = rep.get("per_token", {}).get("kappa")
        print(f"| {name} | {info['parameters']} | {info['test_accuracy']:.3f} "
              f"| {info['input_gram']['kappa']:.3g} | {rep['per_example']['kappa']:.3g} "
              f"({rep['layer']}) | {'—' if token is None else f'{token:.3g}'} "
              f"| {rep['per_example']['width_threshold']['mlp_attention']:.2g} |")
    print()
    print("| model | estimator | flip rate | Spearman ρ | top-K overlap | checkpoints: mean "
          "pairwise ρ | ensemble flip rate | s |")
    print("|---|---|---|---|---|---:|---|---:|")
    for key, c in results["cells"].items():
        model, estimator = key.split(" | ")
        if "error" in c:
            print(f"| {model} | {estimator} | fails: {c['error']} | | | | | {c['seconds']:.0f} |")
            continue
        a = c["checkpoint_agreement"]
        rho = "—" if a is None else f"{a['mean_pairwise_spearman']:.2f}"
        ens = "—" if a is None else fmt(a["ensemble"]["adversarial"]["flip_rate"])
        print(f"| {model} | {estimator} | {fmt(c['flip_rate'])} | {fmt(c['spearman'])} "
              f"| {fmt(c['top_k_overlap'])} | {rho} | {ens} | {c['seconds']:.0f} |")


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--table", action="store_true")
    parser.add_argument("--model", action="append", choices=list(MODELS),
                        help="Only this model (repeatable; default all).")
    parser.add_argument("--estimator", action="append", choices=ESTIMATORS,
                        help="Only this estimator (repeatable; default all).")
    parser.add_argument("--results", type=Path, default=RESULTS)
    args = parser.parse_args()
    if args.table:
        table()
    else:
        run(args.model or list(MODELS), args.results, tuple(args.estimator or ESTIMATORS))
