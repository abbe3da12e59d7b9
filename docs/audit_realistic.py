"""The audit of docs/audit.md at a realistic size: four models built from configs and trained
briefly here (no downloads), each audited with every estimator that runs on it, against its
controls (estimator noise, random ±ε signs) and the adversarial attack.

- Hugging Face ``ViTForImageClassification`` and a ``timm`` ViT of the same shape (patches
  8 × 8, width 48, 4 blocks, 3 heads, MLP 96) on CIFAR-10; κ at the input of their first
  block (tokens: both Grams);
- torchvision's ``ResNet`` with ResNet-18's layout (BasicBlock, 2-2-2-2) at 1/8 of its widths
  (8-16-32-64, a 3 × 3 stem for 32 × 32 images): the control without attention; κ at the
  input of ``layer4``;
- transformers' ``BertForSequenceClassification`` (2 blocks, width 32) on generated token
  data: ids uniform in 0..99, length 16, from a seeded generator; the class is 1 when more of
  the ids are below 50 than not (ties: the first id's parity), a label that needs the whole
  sequence. The attack moves ``bert.embeddings.word_embeddings`` (``perturb=``) with
  ε = 0.1 × the RMS of those embeddings on the training set; κ at the encoder's input.

Each (model, estimator) cell is written to docs/audit_realistic.json as it finishes, with the
weights' SHA-256; a rerun skips the finished cells (and refuses weights that trained
differently), so a partial run is usable and resumable. timm and torchvision import only in
.venv-vision (``make test-vision``); where they do not, those models are recorded as skipped.

Run: ``PYTHONPATH=src .venv-vision/bin/python docs/audit_realistic.py [--n 2000]``;
``--table`` prints docs/audit.md's tables from the JSON, ``--splice`` writes them into
docs/audit.md between its ``<!-- begin audit_realistic -->`` markers, ``--merge FILE`` adds
the cells of a run written elsewhere with ``--out FILE`` (another process or environment).
"""

from __future__ import annotations

import argparse
import hashlib
import json
import math
import os
import platform
import tempfile
import time
import traceback
from collections.abc import Callable
from pathlib import Path

import torch
from torch import nn
from torch.nn import functional as F

from malleability.auditing import audit, load_split
from malleability.controls import BOUNDS
from malleability.data import load_dataset
from malleability.intervals import clip_interval
from malleability.jsonsafe import loads_strict, to_strict_json
from malleability.model_outputs import as_classifier

DOCS = Path(__file__).parent
RESULTS = DOCS / "audit_realistic.json"
DATA = Path(os.environ.get("MALLEABILITY_DATA", DOCS.parent / "../shared/data"))
N_TEST, EPOCHS, SEEDS, EPS, STEPS, FRACTION = 100, 15, (0, 1, 2), 8 / 255, 40, 0.1
#: Every registered estimator, cheapest first (if-explicit is only checked for size), so that a
#: partial run covers all models.
ESTIMATORS = ("if-explicit", "tracin", "trak", "ekfac", "kfac", "ntk-loo", "if-datainf", "if-cg",
              "if-lissa", "if-arnoldi", "if-ekfac")
#: if-explicit forms the P × P Hessian, one Hessian-vector product on the training set per
#: parameter; above this many parameters it is not run.
EXPLICIT_PARAMETERS = 5000
WORDS = "bert.embeddings.word_embeddings"
TIMM_VISION = "timm and torchvision import only in .venv-vision (make test-vision)"


#: Every attention runs eagerly (softmax(QKᵀ/√d)V as matmuls): torch.func's vmap, which the
#: per-example gradients use, has no batching rule for CPU's fused attention kernel and
#: falls back to a loop over the batch. The function computed is the same.
EAGER = "eager"


def hf_vit(image: int = 32, patch: int = 8, width: int = 48, depth: int = 4, heads: int = 3,
           classes: int = 10, channels: int = 3) -> nn.Module:
    """transformers' ViT from a config (pre-LayerNorm blocks, MLP 2 × width)."""
    import transformers

    return transformers.ViTForImageClassification(transformers.ViTConfig(
        image_size=image, patch_size=patch, num_channels=channels, hidden_size=width,
        num_hidden_layers=depth, num_attention_heads=heads, intermediate_size=2 * width,
        num_labels=classes, attn_implementation=EAGER))


