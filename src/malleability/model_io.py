"""Loading a user's model for ``malleability audit``: ``module:callable``, a torch.export file,
or a state_dict plus a builder; saving a network as a torch.export file.

A file that cannot be loaded is one ``ValueError`` line naming it and saying what it seems to
be (TorchScript, a truncated zip, a pickled module, an export with a fixed batch size, ...);
torch's own log records of the failed load are shown only at ``--debug``."""

from __future__ import annotations

import contextlib
import importlib
import importlib.util
import io
import logging
import os
import pickle
import tempfile
import zipfile
from collections.abc import Iterator, Mapping
from pathlib import Path

import torch
from torch import nn

EMPTY, TRUNCATED, FOREIGN = "an empty file", "a truncated zip file", "not a torch file"
SCRIPT, EXPORTED, SAVED = "TorchScript", "a torch.export program", "a torch.save archive"
LEGACY = "a legacy torch.save file (pickle)"
#: Keys of a state_dict mismatch listed in an error before "... and N more".
SHOWN_KEYS = 8


@contextlib.contextmanager
def _quiet_torch() -> Iterator[None]:
    """torch's loggers silenced unless malleability logs at INFO (``--debug``)."""
    if logging.getLogger("malleability").isEnabledFor(logging.INFO):
        yield
        return
    logger = logging.getLogger("torch")
    level = logger.level
    logger.setLevel(logging.CRITICAL + 1)
    try:
        yield
    finally:
        logger.setLevel(level)


