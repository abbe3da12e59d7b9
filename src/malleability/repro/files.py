"""Files of a run folder written so that a killed writer never leaves a partial one: atomic
writes through a temporary file named after the writer's PID, the removal of temporaries of
dead writers, and strict JSON (:func:`~malleability.jsonsafe.dumps_strict`) in and out."""

from __future__ import annotations

import contextlib
import dataclasses
import glob
import json
import os
import re
import tempfile
from pathlib import Path
from typing import Any

import torch

from ..jsonsafe import dumps_strict, loads_strict
from ..settings import Settings


class CorruptFile(ValueError):
    """A run-folder file that cannot be trusted: unreadable, not strict JSON, the wrong shape,
    failing its checksum, or written for other settings. The message says which."""


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


def clean_temp_files(folder: Path, name: str | None = None) -> list[Path]:
    """Remove the temporary files of killed writes (those of live processes stay): every one
    under ``folder``, or with ``name`` only those of writes of ``folder/name``; returns the
    removed paths."""
    folder = Path(folder)
    found = folder.rglob("*.tmp") if name is None else folder.glob(f".{glob.escape(name)}.*.tmp")
    removed = []
    for path in found:
        match = _TEMP.match(path.name)
        if match is None or (match.group(1) and pid_alive(int(match.group(1)))):
            continue
        if name is not None and not path.name.startswith(f".{name}.{match.group(1)}."):
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