def timm_vit(image: int = 32, patch: int = 8, width: int = 48, depth: int = 4, heads: int = 3,
             classes: int = 10) -> nn.Module:
    """timm's ViT by ``create_model`` with no pretrained weights, at the HF ViT's shape."""
    import timm

    model = timm.create_model("vit_tiny_patch16_224", pretrained=False, img_size=image,
                              patch_size=patch, embed_dim=width, depth=depth, num_heads=heads,
                              mlp_ratio=2.0, num_classes=classes)
    for m in model.modules():  # eager attention (EAGER)
        if isinstance(m, timm.layers.Attention):
            m.fused_attn = False
    return model


def narrow_resnet(widths: tuple[int, ...] = (8, 16, 32, 64), blocks: tuple[int, ...] = (2, 2, 2, 2),
                  classes: int = 10) -> nn.Module:
    """torchvision's ``ResNet`` with BasicBlocks ``blocks`` (ResNet-18: 2-2-2-2) at ``widths``
    (ResNet-18: 64-128-256-512) and a 3 × 3 stem without max-pooling, for small images; its
    forward, ``layer1``–``layer4`` and ``fc`` are torchvision's."""
    from torchvision.models.resnet import BasicBlock, ResNet

    model = ResNet(BasicBlock, [1, 1, 1, 1], num_classes=classes)
    model.inplanes = widths[0]
    model.conv1 = nn.Conv2d(3, widths[0], 3, padding=1, bias=False)
    model.bn1 = nn.BatchNorm2d(widths[0])
    model.maxpool = nn.Identity()
    for i, (width, count) in enumerate(zip(widths, blocks, strict=True)):
        setattr(model, f"layer{i + 1}",
                model._make_layer(BasicBlock, width, count, stride=1 if i == 0 else 2))
    model.fc = nn.Linear(widths[-1], classes)
    for m in model.modules():  # torchvision's initialisation, on the new modules
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
    return model


def hf_bert() -> nn.Module:
    import transformers

    return transformers.BertForSequenceClassification(transformers.BertConfig(
        vocab_size=100, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=16, num_labels=2,
        attn_implementation=EAGER))


#: name → (builder, data, κ layer, perturbed submodule, width of the model's features)
CASES: dict[str, tuple[Callable[[], nn.Module], str, str, str | None, int]] = {
    "HF ViT": (hf_vit, "cifar", "vit.layers.0", None, 48),
    "timm ViT": (timm_vit, "cifar", "blocks.0", None, 48),
    "torchvision ResNet (control)": (narrow_resnet, "cifar", "layer4", None, 64),
    "HF BERT (tokens)": (hf_bert, "tokens", "bert.encoder", WORDS, 32),
}


