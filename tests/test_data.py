"""Data layer: readers against the shared canonical files, subsets, encodings, preprocessing."""

from __future__ import annotations

import gzip
import os
import tarfile
from pathlib import Path

import numpy as np
import pytest
import torch
from sklearn.datasets import load_digits

from malleability.data import (
    DATASETS,
    Task,
    dataset_status,
    load_dataset,
    preprocess,
    read_idx,
    resolve_root,
    stratified_sample,
)
from malleability.data.download import DATA_ENV

SHARED = Path(
    os.environ.get(
        "MALLEABILITY_SHARED_DATA", Path(__file__).resolve().parents[2] / "shared" / "data"
    )
)
needs_shared = pytest.mark.skipif(
    not SHARED.is_dir(), reason=f"shared data folder {SHARED} absent (set MALLEABILITY_SHARED_DATA)"
)
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope="module")
def mnist():
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} absent (set MALLEABILITY_SHARED_DATA)")
    return {split: load_dataset("mnist", split, root=SHARED) for split in ("train", "test")}


@pytest.fixture(scope="module")
def cifar():
    if not SHARED.is_dir():
        pytest.skip(f"shared data folder {SHARED} absent (set MALLEABILITY_SHARED_DATA)")
    out = {}
    for split in ("train", "test"):
        with pytest.warns(UserWarning, match="2 of 5 CIFAR-10 training batches"):
            out[split] = load_dataset("cifar10", split, root=SHARED)
    return out


def _error(exc_type: type[Exception], fn, *parts: str) -> str:
    """Run fn, expecting a one-line exc_type message that mentions every one of ``parts``."""
    with pytest.raises(exc_type) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message
    for part in parts:
        assert part in message, message
    return message


# --- the shared canonical files ------------------------------------------------------------


def test_mnist_known_facts(mnist):
    train, test = mnist["train"], mnist["test"]
    assert test.labels[:10].tolist() == [7, 2, 1, 0, 4, 1, 4, 9, 5, 9]
    assert test.labels.bincount().tolist() == MNIST_TEST_COUNTS
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]
    assert train.pixels.shape == (60000, 1, 28, 28) and test.pixels.shape == (10000, 1, 28, 28)
    assert train.pixels.dtype == torch.float32 and train.labels.dtype == torch.int64
    assert test.pixels.min() == 0 and test.pixels.max() == 1
    assert torch.equal((test.pixels * 255).round() / 255, test.pixels)
    assert train.mean == (0.1307,) and train.std == (0.3081,)
    assert train.task is Task.MULTICLASS and train.classes == tuple(range(10))


@needs_shared
def test_fashion_mnist_loads():
    test = load_dataset("fashion-mnist", "test", root=SHARED, classes="trouser,Ankle boot")
    assert test.pixels.shape == (2000, 1, 28, 28)
    assert test.classes == (1, 9) and test.class_names == ("Trouser", "Ankle boot")
    train = load_dataset("fashion-mnist", root=SHARED)
    assert train.pixels.shape == (60000, 1, 28, 28)
    assert train.labels.bincount().tolist() == [6000] * 10
    assert train.mean == (0.2860,) and train.std == (0.3530,)


def test_cifar_subset(cifar):
    train, test = cifar["train"], cifar["test"]
    assert train.pixels.shape == (20000, 3, 32, 32) and test.pixels.shape == (10000, 3, 32, 32)
    assert test.labels.bincount().tolist() == [1000] * 10
    means = train.pixels.mean(dim=(2, 3)).mean(dim=0).double()
    np.testing.assert_allclose(means.numpy(), [0.491, 0.482, 0.447], atol=5e-3, rtol=0)
    assert train.class_names[:2] == ("airplane", "automobile")
    assert train.mean == (0.5, 0.5, 0.5) and train.std == (0.5, 0.5, 0.5)


