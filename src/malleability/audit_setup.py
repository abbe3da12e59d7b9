"""What an audit runs on (Appendix A.12): its settings (:class:`AuditSettings`), the data
splits, the model as the audit runs it (logits, a perturbed submodule's output as its input:
:func:`prepare_model`), the checks made before any computation, and step 1, κ of the
representation entering a layer (:func:`spectral_step`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ._validation import (
    check_bounds,
    check_fraction,
    check_names,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_seeds,
    parse_bounds,
    parse_seeds,
)
from .attacks import ATTACKS, AttackLoss, RandomSign, check_attack, make_attack
from .controls import MARGIN
from .data import Dataset
from .embedding_attack import SubmoduleInput, check_perturb
from .jacobian_ntk import select_parameters
from .model_outputs import as_classifier, logits_of
from .settings import Settings, setting
from .spectral import effective_condition_number, width_threshold


def _text(parse: Callable[[str, str], Any], name: str) -> Callable[[Any], Any]:
    """A ``parse`` that reads a comma-separated text (the CLI's form) with ``parse(text,
    name)`` and leaves any other value to the field's type check."""
    return lambda value: parse(value, name) if isinstance(value, str) else value


def _names(text: str, name: str) -> tuple[str, ...]:
    """``"head,blocks.0"`` → ("head", "blocks.0"); one name is a list of one."""
    return check_names([v.strip() for v in text.split(",") if v.strip()], name)


@dataclass(frozen=True)
class AuditSettings(Settings):
    """What ``audit`` measures and how (A.12); the estimator is chosen per call."""

    attack: str = setting("pgd", f"Attack on the top points: {', '.join(ATTACKS)} "
                          "(random-sign: the random-perturbation control).", check_attack)
    eps: float = setting(0.3, "ℓ∞ budget ε, in the units of the inputs.", check_nonnegative)
    alpha: float | None = setting(None, "Step size α of PGD/MIM (default: 0.01·(high − low), "
                                  "the paper's 0.01 on [0, 1]).", check_positive)
    steps: int = setting(40, "Steps of PGD/MIM (paper: 40).", check_positive_int)
    momentum: float = setting(1.0, "Momentum μ of MIM (paper: 1.0).", check_nonnegative)
    restarts: int = setting(1, "Random restarts of PGD (worst case per point kept).",
                            check_positive_int)
    loss: AttackLoss = setting(AttackLoss.TARGET, "Loss the attack maximises: target (the "
                               "training loss) or margin (Carlini & Wagner).")
    fraction: float = setting(0.1, "Share of most helpful training points attacked (S).",
                              check_fraction)
    seeds: tuple[int, ...] = setting((0,), "Seeds, comma-separated: each gives one value of "
                                     "every metric (attack start, estimator randomness).",
                                     check_seeds, parse=_text(parse_seeds, "seeds"))
    bounds: tuple[float, ...] = setting((0.0, 1.0), "Input domain low,high: the attack stays "
                                        "inside it.", check_bounds,
                                        parse=_text(parse_bounds, "bounds"))
    ridge: float = setting(1e-3, "NTK-LOO's kernel-ridge λ, absolute (K + λI).",
                           check_nonnegative)
    damping: float = setting(1e-3, "Damping of the influence functions' Hessian inverse.",
                             check_positive)
    layer: str | None = setting(None, "Submodule whose input gets the κ diagnosis (default: "
                                "the model input).")
    parameters: tuple[str, ...] = setting((), "Parameter names or prefixes the estimators "
                                          "differentiate, comma-separated (default: all).",
                                          check_names, parse=_text(_names, "parameters"))
    margin: float = setting(MARGIN, "Verdict 'not malleable' when the excess over the "
                            "controls lies below this margin (95 % interval), in the metric's "
                            "units: 0.05 = 5 points of flip rate.", check_nonnegative)

    def check_relations(self) -> None:
        if self.alpha is None and not math.isfinite(self.bounds[1] - self.bounds[0]):
            raise ValueError(f"alpha: expected a step size: the default 0.01·(high − low) "
                             f"needs finite bounds, got {list(self.bounds)}")

    def step(self) -> float:
        """α, or 0.01·(high − low) by default."""
        return 0.01 * (self.bounds[1] - self.bounds[0]) if self.alpha is None else self.alpha

    def attack_at(self, seed: int):
        """The attack at ``seed``."""
        return make_attack(self.attack, eps=self.eps, alpha=self.step(), steps=self.steps,
                           momentum=self.momentum, seed=seed, restarts=self.restarts,
                           loss=self.loss)

    def control_at(self, seed: int) -> RandomSign:
        """The random-perturbation control at ``seed``: random ±ε signs, same ε."""
        return RandomSign(eps=self.eps, seed=seed)


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


def check_in_bounds(x: torch.Tensor, bounds: Sequence[float], name: str) -> None:
    lo, hi = bounds
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point inputs the attacks can perturb, "
                         f"got {x.dtype}")
    if not bool(torch.isfinite(x).all()):
        raise ValueError(f"{name}: contains NaN or infinite values")
    a, b = float(x.min()), float(x.max())
    if a < lo or b > hi:
        raise ValueError(f"{name}: expected values in bounds [{lo:g}, {hi:g}], "
                         f"got values in [{a:g}, {b:g}]")


