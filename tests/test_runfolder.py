"""Issue 9, classes 1 and 2 at the CLI, and the run folder: every bad setting is one line naming
experiment and key before any file is written; a folder holds one run; unreadable or invalid
cells and caches are reported, moved aside and recomputed; temporary files of killed writes
are removed; files get the user's umask; JSON is strict; no traceback reaches a CLI user. Plus
hypothesis properties of the cell store: round trip, corruption, concurrent readers."""

from __future__ import annotations

import json
import math
import os
import random
import shutil
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from same_values import same

from malleability.cli import main
from malleability.data import DataSettings
from malleability.models import ModelSettings
from malleability.repro.problem import (
    RunContext,
    load_problem,
    on_influence_set,
    trained_model,
)
from malleability.repro.report import write_report
from malleability.repro.runner import CellJob, load_preset, preset_document, reproduce, unfinished
from malleability.repro.store import (
    ASIDE,
    CorruptFile,
    read_cell,
    read_json,
    settings_key,
    write_cell,
)
from malleability.training import TrainSettings

FAST = settings(max_examples=40, deadline=None)
TASK = '{ dataset = "digits", n_train = 40, n_test = 20, seed = %d }'
ONE = "[experiments.collapse]\ntasks = [" + TASK % 0 + "]\n"
CELL = Path("collapse") / "task=digits__seed=0.json"


def _reproduce(out: Path, *extra: str, preset: str = ONE, cwd: Path | None = None):
    """``malleability reproduce`` in process, with the preset text in a file beside ``out``."""
    path = Path(cwd or out.parent) / "preset.toml"
    path.write_text(preset)
    return CliRunner().invoke(main, ["reproduce", "--preset", str(path), "--out", str(out),
                                     "--quiet", *extra])


