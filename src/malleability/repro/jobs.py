"""A cell to compute (:class:`CellJob`) and its computation, wherever it runs: in the
process of ``reproduce`` or on a Dask worker (:mod:`.cluster`). Writes no cell file; while a
cell runs, its trainings keep their states under ``cache/partial/`` (:class:`.CellCheckpoints`),
so that a killed cell resumes there."""

from __future__ import annotations

import dataclasses
import platform
import time
from pathlib import Path
from typing import Any

import numpy as np
import torch

from .._version import __version__
from ..resume import resumable
from ..settings import reseeded
from .cache import PARTIAL, CellCheckpoints
from .cells import cell_name
from .experiments import EXPERIMENTS
from .problem import RunContext

#: Seconds between a running training's saved states: at most this much of each training is
#: lost when a cell is killed.
CHECKPOINT_SECONDS = 60.0


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
    with settings, versions, device and timings (``earlier_seconds``: of killed attempts, up
    to their last training state, counted in ``seconds``). Writes no cell file."""
    started = time.time()
    checkpoints = CellCheckpoints(ctx.cache / PARTIAL / job.experiment / cell_name(job.cell))
    settings = reseeded(job.settings, job.cell["seed"])
    with resumable(checkpoints, every=CHECKPOINT_SECONDS):
        result = EXPERIMENTS[job.experiment].run(settings, job.cell, ctx)
    seconds = checkpoints.seconds()
    checkpoints.clear()
    return {"experiment": job.experiment, "cell": job.cell, "result": result,
            "settings": job.settings, "settings_hash": job.settings_hash,
            "versions": versions(), "device": ctx.device,
            "timing": {"seconds": seconds, "earlier_seconds": checkpoints.earlier_seconds,
                       "started": started, "finished": time.time()}}
