"""The spectral diagnostic (Theorem 4.8, Remark 4.10, A.12 step 1) per data set and class
subset, and κ as a function of n (the paper's κ depends on an n it does not state)."""

from __future__ import annotations

from dataclasses import dataclass

from ..data import load_dataset
from ..diagnostic import diagnose
from .common import DataSettings, RunContext


@dataclass(frozen=True)
class SpectrumSettings:
    """``ns``: subset sizes for the κ(n) curve; ``full``: also the whole training split."""

    tasks: tuple[DataSettings, ...] = (DataSettings(),)
    ns: tuple[int, ...] = (100, 200, 500, 1000)
    full: bool = True


def cells(s: SpectrumSettings) -> list[dict]:
    sizes: list[int | str] = [*s.ns, *(["full"] if s.full else [])]
    return [{"task": t.label, "n": n} for t in s.tasks for n in sizes]


def run(s: SpectrumSettings, cell: dict, ctx: RunContext) -> dict:
    task = next(t for t in s.tasks if t.label == cell["task"])
    n = None if cell["n"] == "full" else int(cell["n"])
    ds = load_dataset(task.dataset, "train", root=ctx.data_root, classes=task.classes, n=n,
                      seed=task.seed)
    result = diagnose(ds.features(), seed=task.seed)
    return {**result.to_dict(), "eigenvalues": result.inputs.eigenvalues,
            "attention_eigenvalues": result.attention.eigenvalues}


SETTINGS = SpectrumSettings
TITLE = "Spectral diagnostic: κ, rank, attention κ vs κ³, width thresholds (Theorem 4.8, A.12)"
