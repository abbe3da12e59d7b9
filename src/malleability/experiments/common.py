"""What every experiment shares: the data task, the model and training settings, a run
context, and trained networks cached on disk by the hash of their settings."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path
from typing import Any

import torch

from .._validation import check_positive_int, parse_enum
from ..attention import AttentionKind, Projection
from ..data import load_dataset
from ..malleability import AttackSettings
from ..models import TwoLayerNet
from ..training import TrainHistory, TrainSettings, train


@dataclass(frozen=True)
class DataSettings:
    """A data task: data set, class subset (None = all), stratified sizes and sampling seed."""

    dataset: str = "digits"
    classes: str | None = None
    n_train: int = 500
    n_test: int = 200
    seed: int = 0

    def __post_init__(self) -> None:
        check_positive_int(self.n_train, "n_train")
        check_positive_int(self.n_test, "n_test")

    @property
    def label(self) -> str:
        """e.g. ``mnist`` or ``mnist 3,8``."""
        return self.dataset if self.classes is None else f"{self.dataset} {self.classes}"


@dataclass(frozen=True)
class ModelSettings:
    """Network construction (SPEC §3). ``init_scale`` s: the paper's value is lost (default 1);
    ``dtype``: float32 trains faster, kernels are always float64."""

    width: int = 1024
    init_scale: float = 1.0
    seed: int = 42
    projection: Projection = Projection.IDENTITY
    dtype: str = "float64"

    def __post_init__(self) -> None:
        object.__setattr__(self, "projection",
                           parse_enum(self.projection, Projection, "projection"))
        if self.dtype not in ("float32", "float64"):
            raise ValueError(f"dtype: expected float32 or float64, got {self.dtype!r}")


#: Architectures by name: 2L-ReLU and MLP-Attn with each attention map.
ARCHITECTURES: dict[str, AttentionKind | None] = {
    "relu": None,
    "attn": AttentionKind.LINEAR,
    "attn-softmax": AttentionKind.SOFTMAX,
    "attn-exponential": AttentionKind.EXPONENTIAL,
}

ARCHITECTURE_NAMES = {"relu": "2L-ReLU", "attn": "MLP-Attn", "attn-softmax": "MLP-Attn (softmax)",
                      "attn-exponential": "MLP-Attn (exponential)"}


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
    """A loaded task: train/test pixels (float64, [0,1]), targets and the preprocessing."""

    data: DataSettings
    x: torch.Tensor
    y: torch.Tensor
    x_test: torch.Tensor
    y_test: torch.Tensor
    transform: Callable[[torch.Tensor], torch.Tensor]
    class_names: tuple[str, ...]
    z: torch.Tensor = field(init=False)
    z_test: torch.Tensor = field(init=False)

    def __post_init__(self) -> None:
        with torch.no_grad():
            self.z, self.z_test = self.transform(self.x), self.transform(self.x_test)

    @property
    def num_outputs(self) -> int:
        return self.y.shape[1]

    def label_name(self, target: torch.Tensor) -> str:
        """The class name of one target row (one-hot, or ±1 with +1 = the first class)."""
        if target.numel() == 1:
            return self.class_names[0 if float(target) > 0 else 1]
        return self.class_names[int(target.argmax())]


@lru_cache(maxsize=16)
def load_problem(data: DataSettings, root: str | None = None, device: str = "cpu") -> Problem:
    """Load ``data`` (train and test splits, stratified with the same seed) onto ``device``."""
    train_set = load_dataset(data.dataset, "train", root=root, classes=data.classes,
                             n=data.n_train, seed=data.seed)
    test_set = load_dataset(data.dataset, "test", root=root, classes=data.classes,
                            n=data.n_test, seed=data.seed)
    dev = torch.device(device)
    return Problem(data, train_set.pixels.to(dev, torch.float64), train_set.targets().to(dev),
                   test_set.pixels.to(dev, torch.float64), test_set.targets().to(dev),
                   train_set.features, train_set.class_names)


@dataclass(frozen=True)
class NetworkSettings:
    """Settings every experiment on trained networks shares: tasks × architectures, the
    network and training settings, and the ridge λ of the NTK kernel ridge / influence."""

    tasks: tuple[DataSettings, ...] = (DataSettings(),)
    models: tuple[str, ...] = ("relu", "attn")
    ridge: float = 1e-3
    model: ModelSettings = ModelSettings()
    train: TrainSettings = TrainSettings()


@dataclass(frozen=True)
class AttackExperimentSettings(NetworkSettings):
    """Trained-network experiments that perturb training points: the ℓ∞ budget and attack
    steps (paper: ε = 0.3, 40 steps of 0.01, μ = 1) and the fraction S of most helpful points."""

    eps: float = 0.3
    alpha: float = 0.01
    steps: int = 40
    momentum: float = 1.0
    fraction: float = 0.1

    def attack(self, name: str = "pgd", alpha: float | None = None,
               steps: int | None = None) -> AttackSettings:
        """The attack ``name`` with these settings (``alpha``/``steps`` override)."""
        return AttackSettings(name, self.eps, self.alpha if alpha is None else alpha,
                              self.steps if steps is None else steps, self.momentum,
                              seed=self.model.seed)


def task_model_cells(s: NetworkSettings) -> list[dict]:
    """One cell per task × architecture."""
    return [{"task": t.label, "model": m} for t in s.tasks for m in s.models]


def cell_problem(tasks: tuple[DataSettings, ...], cell: dict, ctx: RunContext) -> Problem:
    """The loaded problem of the cell's task label."""
    for task in tasks:
        if task.label == cell["task"]:
            return load_problem(task, ctx.data_root, ctx.device)
    raise ValueError(f"task: {cell['task']!r} is not among the settings' tasks")


