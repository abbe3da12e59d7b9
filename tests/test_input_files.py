"""Issue 29, class 5: a data file given to the audit (``--train``/``--test``) that is
truncated, garbage, empty, holds string labels, NaN inputs or pickled objects is a foreseen
one-line error naming the option and the file, never "unexpected" nor an internal ``x:``."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from malleability.data.arrays import read_array_file, read_inputs_file

X = np.random.default_rng(0).random((10, 4))
Y = np.arange(10) % 2


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("inputs")
    np.savez_compressed(d / "good.npz", x=X, y=Y)
    raw = (d / "good.npz").read_bytes()
    (d / "truncated.npz").write_bytes(raw[:len(raw) // 2])
    (d / "garbage.npz").write_bytes(b"garbage" * 10)
    np.savez(d / "empty.npz", x=np.zeros((0, 4)), y=np.zeros(0, int))
    np.savez(d / "strings.npz", x=X, y=np.array(["a", "b"] * 5))
    nan = X.copy()
    nan[0, 0] = np.nan
    np.savez(d / "nan.npz", x=nan, y=Y)
    np.savez(d / "keys.npz", X=X, y=Y)
    np.savez(d / "halves.npz", x=X, y=Y + 0.5)
    torch.save({"x": torch.tensor(X), "y": torch.tensor(Y)}, d / "good.pt")
    torch.save(torch.nn.Linear(2, 2), d / "module.pt")
    (d / "truncated.pt").write_bytes((d / "good.pt").read_bytes()[:200])
    return d


@pytest.mark.parametrize("name, expected", [
    ("truncated.npz", "unreadable .npz file (not a zip archive: truncated"),
    ("garbage.npz", "unreadable .npz file (not a zip archive: truncated"),
    ("empty.npz", "x: expected at least one row, got shape (0, 4)"),
    ("strings.npz", "y: expected integer class labels, got dtype <U1"),
    ("nan.npz", "x: 1 of 40 entries are NaN or infinite"),
    ("keys.npz", "no array 'x' (keys: X, y)"),
    ("halves.npz", "y: labels must be integers"),
    ("module.pt", "unreadable .pt file (it holds pickled Python objects"),
    ("truncated.pt", "unreadable .pt file"),
    ("missing.npz", "no such file"),
    ("data.csv", "expected a .npz or .pt file"),
])
def test_a_bad_inputs_file_is_one_line_naming_option_and_file(folder: Path, name: str,
                                                              expected: str) -> None:
    with pytest.raises(ValueError) as info:
        read_inputs_file(folder / name, "train")
    message = str(info.value)
    assert message.startswith(f"train ({name}): ") and expected in message
    assert "\n" not in message


def test_good_inputs_files_round_trip(folder: Path) -> None:
    for name in ("good.npz", "good.pt"):
        x, y = read_inputs_file(folder / name, "test")
        assert np.array_equal(x, X) and np.array_equal(y, Y) and y.dtype == np.int64


def test_a_truncated_image_file_is_foreseen(folder: Path) -> None:
    with pytest.raises(ValueError, match="unreadable .npz file"):
        read_array_file(folder / "truncated.npz", "train")
