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

import math

import numpy as np
import torch
from scipy.sparse.linalg import LinearOperator, eigsh
from torch import nn

from ._validation import as_tensor, check_finite
from .attention import TrainableProjections
from .jacobian_ntk import cast_module, jacobian_ntk
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


def empirical_ntk(model: nn.Module, x1: torch.Tensor, x2: torch.Tensor | None = None,
                  block_bytes: int = 64 * 2**20) -> torch.Tensor:
    """Θ_m(x1, x2) = (Z₁Z₂ᵀ) ⊙ (D₁D₂ᵀ)/m in closed form, on the network's raw inputs (float64).

    The attention front, if any, is applied first (z = φ(x)). Without gradients, Z₁Z₂ᵀ is
    written into the output and scaled in place by D₁D₂ᵀ/m in row blocks of at most
    ``block_bytes``, so the only n₁ × n₂ matrix allocated is the result. Differentiable in
    x1, x2 and the front's reference when they require gradients (W is held fixed; the gates
    D have zero derivative), so kernel changes can be maximised by gradient ascent.
    Any other module gets the generic (1/C) Σ_c J_c J_cᵀ of :func:`autograd_ntk`.
    Raises NonFiniteError when the kernel overflows float64.
    """
    if not isinstance(model, TwoLayerNet):
        return autograd_ntk(model, x1, x2)
    _check_materialised(model)
    x1, x2 = _pair(x1, x2, model.in_features)
    n1, n2 = x1.shape[0], x2.shape[0]
    check_memory(ntk_bytes(model.width, n1, 0 if x2 is x1 else n2), "x1",
                 f"the empirical NTK of {n1}×{n2} points at width {model.width}",
                 model.weight.device)
    model = cast_module(model, _F64)
    w, front = model.weight.detach(), model.front
    z1 = x1 if front is None else front(x1)
    z2 = z1 if x2 is x1 else (x2 if front is None else front(x2))
    d1 = (z1 @ w.T > 0).to(_F64)
    d2 = d1 if z2 is z1 else (z2 @ w.T > 0).to(_F64)
    if torch.is_grad_enabled() and (z1.requires_grad or z2.requires_grad):
        kernel = (z1 @ z2.T) * (d1 @ d2.T) / model.width
    else:
        kernel = _gated_gram(z1, z2, d1, d2, model.width, block_bytes)
    if isinstance(front, TrainableProjections):
        kernel = kernel + projection_ntk(model, x1, x1 if x2 is x1 else x2)
    return _check_kernel(kernel, "the empirical NTK Θ_m", x1, x2)


