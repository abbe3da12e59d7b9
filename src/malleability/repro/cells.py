"""Cell files: one finished cell of an experiment as ``<experiment>/<cell name>.json``, with the
SHA-256 of its content, so a cell that is truncated, edited, bit-flipped, copied under another
name or written for other settings is told apart from a finished one."""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path
from typing import Any

from ..jsonsafe import dumps_strict
from .files import CorruptFile, read_json, to_jsonable, write_json

#: Every key of a cell file besides ``checksum``.
CELL_KEYS = ("experiment", "cell", "result", "settings", "settings_hash", "versions", "device",
             "timing")


def settings_key(*parts: Any) -> str:
    """A short stable hash of settings (dataclasses, dicts, scalars)."""
    text = json.dumps([to_jsonable(p) for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_name(cell: dict[str, Any]) -> str:
    """A file-safe name for a cell, e.g. ``task=mnist-3-8__model=relu__width=16__seed=0``."""
    text = "__".join(f"{k}={v}" for k, v in cell.items())
    return re.sub(r"[^A-Za-z0-9=_.-]+", "-", text)


def checksum(record: dict[str, Any]) -> str:
    """SHA-256 of a cell record's content (all keys but ``checksum``) in canonical strict
    JSON."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(dumps_strict(body, sort_keys=True).encode()).hexdigest()


def write_cell(path: Path, record: dict[str, Any]) -> Path:
    """A cell record (the keys of :data:`CELL_KEYS`) with its checksum, atomically."""
    record = to_jsonable(record)
    return write_json(path, {**record, "checksum": checksum(record)})


_CELL_TYPES = {"experiment": str, "cell": dict, "result": dict, "settings": dict,
               "settings_hash": str, "versions": dict, "device": str, "timing": dict}


def read_cell(path: Path, experiment: str | None = None, cell: dict | None = None,
              settings_hash: str | None = None, legacy: bool = False) -> dict[str, Any]:
    """The record of a cell file after every check, or :class:`CorruptFile` saying which
    failed: strict JSON object with the keys and types of :data:`CELL_KEYS`, a non-empty
    result, a checksum matching the content, a settings hash matching the settings, and the
    ``experiment``, ``cell`` and ``settings_hash`` expected where given. ``legacy`` accepts
    files of earlier versions (no checksum, bare NaN): for reading, never for resuming."""
    record = read_json(path, legacy)
    if not isinstance(record, dict):
        raise CorruptFile(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in CELL_KEYS if k not in record]
    extra = sorted(set(record) - {*CELL_KEYS, "checksum"})
    if missing or extra:
        raise CorruptFile(f"expected the keys {', '.join(CELL_KEYS)}, checksum; "
                          f"missing {missing}, unknown {extra}")
    for key, kind in _CELL_TYPES.items():
        if not isinstance(record[key], kind):
            raise CorruptFile(f"{key}: expected {kind.__name__}, got "
                              f"{type(record[key]).__name__}")
    if not record["result"]:
        raise CorruptFile("result: empty")
    seconds = record["timing"].get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise CorruptFile(f"timing.seconds: expected a number, got {seconds!r}")
    if "checksum" in record:
        if record["checksum"] != checksum(record):
            raise CorruptFile("checksum does not match the content (changed after writing)")
    elif not legacy:
        raise CorruptFile("no checksum (written by an earlier version)")
    if settings_key(record["settings"]) != record["settings_hash"]:
        raise CorruptFile("settings_hash does not match its settings")
    for key, want in (("experiment", experiment), ("cell", cell),
                      ("settings_hash", settings_hash)):
        if want is not None and record[key] != want:
            raise CorruptFile(f"written for another {key.replace('_', ' ')} "
                              f"({record[key]!r}, expected {want!r})")
    return record
