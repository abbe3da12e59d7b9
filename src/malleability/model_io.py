"""Loading a user's model for ``malleability audit``: ``module:callable``, a torch.export file,
or a state_dict plus a builder; saving a network as a torch.export file."""

from __future__ import annotations

import importlib
import importlib.util
import io
from collections.abc import Mapping
from pathlib import Path

import torch
from torch import nn


def load_callable(spec: str, name: str = "model") -> object:
    """The object ``attr`` of ``module:attr``; ``module`` is a dotted import path or a .py file."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{name}: expected module:callable, got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise ValueError(f"{name}: no such file {module_name}")
        loader = importlib.util.spec_from_file_location(path.stem, path)
        module = importlib.util.module_from_spec(loader)
        loader.loader.exec_module(module)
    else:
        try:
            module = importlib.import_module(module_name)
        except ImportError as err:
            raise ValueError(f"{name}: cannot import {module_name} ({err})") from None
    if not hasattr(module, attr):
        raise ValueError(f"{name}: {module_name} has no attribute {attr!r}")
    return getattr(module, attr)


def _built(spec: str, name: str) -> nn.Module:
    obj = load_callable(spec, name)
    model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name}: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def load_model(spec: str, builder: str | None = None) -> nn.Module:
    """A model from ``module:callable`` (called with no arguments unless it is a module), from a
    torch.export ``.pt2`` file, or from a state_dict file loaded into ``builder()``.

    TorchScript files are refused with a one-line error: torch.func cannot swap their
    parameters, so no influence estimator can differentiate them.
    """
    path = Path(spec)
    if builder is not None:
        model = _built(builder, "builder")
        state = torch.load(path, map_location="cpu", weights_only=True)
        if not isinstance(state, Mapping):
            raise ValueError(f"model: expected a state_dict in {path.name}, "
                             f"got {type(state).__name__}")
        model.load_state_dict(state)
        return model.eval()
    if path.suffix == ".pt2" and path.is_file():
        return torch.export.load(path).module()
    if path.is_file():
        try:
            torch.jit.load(path, map_location="cpu")
        except RuntimeError:
            raise ValueError(f"model: {path.name} is neither a torch.export .pt2 file nor "
                             "TorchScript; pass a state_dict with --builder") from None
        raise ValueError(f"model: {path.name} is TorchScript, which torch.func cannot "
                         "differentiate by parameter; save it with torch.export or as a "
                         "state_dict + --builder")
    return _built(spec, "model").eval()


def load_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """A state_dict saved with torch.save."""
    state = torch.load(path, map_location="cpu", weights_only=True)
    if not isinstance(state, Mapping):
        raise ValueError(f"checkpoint: expected a state_dict in {path.name}")
    return state


def check_save_path(path: Path, force: bool = False) -> Path:
    """``path`` if :func:`save_exported` may write it: a ``.pt2`` name in an existing folder,
    not an existing file unless ``force``; else a one-line ValueError naming ``save``."""
    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"save: expected a .pt2 file name, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"save: {path} is a folder, expected a .pt2 file name")
    if not path.parent.is_dir():
        raise ValueError(f"save: no such folder {path.parent}")
    if path.exists() and not force:
        raise ValueError(f"save: {path} exists; pass --force to overwrite it")
    return path


def save_exported(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write ``model`` (in eval mode, on the CPU) as a torch.export ``.pt2`` program traced on
    the batch ``example`` with a dynamic batch dimension, atomically; :func:`load_model` and
    ``malleability audit --model PATH`` load it with no user code."""
    from .repro.store import atomic_write

    model = model.eval().cpu()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example.cpu(),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return atomic_write(path, buffer.getvalue())
