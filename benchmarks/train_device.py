"""Training on a device: ``train`` of k networks one after another against ``train_batched``
of the same k as one stacked network, MNIST-sized random data (n × 784, C = 10, m = 1024,
float32, batch 128). Prints one JSON line. Run: ``python benchmarks/train_device.py cuda``."""

from __future__ import annotations

import json
import sys
import time

import torch

from malleability.models import TwoLayerNet
from malleability.training import TrainSettings, train, train_batched


def main(device: str = "cuda", n: int = 60000, k: int = 4, epochs: int = 2) -> None:
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(n, 784, generator=gen).to(device)
    y = torch.eye(10)[torch.randint(0, 10, (n,), generator=gen)].to(device)
    settings = TrainSettings(epochs=epochs, l2_to_init=0.0, progress=False)

    def nets() -> list[TwoLayerNet]:
        return [TwoLayerNet(784, 1024, 10, seed=j, dtype=torch.float32).to(device)
                for j in range(k)]

    def timed(fn) -> float:
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        t0 = time.perf_counter()
        fn()
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        return time.perf_counter() - t0

    train(nets()[0], x, y, TrainSettings(epochs=1, progress=False))  # warm-up
    sequential_nets, batched_nets = nets(), nets()
    t_seq = timed(lambda: [train(net, x, y, settings) for net in sequential_nets])
    t_bat = timed(lambda: train_batched(batched_nets, x, y, settings))
    gap = max(float((a.weight - b.weight).detach().abs().max())
              for a, b in zip(sequential_nets, batched_nets, strict=True))
    print(json.dumps({"device": device, "name": torch.cuda.get_device_name()
                      if device.startswith("cuda") else "cpu", "torch": torch.__version__,
                      "n": n, "k": k, "epochs": epochs, "sequential_s": t_seq,
                      "batched_s": t_bat, "speedup": t_seq / t_bat,
                      "per_epoch_one_network_s": t_seq / (k * epochs),
                      "max_weight_difference": gap}))


if __name__ == "__main__":
    main(*(sys.argv[1:2] or ["cuda"]))
