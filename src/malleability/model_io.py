"""Loading a user's model for ``malleability audit``: ``module:callable``, a torch.export file,
or a state_dict plus a builder."""

from __future__ import annotations

import importlib
import importlib.util
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
