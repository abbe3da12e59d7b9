"""Attacks on the output of a named submodule, for models whose inputs cannot be perturbed
(token ids): issue 30, "Token models".

With h(x) the output of the submodule named by ``perturb`` (the word embeddings, say), the
attack solves, per batch,

    max_{‖δ‖∞ ≤ ε}  Σ_b L(f(x_b; h ← h(x_b) + δ_b), y_b),

with ε in that layer's own units and no box bounds; L is the training loss on the logits
(cross-entropy; ``losses.training_loss``), averaged over the given models (checkpoints).
The attacks of :mod:`~malleability.attacks` run unchanged on u = ½ + δ/(2ε) ∈ [0, 1]: the map is
affine and increasing, so their [0, 1] box with radius ½ around u = ½ is exactly the ε-ball in δ,
sign steps of α/(2ε) in u are steps of α in δ, and PGD's uniform start in u is uniform in δ.
:class:`SubmoduleInput` turns the model into a function of that representation, so the
estimators score the perturbed training points h(x) + δ as ordinary float inputs.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager

import torch
from torch import nn

from ._validation import check_nonnegative, check_positive, check_positive_int, check_seed
from .attacks import Attack, run_attack
from .losses import training_loss
from .model_outputs import check_labels, logit_count, logits_of


def find_submodule(model: nn.Module, name: str, argument: str = "perturb") -> nn.Module:
    """The submodule of ``model`` called ``name``; else a ValueError naming ``argument``."""
    try:
        if not isinstance(name, str) or not name:
            raise AttributeError
        return model.get_submodule(name)
    except AttributeError:
        raise ValueError(f"{argument}: {name!r} names no submodule of "
                         f"{type(model).__name__}") from None


def check_perturb(model: nn.Module, x: torch.Tensor, perturb: str | None,
                  name: str = "x_train") -> None:
    """Inputs an attack can move: floating-point ``x``, or any ``x`` with ``perturb`` naming a
    submodule of ``model``. Integer inputs (token ids) without ``perturb`` are refused with a
    one-line error that says to name one (and suggests the model's first ``nn.Embedding``)."""
    if perturb is not None:
        find_submodule(model, perturb)
        return
    if x.is_floating_point():
        return
    embedding = next((n for n, m in model.named_modules() if isinstance(m, nn.Embedding)), None)
    hint = f", e.g. {embedding!r}" if embedding else ""
    raise ValueError(f"{name}: {x.dtype} inputs (token ids) cannot be perturbed; name the "
                     f"submodule whose output to attack with perturb (CLI --perturb){hint}")


@contextmanager
def perturbed_output(model: nn.Module, submodule: str, delta: torch.Tensor) -> Iterator[None]:
    """Within the block, ``model``'s forward passes add ``delta`` to the output of the
    submodule named ``submodule`` (a forward hook, removed on exit)."""
    module = find_submodule(model, submodule)

    def add(_module: nn.Module, _args: tuple, output: object) -> torch.Tensor:
        if not isinstance(output, torch.Tensor):
            raise ValueError(f"perturb: {submodule!r} returns {type(output).__name__}, "
                             "not a tensor; name a submodule whose output is one")
        if output.shape != delta.shape:
            raise ValueError(f"perturb: a perturbation of shape {tuple(delta.shape)} does not "
                             f"fit {submodule!r}'s output of shape {tuple(output.shape)}")
        return output + delta

    handle = module.register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()


def submodule_output(model: nn.Module, submodule: str, x: torch.Tensor) -> torch.Tensor:
    """h(x): the (detached) output of the submodule named ``submodule`` on the batch ``x``."""
    seen: list[object] = []
    module = find_submodule(model, submodule)
    handle = module.register_forward_hook(lambda _m, _a, out: seen.append(out))
    try:
        with torch.no_grad():
            model(x)
    finally:
        handle.remove()
    if not seen:
        raise ValueError(f"perturb: {submodule!r} is not called by {type(model).__name__}'s "
                         "forward; name a submodule that it uses")
    if not isinstance(seen[0], torch.Tensor):
        raise ValueError(f"perturb: {submodule!r} returns {type(seen[0]).__name__}, not a "
                         "tensor; name a submodule whose output is one")
    return seen[0].detach()


class SubmoduleInput(nn.Module):
    """``model`` as a function of its submodule's output: forward(h) runs ``model`` on token ids
    of zeros, shaped h.shape[:-1], with the output of ``submodule`` replaced by h, and returns the
    logits. With h = h(x) + δ it is the perturbed model, so estimators, kernels and κ can treat
    a token model's representation as a float input. It holds only for models that use their
    ids through ``submodule`` alone: :meth:`check` compares it with ``model`` on real ids.
    The wrapped model is ``.model`` (its names gain the prefix ``model.``).
    """

    def __init__(self, model: nn.Module, submodule: str):
        super().__init__()
        self.model, self.submodule = model, submodule
        find_submodule(model, submodule)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        ids = torch.zeros(h.shape[:-1], dtype=torch.long, device=h.device)
        module = self.model.get_submodule(self.submodule)
        handle = module.register_forward_hook(lambda _m, _a, _out: h)
        try:
            return logits_of(self.model(ids))
        finally:
            handle.remove()

    def check(self, x: torch.Tensor, name: str = "x") -> torch.Tensor:
        """h(x), after checking that this module on h(x) gives ``model``'s logits on ``x``
        (else a one-line ValueError: the model reads its ids elsewhere too), and that token
        ids ``x`` (called ``name``) fit an embedding named by ``perturb``."""
        module = self.model.get_submodule(self.submodule)
        if isinstance(module, nn.Embedding) and not x.is_floating_point() and x.numel() and (
                int(x.min()) < 0 or int(x.max()) >= module.num_embeddings):
            raise ValueError(f"{name}: token ids in {int(x.min())}..{int(x.max())}, beyond the "
                             f"{module.num_embeddings} rows of {self.submodule!r}")
        h = submodule_output(self.model, self.submodule, x)
        with torch.no_grad():
            direct = logits_of(self.model(x))
            try:
                through = self(h)
            except (RuntimeError, IndexError, TypeError) as err:  # it needs more than h
                raise ValueError(f"perturb: {type(self.model).__name__} does not run on "
                                 f"{self.submodule!r}'s output alone ({type(err).__name__}: "
                                 f"{' '.join(str(err).split())[:120]}); name a submodule "
                                 "that all of the input passes through, such as the token "
                                 "embedding") from None
        if through.shape != direct.shape or not torch.allclose(
                direct, through, rtol=1e-5, atol=1e-6 * float(direct.abs().max())):
            raise ValueError(f"perturb: {type(self.model).__name__} reads its inputs beyond "
                             f"{self.submodule!r} (its logits change when only that output is "
                             "kept); name a submodule that all of the input passes through")
        return h


def attack_submodule(
    models: nn.Module | Sequence[nn.Module],
    x: torch.Tensor,
    y: torch.Tensor,
    submodule: str,
    eps: float,
    *,
    attack: Attack | str = Attack.PGD,
    alpha: float | None = None,
    steps: int = 40,
    seed: int = 0,
) -> torch.Tensor:
    """δ of the shape of h(x), ‖δ‖∞ ≤ ``eps``, that maximises the (mean over ``models``)
    training loss at labels ``y`` (class indices) when added to the output of ``submodule``.

    ``alpha`` (the step, in the layer's units) defaults to 2.5·ε/steps (Madry et al. 2018).
    The models are left as they were (no hooks, no gradients on their parameters).
    """
    models = [models] if isinstance(models, nn.Module) else list(models)
    eps = check_nonnegative(eps, "eps")
    steps = check_positive_int(steps, "steps")
    alpha = 2.5 * eps / steps if alpha is None else check_positive(alpha, "alpha")
    seed = check_seed(seed)
    h = submodule_output(models[0], submodule, x)
    check_labels(y, logit_count(models[0], x), "y")
    if eps == 0:
        return torch.zeros_like(h)

    def loss_fn(u: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        delta = eps * (2 * u - 1)
        total = torch.zeros((), dtype=u.dtype)
        for model in models:
            with perturbed_output(model, submodule, delta):
                total = total + training_loss(logits_of(model(x)), yb)
        return total / len(models)

    u = run_attack(attack, loss_fn, torch.full_like(h, 0.5), y, 0.5, alpha=alpha / (2 * eps),
                   steps=steps, seed=seed)
    return eps * (2 * u - 1)
