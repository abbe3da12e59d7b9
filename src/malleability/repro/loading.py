"""Reading a run folder for the report: every cell read against its name and its run.

A cell is used only when its file is a checked cell (:func:`~.cells.read_cell`) whose content
matches where it lies: the experiment of its folder, the cell and seed of its file name, a seed
of the run's plan, the settings of settings.json (or, with settings.json gone, the settings of
the experiment's other cells), and the result layout of the cell's other seeds. A cell without
a checksum is used only in a run that predates checksums (:data:`~.store.CHECKSUMS`), with a
warning. Every other file is left out with the reason, and seeds of the plan without any cell
are listed, so that a copy cannot count as another seed and a gap cannot pass unseen.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .cells import cell_name, read_cell, settings_key
from .files import CorruptFile
from .seeds import merge_values
from .store import CHECKSUMS, NOT_CELLS, SETTINGS_FILE, read_settings


@dataclass
class Run:
    """A run folder: the resolved preset, versions, the cells used by experiment, the files
    left out (relative path, reason), the cells used without a checksum (relative paths) and
    the seeds of the plan without any cell, by experiment."""

    out: Path
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, list[dict]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    unchecked: list[str] = field(default_factory=list)
    missing_seeds: dict[str, list[int]] = field(default_factory=dict)


def planned_seeds(settings: dict[str, Any], experiment: str) -> list[int] | None:
    """The seeds ``experiment`` runs with in a resolved preset (settings.json's ``settings``),
    or None when the preset does not say."""
    own = settings.get("experiment_seeds")
    seeds = own.get(experiment) if isinstance(own, dict) else None
    seeds = settings.get("seeds") if seeds is None else seeds
    if not isinstance(seeds, list) or not all(isinstance(s, int) for s in seeds):
        return None
    return seeds


def load_run(out: Path) -> Run:
    """Read a run folder without changing it: ``settings.json`` and every cell that passes
    the checks of this module. A folder with neither a valid settings.json nor a valid cell is
    refused with a one-line ``ValueError``."""
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"out: expected a run folder, got {str(out)!r}")
    run = Run(out)
    checksummed = False
    if (out / SETTINGS_FILE).exists():
        try:
            meta = read_settings(out, legacy=True)
        except CorruptFile as err:
            run.skipped.append((SETTINGS_FILE, str(err)))
        else:
            run.settings, run.versions = meta["settings"], meta.get("versions", {})
            checksummed = CHECKSUMS in meta
    found = {folder.name: _read_folder(run, folder)
             for folder in sorted(p for p in out.iterdir() if p.is_dir())
             if folder.name not in NOT_CELLS and not folder.name.startswith(".")}
    checksummed = checksummed or any("checksum" in record for cells in found.values()
                                     for _, record in cells)
    for name, cells in found.items():
        kept = []
        for rel, record in cells:
            if "checksum" in record:
                kept.append((rel, record))
            elif checksummed:
                run.skipped.append((rel, "no checksum, though this run's cells carry one "
                                         "(edited after it was written?)"))
            else:
                run.unchecked.append(rel)
                kept.append((rel, record))
        if not run.settings:
            kept = _same_settings(run, name, kept)
        kept = _same_layout(run, kept)
        if kept:
            run.cells[name] = [record for _, record in kept]
            seeds = planned_seeds(run.settings, name)
            have = {record["cell"].get("seed", 0) for _, record in kept}
            gaps = [s for s in seeds or () if s not in have]
            if gaps:
                run.missing_seeds[name] = gaps
    if not run.settings and not run.cells:
        raise ValueError(f"out: {str(out)!r} is not a run folder (no valid {SETTINGS_FILE} "
                         "and no cell results); expected the --out folder of a reproduce run")
    return run


def _read_folder(run: Run, folder: Path) -> list[tuple[str, dict]]:
    """(relative path, record) of every cell file of ``folder`` that is a checked cell of this
    experiment, named after its own cell, of a planned seed and of the run's settings."""
    settings = run.settings.get(folder.name)
    digest = settings_key(settings) if isinstance(settings, dict) else None
    seeds = planned_seeds(run.settings, folder.name) if run.settings else None
    cells = []
    for path in sorted(folder.glob("*.json")):
        rel = str(path.relative_to(run.out))
        try:
            record = read_cell(path, experiment=folder.name, settings_hash=digest, legacy=True)
        except CorruptFile as err:
            run.skipped.append((rel, str(err)))
            continue
        name = cell_name(record["cell"])
        seed = record["cell"].get("seed", 0)  # cells of the first versions have no seed
        if path.stem != name:
            run.skipped.append((rel, f"holds the cell {name}, not the one its file name says "
                                     "(a copy, or a renamed file?)"))
        elif seeds is not None and seed not in seeds:
            run.skipped.append((rel, f"seed {seed!r} is not one of the run's seeds {seeds}"))
        else:
            cells.append((rel, record))
    return cells


def _same_settings(run: Run, name: str, cells: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """Without settings.json: the cells of the settings most of ``name``'s cells share (ties:
    the most recently finished); the others are left out."""
    counts = Counter(record["settings_hash"] for _, record in cells)
    if len(counts) < 2:
        return cells
    latest = {h: max(r["timing"].get("finished") or 0 for _, r in cells if r["settings_hash"] == h)
              for h in counts}
    chosen = max(counts, key=lambda h: (counts[h], latest[h]))
    for rel, record in cells:
        if record["settings_hash"] != chosen:
            run.skipped.append((rel, f"written for other settings than the other {counts[chosen]} "
                                     f"cells of {name} (no {SETTINGS_FILE} to say which are the "
                                     "run's)"))
    return [(rel, record) for rel, record in cells if record["settings_hash"] == chosen]


def _seed(record: dict) -> int:
    seed = record["cell"].get("seed", 0)
    return seed if isinstance(seed, int) else 0


def _same_layout(run: Run, cells: list[tuple[str, dict]]) -> list[tuple[str, dict]]:
    """The cells whose result merges with the other seeds of the same cell
    (:func:`~.seeds.merge_values`); a cell of another layout (an earlier version's) is left out,
    checksummed cells and lower seeds taking precedence."""
    groups: dict[str, list[tuple[str, dict]]] = {}
    for rel, record in cells:
        key = cell_name({k: v for k, v in record["cell"].items() if k != "seed"})
        groups.setdefault(key, []).append((rel, record))
    kept = []
    for group in groups.values():
        group.sort(key=lambda item: ("checksum" not in item[1], _seed(item[1])))
        chosen = [group[0]]
        for rel, record in group[1:]:
            try:
                merge_values([r["result"] for _, r in chosen] + [record["result"]],
                             list(range(len(chosen) + 1)))
            except (KeyError, ValueError) as err:
                first = chosen[0][1]["cell"].get("seed")
                run.skipped.append((rel, f"result has another layout than seed {first} of the "
                                         f"same cell (written by another version?): {err}"))
                continue
            chosen.append((rel, record))
        kept += chosen
    return kept
