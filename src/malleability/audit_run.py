"""``malleability audit --out DIR``: the audit as a run folder, like ``reproduce``'s.

Layout (the reproduction's run-folder machinery, :mod:`~malleability.repro.store`):
``OUT/settings.json`` (the audit's settings per estimator, with digests of the model, its
checkpoints and the data), one cell per (estimator, checkpoint, seed) as
``OUT/<estimator>/checkpoint=<c>__seed=<s>.json`` (c = ``model``, ``ckpt<j>`` for each
checkpoint alone, ``ensemble`` for their mean scores), the representation's spectrum as
``OUT/spectrum/layer=<layer>.json``, then ``report.md``, ``report.html`` and ``figures/``
(:mod:`~malleability.audit_folder`). Every cell is written atomically with its checksum, under
the folder's lock; a rerun skips every valid cell (resumes), moves an invalid one aside and
recomputes it, and refuses a folder of other settings before writing anything. Adding an
estimator to an earlier run's folder keeps its cells.

The cells run in this process, on local Dask workers (``jobs``) or on a Dask scheduler
(``cluster``), through the reproduction's :func:`~malleability.repro.cluster.run_on_cluster`:
workers compute and return records, this process alone writes them. ``audit`` without a
folder computes the same kind of cells in memory (:func:`audit_cells`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .audit_problem import AuditProblem, audit_seed, clean_attribution, estimator_warnings
from .audit_setup import representation, spectral_step
from .controls import METRICS
from .estimators import Attribution
from .measure import attribute
from .repro.cluster import (
    cell_client,
    check_parallel,
    connect,
    local_cluster,
    local_threads,
    run_on_cluster,
)
from .repro.jobs import versions
from .repro.store import (
    SETTINGS_FILE,
    CorruptFile,
    cell_name,
    check_run_folder,
    move_aside,
    read_cell,
    read_json,
    run_lock,
    settings_key,
    start_run,
    write_cell,
)
from .spectral import gram_eigenvalues

SPECTRUM = "spectrum"
MODEL = "model"
ENSEMBLE = "ensemble"


def digest(tensors: Sequence[torch.Tensor] | Mapping[str, torch.Tensor]) -> str:
    """SHA-256 (16 hex digits) of tensors' dtypes, shapes and bytes (a state_dict by key)."""
    items = sorted(tensors.items()) if isinstance(tensors, Mapping) else enumerate(tensors)
    h = hashlib.sha256()
    for key, t in items:
        t = t.detach().cpu().contiguous()
        h.update(f"{key}{t.dtype}{tuple(t.shape)}".encode())
        h.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return h.hexdigest()[:16]


def checkpoint_labels(n_checkpoints: int) -> list[str]:
    """``model``, then ``ckpt0`` … for each checkpoint and ``ensemble`` with two or more."""
    labels = [MODEL, *(f"ckpt{j}" for j in range(n_checkpoints))]
    return labels + [ENSEMBLE] if n_checkpoints >= 2 else labels


def spectrum_layer(p: AuditProblem) -> str:
    """The audited layer named on the user's model (``input``: the model's input, or with
    ``perturb`` the perturbed submodule's output)."""
    return p.record["layer"] or "input"


def document(problems: Sequence[AuditProblem]) -> dict[str, Any]:
    """settings.json's settings: the seeds, and per estimator (and the spectrum) what its cells
    depend on, so a folder of another model, data or settings is refused."""
    p = problems[0]
    data = {"model": digest(p.model.state_dict()), "data": digest(p.data),
            "checkpoints": [digest(m.state_dict()) for m in p.checkpoints or []]}
    perturb = {"perturb": p.record["perturb"]} if p.record["perturb"] else {}
    out: dict[str, Any] = {"seeds": list(p.settings.seeds), "experiment_seeds": {},
                           SPECTRUM: {"layer": spectrum_layer(p), **perturb, **data}}
    for q in problems:
        record = {k: v for k, v in q.record.items() if k != "seeds"}
        out[q.estimator.name] = {**record, **data}
    return out


def _models(p: AuditProblem, label: str) -> list[nn.Module]:
    if label == MODEL:
        return [p.model]
    if label == ENSEMBLE:
        return list(p.checkpoints or [])
    return [(p.checkpoints or [])[int(label.removeprefix("ckpt"))]]