def build_model(arch: str, problem: Problem, model: ModelSettings, width: int | None = None,
                reference: torch.Tensor | None = None) -> TwoLayerNet:
    """An untrained network of architecture ``arch`` for ``problem``; MLP-Attn attends to
    ``reference`` (default: the training inputs)."""
    if arch not in ARCHITECTURES:
        raise ValueError(f"model: expected one of {', '.join(ARCHITECTURES)}, got {arch!r}")
    attention = ARCHITECTURES[arch]
    if attention is not None and reference is None:
        reference = problem.z
    net = TwoLayerNet(problem.z.shape[1], width or model.width, problem.num_outputs,
                      attention=attention, reference=reference if attention else None,
                      init_scale=model.init_scale, seed=model.seed, projection=model.projection,
                      dtype=getattr(torch, model.dtype))
    return net.to(problem.x.device)


def settings_key(*parts: Any) -> str:
    """A short stable hash of settings (dataclasses, dicts, scalars)."""
    text = json.dumps([to_jsonable(p) for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def to_jsonable(value: Any) -> Any:
    """Dataclasses, enums, tuples, paths and tensors as plain JSON values."""
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and isinstance(value.value, (str, int)):
        return value.value
    return value


def write_json_atomic(path: Path, payload: Any) -> None:
    """Write JSON to ``path`` through a temporary file and an atomic rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile("w", dir=path.parent, suffix=".tmp", delete=False) as fh:
        json.dump(to_jsonable(payload), fh, indent=1, allow_nan=True)
        tmp = fh.name
    os.replace(tmp, path)


def trained_model(arch: str, problem: Problem, model: ModelSettings, train_settings: TrainSettings,
                  ctx: RunContext, width: int | None = None
                  ) -> tuple[TwoLayerNet, dict[str, list[float]]]:
    """The network of ``arch`` trained on ``problem``, from the run's cache when present.

    Cached as ``cache/models/<hash>.pt`` (weights and history), written atomically.
    """
    width = width or model.width
    net = build_model(arch, problem, model, width)
    settings = dataclasses.replace(train_settings, progress=False, checkpoints=())
    key = settings_key("trained", arch, problem.data, model, settings, width)
    settings = dataclasses.replace(settings, progress=ctx.progress)
    path = ctx.cache / "models" / f"{key}.pt"
    if path.exists():
        saved = torch.load(path, map_location=problem.x.device, weights_only=True)
        net.weight.data.copy_(saved["weight"])
        return net, saved["history"]
    history: TrainHistory = train(net, problem.x, problem.y, settings, problem.transform,
                                  problem.x_test, problem.y_test)
    path.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.NamedTemporaryFile(dir=path.parent, suffix=".tmp", delete=False) as fh:
        torch.save({"weight": net.weight.detach().cpu(), "history": history.to_dict()}, fh)
        tmp = fh.name
    os.replace(tmp, path)
    return net, history.to_dict()