@needs_shared
def test_cifar_binary_subset_from_the_cached_archive():
    with pytest.warns(UserWarning, match="2 of 5"):
        ds = load_dataset("cifar10", "test", root=SHARED, classes="automobile,airplane", n=50)
    assert ds.classes == (1, 0) and ds.task is Task.BINARY
    assert set(ds.labels.tolist()) == {0, 1}
    targets = ds.targets()
    assert targets.shape == (50, 1) and targets.dtype == torch.float64
    assert torch.equal(targets[:, 0], torch.where(ds.labels == 1, 1.0, -1.0).double())


@needs_shared
def test_status_of_the_shared_root():
    rows = {row["name"]: row for row in dataset_status(SHARED)}
    assert set(rows) == set(DATASETS)
    assert all(row["available"] for row in rows.values())
    assert rows["cifar10"]["path"] == str(SHARED / "cifar-10-subset")
    assert rows["mnist"]["path"] == str(SHARED / "mnist")


# --- local layouts and readers ---------------------------------------------------------------


def test_cifar_archive_and_extracted_folder(tiny_data, tmp_path):
    archive = tiny_data.files["cifar10"]["cifar-10-python.tar.gz"]
    (tmp_path / "a" / "cifar10").mkdir(parents=True)
    (tmp_path / "a" / "cifar10" / "cifar-10-python.tar.gz").write_bytes(archive)
    extracted = tmp_path / "b" / "cifar-10-subset"
    extracted.mkdir(parents=True)
    with tarfile.open(tmp_path / "a" / "cifar10" / "cifar-10-python.tar.gz") as tar:
        tar.extractall(extracted, filter="data")
    images, labels = tiny_data.arrays["cifar10"]["train"]
    for root in (tmp_path / "a", tmp_path / "b"):
        ds = load_dataset("cifar10", root=root, download=False)
        np.testing.assert_array_equal((ds.pixels * 255).round().numpy(), images)
        np.testing.assert_array_equal(ds.labels.numpy(), labels)
    for b in (3, 4, 5):
        (extracted / "cifar-10-batches-py" / f"data_batch_{b}").unlink()
    with pytest.warns(UserWarning, match="2 of 5 CIFAR-10 training batches"):
        ds = load_dataset("cifar10", root=tmp_path / "b", download=False)
    assert len(ds) == 20


def test_idx_is_told_by_magic_bytes_not_name(tiny_data, tmp_path):
    gz = tiny_data.files["mnist"]["t10k-labels-idx1-ubyte.gz"]
    plain = tmp_path / "labels.gz"  # not gzipped, despite its name
    plain.write_bytes(gzip.decompress(gz))
    packed = tmp_path / "labels"
    packed.write_bytes(gz)
    expected = tiny_data.arrays["mnist"]["test"][1]
    np.testing.assert_array_equal(read_idx(plain), expected)
    np.testing.assert_array_equal(read_idx(packed), expected)
    (tmp_path / "short").write_bytes(gzip.decompress(gz)[:-3])
    _error(ValueError, lambda: read_idx(tmp_path / "short"), "short", "IDX header")
    (tmp_path / "junk").write_bytes(b"\x01\x02\x03\x04rest")
    _error(ValueError, lambda: read_idx(tmp_path / "junk"), "junk", "not an IDX file")


def test_resolve_root_precedence(tmp_path, monkeypatch):
    monkeypatch.setenv(DATA_ENV, str(tmp_path / "env"))
    assert resolve_root(tmp_path / "arg") == tmp_path / "arg"
    assert resolve_root() == tmp_path / "env"
    monkeypatch.delenv(DATA_ENV)
    assert resolve_root().name == "malleability"


# --- digits, the offline default -------------------------------------------------------------


def _rows(pixels: torch.Tensor, scale: float) -> list[bytes]:
    values = (pixels * scale).round().to(torch.uint8).reshape(len(pixels), -1).numpy()
    return sorted(map(bytes, values))