def spectrum_cell(p: AuditProblem) -> dict[str, Any]:
    """The representation's κ figures (:func:`~malleability.auditing.spectral_step`) and the
    eigenvalues of its per-example Gram, descending."""
    rep = representation(p.model, p.data[0], p.settings.layer)
    out = spectral_step(rep)
    out["layer"] = spectrum_layer(p)
    eig = gram_eigenvalues(rep.detach().reshape(rep.shape[0], -1).to(torch.float64))
    out["eigenvalues"] = eig.clamp_min(0.0).tolist()
    return out


def estimator_cell(p: AuditProblem, label: str, seed: int, clean: Attribution | None = None
                   ) -> tuple[dict[str, Any], Attribution]:
    """:func:`~malleability.auditing.audit_seed` on the checkpoint ``label``, and the clean
    attribution it started from (:func:`~malleability.audit_problem.clean_attribution`); the
    first seed's cell of the model also holds the estimator's warnings and the Hessian's
    |λ|max, computed before the estimator runs (LiSSA refuses a Hessian it cannot invert)."""
    first = label == MODEL and seed == p.settings.seeds[0]
    if first:  # before the estimator runs: LiSSA refuses a Hessian it cannot invert
        warnings, top = estimator_warnings(p.estimator, p.model, p.data[0], p.data[1],
                                           len(p.checkpoints or [p.model]), p.settings)
    models = _models(p, label)
    clean = clean_attribution(models, p.data, p.estimator, p.settings, seed, clean)
    out = audit_seed(models, p.data, p.estimator, p.settings, seed, clean)
    if first:
        out.update(warnings=warnings, hessian_top_eigenvalue=top)
    return out, clean


def _numbers(value: Any) -> bool:
    return isinstance(value, list) and all(
        isinstance(v, (int, float)) and not isinstance(v, bool) for v in value)


def check_result(folder: str, result: dict[str, Any]) -> None:
    """:class:`CorruptFile` unless ``result`` has the layout the report reads: a spectrum
    cell's eigenvalues and Grams, an estimator cell's metrics per perturbation and scores (a
    cell of another version, or edited with its checksum recomputed, is recomputed instead of
    breaking the report)."""
    if folder == SPECTRUM:
        if not (_numbers(result.get("eigenvalues")) and isinstance(result.get("layer"), str)
                and isinstance(result.get("per_example"), dict)):
            raise CorruptFile("result: expected a spectrum's eigenvalues, layer and per_example")
        return
    for kind in ("adversarial", "random", "noise"):
        metrics = result.get(kind, {})
        if not (kind == "noise" and metrics is None) and not (
                isinstance(metrics, dict) and _numbers([metrics.get(m) for m in METRICS])):
            raise CorruptFile(f"result.{kind}: expected the numbers {', '.join(METRICS)}")
    for key in ("scores", "selected", "adversarial_scores", "random_scores"):
        if not _numbers(result.get(key)):
            raise CorruptFile(f"result.{key}: expected a list of numbers")


def plan(problems: Sequence[AuditProblem], in_memory: bool = False
         ) -> list[tuple[str, dict[str, Any]]]:
    """Every (folder, cell) of the audit, in run order: the spectrum, then per estimator its
    checkpoints × seeds. ``in_memory`` (:func:`audit_cells`, no folder): each checkpoint's
    clean scores at the first seed only (``scores_only``: the agreement), and the ensemble
    even of one checkpoint."""
    p = problems[0]
    cells = [(SPECTRUM, {"layer": spectrum_layer(p)})]
    for q in problems:
        k, seeds = len(q.checkpoints or []), q.settings.seeds
        if not in_memory:
            for label in checkpoint_labels(k):
                cells += [(q.estimator.name, {"checkpoint": label, "seed": s}) for s in seeds]
            continue
        cells += [(q.estimator.name, {"checkpoint": MODEL, "seed": s}) for s in seeds]
        cells += [(q.estimator.name, {"checkpoint": f"ckpt{j}", "seed": seeds[0],
                                      "scores_only": True}) for j in range(k)]
        cells += [(q.estimator.name, {"checkpoint": ENSEMBLE, "seed": s})
                  for s in (seeds if k else ())]
    return cells


@dataclass(frozen=True)
class AuditJob:
    """One cell to compute: its folder (an estimator's name or ``spectrum``), its parameters
    and, for a deterministic estimator's later seeds, the clean scores of the first seed's
    cell on the same checkpoint (they are the same; computed once)."""

    experiment: str
    cell: dict[str, Any]
    clean: list[float] | None = None

    @property
    def label(self) -> str:
        return f"{self.experiment} {cell_name(self.cell)}"


