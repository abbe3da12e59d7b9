"""Reproduction runs: presets (TOML) → validated experiment settings → cells, each written
atomically as ``OUT/<experiment>/<cell>.json`` with its settings, seed, versions and timings. A
rerun skips every cell whose file passes its checks for the same settings, so a killed run
resumes; cells run in this process, on local worker processes or on a Dask cluster, and this
process alone writes the folder. Every setting is checked when the preset loads, before any
computation or file."""

from __future__ import annotations

import contextlib
import dataclasses
import fnmatch
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from .._validation import check_seeds
from ..settings import Settings, setting
from .cluster import check_parallel, connect, local_cluster, local_threads, run_on_cluster
from .experiments import EXPERIMENTS
from .jobs import CellJob, compute_cell, versions
from .problem import RunContext, build_model, load_problem
from .store import (
    CorruptFile,
    cell_name,
    check_run_folder,
    move_aside,
    read_cell,
    run_lock,
    settings_key,
    start_run,
    to_jsonable,
    write_cache_files,
    write_cell,
)

PRESETS = ("quick", "paper", "sensitivity")
#: Tables of ``[shared]`` applied to every experiment whose settings have that field.
SHARED = ("tasks", "model", "train", "influence", "attack")


@dataclass(frozen=True)
class Preset(Settings):
    """A run: the seed offsets every cell runs with and each chosen experiment's settings."""

    seeds: tuple[int, ...] = setting((0,), "Seed offsets: each cell runs once per seed, with "
                                           "the offset added to every seed of its settings.",
                                     check_seeds)
    experiments: dict[str, Any] = field(default_factory=dict)
    #: Per-experiment seed lists (an experiment table's ``seeds``) overriding ``seeds``.
    experiment_seeds: dict[str, tuple[int, ...]] = field(default_factory=dict)

    def check_relations(self) -> None:
        if not self.experiments:
            raise ValueError("experiments: expected at least one [experiments.NAME] table")
        for name, seeds in self.experiment_seeds.items():
            check_seeds(tuple(seeds), f"{name}.seeds")

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


def plan(preset: Preset, out: Path, only: tuple[str, ...] = (),
         cells: tuple[str, ...] = ()) -> list[CellJob]:
    """Every cell of the chosen experiments, once per seed, in run order; with ``cells``, only
    those whose file name (without ``.json``) matches one of these shell patterns."""
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
                if cells and not any(fnmatch.fnmatchcase(cell_name(cell), p) for p in cells):
                    continue
                jobs.append(CellJob(name, s, cell, out / name / f"{cell_name(cell)}.json",
                                    digest))
    return jobs


def preset_document(preset: Preset) -> dict[str, Any]:
    """The resolved preset as settings.json records it: seeds and each experiment's
    settings."""
    return {"seeds": list(preset.seeds),
            "experiment_seeds": to_jsonable(preset.experiment_seeds),
            **{k: to_jsonable(v) for k, v in preset.experiments.items()}}


def preflight(preset: Preset, ctx: RunContext, jobs: list[CellJob]) -> None:
    """The checks that need the data or the machine, before the run folder is touched: the
    classes and sizes of every task a planned cell of ``jobs`` uses, against its data set (the
    problems load once, cached for the cells), and the memory of each experiment's network at
    its width. A task no planned cell names is not loaded: ``--cells`` may split a run between
    machines that hold different data sets."""
    for name, s in preset.experiments.items():
        planned = [job.cell for job in jobs if job.experiment == name]
        if not planned:
            continue
        named = None if any("task" not in c for c in planned) else {c["task"] for c in planned}
        tasks = getattr(s, "tasks", ())
        if named is not None and not named & {t.label for t in tasks}:
            named = None  # cells that name their tasks otherwise: check them all
        for i, task in enumerate(tasks):
            if named is not None and task.label not in named:
                continue
            try:
                problem = load_problem(task, ctx.data_root, ctx.device)
            except ValueError as err:
                raise ValueError(f"{name}.tasks[{i}] ({task.dataset}): {err}") from None
            for arch in getattr(s, "models", ()) if hasattr(s, "model") else ():
                try:
                    build_model(arch, problem, s.model)
                except ValueError as err:
                    raise ValueError(f"{name}.model ({arch}): {err}") from None


