"""Audit a user's own classifier: the practitioner's steps of Appendix A.12.

1. κ of the representation entering a layer (default: the model input), its rank, κ³ and the
   width thresholds κ⁶·n log n (MLP-Attn) and κ²·n log n (2L-ReLU) (§7 of SPEC). Token inputs
   (n × T × d) get two Grams: per example (rows = flattened examples, n × T·d) and per token
   (rows = tokens, n·T × d).
2. Influence malleability (Definition 3.4) of an estimator's scores, by
   :func:`~malleability.measure.measure`: attack the top ``fraction`` of training points
   inside ``bounds`` (same weights), recompute the scores, and report the flip rate,
   Spearman ρ and top-K overlap. 2b: with several checkpoints, the scores at each, their
   pairwise agreement, and the ensembled (mean) scores with their own flip rate under an
   attack on the checkpoints' mean loss.

Each metric is measured against its controls (:mod:`~malleability.controls`): the
estimator's noise (two estimator seeds, no perturbation; none for a deterministic estimator)
and random ±ε signs on the same top points; the excess of the attack over them, paired by
seed, decides the verdict. Beside it: rank stability across seeds and warnings for degenerate
estimator settings (:mod:`~malleability.estimator_checks`).

Each metric is an :class:`~malleability.intervals.Estimate` over ``seeds`` (the attack's
start, the control's signs and, for a randomized estimator, its randomness); a deterministic
estimator's clean scores are computed once, at the first seed.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
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
from .controls import MARGIN, METRICS, NOISELESS, against_controls, metrics, summary_verdict
from .data import Dataset
from .embedding_attack import SubmoduleInput, check_perturb
from .estimator_checks import DAMPED, degenerate_settings, hessian_top_eigenvalue
from .estimators import Attribution, InfluenceEstimator, check_estimator, make_estimator
from .intervals import CI_METHOD, Estimate
from .jacobian_ntk import output_size, select_parameters
from .jsonsafe import dumps_strict
from .measure import attribute, measure
from .metrics import spearman, top_k_overlap
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


def estimate_dict(value: Estimate) -> dict[str, Any]:
    """An Estimate as JSON: mean, per-seed values, the 95 % interval (None with too few
    seeds) and how it was computed."""
    interval = value.interval
    return {"mean": float(value), "low": None if interval is None else interval[0],
            "high": None if interval is None else interval[1], "values": list(value.values),
            "seeds": list(value.seeds), "interval": CI_METHOD}


@dataclass(frozen=True)
class AuditReport:
    """The audit of one model with one estimator; ``to_dict`` gives plain values (estimates
    as dicts), ``to_json`` strict JSON (:mod:`~malleability.jsonsafe`).

    ``flip_rate``, ``spearman`` and ``top_k_overlap`` are the adversarial values; ``controls``
    holds the estimator-noise and random-perturbation values of the same metrics
    (:mod:`~malleability.controls`), ``excess`` the adversarial excess over them with a
    ``verdicts`` entry per metric, and ``verdict`` the estimator's. ``diagnostics``: rank
    stability across seeds, warnings for degenerate settings, the Hessian's |λ|max (damped
    estimators)."""

    estimator: str
    kappa: float  # effective κ of the per-example Gram of the audited representation
    rank: int
    kappa_cubed: float
    width_threshold: dict[str, float]  # "mlp_attention": κ⁶ n log n, "relu": κ² n log n
    representation: dict[str, Any]  # layer, shape, and each Gram's figures
    flip_rate: Estimate
    spearman: Estimate
    top_k_overlap: Estimate
    checkpoint_agreement: dict[str, Any] | None
    settings: dict[str, Any] = field(default_factory=dict)
    controls: dict[str, dict[str, float]] = field(default_factory=dict)
    excess: dict[str, float] = field(default_factory=dict)
    verdicts: dict[str, str] = field(default_factory=dict)
    verdict: str = ""
    diagnostics: dict[str, Any] = field(default_factory=dict)

    def to_dict(self) -> dict:
        def plain(value: Any) -> Any:
            if isinstance(value, Estimate):
                return estimate_dict(value)
            if isinstance(value, Mapping):
                return {k: plain(v) for k, v in value.items()}
            return value

        return plain({
            "estimator": self.estimator, "verdict": self.verdict, "verdicts": self.verdicts,
            "kappa": self.kappa, "rank": self.rank,
            "kappa_cubed": self.kappa_cubed, "width_threshold": self.width_threshold,
            "representation": self.representation, "flip_rate": self.flip_rate,
            "spearman": self.spearman, "top_k_overlap": self.top_k_overlap,
            "controls": self.controls, "excess": self.excess,
            "diagnostics": self.diagnostics,
            "checkpoint_agreement": self.checkpoint_agreement, "settings": self.settings})

    def to_json(self) -> str:
        return dumps_strict(self.to_dict(), indent=2)


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


def _check_in_bounds(x: torch.Tensor, bounds: Sequence[float], name: str) -> None:
    lo, hi = bounds
    if not x.is_floating_point():
        raise ValueError(f"{name}: expected floating-point inputs the attacks can perturb, "
                         f"got {x.dtype}")
    a, b = float(x.min()), float(x.max())
    if a < lo or b > hi:
        raise ValueError(f"{name}: expected values in bounds [{lo:g}, {hi:g}], "
                         f"got values in [{a:g}, {b:g}]")


def _as_model(model: nn.Module, checkpoint: nn.Module | Mapping[str, torch.Tensor],
              name: str = "checkpoints") -> nn.Module:
    """``model`` with the weights of ``checkpoint`` (a module of the same architecture or its
    state dict); a one-line error when they do not fit."""
    state = checkpoint.state_dict() if isinstance(checkpoint, nn.Module) else checkpoint
    new = copy.deepcopy(model)
    try:
        new.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as err:
        raise ValueError(f"{name}: does not fit {type(model).__name__} "
                         f"({' '.join(str(err).split())[:200]})") from None
    return new.eval()


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
    if settings.layer is not None:
        _submodule(model, settings.layer)
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


#: A randomized estimator's noise control compares its scores at seed s with those at
#: s + NOISE_PARTNER (no perturbation).
NOISE_PARTNER = 7919


def audit_seed(models: Sequence[nn.Module], data: tuple, estimator: InfluenceEstimator,
               settings: AuditSettings, seed: int, clean: Attribution | None = None
               ) -> dict[str, Any]:
    """The three measurements of :mod:`~malleability.controls` at one seed on ``models``
    (one network, or checkpoints: scores averaged): the adversarial attack and the random-sign
    control on the same top points from the same clean scores (``clean``, computed if None),
    and for a randomized estimator its noise (clean scores at seed s and s + NOISE_PARTNER; None
    for a deterministic one). Also the clean scores, S and the scores of S after each
    perturbation, as lists (JSON-ready)."""
    est_seed = seed if estimator.randomized else settings.seeds[0]
    parameters = settings.parameters or None
    if clean is None:
        clean = attribute(estimator, models, *data, est_seed, parameters)
    common = {"fraction": settings.fraction, "seed": est_seed, "bounds": settings.bounds,
              "before": clean, "parameters": parameters}
    adversarial = measure(models, *data, estimator, settings.attack_at(seed), **common)
    random = measure(models, *data, estimator, settings.control_at(seed), **common)
    noise = None
    if estimator.randomized:
        other = attribute(estimator, models, *data, est_seed + NOISE_PARTNER, parameters)
        noise = metrics(clean.scores, other.scores, settings.fraction)
    selected = adversarial.selected
    return {"adversarial": {k: getattr(adversarial, k) for k in METRICS},
            "random": {k: getattr(random, k) for k in METRICS}, "noise": noise,
            "estimator_seed": est_seed, "scores": clean.scores.tolist(),
            "selected": selected.tolist(),
            "adversarial_scores": adversarial.perturbed_scores[selected].tolist(),
            "random_scores": random.perturbed_scores[selected].tolist()}


def assemble(per_seed: Mapping[int, Mapping[str, Any]], margin: float) -> dict[str, Any]:
    """Per-seed results of :func:`audit_seed` as Estimates over the seeds: the adversarial
    metrics, the controls (a deterministic estimator's noise: :data:`NOISELESS`, exact), the
    excess with its verdict per metric, the estimator's verdict, and its rank stability
    (Spearman ρ between two seeds' clean scores: the noise control's ρ)."""
    seeds = list(per_seed)

    def over_seeds(kind: str) -> dict[str, Any] | None:
        if any(per_seed[s][kind] is None for s in seeds):
            return None
        return {m: Estimate([per_seed[s][kind][m] for s in seeds], seeds) for m in METRICS}

    values = {"adversarial": over_seeds("adversarial"), "random": over_seeds("random"),
              "noise": over_seeds("noise") or dict(NOISELESS)}
    judged = against_controls(values, margin)
    verdicts = {m: judged[m]["verdict"] for m in METRICS}
    return {**values, "excess": {m: judged[m]["excess"] for m in METRICS}, "verdicts": verdicts,
            "verdict": summary_verdict(verdicts), "rank_stability": values["noise"]["spearman"]}


def _malleability(models: Sequence[nn.Module], data: tuple, estimator: InfluenceEstimator,
                  settings: AuditSettings, clean: dict[int, Any]) -> dict[str, Any]:
    """:func:`assemble` over the seeds, from the clean attributions ``clean`` by estimator
    seed."""
    per_seed = {}
    for seed in settings.seeds:
        est_seed = seed if estimator.randomized else settings.seeds[0]
        per_seed[seed] = audit_seed(models, data, estimator, settings, seed, clean[est_seed])
    return assemble(per_seed, settings.margin)


def agreement_matrices(scores: Sequence[torch.Tensor], fraction: float) -> dict[str, Any]:
    """Pairwise Spearman ρ and top-K overlap between checkpoints' scores, and their means
    over the pairs (None with one checkpoint)."""
    k = len(scores)
    rho = [[spearman(scores[i], scores[j]) for j in range(k)] for i in range(k)]
    overlap = [[top_k_overlap(scores[i], scores[j], fraction) for j in range(k)]
               for i in range(k)]
    pairs = [(i, j) for i in range(k) for j in range(i + 1, k)]
    return {"n_checkpoints": k, "spearman": rho, "top_k_overlap": overlap,
            "mean_pairwise_spearman": (float(np.mean([rho[i][j] for i, j in pairs]))
                                       if pairs else None),
            "mean_pairwise_top_k_overlap": (float(np.mean([overlap[i][j] for i, j in pairs]))
                                            if pairs else None)}


def _agreement(models: Sequence[nn.Module], data: tuple, estimator: InfluenceEstimator,
               settings: AuditSettings, run_seeds: Sequence[int]) -> dict[str, Any]:
    """Step 2b: per-checkpoint scores, their pairwise ρ and top-K overlap (first seed), and
    the malleability of the ensembled scores against its controls."""
    parameters = settings.parameters or None
    per_ckpt = {s: [attribute(estimator, [m], *data, s, parameters).scores for m in models]
                for s in run_seeds}
    k = len(models)
    ensemble = {s: Attribution(sum(v) / k) for s, v in per_ckpt.items()}
    return {**agreement_matrices(per_ckpt[run_seeds[0]], settings.fraction),
            "ensemble": _malleability(models, data, estimator, settings, ensemble)}


def estimator_warnings(estimator: InfluenceEstimator, model: nn.Module, x: torch.Tensor,
                       y: torch.Tensor, n_checkpoints: int, settings: AuditSettings
                       ) -> tuple[list[str], float | None]:
    """:func:`~malleability.estimator_checks.degenerate_settings` for this audit, and the
    Hessian's |λ|max where the estimator is damped (else None)."""
    projection = None
    if estimator.name == "trak":
        from dattri.algorithm.trak import DEFAULT_PROJECTOR_KWARGS

        projection = int(DEFAULT_PROJECTOR_KWARGS["proj_dim"])
    top = (hessian_top_eigenvalue(model, x, y, settings.parameters or None)
           if estimator.name in DAMPED else None)
    return degenerate_settings(estimator.name, int(x.shape[0]), n_checkpoints, projection,
                               getattr(estimator, "damping", None), top), top


@dataclass(frozen=True)
class AuditProblem:
    """What an audit of one estimator works on, checked: the settings, the estimator, the
    model (eval mode, a copy), its checkpoints (None: none given), the data (x, y, x_test,
    y_test) on the model's device and dtype, and the record of settings a report prints."""

    settings: AuditSettings
    estimator: InfluenceEstimator
    model: nn.Module
    checkpoints: list[nn.Module] | None
    data: tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]
    record: dict[str, Any]

    def seeds_to_score(self) -> tuple[int, ...]:
        """The estimator seeds with distinct clean scores: all for a randomized estimator,
        the first for a deterministic one."""
        return self.settings.seeds if self.estimator.randomized else self.settings.seeds[:1]