def _as_model(model: nn.Module, checkpoint: nn.Module | Mapping[str, torch.Tensor],
              name: str = "checkpoints") -> nn.Module:
    """``model`` with the weights of ``checkpoint`` (a module of the same architecture or its
    state dict); a one-line error when they do not fit."""
    state = checkpoint.state_dict() if isinstance(checkpoint, nn.Module) else checkpoint
    if isinstance(state, Mapping):
        own = model.state_dict()
        for key, value in state.items():
            if not (isinstance(value, torch.Tensor) and key in own
                    and own[key].is_floating_point()):
                continue  # load_state_dict names what does not fit
            if not value.is_floating_point():
                raise ValueError(f"{name}: {key!r} is {value.dtype}, where "
                                 f"{type(model).__name__} has {own[key].dtype} weights")
            check_weights({key: value}, name)
    new = copy.deepcopy(model)
    try:
        new.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{name}: does not fit {type(model).__name__} "
                         f"({' '.join(str(err).split())[:200]})") from None
    return new.eval()


def check_weights(state: Mapping[str, torch.Tensor], name: str) -> None:
    """Refuse floating-point weights holding NaN or ±∞ (every score would be NaN)."""
    for key, value in state.items():
        if value.is_floating_point() and not bool(torch.isfinite(value).all()):
            raise ValueError(f"{name}: {key!r} holds NaN or infinite values")


@dataclass(frozen=True)
class PreparedModel:
    """What the audit runs on: the module whose output is the logits (the user's model, or
    it wrapped), its training and test inputs, its checkpoints, and the settings with the
    user's layer and parameter names in its own names."""

    model: nn.Module
    x: torch.Tensor
    x_test: torch.Tensor
    checkpoints: list[nn.Module]
    settings: AuditSettings


def prepare_model(model: nn.Module, x: torch.Tensor, x_test: torch.Tensor,
            checkpoints: Sequence[nn.Module | Mapping[str, torch.Tensor]] | None,
            settings: AuditSettings, perturb: str | None = None) -> PreparedModel:
    """The audited module and inputs, after one-line checks of the model's output, ``layer``,
    ``perturb`` and each checkpoint, named on the user's model.

    - A model returning a tensor is audited as it is. One returning ``.logits`` or a tuple
      is wrapped (:func:`~malleability.model_outputs.as_classifier`).
    - ``perturb`` names a submodule whose output h(x) the attack moves: the audit runs on
      h, the model as a function of it (:class:`~malleability.embedding_attack.SubmoduleInput`),
      so ε is in that layer's units, there are no box bounds, α defaults to 2.5·ε/steps
      (Madry et al. 2018), and κ with ``layer=None`` is that of h.
    - Integer inputs (token ids) without ``perturb`` are refused.
    """
    check_perturb(model, x, perturb)
    if not any(p.is_floating_point() for p in model.parameters()):
        raise ValueError(f"model: {type(model).__name__} has no floating-point parameters; "
                         "the estimators differentiate the loss in them")
    check_weights(dict(model.named_parameters()), "model")
    if settings.layer is not None:
        representation(model, x[:2], settings.layer)  # named, and called with a tensor
    ckpts = [_as_model(model, c, f"checkpoints[{i}]") for i, c in enumerate(checkpoints or [])]
    if perturb is None:
        with torch.no_grad():
            out = model(x[:2])
        logits_of(out)
        if isinstance(out, torch.Tensor):
            return PreparedModel(model, x, x_test, ckpts, settings)
        wrap = as_classifier
    else:
        def wrap(m: nn.Module) -> nn.Module:
            return SubmoduleInput(m, perturb)

        wrapped = wrap(model)
        x, x_test = wrapped.check(x, "x_train"), wrapped.check(x_test, "x_test")
        steps = settings.steps
        settings = settings.replace(bounds=(-math.inf, math.inf), alpha=(
            2.5 * settings.eps / steps if settings.alpha is None else settings.alpha))
    settings = settings.replace(
        layer=None if settings.layer is None else f"model.{settings.layer}",
        parameters=tuple(f"model.{p}" for p in settings.parameters))
    return PreparedModel(wrap(model), x, x_test, [wrap(c) for c in ckpts], settings)


def check_sample_size(n: int, fraction: float) -> None:
    """Spearman ρ needs two scores, and a flip rate a top set S = ⌈fraction·n⌉ that leaves
    points outside it (top-K overlap of S with all points is 1 whatever the attack does)."""
    if n < 2 or math.ceil(fraction * n) >= n:
        raise ValueError(f"x_train: {n} training point(s) is too few for fraction {fraction:g}:"
                         " expected at least 2, and the top ⌈fraction·n⌉ fewer than n")


def check_parameters_used(model: nn.Module, x: torch.Tensor, parameters: Sequence[str]
                           ) -> None:
    """Refuse ``parameters`` that the forward pass does not use (no gradient on a few rows):
    their NTK is zero and every influence score would be the ridge's alone."""
    names = select_parameters(model, parameters)
    params = dict(model.named_parameters())
    with torch.enable_grad():
        out = logits_of(model(x[:8]))
        grads = torch.autograd.grad(out.sum(), [params[k] for k in names], allow_unused=True)
    unused = [k for k, g in zip(names, grads, strict=True) if g is None or not bool(g.any())]
    if len(unused) == len(names):
        raise ValueError(f"parameters: {', '.join(parameters)} do not affect the model's output "
                         f"(no gradient on x_train[:8]): name parameters its forward pass uses")
