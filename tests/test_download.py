"""Downloads against a real HTTP server on 127.0.0.1 serving tiny files in the canonical formats."""

from __future__ import annotations

import gzip
import hashlib
import re
import threading
import warnings
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from malleability.data import (
    CHECKSUMS,
    DATASETS,
    MIRRORS,
    DownloadError,
    dataset_status,
    fetch_file,
    load_dataset,
)

MNIST_TEST = ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")
IMAGES = MNIST_TEST[0]


def _md5(data: bytes) -> str:
    return "md5:" + hashlib.md5(data).hexdigest()


@pytest.fixture
def server(tiny_data):
    """Serves tiny_data's files by name; paths under /gone/ answer 404. ``requests`` lists the
    names asked for; names in ``cut`` send half the body under the full Content-Length."""
    state = SimpleNamespace(
        files={name: data for files in tiny_data.files.values() for name, data in files.items()},
        requests=[],
        cut=set(),
    )

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            name = self.path.rsplit("/", 1)[-1]
            state.requests.append(name)
            body = state.files.get(name)
            if body is None or self.path.startswith("/gone/"):
                self.send_error(404)
                return
            self.send_response(200)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body[: len(body) // 2] if name in state.cut else body)

        def log_message(self, *args: object) -> None:
            pass

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.01,), daemon=True)
    thread.start()
    state.url = f"http://127.0.0.1:{httpd.server_port}/"
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture
def registered(server, tiny_data, monkeypatch):
    """Point the mnist and cifar10 registries at the local server, with the tiny files' md5s."""
    for name, files in tiny_data.files.items():
        monkeypatch.setitem(MIRRORS, name, (server.url,))
        monkeypatch.setitem(CHECKSUMS, name, {f: _md5(data) for f, data in files.items()})
    return server


def _one_line(err: pytest.ExceptionInfo, *parts: str) -> str:
    message = str(err.value)
    assert "\n" not in message
    for part in parts:
        assert part in message
    return message


def test_download_verifies_then_later_loads_use_the_cache(registered, tiny_data, tmp_path):
    ds = load_dataset("mnist", split="test", root=tmp_path)
    images, labels = tiny_data.arrays["mnist"]["test"]
    np.testing.assert_array_equal(ds.labels.numpy(), labels)
    np.testing.assert_array_equal((ds.pixels * 255).round().numpy().astype(np.uint8), images)
    assert sorted(registered.requests) == sorted(MNIST_TEST)
    assert sorted(p.name for p in (tmp_path / "mnist").iterdir()) == sorted(MNIST_TEST)

    again = load_dataset("mnist", split="test", root=tmp_path)
    assert len(registered.requests) == 2
    assert np.array_equal(again.pixels.numpy(), ds.pixels.numpy())
    status = {row["name"]: row for row in dataset_status(tmp_path)}["mnist"]
    assert not status["available"] and "t10k-images-idx3-ubyte.gz" not in status["missing"]


def test_cifar_download_lands_in_cifar10_folder(registered, tiny_data, tmp_path):
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # all five batches: no warning
        train = load_dataset("cifar10", root=tmp_path, classes="automobile,airplane")
        test = load_dataset("cifar10", split="test", root=tmp_path)
    assert registered.requests == ["cifar-10-python.tar.gz"]
    assert (tmp_path / "cifar10" / "cifar-10-python.tar.gz").is_file()
    images, labels = tiny_data.arrays["cifar10"]["train"]
    keep = np.isin(labels, [0, 1])
    np.testing.assert_array_equal((train.pixels * 255).round().numpy(), images[keep])
    assert train.classes == (1, 0) and train.pixels.shape == (10, 3, 32, 32)
    assert test.pixels.shape == (10, 3, 32, 32)


def test_next_mirror_is_tried(server, tmp_path):
    data = server.files[IMAGES]
    path = fetch_file(
        "mnist",
        IMAGES,
        tmp_path,
        mirrors=(server.url + "gone/", server.url),
        checksums={IMAGES: _md5(data)},
    )
    assert path.read_bytes() == data
    assert server.requests == [IMAGES, IMAGES]


@pytest.mark.parametrize("fault", ["wrong checksum", "short file", "dropped connection"])
def test_bad_download_is_rejected_and_not_cached(fault, registered, tmp_path):
    full = registered.files[IMAGES]
    if fault == "wrong checksum":
        CHECKSUMS["mnist"][IMAGES] = "md5:" + "0" * 32
    elif fault == "short file":
        registered.files[IMAGES] = full[: len(full) // 2]
    else:
        registered.cut.add(IMAGES)
    with pytest.raises(DownloadError) as err:
        load_dataset("mnist", split="test", root=tmp_path)
    _one_line(err, "mnist", IMAGES, registered.url, str(tmp_path / "mnist" / IMAGES))
    if fault != "dropped connection":
        assert re.search("hash", str(err.value), re.IGNORECASE)
    assert not (tmp_path / "mnist" / IMAGES).exists()
    leftovers = {p.name for p in (tmp_path / "mnist").iterdir()} - {MNIST_TEST[1]}
    assert leftovers == set()

    # Repaired source: the next load downloads again instead of trusting a bad copy.
    CHECKSUMS["mnist"][IMAGES] = _md5(full)
    registered.files[IMAGES] = full
    registered.cut.clear()
    assert len(load_dataset("mnist", split="test", root=tmp_path)) == 20
    assert registered.requests.count(IMAGES) == 2


def test_offline_errors_say_what_to_place_where(registered, tmp_path, monkeypatch):
    monkeypatch.setitem(MIRRORS, "mnist", (registered.url + "gone/",))
    with pytest.raises(DownloadError) as err:
        load_dataset("mnist", root=tmp_path)
    _one_line(err, "train-images-idx3-ubyte.gz", str(tmp_path / "mnist"))
    requests = len(registered.requests)
    with pytest.raises(FileNotFoundError) as err:
        load_dataset("mnist", split="test", root=tmp_path, download=False)
    _one_line(err, *MNIST_TEST, str(tmp_path / "mnist"))
    assert len(registered.requests) == requests


def test_local_copies_are_read_without_checksums(registered, tiny_data, tmp_path):
    # Re-gzipped (different .gz bytes, same content) and uncompressed copies, as in shared/data.
    folder = tmp_path / "mnist"
    folder.mkdir()
    for name, data in tiny_data.files["mnist"].items():
        raw = gzip.decompress(data)
        if name.startswith("t10k"):
            (folder / name).write_bytes(gzip.compress(raw, compresslevel=1, mtime=1))
            assert (folder / name).read_bytes() != data
        else:
            (folder / name.removesuffix(".gz")).write_bytes(raw)
    for split in ("train", "test"):
        ds = load_dataset("mnist", split=split, root=tmp_path)
        np.testing.assert_array_equal(ds.labels.numpy(), tiny_data.arrays["mnist"][split][1])
    assert registered.requests == []


def test_every_registered_file_has_mirrors_and_an_md5():
    for spec in DATASETS.values():
        for name in {f for files in spec.files.values() for f in files}:
            assert MIRRORS[spec.name]
            assert re.fullmatch("md5:[0-9a-f]{32}", CHECKSUMS[spec.name][name])


def test_fetch_file_uses_the_registry_by_default(registered, tmp_path):
    path = fetch_file("mnist", IMAGES, tmp_path / "x")
    assert path == tmp_path / "x" / IMAGES and path.read_bytes() == registered.files[IMAGES]
    assert isinstance(path, Path)
