"""A user's own data set in array files (.npz, .pt, .npy): images in [0, 1] and integer labels."""

from __future__ import annotations

import pickle
import zipfile
import zlib
from collections.abc import Mapping
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np
import torch

ARRAY_SUFFIXES = (".npz", ".pt", ".npy")
IMAGE_KEYS = ("x", "images")
LABEL_KEYS = ("y", "labels")


class ArrayData(NamedTuple):
    """A checked array file: float32 images N×C×H×W in [0, 1], int64 labels in [0, C)."""

    images: np.ndarray
    labels: np.ndarray
    class_names: tuple[str, ...]
    mean: tuple[float, ...] | None
    std: tuple[float, ...] | None


def is_array_file(name: str) -> bool:
    """Whether ``name`` names an array file by its suffix (.npz, .pt, .npy)."""
    return Path(name).suffix.lower() in ARRAY_SUFFIXES


def read_array_file(path: str | Path, split: str) -> ArrayData:
    """Read and check a user's array file; errors are one-line ValueErrors starting ``name:``.

    - .npz, or .pt (a dict saved with ``torch.save``): images under ``x_<split>`` /
      ``images_<split>``, else ``x`` / ``images``; labels under ``y_<split>`` / ``labels_<split>``,
      else ``y`` / ``labels``; optional ``class_names``, ``mean``, ``std`` (per channel). One file
      can hold both splits; a file with plain keys is whichever split it is loaded as.
    - .npy: the images; the labels in ``<stem>_labels.npy`` beside it.

    Images N×H×W, N×C×H×W or N×H×W×C (C ∈ {1, 3}), floats in [0, 1] or uint8 (divided by 255).
    Labels integers 0 ≤ y < C, C = len(class_names), or max(y) + 1 without class names.
    """
    path = Path(path)
    where = f"name: {path}"
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    content = _load(path, where)
    images = _images(_pick(content, IMAGE_KEYS, split, where), where)
    labels = _labels(_pick(content, LABEL_KEYS, split, where), len(images), where)
    if "class_names" in content:
        class_names = tuple(str(s) for s in np.asarray(content["class_names"]).ravel())
    else:
        class_names = tuple(str(c) for c in range(int(labels.max()) + 1))
    if labels.max() >= len(class_names):
        raise ValueError(
            f"{where}: labels out of range: max label {labels.max()} with "
            f"{len(class_names)} class names"
        )
    channels = images.shape[1]
    mean = _constants(content.get("mean"), channels, "mean", where)
    std = _constants(content.get("std"), channels, "std", where)
    if std is not None and min(std) <= 0:
        raise ValueError(f"{where}: std must be positive, got {std}")
    return ArrayData(images, labels, class_names, mean, std)


def _load(path: Path, where: str) -> Mapping[str, Any]:
    suffix = path.suffix.lower()
    try:
        if suffix == ".npz":
            if not zipfile.is_zipfile(path):
                raise ValueError("not a zip archive: truncated, or not written by numpy.savez")
            with np.load(path, allow_pickle=False) as npz:
                return {key: npz[key] for key in npz.files}
        if suffix == ".pt":
            content = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(content, Mapping):
                raise ValueError(f"expected a dict, got {type(content).__name__}")
            return {
                str(k): v.numpy() if isinstance(v, torch.Tensor) else v for k, v in content.items()
            }
        labels_path = path.with_name(f"{path.stem}_labels.npy")
        if not labels_path.is_file():
            raise ValueError(f"labels file {labels_path.name} not found beside it")
        return {"x": np.load(path, allow_pickle=False), "y": np.load(labels_path)}
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError,
            zipfile.BadZipFile, zlib.error) as err:
        reason = " ".join(str(err).split())[:200]
        if isinstance(err, pickle.UnpicklingError):
            reason = ("it holds pickled Python objects, which are not loaded for safety; save a "
                      "dict of arrays or tensors")
        raise ValueError(f"{where}: unreadable {suffix} file ({reason})") from None


