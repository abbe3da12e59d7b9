"""The empirical NTK of any ``nn.Module``, by Jacobian contraction with bounded memory.

For a network f(·; θ) with C outputs and trainable parameters θ ∈ R^P (or a chosen subset),

    Θ(x, x') = (1/C) Σ_c J_c(x) J_c(x')ᵀ,   J_c(x) = ∂f_c(x)/∂θ ∈ R^{n×P},

the output-averaged (traced) NTK, as neural-tangents' ``trace_axes=(-1,)`` divided by C.

The n × C × P Jacobian is never held. Per-example Jacobians come from ``torch.func``
(``vmap`` over examples of ``jacrev``) in blocks of ``block`` examples, are flattened into
one (rows × C·P) buffer and contracted into the float64 kernel by GEMMs. A *panel* of up to
``panel`` rows stays resident while ``stream`` rows at a time of the others stream past it
(into one reused buffer): Θ(x, x) needs only its lower triangle (each panel against the rows
before it, and the panel against itself by a recursive half-product), Θ(x1, x2) keeps the
smaller side resident. Peak memory is (panel + stream + 2·block) · C' · P · 8 bytes for C'
classes per pass
(all C when a few rows of them fit), below ``max_memory_bytes``, which by default is a
quarter of the free memory (:func:`~malleability.memory.working_memory`).
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap
from torch.nn.attention import SDPBackend, sdpa_kernel

from ._validation import check_positive_int
from .memory import working_memory

# Examples per vmap call: past MAX_BLOCK the GEMMs gain little; on CPU the per-example
# intermediates of larger calls fall out of cache (fastest near 8–16 on the ViTs benchmarked).
MAX_BLOCK, MAX_CPU_BLOCK = 64, 16
STREAM_BLOCKS = 4


def select_parameters(model: nn.Module, parameters: Sequence[str] | None = None) -> list[str]:
    """Names of the trainable parameters to differentiate: all of them (``None``), or those
    whose name equals an entry of ``parameters`` or starts with ``entry + "."``."""
    trainable = [k for k, v in model.named_parameters() if v.requires_grad]
    if parameters is None:
        if not trainable:
            raise ValueError("model: has no trainable parameters")
        return trainable
    if isinstance(parameters, str):
        parameters = [parameters]
    chosen = []
    for entry in parameters:
        hits = [k for k in trainable if k == entry or k.startswith(entry + ".")]
        if not hits:
            raise ValueError(f"parameters: {entry!r} matches no trainable parameter "
                             f"(have: {', '.join(trainable)})")
        chosen += [k for k in hits if k not in chosen]
    return chosen


def last_layers(model: nn.Module, k: int = 1) -> list[str]:
    """Names of the last ``k`` modules (in registration order) that own trainable parameters,
    for ``parameters=`` (e.g. the classifier head)."""
    k = check_positive_int(k, "k")
    owners = [name for name, mod in model.named_modules()
              if any(p.requires_grad for p in mod.parameters(recurse=False))]
    if not owners:
        raise ValueError("model: has no trainable parameters")
    return owners[-k:]


def cast_module(module: nn.Module, dtype: torch.dtype) -> nn.Module:
    """``module`` itself if its floating tensors all have ``dtype``, else a converted copy."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.dtype == dtype for t in tensors if t.is_floating_point()):
        return module
    return copy.deepcopy(module).to(dtype)


def _as_input(x: torch.Tensor, name: str, dtype: torch.dtype) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        x = torch.as_tensor(x)
    if x.ndim < 1 or x.shape[0] == 0:
        raise ValueError(f"{name}: expected a non-empty batch (n, ...), got shape {tuple(x.shape)}")
    if x.is_floating_point():
        x = x.to(dtype)
        if not bool(torch.isfinite(x).all()):
            raise ValueError(f"{name}: contains NaN or infinite values")
    return x.detach()


@dataclass(frozen=True)
class BlockPlan:
    """How :func:`jacobian_ntk` tiles Θ: ``classes`` outputs per pass, ``panel`` resident
    rows, ``block`` streamed rows; ``bytes`` bounds the Jacobian buffers held at once."""

    classes: int
    panel: int
    block: int
    bytes: int
    stream: int = 0  # streamed rows per contraction (STREAM_BLOCKS blocks)