def test_digits_split_is_a_fixed_stratified_partition():
    train, test = load_dataset("digits"), load_dataset("digits", "test")
    assert (len(train), len(test)) == (1297, 500)
    assert train.pixels.shape[1:] == (1, 8, 8) and train.pixels.max() == 1
    digits = load_digits()
    share = np.bincount(digits.target) / len(digits.target)
    assert np.abs(test.labels.bincount().numpy() - 500 * share).max() < 1
    full = sorted(map(bytes, digits.images.astype(np.uint8).reshape(len(digits.images), -1)))
    assert sorted(_rows(train.pixels, 16) + _rows(test.pixels, 16)) == full


def test_digits_constants_are_its_training_statistics():
    train = load_dataset("digits")
    x = train.pixels.double()
    assert train.mean[0] == pytest.approx(x.mean().item(), abs=1e-4)
    assert train.std[0] == pytest.approx(x.std(correction=0).item(), abs=1e-4)


# --- subsets and encodings -------------------------------------------------------------------


def test_stratified_allocation_is_largest_remainder():
    labels = np.repeat([0, 1, 2], [70, 20, 10])
    for n, want in ((10, [7, 2, 1]), (15, [11, 3, 1]), (100, [70, 20, 10]), (1, [1, 0, 0])):
        index = stratified_sample(labels, n, seed=0)
        assert np.bincount(labels[index], minlength=3).tolist() == want
        assert len(index) == n and (np.diff(index) > 0).all()


def test_sampling_keeps_proportions_and_is_reproducible(mnist):
    full = mnist["test"]
    share = torch.tensor(MNIST_TEST_COUNTS) / 10000
    for n in (37, 500):
        ds = load_dataset("mnist", "test", root=SHARED, n=n, seed=1)
        assert len(ds) == n
        assert (ds.labels.bincount(minlength=10) - n * share).abs().max() < 1
        assert torch.equal(ds.pixels, full.pixels[ds.indices])
        assert torch.equal(ds.labels, full.labels[ds.indices])
    a, b, c = (load_dataset("mnist", "test", root=SHARED, n=200, seed=s) for s in (3, 3, 4))
    assert torch.equal(a.indices, b.indices) and not torch.equal(a.indices, c.indices)


def test_binary_subset_and_its_targets(mnist):
    ds = load_dataset("mnist", "test", root=SHARED, classes="3,8", n=300, seed=0)
    assert set(ds.labels.tolist()) == {3, 8} and ds.task is Task.BINARY
    assert ds.labels.bincount(minlength=10)[[3, 8]].tolist() == [153, 147]  # 1010 : 974
    targets = ds.targets()
    assert targets.shape == (300, 1) and targets.dtype == torch.float64
    assert torch.equal(targets[:, 0], torch.where(ds.labels == 3, 1.0, -1.0).double())
    flipped = load_dataset("mnist", "test", root=SHARED, classes=[8, 3], n=300, seed=0)
    assert torch.equal(flipped.indices, ds.indices)
    assert torch.equal(flipped.targets(), -targets)


def test_multiclass_targets_are_one_hot_in_selected_order():
    ds = load_dataset("digits", classes=[7, "2", 5], n=30, seed=2)
    assert ds.classes == (7, 2, 5) and ds.class_names == ("7", "2", "5")
    assert ds.task is Task.MULTICLASS
    targets = ds.targets()
    assert targets.shape == (30, 3) and targets.dtype == torch.float64
    assert torch.equal(targets.sum(dim=1), torch.ones(30, dtype=torch.float64))
    assert torch.equal(torch.tensor(ds.classes)[targets.argmax(dim=1)], ds.labels)


def test_status_of_an_empty_root(tmp_path):
    rows = {row["name"]: row for row in dataset_status(tmp_path)}
    assert rows["digits"]["available"]
    assert not rows["mnist"]["available"] and len(rows["mnist"]["missing"]) == 4
    assert rows["cifar10"]["path"] == str(tmp_path / "cifar10")


