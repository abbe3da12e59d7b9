"""Does the strong evaluation's fixed step (0.01) understate an attack at small ε?

Re-evaluates a standard network of the `sensitivity` preset's Table 3 cells (CIFAR-10,
MLP-Attn by default) under the strong evaluation (margin loss, 100 steps, 3 restarts) at
each ε with the preset's step and with a step of ε/10. The network comes from the run
folder's cache (trained there, ≈ 3 min on one thread, if absent). Run:
``python strong_step.py --root DATA --run RUN_FOLDER [--seed 0] [--model attn]``; prints one
JSON line per (ε, step).
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from malleability.repro import runner
from malleability.repro.experiments import adversarial_training
from malleability.repro.problem import RunContext, trained_model
from malleability.settings import reseeded


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", required=True, help="data root (../shared/data)")
    parser.add_argument("--run", required=True, type=Path, help="run folder holding cache/")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--model", choices=("relu", "attn"), default="attn")
    args = parser.parse_args()
    torch.set_num_threads(1)
    ctx = RunContext(out=args.run, data_root=args.root, progress=False)
    pattern = f"task=cifar10__model={args.model}__eps=*__seed={args.seed}"
    jobs = runner.plan(runner.load_preset("sensitivity"), args.run,
                       only=("adversarial_training",), cells=(pattern,))
    s = reseeded(jobs[0].settings, args.seed)
    p = adversarial_training.cell_problem(s.tasks, jobs[0].cell, ctx)
    net, _ = trained_model(args.model, p, s.model, s.train, ctx)
    for eps in s.epsilons:
        for alpha in (s.strong.alpha, eps / 10):
            t0 = time.perf_counter()
            accuracy = adversarial_training.attacked_test_accuracy(
                net, p, s.strong.replace(eps=eps, alpha=alpha))
            print(json.dumps({"model": args.model, "seed": args.seed, "eps": eps,
                              "alpha": alpha, "strong_accuracy": accuracy,
                              "seconds": time.perf_counter() - t0}), flush=True)


if __name__ == "__main__":
    main()