def _check_sample_size(n: int, fraction: float) -> None:
    """Spearman ρ needs two scores, and a flip rate a top set S = ⌈fraction·n⌉ that leaves
    points outside it (top-K overlap of S with all points is 1 whatever the attack does)."""
    if n < 2 or math.ceil(fraction * n) >= n:
        raise ValueError(f"x_train: {n} training point(s) is too few for fraction {fraction:g}:"
                         " expected at least 2, and the top ⌈fraction·n⌉ fewer than n")


def _check_parameters_used(model: nn.Module, x: torch.Tensor, parameters: Sequence[str]
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


def prepare(model: nn.Module, x_train: Any, y_train: Any = None, x_test: Any = None,
            y_test: Any = None, *, estimator: str | InfluenceEstimator = "ntk-loo",
            checkpoints: Sequence[nn.Module | Mapping[str, torch.Tensor]] | None = None,
            settings: AuditSettings | None = None, perturb: str | None = None,
            **options: Any) -> AuditProblem:
    """Check and load an audit's inputs (see :func:`audit`) before any computation; the
    model, inputs and settings as the audit runs them (:func:`prepare_model`)."""
    settings = (settings or AuditSettings()).replace(**options)
    check_estimator(estimator, "estimator")
    est = make_estimator(estimator, ridge=settings.ridge, damping=settings.damping)
    if not isinstance(model, nn.Module):
        raise ValueError(f"model: expected a torch.nn.Module, got {type(model).__name__}")
    model = copy.deepcopy(model).eval()
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None and first.is_floating_point() else torch.float32
    device = first.device if first is not None else torch.device("cpu")
    x, y = load_split(x_train, y_train, "x_train")
    xt, yt = load_split(x_test if x_test is not None else x_train, y_test, "x_test")
    x, xt = (a.to(device, dtype) if a.is_floating_point() else a.to(device) for a in (x, xt))
    y, yt = y.to(device), yt.to(device)
    asked, ready = settings, prepare_model(model, x, xt, checkpoints, settings, perturb)
    model, x, xt, settings = ready.model, ready.x, ready.x_test, ready.settings
    _check_in_bounds(x, settings.bounds, "x_train")
    _check_in_bounds(xt, settings.bounds, "x_test")
    _check_sample_size(x.shape[0], settings.fraction)
    est.check(model, x, settings.parameters or None)
    classes = output_size(model, x)
    if settings.parameters:
        _check_parameters_used(model, x, settings.parameters)
    for labels, name in ((y, "y_train"), (yt, "y_test")):
        top = max(classes, 2)
        if int(labels.min()) < 0 or int(labels.max()) >= top:
            raise ValueError(f"{name}: expected labels in 0..{top - 1} for a model with "
                             f"{classes} output(s), got {int(labels.min())}..{int(labels.max())}")
    models = ready.checkpoints or None
    record = {"estimator": {"estimator": est.name, **est.to_dict()}, **asked.to_dict(),
              "alpha": settings.step(), "bounds": list(settings.bounds),
              "n_train": int(x.shape[0]), "n_test": int(xt.shape[0]), "outputs": classes,
              "perturb": perturb,
              "control": {"attack": RandomSign.name, "eps": settings.eps},
              "noise_partner": NOISE_PARTNER}
    return AuditProblem(settings, est, model, models, (x, y, xt, yt), record)


def audit(
    model: nn.Module,
    x_train: Any,
    y_train: Any = None,
    x_test: Any = None,
    y_test: Any = None,
    *,
    estimator: str | InfluenceEstimator = "ntk-loo",
    checkpoints: Sequence[nn.Module | Mapping[str, torch.Tensor]] | None = None,
    settings: AuditSettings | None = None,
    perturb: str | None = None,
    **options: Any,
) -> AuditReport:
    """Audit ``model`` with the registered ``estimator`` (a name, or an estimator instance
    with its own settings, e.g. ``TRAK(proj_dim=64)``).

    The model: any ``nn.Module`` whose output is (n, C) logits or (n,) scores, as a tensor,
    an object's ``.logits`` (Hugging Face) or a tuple's first element
    (:mod:`~malleability.model_outputs`). ``perturb`` names a submodule (e.g. the word
    embeddings of a token model) whose output the attack moves instead of the input
    (:func:`prepare_model`); ``layer``, ``parameters``, ``perturb`` and checkpoints are named on
    ``model`` itself.

    Data: tensors/arrays with integer labels, package Datasets or .npz/.pt files (then the
    ``y`` arguments may be None), moved to the model's device and dtype. ``settings`` (or its
    fields as keyword ``options``, e.g. ``eps=0.1, seeds=(0, 1)``): :class:`AuditSettings`.
    Inputs are checked before any computation.
    """
    p = prepare(model, x_train, y_train, x_test, y_test, estimator=estimator,
                checkpoints=checkpoints, settings=settings, perturb=perturb, **options)
    s, est = p.settings, p.estimator
    spectrum = spectral_step(representation(p.model, p.data[0], s.layer))
    spectrum["layer"] = p.record["layer"] or perturb or "input"  # named on the user's model
    main = spectrum["per_example"]
    clean = {seed: attribute(est, [p.model], *p.data, seed, s.parameters or None)
             for seed in p.seeds_to_score()}
    result = _malleability([p.model], p.data, est, s, clean)
    agreement = (_agreement(p.checkpoints, p.data, est, s, p.seeds_to_score())
                 if p.checkpoints else None)
    warnings, top = estimator_warnings(est, p.model, p.data[0], p.data[1],
                                       len(p.checkpoints or [p.model]), s)
    return AuditReport(
        estimator=est.name, kappa=main["kappa"], rank=main["rank"],
        kappa_cubed=main["kappa_cubed"], width_threshold=main["width_threshold"],
        representation=spectrum, flip_rate=result["adversarial"]["flip_rate"],
        spearman=result["adversarial"]["spearman"],
        top_k_overlap=result["adversarial"]["top_k_overlap"],
        checkpoint_agreement=agreement, settings=p.record,
        controls={"noise": result["noise"], "random": result["random"]},
        excess=result["excess"], verdicts=result["verdicts"], verdict=result["verdict"],
        diagnostics={"rank_stability": result["rank_stability"], "warnings": warnings,
                     "hessian_top_eigenvalue": top})
