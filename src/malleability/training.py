"""Training the two-layer networks (Appendix A.4): Adam, mini-batches, loss + λ_reg‖W − W₀‖².

The network maps its inputs x (pixels, when it holds its preprocessing) to outputs, so
adversarial training attacks x through the preprocessing. Multi-class targets are one-hot with
cross-entropy; binary targets are ±1 with ½(f − y)² (docs/method.md §1, §3).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, is_dataclass
from functools import partial
from typing import Literal

import torch
from torch import nn
from tqdm.auto import tqdm

from ._validation import (
    NonFiniteError,
    as_tensor,
    check_nonnegative,
    check_positive,
    check_positive_int,
    check_rows_match,
    check_seed,
    parse_enum,
)
from .losses import Loss, accuracy, loss_for_targets, per_example_loss
from .memory import check_memory, network_bytes
from .models import TwoLayerNet
from .resume import resume_point
from .settings import Settings, setting

#: ``adversary(loss_fn, x_b, y_b, epoch)`` → the batch to train on (epochs count from 1).
Adversary = Callable[[Callable[[torch.Tensor, torch.Tensor], torch.Tensor], torch.Tensor,
                      torch.Tensor, int], torch.Tensor]


@dataclass(frozen=True)
class TrainSettings(Settings):
    """Optimiser settings; defaults are the paper's (A.4). λ_reg's value and convention are
    lost in the paper's text: the default 0 is the value calibrated on Table 5's accuracies
    (docs/method.md, "Unstated settings"; 1e-3 summed costs 23 points on MNIST)."""

    epochs: int = setting(500, "Training epochs (paper: 500).", check_positive_int)
    lr: float = setting(1e-3, "Adam learning rate (paper: 1e-3).", check_positive)
    batch_size: int = setting(128, "Mini-batch size (paper: 128).", check_positive_int)
    l2_to_init: float = setting(0.0, "λ_reg in λ_reg‖W − W₀‖² (paper: value lost; 0 is the "
                                "calibrated value, docs/reproduction.md).",
                                check_nonnegative)
    l2_convention: Literal["sum", "mean"] = setting(
        "sum", "‖W − W₀‖² summed or averaged over the weights (paper: not stated).")
    seed: int = setting(42, "Seed of the mini-batch order (paper: 42).", check_seed)
    checkpoints: tuple[int, ...] = setting((), "Epochs at which W is kept (0 = init).",
                                           cli=False)
    progress: bool = setting(True, "Show a progress bar.", cli=False)

    def check_relations(self) -> None:
        for e in self.checkpoints:
            if not 0 <= e <= self.epochs:
                raise ValueError(f"checkpoints: expected epochs in 0..{self.epochs}, got {e}")


@dataclass
class TrainHistory:
    """Per-epoch training loss, test loss and test accuracy; W at the requested epochs."""

    train_loss: list[float] = field(default_factory=list)
    test_loss: list[float] = field(default_factory=list)
    test_accuracy: list[float] = field(default_factory=list)
    checkpoints: dict[int, torch.Tensor] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"train_loss": self.train_loss, "test_loss": self.test_loss,
                "test_accuracy": self.test_accuracy}


def objective(model: TwoLayerNet, w0: torch.Tensor, h: torch.Tensor, y: torch.Tensor,
              loss: Loss, l2_to_init: float, l2_convention: str = "sum") -> torch.Tensor:
    """mean_b L(f_b, y_b) + λ_reg ‖W − W₀‖² (summed, or averaged with ``l2_convention``
    "mean", over the weights), with f = head(h) on hidden-layer inputs h."""
    data = per_example_loss(model.head(h), y, loss).mean()
    l2 = l2_per_weight(l2_to_init, l2_convention, model.weight.numel())
    return data + l2 * ((model.weight - w0) ** 2).sum()


def l2_per_weight(l2_to_init: float, l2_convention: str, weights: int) -> float:
    """The coefficient of each squared weight: λ_reg (``"sum"``) or λ_reg / #weights
    (``"mean"``), for a network of ``weights`` first-layer weights."""
    return l2_to_init / weights if l2_convention == "mean" else l2_to_init


@torch.no_grad()
def objective_and_gradient_(w: torch.Tensor, w0: torch.Tensor, readout: torch.Tensor,
                            h: torch.Tensor, y: torch.Tensor, loss: Loss | str,
                            l2: float, grad: torch.Tensor) -> torch.Tensor:
    """:func:`objective` of k networks sharing their inputs, without autograd: the k values
    (a (k,) tensor, no sync) and their gradients written into ``grad``.

    W (k·m × d) stacks the networks' first layers, A (k × m × C) their readouts. With
    P = h Wᵀ, f_j = σ(P_j) A_j/√m and G = ∂L/∂f / b (f − y for MSE, softmax(f) − y for
    cross-entropy), ∇_W = ((G Aᵀ/√m) ⊙ 1[P > 0])ᵀ h + 2l (W − W₀), with l the coefficient of
    each squared weight (:func:`l2_per_weight`): W − W₀ is written into ``grad`` and the
    product added to it by one in-place GEMM (with l = 0, the GEMM alone).
    """
    loss = parse_enum(loss, Loss, "loss")
    k, m, _ = readout.shape
    b, scale = h.shape[0], m ** -0.5
    act = torch.relu(h @ w.T)  # b × k·m
    # The readout products as Aᵀσ(P)ᵀ: a GEMM with b columns, not one with C (much faster).
    a_t = readout.transpose(1, 2)  # k × C × m
    f = torch.bmm(a_t, act.T.view(k, m, b)).permute(2, 0, 1).mul_(scale)  # b × k × C
    data = per_example_loss(f, y[:, None, :], loss).mean(0)
    g = f - y[:, None, :] if loss is Loss.MSE else torch.softmax(f, dim=2) - y[:, None, :]
    back = torch.bmm(g.transpose(0, 1), a_t).transpose(0, 1).reshape(b, k * m)
    back.mul_(act.sign_()).mul_(scale / b)  # σ'(P) = sign(σ(P))
    if l2 == 0:  # no regulariser: skip the passes over W − W₀ (memory-bound, m·d each)
        torch.mm(back.T, h, out=grad)
        return data
    torch.sub(w, w0, out=grad)
    reg = torch.linalg.vector_norm(grad.view(k, -1), dim=1).square_()
    grad.addmm_(back.T, h, beta=2 * l2)
    return data + l2 * reg


def train(
    model: TwoLayerNet,
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    adversary: Adversary | None = None,
    loss: Loss | str | None = None,
) -> TrainHistory:
    """Train ``model`` in place on (``x``, ``y``) and return its history.

    ``x`` is what the model takes (pixels when it holds its preprocessing); ``y`` is (n × C):
    one-hot or ±1 (see :func:`loss_for_targets`). With ``adversary`` (adversarial training)
    each batch is replaced by ``adversary(loss_fn, x_b, y_b, epoch)`` against the current
    weights, in the space of ``x``. Inside :func:`~.resume.resumable` the training saves its
    state between epochs and goes on from a saved state of the same inputs, bitwise.
    """
    y = as_tensor(y, "y", ndim=2, dtype=model.weight.dtype)
    x = as_tensor(x, "x", ndim=None, dtype=None)
    check_rows_match(x, y, "x", "y")
    loss = loss_for_targets(y) if loss is None else parse_enum(loss, Loss, "loss")
    if (x_test is None) != (y_test is None):
        raise ValueError("y_test: give x_test and y_test together")
    if x_test is not None:
        y_test = as_tensor(y_test, "y_test", ndim=2, dtype=model.weight.dtype,
                           device=model.weight.device)
        check_rows_match(as_tensor(x_test, "x_test", dtype=None), y_test, "x_test", "y_test")
    if _trains_front(model):
        if adversary is not None:
            raise ValueError("adversary: adversarial training of trainable projections is not "
                             "supported; expected adversary=None")
        return _train_with_front(model, x, y, settings, x_test, y_test, loss)
    device = model.weight.device
    check_memory(network_bytes(model.in_features, model.width, model.num_classes,
                               itemsize=model.weight.element_size(),
                               train_batch=min(settings.batch_size, x.shape[0])),
                 "width", f"training at width {model.width}", device)
    x, y = x.to(device), y.to(device)

    def to_hidden(xb: torch.Tensor) -> torch.Tensor:
        """Model inputs x → hidden-layer inputs h: preprocessing, then the attention front."""
        return model.hidden_inputs(model.inputs(xb))

    # Without an adversary the inputs never move, so they are mapped once; with one, every
    # (perturbed) batch is mapped anew.
    with torch.no_grad():
        h_test = None if x_test is None else to_hidden(x_test.to(device))
        if adversary is None:
            x = to_hidden(x)
    batch_hidden = _identity if adversary is None else to_hidden
    w0 = model.weight.detach().clone()
    # Gradients are written analytically (objective_and_gradient_), so Adam's fused kernel
    # does the whole update in one pass where the device supports it.
    model.weight.grad, readout = torch.empty_like(w0), model.readout[None]
    l2 = l2_per_weight(settings.l2_to_init, settings.l2_convention, w0.numel())
    optimizer = torch.optim.Adam([model.weight], lr=settings.lr, fused=True)
    gen = torch.Generator().manual_seed(settings.seed)
    history = TrainHistory()
    if 0 in settings.checkpoints:
        history.checkpoints[0] = w0.cpu().clone()

    def batch_loss(xb: torch.Tensor, yb: torch.Tensor) -> torch.Tensor:
        return per_example_loss(model.head(to_hidden(xb)), yb, loss)

    point = None if not resumable_adversary(adversary) else resume_point(
        [*model.state_dict().values(), x, y, x_test, y_test],
        {"settings": {k: v for k, v in settings.to_dict().items() if k != "progress"},
         "loss": loss.value, "adversary": repr(adversary), "device": str(device)})
    saved = None if point is None else point.load()
    if saved is not None:
        _restore(saved, model, optimizer, gen, history)
    first = 1 if saved is None else int(saved["epoch"]) + 1
    n = x.shape[0]
    x_epoch, y_epoch = torch.empty_like(x), torch.empty_like(y)  # reused, shuffled per epoch
    bar = tqdm(range(first, settings.epochs + 1), desc="train", disable=not settings.progress,
               leave=False, initial=first - 1, total=settings.epochs)
    for epoch in bar:
        order = torch.randperm(n, generator=gen).to(device)
        torch.index_select(x, 0, order, out=x_epoch)
        torch.index_select(y, 0, order, out=y_epoch)
        total_t = torch.zeros((), dtype=y.dtype, device=device)  # summed on device, no sync
        for s in range(0, n, settings.batch_size):
            xb, yb = x_epoch[s:s + settings.batch_size], y_epoch[s:s + settings.batch_size]
            if adversary is not None:
                xb = adversary(batch_loss, xb, yb, epoch)
            with torch.no_grad():
                value = objective_and_gradient_(model.weight, w0, readout, batch_hidden(xb),
                                                yb, loss, l2, model.weight.grad)
            optimizer.step()
            total_t += value[0] * xb.shape[0]
        total = _finite_epoch_loss(float(total_t), epoch, settings)
        history.train_loss.append(total / n)
        if h_test is not None:
            with torch.no_grad():
                test_loss, test_acc = _loss_and_accuracy(model.head(h_test), y_test, loss)
            history.test_loss.append(test_loss)
            history.test_accuracy.append(test_acc)
            bar.set_postfix(loss=f"{total / n:.4f}", test_acc=f"{test_acc:.3f}")
        if epoch in settings.checkpoints:
            history.checkpoints[epoch] = model.weight.detach().cpu().clone()
        if point is not None:
            point.save(partial(_state, epoch, model, optimizer, gen, history),
                       final=epoch == settings.epochs)
    return history


#: The keys of a training's saved state (:func:`_state`).
STATE_KEYS = ("epoch", "weight", "step", "exp_avg", "exp_avg_sq", "generator", "history",
              "kept_epochs", "kept")


def resumable_adversary(adversary: Adversary | None) -> bool:
    """Whether a training with ``adversary`` can be known again after a restart: none, or a
    dataclass (its repr names its settings; a closure's names only its address)."""
    return adversary is None or is_dataclass(adversary)


def _state(epoch: int, model: TwoLayerNet, optimizer: torch.optim.Adam,
           gen: torch.Generator, history: TrainHistory) -> dict:
    """The state after ``epoch`` that :func:`_restore` continues from (on the CPU): W,
    Adam's step and moments, the shuffling generator, the history."""
    adam = optimizer.state[model.weight]
    kept = sorted(history.checkpoints)
    return {"epoch": epoch, "weight": model.weight.detach().cpu().clone(),
            **{k: adam[k].detach().cpu().clone() for k in ("step", "exp_avg", "exp_avg_sq")},
            "generator": gen.get_state(), "history": history.to_dict(), "kept_epochs": kept,
            "kept": torch.stack([history.checkpoints[e] for e in kept]) if kept
            else torch.empty(0)}


def _restore(saved: dict, model: TwoLayerNet, optimizer: torch.optim.Adam,
             gen: torch.Generator, history: TrainHistory) -> None:
    """Put the state of :func:`_state` back: W and Adam's state on W's device."""
    device = model.weight.device
    model.weight.data.copy_(saved["weight"])
    optimizer.state[model.weight] = {k: saved[k].to(device)
                                     for k in ("step", "exp_avg", "exp_avg_sq")}
    gen.set_state(saved["generator"])
    for name, values in saved["history"].items():
        getattr(history, name).extend(values)
    history.checkpoints.update(zip(saved["kept_epochs"], saved["kept"], strict=True))


def _trains_front(model: TwoLayerNet) -> bool:
    """Whether the attention front has trainable parameters (trainable QKV, Prop. 4.13)."""
    return model.front is not None and any(p.requires_grad for p in model.front.parameters())


def _train_with_front(model: TwoLayerNet, x: torch.Tensor, y: torch.Tensor,
                      settings: TrainSettings, x_test: torch.Tensor | None,
                      y_test: torch.Tensor | None, loss: Loss) -> TrainHistory:
    """:func:`train` for a network whose front trains too (trainable QKV): Adam on W and the
    front's parameters together, gradients by autograd through φ, the same batches, loss and
    λ_reg‖θ − θ₀‖² over every trained parameter; checkpoints keep W."""
    device = model.weight.device
    y = y.to(device)
    params = [p for p in model.parameters() if p.requires_grad]
    with torch.no_grad():
        z = model.inputs(x.to(device)).to(model.weight.dtype)
        z_test = None if x_test is None else model.inputs(x_test.to(device))
    start = [p.detach().clone() for p in params]
    l2 = l2_per_weight(settings.l2_to_init, settings.l2_convention,
                       sum(p.numel() for p in params))
    optimizer = torch.optim.Adam(params, lr=settings.lr)
    gen = torch.Generator().manual_seed(settings.seed)
    history = TrainHistory()
    if 0 in settings.checkpoints:
        history.checkpoints[0] = model.weight.detach().cpu().clone()
    n = z.shape[0]
    for epoch in tqdm(range(1, settings.epochs + 1), desc="train (W and QKV)",
                      disable=not settings.progress, leave=False):
        order = torch.randperm(n, generator=gen).to(device)
        total = torch.zeros((), dtype=y.dtype, device=device)
        for s in range(0, n, settings.batch_size):
            rows = order[s:s + settings.batch_size]
            value = per_example_loss(model.head(model.hidden_inputs(z[rows])), y[rows],
                                     loss).mean()
            if l2:
                value = value + l2 * sum(((p - p0) ** 2).sum()
                                         for p, p0 in zip(params, start, strict=True))
            optimizer.zero_grad(set_to_none=False)
            value.backward()
            optimizer.step()
            total += value.detach() * rows.numel()
        history.train_loss.append(_finite_epoch_loss(float(total), epoch, settings) / n)
        if z_test is not None:
            with torch.no_grad():
                test_loss, test_acc = _loss_and_accuracy(
                    model.head(model.hidden_inputs(z_test)), y_test, loss)
            history.test_loss.append(test_loss)
            history.test_accuracy.append(test_acc)
        if epoch in settings.checkpoints:
            history.checkpoints[epoch] = model.weight.detach().cpu().clone()
    return history


def train_batched(
    models: Sequence[TwoLayerNet],
    x: torch.Tensor,
    y: torch.Tensor,
    settings: TrainSettings,
    x_test: torch.Tensor | None = None,
    y_test: torch.Tensor | None = None,
    loss: Loss | str | None = None,
) -> list[TrainHistory]:
    """Train k networks with the same hidden-layer inputs (e.g. one architecture, several
    seeds) in place, as one stacked network on the model inputs ``x`` (as for :func:`train`):
    one GEMM per layer and step for all k and one Adam update of the stacked W (k·m × d).

    All k see the same batches (``settings.seed``); since Adam acts elementwise, each
    network follows the trajectory :func:`train` gives it, up to rounding. No adversary.
    """
    models = list(models)
    if not models:
        raise ValueError("models: expected at least one network")
    first = models[0]
    shape = (first.width, first.in_features, first.num_classes, first.weight.dtype,
             first.weight.device)
    for j, net in enumerate(models):
        if (net.width, net.in_features, net.num_classes, net.weight.dtype,
                net.weight.device) != shape:
            raise ValueError(f"models: network {j} differs from network 0 in width, inputs, "
                             f"classes, dtype or device")
    m, dtype, device = first.width, first.weight.dtype, first.weight.device
    y = as_tensor(y, "y", ndim=2, dtype=dtype).to(device)
    x = as_tensor(x, "x", ndim=None, dtype=None).to(device)
    check_rows_match(x, y, "x", "y")
    loss = loss_for_targets(y) if loss is None else parse_enum(loss, Loss, "loss")
    if (x_test is None) != (y_test is None):
        raise ValueError("y_test: give x_test and y_test together")
    def to_hidden(net: TwoLayerNet, inputs: torch.Tensor) -> torch.Tensor:
        return net.hidden_inputs(net.inputs(inputs))

    with torch.no_grad():
        h = to_hidden(first, x)
        if any(not torch.equal(to_hidden(net, x), h) for net in models[1:]):
            raise ValueError("models: expected networks with the same hidden-layer inputs "
                             "(2L-ReLU, or the same attention front)")
        if x_test is not None:
            y_test = as_tensor(y_test, "y_test", ndim=2, dtype=dtype, device=device)
            h_test = to_hidden(first, as_tensor(x_test, "x_test", dtype=None).to(device))
            check_rows_match(h_test, y_test, "x_test", "y_test")
    k = len(models)
    w = nn.Parameter(torch.cat([net.weight.detach() for net in models]))
    for j, net in enumerate(models):  # each network's W is its block of the stack meanwhile
        net.weight.data = w.data[j * m:(j + 1) * m]
    w0, readout = w.detach().clone(), torch.stack([net.readout for net in models])
    w.grad = torch.empty_like(w0)
    l2 = l2_per_weight(settings.l2_to_init, settings.l2_convention, m * first.in_features)
    optimizer = torch.optim.Adam([w], lr=settings.lr, fused=True)
    gen = torch.Generator().manual_seed(settings.seed)
    histories = [TrainHistory() for _ in models]
    if 0 in settings.checkpoints:
        for j, hist in enumerate(histories):
            hist.checkpoints[0] = w0[j * m:(j + 1) * m].cpu().clone()
    n = h.shape[0]
    h_epoch, y_epoch = torch.empty_like(h), torch.empty_like(y)
    for epoch in tqdm(range(1, settings.epochs + 1), desc=f"train ×{k}",
                      disable=not settings.progress, leave=False):
        order = torch.randperm(n, generator=gen).to(device)
        torch.index_select(h, 0, order, out=h_epoch)
        torch.index_select(y, 0, order, out=y_epoch)
        total = torch.zeros(k, dtype=dtype, device=device)
        for s in range(0, n, settings.batch_size):
            hb, yb = h_epoch[s:s + settings.batch_size], y_epoch[s:s + settings.batch_size]
            total += hb.shape[0] * objective_and_gradient_(
                w, w0, readout, hb, yb, loss, l2, w.grad)
            optimizer.step()
        for net, hist, value in zip(models, histories, total.tolist(), strict=True):
            hist.train_loss.append(_finite_epoch_loss(value, epoch, settings) / n)
            if x_test is not None:
                with torch.no_grad():
                    test_loss, test_acc = _loss_and_accuracy(net.head(h_test), y_test, loss)
                hist.test_loss.append(test_loss)
                hist.test_accuracy.append(test_acc)
            if epoch in settings.checkpoints:
                hist.checkpoints[epoch] = net.weight.detach().cpu().clone()
    for net in models:
        net.weight.data = net.weight.data.clone()
    return histories


def train_gd(model: TwoLayerNet, x: torch.Tensor, y: torch.Tensor, lr: float, steps: int
             ) -> list[float]:
    """Full-batch gradient descent on the mean MSE ½‖f − y‖², W ← W − η ∇_W L, for ``steps``
    steps at step ``lr`` = η, in place (no regulariser, A fixed); the NTK theorem's training
    (docs/method.md §3, "Gradient descent"). ``x`` is what the model takes, ``y`` (n × C) any
    real targets (one-hot or ±1). Returns the training loss before each step and after the
    last (``steps`` + 1 values); a non-finite loss raises NonFiniteError."""
    lr = check_positive(lr, "lr")
    steps = check_positive_int(steps, "steps")
    y = as_tensor(y, "y", ndim=2, dtype=model.weight.dtype).to(model.weight.device)
    x = as_tensor(x, "x", ndim=None, dtype=None).to(model.weight.device)
    check_rows_match(x, y, "x", "y")
    with torch.no_grad():
        h = model.hidden_inputs(model.inputs(x))
    w, readout = model.weight.data, model.readout[None]
    grad = torch.empty_like(w)
    losses = torch.empty(steps + 1, dtype=w.dtype, device=w.device)  # one sync at the end
    for t in range(steps):
        losses[t] = objective_and_gradient_(w, w, readout, h, y, Loss.MSE, 0.0, grad)[0]
        w.sub_(grad, alpha=lr)
    with torch.no_grad():
        losses[steps] = per_example_loss(model.head(h), y, Loss.MSE).mean()
    out = losses.tolist()
    bad = next((t for t, v in enumerate(out) if not math.isfinite(v)), None)
    if bad is not None:
        raise NonFiniteError(f"lr: the gradient-descent training loss is not finite from step "
                             f"{bad} on; expected a stable step (got {lr:g})")
    return out


def _finite_epoch_loss(total: float, epoch: int, settings: TrainSettings) -> float:
    """``total`` (an epoch's summed training loss) if finite, else NonFiniteError."""
    if not math.isfinite(total):
        raise NonFiniteError(f"x: the training loss at epoch {epoch} is not finite ({total}); "
                             f"expected finite inputs and a stable lr ({settings.lr:g})")
    return total


def _identity(t: torch.Tensor) -> torch.Tensor:
    return t


@torch.no_grad()
def evaluate(model: TwoLayerNet, x: torch.Tensor, y: torch.Tensor,
             loss: Loss | str | None = None) -> tuple[float, float]:
    """(mean loss, accuracy) of ``model`` on (``x``, ``y``)."""
    device = model.weight.device
    y = y.to(device=device, dtype=model.weight.dtype)
    loss = loss_for_targets(y) if loss is None else parse_enum(loss, Loss, "loss")
    return _loss_and_accuracy(model(x.to(device)), y, loss)


def _loss_and_accuracy(f: torch.Tensor, y: torch.Tensor, loss: Loss) -> tuple[float, float]:
    return float(per_example_loss(f, y, loss).mean()), accuracy(f, y)
