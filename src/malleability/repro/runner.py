"""Reproduction runs: presets (TOML) → validated experiment settings → cells, each written
atomically as ``OUT/<experiment>/<cell>.json`` with its settings, seed, versions and timings. A
rerun skips every cell whose file holds a result for the same settings, so a killed run
resumes. Every setting is checked when the preset loads, before any computation or file."""

from __future__ import annotations

import dataclasses
import os
import platform
import time
import tomllib
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

from .. import __version__
from .._validation import check_seed
from ..settings import Settings, reseeded, setting
from .experiments import EXPERIMENTS
from .problem import RunContext
from .store import cell_name, is_done, settings_key, to_jsonable, write_json

PRESETS = ("quick", "paper", "sensitivity")
#: Tables of ``[shared]`` applied to every experiment whose settings have that field.
SHARED = ("tasks", "model", "train", "influence", "attack")


def _check_seeds(value: tuple[int, ...], name: str) -> tuple[int, ...]:
    if not value:
        raise ValueError(f"{name}: expected at least one seed, got []")
    for i, seed in enumerate(value):
        check_seed(seed, f"{name}[{i}]")
    if len(set(value)) != len(value):
        raise ValueError(f"{name}: expected distinct seeds, got {list(value)}")
    return value


@dataclass(frozen=True)
class Preset(Settings):
    """A run: the seed offsets every cell runs with and each chosen experiment's settings."""

    seeds: tuple[int, ...] = setting((0,), "Seed offsets: each cell runs once per seed, with "
                                           "the offset added to every seed of its settings.",
                                     _check_seeds)
    experiments: dict[str, Any] = field(default_factory=dict)
    #: Per-experiment seed lists (an experiment table's ``seeds``) overriding ``seeds``.
    experiment_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def check_relations(self) -> None:
        if not self.experiments:
            raise ValueError("experiments: expected at least one [experiments.NAME] table")
        for name, seeds in self.experiment_seeds.items():
            _check_seeds(tuple(seeds), f"{name}.seeds")

    def seeds_of(self, experiment: str) -> tuple[int, ...]:
        """The seeds ``experiment`` runs with."""
        return tuple(self.experiment_seeds.get(experiment, self.seeds))

    def with_seeds(self, count: int) -> Preset:
        """This preset with every experiment on seeds 0 … count − 1 (``reproduce --seeds``)."""
        if isinstance(count, bool) or not isinstance(count, int) or count < 1:
            raise ValueError(f"seeds: expected a positive number of seeds, got {count!r}")
        return self.replace(seeds=tuple(range(count)), experiment_seeds={})


def preset_text(preset: str) -> str:
    """The TOML text of a packaged preset name or of a file path."""
    if preset in PRESETS:
        folder = resources.files("malleability.repro.presets")
        return folder.joinpath(f"{preset}.toml").read_text()
    path = Path(preset)
    if path.suffix != ".toml" or not path.is_file():
        raise ValueError(f"preset: expected one of {', '.join(PRESETS)} or a .toml file, "
                         f"got {preset!r}")
    return path.read_text()


