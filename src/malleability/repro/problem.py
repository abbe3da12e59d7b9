"""A loaded task (train/test pixels, targets, the influence subset) and its networks:
untrained by architecture name, or trained and cached in the run folder by the hash of their
settings."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

import torch

from ..data import DataSettings, Preprocessing, load_dataset
from ..data.subsets import stratified_sample
from ..models import ARCHITECTURE_NAMES, ModelSettings, TwoLayerNet
from ..training import TrainHistory, TrainSettings, train
from .store import CorruptFile, move_aside, read_tensors, settings_key, write_tensors

# ARCHITECTURE_NAMES: re-exported for report.py
__all__ = ["ARCHITECTURE_NAMES", "Problem", "RunContext", "build_model", "cached_training",
           "load_problem", "on_influence_set", "trained_model"]


@dataclass(frozen=True)
class RunContext:
    """Where a run reads data and keeps its caches, and on which device it computes."""

    out: Path
    data_root: str | None = None
    device: str = "cpu"
    progress: bool = True

    @property
    def cache(self) -> Path:
        return self.out / "cache"


@dataclass
class Problem:
    """A loaded task: train/test pixels x (float64, [0,1]) and targets, the preprocessing, and
    ``influence_rows``: the training rows kernels, influence and attacks use (n_influence)."""

    data: DataSettings
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    preprocessing: Preprocessing
    class_names: tuple[str, ...]
    influence_rows: torch.Tensor
    #: True when the training set is another task's influence subset (:func:`on_influence_set`)
    influence_only: bool = False
    z: torch.Tensor = field(init=False)  # network inputs of the training set

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.z = self.preprocessing(self.x)

    @property
    def num_outputs(self) -> int:
        return self.y.shape[1]

    @property
    def x_influence(self) -> torch.Tensor:
        return self.x[self.influence_rows]

    @property
    def y_influence(self) -> torch.Tensor:
        return self.y[self.influence_rows]

    def label_name(self, target: torch.Tensor) -> str:
        """The class name of one target row (one-hot, or ±1 with +1 = the first class)."""
        if target.numel() == 1:
            return self.class_names[0 if float(target) > 0 else 1]
        return self.class_names[int(target.argmax())]


@lru_cache(maxsize=16)
def load_problem(data: DataSettings, root: str | None = None, device: str = "cpu") -> Problem:
    """Load ``data`` (train and test splits, stratified with the same seed) onto ``device``;
    the influence rows are a stratified subset of n_influence training points (all by
    default, in order)."""
    train_set = load_dataset(data.dataset, "train", root=root, classes=data.classes,
                             n=data.n_train, seed=data.seed)
    test_set = load_dataset(data.dataset, "test", root=root, classes=data.classes,
                            n=data.n_test, seed=data.seed)
    n = len(train_set)
    if data.n_influence is None or data.n_influence >= n:
        rows = torch.arange(n)
    else:
        rows = torch.from_numpy(stratified_sample(train_set.labels.numpy(), data.n_influence,
                                                  data.seed))
    dev = torch.device(device)
    return Problem(data, train_set.pixels.to(dev, torch.float64), train_set.targets().to(dev),
                   test_set.pixels.to(dev, torch.float64), test_set.targets().to(dev),
                   train_set.preprocessing, train_set.class_names, rows.to(dev))


def on_influence_set(p: Problem) -> Problem:
    """``p`` with its n_influence subset as the whole training set (same points, same
    preprocessing and test set), for comparisons of a network with the kernel predictor of
    those points (NTK distance, the remedy): both then train on the same data. Networks
    trained on it are cached apart from those trained on the full training set."""
    rows = p.influence_rows
    if rows.numel() == p.x.shape[0]:
        return p
    every = torch.arange(rows.numel(), device=rows.device)
    return Problem(p.data, p.x[rows], p.y[rows], p.x_test, p.y_test, p.preprocessing,
                   p.class_names, every, influence_only=True)


def build_model(arch: str, problem: Problem, model: ModelSettings, width: int | None = None,
                reference: torch.Tensor | None = None, attention_rank: int | None = None
                ) -> TwoLayerNet:
    """An untrained network of architecture ``arch`` on ``problem``'s pixels; MLP-Attn attends
    to ``reference`` network inputs (default: the training set's), truncated to its top
    ``attention_rank`` singular directions when given (Remark 4.10)."""
    net = TwoLayerNet.for_architecture(arch, problem.z, problem.num_outputs, model, width=width,
                                       reference=reference,
                                       preprocessing=problem.preprocessing,
                                       attention_rank=attention_rank)
    return net.to(problem.x.device)


def trained_model(arch: str, problem: Problem, model: ModelSettings, train_settings: TrainSettings,
                  ctx: RunContext, width: int | None = None, attention_rank: int | None = None,
                  checkpoints: tuple[int, ...] = ()) -> tuple[TwoLayerNet, dict]:
    """The network of ``arch`` (attention truncated to ``attention_rank``) trained on
    ``problem`` and its history, from the run's cache when present (:func:`cached_training`);
    with ``checkpoints`` (epochs), a network cached with its weights at those epochs, in
    the history's ``"checkpoints"`` (epoch → W)."""
    width = width or model.width
    net = build_model(arch, problem, model, width, attention_rank=attention_rank)
    settings = dataclasses.replace(train_settings, progress=False, checkpoints=checkpoints)
    truncation = () if net.attention_rank is None else (("attention_rank", attention_rank),)
    # a full-split network serves every n_influence; one trained on the influence subset is
    # a network of those n_influence points alone
    data = problem.data if problem.influence_only else problem.data.replace(n_influence=None)
    subset = (("trained_on", "influence subset"),) if problem.influence_only else ()
    key = settings_key("trained", arch, data, model, settings, width, *truncation, *subset)
    settings = dataclasses.replace(settings, progress=ctx.progress)
    history = cached_training(net, key, ctx, lambda: train(net, problem.x, problem.y, settings,
                                                           problem.x_test, problem.y_test),
                              checkpoints)
    return net, history


def cached_training(net: TwoLayerNet, key: str, ctx: RunContext,
                    fit: Callable[[], TrainHistory], checkpoints: tuple[int, ...] = ()) -> dict:
    """Train ``net`` in place by ``fit`` (which returns its history), or load its weights
    from ``cache/models/<key>.pt`` when that file passes its checks (else it is moved aside
    and ``net`` retrained). Returns the history as a dict; with ``checkpoints`` (the epochs
    ``fit`` keeps W at), also ``"checkpoints"``: epoch → W, on ``net``'s device."""
    path = ctx.cache / "models" / f"{key}.pt"
    device = net.weight.device
    keys = ("weight", "history", *(("checkpoints",) if checkpoints else ()))
    if path.exists():
        try:
            saved = read_tensors(path, keys, device)
            if saved["weight"].shape != net.weight.shape:
                raise CorruptFile(f"weight: expected shape {tuple(net.weight.shape)}")
        except CorruptFile as err:
            move_aside(path, ctx.out, str(err))
        else:
            net.weight.data.copy_(saved["weight"])
            kept = saved.get("checkpoints")
            return {**saved["history"], **({} if kept is None else {
                "checkpoints": dict(zip(checkpoints, kept, strict=True))})}
    fitted = fit()
    payload = {"weight": net.weight.detach().cpu(), "history": fitted.to_dict()}
    if checkpoints:
        payload["checkpoints"] = torch.stack([fitted.checkpoints[e] for e in checkpoints])
    write_tensors(path, payload)
    return {**fitted.to_dict(), **({"checkpoints": {
        e: fitted.checkpoints[e].to(device) for e in checkpoints}} if checkpoints else {})}
