"""Audit a user's own classifier: the practitioner's steps of Appendix A.12.

1. κ of the representation entering a layer (default: the model input), its rank, κ³ and the
   width thresholds κ⁶·n log n (MLP-Attn) and κ²·n log n (2L-ReLU) (§7 of SPEC). Token inputs
   (n × T × d) get two Grams: per example (rows = flattened examples, n × T·d) and per token
   (rows = tokens, n·T × d).
2. Influence malleability (Definition 3.4) of an estimator's scores: attack the top ``fraction``
   of training points (FGSM/PGD/MIM inside ``bounds``, same weights), recompute the scores, and
   report the flip rate, Spearman ρ and top-K overlap. 2b: with several checkpoints, the
   scores at each, their pairwise agreement, and the ensembled (mean) scores with their own
   flip rate under an attack on the checkpoints' mean loss.

Each metric is a mean over ``seeds`` (attack start and the estimator's randomness) with a
95 % Student-t interval mean ± t₀.₉₇₅,ₖ₋₁ · s/√k (none for one seed).
"""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from scipy import stats
from torch import nn

from ._validation import check_fraction, check_nonnegative, parse_enum
from .attacks import Attack, run_attack
from .data import Dataset
from .estimators import Estimator, influence_scores, training_loss
from .jacobian_ntk import output_size
from .metrics import flip_rate, spearman, top_fraction, top_k_overlap
from .spectral import effective_condition_number, width_threshold

#: Estimators whose scores depend on ``seed`` (random projections or sampling); the others
#: are computed once per model and input set.
RANDOMIZED = frozenset({Estimator.TRAK, Estimator.IF_LISSA, Estimator.IF_ARNOLDI})


@dataclass(frozen=True)
class Interval:
    """Mean over seeds with a 95 % Student-t interval (``None`` bounds for a single seed)."""

    mean: float
    low: float | None
    high: float | None
    values: tuple[float, ...]

    @classmethod
    def over(cls, values: Sequence[float]) -> Interval:
        v = np.asarray(values, dtype=np.float64)
        mean = float(v.mean())
        if v.size < 2:
            return cls(mean, None, None, tuple(v.tolist()))
        half = float(stats.t.ppf(0.975, v.size - 1) * v.std(ddof=1) / math.sqrt(v.size))
        return cls(mean, mean - half, mean + half, tuple(v.tolist()))

    def to_dict(self) -> dict:
        return {"mean": self.mean, "low": self.low, "high": self.high,
                "values": list(self.values), "interval": "95% Student-t over seeds"}


@dataclass(frozen=True)
class AuditReport:
    """The audit of one model with one estimator; ``to_dict`` is strict JSON (∞ → null)."""

    estimator: Estimator
    kappa: float  # effective κ of the per-example Gram of the audited representation
    rank: int
    kappa_cubed: float
    width_threshold: dict[str, float]  # "mlp_attention": κ⁶ n log n, "relu": κ² n log n
    representation: dict[str, Any]  # layer, shape, and each Gram's figures
    flip_rate: Interval
    spearman: Interval
    top_k_overlap: Interval
    checkpoint_agreement: dict[str, Any] | None
    settings: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        out = {"estimator": self.estimator.value, "kappa": self.kappa, "rank": self.rank,
               "kappa_cubed": self.kappa_cubed, "width_threshold": self.width_threshold,
               "representation": self.representation, "flip_rate": self.flip_rate.to_dict(),
               "spearman": self.spearman.to_dict(),
               "top_k_overlap": self.top_k_overlap.to_dict(),
               "checkpoint_agreement": self.checkpoint_agreement, "settings": self.settings}
        return strict_json(out)

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2, allow_nan=False)