def load_preset(preset: str) -> Preset:
    """A validated :class:`Preset` from a packaged name or a TOML file.

    The TOML has an optional top-level ``seeds`` list (an experiment table may hold its own
    ``seeds``, overriding it for that experiment), a ``[shared]`` table (``tasks`` and
    the ``model``, ``train``, ``influence`` and ``attack`` tables) applied to every experiment
    that takes them, and one ``[experiments.NAME]`` table per experiment to run.
    """
    try:
        doc = tomllib.loads(preset_text(preset))
    except tomllib.TOMLDecodeError as err:
        raise ValueError(f"preset: not valid TOML ({err})") from None
    unknown = sorted(set(doc) - {"seeds", "shared", "experiments"})
    if unknown:
        raise ValueError(f"preset: unknown tables {unknown}; expected seeds, shared, experiments")
    shared = doc.get("shared", {})
    if not isinstance(shared, dict) or set(shared) - set(SHARED):
        raise ValueError(f"shared: expected some of {', '.join(SHARED)}, got "
                         f"{sorted(shared) if isinstance(shared, dict) else shared!r}")
    chosen = doc.get("experiments", {})
    unknown = sorted(set(chosen) - set(EXPERIMENTS))
    if unknown:
        raise ValueError(f"preset: unknown experiments {unknown}; "
                         f"expected some of {', '.join(EXPERIMENTS)}")
    experiments, experiment_seeds = {}, {}
    for name in EXPERIMENTS:
        if name not in chosen:
            continue
        cls = EXPERIMENTS[name].SETTINGS
        own = chosen[name]
        if not isinstance(own, dict):
            raise ValueError(f"{name}: expected a table of settings, got {own!r}")
        if "seeds" in own:
            own = dict(own)
            seeds = own.pop("seeds")
            if not isinstance(seeds, list) or any(isinstance(v, bool) or not isinstance(v, int)
                                                   for v in seeds):
                raise ValueError(f"{name}.seeds: expected a list of integers, got {seeds!r}")
            experiment_seeds[name] = tuple(seeds)
        fields = {f.name for f in dataclasses.fields(cls)}
        values = {k: v for k, v in shared.items() if k in fields}
        for key, value in own.items():  # a table merges over the shared one
            if isinstance(value, dict) and isinstance(values.get(key), dict):
                value = {**values[key], **value}
            values[key] = value
        experiments[name] = cls.from_dict(values, name)
    return Preset.from_dict({"seeds": doc.get("seeds", [0]), "experiments": experiments,
                             "experiment_seeds": experiment_seeds})


def versions() -> dict[str, str]:
    return {"malleability": __version__, "torch": torch.__version__, "numpy": np.__version__,
            "python": platform.python_version(), "platform": platform.platform(),
            "processor": platform.processor() or platform.machine(),
            "threads": str(torch.get_num_threads())}


@dataclasses.dataclass(frozen=True)
class CellJob:
    experiment: str
    settings: Any
    cell: dict[str, Any]
    path: Path
    settings_hash: str


def plan(preset: Preset, out: Path, only: tuple[str, ...] = ()) -> list[CellJob]:
    """Every cell of the chosen experiments, once per seed, in run order."""
    unknown = set(only) - set(preset.experiments)
    if unknown:
        raise ValueError(f"only: {sorted(unknown)} not in this preset; "
                         f"expected some of {', '.join(preset.experiments)}")
    jobs = []
    for name, s in preset.experiments.items():
        if only and name not in only:
            continue
        digest = settings_key(s)
        for seed in preset.seeds_of(name):
            for cell in EXPERIMENTS[name].cells(s):
                cell = {**cell, "seed": seed}
                jobs.append(CellJob(name, s, cell, out / name / f"{cell_name(cell)}.json",
                                    digest))
    return jobs


def run_cell(job: CellJob, ctx: RunContext) -> Path:
    """Run one cell (its settings offset by the cell's seed) and write its result file."""
    started = time.time()
    t0 = time.perf_counter()
    settings = reseeded(job.settings, job.cell["seed"])
    result = EXPERIMENTS[job.experiment].run(settings, job.cell, ctx)
    return write_json(job.path, {
        "experiment": job.experiment, "cell": job.cell, "result": result,
        "settings": job.settings, "settings_hash": job.settings_hash, "versions": versions(),
        "device": ctx.device,
        "timing": {"seconds": time.perf_counter() - t0, "started": started,
                   "finished": time.time()}})


def _init_worker(threads: int) -> None:
    torch.set_num_threads(threads)


def _run_in_worker(job: CellJob, ctx: RunContext) -> Path:
    return run_cell(job, dataclasses.replace(ctx, progress=False))


def reproduce(preset: Preset, ctx: RunContext, only: tuple[str, ...] = (),
              jobs: int = 1) -> list[Path]:
    """Run every unfinished cell; returns the paths of all cell files of the plan."""
    todo_all = plan(preset, ctx.out, only)
    ctx.out.mkdir(parents=True, exist_ok=True)
    write_json(ctx.out / "settings.json",
               {"settings": {"seeds": list(preset.seeds),
                             "experiment_seeds": to_jsonable(preset.experiment_seeds),
                             **{k: to_jsonable(v) for k, v in preset.experiments.items()}},
                "versions": versions()})
    todo = [j for j in todo_all if not is_done(j.path, j.settings_hash)]
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
