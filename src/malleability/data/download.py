"""Downloads from the datasets' canonical locations, each file checked against its published hash.

``MIRRORS`` and ``CHECKSUMS`` are module-level registries (tests point them at a local server);
``fetch_file`` also takes both as arguments. pooch streams each download to a temporary file in
the target folder and moves it into place only when the hash matches, so a corrupt or truncated
download never sits in the cache under the real name. Checksums apply to downloads only: files
already in the data root are read as they are.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

import pooch

DATA_ENV = "MALLEABILITY_DATA"

# Base URLs, tried in order (MNIST: the mirrors torchvision uses).
MIRRORS: dict[str, tuple[str, ...]] = {
    "mnist": (
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
        "http://yann.lecun.com/exdb/mnist/",
    ),
    "fashion-mnist": ("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",),
    "cifar10": ("https://www.cs.toronto.edu/~kriz/",),
}

# MD5s of the canonical files, as published in torchvision/datasets/mnist.py (MNIST.resources,
# FashionMNIST.resources) and torchvision/datasets/cifar.py (CIFAR10.tgz_md5).
CHECKSUMS: dict[str, dict[str, str]] = {
    "mnist": {
        "train-images-idx3-ubyte.gz": "md5:f68b3c2dcbeaaa9fbdd348bbdeb94873",
        "train-labels-idx1-ubyte.gz": "md5:d53e105ee54ea40749a09fcbcd1e9432",
        "t10k-images-idx3-ubyte.gz": "md5:9fb629c4189551a2d022fa330f9573f3",
        "t10k-labels-idx1-ubyte.gz": "md5:ec29112dd5afa0611ce80d1b7f02629c",
    },
    "fashion-mnist": {
        "train-images-idx3-ubyte.gz": "md5:8d4fb7e6c68d591d4c3dfef9ec88bf0d",
        "train-labels-idx1-ubyte.gz": "md5:25c81989df183df01b3e8a0aad5dffbe",
        "t10k-images-idx3-ubyte.gz": "md5:bef4ecab320f06d8554ea6380940ec79",
        "t10k-labels-idx1-ubyte.gz": "md5:bb300cfdad3c16e7a12a480ee83cd310",
    },
    "cifar10": {"cifar-10-python.tar.gz": "md5:c58f30108f718f92721af3b95e74349a"},
}


class DownloadError(OSError):
    """No mirror delivered a file whose hash matches the registered one (one-line message)."""


def resolve_root(root: str | os.PathLike[str] | None = None) -> Path:
    """The data root: ``root`` if given, else ``$MALLEABILITY_DATA``, else pooch's OS cache folder
    (``~/.cache/malleability`` on Linux)."""
    if root is not None:
        return Path(root).expanduser()
    env = os.environ.get(DATA_ENV)
    if env:
        return Path(env).expanduser()
    return Path(pooch.os_cache("malleability"))


def fetch_file(
    dataset: str,
    filename: str,
    folder: str | os.PathLike[str],
    *,
    mirrors: Sequence[str] | None = None,
    checksums: Mapping[str, str] | None = None,
) -> Path:
    """Download ``filename`` of ``dataset`` into ``folder`` from the first mirror that serves it
    with the registered hash (``"md5:..."`` / ``"sha256:..."``); returns its path.

    Defaults: ``MIRRORS[dataset]`` and ``CHECKSUMS[dataset]``. Raises ``DownloadError`` when every
    mirror fails, naming each failure and where to place the file by hand.
    """
    folder = Path(folder)
    mirrors = MIRRORS[dataset] if mirrors is None else mirrors
    known_hash = (CHECKSUMS[dataset] if checksums is None else checksums)[filename]
    failures = []
    for base in mirrors:
        url = base.rstrip("/") + "/" + filename
        try:
            return Path(
                pooch.retrieve(
                    url,
                    known_hash=known_hash,
                    fname=filename,
                    path=folder,
                    progressbar=sys.stderr.isatty(),
                )
            )
        except (ValueError, OSError) as err:
            # ValueError: pooch's hash mismatch (its temporary file is already deleted);
            # OSError: network errors (requests' exceptions derive from it) and file errors.
            failures.append(f"{url}: {' '.join(str(err).split())}")
    raise DownloadError(
        f"{dataset}: could not download {filename} ({'; '.join(failures)}); "
        f"place a copy at {folder / filename} (--data-root / {DATA_ENV} choose the root)"
    )