def run_cell(job: CellJob, ctx: RunContext) -> Path:
    """Run one cell in this process and write its file."""
    return write_cell(job.path, compute_cell(job, ctx))


def unfinished(jobs: list[CellJob], out: Path) -> list[CellJob]:
    """The jobs without a valid cell file; cell files that fail their checks (unreadable,
    wrong shape or checksum, other settings) are moved aside to ``out/.corrupt/``."""
    todo = []
    for job in jobs:
        if job.path.exists():
            try:
                read_cell(job.path, job.experiment, to_jsonable(job.cell), job.settings_hash)
                continue
            except CorruptFile as err:
                move_aside(job.path, out, str(err))
        todo.append(job)
    return todo


def _serial(jobs: list[CellJob], ctx: RunContext, bar: tqdm,
            threads: int | None) -> Iterator[tuple[CellJob, dict]]:
    before = torch.get_num_threads()
    try:
        torch.set_num_threads(threads or before)
        for job in jobs:
            bar.set_description(job.label[:70])
            yield job, {"record": compute_cell(job, ctx), "cache": {}}
    finally:
        torch.set_num_threads(before)


def reproduce(preset: Preset, ctx: RunContext, only: tuple[str, ...] = (), jobs: int = 1,
              cluster: str | None = None, threads: int | None = None,
              cells: tuple[str, ...] = ()) -> list[Path]:
    """Run every unfinished cell; returns the paths of all cell files of the plan.

    Cells run in this process by default; on ``jobs`` local worker processes (an embedded
    Dask ``LocalCluster``), or on the Dask scheduler at ``cluster``. Either way this process
    alone writes the run folder, holding its lock: a second run on the same folder stops with
    :class:`~malleability.repro.store.RunLocked`. ``threads``: torch threads per cell
    (default: this process's; cores / jobs with ``jobs``; the worker's on a cluster). Cell
    results are bitwise equal across modes for equal threads per cell (torch's parallel
    reductions depend on the thread count). ``cells``: only the cells whose names match these
    shell patterns (:func:`plan`), e.g. to split a preset between machines.
    """
    jobs, threads = check_parallel(jobs, cluster, threads)
    todo_all = plan(preset, ctx.out, only, cells)
    if cells and not todo_all:
        raise ValueError(f"cells: no cell of this preset matches {list(cells)}; names look like "
                         f"{cell_name(plan(preset, ctx.out, only)[0].cell)!r}")
    document = preset_document(preset)
    check_run_folder(ctx.out, document)
    if cluster is None:  # a cluster's client may hold no data
        preflight(preset, ctx, todo_all)
    with contextlib.ExitStack() as stack:
        client = None if cluster is None else stack.enter_context(connect(cluster))
        ctx.out.mkdir(parents=True, exist_ok=True)
        stack.enter_context(run_lock(ctx.out))
        start_run(ctx.out, document, versions())
        todo = unfinished(todo_all, ctx.out)
        bar = stack.enter_context(tqdm(total=len(todo_all), initial=len(todo_all) - len(todo),
                                       desc="cells", disable=not ctx.progress, position=0))
        if client is not None:
            results = run_on_cluster(client, todo, ctx, threads, local_cache=True)
        elif jobs > 1 and todo:
            client = stack.enter_context(local_cluster(jobs, ctx.device))
            threads = local_threads(jobs, threads)
            results = run_on_cluster(client, todo, ctx, threads)
        else:
            results = _serial(todo, ctx, bar, threads)
        for job, outcome in results:
            write_cache_files(ctx.out, outcome["cache"])
            write_cell(job.path, outcome["record"])
            bar.update()
    return [j.path for j in todo_all]