@pytest.fixture(scope="module")
def finished(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished one-cell run (feature collapse on 40 digits)."""
    out = tmp_path_factory.mktemp("finished") / "run"
    reproduce(load_preset(_preset_file(out.parent)), RunContext(out, progress=False))
    return out


def _preset_file(folder: Path, text: str = ONE) -> str:
    path = folder / "preset.toml"
    path.write_text(text)
    return str(path)


@pytest.fixture
def run(finished: Path, tmp_path: Path) -> Path:
    out = tmp_path / "run"
    shutil.copytree(finished, out)
    return out


def _files(folder: Path) -> dict[str, int]:
    return {str(p.relative_to(folder)): p.stat().st_mtime_ns for p in folder.rglob("*")
            if p.is_file()}


# --- class 1: settings checked at the door, before any file ---------------------------------

BAD = [
    (["--out", ""], ONE, "out: expected a folder path, got ''"),
    (["--jobs", "0"], ONE, "jobs: expected a positive integer, got 0"),
    (["--jobs", "-3"], ONE, "jobs: expected a positive integer, got -3"),
    (["--threads", "0"], ONE, "threads: expected a positive integer, got 0"),
    (["--device", "tpu"], ONE, "device: expected cpu or cuda, got 'tpu'"),
    ([], "", "experiments: expected at least one [experiments.NAME] table"),
    ([], "[shared]\n", "experiments: expected at least one [experiments.NAME] table"),
    ([], "seeds = [1.7]\n" + ONE, "seeds[0]: expected an integer, got 1.7"),
    ([], "[experiments.landscape]\nresolution = 0\n", "landscape.resolution: expected an "
     "integer ≥ 2, got 0"),
    ([], "[experiments.influential]\ntest_index = 500\ntasks = [" + TASK % 0 + "]\n",
     "influential.test_index: expected an index below tasks[0].n_test (20), got 500"),
    ([], "[experiments.ntk_distance]\nwidths = [0, 64]\n",
     "ntk_distance.widths[0]: expected a positive integer, got 0"),
    ([], "[experiments.spectrum]\nns = 20\n", "spectrum.ns: expected a list, got 20"),
    ([], "[experiments.spectrum]\nfull = \"no\"\n",
     "spectrum.full: expected true or false, got 'no'"),
    ([], "[experiments.flip_rates.attack]\neps = \"big\"\n",
     "flip_rates.attack.eps: expected a number, got 'big'"),
    ([], "[experiments.flip_rates]\nattacks = [\"cw\"]\n",
     "flip_rates.attacks[0]: expected one of fgsm, pgd, mim, random-sign, square, got 'cw'"),
    ([], "[experiments.flip_rates]\nmodels = [\"vit\"]\n",
     "flip_rates.models[0]: expected one of relu, attn, attn-softmax, attn-exponential, attn-qkv, "
     "got 'vit'"),
]


@pytest.mark.parametrize(("extra", "preset", "message"), BAD)
def test_bad_settings_are_one_line_before_any_file(tmp_path, monkeypatch, extra, preset,
                                                    message):
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)  # --out "" must not write here
    args = ["--out", "o", *extra] if "--out" not in extra else extra
    (cwd / "preset.toml").write_text(preset)
    result = CliRunner().invoke(main, ["reproduce", "--preset", "preset.toml", *args])
    assert result.exit_code == 1
    assert result.output == f"Error: {message}\n"
    assert sorted(p.name for p in cwd.iterdir()) == ["preset.toml"]


# --- class 2: the run folder is the run's ---------------------------------------------------

def test_settings_json_records_the_preset_and_other_settings_refuse(run):
    meta = read_json(run / "settings.json")
    assert meta["settings"] == preset_document(load_preset(_preset_file(run.parent)))
    before = _files(run)
    result = _reproduce(run, "--only", "collapse", preset=ONE.replace("seed = 0", "seed = 1"))
    assert result.exit_code == 1
    assert result.output == (f"Error: out: {str(run)!r} holds a run of other settings "
                             "(differing: collapse); give another --out, or move that folder "
                             "away\n")
    assert _files(run) == before
    result = _reproduce(run)  # the same preset resumes: nothing recomputed
    assert result.exit_code == 0, result.output
    assert _files(run)[str(CELL)] == before[str(CELL)]


def test_a_folder_that_is_not_a_run_is_refused(tmp_path):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "notes.txt").write_text("mine")
    result = _reproduce(folder)
    assert result.exit_code == 1
    assert result.output.startswith(f"Error: out: {str(folder)!r} is not empty and holds no run")
    result = CliRunner().invoke(main, ["report", str(folder)])
    assert result.exit_code == 1
    assert result.output == (f"Error: out: {str(folder)!r} is not a run folder (no valid "
                             "settings.json and no cell results); expected the --out folder "
                             "of a reproduce run\n")
    assert sorted(p.name for p in folder.iterdir()) == ["notes.txt"]
    file = tmp_path / "file"
    file.write_text("")
    assert _reproduce(file).output == f"Error: out: expected a folder, got the file {str(file)!r}\n"


def _bad_result(path: Path) -> bytes:
    """The cell with its result changed, its settings hash (and checksum) kept."""
    record = json.loads(path.read_text())
    record["result"]["n"] = 7
    return json.dumps(record).encode()


CORRUPTIONS = {
    "truncated": lambda p: p.read_bytes()[: len(p.read_bytes()) // 2],
    "random bytes": lambda p: random.Random(0).randbytes(300),
    "empty": lambda p: b"",
    "wrong type": lambda p: b'"a string"',
    "list": lambda p: b"[1, 2]",
    "null": lambda p: b"null",
    "no keys": lambda p: b"{}",
    "bad result, same settings hash": _bad_result,
    "bare NaN": lambda p: p.read_bytes().replace(b'"n": 40', b'"n": NaN'),
}


@pytest.mark.parametrize("kind", list(CORRUPTIONS))
def test_corrupt_cells_are_reported_moved_aside_and_recomputed(run, kind):
    original = read_cell(run / CELL)
    (run / CELL).write_bytes(CORRUPTIONS[kind](run / CELL))
    result = CliRunner().invoke(main, ["report", str(run)])
    assert result.exit_code == 0, result.output
    assert f"warning: {CELL}: " in result.output and "left out of the report" in result.output
    assert "Traceback" not in result.output
    assert "Not run: no results under collapse/" in (run / "report.md").read_text()
    result = _reproduce(run)
    assert result.exit_code == 0, result.output
    assert f"warning: {CELL}: " in result.output and "moved aside" in result.output
    aside = list((run / ASIDE / "collapse").iterdir())
    assert len(aside) == 1 and aside[0].name.startswith(CELL.name)
    assert read_cell(run / CELL)["result"] == original["result"]


@pytest.mark.parametrize("damage", ["truncate", "flip"])
def test_corrupt_cached_model_is_moved_aside_and_retrained(tmp_path, damage, caplog):
    ctx = RunContext(tmp_path, progress=False)
    problem = load_problem(DataSettings(dataset="digits", classes="3,8", n_train=40, n_test=20))
    model, train = ModelSettings(width=8, seed=1), TrainSettings(epochs=1, seed=1)
    net, history = trained_model("relu", problem, model, train, ctx)
    (path,) = (tmp_path / "cache" / "models").glob("*.pt")
    raw = bytearray(path.read_bytes())
    if damage == "truncate":
        raw = raw[: len(raw) // 2]
    else:  # one byte of the stored weights: still a loadable file, caught by the checksum
        tail = raw.index(net.weight.detach().numpy().tobytes()[:16])
        raw[tail] ^= 0xFF
    path.write_bytes(bytes(raw))
    again, history_again = trained_model("relu", problem, model, train, ctx)
    assert "moved aside" in caplog.text
    assert len(list((tmp_path / ASIDE / "cache" / "models").iterdir())) == 1
    assert (again.weight == net.weight).all() and history_again == history
    cached, _ = trained_model("relu", problem, model, train, ctx)  # the new cache file is good
    assert (cached.weight == net.weight).all()


def test_temporary_files_of_killed_writes_are_removed(run):
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    pid = int(dead.stdout)
    killed = [run / "collapse" / f".x.json.{pid}.ab_12cd9.tmp", run / "tmpq8z1x0.tmp"]
    live = run / "collapse" / f".y.json.{os.getpid()}.zz9yy8xx.tmp"
    for path in (*killed, live):
        path.write_bytes(b"")
    assert _reproduce(run).exit_code == 0
    assert not any(p.exists() for p in killed) and live.exists()


@pytest.mark.parametrize("umask", [0o027, 0o002])
def test_files_get_the_users_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        out = tmp_path / "run"
        reproduce(load_preset(_preset_file(tmp_path)), RunContext(out, progress=False))
        write_report(out)
    finally:
        os.umask(old)
    for name in ("settings.json", str(CELL), "report.md", "report.html"):
        assert (out / name).stat().st_mode & 0o777 == 0o666 & ~umask, name
    assert all(p.stat().st_mode & 0o777 == 0o666 & ~umask for p in (out / "figures").iterdir())


def test_store_json_is_strict_with_flagged_nulls(tmp_path):
    path = write_cell(tmp_path / "c.json", _record({"x": math.nan, "y": [math.inf, -1.0]}))
    text = path.read_text()
    assert "NaN" not in text and "Infinity" not in text
    json.loads(text, parse_constant=lambda name: pytest.fail(name))
    assert '"nonfinite": "nan"' in text and '"nonfinite": "inf"' in text
    result = read_cell(path)["result"]
    assert math.isnan(result["x"]) and result["y"] == [math.inf, -1.0]


def test_no_traceback_reaches_the_cli_user(tmp_path, monkeypatch):
    def broken(*args, **kwargs):
        raise TypeError("boom\nsecond line")

    monkeypatch.setattr("malleability.repro.runner.reproduce", broken)
    (tmp_path / "p.toml").write_text(ONE)
    args = ["reproduce", "--preset", str(tmp_path / "p.toml"), "--out", str(tmp_path / "o")]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 1
    assert result.output == ("Error: unexpected TypeError: boom (rerun with `malleability "
                             "--debug reproduce ...` for the traceback)\n")
    result = CliRunner().invoke(main, ["--debug", *args])
    assert isinstance(result.exception, TypeError)


# --- hypothesis: the cell store -------------------------------------------------------------

def _record(result: dict) -> dict:
    return {"experiment": "collapse", "cell": {"task": "t", "seed": 0}, "result": result,
            "settings": {"a": [1, 2.5]}, "settings_hash": settings_key({"a": [1, 2.5]}),
            "versions": {"torch": "x"}, "device": "cpu", "timing": {"seconds": 0.25}}




_leaf = (st.floats() | st.integers(-(2**70), 2**70) | st.text(max_size=8) | st.booleans()
         | st.none())
_value = st.recursive(_leaf, lambda inner: st.lists(inner, max_size=4)
                      | st.dictionaries(st.text(max_size=6), inner, max_size=4)
                      .filter(lambda d: set(d) != {"value", "nonfinite"}), max_leaves=12)
results = st.dictionaries(st.text(max_size=6), _value, min_size=1, max_size=4).filter(
    lambda d: set(d) != {"value", "nonfinite"})


@FAST
@given(results)
def test_cell_store_round_trip(result):
    with tempfile.TemporaryDirectory() as tmp:
        path = write_cell(Path(tmp) / "c.json", _record(result))
        record = read_cell(path, "collapse", {"task": "t", "seed": 0},
                           settings_key({"a": [1, 2.5]}))
        assert same(record["result"], result)


@FAST
@given(results, st.data())
def test_corruption_never_crashes_and_is_moved_aside(result, data):
    """A flipped byte or a truncation is either caught (the cell is moved aside and queued)
    or leaves the content unchanged (e.g. a space turned into a tab)."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        path = write_cell(out / "collapse" / "c.json", _record(result))
        raw = bytearray(path.read_bytes())
        if data.draw(st.booleans(), label="truncate"):
            raw = raw[: data.draw(st.integers(0, len(raw) - 1), label="length")]
        else:
            at = data.draw(st.integers(0, len(raw) - 1), label="at")
            raw[at] = data.draw(st.integers(0, 255).filter(lambda b: b != raw[at]), label="b")
        path.write_bytes(bytes(raw))
        job = CellJob("collapse", None, {"task": "t", "seed": 0}, path,
                      settings_key({"a": [1, 2.5]}))
        todo = unfinished([job], out)
        if todo:
            assert not path.exists() and len(list((out / ASIDE).rglob("c.json.*"))) == 1
        else:
            assert same(read_cell(path)["result"], result)


@settings(max_examples=5, deadline=None)
@given(st.lists(results, min_size=2, max_size=4))
def test_concurrent_readers_see_whole_cells(versions):
    """Readers never see a partial cell while a writer replaces it again and again."""
    with tempfile.TemporaryDirectory() as tmp:
        path = write_cell(Path(tmp) / "c.json", _record(versions[0]))
        done, seen, errors = threading.Event(), [], []

        def read() -> None:
            while not done.is_set():
                try:
                    seen.append(read_cell(path)["result"])
                except CorruptFile as err:  # pragma: no cover - the failure we test for
                    errors.append(err)

        readers = [threading.Thread(target=read) for _ in range(3)]
        for t in readers:
            t.start()
        for i in range(60):
            write_cell(path, _record(versions[i % len(versions)]))
        done.set()
        for t in readers:
            t.join()
        assert not errors and seen
        assert all(any(same(s, v) for v in versions) for s in seen)


def test_cells_runs_only_the_matching_cells_and_a_pattern_matching_none_is_refused(tmp_path):
    two = ("[experiments.collapse]\ntasks = [" + TASK % 0 + ", "
           '{ dataset = "digits", classes = "0,1", n_train = 40, n_test = 20, seed = 0 }]\n')
    out = tmp_path / "run"
    result = _reproduce(out, "--cells", "task=digits-0-1*", preset=two)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "collapse").iterdir()) == [
        "task=digits-0-1__seed=0.json"]
    result = _reproduce(out, "--cells", "task=mnist*", preset=two)
    assert result.exit_code == 1
    assert result.output.startswith("Error: cells: no cell of this preset matches ['task=mnist*']")
    result = _reproduce(out, preset=two)  # the rest of the plan resumes in the same folder
    assert result.exit_code == 0, result.output
    assert len(list((out / "collapse").iterdir())) == 2


