"""Neural tangent kernels of the two-layer networks and the distances between them (§4, B.5).

Only W is trained, so with z the hidden-layer input (x or φ(x)):

- empirical NTK: Θ_m(z, z') = (z·z') · (1/m) Σ_r 1[w_r·z > 0] 1[w_r·z' > 0],
  as matrices Θ_m = (Z Z'ᵀ) ⊙ (D D'ᵀ)/m with D = 1[Z Wᵀ > 0];
- infinite-width NTK: Θ_∞(z, z') = (z·z') · (π − arccos ρ)/(2π), ρ = cos∠(z, z').

Θ_m is the kernel of every output (A is Rademacher, so A_rc² = 1); the generic
:func:`autograd_ntk` returns the output-averaged trace (1/C) Σ_c J_c J_cᵀ, which equals it.
All kernels are float64.
"""

from __future__ import annotations

import copy
import math

import torch
from torch import nn
from torch.func import functional_call, jacrev, vmap

from ._validation import as_tensor, check_finite
from .memory import check_memory, ntk_bytes
from .models import TwoLayerNet

_F64 = torch.float64


def _pair(x1: torch.Tensor, x2: torch.Tensor | None, d: int | None = None):
    x1 = as_tensor(x1, "x1", ndim=2)
    x2 = x1 if x2 is None else as_tensor(x2, "x2", ndim=2)
    if x2.shape[1] != x1.shape[1]:
        raise ValueError(f"x2: expected {x1.shape[1]} columns to match x1, got {x2.shape[1]}")
    if d is not None and x1.shape[1] != d:
        raise ValueError(f"x1: expected {d} columns (the network's in_features), "
                         f"got {x1.shape[1]}")
    return x1, x2


def empirical_ntk(model: TwoLayerNet, x1: torch.Tensor, x2: torch.Tensor | None = None,
                  block_bytes: int = 64 * 2**20) -> torch.Tensor:
    """Θ_m(x1, x2) = (Z₁Z₂ᵀ) ⊙ (D₁D₂ᵀ)/m in closed form, on the network's raw inputs (float64).

    The attention front, if any, is applied first (z = φ(x)). Without gradients, Z₁Z₂ᵀ is
    written into the output and scaled in place by D₁D₂ᵀ/m in row blocks of at most
    ``block_bytes``, so the only n₁ × n₂ matrix allocated is the result. Differentiable in
    x1, x2 and the front's reference when they require gradients (W is held fixed; the gates
    D have zero derivative), so kernel changes can be maximised by gradient ascent.
    Raises NonFiniteError when the kernel overflows float64.
    """
    if not isinstance(model, TwoLayerNet):
        raise TypeError(f"model: empirical_ntk (closed form) needs a TwoLayerNet, got "
                        f"{type(model).__name__}; use autograd_ntk(model, x1, x2) for other "
                        "modules")
    _check_materialised(model)
    x1, x2 = _pair(x1, x2, model.in_features)
    n1, n2 = x1.shape[0], x2.shape[0]
    check_memory(ntk_bytes(model.width, n1, 0 if x2 is x1 else n2), "x1",
                 f"the empirical NTK of {n1}×{n2} points at width {model.width}",
                 model.weight.device)
    model = _as_float64(model)
    w, front = model.weight.detach(), model.front
    z1 = x1 if front is None else front(x1)
    z2 = z1 if x2 is x1 else (x2 if front is None else front(x2))
    d1 = (z1 @ w.T > 0).to(_F64)
    d2 = d1 if z2 is z1 else (z2 @ w.T > 0).to(_F64)
    if torch.is_grad_enabled() and (z1.requires_grad or z2.requires_grad):
        kernel = (z1 @ z2.T) * (d1 @ d2.T) / model.width
    else:
        kernel = _gated_gram(z1, z2, d1, d2, model.width, block_bytes)
    return _check_kernel(kernel, "the empirical NTK Θ_m", x1, x2)


