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
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .auditing import (
    AuditProblem,
    audit_seed,
    estimator_warnings,
    representation,
    spectral_step,
)
from .controls import METRICS
from .estimators import Attribution
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


def document(problems: Sequence[AuditProblem]) -> dict[str, Any]:
    """settings.json's settings: the seeds, and per estimator (and the spectrum) what its cells
    depend on, so a folder of another model, data or settings is refused."""
    p = problems[0]
    data = {"model": digest(p.model.state_dict()), "data": digest(p.data),
            "checkpoints": [digest(m.state_dict()) for m in p.checkpoints or []]}
    out: dict[str, Any] = {"seeds": list(p.settings.seeds), "experiment_seeds": {},
                           SPECTRUM: {"layer": p.settings.layer or "input", **data}}
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
    out["layer"] = p.settings.layer or "input"
    eig = gram_eigenvalues(rep.detach().reshape(rep.shape[0], -1).to(torch.float64))
    out["eigenvalues"] = eig.clamp_min(0.0).tolist()
    return out


def estimator_cell(p: AuditProblem, label: str, seed: int,
                   clean: Attribution | None = None) -> dict[str, Any]:
    """:func:`~malleability.auditing.audit_seed` on the checkpoint ``label``; the first seed's
    cell of the model also holds the estimator's warnings and the Hessian's |λ|max."""
    models = _models(p, label)
    out = audit_seed(models, p.data, p.estimator, p.settings, seed, clean)
    if label == MODEL and seed == p.settings.seeds[0]:
        warnings, top = estimator_warnings(p.estimator, p.model, p.data[0], p.data[1],
                                           len(p.checkpoints or [p.model]), p.settings)
        out.update(warnings=warnings, hessian_top_eigenvalue=top)
    return out


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


def plan(problems: Sequence[AuditProblem]) -> list[tuple[str, dict[str, Any]]]:
    """Every (folder, cell) of the audit, in run order: the spectrum, then per estimator its
    checkpoints × seeds."""
    p = problems[0]
    cells = [(SPECTRUM, {"layer": p.settings.layer or "input"})]
    for q in problems:
        for label in checkpoint_labels(len(q.checkpoints or [])):
            cells += [(q.estimator.name, {"checkpoint": label, "seed": s})
                      for s in q.settings.seeds]
    return cells


@dataclass
class AuditRun:
    """The cells of an audit run folder: results by (folder, checkpoint) and seed (the
    spectrum under (``spectrum``, layer)), their count and total cell time."""

    results: dict[tuple[str, str], dict[int, dict[str, Any]]]
    cells: int
    seconds: float


def run_audit(out: Path, problems: Sequence[AuditProblem], device: str = "cpu",
              progress: Callable[[str], None] | None = None) -> AuditRun:
    """Compute every missing cell of the audit of ``problems`` (one per estimator, same model,
    data and settings) in run folder ``out`` and read the others. ``progress(label)`` is
    called before each computed cell."""
    out = Path(out)
    doc = document(problems)
    # estimators of an earlier audit in this folder that this one leaves out keep their cells
    with contextlib.suppress(CorruptFile, KeyError, TypeError):
        stored = read_json(out / SETTINGS_FILE)["settings"]
        doc = {**{k: v for k, v in stored.items() if k not in doc}, **doc}
    check_run_folder(out, doc)
    by_name = {q.estimator.name: q for q in problems}
    results: dict[tuple[str, str], dict[int, dict[str, Any]]] = {}
    seconds, count = 0.0, 0
    out.mkdir(parents=True, exist_ok=True)
    with run_lock(out):
        start_run(out, doc, versions())
        for folder, cell in plan(problems):
            path = out / folder / f"{cell_name(cell)}.json"
            digest_ = settings_key(doc[folder])
            record = None
            if path.exists():
                try:
                    found = read_cell(path, folder, cell, digest_)
                    check_result(folder, found["result"])
                    record = found
                except CorruptFile as err:
                    move_aside(path, out, str(err))
            if record is None:
                if progress is not None:
                    progress(f"{folder} {cell_name(cell)}")
                record = _compute(folder, cell, by_name, problems[0], results, doc, device)
                write_cell(path, record)
            key = (folder, cell.get("checkpoint", cell.get("layer")))
            results.setdefault(key, {})[cell.get("seed", 0)] = record["result"]
            seconds += record["timing"]["seconds"]
            count += 1
    return AuditRun(results, count, seconds)


def _compute(folder: str, cell: dict[str, Any], by_name: Mapping[str, AuditProblem],
             first: AuditProblem, results: Mapping, doc: dict[str, Any], device: str
             ) -> dict[str, Any]:
    """One cell's record (the keys of the reproduction's cells)."""
    started, t0 = time.time(), time.perf_counter()
    if folder == SPECTRUM:
        result = spectrum_cell(first)
    else:
        p, label, seed = by_name[folder], cell["checkpoint"], cell["seed"]
        clean = None
        earlier = results.get((folder, label), {}).get(p.settings.seeds[0])
        if not p.estimator.randomized and earlier is not None:
            # a deterministic estimator's clean scores are those of the first seed
            with contextlib.suppress(KeyError):
                clean = Attribution(torch.tensor(earlier["scores"], dtype=torch.float64))
        result = estimator_cell(p, label, seed, clean)
    return {"experiment": folder, "cell": cell, "result": result, "settings": doc[folder],
            "settings_hash": settings_key(doc[folder]), "versions": versions(),
            "device": device, "timing": {"seconds": time.perf_counter() - t0,
                                         "started": started, "finished": time.time()}}


