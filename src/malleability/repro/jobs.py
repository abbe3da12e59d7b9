"""A cell to compute (:class:`CellJob`) and its computation, wherever it runs: in the
process of ``reproduce`` or on a Dask worker (:mod:`.cluster`). Writes no file."""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..settings import reseeded
from .cells import cell_name
from .experiments import EXPERIMENTS
from .problem import RunContext


def versions() -> dict[str, str]:
    return {"malleability": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": str(torch.get_num_threads())}


@dataclasses.dataclass(frozen=True)
class CellJob:
    """One cell of a plan: its experiment, settings, cell parameters, file and settings
    hash."""

    experiment: str
    settings: Any
    cell: dict[str, Any]
    path: Path
    settings_hash: str

    @property
    def label(self) -> str:
        return f"{self.experiment} {cell_name(self.cell)}"


def compute_cell(job: CellJob, ctx: RunContext) -> dict[str, Any]:
    """Run one cell (its settings offset by the cell's seed): the record its file holds,
    with settings, versions, device and timings. Writes no cell file."""
    started = time.time()
    t0 = time.perf_counter()
    settings = reseeded(job.settings, job.cell["seed"])
    result = EXPERIMENTS[job.experiment].run(settings, job.cell, ctx)
    return {"experiment": job.experiment, "cell": job.cell, "result": result,
            "settings": job.settings, "settings_hash": job.settings_hash,
            "versions": versions(), "device": ctx.device,
            "timing": {"seconds": time.perf_counter() - t0, "started": started,
                       "finished": time.time()}}