def tokens(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    x = torch.randint(0, 100, (n, 16), generator=torch.Generator().manual_seed(seed))
    low = (x < 50).sum(1)
    return x, torch.where(low == 8, x[:, 0] % 2, (low > 8).long())


def cifar(n: int) -> tuple[torch.Tensor, ...]:
    train = load_dataset("cifar10", "train", DATA, n=n, seed=0, download=False)
    test = load_dataset("cifar10", "test", DATA, n=N_TEST, seed=0, download=False)
    return (*load_split(train, None, "x_train"), *load_split(test, None, "x_test"))


def fit(model: nn.Module, x: torch.Tensor, y: torch.Tensor, xt: torch.Tensor,
        yt: torch.Tensor, epochs: int = EPOCHS) -> dict:
    """Adam (lr 1e-3), batch 64, ``epochs`` epochs, seed 0; the model in eval mode, its
    size, train and test accuracy and the SHA-256 of its weights."""
    clf = as_classifier(model)
    opt = torch.optim.Adam(clf.parameters(), lr=1e-3)
    g = torch.Generator().manual_seed(0)
    clf.train()
    for _ in range(epochs):
        for batch in torch.randperm(len(x), generator=g).split(64):
            opt.zero_grad()
            F.cross_entropy(clf(x[batch]), y[batch]).backward()
            opt.step()
    clf.eval()
    with torch.no_grad():
        acc = {name: float((clf(a).argmax(1) == b).float().mean())
               for name, (a, b) in {"train": (x, y), "test": (xt, yt)}.items()}
    digest = hashlib.sha256()
    for key, value in model.state_dict().items():
        digest.update(key.encode())
        digest.update(value.detach().cpu().contiguous().numpy().tobytes())
    return {"parameters": sum(p.numel() for p in model.parameters()),
            "train_accuracy": acc["train"], "test_accuracy": acc["test"],
            "weights_sha256": digest.hexdigest(), "torch": torch.__version__}


def write_atomic(path: Path, payload: dict) -> None:
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as fh:
        json.dump(to_strict_json(payload), fh, indent=1, allow_nan=False)
    os.replace(fh.name, path)


def settings(n: int) -> dict:
    return {"n_train": n, "n_test": N_TEST, "epochs": EPOCHS, "seeds": list(SEEDS),
            "attack": "pgd", "steps": STEPS, "fraction": FRACTION, "eps_images": EPS,
            "eps_tokens": "0.1 × RMS of the word embeddings", "threads": 1,
            "machine": platform.machine()}


def not_run(estimator: str, parameters: int) -> str | None:
    """Why ``estimator`` is not run on a model of ``parameters`` (None: it is run)."""
    if estimator == "if-explicit" and parameters > EXPLICIT_PARAMETERS:
        return (f"not run: its P × P Hessian (P = {parameters}) takes P Hessian-vector "
                f"products on the training set and {4 * parameters**2 / 1e9:.1f} GB")
    return None


def run(n: int, models: tuple[str, ...], estimators: tuple[str, ...],
        path: Path = RESULTS) -> None:
    """Train each model and audit it with each estimator, estimator by estimator, writing
    every finished cell; finished cells are kept."""
    results = loads_strict(path.read_text()) if path.exists() else {}
    if results.get("settings") != settings(n):
        results = {}
    results = {"settings": settings(n), "models": results.get("models", {}),
               "cells": results.get("cells", {})}
    data = {"cifar": cifar(n), "tokens": (*tokens(n, 0), *tokens(N_TEST, 1))}
    ready: dict[str, tuple[nn.Module, dict]] = {}
    for name in models:
        build, kind, layer, perturb, _ = CASES[name]
        torch.manual_seed(0)
        try:
            model = build()
        except ImportError as err:
            results["models"][name] = {"skipped": f"{TIMM_VISION}: {err}"}
            write_atomic(path, results)
            continue
        record = fit(model, *data[kind])
        done = results["models"].get(name, {}).get("weights_sha256")
        if done not in (None, record["weights_sha256"]):
            raise SystemExit(f"{name}: the weights trained differently from the finished cells' "
                             f"(torch {results['models'][name]['torch']}); rerun in the same "
                             f"environment or move {path} away")
        options = {"layer": layer, "eps": EPS}
        if perturb:
            with torch.no_grad():
                rms = float(model.get_submodule(perturb)(data[kind][0]).pow(2).mean().sqrt())
            options = {"layer": layer, "perturb": perturb, "eps": 0.1 * rms}
        results["models"][name] = {**record, "eps": options["eps"]}
        ready[name] = (model, options)
        write_atomic(path, results)
    for est in estimators:
        for name, (model, options) in ready.items():
            key = f"{name}/{est}"
            if key in results["cells"]:
                continue
            reason = not_run(est, results["models"][name]["parameters"])
            start = time.perf_counter()
            if reason:
                report = {"error": reason}
            else:
                try:
                    report = audit(model, *data[CASES[name][1]], estimator=est, seeds=SEEDS,
                                   steps=STEPS, fraction=FRACTION, **options).to_dict()
                except Exception as err:  # recorded: the table says which estimators fail
                    traceback.print_exc()
                    report = {"error": f"{type(err).__name__}: {err}".splitlines()[0]}
            report["seconds"] = time.perf_counter() - start
            print(key, f"{report['seconds']:.0f} s", report.get("verdict", report.get("error")),
                  flush=True)
            results["cells"][key] = report
            write_atomic(path, results)


def merge(other: Path, path: Path = RESULTS) -> None:
    """Add the cells of ``other`` (a run of the same settings, e.g. in another environment or
    process, with ``--out``) that ``path`` lacks, with their models' records."""
    mine, theirs = loads_strict(path.read_text()), loads_strict(other.read_text())
    if mine["settings"] != theirs["settings"]:
        raise SystemExit(f"{other}: settings differ from {path}'s")
    for key, cell in theirs["cells"].items():
        name = key.rsplit("/", 1)[0]
        record = mine["models"].get(name, {})
        if "weights_sha256" in record and record != theirs["models"][name]:
            raise SystemExit(f"{other}: {name} trained differently from {path}'s")
        if key not in mine["cells"]:
            mine["models"][name] = theirs["models"][name]
            mine["cells"][key] = cell
    write_atomic(path, mine)


def _estimate(e: dict | float, metric: str | None = None) -> str:
    """mean [low, high], the interval clipped to ``metric``'s range (controls.BOUNDS)."""
    if not isinstance(e, dict):
        return f"{e:.2f}"
    if e["low"] is None:
        return f"{e['mean']:.2f}"
    low, high = clip_interval((e["low"], e["high"]), metric and BOUNDS[metric])
    return f"{e['mean']:.2f} [{low:.2f}, {high:.2f}]"


def _rank(estimator: str) -> int:
    return ESTIMATORS.index(estimator) if estimator in ESTIMATORS else len(ESTIMATORS)


def _sci(value: float) -> str:
    return "∞" if math.isinf(value) else f"{value:.2g}"


def tables(path: Path = RESULTS) -> str:
    """docs/audit.md's example section from the results file: the models with κ and the
    width it asks for, the answer per model, then every cell against its controls."""
    results = loads_strict(path.read_text())
    s, cells = results["settings"], results["cells"]
    out = [f"n = {s['n_train']} training points, {s['n_test']} test points, seeds "
           f"{', '.join(map(str, s['seeds']))}, PGD-{s['steps']} on the top "
           f"{s['fraction']:.0%}, {s['epochs']} epochs of training, torch "
           f"{', '.join(sorted({m['torch'] for m in results['models'].values() if 'torch' in m}))}"
           f", one thread.", "",
           "| model | parameters | train / test acc. | κ layer (shape) | κ per example | "
           "κ per token | width | κ² n log n (2L-ReLU) | κ⁶ n log n (MLP-Attn) | per token |",
           "|---|---:|---:|---|---:|---:|---:|---:|---:|---:|"]
    for name, m in results["models"].items():
        if "skipped" in m:
            out.append(f"| {name} | skipped: {m['skipped']} | | | | | | | | |")
            continue
        rep = next((c["representation"] for k, c in cells.items()
                    if k.startswith(f"{name}/") and "representation" in c), None)
        if rep is None:
            out.append(f"| {name} | {m['parameters']} | {m['train_accuracy']:.2f} / "
                       f"{m['test_accuracy']:.2f} | no cell finished | | | | | | |")
            continue
        token = rep.get("per_token")
        out.append(f"| {name} | {m['parameters']} | {m['train_accuracy']:.2f} / "
                   f"{m['test_accuracy']:.2f} | {rep['layer']} {tuple(rep['shape'][1:])} | "
                   f"{_sci(rep['per_example']['kappa'])} | "
                   f"{_sci(token['kappa']) if token else '—'} | {CASES[name][4]} | "
                   f"{_sci(rep['per_example']['width_threshold']['relu'])} | "
                   f"{_sci(rep['per_example']['width_threshold']['mlp_attention'])} | "
                   f"{_sci(token['width_threshold']['mlp_attention']) if token else '—'} |")
    out += ["", "**Kernel regime.** The width each model's features would need (SPEC §7, constants "
            "dropped) against the width they have:", ""]
    for name in results["models"]:
        rep = next((c["representation"] for k, c in cells.items()
                    if k.startswith(f"{name}/") and "representation" in c), None)
        if rep is None:
            continue
        kind = "mlp_attention" if "per_token" in rep else "relu"
        need = rep["per_example"]["width_threshold"][kind]
        out.append(f"- {name}: width {CASES[name][4]}, needs ≥ {_sci(need)} "
                   f"({'κ⁶' if kind == 'mlp_attention' else 'κ²'} n log n"
                   f"{', attention' if kind == 'mlp_attention' else ', no attention: 2L-ReLU'}"
                   f"), {math.log10(need / CASES[name][4]):.0f} orders of magnitude more.")
    out += ["", "| model | verdict | estimators |", "|---|---|---|"]
    for name in results["models"]:
        by: dict[str, list[str]] = {}
        for key, c in cells.items():
            if key.startswith(f"{name}/"):
                by.setdefault(c.get("verdict") or "fails, refused or not run",
                              []).append(key.rsplit("/", 1)[1])
        out += [f"| {name} | {v} | {', '.join(e)} |" for v, e in by.items()]
    out += ["", "| model | estimator | flip rate: noise | random | adversarial | excess | "
            "verdict | ρ: random | adversarial | rank stability | warnings | s |",
            "|---|---|---|---|---|---|---|---|---|---|---|---:|"]
    order = {name: i for i, name in enumerate(results["models"])}
    for key, c in sorted(cells.items(), key=lambda kc: (order[kc[0].rsplit("/", 1)[0]],
                                                         _rank(kc[0].rsplit("/", 1)[1]))):
        name, est = key.rsplit("/", 1)
        if "error" in c:
            out.append(f"| {name} | {est} | {c['error']} | | | | | | | | | "
                       f"{c['seconds']:.0f} |")
            continue
        noise, random = c["controls"]["noise"], c["controls"]["random"]
        out.append(
            f"| {name} | {est} | {_estimate(noise['flip_rate'], 'flip_rate')} | "
            f"{_estimate(random['flip_rate'], 'flip_rate')} | "
            f"{_estimate(c['flip_rate'], 'flip_rate')} | "
            f"{_estimate(c['excess']['flip_rate'])} | {c['verdict']} | "
            f"{_estimate(random['spearman'], 'spearman')} | "
            f"{_estimate(c['spearman'], 'spearman')} | "
            f"{_estimate(c['diagnostics']['rank_stability'], 'spearman')} | "
            f"{'; '.join(c['diagnostics']['warnings']) or '—'} | {c['seconds']:.0f} |")
    missing = {name: [e for e in ESTIMATORS if f"{name}/{e}" not in cells]
               for name, m in results["models"].items() if "skipped" not in m}
    if any(missing.values()):
        out += ["", "Not run yet (the script resumes with them): " + "; ".join(
            f"{name}: {', '.join(e)}" for name, e in missing.items() if e) + "."]
    return "\n".join(out) + "\n"


def splice(doc: Path = DOCS / "audit.md", path: Path = RESULTS) -> None:
    """Write :func:`tables` into ``doc`` between its audit_realistic markers."""
    begin, end = "<!-- begin audit_realistic -->\n", "<!-- end audit_realistic -->"
    text = doc.read_text(encoding="utf-8")
    if begin not in text or end not in text:
        raise SystemExit(f"{doc}: no {begin.strip()} … {end} markers")
    doc.write_text(text[:text.index(begin) + len(begin)] + tables(path) + text[text.index(end):],
                   encoding="utf-8")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--n", type=int, default=2000, help="CIFAR-10 training images and "
                        "token sequences")
    parser.add_argument("--models", nargs="+", default=list(CASES), choices=list(CASES))
    parser.add_argument("--estimators", nargs="+", default=list(ESTIMATORS))
    parser.add_argument("--out", type=Path, default=RESULTS, help="the results file")
    parser.add_argument("--table", action="store_true", help="print docs/audit.md's tables")
    parser.add_argument("--splice", action="store_true", help="write them into docs/audit.md")
    parser.add_argument("--merge", type=Path, help="add this results file's cells to --out")
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.table:
        print(tables(args.out), end="")
    elif args.splice:
        splice(path=args.out)
    elif args.merge:
        merge(args.merge, args.out)
    else:
        run(args.n, tuple(args.models), tuple(args.estimators), args.out)
