"""Class selection, stratified seeded sampling and label encodings (docs/method.md §1)."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import numpy as np
import torch


class Task(enum.StrEnum):
    """Ten-class (one-hot targets, cross-entropy) or two-class (±1 targets, squared error)."""

    MULTICLASS = "multiclass"
    BINARY = "binary"


def parse_classes(
    classes: str | int | Sequence[int | str] | None, class_names: Sequence[str]
) -> tuple[int, ...]:
    """Selected original class indices, in the order given.

    ``classes``: None (all), or indices and/or names (case-insensitive), as a comma-separated
    string (``"3,8"``, ``"automobile,airplane"``) or a sequence; tokens that are integers are
    indices. At least two distinct classes.
    """
    if classes is None:
        return tuple(range(len(class_names)))
    if isinstance(classes, str):
        tokens: list[int | str] = list(classes.split(","))
    elif isinstance(classes, (int, np.integer)):
        tokens = [classes]
    else:
        tokens = list(classes)
    tokens = [t.strip() if isinstance(t, str) else t for t in tokens]
    by_name = {name.lower(): i for i, name in enumerate(class_names)}
    chosen: list[int] = []
    for token in tokens:
        if isinstance(token, (int, np.integer)) and not isinstance(token, bool):
            index = int(token)
        elif isinstance(token, str) and token.lstrip("-").isdigit():
            index = int(token)
        elif isinstance(token, str) and token.lower() in by_name:
            index = by_name[token.lower()]
        else:
            raise ValueError(
                f"classes: unknown class {token!r}; expected an index or one of "
                f"{', '.join(class_names)}"
            )
        if not 0 <= index < len(class_names):
            raise ValueError(f"classes: class index {index} out of range 0..{len(class_names) - 1}")
        if index in chosen:
            raise ValueError(f"classes: class {token!r} selected twice")
        chosen.append(index)
    if len(chosen) < 2:
        raise ValueError(f"classes: expected at least two classes, got {classes!r}")
    return tuple(chosen)


def stratified_sample(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Sorted indices of ``n`` entries of ``labels``, stratified by label.

    Class c gets ⌊n·n_c/N⌋ entries plus one for the classes with the largest remainders of
    n·n_c/N (ties: smaller label first), drawn without replacement with
    ``numpy.random.default_rng(seed)``, class by class in increasing label order.
    """
    values, counts = np.unique(labels, return_counts=True)
    total = int(counts.sum())
    if not 0 <= n <= total:
        raise ValueError(f"n: expected at most {total}, got {n}")
    quota, remainder = np.divmod(n * counts, total)
    quota[np.argsort(-remainder, kind="stable")[: n - int(quota.sum())]] += 1
    rng = np.random.default_rng(seed)
    picked = [
        rng.choice(np.flatnonzero(labels == value), size=int(k), replace=False)
        for value, k in zip(values, quota, strict=True)
    ]
    return np.sort(np.concatenate(picked))


def select_indices(
    labels: np.ndarray,
    classes: Sequence[int],
    n: int | None,
    seed: int,
    where: str = "the data",
) -> np.ndarray:
    """Sorted indices of the examples of ``classes``: all of them (``n`` None) or a stratified
    sample of ``n``. Every selected class must have at least one example in ``labels``."""
    counts = np.bincount(labels, minlength=max(classes) + 1)
    for c in classes:
        if counts[c] == 0:
            raise ValueError(f"classes: class {c} has no examples in {where}")
    pool = np.flatnonzero(np.isin(labels, classes))
    if n is None:
        return pool
    if n > len(pool):
        raise ValueError(
            f"n: expected at most {len(pool)} (the examples of classes "
            f"{','.join(map(str, classes))} in {where}), got {n}"
        )
    return pool[stratified_sample(labels[pool], n, seed)]


def task_of(classes: Sequence[int]) -> Task:
    """Binary for two selected classes, multi-class otherwise."""
    return Task.BINARY if len(classes) == 2 else Task.MULTICLASS


def encode_targets(labels: torch.Tensor, classes: Sequence[int]) -> torch.Tensor:
    """Training targets, float64: binary → N×1 with +1 for ``classes[0]`` and −1 for
    ``classes[1]``; multi-class → one-hot N×C, column j for ``classes[j]``."""
    size = max(max(classes), int(labels.max()) if labels.numel() else 0) + 1
    lookup = torch.full((size,), -1, dtype=torch.int64)
    lookup[list(classes)] = torch.arange(len(classes))
    position = lookup[labels]
    if bool((position < 0).any()):
        raise ValueError(f"labels: contain classes outside the selected {tuple(classes)}")
    if task_of(classes) is Task.BINARY:
        return (1.0 - 2.0 * position.to(torch.float64)).unsqueeze(1)
    return torch.nn.functional.one_hot(position, len(classes)).to(torch.float64)