@torch.no_grad()
def _gated_gram(z1: torch.Tensor, z2: torch.Tensor, d1: torch.Tensor, d2: torch.Tensor,
                width: int, block_bytes: int) -> torch.Tensor:
    """(Z₁Z₂ᵀ) ⊙ (D₁D₂ᵀ)/m with one n₁ × n₂ allocation: the product, scaled in row blocks."""
    out = z1 @ z2.T
    rows = max(1, block_bytes // (8 * out.shape[1]))
    for s in range(0, out.shape[0], rows):
        out[s:s + rows].mul_(d1[s:s + rows] @ d2.T).div_(width)
    return out


def _check_materialised(model: nn.Module) -> None:
    """Refuse modules whose parameters or buffers hold no values (meta device, lazy modules)."""
    for name, t in [*model.named_parameters(), *model.named_buffers()]:
        if t.is_meta or isinstance(t, nn.parameter.UninitializedTensorMixin):
            raise ValueError(f"model: {name} is on the meta device or uninitialised; expected "
                             "materialised weights (model.to_empty(device=...), then load them)")


def _check_kernel(kernel: torch.Tensor, stage: str, x1: torch.Tensor, x2: torch.Tensor,
                  names: tuple[str, str] = ("x1", "x2")) -> torch.Tensor:
    """``kernel`` if finite, else NonFiniteError naming the stage and the inputs."""
    a, b = names
    if x2 is x1:
        return check_finite(kernel, a, f"{stage}({a}, {a})", x1)
    return check_finite(kernel, f"{a}, {b}", f"{stage}({a}, {b})",
                        torch.stack([x1.abs().amax(), x2.abs().amax()]))


def _as_float64(module: nn.Module) -> nn.Module:
    """``module`` itself if all its floating tensors are float64, else a float64 copy."""
    tensors = [*module.parameters(), *module.buffers()]
    if all(t.dtype == _F64 for t in tensors if t.is_floating_point()):
        return module
    return copy.deepcopy(module).to(_F64)


def infinite_ntk(z1: torch.Tensor, z2: torch.Tensor | None = None) -> torch.Tensor:
    """Θ_∞(z1, z2) = (z·z') (π − arccos ρ)/(2π) on hidden-layer inputs z (float64).

    Independent of the init scale; zero rows give zero kernel entries.
    """
    z1, z2 = _pair(z1, z2)
    dot = z1 @ z2.T
    norms = z1.norm(dim=1)[:, None] * z2.norm(dim=1)[None, :]
    rho = torch.where(norms > 0, dot / norms.clamp_min(1e-300), torch.zeros_like(dot))
    kernel = dot * (math.pi - torch.arccos(rho.clamp(-1.0, 1.0))) / (2 * math.pi)
    return _check_kernel(kernel, "the infinite-width NTK Θ_∞", z1, z2, ("z1", "z2"))


def autograd_ntk(
    model: nn.Module,
    x1: torch.Tensor,
    x2: torch.Tensor | None = None,
    block_bytes: int = 256 * 2**20,
) -> torch.Tensor:
    """(1/C) Σ_c J_c(x1) J_c(x2)ᵀ over all trainable parameters, via torch.func (float64).

    Generic for any module mapping (n, ...) → (n, C) or (n,). Jacobians are formed in row
    blocks of at most ``block_bytes`` so memory stays bounded (blocks of x2 are recomputed
    for each block of x1 when they do not fit together).
    """
    x1 = as_tensor(x1, "x1", ndim=(2, 3, 4))
    symmetric = x2 is None
    x2 = x1 if symmetric else as_tensor(x2, "x2", ndim=x1.ndim)
    if x2.shape[1:] != x1.shape[1:]:
        raise ValueError(f"x2: expected trailing shape {tuple(x1.shape[1:])}, "
                         f"got {tuple(x2.shape[1:])}")
    _check_materialised(model)
    model = _as_float64(model)
    params = {k: v.detach() for k, v in model.named_parameters() if v.requires_grad}
    if not params:
        raise ValueError("model: has no trainable parameters")
    buffers = dict(model.named_buffers())
    n_params = sum(p.numel() for p in params.values())

    def f(p: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
        out = functional_call(model, (p, buffers), (x.unsqueeze(0),))
        return out.reshape(-1)

    n_out = f(params, x1[0]).numel()
    rows = max(1, block_bytes // (8 * n_params * n_out * 2))
    jac_fn = vmap(jacrev(f), in_dims=(None, 0))

    def jacobian(x: torch.Tensor) -> torch.Tensor:
        jac = jac_fn(params, x)
        return torch.cat([jac[k].reshape(x.shape[0], n_out, -1) for k in params], dim=2)

    out = torch.empty(x1.shape[0], x2.shape[0], dtype=_F64, device=x1.device)
    for i in range(0, x1.shape[0], rows):
        j1 = jacobian(x1[i:i + rows])
        for j in range(0, x2.shape[0], rows):
            j2 = j1 if symmetric and i == j else jacobian(x2[j:j + rows])
            out[i:i + rows, j:j + rows] = torch.einsum("acp,bcp->ab", j1, j2) / n_out
    return _check_kernel(out, "the autograd NTK", x1, x1 if symmetric else x2)


def function_distance(f_a: torch.Tensor, f_b: torch.Tensor) -> float:
    """‖f_a − f_b‖_F: the function-space NTK distance of Table 1 / Figure 1."""
    f_a = as_tensor(f_a, "f_a", ndim=(1, 2))
    f_b = as_tensor(f_b, "f_b", ndim=(1, 2))
    if f_a.shape != f_b.shape:
        raise ValueError(f"f_b: expected shape {tuple(f_a.shape)}, got {tuple(f_b.shape)}")
    return float(torch.linalg.norm(f_a - f_b))


def kernel_distance(k_a: torch.Tensor, k_b: torch.Tensor) -> float:
    """1 − ⟨K_a, K_b⟩_F / (‖K_a‖_F ‖K_b‖_F): the scale-free kernel distance of Figure 6."""
    k_a = as_tensor(k_a, "k_a", ndim=2)
    k_b = as_tensor(k_b, "k_b", ndim=2)
    if k_a.shape != k_b.shape:
        raise ValueError(f"k_b: expected shape {tuple(k_a.shape)}, got {tuple(k_b.shape)}")
    denom = torch.linalg.norm(k_a) * torch.linalg.norm(k_b)
    if denom == 0:
        raise ValueError("k_a: kernel distance is undefined for a zero kernel")
    return float(1.0 - (k_a * k_b).sum() / denom)
