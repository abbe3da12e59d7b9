"""Table 1's width trend swept around the calibrated point: the cells move one setting at a
time, a moved cell measures what ntk_distance measures at those settings, and the section
judges each architecture's trend per point."""

from pathlib import Path

import numpy as np
import pytest
import torch

from malleability.ntk import infinite_ntk
from malleability.repro import figures
from malleability.repro.blocks import Table
from malleability.repro.experiments import ntk_distance
from malleability.repro.experiments import width_sensitivity as ws
from malleability.repro.experiments.base import cell_problem
from malleability.repro.problem import RunContext, build_model, on_influence_set, trained_model
from malleability.repro.runner import load_preset
from malleability.repro.seeds import merge_seeds

TINY = Path(__file__).parent / "data" / "tiny.toml"


@pytest.fixture(scope="module")
def settings() -> ws.WidthSensitivitySettings:
    return load_preset(str(TINY)).experiments["width_sensitivity"]


def test_cells_move_one_setting_at_a_time(settings):
    points = {(c["axis"], c["value"]) for c in ws.cells(settings)}
    assert points == {("calibrated", "—"), ("n_influence", 20), ("ridge", 1e-2)}
    assert len(ws.cells(settings)) == 3 * len(settings.models) * len(settings.widths)


def test_a_moved_cell_is_ntk_distance_at_the_moved_settings(settings, tmp_path):
    ctx = RunContext(tmp_path, progress=False)
    cell = {"task": "digits", "model": "relu", "width": 8}
    base = ws.run(settings, {**cell, "axis": "calibrated", "value": "—"}, ctx)
    assert base == ntk_distance.run(settings, cell, ctx)
    ridge = ws.run(settings, {**cell, "axis": "ridge", "value": 1e-2}, ctx)
    moved = settings.replace(influence=settings.influence.replace(ridge=1e-2))
    assert ridge == ntk_distance.run(moved, cell, ctx)
    # the same network (its training loss) against another kernel predictor
    assert ridge["final_train_loss"] == base["final_train_loss"]
    assert ridge["function_distance_trained"] != base["function_distance_trained"]
    # ground truth: ‖f_m(X_t) − K_t (K + 0.01 I)⁻¹ Y‖_F with NumPy's solve, on the cached network
    p = on_influence_set(cell_problem(moved.tasks, cell, ctx))
    net, _ = trained_model("relu", p, moved.model, moved.train, ctx, 8)
    initial = build_model("relu", p, moved.model, 8)  # Θ∞ of the initial hidden-layer inputs
    with torch.no_grad():
        f_m = net(p.x_test).double().numpy()
        h = initial.hidden_inputs(p.z).double()
        h_t = initial.hidden_inputs(initial.inputs(p.x_test)).double()
    k, k_t = infinite_ntk(h).numpy(), infinite_ntk(h_t, h).numpy()
    f_inf = k_t @ np.linalg.solve(k + 1e-2 * np.eye(len(k)), p.y.double().numpy())
    assert ridge["function_distance_trained"] == pytest.approx(
        np.linalg.norm(f_m - f_inf), rel=1e-8)
    small = ws.run(settings, {**cell, "axis": "n_influence", "value": 20}, ctx)
    assert small["n_influence"] == small["n_train"] == 20 and base["n_train"] == 40


def _record(model, width, distance, seed, axis="calibrated", value="—"):
    return {"cell": {"task": "mnist", "model": model, "width": width, "axis": axis,
                     "value": value, "seed": seed},
            "result": {"function_distance_trained": distance}}


def test_section_judges_each_trend_per_point(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "line_panels", lambda path, *args, **kwargs: path)
    # each width step changes by ±10 + seed points: 3 distinct values per step
    widths = (16, 1024, 4096)
    records = [_record(model, w, d + seed * i, seed)
               for seed in range(3) for model, ds in (("relu", (50, 40, 30)),
                                                      ("attn", (10, 20, 30)))
               for i, (w, d) in enumerate(zip(widths, ds, strict=True))]
    records += [_record("relu", w, d + seed * i, seed, "ridge", 0.1)
                for seed in range(3)
                for i, (w, d) in enumerate(zip(widths, (30, 40, 50), strict=True))]
    summary, rows = [b for b in ws.section(merge_seeds(records), tmp_path)
                     if isinstance(b, Table)]
    verdicts = {(r[1], r[2]): r[-1] for r in rows.rows}
    assert verdicts[("2L-ReLU", "calibrated point")] == "agrees"
    assert verdicts[("2L-ReLU", "ridge = 0.1")] == "disagrees"
    assert verdicts[("MLP-Attn", "calibrated point")] == "agrees"
    where = {r[1]: r[-1] for r in summary.rows}
    assert where["2L-ReLU: decreasing"] == (
        "holds in a region: calibrated point; fails at: ridge = 0.1")
    assert where["MLP-Attn: non-monotonic"] == "holds everywhere"


def test_bad_settings(settings):
    with pytest.raises(ValueError, match=r"^n_influence: 100 exceeds tasks\[0\]\.n_train \(60\)"):
        settings.replace(n_influence=(100,))
    with pytest.raises(ValueError, match=r"^models: expected some of relu, attn"):
        settings.replace(models=("attn-softmax",))
    with pytest.raises(ValueError, match=r"^ridge\[0\]: expected a positive number"):
        settings.replace(ridge=(0.0,))
