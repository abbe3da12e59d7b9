"""Issue 29, class 1: the report reads every cell against its name and its run. A copy, a cell
renamed to another seed, a checksum removed after a hand edit, a cell of another version's
layout, a seed outside the plan or cells of other settings are left out with a warning that
names the file; the header counts the cells used, the files left out and the seeds missing
from the plan. Ground truth: the report of the untouched run (tests/data/report_run)."""

from __future__ import annotations

import json
import logging
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from malleability.jsonsafe import loads_strict
from malleability.repro.experiments import EXPERIMENTS
from malleability.repro.loading import load_run
from malleability.repro.report import write_report
from malleability.repro.store import CHECKSUMS, settings_key, start_run, write_cell

RUN = Path(__file__).parent / "data" / "report_run"
KEPT = ("collapse", "flip_rates")
FLIP = "flip_rates/task=digits-3-8__model=relu__attack=fgsm__seed=1.json"
COLLAPSE = "collapse/task=digits-3-8__seed=1.json"


@pytest.fixture
def run(tmp_path: Path) -> Path:
    """The stored run cut to feature collapse (6 cells) and flip rates (24 cells), 3 seeds."""
    out = tmp_path / "run"
    out.mkdir()
    meta = loads_strict((RUN / "settings.json").read_text())
    meta["settings"] = {k: v for k, v in meta["settings"].items()
                        if k in (*KEPT, "seeds", "experiment_seeds")}
    (out / "settings.json").write_text(json.dumps(meta))
    for name in KEPT:
        shutil.copytree(RUN / name, out / name)
    return out


def _warnings(caplog: pytest.LogCaptureFixture) -> str:
    return "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING)


def _section(markdown: str, title: str) -> str:
    start = markdown.index(title)
    end = markdown.find("\n## ", start)
    return markdown[start:] if end < 0 else markdown[start:end]


def _clean(run: Path, tmp_path: Path) -> str:
    twin = tmp_path / "clean"
    shutil.copytree(run, twin)
    return write_report(twin).read_text(encoding="utf-8")


def test_the_untouched_run_uses_every_cell_and_misses_no_seed(run: Path) -> None:
    loaded = load_run(run)
    assert (loaded.skipped, loaded.unchecked, loaded.missing_seeds) == ([], [], {})
    assert [len(loaded.cells[k]) for k in KEPT] == [6, 24]
    markdown = write_report(run).read_text(encoding="utf-8")
    assert "Cells: 30 used of 30 planned; files left out: 0. Seeds missing from the plan: " \
           "none." in markdown


@pytest.mark.parametrize("name", [FLIP.replace(".json", " (copy).json"),
                                  FLIP.replace("seed=1", "seed=7")])
def test_a_copied_cell_is_not_another_seed(run: Path, tmp_path: Path, name: str,
                                           caplog: pytest.LogCaptureFixture) -> None:
    clean = _clean(run, tmp_path)
    shutil.copy(run / FLIP, run / name)
    markdown = write_report(run).read_text(encoding="utf-8")
    assert f"{name}: holds the cell task=digits-3-8__model=relu__attack=fgsm__seed=1" in \
        _warnings(caplog)
    title = EXPERIMENTS["flip_rates"].TITLE
    assert _section(markdown, title) == _section(clean, title)  # means and intervals unchanged
    assert "Cells: 30 used of 30 planned; files left out: 1." in markdown
    assert name in markdown  # listed in the table of files left out


def test_a_cell_of_a_seed_outside_the_plan_is_left_out(run: Path) -> None:
    record = loads_strict((run / FLIP).read_text())
    record["cell"]["seed"] = 7
    del record["checksum"]
    path = run / FLIP.replace("seed=1", "seed=7")
    write_cell(path, record)  # a consistent, checksummed cell of seed 7
    loaded = load_run(run)
    assert loaded.skipped == [(str(path.relative_to(run)),
                               "seed 7 is not one of the run's seeds [0, 1, 2]")]
    assert len(loaded.cells["flip_rates"]) == 24


def test_a_cell_whose_checksum_was_removed_is_left_out(run: Path,
                                                       caplog: pytest.LogCaptureFixture) -> None:
    record = loads_strict((run / COLLAPSE).read_text())
    del record["checksum"]
    record["result"]["collapse"]["raw"] = 0.001  # the hand edit
    (run / COLLAPSE).write_text(json.dumps(record))
    loaded = load_run(run)
    assert [rel for rel, _ in loaded.skipped] == [COLLAPSE]
    assert "no checksum, though this run's cells carry one" in loaded.skipped[0][1]
    assert len(loaded.cells["collapse"]) == 5


def test_the_settings_of_a_new_run_say_its_cells_carry_checksums(tmp_path: Path) -> None:
    """A one-cell run whose only cell lost its checksum: settings.json tells it apart from a
    run that predates checksums."""
    out = tmp_path / "run"
    settings = loads_strict((RUN / "settings.json").read_text())["settings"]
    settings = {k: v for k, v in settings.items() if k in ("collapse", "seeds")}
    settings["seeds"] = [1]
    start_run(out, settings, {"malleability": "test"})
    assert CHECKSUMS in loads_strict((out / "settings.json").read_text())
    (out / "collapse").mkdir()
    record = loads_strict((RUN / COLLAPSE).read_text())
    del record["checksum"]
    (out / COLLAPSE).write_text(json.dumps(record))
    loaded = load_run(out)
    assert [rel for rel, _ in loaded.skipped] == [COLLAPSE] and not loaded.cells