def test_cells_load_only_the_tasks_they_name(tmp_path):
    """A machine that lacks one task's data runs the cells of the others (--cells splits a run
    between machines): a task no planned cell names is not loaded, while a named one that the
    data refuses still fails before any file."""
    two = ("[experiments.collapse]\ntasks = [" + TASK % 0 + ", "
           '{ dataset = "digits", classes = "0,1", n_train = 100000, n_test = 20, seed = 0 }]\n')
    out = tmp_path / "run"
    result = _reproduce(out, "--cells", "task=digits-0-1*", preset=two)
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert "collapse.tasks[1] (digits): n: expected at most" in line
    assert not out.exists()
    result = _reproduce(out, "--cells", "task=digits__*", preset=two)
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "collapse").iterdir()) == ["task=digits__seed=0.json"]


def test_an_experiment_without_cells_may_change_its_settings(tmp_path):
    """The preset evolved under a long run: an experiment with no cells in the folder yet may
    change; one with cells may not (test above), and other seeds never."""
    two = ONE + "[experiments.spectrum]\nns = [20]\ntasks = [" + TASK % 0 + "]\n"
    out = tmp_path / "run"
    assert _reproduce(out, "--only", "collapse", preset=two).exit_code == 0
    changed = two.replace("ns = [20]", "ns = [30]")
    result = _reproduce(out, "--only", "collapse", preset=changed)
    assert result.exit_code == 0, result.output
    assert read_json(out / "settings.json")["settings"]["spectrum"]["ns"] == [30]
    result = _reproduce(out, "--seeds", "2", preset=changed)
    assert result.exit_code == 1
    assert "(differing: seeds)" in result.output


