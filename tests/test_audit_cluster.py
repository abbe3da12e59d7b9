"""Issue 30, item 6: the audit's cells on Dask. On a real LocalCluster (2 worker processes on
127.0.0.1) and on ``--jobs 2``, a run folder's cells, and the in-memory audit's report, equal
the serial run's (bitwise, one torch thread per cell in both); a resumed folder recomputes
only its missing cells, a deterministic estimator's later seed from the first seed's scores
on disk. Workers write nothing: the client alone writes the folder."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from same_values import same
from torch import nn

from malleability.audit_run import run_audit
from malleability.auditing import audit, prepare
from malleability.cli import main
from malleability.repro.store import read_cell

pytestmark = pytest.mark.cluster

OPTIONS = {"attack": "fgsm", "eps": 0.1, "seeds": (0, 1)}
ESTIMATORS = ("ntk-loo", "trak")  # deterministic (later seeds reuse seed 0), randomized
PAYLOAD = ("experiment", "cell", "result", "settings", "settings_hash", "device")


def _data() -> tuple[torch.Tensor, ...]:
    g = torch.Generator().manual_seed(0)
    return (torch.rand(16, 5, generator=g), torch.randint(0, 3, (16,), generator=g),
            torch.rand(6, 5, generator=g), torch.randint(0, 3, (6,), generator=g))


def _model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))


def _problems() -> list:
    checkpoints = [_model(1).state_dict(), _model(2).state_dict()]
    return [prepare(_model(), *_data(), estimator=name, checkpoints=checkpoints, **OPTIONS)
            for name in ESTIMATORS]


def _run(out: Path, **parallel) -> list[str]:
    computed: list[str] = []
    run_audit(out, _problems(), "cpu", computed.append, threads=1, **parallel)
    return computed


def _files(out: Path) -> list[Path]:
    return sorted(p.relative_to(out) for p in out.glob("*/*.json"))


def assert_same_cells(a: Path, b: Path) -> None:
    files = _files(a)
    assert len(files) == 1 + 2 * 4 * 2 and files == _files(b)  # spectrum + 2 × 4 labels × 2
    for rel in files:
        x, y = read_cell(a / rel), read_cell(b / rel)
        for key in PAYLOAD:
            assert same(x[key], y[key]), (rel, key)


@pytest.fixture(scope="module")
def serial(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "run"
    assert len(_run(out)) == 17
    return out


def test_cluster_cells_equal_serial(serial, cluster, tmp_path):
    out = tmp_path / "run"
    assert len(_run(out, cluster=cluster)) == 17
    assert_same_cells(serial, out)
    assert not list(out.rglob("*.tmp"))


def test_resume_on_the_cluster_computes_only_the_missing_cells(serial, cluster, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(serial, out)
    for cell in ("ntk-loo/checkpoint=ckpt1__seed=1.json", "trak/checkpoint=model__seed=0.json"):
        (out / cell).unlink()
    # ntk-loo's seed 1 takes seed 0's clean scores from its cell on disk
    assert sorted(_run(out, cluster=cluster)) == ["ntk-loo checkpoint=ckpt1__seed=1",
                                                  "trak checkpoint=model__seed=0"]
    assert_same_cells(serial, out)


def test_in_memory_audit_on_the_cluster_equals_serial(cluster):
    checkpoints = [_model(1).state_dict(), _model(2).state_dict()]
    for name in ESTIMATORS:
        here = audit(_model(), *_data(), estimator=name, checkpoints=checkpoints, threads=1,
                     **OPTIONS)
        there = audit(_model(), *_data(), estimator=name, checkpoints=checkpoints, threads=1,
                      cluster=cluster, **OPTIONS)
        assert same(here.to_dict(), there.to_dict()), name


def test_local_jobs_equal_serial(serial, tmp_path):
    out = tmp_path / "run"
    assert len(_run(out, jobs=2)) == 17
    assert_same_cells(serial, out)


def test_cli_audit_on_the_cluster_equals_serial(cluster, tmp_path):
    x, y, xt, yt = _data()
    torch.save({"x": x, "y": y}, tmp_path / "train.pt")
    torch.save({"x": xt, "y": yt}, tmp_path / "test.pt")
    torch.save(_model().state_dict(), tmp_path / "state.pt")
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n\ndef build():\n"
        "    return nn.Sequential(nn.Linear(5, 4), nn.Tanh(), nn.Linear(4, 3))\n")
    args = ["audit", "--model", str(tmp_path / "state.pt"), "--builder",
            f"{tmp_path / 'net.py'}:build", "--train", str(tmp_path / "train.pt"), "--test",
            str(tmp_path / "test.pt"), "--attack", "fgsm", "--eps", "0.1", "--seeds", "0,1",
            "--estimator", "tracin", "--threads", "1", "--json"]
    here = CliRunner().invoke(main, args)
    there = CliRunner().invoke(main, [*args, "--cluster", cluster])
    assert here.exit_code == 0 and there.exit_code == 0, (here.output, there.output)
    assert json.loads(here.stdout) == json.loads(there.stdout)


@pytest.mark.parametrize("extra, message", [
    (["--jobs", "2", "--cluster", "tcp://127.0.0.1:9"],
     "Error: jobs: --jobs runs a local cluster; give either --jobs or --cluster"),
    (["--jobs", "0"], "Error: jobs: expected a positive integer, got 0"),
    (["--cluster", "nowhere"], "Error: cluster: expected a scheduler address like "),
])
def test_cli_refuses_bad_parallel_options_in_one_line(tmp_path, extra, message):
    torch.save({"x": _data()[0], "y": _data()[1]}, tmp_path / "d.pt")
    result = CliRunner().invoke(main, ["audit", "--model", "torch.nn:Identity", "--train",
                                       str(tmp_path / "d.pt"), "--test", str(tmp_path / "d.pt"),
                                       "--out", str(tmp_path / "run"), *extra])
    assert result.exit_code != 0 and result.output.startswith(message), result.output
    assert len(result.output.strip().splitlines()) == 1
    assert not (tmp_path / "run").exists()
