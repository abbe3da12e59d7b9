"""The registered data sets, where their files live under the data root, and ``load_dataset``.

Layout under the data root (a fresh download creates the first folder named):
``mnist/`` and ``fashion-mnist/`` with the four IDX files (gzipped or not),
``cifar10/`` or ``cifar-10-subset/`` with ``cifar-10-python.tar.gz`` or ``cifar-10-batches-py/``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
from sklearn.datasets import load_digits

from .._validation import check_choice, check_positive_int, check_seed
from .arrays import ARRAY_SUFFIXES, is_array_file, read_array_file
from .dataset import Dataset
from .download import DATA_ENV, fetch_file, resolve_root
from .readers import CIFAR_FOLDER, read_cifar10, read_idx
from .subsets import parse_classes, select_indices, stratified_sample

SPLITS = ("train", "test")
# digits has no test split: a fixed stratified draw of 500 of its 1,797 images (seed 0) is the
# test split, the other 1,297 the training split, whatever seed a caller samples with.
DIGITS_TEST_SIZE = 500
DIGITS_SPLIT_SEED = 0

Reader = Callable[[tuple[Path, ...], str], tuple[np.ndarray, np.ndarray]]


@dataclass(frozen=True)
class DatasetSpec:
    """A registered data set.

    read: (paths of ``files[split]``, split) → (images N×C×H×W, integer labels); pixel values are
    divided by ``pixel_max`` to land in [0, 1]. folders: candidate folders under the data root, the
    first receives downloads. files: per split, the canonical file names (the keys of
    ``download.CHECKSUMS``). unpacked: another local form accepted for a file (an uncompressed IDX
    file, CIFAR's extracted folder).
    """

    name: str
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]
    read: Reader
    pixel_max: float = 255.0
    folders: tuple[str, ...] = ()
    files: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    unpacked: Mapping[str, str] = field(default_factory=dict)


def _read_idx_split(paths: tuple[Path, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
    images, labels = (read_idx(p) for p in paths)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise ValueError(
            f"{paths[0].parent}: images of shape {images.shape} do not match labels of shape "
            f"{labels.shape}"
        )
    return images[:, None], labels


def _read_cifar_split(paths: tuple[Path, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
    arrays = read_cifar10(paths[0])
    if split == "train":
        return arrays.train_images, arrays.train_labels
    return arrays.test_images, arrays.test_labels


def _read_digits(paths: tuple[Path, ...], split: str) -> tuple[np.ndarray, np.ndarray]:
    bunch = load_digits()
    labels = bunch.target.astype(np.int64)
    test = np.zeros(len(labels), dtype=bool)
    test[stratified_sample(labels, DIGITS_TEST_SIZE, DIGITS_SPLIT_SEED)] = True
    keep = test if split == "test" else ~test
    return bunch.images[keep, None].astype(np.uint8), labels[keep]


def _idx_files(prefix: str) -> tuple[str, str]:
    return f"{prefix}-images-idx3-ubyte.gz", f"{prefix}-labels-idx1-ubyte.gz"


_IDX_FILES = {"train": _idx_files("train"), "test": _idx_files("t10k")}
_IDX_UNPACKED = {f: f.removesuffix(".gz") for files in _IDX_FILES.values() for f in files}
_CIFAR_ARCHIVE = "cifar-10-python.tar.gz"
_FASHION_CLASSES = "T-shirt/top,Trouser,Pullover,Dress,Coat,Sandal,Shirt,Sneaker,Bag,Ankle boot"
_CIFAR_CLASSES = "airplane,automobile,bird,cat,deer,dog,frog,horse,ship,truck"

DATASETS: dict[str, DatasetSpec] = {
    spec.name: spec
    for spec in (
        DatasetSpec(
            name="digits",
            class_names=tuple(str(c) for c in range(10)),
            # Mean and std of all pixel values (/16) of the 1,297-image digits training split
            # above, computed as MNIST's (0.1307, 0.3081) were; a test recomputes them.
            mean=(0.3065,),
            std=(0.3764,),
            read=_read_digits,
            pixel_max=16.0,
            files={"train": (), "test": ()},
        ),
        DatasetSpec(
            name="mnist",
            class_names=tuple(str(c) for c in range(10)),
            mean=(0.1307,),
            std=(0.3081,),
            read=_read_idx_split,
            folders=("mnist",),
            files=_IDX_FILES,
            unpacked=_IDX_UNPACKED,
        ),
        DatasetSpec(
            name="fashion-mnist",
            class_names=tuple(_FASHION_CLASSES.split(",")),
            mean=(0.2860,),
            std=(0.3530,),
            read=_read_idx_split,
            folders=("fashion-mnist",),
            files=_IDX_FILES,
            unpacked=_IDX_UNPACKED,
        ),
        DatasetSpec(
            name="cifar10",
            class_names=tuple(_CIFAR_CLASSES.split(",")),
            mean=(0.5, 0.5, 0.5),
            std=(0.5, 0.5, 0.5),
            read=_read_cifar_split,
            folders=("cifar10", "cifar-10-subset"),
            files={"train": (_CIFAR_ARCHIVE,), "test": (_CIFAR_ARCHIVE,)},
            unpacked={_CIFAR_ARCHIVE: CIFAR_FOLDER},
        ),
    )
}


def _local(spec: DatasetSpec, folder: Path, filename: str) -> Path | None:
    for candidate in (filename, spec.unpacked.get(filename)):
        if candidate is not None and (folder / candidate).exists():
            return folder / candidate
    return None


def _find(
    spec: DatasetSpec, root: Path, names: Sequence[str]
) -> tuple[Path, dict[str, Path | None]]:
    """The first candidate folder holding all ``names``, else the download folder, with the
    local path of each name (None when absent)."""
    for folder in (root / f for f in spec.folders):
        found = {name: _local(spec, folder, name) for name in names}
        if all(found.values()):
            return folder, found
    folder = root / spec.folders[0]
    return folder, {name: _local(spec, folder, name) for name in names}


def _paths(spec: DatasetSpec, root: Path, split: str, download: bool) -> tuple[Path, ...]:
    names = spec.files[split]
    if not names:
        return ()
    folder, found = _find(spec, root, names)
    missing = [name for name, path in found.items() if path is None]
    if missing and not download:
        raise FileNotFoundError(
            f"{spec.name}: {', '.join(missing)} not found under {root} (in "
            f"{' or '.join(f + '/' for f in spec.folders)}); place them in {folder}, point "
            f"--data-root / {DATA_ENV} at a root that has them, or allow downloads"
        )
    for name in missing:
        found[name] = fetch_file(spec.name, name, folder)
    return tuple(found[name] for name in names)


class _Source(NamedTuple):
    images: np.ndarray
    labels: np.ndarray
    pixel_max: float
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]


def _source(name: str, split: str, root: str | os.PathLike[str] | None, download: bool) -> _Source:
    if not isinstance(name, str):
        raise ValueError(f"name: expected a dataset name or file path, got {name!r}")
    spec = DATASETS.get(name.lower())
    if spec is not None:
        images, labels = spec.read(_paths(spec, resolve_root(root), split, download), split)
        source = _Source(
            images, labels.astype(np.int64), spec.pixel_max, spec.class_names, spec.mean, spec.std
        )
    elif is_array_file(name):
        data = read_array_file(name, split)
        channels = data.images.shape[1]
        source = _Source(
            data.images,
            data.labels,
            1.0,
            data.class_names,
            data.mean or (0.5,) * channels,
            data.std or (0.5,) * channels,
        )
    else:
        raise ValueError(
            f"name: unknown dataset {name!r}; expected one of {', '.join(DATASETS)} "
            f"or a {' / '.join(ARRAY_SUFFIXES)} file"
        )
    labels, n_classes = source.labels, len(source.class_names)
    if len(labels) and (labels.min() < 0 or labels.max() >= n_classes):
        raise ValueError(f"name: {name} has labels outside 0..{n_classes - 1}")
    return source


def load_dataset(
    name: str,
    split: str = "train",
    root: str | os.PathLike[str] | None = None,
    classes: str | int | Sequence[int | str] | None = None,
    n: int | None = None,
    seed: int = 0,
    download: bool = True,
) -> Dataset:
    """Load one split of a registered data set or of a user's array file.

    name: ``digits`` (offline default), ``mnist``, ``fashion-mnist``, ``cifar10``, or a path to a
    .npz / .pt / .npy file (see ``read_array_file``; mean/std default to 0.5 per channel).
    root: the data root (see ``resolve_root``); missing files are downloaded unless ``download``
    is False. classes: indices or names, e.g. ``"3,8"`` (default all). n: a stratified sample of
    that many examples drawn with ``seed`` (default all, in file order).
    """
    check_choice(split, "split", SPLITS)
    if n is not None:
        n = check_positive_int(n, "n")
    seed = check_seed(seed)
    source = _source(name, split, root, download)
    chosen = parse_classes(classes, source.class_names)
    index = select_indices(source.labels, chosen, n, seed, where=f"{name} ({split} split)")
    pixels = source.images[index].astype(np.float32)
    pixels /= np.float32(source.pixel_max)
    return Dataset(
        name=name.lower() if name.lower() in DATASETS else name,
        split=split,
        pixels=torch.from_numpy(pixels),
        labels=torch.from_numpy(source.labels[index]),
        indices=torch.from_numpy(index.astype(np.int64)),
        classes=chosen,
        class_names=tuple(source.class_names[c] for c in chosen),
        mean=source.mean,
        std=source.std,
    )


def dataset_status(root: str | os.PathLike[str] | None = None) -> list[dict[str, object]]:
    """Per registered data set: ``name``, ``available`` (every file of both splits present
    locally), ``path`` (the folder holding them, or where a download goes; ``(bundled)`` for
    digits) and ``missing`` (the file names absent)."""
    root = resolve_root(root)
    rows: list[dict[str, object]] = []
    for spec in DATASETS.values():
        names = list(dict.fromkeys(n for files in spec.files.values() for n in files))
        if not names:
            rows.append({"name": spec.name, "available": True, "path": "(bundled)", "missing": []})
            continue
        folder, found = _find(spec, root, names)
        missing = [name for name, path in found.items() if path is None]
        rows.append(
            {"name": spec.name, "available": not missing, "path": str(folder), "missing": missing}
        )
    return rows