def load_callable(spec: str, name: str = "model") -> object:
    """The object ``attr`` of ``module:attr``; ``module`` is a dotted import path or a .py file.
    An import that fails or exits (``sys.exit``) is a ValueError naming the module."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"{name}: expected module:callable, got {spec!r}")
    if module_name.endswith(".py") and not Path(module_name).is_file():
        raise ValueError(f"{name}: no such file {module_name}")
    try:
        if module_name.endswith(".py"):
            path = Path(module_name)
            loader = importlib.util.spec_from_file_location(path.stem, path)
            module = importlib.util.module_from_spec(loader)
            loader.loader.exec_module(module)
        else:
            module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"{name}: cannot import {module_name} ({err})") from None
    except SystemExit as err:
        raise ValueError(f"{name}: importing {module_name} called sys.exit({err.code!r}); "
                         "expected a module that defines the model") from None
    except Exception as err:  # the user's module raised while it was imported
        raise ValueError(f"{name}: importing {module_name} raised {type(err).__name__}: "
                         f"{_one_line(err)}") from None
    if not hasattr(module, attr):
        raise ValueError(f"{name}: {module_name} has no attribute {attr!r}")
    return getattr(module, attr)


def _one_line(err: BaseException) -> str:
    return " ".join(str(err).split())[:200]


def _built(spec: str, name: str) -> nn.Module:
    obj = load_callable(spec, name)
    try:
        model = obj() if callable(obj) and not isinstance(obj, nn.Module) else obj
    except SystemExit as err:
        raise ValueError(f"{name}: {spec} called sys.exit({err.code!r})") from None
    except Exception as err:  # the user's builder raised
        raise ValueError(f"{name}: {spec}() raised {type(err).__name__}: "
                         f"{_one_line(err)}") from None
    if not isinstance(model, nn.Module):
        raise ValueError(f"{name}: {spec} returned {type(model).__name__}, not a torch.nn.Module")
    return model


def file_kind(path: Path) -> str:
    """What a model file seems to be, from its bytes: a torch.export program, TorchScript,
    a torch.save archive, a truncated zip file, an empty file, a legacy torch.save file or not a
    torch file."""
    with Path(path).open("rb") as fh:
        head = fh.read(4)
    if not head:
        return EMPTY
    if head.startswith(b"PK"):
        try:
            with zipfile.ZipFile(path) as archive:
                names = archive.namelist()
        except (zipfile.BadZipFile, OSError):
            return TRUNCATED
        if any("/code/" in n or n.endswith("constants.pkl") for n in names):
            return SCRIPT
        if any(n.endswith("/models/model.json") or "serialized_exported_program" in n
               for n in names):
            return EXPORTED
        if any(n.endswith("data.pkl") for n in names):
            return SAVED
        return "a zip archive of unknown content"
    if head[:1] == b"\x80":
        return LEGACY
    return FOREIGN


_ADVICE = {
    SCRIPT: "torch.func cannot differentiate TorchScript by parameter; save it with "
            "torch.export or as a state_dict + --builder",
    TRUNCATED: "cut short (an interrupted copy or write?)",
    FOREIGN: "expected a torch.export .pt2 file",
    SAVED: "pass a state_dict with --builder",
    LEGACY: "pass a state_dict with --builder",
}


def _cannot_load(path: Path, err: BaseException | None, kind: str | None = None) -> ValueError:
    kind = kind or file_kind(path)
    advice = _ADVICE.get(kind) or (f"{type(err).__name__}: {_one_line(err)}" if err else "")
    return ValueError(f"model: {path.name} is {kind}{'; ' + advice if advice else ''}")


def load_exported(path: Path) -> nn.Module:
    """The module of a torch.export ``.pt2`` file with a dynamic batch dimension, or a
    one-line ValueError naming the file and what it seems to be."""
    path = Path(path)
    kind = file_kind(path)
    if kind != EXPORTED:
        raise _cannot_load(path, None, kind)
    try:
        with _quiet_torch():
            program = torch.export.load(path)
    except Exception as err:  # torch raises RuntimeError, BadZipFile, KeyError, ...
        raise _cannot_load(path, err, "a damaged torch.export program") from None
    batch = _batch_size(program)
    if batch is not None:
        raise ValueError(f"model: {path.name} was exported with a fixed batch size of {batch}; "
                         "export it with dynamic_shapes={0: torch.export.Dim('batch')} (as "
                         "`malleability train --save` does)")
    return program.module()


def _batch_size(program: torch.export.ExportedProgram) -> int | None:
    """The first user input's batch size when it is fixed, else None."""
    inputs = set(program.graph_signature.user_inputs)
    for node in program.graph.nodes:
        if node.op == "placeholder" and node.name in inputs:
            value = node.meta.get("val")
            shape = getattr(value, "shape", ())
            return int(shape[0]) if len(shape) and isinstance(shape[0], int) else None
    return None


