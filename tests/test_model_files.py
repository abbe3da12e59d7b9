"""Issue 29, classes 2-4: every model file that cannot be loaded is one line naming the file
and what it seems to be, with no traceback and no torch log; a model module that exits on
import is an error; ``train --save`` checks that it can write before training and removes the
temporary files of a killed save. The files are made here with torch itself (the ground
truth of what each one is)."""

from __future__ import annotations

import os
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from torch import nn

from malleability.cli import main
from malleability.model_io import SHOWN_KEYS, load_checkpoint, load_model

DATA = ["--dataset", "digits", "--n", "40", "--n-test", "20"]
FIT = ["--width", "8", "--epochs", "1", "--quiet"]
BUILD = "def build():\n    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), " \
        "nn.Linear(3, 2))\n"


def _net() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(4, 3), nn.ReLU(), nn.Linear(3, 2)).eval()


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One file per way a model file can be bad, beside a good export and a builder."""
    d = tmp_path_factory.mktemp("models")
    net, x = _net(), torch.rand(2, 4)
    batch = torch.export.Dim("batch")
    torch.export.save(torch.export.export(net, (x,), dynamic_shapes=({0: batch},)),
                      d / "good.pt2")
    raw = (d / "good.pt2").read_bytes()
    (d / "truncated.pt2").write_bytes(raw[:len(raw) // 2])
    (d / "junk.pt2").write_bytes(b"not a model\n" * 20)
    (d / "empty.pt2").write_bytes(b"")
    with zipfile.ZipFile(d / "good.pt2") as src, zipfile.ZipFile(d / "damaged.pt2", "w") as dst:
        for item in src.infolist():
            data = src.read(item)
            dst.writestr(item, b"{garbage" if item.filename.endswith("model.json") else data)
    torch.jit.save(torch.jit.script(net), d / "script.pt2")
    torch.export.save(torch.export.export(net, (x,)), d / "fixed.pt2")
    torch.save(net, d / "module.pt")
    state = net.state_dict()
    torch.save(state, d / "state.pt")
    (d / "truncated_state.pt").write_bytes((d / "state.pt").read_bytes()[:300])
    torch.save({"1.weight": "garbage", "x": 3}, d / "garbage_state.pt")
    torch.save([1, 2, 3], d / "list_state.pt")
    wrong = {**state, "extra.weight": torch.zeros(2), "1.weight": torch.zeros(5, 4)}
    del wrong["3.bias"]
    torch.save(wrong, d / "mismatch_state.pt")
    torch.save({f"extra{i}": torch.zeros(1) for i in range(SHOWN_KEYS + 5)}, d / "many.pt")
    (d / "builder.py").write_text("from torch import nn\n" + BUILD)
    (d / "exits.py").write_text("import sys\nsys.exit(0)\n" + BUILD)
    (d / "raises.py").write_text("raise RuntimeError('boom')\n")
    (d / "builder_exits.py").write_text("import sys\ndef build():\n    sys.exit(3)\n")
    return d


CASES = [
    ("truncated.pt2", None, "truncated.pt2 is a truncated zip file"),
    ("junk.pt2", None, "junk.pt2 is not a torch file"),
    ("empty.pt2", None, "empty.pt2 is an empty file"),
    ("damaged.pt2", None, "damaged.pt2 is a damaged torch.export program"),
    ("script.pt2", None, "script.pt2 is TorchScript"),
    ("fixed.pt2", None, "fixed.pt2 was exported with a fixed batch size of 2"),
    ("state.pt", None, "state.pt is a torch.save archive; pass a state_dict with --builder"),
    ("module.pt", "builder.py:build", "module.pt: it holds pickled Python objects"),
    ("truncated_state.pt", "builder.py:build", "truncated_state.pt is a truncated zip file"),
    ("script.pt2", "builder.py:build", "script.pt2 is TorchScript, not a state_dict"),
    ("good.pt2", "builder.py:build", "good.pt2 is a torch.export program, not a state_dict saved "
     "with torch.save; pass it as --model without --builder"),
    ("garbage_state.pt", "builder.py:build", "in garbage_state.pt; not tensors: 1.weight, x"),
    ("list_state.pt", "builder.py:build", "in list_state.pt, got list"),
    ("mismatch_state.pt", "builder.py:build", "mismatch_state.pt does not fit the model: "
     "missing 3.bias; unexpected extra.weight; shape of 1.weight (5, 4) (model (3, 4))"),
    ("many.pt", "builder.py:build", f"extra{SHOWN_KEYS - 1}, ... and 5 more"),
    ("builder.py", None, "builder.py is Python source; expected module:callable, e.g. "
     "builder.py:build"),
    ("exits.py:build", None, "importing exits.py called sys.exit(0)"),
    ("raises.py:build", None, "importing raises.py raised RuntimeError: boom"),
    ("builder_exits.py:build", None, "builder_exits.py:build called sys.exit(3)"),
]


@pytest.mark.parametrize("spec, builder, expected", CASES, ids=[c[0] for c in CASES])
def test_a_bad_model_file_is_one_line_naming_it(folder: Path, spec: str, builder: str | None,
                                                expected: str, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    with pytest.raises(ValueError) as info:
        load_model(spec, builder)
    message = str(info.value)
    assert expected in message and "\n" not in message


def test_the_good_files_load(folder: Path, monkeypatch) -> None:
    monkeypatch.chdir(folder)
    x = torch.rand(5, 4)
    want = _net()(x)
    for model in (load_model("good.pt2"), load_model("state.pt", "builder.py:build")):
        assert torch.allclose(model(x), want, atol=1e-6)
    assert set(load_checkpoint(folder / "state.pt")) == set(_net().state_dict())


@pytest.mark.parametrize("spec", ["damaged.pt2", "script.pt2", "exits.py:build"])
def test_audit_on_a_bad_model_fails_in_one_line(folder: Path, spec: str, monkeypatch) -> None:
    """No traceback and no torch log record without --debug; a non-zero exit code (a model
    module that calls sys.exit(0) on import used to exit 0 with no output)."""
    monkeypatch.chdir(folder)
    result = subprocess.run([sys.executable, "-m", "malleability.cli", "audit", "--model", spec,
                             *DATA], capture_output=True, text=True, cwd=folder,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode == 1
    line, = (result.stdout + result.stderr).strip().splitlines()
    assert line.startswith("Error: model: ") and spec.partition(":")[0] in line


def _dead_pid() -> int:
    child = subprocess.Popen([sys.executable, "-c", "pass"])
    child.wait()
    return child.pid


def test_train_save_removes_the_temporary_files_of_a_killed_save(tmp_path: Path) -> None:
    dead, alive = _dead_pid(), os.getpid()
    stale = tmp_path / f".m.pt2.{dead}.abc123.tmp"
    live = tmp_path / f".m.pt2.{alive}.def456.tmp"
    other = tmp_path / f".other.pt2.{dead}.ghi789.tmp"
    for path in (stale, live, other):
        path.write_bytes(b"partial")
    result = CliRunner().invoke(main, ["train", *DATA, *FIT, "--save", str(tmp_path / "m.pt2")])
    assert result.exit_code == 0, result.output
    assert not stale.exists() and live.exists() and other.exists()
    assert (tmp_path / "m.pt2").is_file()


def test_train_save_to_an_unwritable_folder_fails_before_training() -> None:
    folder = Path("/sys")  # read-only for every user, root included
    if os.access(folder, os.W_OK) and folder.is_dir():
        try:
            (folder / ".probe").write_bytes(b"")
        except OSError:
            pass
        else:
            pytest.skip("/sys is writable here")
    result = CliRunner().invoke(main, ["train", *DATA, *FIT, "--save", "/sys/m.pt2"])
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert "save: cannot write into /sys" in line and "test accuracy" not in result.output
