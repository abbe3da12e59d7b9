"""Cached tensors of a run folder (trained models under ``OUT/cache/``, the training states of
unfinished cells under ``OUT/cache/partial/``) in torch's format with a checksum of every
tensor's dtype, shape and bytes."""

from __future__ import annotations

import hashlib
import io
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..jsonsafe import dumps_strict, loads_strict
from ..training import STATE_KEYS
from .files import CorruptFile, atomic_write

CACHE = "cache"
PARTIAL = "partial"
log = logging.getLogger("malleability.repro")


def _tensors_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a tensor payload: each tensor's dtype, shape and bytes, other values as
    strict JSON, by sorted key."""
    digest = hashlib.sha256()
    for key in sorted(k for k in payload if k != "checksum"):
        value = payload[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(dumps_strict(value, sort_keys=True).encode())
    return digest.hexdigest()


def write_tensors(path: Path, payload: dict[str, Any]) -> Path:
    """``payload`` (tensors and plain values) in torch's format with its checksum,
    atomically."""
    buffer = io.BytesIO()
    torch.save({**payload, "checksum": _tensors_digest(payload)}, buffer)
    return atomic_write(path, buffer.getvalue())


def read_tensors(path: Path, keys: tuple[str, ...], device: Any = "cpu") -> dict[str, Any]:
    """A file of :func:`write_tensors` holding ``keys``, loaded onto ``device``, or
    :class:`CorruptFile` saying why not (unloadable, missing keys, checksum mismatch)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle errors, …
        raise CorruptFile(f"not loadable ({type(err).__name__})") from None
    if not isinstance(payload, dict) or not set(keys) <= set(payload):
        raise CorruptFile(f"expected the keys {', '.join(keys)}")
    if payload.get("checksum") != _tensors_digest(payload):
        raise CorruptFile("checksum does not match the content")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in payload.items()
            if k in keys}


def write_cache_files(out: Path, files: dict[str, bytes]) -> None:
    """Cache files computed elsewhere (relative path under ``out/cache/`` → bytes), each
    written atomically unless present."""
    cache = out / CACHE
    for rel, data in files.items():
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise ValueError(f"cache: expected a relative path inside {CACHE}/, got {rel!r}")
        if not (cache / rel).exists():
            atomic_write(cache / rel, data)


@dataclass
class CellCheckpoints:
    """The training states of one unfinished cell, in ``folder``
    (``OUT/cache/partial/<experiment>/<cell>/``): a :class:`~malleability.resume.CheckpointStore`.
    ``seconds.json`` holds the cell's compute seconds up to its last save, so that a resumed
    cell's time counts its earlier attempts (``earlier_seconds``) but not their lost work."""

    folder: Path
    started: float = field(default_factory=time.perf_counter)
    earlier_seconds: float = field(init=False)

    def __post_init__(self) -> None:
        try:
            self.earlier_seconds = float(
                loads_strict((self.folder / "seconds.json").read_text())["seconds"])
        except (OSError, ValueError, KeyError, TypeError):
            self.earlier_seconds = 0.0

    def seconds(self) -> float:
        """The cell's compute seconds: its earlier attempts' and this one's."""
        return self.earlier_seconds + time.perf_counter() - self.started

    def load(self, key: str) -> dict[str, Any] | None:
        path = self.folder / f"{key}.pt"
        if not path.exists():
            return None
        try:
            state = read_tensors(path, STATE_KEYS)
        except CorruptFile as err:
            log.warning("%s: not resumed from (%s); the training starts over", path, err)
            return None
        log.info("%s: training resumed after epoch %d", self.folder.name, state["epoch"])
        return state

    def save(self, key: str, state: dict[str, Any]) -> None:
        write_tensors(self.folder / f"{key}.pt", state)
        atomic_write(self.folder / "seconds.json",
                     dumps_strict({"seconds": self.seconds()}).encode())

    def clear(self) -> None:
        """Remove the folder (the cell is done)."""
        shutil.rmtree(self.folder, ignore_errors=True)
