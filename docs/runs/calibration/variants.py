"""Variants of MLP-Attn's attention front on MNIST, beside the stated one (issue 10: train
MLP-Attn as the paper defines it and, where it falls short of Table 5, find out whether the
paper's network must have differed from its text).

The front has no trainable parameters, so MLP-Attn is a 2L-ReLU network on h = φ(z): each
variant computes h once for the training and test splits (float32, the training dtype) and
trains the package's TwoLayerNet on it with the calibrated settings (full split, λ_reg = 0,
m = 1024, Adam lr 1e-3, batch 128). These are variants, reported as variants: none replaces the
stated definition in the presets. Run: ``python variants.py --root DATA --out DIR``; one JSON
file per variant; finished ones are skipped.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import torch

import malleability as M

#: name → (attention kind, row normalisation, reference size (None = the whole training split),
#: features centred: the training split's mean of h subtracted from every h, a diagnostic of
#: the collapse, not a reading of the paper)
VARIANTS = {
    "stated": ("linear", True, None, False),
    "linear-unnormalised": ("linear", False, None, False),
    "linear-reference-1000": ("linear", True, 1000, False),
    "softmax": ("softmax", True, None, False),
    "softmax-unnormalised": ("softmax", False, None, False),
    "linear-centred": ("linear", True, None, True),
}


def run(name: str, root: str, epochs: int, seed: int) -> dict:
    kind, normalize, n_reference, centre = VARIANTS[name]
    t0 = time.time()
    train_set = M.load_dataset("mnist", "train", root=root, download=False)
    test_set = M.load_dataset("mnist", "test", root=root, download=False)
    z = train_set.inputs().to(torch.float32)
    z_test = train_set.preprocessing(test_set.pixels).to(torch.float32)
    reference = z
    if n_reference is not None:
        pick = torch.randperm(z.shape[0], generator=torch.Generator().manual_seed(seed))
        reference = z[pick[:n_reference]]
    front = M.AttentionFeatures(reference, kind, normalize=normalize)
    with torch.no_grad():  # the front blocks its score matrix itself (SCORE_BLOCK)
        h, h_test = front(z), front(z_test)
    if centre:
        mean = h.mean(dim=0)
        h, h_test = h - mean, h_test - mean
    seconds_features = time.time() - t0
    net = M.TwoLayerNet(h.shape[1], 1024, 10, None, None, 1.0, seed, dtype=torch.float32)
    settings = M.TrainSettings(epochs=epochs, seed=seed, progress=False)
    history = M.train(net, h, train_set.targets(), settings, h_test, test_set.targets())
    k = torch.randperm(h.shape[0], generator=torch.Generator().manual_seed(0))[:2000]
    return dict(variant=name, attention=kind, row_normalised=normalize,
                reference=n_reference or z.shape[0], centred=centre, epochs=epochs, seed=seed,
                n_train=z.shape[0], n_test=z_test.shape[0], torch=torch.__version__,
                threads=torch.get_num_threads(), seconds_features=seconds_features,
                seconds=time.time() - t0, test_accuracy=history.test_accuracy,
                train_loss=history.train_loss,
                mean_pairwise_cosine_hidden_inputs=float(M.mean_pairwise_cosine(h[k])))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="dataset folder (../shared/data)")
    parser.add_argument("--out", required=True, help="folder for the JSON files")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--variants", nargs="*", default=list(VARIANTS), choices=list(VARIANTS))
    args = parser.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name in args.variants:
        path = out / f"mnist__attn__{name}__seed={args.seed}__ep={args.epochs}.json"
        if path.exists():
            continue
        result = run(name, args.root, args.epochs, args.seed)
        tmp = path.with_suffix(".tmp")
        tmp.write_text(json.dumps(result, indent=1, allow_nan=False))
        os.replace(tmp, path)
        acc = result["test_accuracy"]
        print(f"{name}: acc @1 {acc[0]:.3f}, @{len(acc)} {acc[-1]:.3f}, "
              f"cosine {result['mean_pairwise_cosine_hidden_inputs']:.3f}, "
              f"{result['seconds']:.0f} s", flush=True)


if __name__ == "__main__":
    main()