def test_networks_on_the_influence_set_train_on_exactly_its_points_and_cache_apart(tmp_path):
    """NTK distance and the remedy compare a network with the kernel predictor of the
    influence set, so the network trains on those points; its cache entry is its own."""
    p = load_problem(DataSettings(dataset="digits", n_train=60, n_influence=20, n_test=10))
    q = on_influence_set(p)
    assert torch.equal(q.x, p.x[p.influence_rows]) and torch.equal(q.y, p.y[p.influence_rows])
    assert torch.equal(q.influence_rows, torch.arange(20)) and torch.equal(q.x_test, p.x_test)
    assert on_influence_set(q) is q
    ctx = RunContext(tmp_path, progress=False)
    model, train = ModelSettings(width=8, seed=1), TrainSettings(epochs=1, seed=1)
    trained_model("relu", p, model, train, ctx)
    trained_model("relu", q, model, train, ctx)
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 2
    # another n_influence is another training set: the run must give the network trained on
    # those 30 points (ground truth: trained in an empty folder), not the cached 20-point one
    other = on_influence_set(load_problem(p.data.replace(n_influence=30)))
    fresh, _ = trained_model("relu", other, model, train, RunContext(tmp_path / "b",
                                                                      progress=False))
    net, _ = trained_model("relu", other, model, train, ctx)
    assert len(list((tmp_path / "cache" / "models").iterdir())) == 3
    assert torch.equal(net.weight, fresh.weight)


@pytest.mark.parametrize("task, extra, expected", [
    ('n_train = 100000', "", "collapse.tasks[0] (digits): n: expected at most 1297"),
    ('classes = "3,3"', "", "collapse.tasks[0] (digits): classes: class '3' selected twice"),
    ('classes = "3,8", n_train = 40', "model = { width = 1000000000000 }\n",
     "collapse.model (relu): width: TwoLayerNet(64, 1000000000000, 1)"),
])
def test_a_preset_the_data_or_memory_refuses_fails_before_any_file(
        tmp_path: Path, task: str, extra: str, expected: str) -> None:
    """Issue 29: sizes, classes and widths that only the data set or the machine can refuse
    used to fail after settings.json and .lock were written."""
    preset = ("[experiments.collapse]\n" if not extra else
              "[experiments.complexity]\nmodels = [\"relu\"]\n" + extra)
    preset += f'tasks = [{{ dataset = "digits", {task}, n_test = 20 }}]\n'
    if extra:
        expected = expected.replace("collapse", "complexity")
    out = tmp_path / "run"
    result = _reproduce(out, preset=preset)
    assert result.exit_code == 1, result.output
    line, = result.output.strip().splitlines()
    assert expected in line
    assert not out.exists()
