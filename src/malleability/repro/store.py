"""The run folder on disk, and the only code that writes it.

Layout: ``OUT/settings.json`` (the resolved preset), one JSON file per cell
(``OUT/<experiment>/<cell>.json``), model caches under ``OUT/cache/``, cells and caches that
failed their checks under ``OUT/.corrupt/``, and while a run is going ``OUT/.lock`` with the
holder's PID in ``OUT/.lock.pid``.

Every file is written through :func:`atomic_write` (a temporary file named after the writer's
PID, then a rename) with the mode the user's umask gives, so a killed run never leaves a
partial file and the next run removes its temporaries. JSON is strict
(:func:`~malleability.jsonsafe.dumps_strict`); a cell carries the SHA-256 of its content, so
a cell that is truncated, edited or bit-flipped is told apart from a finished one.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import io
import json
import logging
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..jsonsafe import dumps_strict, loads_strict
from ..settings import Settings

log = logging.getLogger("malleability.repro")

SETTINGS_FILE = "settings.json"
CACHE = "cache"
ASIDE = ".corrupt"
LOCK = ".lock"
#: Every key of a cell file besides ``checksum``.
CELL_KEYS = ("experiment", "cell", "result", "settings", "settings_hash", "versions", "device",
             "timing")
#: Folders of a run folder that hold no cells.
NOT_CELLS = frozenset({CACHE, "figures"})


class CorruptFile(ValueError):
    """A run-folder file that cannot be trusted: unreadable, not strict JSON, the wrong shape,
    failing its checksum, or written for other settings. The message says which."""


class RunLocked(ValueError):
    """Another process holds the run folder's lock."""


