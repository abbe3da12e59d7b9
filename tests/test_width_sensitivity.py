"""Table 1's width trend swept around the calibrated point: the cells move one setting at a
time, a moved cell measures what ntk_distance measures at those settings, and the section
judges each architecture's trend per point."""

from pathlib import Path

import pytest

from malleability.repro import figures
from malleability.repro.experiments import ntk_distance
from malleability.repro.experiments import width_sensitivity as ws
from malleability.repro.problem import RunContext
from malleability.repro.report import Table
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
    small = ws.run(settings, {**cell, "axis": "n_influence", "value": 20}, ctx)
    assert small["n_influence"] == small["n_train"] == 20 and base["n_train"] == 40


def _record(model, width, distance, seed, axis="calibrated", value="—"):
    return {"cell": {"task": "mnist", "model": model, "width": width, "axis": axis,
                     "value": value, "seed": seed},
            "result": {"function_distance_trained": distance}}


def test_section_judges_each_trend_per_point(tmp_path, monkeypatch):
    monkeypatch.setattr(figures, "line_panels", lambda path, *args, **kwargs: path)
    records = [_record(model, w, d + seed, seed)
               for seed in range(3) for model, ds in (("relu", (50, 40, 30)),
                                                      ("attn", (10, 20, 30)))
               for w, d in zip((16, 1024, 4096), ds, strict=True)]
    records += [_record("relu", w, d + seed, seed, "ridge", 0.1)
                for seed in range(3) for w, d in zip((16, 1024, 4096), (30, 40, 50), strict=True)]
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
