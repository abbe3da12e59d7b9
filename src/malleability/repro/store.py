"""The run folder on disk: ``OUT/settings.json``, one JSON file per cell
(``OUT/<experiment>/<cell>.json``), model caches under ``OUT/cache/``. Every file is written
through :func:`atomic_write` (a temporary file and a rename), so a killed run never leaves a
partial file."""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import os
import re
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..settings import Settings


def to_jsonable(value: Any) -> Any:
    """Settings, dataclasses, enums, tuples, paths and tensors as plain JSON values."""
    if isinstance(value, Settings):
        return value.to_dict()
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


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename."""
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    with tempfile.NamedTemporaryFile("wb", dir=path.parent, suffix=".tmp", delete=False) as fh:
        fh.write(raw)
        tmp = fh.name
    os.replace(tmp, path)
    return path


def write_json(path: Path, payload: Any) -> Path:
    """``payload`` as indented JSON, atomically."""
    return atomic_write(path, json.dumps(to_jsonable(payload), indent=1, allow_nan=True))


def write_tensors(path: Path, payload: dict[str, Any]) -> Path:
    """``payload`` (tensors and plain values) in torch's format, atomically."""
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    return atomic_write(path, buffer.getvalue())


def settings_key(*parts: Any) -> str:
    """A short stable hash of settings (dataclasses, dicts, scalars)."""
    text = json.dumps([to_jsonable(p) for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_name(cell: dict[str, Any]) -> str:
    """A file-safe name for a cell, e.g. ``task=mnist-3-8__model=relu__width=16__seed=0``."""
    text = "__".join(f"{k}={v}" for k, v in cell.items())
    return re.sub(r"[^A-Za-z0-9=_.-]+", "-", text)


def is_done(path: Path, settings_hash: str) -> bool:
    """The cell file exists and holds a result for the settings with hash ``settings_hash``."""
    if not path.exists():
        return False
    try:
        stored = json.loads(path.read_text())
    except (OSError, ValueError):
        return False
    return stored.get("settings_hash") == settings_hash and "result" in stored


@dataclass
class Run:
    """A run folder: the resolved preset, versions and finished cells by experiment."""

    out: Path
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, list[dict]] = field(default_factory=dict)


def load_run(out: Path) -> Run:
    """Read ``out/settings.json`` (optional) and every ``out/<experiment>/*.json`` holding a
    result, skipping ``cache/``."""
    run = Run(out)
    meta_path = out / "settings.json"
    if meta_path.is_file():
        meta = json.loads(meta_path.read_text())
        run.settings, run.versions = meta.get("settings", {}), meta.get("versions", {})
    for path in sorted(out.glob("*/*.json")):
        if path.parent.name == "cache":
            continue
        record = json.loads(path.read_text())
        if isinstance(record, dict) and "result" in record:
            run.cells.setdefault(record.get("experiment", path.parent.name), []).append(record)
    return run
