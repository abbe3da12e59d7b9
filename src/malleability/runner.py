"""Reproduction runs: presets (TOML) → experiment settings → cells, each written atomically
as ``OUT/<experiment>/<cell>.json`` with its settings, seed, versions and timings. A rerun
skips every cell whose file holds a result for the same settings, so a killed run resumes."""

from __future__ import annotations

import dataclasses
import json
import os
import platform
import re
import time
import tomllib
import types
import typing
from concurrent.futures import ProcessPoolExecutor, as_completed
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from . import __version__
from .experiments import EXPERIMENTS
from .experiments.common import RunContext, settings_key, to_jsonable, write_json_atomic

PRESETS = ("quick", "paper")
SHARED = ("tasks", "model", "train")


def preset_text(preset: str) -> str:
    """The TOML text of a packaged preset name or of a file path."""
    if preset in PRESETS:
        return resources.files("malleability.presets").joinpath(f"{preset}.toml").read_text()
    path = Path(preset)
    if path.suffix != ".toml" or not path.is_file():
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)} or a .toml file, "
                         f"got {preset!r}")
    return path.read_text()


def load_preset(preset: str) -> dict[str, Any]:
    """Experiment name → settings dataclass, from a preset.

    The TOML has a ``[shared]`` table (``tasks``, ``model``, ``train``) applied to every
    experiment that takes them, and one ``[experiments.NAME]`` table per experiment to run.
    """
    try:
        doc = tomllib.loads(preset_text(preset))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"preset: not valid TOML ({err})") from None
    shared = doc.get("shared", {})
    chosen = doc.get("experiments", {})
    unknown = set(chosen) - set(EXPERIMENTS)
    if unknown:
        raise ValueError(f"preset: unknown experiments {sorted(unknown)}; "
                         f"expected some of {', '.join(EXPERIMENTS)}")
    out = {}
    for name in EXPERIMENTS:
        if name in chosen:
            cls = EXPERIMENTS[name].SETTINGS
            fields = {f.name for f in dataclasses.fields(cls)}
            values = {k: v for k, v in shared.items() if k in fields and k in SHARED}
            for key in ("model", "train"):  # a section merges over the shared one
                if key in chosen[name] and key in values:
                    chosen[name][key] = {**values[key], **chosen[name][key]}
            out[name] = build(cls, {**values, **chosen[name]}, name)
    return out


def build(cls: type, values: dict[str, Any], where: str) -> Any:
    """A (nested, frozen) settings dataclass from plain TOML values."""
    hints = typing.get_type_hints(cls)
    names = {f.name for f in dataclasses.fields(cls)}
    unknown = set(values) - names
    if unknown:
        raise ValueError(f"{where}: unknown settings {sorted(unknown)}; "
                         f"expected some of {', '.join(sorted(names))}")
    kwargs = {k: _convert(hints[k], v, f"{where}.{k}") for k, v in values.items()}
    return cls(**kwargs)


def _convert(hint: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(hint)
    args = typing.get_args(hint)
    if dataclasses.is_dataclass(hint):
        return build(hint, value, where)
    if origin is tuple:
        return tuple(_convert(args[0], v, where) for v in value)
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return value if value is None or len(options) != 1 else _convert(options[0], value, where)
    return value


def versions() -> dict[str, str]:
    return {"malleability": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": str(torch.get_num_threads())}


def cell_name(cell: dict[str, Any]) -> str:
    """A file-safe name for a cell, e.g. ``task=mnist-3-8__model=relu__width=16``."""
    text = "__".join(f"{k}={v}" for k, v in cell.items())
    return re.sub(r"[^A-Za-z0-9=_.-]+", "-", text)


@dataclasses.dataclass(frozen=True)
class CellJob:
    experiment: str
    settings: Any
    cell: dict[str, Any]
    path: Path
    settings_hash: str


def plan(settings: dict[str, Any], out: Path, only: tuple[str, ...] = ()) -> list[CellJob]:
    """Every cell of the chosen experiments, in run order."""
    unknown = set(only) - set(settings)
    if unknown:
        raise ValueError(f"only: {sorted(unknown)} not in this preset; "
                         f"expected some of {', '.join(settings)}")
    jobs = []
    for name, s in settings.items():
        if only and name not in only:
            continue
        digest = settings_key(s)
        for cell in EXPERIMENTS[name].cells(s):
            jobs.append(CellJob(name, s, cell, out / name / f"{cell_name(cell)}.json", digest))
    return jobs


def is_done(job: CellJob) -> bool:
    """The cell's file exists and holds a result for the same settings."""
    if not job.path.exists():
        return False
    try:
        stored = json.loads(job.path.read_text())
    except (OSError, ValueError):
        return False
    return stored.get("settings_hash") == job.settings_hash and "result" in stored


def run_cell(job: CellJob, ctx: RunContext) -> Path:
    """Run one cell and write its result file atomically."""
    started = time.time()
    t0 = time.perf_counter()
    result = EXPERIMENTS[job.experiment].run(job.settings, job.cell, ctx)
    write_json_atomic(job.path, {
        "experiment": job.experiment, "cell": job.cell, "result": result,
        "settings": job.settings, "settings_hash": job.settings_hash, "versions": versions(),
        "device": ctx.device,
        "timing": {"seconds": time.perf_counter() - t0, "started": started,
                   "finished": time.time()}})
    return job.path


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_worker(job: CellJob, ctx: RunContext) -> Path:
    return run_cell(job, dataclasses.replace(ctx, progress=False))


def reproduce(settings: dict[str, Any], ctx: RunContext, only: tuple[str, ...] = (),
              jobs: int = 1) -> list[Path]:
    """Run every unfinished cell; returns the paths of all cell files of the plan."""
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(ctx.out / "settings.json",
                      {"settings": {k: to_jsonable(v) for k, v in settings.items()},
                       "versions": versions()})
    todo_all = plan(settings, ctx.out, only)
    todo = [j for j in todo_all if not is_done(j)]
    bar = tqdm(total=len(todo_all), initial=len(todo_all) - len(todo), desc="cells",
               disable=not ctx.progress, position=0)
    if jobs <= 1:
        for job in todo:
            bar.set_description(f"{job.experiment} {cell_name(job.cell)}"[:70])
            run_cell(job, ctx)
            bar.update()
    else:
        threads = max(1, (os.cpu_count() or 1) // jobs)
        with ProcessPoolExecutor(jobs, initializer=_init_worker, initargs=(threads,)) as pool:
            futures = [pool.submit(_run_in_worker, job, ctx) for job in todo]
            for future in as_completed(futures):
                future.result()
                bar.update()
    bar.close()
    return [j.path for j in todo_all]