@dataclass(frozen=True)
class AuditContext:
    """What every cell of an audit reads, in this process or on a Dask worker: the problems
    by estimator name (the first's model gives the spectrum), the settings document
    (:func:`document`), the device, and the run folder (None: in memory; workers write
    nothing). ``kept``: the clean attribution of the last first-seed cell computed here whose
    rescoring reuses more than its scores (NTK-LOO's kernels), by (estimator, checkpoint),
    for the later seeds' cells; a cell that does not find it computes it
    (:func:`~malleability.audit_problem.clean_attribution`), to the same values."""

    problems: dict[str, AuditProblem]
    settings: dict[str, Any]
    device: str = "cpu"
    out: Path | None = None
    progress: bool = False
    kept: dict[tuple[str, str], Attribution] = field(default_factory=dict, compare=False,
                                                     repr=False)


Results = dict[tuple[str, str], dict[int, dict[str, Any]]]


def _key(job: AuditJob) -> tuple[tuple[str, str], int]:
    return (job.experiment, job.cell.get("checkpoint", job.cell.get("layer"))), \
        job.cell.get("seed", 0)


def _in_order(results: Results, cells: Sequence[tuple[str, dict[str, Any]]]) -> Results:
    """``results`` with keys and seeds in the order of ``cells`` (the plan's), whatever
    order the cells finished in."""
    out: Results = {}
    for folder, cell in cells:
        key, seed = _key(AuditJob(folder, cell))
        out.setdefault(key, {})[seed] = results[key][seed]
    return out


def _first_seed(job: AuditJob, ctx: AuditContext) -> int | None:
    """The seed whose clean scores ``job`` reuses (a deterministic estimator's later seeds);
    None if it computes its own."""
    if job.experiment == SPECTRUM or job.cell.get("scores_only"):
        return None
    p = ctx.problems[job.experiment]
    first = p.settings.seeds[0]
    return None if p.estimator.randomized or job.cell["seed"] == first else first


def _with_clean(job: AuditJob, ctx: AuditContext, results: Results) -> AuditJob:
    first = _first_seed(job, ctx)
    if first is None:
        return job
    return dataclasses.replace(job, clean=results[_key(job)[0]][first]["scores"])


def compute_audit_cell(job: AuditJob, ctx: AuditContext) -> dict[str, Any]:
    """One cell's record (the keys of the reproduction's cells); writes no file."""
    started, t0 = time.time(), time.perf_counter()
    if job.experiment == SPECTRUM:
        result = spectrum_cell(next(iter(ctx.problems.values())))
    else:
        p, label, seed = ctx.problems[job.experiment], job.cell["checkpoint"], job.cell["seed"]
        if job.cell.get("scores_only"):
            result = {"scores": attribute(p.estimator, _models(p, label), *p.data, seed,
                                          p.settings.parameters or None).scores.tolist()}
        else:
            key = (job.experiment, label)
            clean = (None if job.clean is None else ctx.kept.get(key) or
                     Attribution(torch.tensor(job.clean, dtype=torch.float64)))
            result, used = estimator_cell(p, label, seed, clean)
            if used.reuse is not None and not p.estimator.randomized:
                ctx.kept.clear()  # one entry: the plan runs a checkpoint's seeds in a row
                ctx.kept[key] = used
    settings = ctx.settings[job.experiment]
    return {"experiment": job.experiment, "cell": job.cell, "result": result,
            "settings": settings, "settings_hash": settings_key(settings),
            "versions": versions(), "device": ctx.device,
            "timing": {"seconds": time.perf_counter() - t0, "started": started,
                       "finished": time.time()}}


def compute_cells(jobs: Sequence[AuditJob], ctx: AuditContext, results: Results,
                  client: Any = None, threads: int | None = None,
                  progress: Callable[[str], None] | None = None
                  ) -> Iterator[tuple[AuditJob, dict[str, Any]]]:
    """(job, record) for every job; the caller adds each record's result to ``results``
    before the next. Without ``client`` the jobs run here in order; with one, on its
    workers (:func:`~malleability.repro.cluster.run_on_cluster`) in two waves: first every
    job that needs no other cell, then the deterministic estimators' later seeds with the
    first seed's clean scores. ``threads``: torch threads per cell (None: the process's or
    the worker's). ``progress(label)`` is called as each job starts (here) or is sent."""
    if client is None:
        before = torch.get_num_threads()
        try:
            torch.set_num_threads(threads or before)
            for job in jobs:
                if progress is not None:
                    progress(job.label)
                yield job, compute_audit_cell(_with_clean(job, ctx, results), ctx)
        finally:
            torch.set_num_threads(before)
        return
    have = {(key, seed) for key, per_seed in results.items() for seed in per_seed}
    waits = [_first_seed(j, ctx) is not None and (_key(j)[0], _first_seed(j, ctx)) not in have
             for j in jobs]
    for wave in ([j for j, w in zip(jobs, waits, strict=True) if not w],
                 [j for j, w in zip(jobs, waits, strict=True) if w]):
        wave = [_with_clean(j, ctx, results) for j in wave]
        for job in wave:
            if progress is not None:
                progress(job.label)
        for job, outcome in run_on_cluster(client, wave, ctx, threads,
                                           compute=compute_audit_cell, share=True):
            yield job, outcome["record"]


