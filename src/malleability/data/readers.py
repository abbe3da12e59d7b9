"""Readers for the canonical file formats: IDX (MNIST, Fashion-MNIST) and CIFAR-10's python version.

Parsed arrays are cached in memory per (file, modification time, size) and returned read-only, so
reading the train and test split of one archive, or the same file twice, parses it once.
"""

from __future__ import annotations

import functools
import gzip
import io
import math
import pickle
import struct
import tarfile
import warnings
import zlib
from pathlib import Path
from typing import BinaryIO, NamedTuple

import numpy as np

GZIP_MAGIC = b"\x1f\x8b"
_IDX_DTYPES = {0x08: "u1", 0x09: "i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

CIFAR_FOLDER = "cifar-10-batches-py"
CIFAR_TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
CIFAR_TEST_BATCH = "test_batch"
# The only globals a CIFAR batch pickle needs (numpy arrays); anything else is refused.
_PICKLE_GLOBALS = {
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("numpy.core.multiarray", "_reconstruct"),
    ("numpy._core.multiarray", "_reconstruct"),
}

_MALFORMED = (pickle.UnpicklingError, EOFError, AttributeError, KeyError, TypeError, ValueError)


class CifarArrays(NamedTuple):
    """CIFAR-10 as read: uint8 images N×3×32×32, int64 labels, and the training batches found."""

    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    train_batches: tuple[str, ...]


def _stamp(path: Path) -> tuple[str, int, int]:
    st = path.stat()
    return str(path.resolve()), st.st_mtime_ns, st.st_size


def read_idx(path: str | Path) -> np.ndarray:
    """An IDX file, gzipped or not (told by the gzip magic bytes 1f 8b, not by the name).

    Format: two zero bytes, a dtype code (0x08 = uint8, ...), the rank r, r big-endian uint32
    sizes, then the row-major data. Returns a read-only array of that shape in native byte order.
    """
    return _read_idx(*_stamp(Path(path)))


@functools.lru_cache(maxsize=8)
def _read_idx(path: str, mtime_ns: int, size: int) -> np.ndarray:
    raw = Path(path).read_bytes()
    if raw[:2] == GZIP_MAGIC:
        try:
            raw = gzip.decompress(raw)
        except (OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: corrupt gzip data ({err})") from None
    if len(raw) < 4 or raw[:2] != b"\0\0" or raw[2] not in _IDX_DTYPES:
        raise ValueError(f"{path}: not an IDX file (magic bytes {raw[:4].hex()})")
    rank = raw[3]
    start = 4 + 4 * rank
    shape = struct.unpack(f">{rank}I", raw[4:start]) if len(raw) >= start else ()
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = math.prod(shape) * dtype.itemsize
    if len(shape) != rank or len(raw) - start != expected:
        raise ValueError(
            f"{path}: IDX header announces shape {shape} ({expected} bytes), "
            f"file holds {max(len(raw) - start, 0)}"
        )
    data = np.frombuffer(raw, dtype, offset=start).reshape(shape)
    data = data.astype(dtype.newbyteorder("="), copy=False)
    data.flags.writeable = False
    return data


class _ArrayUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> object:
        if (module, name) not in _PICKLE_GLOBALS:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name}")
        return super().find_class(module, name)


def _read_batch(stream: BinaryIO, where: str) -> tuple[np.ndarray, np.ndarray]:
    """One CIFAR-10 batch: a pickled dict with 'data' (N×3072 uint8, rows R|G|B of 32×32) and
    'labels' (N ints); keys are str or bytes depending on the Python that pickled it."""
    try:
        entry = _ArrayUnpickler(stream, encoding="bytes").load()
        entry = {k.decode() if isinstance(k, bytes) else k: v for k, v in entry.items()}
        data = np.asarray(entry["data"], dtype=np.uint8).reshape(-1, 3, 32, 32)
        labels = np.asarray(entry["labels"], dtype=np.int64)
    except _MALFORMED as err:
        raise ValueError(f"{where}: not a CIFAR-10 python batch ({err!r})") from None
    if len(labels) != len(data):
        raise ValueError(f"{where}: {len(data)} images but {len(labels)} labels")
    return data, labels


def read_cifar10(path: str | Path) -> CifarArrays:
    """CIFAR-10 "python version": the cifar-10-python.tar.gz archive, its extracted
    cifar-10-batches-py/ folder, or a folder holding that one.

    Reads test_batch and whichever of data_batch_1..5 are present, in that order, and warns when
    fewer than five training batches are found.
    """
    path = Path(path)
    if path.is_dir() and (path / CIFAR_FOLDER).is_dir():
        path = path / CIFAR_FOLDER
    arrays = _read_cifar10(*_stamp(path))
    if len(arrays.train_batches) < len(CIFAR_TRAIN_BATCHES):
        warnings.warn(
            f"{path}: {len(arrays.train_batches)} of {len(CIFAR_TRAIN_BATCHES)} CIFAR-10 training "
            f"batches present ({', '.join(arrays.train_batches)}): "
            f"{len(arrays.train_labels)} training images",
            stacklevel=2,
        )
    return arrays


@functools.lru_cache(maxsize=2)
def _read_cifar10(path: str, mtime_ns: int, size: int) -> CifarArrays:
    wanted = (*CIFAR_TRAIN_BATCHES, CIFAR_TEST_BATCH)
    batches: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    if Path(path).is_dir():
        for name in wanted:
            if (Path(path) / name).is_file():
                with open(Path(path) / name, "rb") as f:
                    batches[name] = _read_batch(f, f"{path}/{name}")
    else:
        try:
            with tarfile.open(path) as tar:
                for member in tar:  # one pass over the compressed stream
                    name = member.name.rsplit("/", 1)[-1]
                    if member.isfile() and name in wanted:
                        # Whole-member reads: unpickling from the gzip stream reads it in
                        # small pieces, which is slower.
                        raw = tar.extractfile(member).read()
                        batches[name] = _read_batch(io.BytesIO(raw), f"{path}:{member.name}")
        except (tarfile.TarError, OSError, EOFError, zlib.error) as err:
            raise ValueError(f"{path}: unreadable CIFAR-10 archive ({err})") from None
    found = tuple(name for name in CIFAR_TRAIN_BATCHES if name in batches)
    if not found or CIFAR_TEST_BATCH not in batches:
        raise ValueError(
            f"{path}: expected {CIFAR_TEST_BATCH} and at least one data_batch_N, "
            f"found {sorted(batches) or 'none'}"
        )
    train = [batches[name] for name in found]
    out = CifarArrays(
        np.concatenate([x for x, _ in train]),
        np.concatenate([y for _, y in train]),
        *batches[CIFAR_TEST_BATCH],
        found,
    )
    for array in out[:4]:
        array.flags.writeable = False
    return out
