"""A feature matrix file (network inputs, n × d) for the diagnostic: .npy, .pt or .csv."""

from __future__ import annotations

import pickle
import zipfile
from pathlib import Path

import numpy as np
import torch

from .._validation import as_tensor
from ..diagnostic import check_input_scale

FEATURE_SUFFIXES = (".npy", ".pt", ".csv")
_NPY_MAGIC = b"\x93NUMPY"


def read_feature_file(path: str | Path) -> torch.Tensor:
    """An (n × d) float64 matrix from a .npy array, a tensor saved with ``torch.save`` (.pt)
    or a comma-separated .csv, refused with a one-line ValueError naming the file when it is
    unreadable, not a real 2-d numeric matrix, non-finite, or too large for the diagnostic.
    """
    path = Path(path)
    where = f"features ({path})"
    suffix = path.suffix.lower()
    if suffix not in FEATURE_SUFFIXES:
        raise ValueError(f"{where}: expected a .npy, .pt or .csv file, got suffix "
                         f"{suffix or 'none'!r}")
    try:
        if suffix == ".npy":
            with path.open("rb") as fh:
                if fh.read(len(_NPY_MAGIC)) != _NPY_MAGIC:
                    raise ValueError("no NumPy .npy header; expected a file written by numpy.save")
            data = np.load(path, allow_pickle=False)
        elif suffix == ".pt":
            data = torch.load(path, map_location="cpu", weights_only=True)
        else:
            data = np.loadtxt(path, delimiter=",", ndmin=2)
    except (OSError, ValueError, RuntimeError, EOFError, pickle.UnpicklingError,
            zipfile.BadZipFile) as err:
        reason = " ".join(str(err).split())
        raise ValueError(f"{where}: unreadable {suffix} file ({reason})") from None
    if suffix == ".pt" and not isinstance(data, torch.Tensor):
        raise ValueError(f"{where}: expected a tensor saved with torch.save, got a "
                         f"{type(data).__name__}")
    x = as_tensor(data, where, ndim=2)
    return check_input_scale(x, where)
