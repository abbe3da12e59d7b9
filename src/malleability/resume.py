"""Resuming a killed training: inside ``with resumable(store):``, :func:`~.training.train`
saves its state to ``store`` between epochs, and a training whose inputs match a saved state
continues from it, bitwise as if it had not stopped (same device, dtype and threads).

Only :func:`~.training.train` saves (not ``train_batched`` or the training of trainable
projections), and only with no adversary or a dataclass one such as
:class:`~.interventions.RampedAdversary`. A training is known by :func:`training_key`: a
SHA-256 of its inputs (the network's initial state, the data, the settings that change the
result, the adversary). Long cells (hours of PGD adversarial training on CIFAR-10) then survive
a machine that is taken back: the next run loses at most ``every`` seconds of each training.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from contextvars import ContextVar
from typing import Any, Protocol

import torch

from ._validation import check_nonnegative


class CheckpointStore(Protocol):
    """Where trainings keep their state: ``load(key)`` → the saved state or None."""

    def load(self, key: str) -> dict[str, Any] | None: ...

    def save(self, key: str, state: dict[str, Any]) -> None: ...


@dataclasses.dataclass(frozen=True)
class _Active:
    store: CheckpointStore
    every: float


_ACTIVE: ContextVar[_Active | None] = ContextVar("malleability_resumable", default=None)


@contextmanager
def resumable(store: CheckpointStore, every: float = 60.0) -> Iterator[None]:
    """Within the block, trainings save their state to ``store`` after an epoch once
    ``every`` seconds have passed since their last save (and after their last epoch), and
    resume from a saved state with their key."""
    token = _ACTIVE.set(_Active(store, check_nonnegative(every, "every")))
    try:
        yield
    finally:
        _ACTIVE.reset(token)


def training_key(tensors: Sequence[torch.Tensor | None], described: dict[str, Any]) -> str:
    """SHA-256 (hex) of ``tensors`` (dtype, shape and bytes; None as such) and of
    ``described`` as sorted JSON."""
    digest = hashlib.sha256()
    for t in tensors:
        if t is None:
            digest.update(b"none")
            continue
        t = t.detach().cpu().contiguous()
        digest.update(f"{t.dtype}{tuple(t.shape)}".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy())
    digest.update(json.dumps(described, sort_keys=True, default=str).encode())
    return digest.hexdigest()


@dataclasses.dataclass
class ResumePoint:
    """One training's place in the active store: its ``key``, and when it last saved."""

    store: CheckpointStore
    key: str
    every: float
    last: float = dataclasses.field(default_factory=time.monotonic)

    def load(self) -> dict[str, Any] | None:
        return self.store.load(self.key)

    def save(self, state: Callable[[], dict[str, Any]], final: bool) -> None:
        """Save ``state()`` when ``every`` seconds have passed since the last save, or at
        the training's ``final`` epoch."""
        if final or time.monotonic() - self.last >= self.every:
            self.store.save(self.key, state())
            self.last = time.monotonic()


def resume_point(tensors: Sequence[torch.Tensor | None],
                 described: dict[str, Any]) -> ResumePoint | None:
    """The training's :class:`ResumePoint` inside :func:`resumable`, else None."""
    active = _ACTIVE.get()
    if active is None:
        return None
    return ResumePoint(active.store, training_key(tensors, described), active.every)