def load_state(path: Path, name: str = "model") -> Mapping[str, torch.Tensor]:
    """A state_dict saved with torch.save (tensors by name), or a one-line ValueError naming
    the file: unreadable, a pickled object other than tensors, or not a mapping of tensors."""
    path = Path(path)
    kind = file_kind(path)
    if kind not in (SAVED, LEGACY):
        advice = ("pass it as --model without --builder" if kind == EXPORTED else
                  _ADVICE.get(kind, ""))
        raise ValueError(f"{name}: {path.name} is {kind}, not a state_dict saved with torch.save"
                         + (f"; {advice}" if advice else ""))
    try:
        with _quiet_torch():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:
        raise ValueError(f"{name}: cannot load {path.name}: it holds pickled Python objects "
                         "(a whole module saved with torch.save(model)?), which are not loaded "
                         "for safety; save model.state_dict() instead") from None
    except Exception as err:  # torch raises RuntimeError, EOFError, ...
        raise ValueError(f"{name}: {path.name} is {kind} that torch cannot read "
                         f"({type(err).__name__}: {_one_line(err)})") from None
    if not isinstance(state, Mapping):
        raise ValueError(f"{name}: expected a state_dict (tensors by name) in {path.name}, "
                         f"got {type(state).__name__}")
    bad = [str(k) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise ValueError(f"{name}: expected a state_dict (tensors by name) in {path.name}; "
                         f"not tensors: {_listed(bad)}")
    return state


def _listed(keys: list[str]) -> str:
    shown = ", ".join(keys[:SHOWN_KEYS])
    more = len(keys) - SHOWN_KEYS
    return f"{shown}, ... and {more} more" if more > 0 else shown


def load_into(model: nn.Module, state: Mapping[str, torch.Tensor], source: str,
              name: str = "model") -> nn.Module:
    """``model`` with ``state`` loaded, or a one-line ValueError listing the missing and
    unexpected keys and the shape mismatches (the first :data:`SHOWN_KEYS` of each)."""
    own = model.state_dict()
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    shapes = [f"{k} {tuple(state[k].shape)} (model {tuple(v.shape)})" for k, v in own.items()
              if k in state and state[k].shape != v.shape]
    problems = [f"{label} {_listed(keys)}" for label, keys in
                (("missing", missing), ("unexpected", unexpected), ("shape of", shapes)) if keys]
    if problems:
        raise ValueError(f"{name}: {source} does not fit the model: {'; '.join(problems)}")
    model.load_state_dict(state)
    return model


def load_model(spec: str, builder: str | None = None) -> nn.Module:
    """A model from ``module:callable`` (called with no arguments unless it is a module), from a
    torch.export ``.pt2`` file, or from a state_dict file loaded into ``builder()``.

    TorchScript files are refused with a one-line error: torch.func cannot swap their
    parameters, so no influence estimator can differentiate them.
    """
    path = Path(spec)
    if builder is not None:
        if not path.is_file():
            raise ValueError(f"model: no such file {spec} (a state_dict for --builder)")
        state = load_state(path)
        return load_into(_built(builder, "builder"), state, path.name).eval()
    if path.suffix == ".py":
        raise ValueError(f"model: {spec} is Python source; expected module:callable, e.g. "
                         f"{spec}:build")
    if path.is_file():
        return load_exported(path)
    return _built(spec, "model").eval()


def load_checkpoint(path: Path) -> Mapping[str, torch.Tensor]:
    """A state_dict saved with torch.save."""
    return load_state(path, "checkpoint")


def check_save_path(path: Path, force: bool = False) -> Path:
    """``path`` if :func:`save_exported` may write it: a ``.pt2`` name in an existing, writable
    folder, not an existing file unless ``force``; else a one-line ValueError naming ``save``.
    Temporary files of earlier saves to ``path`` whose writer died are removed."""
    from .repro.files import clean_temp_files

    path = Path(path)
    if path.suffix != ".pt2":
        raise ValueError(f"save: expected a .pt2 file name, got {str(path)!r}")
    if path.is_dir():
        raise ValueError(f"save: {path} is a folder, expected a .pt2 file name")
    if not path.parent.is_dir():
        raise ValueError(f"save: no such folder {path.parent}")
    if path.exists() and not force:
        raise ValueError(f"save: {path} exists; pass --force to overwrite it")
    try:  # the write goes through a temporary file in the same folder
        fd, probe = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                                     dir=path.parent)
        os.close(fd)
        os.unlink(probe)
    except OSError as err:
        raise ValueError(f"save: cannot write into {path.parent} ({err.strerror})") from None
    clean_temp_files(path.parent, path.name)
    return path


def save_exported(model: nn.Module, example: torch.Tensor, path: Path) -> Path:
    """Write ``model`` (in eval mode, on the CPU) as a torch.export ``.pt2`` program traced on
    the batch ``example`` with a dynamic batch dimension, atomically; :func:`load_model` and
    ``malleability audit --model PATH`` load it with no user code."""
    from .repro.files import atomic_write

    model = model.eval().cpu()
    batch = torch.export.Dim("batch")
    program = torch.export.export(model, (example.cpu(),), dynamic_shapes=({0: batch},))
    buffer = io.BytesIO()
    torch.export.save(program, buffer)
    return atomic_write(path, buffer.getvalue())