def strict_json(value: Any) -> Any:
    """JSON-native values with non-finite floats as null."""
    if isinstance(value, Interval):
        return strict_json(value.to_dict())
    if isinstance(value, Mapping):
        return {str(k): strict_json(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [strict_json(v) for v in value]
    if isinstance(value, (float, np.floating)):
        return float(value) if math.isfinite(value) else None
    if isinstance(value, np.integer):
        return int(value)
    if hasattr(value, "value") and isinstance(value.value, str):
        return value.value
    return value


def load_split(x: Any, y: Any, name: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(inputs, class indices) from tensors/arrays, a package Dataset (its [0, 1] pixels and
    the index of each label among its classes) or an .npz/.pt file holding ``x`` and ``y``."""
    if isinstance(x, Dataset):
        lookup = {c: i for i, c in enumerate(x.classes)}
        return x.pixels, torch.tensor([lookup[int(c)] for c in x.labels])
    if isinstance(x, (str, Path)):
        path = Path(x)
        if path.suffix == ".npz":
            with np.load(path, allow_pickle=False) as data:
                if not {"x", "y"} <= set(data.files):
                    raise ValueError(f"{name}: expected arrays 'x' and 'y' in {path.name}")
                x, y = data["x"], data["y"]
        elif path.suffix == ".pt":
            data = torch.load(path, map_location="cpu", weights_only=True)
            if not isinstance(data, Mapping) or not {"x", "y"} <= set(data):
                raise ValueError(f"{name}: expected a dict with 'x' and 'y' in {path.name}")
            x, y = data["x"], data["y"]
        else:
            raise ValueError(f"{name}: expected a .npz or .pt file, got {path.name}")
    if y is None:
        raise ValueError(f"y_{name.removeprefix('x_')}: required unless x is a Dataset or file")
    x, y = torch.as_tensor(x), torch.as_tensor(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0] or y.is_floating_point() and bool(
            (y != y.round()).any()):
        raise ValueError(f"{name}: expected {x.shape[0]} integer labels, got labels of shape "
                         f"{tuple(y.shape)}")
    return x, y.long()


def representation(model: nn.Module, x: torch.Tensor, layer: str | None) -> torch.Tensor:
    """The input of submodule ``layer`` on ``x`` (first call, via a forward pre-hook), or
    ``x`` itself for ``layer=None``."""
    if layer is None:
        return x
    module = _submodule(model, layer)
    grabbed: list[torch.Tensor] = []
    handle = module.register_forward_pre_hook(
        lambda _m, args: grabbed.append(args[0].detach()) if not grabbed else None)
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not grabbed or not isinstance(grabbed[0], torch.Tensor):
        raise ValueError(f"layer: {layer!r} was not called with a tensor in the forward pass")
    return grabbed[0]


def _submodule(model: nn.Module, layer: str) -> nn.Module:
    modules = dict(model.named_modules())
    if layer not in modules or layer == "":
        names = [k for k in modules if k][:8]
        raise ValueError(f"layer: no submodule named {layer!r} (have: {', '.join(names)}, ...)")
    return modules[layer]


def spectral_step(rep: torch.Tensor) -> dict[str, Any]:
    """A.12 step 1 on a representation (n, ...): κ (effective), κ_d, rank, κ³ and the width
    thresholds of each Gram; n × T × d inputs get the per-example and the per-token Gram."""
    n = rep.shape[0]
    rep = rep.detach().to(torch.float64)
    grams = {"per_example": rep.reshape(n, -1)}
    if rep.ndim == 3:
        grams["per_token"] = rep.reshape(-1, rep.shape[-1])
    out: dict[str, Any] = {"shape": list(rep.shape)}
    for name, mat in grams.items():
        r = effective_condition_number(mat)
        kappa = r.kappa_effective
        out[name] = {"rows": mat.shape[0], "columns": mat.shape[1], "kappa": kappa,
                     "kappa_d": r.kappa, "rank": r.rank, "r": r.r,
                     "kappa_cubed": kappa**3 if kappa < 1e100 else math.inf,
                     "width_threshold": {"mlp_attention": width_threshold(kappa, n, 6),
                                         "relu": width_threshold(kappa, n, 2)}}
    return out


def _check_bounds(x: torch.Tensor, bounds: tuple[float, float], name: str) -> None:
    lo, hi = bounds
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point inputs the attacks can perturb, "
                         f"got {x.dtype}")
    a, b = float(x.min()), float(x.max())
    if a < lo or b > hi:
        raise ValueError(f"{name}: expected values in bounds [{lo:g}, {hi:g}], "
                         f"got values in [{a:g}, {b:g}]")


def attack_rows(models: Sequence[nn.Module], x: torch.Tensor, y: torch.Tensor,
                rows: torch.Tensor, attack: Attack, eps: float, bounds: tuple[float, float],
                alpha: float, steps: int, seed: int) -> torch.Tensor:
    """A copy of ``x`` whose ``rows`` are attacked (ℓ∞ ball ε inside ``bounds``) on the mean
    training loss of ``models`` at their own labels. The library attacks work on [0, 1]: the
    box is mapped there affinely (u = (x − lo)/(hi − lo), ε and α scaled alike)."""
    lo, hi = bounds
    scale = hi - lo

    def loss_fn(u: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        xb = lo + scale * u
        return sum(training_loss(m(xb), yb) for m in models) / len(models)

    out = x.clone()
    if rows.numel():
        u = ((x[rows] - lo) / scale).clamp(0.0, 1.0)
        u_adv = run_attack(attack, loss_fn, u, y[rows], eps / scale, alpha=alpha / scale,
                           steps=steps, seed=seed)
        out[rows] = (lo + scale * u_adv).to(x.dtype)
    return out


def _as_model(model: nn.Module, checkpoint: nn.Module | Mapping[str, torch.Tensor]
              ) -> nn.Module:
    if isinstance(checkpoint, nn.Module):
        return checkpoint.eval()
    new = copy.deepcopy(model)
    new.load_state_dict(checkpoint)
    return new.eval()


def audit(
    model: nn.Module,
    x_train: Any,
    y_train: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    *,
    estimator: Estimator | str = Estimator.NTK_LOO,
    attack: Attack | str = Attack.PGD,
    eps: float = 0.3,
    fraction: float = 0.1,
    seeds: Sequence[int] = (0,),
    checkpoints: Sequence[nn.Module | Mapping[str, torch.Tensor]] | None = None,
    bounds: tuple[float, float] = (0.0, 1.0),
    layer: str | None = None,
    parameters: Sequence[str] | None = None,
    ridge: float = 1e-3,
    alpha: float | None = None,
    steps: int = 40,
) -> AuditReport:
    """Audit ``model`` (any module mapping a batch to (n, C) logits or (n,) scores).

    Data: tensors/arrays with integer labels, package Datasets or .npz/.pt files (then the
    ``y`` arguments may be None), moved to the model's device and dtype. ``alpha`` (attack
    step) defaults to 0.01·(hi − lo), the paper's 0.01 on [0, 1]. ``parameters`` restricts
    the estimator's gradients (names or prefixes). Inputs are checked before any computation.
    """
    estimator = parse_enum(estimator, Estimator, "estimator")
    attack = parse_enum(attack.lower() if isinstance(attack, str) else attack, Attack, "attack")
    eps = check_nonnegative(eps, "eps")
    fraction = check_fraction(fraction, "fraction")
    seeds = tuple(int(s) for s in seeds)
    if not seeds:
        raise ValueError("seeds: expected at least one seed")
    lo, hi = (float(b) for b in bounds)
    if not hi > lo:
        raise ValueError(f"bounds: expected (low, high) with low < high, got {bounds!r}")
    model = copy.deepcopy(model).eval()
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    x, y = load_split(x_train, y_train, "x_train")
    xt, yt = load_split(x_test if x_test is not None else x_train, y_test, "x_test")
    x, xt = (a.to(device, dtype) if a.is_floating_point() else a.to(device) for a in (x, xt))
    y, yt = y.to(device), yt.to(device)
    _check_bounds(x, (lo, hi), "x_train")
    _check_bounds(xt, (lo, hi), "x_test")
    if layer is not None:
        _submodule(model, layer)
    classes = output_size(model, x)
    for labels, name in ((y, "y_train"), (yt, "y_test")):
        top = max(classes, 2)
        if int(labels.min()) < 0 or int(labels.max()) >= top:
            raise ValueError(f"{name}: expected labels in 0..{top - 1} for a model with "
                             f"{classes} output(s), got {int(labels.min())}..{int(labels.max())}")
    models = [model] if not checkpoints else [_as_model(model, c) for c in checkpoints]

    spectrum = spectral_step(representation(model, x, layer))
    spectrum["layer"] = layer or "input"
    main = spectrum["per_example"]

    def scores_of(net: nn.Module, x_now: torch.Tensor, seed: int) -> torch.Tensor:
        return influence_scores(net, x_now, y, xt, yt, estimator, parameters=parameters,
                                ridge=ridge, seed=seed)

    step = 0.01 * (hi - lo) if alpha is None else alpha

    def malleability_of(nets: Sequence[nn.Module], clean: dict[int, torch.Tensor]):
        rows = []
        for seed in seeds:
            est_seed = seed if estimator in RANDOMIZED else seeds[0]
            before = clean[est_seed]
            selected = top_fraction(before, fraction)
            x_adv = attack_rows(nets, x, y, selected, attack, eps, (lo, hi), step, steps, seed)
            after = sum(scores_of(m, x_adv, est_seed) for m in nets) / len(nets)
            rows.append((flip_rate(before, after, fraction), spearman(before, after),
                         top_k_overlap(before, after, fraction)))
        return [Interval.over(col) for col in zip(*rows, strict=True)]

    run_seeds = seeds if estimator in RANDOMIZED else seeds[:1]
    clean = {s: scores_of(model, x, s) for s in run_seeds}
    fr, rho, overlap = malleability_of([model], clean)

    agreement = None
    if checkpoints:
        per_ckpt = {s: [scores_of(m, x, s) for m in models] for s in run_seeds}
        first = per_ckpt[run_seeds[0]]
        k = len(first)
        rho_mat = [[spearman(first[i], first[j]) for j in range(k)] for i in range(k)]
        overlap_mat = [[top_k_overlap(first[i], first[j], fraction) for j in range(k)]
                       for i in range(k)]
        pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
        ensemble = {s: sum(v) / k for s, v in per_ckpt.items()}
        efr, erho, eover = malleability_of(models, ensemble)
        agreement = {
            "n_checkpoints": k, "spearman": rho_mat, "top_k_overlap": overlap_mat,
            "mean_pairwise_spearman": (float(np.mean([rho_mat[i][j] for i, j in pairs]))
                                       if pairs else None),
            "mean_pairwise_top_k_overlap": (float(np.mean([overlap_mat[i][j] for i, j in pairs]))
                                            if pairs else None),
            "ensemble": {"flip_rate": efr, "spearman": erho, "top_k_overlap": eover}}
    settings = {"estimator": estimator.value, "attack": attack.value, "eps": eps,
                "alpha": step, "steps": steps, "fraction": fraction, "seeds": list(seeds),
                "bounds": [lo, hi], "layer": layer, "parameters": parameters, "ridge": ridge,
                "n_train": int(x.shape[0]), "n_test": int(xt.shape[0]), "outputs": classes}
    return AuditReport(
        estimator=estimator, kappa=main["kappa"], rank=main["rank"],
        kappa_cubed=main["kappa_cubed"], width_threshold=main["width_threshold"],
        representation=spectrum, flip_rate=fr, spearman=rho, top_k_overlap=overlap,
        checkpoint_agreement=agreement, settings=settings)