def test_a_run_that_predates_checksums_is_read_with_a_warning(
        run: Path, caplog: pytest.LogCaptureFixture) -> None:
    for path in run.glob("*/*.json"):
        record = loads_strict(path.read_text())
        del record["checksum"]
        path.write_text(json.dumps(record))
    loaded = load_run(run)
    assert loaded.skipped == [] and len(loaded.unchecked) == 30
    markdown = write_report(run).read_text(encoding="utf-8")
    assert f"{COLLAPSE}: no checksum (a cell of a run that predates them)" in _warnings(caplog)
    assert "30 used without a checksum" in markdown


def test_one_cell_of_an_old_layout_does_not_abort_the_report(
        run: Path, caplog: pytest.LogCaptureFixture) -> None:
    record = loads_strict((run / COLLAPSE).read_text())
    del record["result"]["collapse"]["softmax"], record["checksum"]
    write_cell(run / COLLAPSE, record)  # a valid cell of a layout that lacks the key
    markdown = write_report(run).read_text(encoding="utf-8")
    assert f"{COLLAPSE}: result has another layout than seed 0" in _warnings(caplog)
    assert "Cells: 29 used of 30 planned; files left out: 1." in markdown


def test_cells_that_all_lack_what_the_section_reads_leave_the_rest_of_the_report(
        run: Path, caplog: pytest.LogCaptureFixture) -> None:
    for path in (run / "collapse").glob("*.json"):
        record = loads_strict(path.read_text())
        del record["result"]["collapse"]["softmax"], record["checksum"]
        write_cell(path, record)
    markdown = write_report(run).read_text(encoding="utf-8")
    assert "collapse/: this section cannot be built from its 6 cells (KeyError" in \
        _warnings(caplog)
    assert "Not built: the cells under collapse/ lack what this version" in markdown
    assert "not run" not in _section(markdown, EXPERIMENTS["flip_rates"].TITLE).lower()


def test_a_missing_seed_is_flagged(run: Path, caplog: pytest.LogCaptureFixture) -> None:
    for path in (run / "collapse").glob("*seed=2.json"):
        path.unlink()
    markdown = write_report(run).read_text(encoding="utf-8")
    assert "collapse/: no cell for seeds 2 of the run's plan" in _warnings(caplog)
    assert "Cells: 28 used of 30 planned; files left out: 0. Seeds missing from the plan: " \
           "collapse 2." in markdown


def test_the_header_names_the_experiments_with_seeds_of_their_own(run: Path) -> None:
    """The paper preset plans ten seeds for Tables 2 and 5 and five elsewhere."""
    meta = loads_strict((run / "settings.json").read_text())
    meta["settings"]["experiment_seeds"] = {"flip_rates": [0, 1, 2, 3], "spectrum": [0]}
    (run / "settings.json").write_text(json.dumps(meta))
    markdown = write_report(run).read_text(encoding="utf-8")
    assert "Seeds: 0, 1, 2; flip_rates: 0, 1, 2, 3." in markdown  # spectrum has no cells
    assert "Seeds missing from the plan: flip_rates 3." in markdown


def test_table2_says_how_many_seeds_each_row_holds(run: Path) -> None:
    (run / FLIP).unlink()  # 2L-ReLU FGSM on digits 3 vs 8 loses seed 1
    markdown = write_report(run).read_text(encoding="utf-8")
    table = markdown[markdown.index("Table 2: flip rate of the top 10%"):]
    rows = table[:table.index("\n\n", table.index("|"))].splitlines()
    assert rows[2].split(" | ")[-1] == "seeds |"
    seeds = {tuple(r.split(" | ")[:2]): r.split(" | ")[-1] for r in rows[4:]}
    assert seeds == {("| digits", "2L-ReLU"): "3 |", ("| digits", "MLP-Attn"): "3 |",
                     ("| digits 3,8", "2L-ReLU"): "2–3 |", ("| digits 3,8", "MLP-Attn"): "3 |"}
    svg = (run / "figures" / "flip_rates.svg").read_text(encoding="utf-8")
    assert "2–3 seeds" in svg and "3 seeds" in svg


def test_without_settings_json_the_header_says_the_seeds_are_unknown(run: Path) -> None:
    (run / "settings.json").unlink()
    markdown = write_report(run).read_text(encoding="utf-8")
    assert "Seeds: 0" not in markdown
    assert "Seeds: unknown, no valid settings.json (the cells hold seeds 0, 1, 2)." in markdown


def test_without_settings_json_cells_of_other_settings_are_left_out(run: Path) -> None:
    (run / "settings.json").unlink()
    record = loads_strict((run / COLLAPSE).read_text())
    record["settings"]["tasks"][0]["n_test"] += 1  # another run's settings, hash consistent
    record["settings_hash"] = settings_key(record["settings"])
    del record["checksum"]
    write_cell(run / COLLAPSE, record)
    loaded = load_run(run)
    assert [rel for rel, _ in loaded.skipped] == [COLLAPSE]
    assert "written for other settings than the other 5 cells of collapse" in \
        loaded.skipped[0][1]


def test_a_report_removes_the_temporary_files_of_a_killed_report(run: Path) -> None:
    """Issue 29, class 4: every writer cleans up after a dead one."""
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    (run / "figures").mkdir()
    stale = [run / f".report.md.{child.pid}.a1.tmp", run / f".report.html.{child.pid}.b2.tmp",
             run / "figures" / f".spectrum.png.{child.pid}.c3.tmp"]
    for path in stale:
        path.write_bytes(b"partial")
    write_report(run)
    assert not any(path.exists() for path in stale)
