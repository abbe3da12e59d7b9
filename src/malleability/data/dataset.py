"""A loaded split: pixels, original labels, the selected classes and the preprocessing constants."""

from __future__ import annotations

from dataclasses import dataclass, field

import torch

from .preprocess import Preprocessing
from .subsets import Task, encode_targets, task_of


@dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a data set, after class selection and sampling.

    pixels: float32 N×C×H×W in [0, 1] (C = 1 for greyscale). labels: int64 N, the original class
    indices. indices: int64 N, each example's position in the full split. classes / class_names:
    the selected classes in the order given (it fixes the target encoding). mean / std: the
    per-channel preprocessing constants.
    """

    name: str
    split: str
    pixels: torch.Tensor = field(repr=False)
    labels: torch.Tensor = field(repr=False)
    indices: torch.Tensor = field(repr=False)
    classes: tuple[int, ...]
    class_names: tuple[str, ...]
    mean: tuple[float, ...]
    std: tuple[float, ...]

    def __len__(self) -> int:
        return self.pixels.shape[0]

    @property
    def task(self) -> Task:
        """Binary for two selected classes, multi-class otherwise."""
        return task_of(self.classes)

    @property
    def preprocessing(self) -> Preprocessing:
        """The module mapping this data set's pixels to network inputs."""
        return Preprocessing(self.mean, self.std)

    def inputs(self) -> torch.Tensor:
        """Network inputs z = rownorm(flatten((x − mean)/std)) of this split, float64 N×d."""
        return self.preprocessing(self.pixels)

    def targets(self) -> torch.Tensor:
        """float64 targets: N×1 with +1 for ``classes[0]`` and −1 for ``classes[1]`` (binary),
        else one-hot N×C with column j for ``classes[j]``."""
        return encode_targets(self.labels, self.classes)
