"""Cells on Dask: an embedded ``LocalCluster`` (``reproduce --jobs N``) or a running
scheduler (``reproduce --cluster ADDRESS``).

Workers compute a cell and return its record; the client alone writes the run folder.
Trained-model cache: local workers (``--jobs``) share the run folder's ``cache/``. Remote
workers each keep their own cache for the run folder under their Dask local directory, and
the model files a cell trained travel back with its result, so the client writes them into
``OUT/cache/`` (no shared file system needed; a later run or a serial rerun finds them
there).

A worker killed mid-cell loses only that cell: the scheduler reruns it on another worker, up
to :data:`ALLOWED_FAILURES` deaths per cell. With ``--device cuda`` every cell asks the
scheduler for one ``GPU`` resource (start workers with ``--resources "GPU=1"``).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import re
import socket
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch

from .._validation import check_positive_int
from .cells import cell_name, settings_key
from .jobs import compute_cell, versions

log = logging.getLogger("malleability.repro")

#: Worker deaths a cell may cause before the run stops (Dask's ``allowed-failures``).
ALLOWED_FAILURES = 3
#: Seconds to wait for the scheduler to answer.
CONNECT_TIMEOUT = 10
_ADDRESS = re.compile(r"^(?:(?:tcp|tls|ws|wss|ucx)://)?[\w.\-\[\]:]+:\d+$")
#: Versions a worker must share with the client.
_MATCHING = ("malleability", "torch", "numpy")


def _remote(job: Any, ctx: Any, threads: int | None, run_key: str | None,
            compute: Callable[[Any, Any], dict[str, Any]] = compute_cell) -> dict[str, Any]:
    """On a worker: the cell's record (``compute(job, ctx)``) and, given ``run_key``, the
    model-cache files it wrote into the worker's own cache for that run (relative path →
    bytes)."""
    if threads is not None:
        torch.set_num_threads(threads)
    if run_key is None:
        return {"record": compute(job, ctx), "cache": {}}
    from distributed import get_worker

    local = Path(get_worker().local_directory) / "malleability" / run_key
    ctx = dataclasses.replace(ctx, out=local)
    before = _files(ctx.cache)
    record = compute(job, ctx)
    return {"record": record,
            "cache": {rel: (ctx.cache / rel).read_bytes()
                      for rel in sorted(_files(ctx.cache) - before)}}


def _files(folder: Path) -> set[str]:
    return {str(p.relative_to(folder)) for p in folder.rglob("*")
            if p.is_file() and not p.name.endswith(".tmp")}


def run_on_cluster(client: Any, jobs: list[Any], ctx: Any, threads: int | None = None,
                   local_cache: bool = False,
                   compute: Callable[[Any, Any], dict[str, Any]] = compute_cell,
                   share: bool = False) -> Iterator[tuple[Any, dict]]:
    """Submit every job to ``client``'s scheduler and yield (job, outcome) as cells finish;
    on an error the remaining cells are cancelled. ``threads``: torch threads per cell (None:
    the worker's own);
    ``local_cache``: workers keep their own model cache for this run folder and return what
    they add to it. ``compute(job, ctx)`` makes a cell's record on the worker (default: a
    reproduction's :class:`CellJob`; a job has ``experiment``, ``cell`` and ``label``, a context
    ``device``, ``out`` and ``progress``); ``share``: send ``ctx`` to every worker once instead
    of with each cell (a large one: the audit's model and data)."""
    from distributed import as_completed
    from distributed.scheduler import KilledWorker

    resources = {"GPU": 1} if ctx.device.startswith("cuda") else None
    worker_ctx = dataclasses.replace(ctx, progress=False)
    if share and jobs:
        worker_ctx = client.scatter(worker_ctx, broadcast=True, hash=False)
    run_key = settings_key(socket.gethostname(), str(ctx.out.resolve())) if local_cache else None
    futures = {client.submit(_remote, job, worker_ctx, threads, run_key, compute, pure=False,
                             key=f"{job.experiment}-{cell_name(job.cell)}-{uuid.uuid4().hex[:8]}",
                             resources=resources): job for job in jobs}
    try:
        for future in as_completed(futures):
            job = futures[future]
            try:
                outcome = future.result()
            except KilledWorker:
                raise RuntimeError(f"{job.label}: {ALLOWED_FAILURES + 1} workers died running "
                                   "this cell (out of memory?); finished cells are kept"
                                   ) from None
            yield job, outcome
    finally:
        client.cancel(list(futures))


def check_parallel(jobs: int, cluster: str | None, threads: int | None
                   ) -> tuple[int, int | None]:
    """``--jobs``, ``--cluster`` and ``--threads`` checked: positive, and not both of jobs > 1
    and a cluster."""
    jobs = check_positive_int(jobs, "jobs")
    if threads is not None:
        threads = check_positive_int(threads, "threads")
    if jobs > 1 and cluster is not None:
        raise ValueError("jobs: --jobs runs a local cluster; give either --jobs or --cluster")
    if cluster is not None:
        check_address(cluster)
    return jobs, threads


def check_address(address: str) -> str:
    """A scheduler address like ``tcp://HOST:PORT``."""
    if not isinstance(address, str) or not _ADDRESS.match(address):
        raise ValueError(f"cluster: expected a scheduler address like tcp://HOST:PORT, "
                         f"got {address!r}")
    return address


def local_threads(jobs: int, threads: int | None) -> int:
    """Torch threads per cell on ``jobs`` local workers: ``threads``, else cores / jobs."""
    return threads or max(1, (os.cpu_count() or 1) // jobs)


@contextlib.contextmanager
def cell_client(jobs: int, cluster: str | None, device: str = "cpu") -> Iterator[Any]:
    """Where cells run: None (this process) for ``jobs`` 1 without ``cluster``; else the
    client of an embedded LocalCluster of ``jobs`` workers, or of the scheduler at
    ``cluster``."""
    if cluster is not None:
        with connect(cluster) as client:
            yield client
    elif jobs > 1:
        with local_cluster(jobs, device) as client:
            yield client
    else:
        yield None


@contextlib.contextmanager
def local_cluster(jobs: int, device: str = "cpu") -> Iterator[Any]:
    """A client of an embedded ``LocalCluster`` on 127.0.0.1: ``jobs`` worker processes of
    one Dask thread each (a cell sets its own torch threads)."""
    import dask
    from distributed import Client, LocalCluster

    with dask.config.set({"distributed.scheduler.allowed-failures": ALLOWED_FAILURES}):
        cluster = LocalCluster(n_workers=jobs, threads_per_worker=1, processes=True,
                               host="127.0.0.1", dashboard_address=":0",
                               resources={"GPU": 1} if device.startswith("cuda") else None,
                               silence_logs=logging.ERROR)
    with cluster, Client(cluster) as client:
        yield client


@contextlib.contextmanager
def connect(address: str) -> Iterator[Any]:
    """A client of the Dask scheduler at ``address`` (``tcp://HOST:PORT``), after checking
    that its workers run the same malleability, torch and numpy versions."""
    check_address(address)
    from distributed import Client

    try:
        client = Client(address, timeout=f"{CONNECT_TIMEOUT}s")
    except (OSError, TimeoutError) as err:
        raise ValueError(f"cluster: no Dask scheduler answered at {address!r} within "
                         f"{CONNECT_TIMEOUT} s ({type(err).__name__})") from None
    with client:
        mine = {k: versions()[k] for k in _MATCHING}
        for worker, theirs in client.run(_worker_versions).items():
            if theirs != mine:
                raise ValueError(f"cluster: worker {worker} runs {theirs}, expected {mine}; "
                                 "install the same versions on every worker")
        if not client.scheduler_info().get("workers"):
            log.warning("cluster: no workers at %s yet; cells wait until workers join", address)
        yield client


def _worker_versions() -> dict[str, str]:
    return {k: versions()[k] for k in _MATCHING}
