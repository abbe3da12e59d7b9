"""Cached tensors of a run folder (trained models under ``OUT/cache/``) in torch's format with
a checksum of every tensor's dtype, shape and bytes."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path
from typing import Any

import torch

from ..jsonsafe import dumps_strict
from .files import CorruptFile, atomic_write

CACHE = "cache"


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