def block_plan(n_panel: int, n_out: int, n_params: int, max_memory_bytes: int,
               block: int | None = None, itemsize: int = 8, max_block: int = MAX_BLOCK
               ) -> BlockPlan:
    """Tiles for Jacobians of ``n_params`` parameters and ``n_out`` outputs whose buffers
    (panel + stream + 2·block rows: the streamed rows, contracted with the panel in one GEMM,
    and the per-parameter copy and autograd intermediates of one ``vmap`` call of ``block``
    rows) stay within ``max_memory_bytes``. ``stream`` = STREAM_BLOCKS·block: a GEMM of the
    panel with only ``block`` rows would read the whole panel for few flops (memory-bound).

    ``block`` defaults to an eighth of the one-class rows that fit, at most ``max_block``. As
    many outputs per pass as let all ``n_panel`` rows stay resident (so no Jacobian is
    computed twice; a pass per class costs one more forward per row, recomputing costs
    backward passes), at least one; the panel takes what is left, at least ``block`` rows.
    """
    per_class = n_params * itemsize
    if block is None:
        block = max(1, min(max_block, max_memory_bytes // per_class // 8))
    block = min(check_positive_int(block, "block"), n_panel)
    stream, extra = STREAM_BLOCKS * block, (STREAM_BLOCKS + 2) * block
    classes = max(1, min(n_out, max_memory_bytes // ((n_panel + extra) * per_class)))
    classes = -(-n_out // -(-n_out // classes))  # the same passes, balanced
    row = classes * per_class
    panel = max(block, min(n_panel, max_memory_bytes // row - extra))
    return BlockPlan(classes=classes, panel=panel, block=block,
                     bytes=(panel + extra) * row, stream=stream)


def jacobian_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    parameters: Sequence[str] | None = None,
    max_memory_bytes: int | None = None,
    block: int | None = None,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Θ(x1, x2) = (1/C) Σ_c J_c(x1) J_c(x2)ᵀ over ``parameters`` (default: all trainable);
    Θ(x1, x1) when ``x2`` is None (only its lower triangle is computed).

    ``model`` maps a batch (n, ...) to (n, C) or (n,); it is run in ``dtype`` (a converted copy
    if needed; floating inputs are converted too, integer inputs such as token ids are kept).
    The Jacobian buffers stay within ``max_memory_bytes`` (default: a quarter of the free
    memory of x1's device, :func:`~malleability.memory.working_memory`), tiled as
    :func:`block_plan` says; ``block`` fixes the examples per ``vmap`` call. Returns an
    (n1 × n2) tensor of ``dtype`` on x1's device.
    """
    symmetric = x2 is None
    x1 = _as_input(x1, "x1", dtype)
    x2 = x1 if symmetric else _as_input(x2, "x2", dtype)
    if x2.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x2: expected trailing shape {tuple(x1.shape[1:])} to match x1, "
                         f"got {tuple(x2.shape[1:])}")
    if max_memory_bytes is None:
        max_memory_bytes = working_memory(x1.device)
    max_memory_bytes = check_positive_int(max_memory_bytes, "max_memory_bytes")
    model = cast_module(model, dtype)
    names = select_parameters(model, parameters)
    params = {k: v.detach() for k, v in model.named_parameters() if k in names}
    frozen = {k: v.detach() for k, v in model.named_parameters() if k not in params}
    frozen.update(model.named_buffers())
    n_out = output_size(model, x1)
    swap = not symmetric and x2.shape[0] < x1.shape[0]  # the smaller side stays resident
    rows, cols = (x2, x1) if swap else (x1, x2)
    n_params = sum(p.numel() for p in params.values())
    plan = block_plan(rows.shape[0], n_out, n_params, max_memory_bytes, block,
                      torch.finfo(dtype).bits // 8,
                      MAX_CPU_BLOCK if x1.device.type == "cpu" else MAX_BLOCK)
    out = torch.zeros(rows.shape[0], cols.shape[0], dtype=dtype, device=x1.device)
    for c0 in range(0, n_out, plan.classes):
        c1 = min(n_out, c0 + plan.classes)
        jac = _Jacobians(model, params, frozen, c0, c1, plan.block)
        # One buffer for every streamed block of this pass: a fresh one per block would be
        # fresh pages, and first-touch page faults cost more than the Jacobian on some VMs.
        stream = torch.empty(plan.stream, (c1 - c0) * n_params, dtype=dtype, device=x1.device)
        for s in range(0, rows.shape[0], plan.panel):
            panel = jac(rows[s:s + plan.panel])
            if symmetric:
                _gram_lower_(out[s:s + plan.panel, s:s + plan.panel], panel)
            for t in range(0, s if symmetric else cols.shape[0], plan.stream):
                streamed = jac(cols[t:min(t + plan.stream, s if symmetric else cols.shape[0])],
                               stream)
                out[s:s + plan.panel, t:t + streamed.shape[0]].addmm_(panel, streamed.T)
            del panel
    if symmetric:
        _mirror_lower_(out)
    elif swap:
        out = out.T.contiguous()
    return out.div_(n_out)


def train_test_ntk(
    model: nn.Module,
    x: torch.Tensor,
    x_test: torch.Tensor,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Θ(x, x) and Θ(x_test, x) from one pass over the Jacobians: Θ of [x; x_test] (lower
    triangle, :func:`jacobian_ntk` with ``kwargs``) split into its blocks, so each Jacobian
    row is computed once; Θ(x, x) twice when ``x_test`` equals ``x``."""
    if x_test.shape == x.shape and torch.equal(x_test, x):
        kernel = jacobian_ntk(model, x, **kwargs)
        return kernel, kernel
    n = x.shape[0]
    both = jacobian_ntk(model, torch.cat([x, x_test.to(x.dtype)]), **kwargs)
    return both[:n, :n].contiguous(), both[n:, :n].contiguous()


def updated_ntk(
    model: nn.Module,
    kernel: torch.Tensor,
    x: torch.Tensor,
    x_new: torch.Tensor,
    changed: torch.Tensor,
    x_test: torch.Tensor | None = None,
    cross: torch.Tensor | None = None,
    **kwargs,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Θ(x_new, x_new) and Θ(x_test, x_new) from ``kernel`` = Θ(x, x) and ``cross`` =
    Θ(x_test, x), when x_new equals x except in the rows ``changed`` (indices S, e.g. the
    attacked points). Only the kernel rows of S are computed, Θ(x_new[S], [x_new; x_test])
    by :func:`jacobian_ntk` (``kwargs``): |S|·(n + n_t) entries instead of (n + n_t)²/2.
    Without ``x_test`` the test points are x itself (``cross`` is ``kernel``; then the rows'
    columns are [x_new; x[S]]). The caller's tensors are not modified.
    """
    return updated_ntks(model, kernel, x, [x_new], changed, x_test, cross, **kwargs)[0]


def updated_ntks(
    model: nn.Module,
    kernel: torch.Tensor,
    x: torch.Tensor,
    xs_new: Sequence[torch.Tensor],
    changed: torch.Tensor,
    x_test: torch.Tensor | None = None,
    cross: torch.Tensor | None = None,
    **kwargs,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """:func:`updated_ntk` for K training sets x¹ … xᴷ that each equal x outside the same rows
    S, in one :func:`jacobian_ntk` call: R = Θ([x¹[S]; …; xᴷ[S]], [x[U]; x_test; x¹[S]; …;
    xᴷ[S]]) with U the other rows, so the Jacobians of U and of the test points are computed
    once for all K (R's blocks between different k, K(K − 1)·|S|² entries, go unused)."""
    changed = torch.as_tensor(changed, dtype=torch.long, device=kernel.device).unique()
    n = x.shape[0]
    if kernel.shape != (n, n) or any(x_new.shape != x.shape for x_new in xs_new):
        shapes = ", ".join(str(tuple(x_new.shape)) for x_new in xs_new)
        raise ValueError(f"kernel: expected Θ(x, x) of shape ({n}, {n}) and x_new shaped as x, "
                         f"got {tuple(kernel.shape)} and {shapes}")
    if (x_test is None) != (cross is None):
        raise ValueError("cross: expected x_test and cross = Θ(x_test, x) together (or neither)")
    if cross is not None and cross.shape != (x_test.shape[0], n):
        raise ValueError(f"cross: expected Θ(x_test, x) of shape ({x_test.shape[0]}, {n}), "
                         f"got {tuple(cross.shape)}")
    kept = torch.ones(n, dtype=torch.bool, device=kernel.device)
    kept[changed] = False
    kept = kept.nonzero().flatten()
    others = x[changed] if x_test is None else x_test.to(x.dtype)
    rows = torch.cat([x_new[changed] for x_new in xs_new])
    r = jacobian_ntk(model, rows, torch.cat([x[kept], others, rows]), **kwargs)
    s, u, m = changed.numel(), kept.numel(), others.shape[0]
    out = []
    for k in range(len(xs_new)):
        r_k = r[k * s:(k + 1) * s]
        row = torch.empty(s, n, dtype=r.dtype, device=r.device)  # Θ(xᵏ[S], xᵏ)
        row[:, kept], row[:, changed] = r_k[:, :u], r_k[:, u + m + k * s:u + m + (k + 1) * s]
        new = kernel.clone()
        new[changed], new[:, changed] = row, row.T
        if x_test is None:
            new_cross = kernel.clone()
            new_cross[:, changed] = row.T
            new_cross[changed[:, None], changed[None, :]] = r_k[:, u:u + m].T
        else:
            new_cross = cross.clone()
            new_cross[:, changed] = r_k[:, u:u + m].T
        out.append((new, new_cross))
    return out


class _Jacobians:
    """x (k, ...) → the (k × C'·P) flat Jacobian of outputs [c0, c1), ``block`` rows per
    ``vmap`` call, each parameter tensor copied into its columns (of ``buffer``'s first k
    rows when given, else of a new tensor)."""

    def __init__(self, model: nn.Module, params: dict[str, torch.Tensor],
                 frozen: dict[str, torch.Tensor], c0: int, c1: int, block: int) -> None:
        def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, {**p, **frozen}, (x.unsqueeze(0),)).reshape(-1)[c0:c1]

        self.fn = vmap(jacrev(f), in_dims=(None, 0))
        self.params, self.classes, self.block = params, c1 - c0, block
        self.sizes = [p.numel() for p in params.values()]

    def __call__(self, x: torch.Tensor, buffer: torch.Tensor | None = None) -> torch.Tensor:
        first = next(iter(self.params.values()))
        k, width = x.shape[0], sum(self.sizes)
        out = (torch.empty(k, self.classes, width, dtype=first.dtype, device=first.device)
               if buffer is None else buffer[:k].view(k, self.classes, width))
        for s in range(0, k, self.block):
            # The math attention backend is composite, so vmap batches it; the fused CPU
            # kernels have no batching rule and would run example by example.
            with sdpa_kernel([SDPBackend.MATH]):
                grads = self.fn(self.params, x[s:s + self.block])
            offset = 0
            for size, g in zip(self.sizes, grads.values(), strict=True):
                out[s:s + self.block, :, offset:offset + size] = g.reshape(g.shape[0],
                                                                            self.classes, size)
                offset += size
            del grads
        return out.reshape(k, self.classes * width)


_SYRK_LEAF = 128


def _mirror_lower_(out: torch.Tensor, block: int = 512) -> None:
    """Copy the lower triangle of the square ``out`` onto its upper triangle, in place."""
    for s in range(0, out.shape[0], block):
        diag = out[s:s + block, s:s + block]
        diag.copy_(diag.tril() + diag.tril(-1).T)
        out[s:s + block, s + block:] = out[s + block:, s:s + block].T


def _gram_lower_(out: torch.Tensor, a: torch.Tensor) -> torch.Tensor:
    """out += A Aᵀ on and below the diagonal (the strict upper triangle gets partial sums
    that the caller discards): recursive halves, so about half the flops of A Aᵀ."""
    m = a.shape[0]
    if m <= _SYRK_LEAF:
        return out.addmm_(a, a.T)
    h = m // 2
    _gram_lower_(out[:h, :h], a[:h])
    out[h:, :h].addmm_(a[h:], a[:h].T)
    _gram_lower_(out[h:, h:], a[h:])
    return out


def output_size(model: nn.Module, x: torch.Tensor) -> int:
    """C for a model mapping (n, ...) → (n, C), or 1 for (n,); one-line error otherwise."""
    with torch.no_grad():
        out = model(x[:2])
    rows = min(2, x.shape[0])
    if not isinstance(out, torch.Tensor) or out.ndim not in (1, 2) or out.shape[0] != rows:
        shape = tuple(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__
        raise ValueError(f"model: expected outputs of shape (n, C) or (n,), got {shape} "
                         f"for a batch of {rows}")
    return 1 if out.ndim == 1 else out.shape[1]