# --- preprocessing ---------------------------------------------------------------------------


def test_preprocess_formula_and_unit_rows():
    x = torch.rand(5, 3, 4, 4, generator=torch.Generator().manual_seed(0))
    mean, std = np.array([0.2, 0.5, 0.7]), np.array([0.1, 0.3, 0.9])
    z = preprocess(x, tuple(mean), tuple(std))
    assert z.dtype == torch.float64 and z.shape == (5, 48)
    manual = ((x.double().numpy() - mean[:, None, None]) / std[:, None, None]).reshape(5, -1)
    manual /= np.linalg.norm(manual, axis=1, keepdims=True)
    np.testing.assert_allclose(z.numpy(), manual, rtol=1e-12)
    np.testing.assert_allclose(z.norm(dim=1).numpy(), 1.0, rtol=1e-12)


def test_inputs_are_differentiable_in_pixels():
    ds = load_dataset("digits", n=20)
    pixels = ds.pixels.clone().requires_grad_(True)
    z = ds.preprocessing(pixels)
    assert torch.equal(z.detach(), ds.inputs())
    (z @ torch.linspace(-1, 1, 64, dtype=torch.float64)).sum().backward()
    assert pixels.grad is not None and pixels.grad.abs().sum() > 0
    assert torch.isfinite(pixels.grad).all()
    moved = ds.preprocessing((ds.pixels + 0.1).clamp(0, 1))
    assert not torch.allclose(moved, ds.inputs())

    # Directional derivative against a central difference, in float64.
    gen = torch.Generator().manual_seed(1)
    probe, v, w = (torch.rand(2, 1, 3, 3, dtype=torch.float64, generator=gen) for _ in range(3))
    probe.requires_grad_(True)

    def f(p: torch.Tensor) -> torch.Tensor:
        return (preprocess(p, (0.3,), (0.4,)) * w.reshape(2, 9)).sum()

    (grad,) = torch.autograd.grad(f(probe), probe)
    h = 1e-6
    numeric = (f(probe + h * v) - f(probe - h * v)) / (2 * h)
    assert abs((grad * v).sum().item() - numeric.item()) < 1e-7


# --- a user's array files --------------------------------------------------------------------


