"""The empirical NTK of any ``nn.Module``, by Jacobian contraction with bounded memory.

For a network f(·; θ) with C outputs and trainable parameters θ ∈ R^P (or a chosen subset),

    Θ(x, x') = (1/C) Σ_c J_c(x) J_c(x')ᵀ,   J_c(x) = ∂f_c(x)/∂θ ∈ R^{n×P},

the output-averaged (traced) NTK, as neural-tangents' ``trace_axes=(-1,)`` divided by C.

Each Jacobian block is formed once for each use by ``torch.func`` (``vmap`` over examples of
``jacrev`` over a chunk of outputs) and contracted at once, parameter tensor by parameter
tensor, into the kernel. ``max_memory_bytes`` bounds the Jacobians held at a time: as many
output classes per pass as fit (all of them when they fit, as in the one-shot recipe; one at
a time otherwise, so C does not multiply the memory), and row blocks of x when even one class
of all rows does not fit. Float64 by default.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ._validation import check_positive_int

DEFAULT_MAX_MEMORY_BYTES = 2 * 2**30


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


def jacobian_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    *,
    parameters: Sequence[str] | None = None,
    max_memory_bytes: int = DEFAULT_MAX_MEMORY_BYTES,
    dtype: torch.dtype = torch.float64,
) -> torch.Tensor:
    """Θ(x1, x2) = (1/C) Σ_c J_c(x1) J_c(x2)ᵀ over ``parameters`` (default: all trainable).

    ``model`` maps a batch (n, ...) to (n, C) or (n,); it is run in ``dtype`` (a converted copy
    if needed; floating inputs are converted too, integer inputs such as token ids are kept).
    Jacobians held at once stay within about ``max_memory_bytes``; each block is computed once
    when all rows of one class fit, else row blocks of x2 are recomputed for each block of x1.
    Returns an (n1 × n2) tensor of ``dtype`` on x1's device.
    """
    max_memory_bytes = check_positive_int(max_memory_bytes, "max_memory_bytes")
    symmetric = x2 is None
    x1 = _as_input(x1, "x1", dtype)
    x2 = x1 if symmetric else _as_input(x2, "x2", dtype)
    if x2.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x2: expected trailing shape {tuple(x1.shape[1:])} to match x1, "
                         f"got {tuple(x2.shape[1:])}")
    model = cast_module(model, dtype)
    names = select_parameters(model, parameters)
    params = {k: v.detach() for k, v in model.named_parameters() if k in names}
    frozen = {k: v.detach() for k, v in model.named_parameters() if k not in params}
    frozen.update(model.named_buffers())
    n_out = output_size(model, x1)
    row_bytes = sum(p.numel() for p in params.values()) * torch.finfo(dtype).bits // 8

    def jacobian_fn(c0: int, c1: int):
        def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
            return functional_call(model, {**p, **frozen}, (x.unsqueeze(0),)).reshape(-1)[c0:c1]
        return vmap(jacrev(f), in_dims=(None, 0))

    n1, n2 = x1.shape[0], x2.shape[0]
    rows_all = n1 if symmetric else n1 + n2
    if rows_all * row_bytes <= max_memory_bytes:  # every row at once, classes per pass
        per_pass = max(1, min(n_out, max_memory_bytes // (rows_all * row_bytes)))
        rows = rows_all
    else:  # one class per pass, two row blocks at a time
        per_pass, rows = 1, max(1, max_memory_bytes // (2 * row_bytes))
    out = torch.zeros(n1, n2, dtype=dtype, device=x1.device)
    for c0 in range(0, n_out, per_pass):
        jac = jacobian_fn(c0, min(n_out, c0 + per_pass))
        for i in range(0, n1, rows):
            j1 = jac(params, x1[i:i + rows])
            for j in range(i if symmetric else 0, n2, rows):
                j2 = j1 if symmetric and i == j else jac(params, x2[j:j + rows])
                out[i:i + rows, j:j + rows] += _contract(j1, j2)
    if symmetric:
        out = torch.triu(out) + torch.triu(out, 1).T
    return out / n_out


def _contract(j1: dict[str, torch.Tensor], j2: dict[str, torch.Tensor]) -> torch.Tensor:
    """Σ over parameter tensors and outputs of J1 J2ᵀ, without concatenating the Jacobians."""
    total = None
    for k, a in j1.items():
        a = a.reshape(a.shape[0], -1)
        b = a if j2 is j1 else j2[k].reshape(j2[k].shape[0], -1)
        term = a @ b.T
        total = term if total is None else total.add_(term)
    return total


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
