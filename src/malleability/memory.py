"""Memory estimates checked before large allocations: refuse with one line, not an allocator
traceback.

The estimates are lower bounds of the peak (the arrays that must coexist), and the ceiling is
the device's total memory: physical RAM on CPU (os.sysconf, capped by a cgroup v2
``memory.max`` when one is set), the card's total memory on CUDA (torch.cuda.mem_get_info).
A request is refused only when even its lower bound exceeds the ceiling, so a refusal is never
spurious. Where the ceiling is unknown (no sysconf, the meta device, other backends) nothing is
checked.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

_CGROUP_LIMIT = Path("/sys/fs/cgroup/memory.max")
_MEMINFO = Path("/proc/meminfo")


def memory_limit(device: torch.device | str | None = None) -> int | None:
    """Total bytes of memory on ``device`` (default CPU), or None when unknown."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[1])
    if device.type != "cpu":
        return None
    try:
        total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError):
        return None
    try:
        cap = _CGROUP_LIMIT.read_text().strip()
        if cap.isdigit():
            total = min(total, int(cap))
    except OSError:
        pass
    return int(total) if total > 0 else None


def free_memory(device: torch.device | str | None = None) -> int | None:
    """Bytes free for new allocations on ``device`` (default CPU), or None when unknown:
    the kernel's MemAvailable (/proc/meminfo, else free physical pages), capped by what a
    cgroup v2 ``memory.max`` leaves; the card's free memory on CUDA."""
    device = torch.device(device or "cpu")
    if device.type == "cuda":
        return int(torch.cuda.mem_get_info(device)[0])
    if device.type != "cpu":
        return None
    free = _meminfo_available()
    if free is None:
        try:
            free = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_AVPHYS_PAGES")
        except (AttributeError, ValueError, OSError):
            return None
    try:
        cap = _CGROUP_LIMIT.read_text().strip()
        used = _CGROUP_LIMIT.with_name("memory.current").read_text().strip()
        if cap.isdigit() and used.isdigit():
            free = min(free, int(cap) - int(used))
    except OSError:
        pass
    return max(0, int(free))


def _meminfo_available() -> int | None:
    try:
        for line in _MEMINFO.read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return None


# Working memory of the blocked computations (Jacobian panels): a share of the free memory,
# capped on CPU so that a shared machine keeps room for the rest of a run.
WORKING_SHARE, CPU_WORKING_CAP, MIN_WORKING = 0.25, 2 * 2**30, 64 * 2**20


def working_memory(device: torch.device | str | None = None) -> int:
    """Bytes a blocked computation on ``device`` may hold: WORKING_SHARE of
    :func:`free_memory`, at most CPU_WORKING_CAP on CPU, at least MIN_WORKING (also when the
    free memory is unknown)."""
    device = torch.device(device or "cpu")
    free = free_memory(device)
    if free is None:
        return MIN_WORKING
    share = int(WORKING_SHARE * free)
    if device.type == "cpu":
        share = min(share, CPU_WORKING_CAP)
    return max(MIN_WORKING, share)


def network_bytes(in_features: int, width: int, num_classes: int, *, itemsize: int = 8,
                  train_batch: int = 0, ntk_rows: tuple[int, int] = (0, 0)) -> int:
    """Lower bound of the peak bytes of a :class:`~malleability.models.TwoLayerNet` over its
    stages: drawing its P = m(d + C) parameters (2P); training with batch b > 0 (P plus W's
    gradient, Adam's two moments and W₀, 4·m·d, and 3·b·m activations); the float64
    empirical NTK of ``ntk_rows`` (n₁, n₂) points (P plus :func:`ntk_bytes`).
    Sizes are Python ints (no overflow).
    """
    m, d, c, b = int(width), int(in_features), int(num_classes), int(train_batch)
    params = m * (d + c) * itemsize
    train = params + (4 * m * d + 3 * b * m) * itemsize if b > 0 else 0
    ntk = params + ntk_bytes(m, *ntk_rows) if any(ntk_rows) else 0
    return max(2 * params, train, ntk)


def ntk_bytes(width: int, n1: int, n2: int = 0) -> int:
    """Lower bound of the working set of the float64 empirical NTK of n₁ × n₂ points
    (n₂ = 0: symmetric): pre-activations and masks 2·(n₁ + n₂)·m, the kernel n₁·n₂ (or n₁²)."""
    m, n1, n2 = int(width), int(n1), int(n2)
    return (2 * (n1 + n2) * m + n1 * (n2 or n1)) * 8


def check_memory(n_bytes: int, name: str, what: str,
                 device: torch.device | str | None = None) -> None:
    """Refuse (ValueError naming the input ``name``) when ``what`` needs more than the
    device's total memory."""
    limit = memory_limit(device)
    if limit is not None and n_bytes > limit:
        where = torch.device(device or "cpu")
        raise ValueError(f"{name}: {what} needs at least {_human(n_bytes)}, more than the "
                         f"{_human(limit)} of memory on {where}; expected a smaller size")


def _human(n: int) -> str:
    units = ("B", "KiB", "MiB", "GiB", "TiB", "PiB", "EiB")
    i = min(len(units) - 1, max(0, (int(n).bit_length() - 1) // 10))
    return f"{n / 1024**i:.1f} {units[i]}"
