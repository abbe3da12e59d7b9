"""Shared fixtures: tiny data sets in the canonical download formats, scikit-learn's digits as
package Datasets, and a small trained classifier with its data for the estimator and attack
contracts."""

from __future__ import annotations

import functools
import gzip
import io
import pickle
import struct
import tarfile
from typing import NamedTuple

import numpy as np
import pytest


class TinyData(NamedTuple):
    """files[dataset][filename] = bytes as served by the canonical locations;
    arrays[dataset][split] = (uint8 images N×C×H×W, labels) they hold."""

    files: dict[str, dict[str, bytes]]
    arrays: dict[str, dict[str, tuple[np.ndarray, np.ndarray]]]


def _idx(array: np.ndarray) -> bytes:
    shape = struct.pack(f">{array.ndim}I", *array.shape)
    return bytes([0, 0, 0x08, array.ndim]) + shape + array.astype(np.uint8).tobytes()


def _cifar_batch(images: np.ndarray, labels: np.ndarray, bytes_keys: bool) -> bytes:
    entry = {"data": images.reshape(len(images), -1), "labels": labels.tolist()}
    if bytes_keys:  # as Python 2 pickles read with encoding="bytes"
        entry = {k.encode(): v for k, v in entry.items()}
    return pickle.dumps(entry)


def _tar_gz(members: dict[str, bytes]) -> bytes:
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w:gz") as tar:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
    return out.getvalue()


@pytest.fixture(scope="session")
def tiny_data() -> TinyData:
    """MNIST: 30 train / 20 test images 28×28 as gzipped IDX; CIFAR-10: five data batches of 10
    images and a test batch of 10 in cifar-10-python.tar.gz. Labels are i mod 10."""
    rng = np.random.default_rng(0)
    mnist = {
        split: (rng.integers(0, 256, (n, 1, 28, 28), dtype=np.uint8), np.arange(n) % 10)
        for split, n in (("train", 30), ("test", 20))
    }
    mnist_files = {}
    for split, prefix in (("train", "train"), ("test", "t10k")):
        images, labels = mnist[split]
        mnist_files[f"{prefix}-images-idx3-ubyte.gz"] = gzip.compress(_idx(images[:, 0]))
        mnist_files[f"{prefix}-labels-idx1-ubyte.gz"] = gzip.compress(_idx(labels))
    cifar = {
        split: (rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), np.arange(n) % 10)
        for split, n in (("train", 50), ("test", 10))
    }
    folder = "cifar-10-batches-py/"
    members = {
        f"{folder}data_batch_{b + 1}": _cifar_batch(
            cifar["train"][0][10 * b : 10 * b + 10], cifar["train"][1][10 * b : 10 * b + 10], b > 0
        )
        for b in range(5)
    }
    members[f"{folder}test_batch"] = _cifar_batch(*cifar["test"], bytes_keys=True)
    members[f"{folder}batches.meta"] = pickle.dumps({b"label_names": [b"airplane"]})
    return TinyData(
        files={"mnist": mnist_files, "cifar10": {"cifar-10-python.tar.gz": _tar_gz(members)}},
        arrays={"mnist": mnist, "cifar10": cifar},
    )


@pytest.fixture(scope="session")
def digits_split():
    """``load(classes, n_train, n_test)`` → (train, test) Datasets of scikit-learn's bundled
    8×8 digits (stratified, seed 0), cached for the session."""
    from malleability.data import load_dataset

    @functools.cache
    def load(classes: str | None = None, n_train: int = 200, n_test: int = 60):
        return (load_dataset("digits", "train", classes=classes, n=n_train, seed=0),
                load_dataset("digits", "test", classes=classes, n=n_test, seed=0))

    return load


@pytest.fixture(scope="session")
def digits(digits_split):
    """240 training and 120 test digits of classes 0–3."""
    return digits_split("0,1,2,3", 240, 120)


@pytest.fixture(scope="session")
def small_classifier(digits_split):
    """A small MLP (P = 423) briefly trained on 40 digits of classes 0–2, with (x, y, x_test,
    y_test) as [0, 1] pixels and class indices (12 test digits)."""
    from malleability.auditing import load_split
    from malleability.classifiers import MLPClassifier, fit_classifier

    train, test = digits_split("0,1,2", 40, 12)
    data = (*load_split(train, None, "x_train"), *load_split(test, None, "x_test"))
    model = MLPClassifier(in_features=64, hidden=6, num_classes=3, seed=0)
    fit_classifier(model, data[0], data[1], epochs=5, seed=0)
    return model, data


@pytest.fixture(scope="module")
def cluster():
    """The address of a Dask LocalCluster of 2 worker processes (one thread each) on
    127.0.0.1, for the tests of cells on Dask."""
    from distributed import LocalCluster

    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, host="127.0.0.1",
                      dashboard_address=":0") as local:
        yield local.scheduler_address