def to_jsonable(value: Any) -> Any:
    """Settings, dataclasses, enums, tuples, paths and tensors as plain JSON values."""
    if isinstance(value, Settings):
        return value.to_dict()
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return {f.name: to_jsonable(getattr(value, f.name)) for f in dataclasses.fields(value)}
    if isinstance(value, dict):
        return {str(k): to_jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    if hasattr(value, "value") and isinstance(value.value, (str, int)):
        return value.value
    return value


# --- atomic writes ------------------------------------------------------------------------------


def file_mode() -> int:
    """The mode ``open()`` gives a new file: 0o666 less the process umask (read from
    /proc where it exists, so the umask is never changed)."""
    with contextlib.suppress(OSError, ValueError):
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith("Umask:"):
                return 0o666 & ~int(line.split()[1], 8)
    mask = os.umask(0o022)
    os.umask(mask)
    return 0o666 & ~mask


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` runs on this machine."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # someone else's process
        return True
    return True


#: ``.<name>.<pid>.<random>.tmp`` from :func:`atomic_write`; ``tmp<random>.tmp`` from earlier
#: versions.
_TEMP = re.compile(r"^(?:\..+\.(\d+)\.\w+|tmp\w+)\.tmp$")


def atomic_write(path: Path, data: bytes | str) -> Path:
    """Write ``data`` to ``path`` through a temporary file in the same folder and a rename;
    the file gets the mode of the user's umask."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    raw = data.encode("utf-8") if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.{os.getpid()}.", suffix=".tmp",
                               dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(raw)
            os.fchmod(fh.fileno(), file_mode())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return path


def clean_temp_files(out: Path) -> list[Path]:
    """Remove the temporary files of killed writes under ``out`` (those of live processes
    stay); returns the removed paths."""
    removed = []
    for path in Path(out).rglob("*.tmp"):
        match = _TEMP.match(path.name)
        if match is None or (match.group(1) and pid_alive(int(match.group(1)))):
            continue
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
            removed.append(path)
    return removed


def write_json(path: Path, payload: Any) -> Path:
    """``payload`` as indented strict JSON, atomically."""
    return atomic_write(path, dumps_strict(to_jsonable(payload), indent=1))


def read_json(path: Path, legacy: bool = False) -> Any:
    """A JSON file written by :func:`write_json`, or :class:`CorruptFile` saying why not.
    ``legacy`` also accepts bare NaN / Infinity (files of earlier versions)."""
    try:
        raw = Path(path).read_bytes()
    except OSError as err:
        raise CorruptFile(f"unreadable ({err.strerror})") from None
    if not raw.strip():
        raise CorruptFile("empty file")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise CorruptFile("not UTF-8 text") from None
    try:
        return loads_strict(text)
    except (ValueError, RecursionError) as err:
        if legacy:
            with contextlib.suppress(ValueError, RecursionError):
                return json.loads(text)
        raise CorruptFile(f"not valid JSON ({err})") from None


# --- cells --------------------------------------------------------------------------------------


def settings_key(*parts: Any) -> str:
    """A short stable hash of settings (dataclasses, dicts, scalars)."""
    text = json.dumps([to_jsonable(p) for p in parts], sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def cell_name(cell: dict[str, Any]) -> str:
    """A file-safe name for a cell, e.g. ``task=mnist-3-8__model=relu__width=16__seed=0``."""
    text = "__".join(f"{k}={v}" for k, v in cell.items())
    return re.sub(r"[^A-Za-z0-9=_.-]+", "-", text)


def checksum(record: dict[str, Any]) -> str:
    """SHA-256 of a cell record's content (all keys but ``checksum``) in canonical strict
    JSON."""
    body = {k: v for k, v in record.items() if k != "checksum"}
    return hashlib.sha256(dumps_strict(body, sort_keys=True).encode()).hexdigest()


def write_cell(path: Path, record: dict[str, Any]) -> Path:
    """A cell record (the keys of :data:`CELL_KEYS`) with its checksum, atomically."""
    record = to_jsonable(record)
    return write_json(path, {**record, "checksum": checksum(record)})


_CELL_TYPES = {"experiment": str, "cell": dict, "result": dict, "settings": dict,
               "settings_hash": str, "versions": dict, "device": str, "timing": dict}


def read_cell(path: Path, experiment: str | None = None, cell: dict | None = None,
              settings_hash: str | None = None, legacy: bool = False) -> dict[str, Any]:
    """The record of a cell file after every check, or :class:`CorruptFile` saying which
    failed: strict JSON object with the keys and types of :data:`CELL_KEYS`, a non-empty
    result, a checksum matching the content, a settings hash matching the settings, and the
    ``experiment``, ``cell`` and ``settings_hash`` expected where given. ``legacy`` accepts
    files of earlier versions (no checksum, bare NaN): for reading, never for resuming."""
    record = read_json(path, legacy)
    if not isinstance(record, dict):
        raise CorruptFile(f"expected a JSON object, got {type(record).__name__}")
    missing = [k for k in CELL_KEYS if k not in record]
    extra = sorted(set(record) - {*CELL_KEYS, "checksum"})
    if missing or extra:
        raise CorruptFile(f"expected the keys {', '.join(CELL_KEYS)}, checksum; "
                          f"missing {missing}, unknown {extra}")
    for key, kind in _CELL_TYPES.items():
        if not isinstance(record[key], kind):
            raise CorruptFile(f"{key}: expected {kind.__name__}, got "
                              f"{type(record[key]).__name__}")
    if not record["result"]:
        raise CorruptFile("result: empty")
    seconds = record["timing"].get("seconds")
    if isinstance(seconds, bool) or not isinstance(seconds, (int, float)):
        raise CorruptFile(f"timing.seconds: expected a number, got {seconds!r}")
    if "checksum" in record:
        if record["checksum"] != checksum(record):
            raise CorruptFile("checksum does not match the content (changed after writing)")
    elif not legacy:
        raise CorruptFile("no checksum (written by an earlier version)")
    if settings_key(record["settings"]) != record["settings_hash"]:
        raise CorruptFile("settings_hash does not match its settings")
    for key, want in (("experiment", experiment), ("cell", cell),
                      ("settings_hash", settings_hash)):
        if want is not None and record[key] != want:
            raise CorruptFile(f"written for another {key.replace('_', ' ')} "
                              f"({record[key]!r}, expected {want!r})")
    return record


def move_aside(path: Path, out: Path, reason: str) -> Path:
    """Move an untrusted file of run folder ``out`` to ``out/.corrupt/`` (same relative path,
    a unique suffix) and log why; returns the new path."""
    rel = Path(path).relative_to(out)
    dest = out / ASIDE / rel.parent / f"{rel.name}.{time.time_ns()}"
    dest.parent.mkdir(parents=True, exist_ok=True)
    os.replace(path, dest)
    log.warning("%s: %s; moved aside to %s and recomputed", rel, reason, dest.relative_to(out))
    return dest


# --- cached tensors -----------------------------------------------------------------------------


def _tensors_digest(payload: dict[str, Any]) -> str:
    """SHA-256 of a tensor payload: each tensor's dtype, shape and bytes, other values as
    strict JSON, by sorted key."""
    digest = hashlib.sha256()
    for key in sorted(k for k in payload if k != "checksum"):
        value = payload[key]
        digest.update(key.encode())
        if isinstance(value, torch.Tensor):
            value = value.detach().cpu()
            digest.update(f"{value.dtype}{tuple(value.shape)}".encode())
            digest.update(value.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes())
        else:
            digest.update(dumps_strict(value, sort_keys=True).encode())
    return digest.hexdigest()


def write_tensors(path: Path, payload: dict[str, Any]) -> Path:
    """``payload`` (tensors and plain values) in torch's format with its checksum,
    atomically."""
    buffer = io.BytesIO()
    torch.save({**payload, "checksum": _tensors_digest(payload)}, buffer)
    return atomic_write(path, buffer.getvalue())


def read_tensors(path: Path, keys: tuple[str, ...], device: Any = "cpu") -> dict[str, Any]:
    """A file of :func:`write_tensors` holding ``keys``, loaded onto ``device``, or
    :class:`CorruptFile` saying why not (unloadable, missing keys, checksum mismatch)."""
    try:
        payload = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # torch raises RuntimeError, EOFError, pickle errors, …
        raise CorruptFile(f"not loadable ({type(err).__name__})") from None
    if not isinstance(payload, dict) or not set(keys) <= set(payload):
        raise CorruptFile(f"expected the keys {', '.join(keys)}")
    if payload.get("checksum") != _tensors_digest(payload):
        raise CorruptFile("checksum does not match the content")
    return {k: v.to(device) if isinstance(v, torch.Tensor) else v for k, v in payload.items()
            if k in keys}


def write_cache_files(out: Path, files: dict[str, bytes]) -> None:
    """Cache files computed elsewhere (relative path under ``out/cache/`` → bytes), each
    written atomically unless present."""
    cache = out / CACHE
    for rel, data in files.items():
        parts = Path(rel).parts
        if not parts or Path(rel).is_absolute() or ".." in parts:
            raise ValueError(f"cache: expected a relative path inside {CACHE}/, got {rel!r}")
        if not (cache / rel).exists():
            atomic_write(cache / rel, data)


# --- the run folder -----------------------------------------------------------------------------


def _same(a: Any, b: Any) -> bool:
    return dumps_strict(to_jsonable(a), sort_keys=True) == dumps_strict(to_jsonable(b),
                                                                         sort_keys=True)


def _read_settings(out: Path, legacy: bool = False) -> dict[str, Any]:
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
        stored = _read_settings(out)["settings"]
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
            _read_settings(out)
        except CorruptFile as err:
            move_aside(path, out, str(err))
    write_json(path, {"settings": settings, "versions": versions})
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


@dataclass
class Run:
    """A run folder: the resolved preset, versions, finished cells by experiment, and the
    files skipped as untrustworthy (relative path, reason)."""

    out: Path
    settings: dict[str, Any] = field(default_factory=dict)
    versions: dict[str, Any] = field(default_factory=dict)
    cells: dict[str, list[dict]] = field(default_factory=dict)
    skipped: list[tuple[str, str]] = field(default_factory=list)


def load_run(out: Path) -> Run:
    """Read a run folder without changing it: ``settings.json`` and every valid
    ``<experiment>/*.json`` cell written for those settings. Files that fail their checks
    are listed in ``Run.skipped``; a folder with neither a valid settings.json nor a valid
    cell is refused with a one-line ``ValueError``."""
    out = Path(out)
    if not out.is_dir():
        raise ValueError(f"out: expected a run folder, got {str(out)!r}")
    run = Run(out)
    hashes: dict[str, str] = {}
    if (out / SETTINGS_FILE).exists():
        try:
            meta = _read_settings(out, legacy=True)
        except CorruptFile as err:
            run.skipped.append((SETTINGS_FILE, str(err)))
        else:
            run.settings, run.versions = meta["settings"], meta.get("versions", {})
            hashes = {k: settings_key(v) for k, v in run.settings.items()
                      if isinstance(v, dict)}
    for folder in sorted(p for p in out.iterdir() if p.is_dir()):
        if folder.name in NOT_CELLS or folder.name.startswith("."):
            continue
        for path in sorted(folder.glob("*.json")):
            try:
                record = read_cell(path, experiment=folder.name,
                                   settings_hash=hashes.get(folder.name), legacy=True)
            except CorruptFile as err:
                run.skipped.append((str(path.relative_to(out)), str(err)))
                continue
            run.cells.setdefault(folder.name, []).append(record)
    if not run.settings and not run.cells:
        raise ValueError(f"out: {str(out)!r} is not a run folder (no valid {SETTINGS_FILE} "
                         "and no cell results); expected the --out folder of a reproduce run")
    return run
