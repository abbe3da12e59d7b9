"""One schedule trial of PGD adversarial training (issue 10 item 6), MNIST 10-class.

Trains a network with adversarial_train under one schedule, then reports its clean test
accuracy, PGD-40 accuracy (α = 0.01, cross-entropy, one random start) and strong-evaluation
accuracy (margin loss, 100 steps of 0.01, 3 restarts, worst case per point) at ε = 0.1, 0.2,
0.3; "standard" trains without an adversary (the before numbers). Writes one strict JSON file.
Calibration reads only these accuracies, never flip rates.

    PYTHONPATH=src python docs/runs/advtrain_trials/trial.py NAME --n-train 5000 ...
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from malleability.attacks import AttackSettings, perturb_rows
from malleability.data import DataSettings
from malleability.interventions import adversarial_train
from malleability.models import ModelSettings
from malleability.repro.problem import build_model, load_problem
from malleability.training import TrainSettings, evaluate, train

EVAL_EPS = (0.1, 0.2, 0.3)


def robust_accuracy(net, x, y, attack: AttackSettings) -> float:
    x_adv = perturb_rows(net, x, y, torch.arange(x.shape[0]), attack)
    assert float((x_adv - x).abs().amax()) <= attack.eps + 1e-9
    return evaluate(net, x_adv, y)[1]


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("name")
    ap.add_argument("--model", default="relu")
    ap.add_argument("--n-train", type=int, default=5000)
    ap.add_argument("--n-test", type=int, default=1000)
    ap.add_argument("--width", type=int, default=1024)
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--eps", type=float, default=0.3, help="training ε (0: standard training)")
    ap.add_argument("--ramp", type=int, default=0, help="ε ramp epochs")
    ap.add_argument("--steps", type=int, default=7)
    ap.add_argument("--alpha", type=float, default=0.1, help="PGD step at the full ε")
    ap.add_argument("--threads", type=int, default=1)
    a = ap.parse_args()
    torch.set_num_threads(a.threads)
    data = DataSettings(dataset="mnist", n_train=a.n_train, n_test=a.n_test, seed=0)
    p = load_problem(data, "/work/shared/data")
    net = build_model(a.model, p, ModelSettings(width=a.width, init_scale=1.0, seed=42,
                                                dtype="float32"))
    settings = TrainSettings(epochs=a.epochs, lr=1e-3, batch_size=128, l2_to_init=0.0,
                             seed=42, progress=False)
    t0 = time.perf_counter()
    if a.eps > 0:
        attack = AttackSettings("pgd", eps=a.eps, alpha=a.alpha, steps=a.steps, seed=42)
        hist = adversarial_train(net, p.x, p.y, settings, attack, p.x_test, p.y_test,
                                 ramp_epochs=a.ramp)
    else:
        hist = train(net, p.x, p.y, settings, p.x_test, p.y_test)
    train_s = time.perf_counter() - t0
    out = {"name": a.name, "settings": vars(a), "train_wall_s": train_s,
           "clean_accuracy": hist.test_accuracy[-1],
           "clean_accuracy_by_epoch": hist.test_accuracy, "pgd40": {}, "strong": {}}
    for eps in EVAL_EPS:
        pgd40 = AttackSettings("pgd", eps=eps, alpha=0.01, steps=40, seed=7)
        strong = pgd40.replace(steps=100, loss="margin", restarts=3)
        out["pgd40"][str(eps)] = robust_accuracy(net, p.x_test, p.y_test, pgd40)
        out["strong"][str(eps)] = robust_accuracy(net, p.x_test, p.y_test, strong)
        print(a.name, eps, out["pgd40"][str(eps)], out["strong"][str(eps)], flush=True)
    out["wall_s"] = time.perf_counter() - t0
    path = Path(__file__).parent / f"{a.name}.json"
    path.write_text(json.dumps(out, indent=1, allow_nan=False) + "\n")
    print(json.dumps({k: out[k] for k in ("name", "train_wall_s", "clean_accuracy", "pgd40",
                                          "strong", "wall_s")}), flush=True)


if __name__ == "__main__":
    main()
