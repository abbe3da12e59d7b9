"""``malleability train --save``: the checkpoint loads in ``audit`` with no user code and gives
the trained network's logits; bad --save paths are one-line errors before training."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

from malleability.cli import main
from malleability.data import DataSettings
from malleability.model_io import load_model
from malleability.models import ModelSettings
from malleability.repro.problem import build_model, load_problem
from malleability.training import TrainSettings, train

DATA = ["--dataset", "digits", "--n", "60", "--n-test", "30"]
FIT = ["--width", "16", "--epochs", "2", "--lr", "0.01", "--quiet"]


@pytest.mark.parametrize("arch", ["relu", "attn"])
def test_train_save_audit_roundtrip(tmp_path: Path, arch: str) -> None:
    path = tmp_path / f"{arch}.pt2"
    result = CliRunner().invoke(main, ["train", *DATA, *FIT, "--model", arch,
                                       "--save", str(path)])
    assert result.exit_code == 0, result.output
    assert "test accuracy" in result.output and path.is_file()

    # The same training in Python (seeded): the loaded program gives its logits exactly.
    problem = load_problem(DataSettings(n_train=60, n_test=30))
    net = build_model(arch, problem, ModelSettings(width=16))
    train(net, problem.x, problem.y, TrainSettings(epochs=2, lr=0.01, progress=False))
    loaded = load_model(str(path))
    with torch.no_grad():
        for x in (problem.x_test, problem.x[:1], problem.x):
            assert torch.equal(loaded(x), net(x))

    audit = CliRunner().invoke(main, ["audit", "--model", str(path), *DATA, "--eps", "0",
                                      "--json"])
    assert audit.exit_code == 0, audit.output
    report = json.loads(audit.stdout)[0]
    assert report["flip_rate"]["mean"] == 0.0
    assert report["spearman"]["mean"] == pytest.approx(1.0, abs=1e-12)


@pytest.mark.parametrize("save, expected", [
    ("missing/m.pt2", "save: no such folder"),
    ("m.pt", "save: expected a .pt2 file name"),
    ("exists.pt2", "exists; pass --force"),
    ("folder.pt2", "is a folder"),
])
def test_bad_save_path_is_one_line_error_before_training(tmp_path: Path, save: str,
                                                         expected: str) -> None:
    (tmp_path / "exists.pt2").write_bytes(b"old")
    (tmp_path / "folder.pt2").mkdir()
    result = CliRunner().invoke(main, ["train", *DATA, *FIT, "--save", str(tmp_path / save)])
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert expected in line and "test accuracy" not in result.output
    assert (tmp_path / "exists.pt2").read_bytes() == b"old"


def test_bad_setting_names_the_option(tmp_path: Path) -> None:
    result = CliRunner().invoke(main, ["train", *DATA, "--model", "cnn",
                                       "--save", str(tmp_path / "m.pt2")])
    assert result.exit_code == 1
    line, = result.output.strip().splitlines()
    assert "architecture" in line and "cnn" in line
    assert not (tmp_path / "m.pt2").exists()
