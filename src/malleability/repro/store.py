"""The run folder on disk: its settings, its lock and its untrusted files.

Layout: ``OUT/settings.json`` (the resolved preset), one JSON file per cell
(``OUT/<experiment>/<cell>.json``, :mod:`.cells`), model caches under ``OUT/cache/``
(:mod:`.cache`), cells and caches that failed their checks under ``OUT/.corrupt/``, and while a
run is going ``OUT/.lock`` with the holder's PID in ``OUT/.lock.pid``.

Every file is written atomically with the mode the user's umask gives (:mod:`.files`), so a
killed run never leaves a partial file and the next run removes its temporaries. A cell carries
the SHA-256 of its content; settings.json says so (:data:`CHECKSUMS`), so a run whose cells
predate checksums is told apart from a cell whose checksum was removed.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from ..jsonsafe import dumps_strict
from .cache import CACHE, read_tensors, write_cache_files, write_tensors
from .cells import CELL_KEYS, cell_name, checksum, read_cell, settings_key, write_cell
from .files import (
    CorruptFile,
    atomic_write,
    clean_temp_files,
    file_mode,
    pid_alive,
    read_json,
    to_jsonable,
    write_json,
)

__all__ = ["ASIDE", "CACHE", "CELL_KEYS", "CHECKSUMS", "LOCK", "NOT_CELLS", "SETTINGS_FILE",
           "CorruptFile", "RunLocked", "atomic_write", "cell_name", "check_run_folder",
           "checksum", "clean_temp_files", "file_mode", "move_aside", "pid_alive", "read_cell",
           "read_json", "read_settings", "read_tensors", "run_lock", "settings_key",
           "start_run", "to_jsonable", "write_cache_files", "write_cell", "write_json",
           "write_tensors"]

log = logging.getLogger("malleability.repro")

SETTINGS_FILE = "settings.json"
ASIDE = ".corrupt"
LOCK = ".lock"
#: Folders of a run folder that hold no cells.
NOT_CELLS = frozenset({CACHE, "figures"})
#: The key of settings.json saying the run's cells carry checksums (every run since they
#: exist writes it; a run without it and without any checksummed cell predates them).
CHECKSUMS = "cell_checksums"


class RunLocked(ValueError):
    """Another process holds the run folder's lock."""


def move_aside(path: Path, out: Path, reason: str) -> Path:
    """Move an untrusted file of run folder ``out`` to ``out/.corrupt/`` (same relative path,
    a unique suffix) and log why; returns the new path."""
    rel = Path(path).relative_to(out)
    dest = out / ASIDE / rel.parent / f"{rel.name}.{time.time_ns()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    log.warning("%s: %s; moved aside to %s and recomputed", rel, reason, dest.relative_to(out))
    return dest


def _same(a: Any, b: Any) -> bool:
    return dumps_strict(to_jsonable(a), sort_keys=True) == dumps_strict(to_jsonable(b),
                                                                         sort_keys=True)


def read_settings(out: Path, legacy: bool = False) -> dict[str, Any]:
    """``out/settings.json``'s resolved preset, or :class:`CorruptFile`."""
    meta = read_json(out / SETTINGS_FILE, legacy)
    if not (isinstance(meta, dict) and isinstance(meta.get("settings"), dict)
            and isinstance(meta.get("versions", {}), dict)):
        raise CorruptFile("expected an object with a 'settings' object")
    return meta


#: Keys of a run's settings that are not experiments: they always have to match.
RUN_KEYS = ("seeds", "experiment_seeds")


def check_run_folder(out: Path, settings: dict[str, Any]) -> None:
    """Refuse (one line, nothing written) an ``out`` that is a file, a non-empty folder that
    holds no run, or a run of other settings than ``settings`` (the resolved preset): other
    seeds, or other settings of an experiment that has cells there. An experiment without
    cells may change its settings (the preset evolved while the run was under way)."""
    if out.exists() and not out.is_dir():
        raise ValueError(f"out: expected a folder, got the file {str(out)!r}")
    if not out.is_dir():
        return
    if not (out / SETTINGS_FILE).exists():
        foreign = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
        if foreign:
            raise ValueError(f"out: {str(out)!r} is not empty and holds no run (no "
                             f"{SETTINGS_FILE}; found {', '.join(foreign[:3])}); expected a "
                             "new or empty folder or an earlier run's folder")
        return
    try:
        stored = read_settings(out)["settings"]
    except CorruptFile:
        return  # moved aside and rewritten under the lock
    keys = sorted(k for k in {*stored, *settings} if not _same(stored.get(k), settings.get(k)))
    # an experiment whose settings changed may join while it has no cells in the folder yet
    keys = [k for k in keys if k in RUN_KEYS or any((out / k).glob("*.json"))]
    if keys:
        raise ValueError(f"out: {str(out)!r} holds a run of other settings (differing: "
                         f"{', '.join(keys)}); give another --out, or move that folder away")


def start_run(out: Path, settings: dict[str, Any], versions: dict[str, str]) -> None:
    """Under the lock: check ``out`` again, move an unreadable settings.json aside, record
    ``settings`` and ``versions``, and remove temporary files of killed writes."""
    check_run_folder(out, settings)
    path = out / SETTINGS_FILE
    if path.exists():
        try:
            read_settings(out)
        except CorruptFile as err:
            move_aside(path, out, str(err))
    write_json(path, {"settings": settings, "versions": versions, CHECKSUMS: "sha256"})
    for temp in clean_temp_files(out):
        log.info("removed %s, left by a killed write", temp.relative_to(out))


@contextlib.contextmanager
def run_lock(out: Path) -> Iterator[None]:
    """Hold ``out/.lock`` (an OS file lock, released by the kernel if the holder dies) and
    record the holder in ``out/.lock.pid``. Another holder: :class:`RunLocked` naming the
    folder and its PID. A ``.lock.pid`` left by a killed holder is reported and replaced."""
    from filelock import FileLock, Timeout

    lock = FileLock(str(out / LOCK))
    holder = out / f"{LOCK}.pid"
    try:
        lock.acquire(timeout=0)
    except Timeout:
        raise RunLocked(f"out: {str(out)!r} is in use by another run ({_holder(holder)}); "
                        "wait for it to finish, or give another --out") from None
    try:
        if holder.exists():
            log.warning("out: took over the lock of %s, which did not release it",
                        _holder(holder))
        write_json(holder, {"pid": os.getpid(), "host": socket.gethostname(),
                            "started": time.time()})
        yield
    finally:
        with contextlib.suppress(OSError):
            holder.unlink()
        lock.release()


def _holder(path: Path) -> str:
    """``PID n on host h`` from a ``.lock.pid`` file, with whether it still runs."""
    try:
        info = read_json(path)
        pid, host = int(info["pid"]), str(info["host"])
    except (CorruptFile, KeyError, TypeError, ValueError):
        return "PID unknown"
    if host != socket.gethostname():
        return f"PID {pid} on host {host}"
    return f"PID {pid}" + ("" if pid_alive(pid) else ", no longer running")
