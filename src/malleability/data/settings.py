"""Which data a run uses: the data set, the classes, and the three sample sizes
(docs/method.md §1): the network trains on n_train points; kernels, influence, attacks and
flip rates use a seeded stratified subset of n_influence of them and n_test test points."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._validation import check_positive_int, check_seed
from ..settings import Settings, setting
from .registry import DATASETS

ARRAY_SUFFIXES = (".npz", ".pt", ".npy")


def _check_dataset(value: str, name: str) -> str:
    if value.lower() in DATASETS or Path(value).suffix.lower() in ARRAY_SUFFIXES:
        return value
    raise ValueError(f"{name}: expected one of {', '.join(DATASETS)} or a "
                     f"{'/'.join(ARRAY_SUFFIXES)} file, got {value!r}")


def _full_as_none(value: Any) -> Any:
    return None if value == "full" else value


@dataclass(frozen=True)
class DataSettings(Settings):
    """A data task: data set, class subset (None = all), stratified sizes and sampling seed."""

    dataset: str = setting("digits", "Data set (see `malleability datasets`) or an array file.",
                           _check_dataset)
    classes: str | None = setting(None, "Class subset, e.g. 3,8 or automobile,airplane "
                                        "(default: all classes).")
    n_train: int | None = setting(500, "Training points the network trains on (stratified); "
                                       "'full' = the whole training split.", check_positive_int,
                                  flag="--n", parse=_full_as_none)
    n_influence: int | None = setting(None, "Seeded stratified subset of the training points "
                                            "for kernels, influence, attacks and flip rates "
                                            "(default: all n_train).", check_positive_int)
    n_test: int = setting(200, "Test points (stratified).", check_positive_int)
    seed: int = setting(0, "Seed of the stratified subsets.", check_seed)

    def check_relations(self) -> None:
        if None not in (self.n_influence, self.n_train) and self.n_influence > self.n_train:
            raise ValueError(f"n_influence: expected at most n_train ({self.n_train}), "
                             f"got {self.n_influence}")

    @property
    def label(self) -> str:
        """e.g. ``mnist`` or ``mnist 3,8``."""
        return self.dataset if self.classes is None else f"{self.dataset} {self.classes}"