@dataclass
class AuditRun:
    """The cells of an audit run folder: results by (folder, checkpoint) and seed (the
    spectrum under (``spectrum``, layer)), their count and total cell time."""

    results: Results
    cells: int
    seconds: float


def _context(problems: Sequence[AuditProblem], doc: dict[str, Any], device: str,
             out: Path | None) -> AuditContext:
    return AuditContext({q.estimator.name: q for q in problems}, doc, device, out)


def run_audit(out: Path, problems: Sequence[AuditProblem], device: str = "cpu",
              progress: Callable[[str], None] | None = None, jobs: int = 1,
              cluster: str | None = None, threads: int | None = None) -> AuditRun:
    """Compute every missing cell of the audit of ``problems`` (one per estimator, same model,
    data and settings) in run folder ``out`` and read the others. ``progress(label)`` is
    called before each computed cell. Cells run in this process, on ``jobs`` local Dask
    workers or on the scheduler at ``cluster`` (``threads``: torch threads per cell; cores /
    jobs by default with ``jobs``); workers return results and this process alone writes the
    folder, under its lock. Results are the same in every mode for equal threads per cell."""
    jobs, threads = check_parallel(jobs, cluster, threads)
    out = Path(out)
    doc = document(problems)
    # estimators of an earlier audit in this folder that this one leaves out keep their cells
    with contextlib.suppress(CorruptFile, KeyError, TypeError):
        stored = read_json(out / SETTINGS_FILE)["settings"]
        doc = {**{k: v for k, v in stored.items() if k not in doc}, **doc}
    check_run_folder(out, doc)
    ctx = _context(problems, doc, device, out)
    results: Results = {}
    seconds, count = 0.0, 0
    with contextlib.ExitStack() as stack:
        client = None if cluster is None else stack.enter_context(connect(cluster))
        out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(run_lock(out))
        start_run(out, doc, versions())
        todo = []
        for folder, cell in plan(problems):
            path = out / folder / f"{cell_name(cell)}.json"
            if path.exists():
                try:
                    found = read_cell(path, folder, cell, settings_key(doc[folder]))
                    check_result(folder, found["result"])
                except CorruptFile as err:
                    move_aside(path, out, str(err))
                else:
                    key, seed = _key(AuditJob(folder, cell))
                    results.setdefault(key, {})[seed] = found["result"]
                    seconds += found["timing"]["seconds"]
                    count += 1
                    continue
            todo.append(AuditJob(folder, cell))
        if client is None and jobs > 1 and todo:
            client = stack.enter_context(local_cluster(jobs, device))
            threads = local_threads(jobs, threads)
        for job, record in compute_cells(todo, ctx, results, client, threads, progress):
            write_cell(out / job.experiment / f"{cell_name(job.cell)}.json", record)
            key, seed = _key(job)
            results.setdefault(key, {})[seed] = record["result"]
            seconds += record["timing"]["seconds"]
            count += 1
    return AuditRun(_in_order(results, plan(problems)), count, seconds)


def audit_cells(problems: Sequence[AuditProblem], jobs: int = 1, cluster: str | None = None,
                threads: int | None = None) -> Results:
    """The cells of :func:`plan` ``(in_memory=True)`` of ``problems``, computed in this
    process, on ``jobs`` local Dask workers or on the scheduler at ``cluster``; no file is
    written (:func:`~malleability.auditing.audit`)."""
    jobs, threads = check_parallel(jobs, cluster, threads)
    device = str(problems[0].data[0].device)
    ctx = _context(problems, document(problems), device, None)
    results: Results = {}
    cells = plan(problems, in_memory=True)
    with cell_client(jobs, cluster, device) as client:
        if client is not None and cluster is None:
            threads = local_threads(jobs, threads)
        for job, record in compute_cells([AuditJob(f, c) for f, c in cells], ctx, results,
                                         client, threads):
            key, seed = _key(job)
            results.setdefault(key, {})[seed] = record["result"]
    return _in_order(results, cells)