def read_inputs_file(path: str | Path, name: str) -> tuple[np.ndarray, np.ndarray]:
    """Inputs ``x`` (any shape, N rows, finite numbers) and integer labels ``y`` (N entries,
    ≥ 0) from an .npz file or a dict saved with ``torch.save`` (.pt), as given to
    ``malleability audit --train/--test``; a file that is unreadable, truncated, empty, or holds
    strings, NaN or non-integer labels is a one-line ValueError starting ``name (file):``."""
    path = Path(path)
    where = f"{name} ({path.name})"
    if path.suffix.lower() not in (".npz", ".pt"):
        raise ValueError(f"{where}: expected a .npz or .pt file")
    if not path.is_file():
        raise ValueError(f"{where}: no such file")
    content = _load(path, where)
    missing = [k for k in ("x", "y") if k not in content]
    if missing:
        raise ValueError(f"{where}: no array {' or '.join(map(repr, missing))} (keys: "
                         f"{', '.join(sorted(content)) or 'none'}); expected x (inputs) and y "
                         "(labels)")
    x, y = np.asarray(content["x"]), np.asarray(content["y"])
    if x.dtype.kind not in "biuf":
        raise ValueError(f"{where}: x: expected numbers, got dtype {x.dtype}")
    if x.ndim == 0 or len(x) == 0:
        raise ValueError(f"{where}: x: expected at least one row, got shape {x.shape}")
    bad = int(x.size - np.isfinite(x).sum()) if x.dtype.kind == "f" else 0
    if bad:
        raise ValueError(f"{where}: x: {bad} of {x.size} entries are NaN or infinite")
    if y.dtype.kind not in "biuf":
        raise ValueError(f"{where}: y: expected integer class labels, got dtype {y.dtype}")
    return x, _labels(y, len(x), f"{where}: y")


def _pick(content: Mapping[str, Any], keys: tuple[str, ...], split: str, where: str) -> Any:
    for key in (*(f"{k}_{split}" for k in keys), *keys):
        if key in content:
            return content[key]
    want = " / ".join(f"{k}_{split} or {k}" for k in keys)
    raise ValueError(f"{where}: no key {want} (keys: {', '.join(sorted(content)) or 'none'})")


def _images(x: Any, where: str) -> np.ndarray:
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None]
    elif x.ndim == 4 and x.shape[1] not in (1, 3) and x.shape[3] in (1, 3):
        x = x.transpose(0, 3, 1, 2)
    if x.ndim != 4 or x.shape[1] not in (1, 3) or len(x) == 0:
        raise ValueError(
            f"{where}: images must be N×H×W, N×C×H×W or N×H×W×C with C in (1, 3) and N ≥ 1, "
            f"got shape {x.shape}"
        )
    if x.dtype == np.uint8:
        return x.astype(np.float32) / np.float32(255)
    if not np.issubdtype(x.dtype, np.floating):
        raise ValueError(f"{where}: images must be floats in [0, 1] or uint8, got dtype {x.dtype}")
    if not np.isfinite(x).all():
        raise ValueError(f"{where}: images contain NaN or infinite values")
    if x.min() < 0 or x.max() > 1:
        raise ValueError(f"{where}: images must lie in [0, 1], got [{x.min():g}, {x.max():g}]")
    return np.ascontiguousarray(x, dtype=np.float32)


def _labels(y: Any, n: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or len(y) != n:
        raise ValueError(f"{where}: labels must be a vector of {n} entries, got shape {y.shape}")
    if y.dtype.kind == "f" and np.isfinite(y).all() and (y == np.round(y)).all():
        y = y.astype(np.int64)
    if y.dtype.kind not in "iu":
        raise ValueError(f"{where}: labels must be integers, got dtype {y.dtype} values")
    if y.min() < 0:
        raise ValueError(f"{where}: labels out of range: min label {y.min()} < 0")
    return y.astype(np.int64)


def _constants(value: Any, channels: int, key: str, where: str) -> tuple[float, ...] | None:
    if value is None:
        return None
    try:
        v = np.asarray(value, dtype=np.float64).ravel()
    except (TypeError, ValueError):
        v = np.array([np.nan])
    if len(v) != channels or not np.isfinite(v).all():
        shown = " ".join(repr(value).split())
        raise ValueError(f"{where}: {key} must be {channels} finite numbers, got {shown}")
    return tuple(float(a) for a in v)