def projection_ntk(model: TwoLayerNet, x1: torch.Tensor, x2: torch.Tensor) -> torch.Tensor:
    """The QKV block of the empirical NTK of a network with trainable projections
    (Proposition 4.13), (1/C) Σ_c Σ_{P ∈ {W_Q, W_K, W_V}} ⟨∂f_c/∂P(x1), ∂f_c/∂P(x2)⟩ in closed
    form. With (q, p, s, u) = (x W_Q, q W_Kᵀ, p RᵀR, s W_V), φ = u/‖u‖, the gradient in φ
    g_c = (1[φWᵀ > 0] ⊙ a_c) W/√m, in u ĝ_c = (g_c − (g_c·φ)φ)/‖u‖, t_c = ĝ_c W_Vᵀ RᵀR and
    r_c = t_c W_K: W_Q gives (x·x')(r_c·r'_c), W_K (q·q')(t_c·t'_c), W_V (s·s')(ĝ_c·ĝ'_c).
    Float64, on the network inputs x (no preprocessing)."""
    model = cast_module(model, _F64)
    front, w, a = model.front, model.weight.detach(), model.readout
    scale = model.width ** -0.5

    def side(x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        q, _, s, u = (t.detach() for t in front.parts(x))
        norm = u.norm(dim=1, keepdim=True)
        phi = u / norm
        return x, q, s, phi, norm, (phi @ w.T > 0).to(_F64)

    sides = [side(x1), side(x2)]
    kernel = torch.zeros(x1.shape[0], x2.shape[0], dtype=_F64, device=w.device)
    products = [sides[0][i] @ sides[1][i].T for i in range(3)]  # x·x', q·q', s·s'
    w_v, w_k, gram = (t.detach() for t in (front.w_v, front.w_k, front.gram))
    for c in range(a.shape[1]):
        grads = []
        for _, _, _, phi, norm, gate in sides:
            g = (gate * a[:, c]) @ w * scale
            g_hat = (g - (g * phi).sum(1, keepdim=True) * phi) / norm
            t = g_hat @ w_v.T @ gram
            grads.append((t @ w_k, t, g_hat))
        for product, (left, right) in zip(products, zip(*grads, strict=True), strict=True):
            kernel += product * (left @ right.T)
    return kernel / a.shape[1]


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
    """(1/C) Σ_c J_c(x1) J_c(x2)ᵀ over all trainable parameters (float64): the generic
    :func:`~malleability.jacobian_ntk.jacobian_ntk` with ``max_memory_bytes=block_bytes``,
    for any module mapping (n, ...) → (n, C) or (n,). Raises on unmaterialised (meta, lazy)
    parameters and, with NonFiniteError, on a kernel that overflows float64."""
    _check_materialised(model)
    kernel = jacobian_ntk(model, x1, x2, max_memory_bytes=block_bytes)
    a = as_tensor(x1, "x1", dtype=None)
    return _check_kernel(kernel, "the autograd NTK", a, a if x2 is None else
                         as_tensor(x2, "x2", dtype=None))


def network_ntk_top(model: TwoLayerNet, h: torch.Tensor, tol: float = 1e-6, seed: int = 0
                    ) -> float:
    """λ_max(J Jᵀ), J = ∂ vec f(h; W)/∂ vec W (n·C × m·d): the top eigenvalue of the network's
    NTK over all n·C outputs at hidden-layer inputs ``h``, whose blocks
    Θ_cc' = (H Hᵀ) ⊙ (D diag(A_c ⊙ A_c') Dᵀ)/m couple the outputs (Θ_cc = Θ_m; the blocks
    c ≠ c' vanish only as m → ∞). By Lanczos (scipy's ``eigsh``, relative ``tol``, seeded
    start) on v ↦ J(Jᵀv) from autograd (vjp, then jvp), float64. Gradient descent at step η
    on the mean MSE over the n rows of ``h`` is linearly stable at W only if η·λ_max/n < 2."""
    h = as_tensor(h, "h", ndim=2, dtype=_F64)
    if h.shape[1] != model.in_features:
        raise ValueError(f"h: expected {model.in_features} columns (the hidden layer's inputs), "
                         f"got {h.shape[1]}")
    w = model.weight.detach().to(device=h.device, dtype=_F64)
    out, pullback = torch.func.vjp(lambda weight: model.head(h, weight), w)

    def matvec(v: np.ndarray) -> np.ndarray:
        (g,) = pullback(torch.as_tensor(v, dtype=_F64, device=w.device).reshape(out.shape))
        _, jg = torch.func.jvp(lambda weight: model.head(h, weight), (w,), (g,))
        return jg.reshape(-1).cpu().numpy()

    size = out.numel()
    start = np.random.default_rng(seed).standard_normal(size)
    if size == 1:
        return float(matvec(start)[0] / start[0])
    top = eigsh(LinearOperator((size, size), matvec=matvec, dtype=np.float64), k=1, which="LA",
                tol=tol, v0=start, return_eigenvectors=False)
    return float(top[0])


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


# --- gradient descent in the kernel regime (docs/method.md §4, "Kernel gradient descent") ---


def ntk_step(kernel: torch.Tensor, scale: float = 1.0) -> float:
    """η = ``scale``·n/λ_max(Θ): the NTK-scaled step of full-batch gradient descent on the mean
    MSE over n points, under which the linearised model's residual contracts by 1 − ηλ/n
    along each eigenvector of Θ (stable for η < 2n/λ_max, so ``scale`` < 2)."""
    kernel = as_tensor(kernel, "kernel", ndim=2, dtype=_F64)
    if not 0 < scale < 2:
        raise ValueError(f"scale: expected a number in (0, 2) (stable steps), got {scale!r}")
    top = float(torch.linalg.eigvalsh(kernel)[-1])
    if not top > 0:
        raise ValueError("kernel: expected a kernel with a positive eigenvalue, got "
                         f"λ_max = {top:g}")
    return scale * kernel.shape[0] / top


def _contractions(kernel: torch.Tensor, lr: float, steps: int
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(V, (1 − ηλ/n)^t, g = (1 − (1 − ηλ/n)^t)/λ) over Θ = V diag(λ) Vᵀ; g → ηt/n at λ = 0."""
    n = kernel.shape[0]
    lam, vecs = torch.linalg.eigh(kernel)
    lam = lam.clamp_min(0.0)  # round-off below zero on a PSD kernel
    rate = lr * lam / n
    # 1 − (1 − r)^t without cancellation at small r (expm1/log1p), directly at larger r
    shrunk = torch.where(rate <= 0.5, -torch.expm1(steps * torch.log1p(-rate.clamp(max=0.5))),
                         1 - (1 - rate) ** steps)
    decay = 1 - shrunk
    g = torch.where(lam > 0, shrunk / lam.clamp_min(1e-300),
                    torch.full_like(lam, lr * steps / n))
    return vecs, decay, g


def kernel_gd(kernel: torch.Tensor, kernel_test: torch.Tensor, f0: torch.Tensor,
              f0_test: torch.Tensor, y: torch.Tensor, lr: float, steps: int
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """The outputs on the training and test points after ``steps`` steps of gradient descent
    at step ``lr`` = η on the mean MSE ½‖f − y‖² of the model linear in its parameters with
    kernel Θ (``kernel`` = Θ(X, X), ``kernel_test`` = Θ(X_t, X)) from outputs ``f0``,
    ``f0_test``: f_{s+1} = f_s − (η/n) Θ (f_s(X) − y), in closed form,
    f_t(X) = y + (I − ηΘ/n)^t r₀, f_t(X_t) = f₀(X_t) − Θ_t Θ⁻¹(I − (I − ηΘ/n)^t) r₀,
    r₀ = f₀(X) − y (Θ⁻¹(I − (I − ηΘ/n)^t) → ηt/n on Θ's null space). Float64; η must be
    below 1/(λ_max/n) for the contraction to hold (see :func:`ntk_step`)."""
    k = as_tensor(kernel, "kernel", ndim=2, dtype=_F64)
    k_t = as_tensor(kernel_test, "kernel_test", ndim=2, dtype=_F64)
    f0, f0_t, y = (as_tensor(a, name, ndim=2, dtype=_F64) for a, name in
                   ((f0, "f0"), (f0_test, "f0_test"), (y, "y")))
    n = k.shape[0]
    if k.shape != (n, n) or k_t.shape[1] != n or f0.shape[0] != n or y.shape != f0.shape \
            or f0_t.shape != (k_t.shape[0], f0.shape[1]):
        raise ValueError(f"kernel_test: expected shapes Θ (n, n), Θ_t (n_t, n), f0 and y (n, C), "
                         f"f0_test (n_t, C); got {tuple(k.shape)}, {tuple(k_t.shape)}, "
                         f"{tuple(f0.shape)}, {tuple(y.shape)}, {tuple(f0_t.shape)}")
    if lr <= 0 or steps < 0:
        raise ValueError(f"lr: expected a positive step and steps ≥ 0, got {lr!r}, {steps!r}")
    vecs, decay, g = _contractions(k, lr, steps)
    r0 = vecs.T @ (f0 - y)
    train = y + vecs @ (decay[:, None] * r0)
    test = f0_t - k_t @ (vecs @ (g[:, None] * r0))
    return train, test


def kernel_gd_steps(kernel: torch.Tensor, f0: torch.Tensor, y: torch.Tensor, lr: float,
                    tolerance: float, max_steps: int) -> int:
    """The fewest steps t ≤ ``max_steps`` after which the kernel's gradient-descent training
    loss (:func:`kernel_gd`) is at most ``tolerance`` times its initial value (``max_steps``
    when it never is): the calibration of a run's length by its training loss alone. The loss
    (1/2n) Σ_k (1 − ηλ_k/n)^{2t} ‖(Vᵀr₀)_k‖² falls monotonically for η ≤ n/λ_max, so the
    search is by bisection."""
    k = as_tensor(kernel, "kernel", ndim=2, dtype=_F64)
    r0 = as_tensor(f0, "f0", ndim=2, dtype=_F64) - as_tensor(y, "y", ndim=2, dtype=_F64)
    lam, vecs = torch.linalg.eigh(k)
    weight = (vecs.T @ r0).square().sum(1)
    rate = (lr * lam.clamp_min(0.0) / k.shape[0]).clamp(max=1.0)

    def ratio(t: int) -> float:
        return float((weight * (1 - rate) ** (2 * t)).sum() / weight.sum())

    if ratio(max_steps) > tolerance:
        return max_steps
    lo, hi = 0, max_steps  # ratio(lo) > tolerance ≥ ratio(hi)
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (mid, hi) if ratio(mid) > tolerance else (lo, mid)
    return hi
