"""NTK distance across widths (Table 1, Figures 1 and 6).

For each task, architecture and width: the function-space distance ‖f_m(X_t) − f_{Θ∞}(X_t)‖_F
between the network (at initialisation and after training) and the kernel ridge predictor of
its infinite-width NTK, and the scale-free kernel distance 1 − cos(Θ_m(X, X), Θ_∞(X, X)).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..kernel_ridge import kernel_ridge_predict
from ..ntk import empirical_ntk, function_distance, infinite_ntk, kernel_distance
from ..training import accuracy, evaluate
from .common import NetworkSettings, RunContext, build_model, cell_problem, trained_model


@dataclass(frozen=True)
class NtkDistanceSettings(NetworkSettings):
    models: tuple[str, ...] = ("relu", "attn", "attn-softmax", "attn-exponential")
    widths: tuple[int, ...] = (16, 1024, 4096)
    variant_tasks: tuple[str, ...] | None = None  # tasks for softmax/exponential (None: all)


def cells(s: NtkDistanceSettings) -> list[dict]:
    return [{"task": t.label, "model": m, "width": w}
            for t in s.tasks for m in s.models for w in s.widths
            if m in ("relu", "attn") or s.variant_tasks is None or t.label in s.variant_tasks]


def run(s: NtkDistanceSettings, cell: dict, ctx: RunContext) -> dict:
    p = cell_problem(s.tasks, cell, ctx)
    width = cell["width"]
    initial = build_model(cell["model"], p, s.model, width)
    trained, history = trained_model(cell["model"], p, s.model, s.train, ctx, width)
    with torch.no_grad():
        z, z_t = initial.features(p.z).double(), initial.features(p.z_test).double()
    k_inf, k_inf_t = infinite_ntk(z), infinite_ntk(z_t, z)
    f_inf = kernel_ridge_predict(k_inf, k_inf_t, p.y, s.ridge)
    out: dict = {"n_train": p.x.shape[0], "n_test": p.x_test.shape[0],
                 "test_accuracy": evaluate(trained, p.z_test, p.y_test)[1],
                 "ntk_test_accuracy": accuracy(f_inf, p.y_test)}
    for stage, net in (("init", initial), ("trained", trained)):
        with torch.no_grad():
            f_m = net(p.z_test).double()
        k_m = empirical_ntk(net, p.z)
        out[f"function_distance_{stage}"] = function_distance(f_m, f_inf)
        out[f"kernel_distance_{stage}"] = kernel_distance(k_m, k_inf)
    out["final_train_loss"] = history["train_loss"][-1]
    return out


SETTINGS = NtkDistanceSettings
TITLE = "NTK distance across widths (Table 1, Figures 1 and 6)"