def test_user_array_files(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.random((12, 5, 5, 3)).astype(np.float32)  # N×H×W×C
    y = np.arange(12) % 3
    np.savez(tmp_path / "plain.npz", images=x, labels=y)
    ds = load_dataset(str(tmp_path / "plain.npz"), classes="0,2")
    np.testing.assert_array_equal(ds.pixels.numpy(), x[y != 1].transpose(0, 3, 1, 2))
    assert ds.class_names == ("0", "2") and ds.mean == (0.5,) * 3 and ds.std == (0.5,) * 3
    assert ds.inputs().shape == (8, 75)

    u8 = rng.integers(0, 256, (6, 4, 4), dtype=np.uint8)
    np.savez(
        tmp_path / "both.npz",
        x_train=rng.random((4, 4, 4)),
        y_train=[0, 1, 0, 1],
        x_test=u8,
        y_test=np.arange(6) % 2,
        class_names=np.array(["cat", "dog"]),
        mean=[0.4],
        std=[0.2],
    )
    test = load_dataset(str(tmp_path / "both.npz"), "test", classes="dog,cat")
    np.testing.assert_allclose(test.pixels[:, 0].numpy(), u8 / 255, rtol=1e-6)
    assert test.classes == (1, 0) and test.mean == (0.4,) and test.std == (0.2,)
    assert torch.equal(test.targets()[:, 0], torch.where(test.labels == 1, 1.0, -1.0).double())
    assert len(load_dataset(str(tmp_path / "both.npz"))) == 4

    torch.save({"x": torch.from_numpy(x), "y": torch.from_numpy(y)}, tmp_path / "t.pt")
    np.save(tmp_path / "imgs.npy", x)
    np.save(tmp_path / "imgs_labels.npy", y)
    for name in ("t.pt", "imgs.npy"):
        other = load_dataset(str(tmp_path / name), classes="0,2")
        assert torch.equal(other.pixels, ds.pixels) and torch.equal(other.labels, ds.labels)


# --- bad input: one-line ValueErrors naming the argument -------------------------------------


def _npz(tmp_path: Path, x: object = None, y: object = None, **extra: object) -> str:
    x = np.full((6, 4, 4), 0.5) if x is None else x
    y = np.array([0, 1, 2, 0, 1, 2]) if y is None else y
    np.savez(tmp_path / "user.npz", x=x, y=y, **extra)
    return str(tmp_path / "user.npz")


NAN = np.where(np.eye(4, dtype=bool), np.nan, 0.5)[None].repeat(6, 0)
BAD_INPUT = {
    "unknown dataset": (lambda p: load_dataset("imagenet"), ("name", "imagenet")),
    "name not a string": (lambda p: load_dataset(3), ("name",)),
    "unknown class name": (
        lambda p: load_dataset("digits", classes="3,eight"),
        ("classes", "eight"),
    ),
    "class index out of range": (
        lambda p: load_dataset("digits", classes=[3, 12]),
        ("classes", "12"),
    ),
    "one class": (lambda p: load_dataset("digits", classes="3"), ("classes",)),
    "class twice": (lambda p: load_dataset("digits", classes="3,3"), ("classes",)),
    "n too large": (
        lambda p: load_dataset("digits", "test", classes="3,8", n=1000),
        ("n:", "1000", "at most"),
    ),
    "n zero": (lambda p: load_dataset("digits", n=0), ("n:",)),
    "negative seed": (lambda p: load_dataset("digits", seed=-1), ("seed",)),
    "unknown split": (lambda p: load_dataset("digits", "valid"), ("split", "valid")),
    "empty class": (
        lambda p: load_dataset(_npz(p, y=[0, 0, 2, 2, 0, 2])),
        ("classes", "class 1", "user.npz"),
    ),
    "NaN pixels": (lambda p: load_dataset(_npz(p, x=NAN)), ("name", "user.npz", "NaN")),
    "pixels above 1": (lambda p: load_dataset(_npz(p, x=np.full((6, 4, 4), 2.0))), ("[0, 1]",)),
    "label beyond class names": (
        lambda p: load_dataset(_npz(p, y=[0, 1, 5, 0, 1, 2], class_names=["a", "b", "c"])),
        ("name", "user.npz", "out of range"),
    ),
    "negative label": (
        lambda p: load_dataset(_npz(p, y=[0, 1, -1, 0, 1, 2])),
        ("name", "user.npz", "out of range"),
    ),
    "fractional labels": (lambda p: load_dataset(_npz(p, y=np.full(6, 0.5))), ("integers",)),
    "label count": (lambda p: load_dataset(_npz(p, y=[0, 1])), ("name", "labels", "6")),
    "flat images": (lambda p: load_dataset(_npz(p, x=np.zeros((6, 16)))), ("name", "shape")),
    "no such file": (lambda p: load_dataset(str(p / "nope.npz")), ("name", "nope.npz")),
    "pixels not 4-d": (lambda p: preprocess(torch.zeros(2, 8, 8), (0.5,), (0.5,)), ("pixels",)),
    "mean per channel": (
        lambda p: preprocess(torch.zeros(2, 3, 2, 2), (0.5,), (0.5, 0.5, 0.5)),
        ("mean", "3"),
    ),
    "zero std": (lambda p: preprocess(torch.zeros(2, 1, 2, 2), (0.5,), (0.0,)), ("std",)),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUT))
def test_bad_input_is_a_one_line_value_error(case, tmp_path):
    call, parts = BAD_INPUT[case]
    _error(ValueError, lambda: call(tmp_path), *parts)
