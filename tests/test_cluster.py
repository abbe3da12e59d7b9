"""Issue 12: cells on Dask. A real LocalCluster of 2 worker processes on 127.0.0.1 gives the
cell results of a serial run (bitwise, with one torch thread per cell in both); a worker killed
mid-cell costs only that cell; one run folder has one writer (a second run stops at once naming
the holder's PID; a killed holder's lock is taken over). Worker start-up (importing torch)
dominates the time of this file."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import cloudpickle
import pytest
import torch
from click.testing import CliRunner
from distributed import Client
from distributed.diagnostics.plugin import WorkerPlugin
from same_values import same

from malleability.cli import main
from malleability.repro.cluster import connect
from malleability.repro.problem import RunContext
from malleability.repro.runner import load_preset, reproduce
from malleability.repro.store import LOCK, RunLocked, read_cell, read_tensors, run_lock

PRESET = """
[shared]
tasks = [{ dataset = "digits", classes = "3,8", n_train = 40, n_test = 20, seed = 0 }]
[shared.model]
width = 16
seed = 1
dtype = "float32"
[shared.train]
epochs = 2
lr = 1e-2
seed = 1
[shared.attack]
seed = 1
steps = 2
alpha = 0.1
[experiments.collapse]
[experiments.flip_rates]
attacks = ["fgsm", "pgd"]
"""
#: What a cell's payload is, besides its timings and the worker's versions.
PAYLOAD = ("experiment", "cell", "result", "settings", "settings_hash", "device")

pytestmark = pytest.mark.cluster
cloudpickle.register_pickle_by_value(sys.modules[__name__])  # the plugin below, on workers


@pytest.fixture(scope="module")
def preset_path(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("preset") / "small.toml"
    path.write_text(PRESET)
    return path


@pytest.fixture(scope="module")
def serial(preset_path: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("serial") / "run"
    reproduce(load_preset(str(preset_path)), RunContext(out, progress=False), threads=1)
    return out




def assert_same_run(a: Path, b: Path, cells: str = "*/*.json") -> None:
    """Same cell files with equal payloads, and the same cached models with equal weights."""
    files = sorted(p.relative_to(a) for p in a.glob(cells))
    assert files and files == sorted(p.relative_to(b) for p in b.glob(cells))
    for rel in files:
        x, y = read_cell(a / rel), read_cell(b / rel)
        for key in PAYLOAD:
            assert same(x[key], y[key]), (rel, key)
    models = sorted(p.name for p in (a / "cache" / "models").glob("*.pt"))
    assert models == sorted(p.name for p in (b / "cache" / "models").glob("*.pt"))
    for name in models:
        wa, wb = (read_tensors(r / "cache" / "models" / name, ("weight",))["weight"]
                  for r in (a, b))
        assert torch.equal(wa, wb), name


def test_cluster_results_equal_serial(preset_path, serial, cluster, tmp_path):
    out = tmp_path / "run"
    reproduce(load_preset(str(preset_path)), RunContext(out, progress=False), cluster=cluster,
              threads=1)
    assert_same_run(serial, out)  # models travelled back from the workers' own caches


def test_local_jobs_equal_serial(preset_path, serial, tmp_path):
    out = tmp_path / "run"
    reproduce(load_preset(str(preset_path)), RunContext(out, progress=False),
              only=("flip_rates",), jobs=2, threads=1)
    assert_same_run(serial, out, "flip_rates/*.json")
    assert not (out / "collapse").exists()


class KillOnce(WorkerPlugin):
    """Kills the worker process that starts executing the first cell (once: a marker file)."""

    def __init__(self, marker: str) -> None:
        self.marker = marker

    def transition(self, key, start, finish, **kwargs) -> None:
        if finish == "executing" and not os.path.exists(self.marker):
            Path(self.marker).write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)


def test_killed_worker_costs_only_its_cell(preset_path, serial, cluster, tmp_path):
    marker = tmp_path / "killed"
    with Client(cluster) as client:
        before = set(client.run(os.getpid).values())
        client.register_plugin(KillOnce(str(marker)), name="kill-once")
        try:
            out = tmp_path / "run"
            reproduce(load_preset(str(preset_path)), RunContext(out, progress=False),
                      cluster=cluster, threads=1)
        finally:
            client.unregister_worker_plugin("kill-once")
    assert int(marker.read_text()) in before  # a worker died mid-cell …
    assert_same_run(serial, out)  # … and the run finished with the same results


def test_second_run_on_a_folder_stops_naming_the_holder(preset_path, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    with run_lock(out), pytest.raises(RunLocked) as err:
        reproduce(load_preset(str(preset_path)), RunContext(out, progress=False))
    assert str(err.value) == (f"out: {str(out)!r} is in use by another run (PID {os.getpid()})"
                              "; wait for it to finish, or give another --out")
    assert not (out / "collapse").exists()


HOLD = textwrap.dedent("""
    import json, os, sys, time
    from filelock import FileLock
    out = sys.argv[1]
    lock = FileLock(out + "/.lock")
    lock.acquire(timeout=0)
    with open(out + "/.lock.pid", "w") as fh:
        json.dump({"pid": os.getpid(), "host": os.uname().nodename, "started": 0}, fh)
    print("locked", flush=True)
    time.sleep(120)
""")  # another run holding the folder, as run_lock leaves it


def test_cli_refuses_a_held_folder_and_takes_over_a_killed_holders(preset_path, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                              text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset_path),
                                           "--out", str(out), "--quiet", "--only", "collapse"])
        assert result.exit_code == 1
        assert result.output.strip() == (
            f"Error: out: {str(out)!r} is in use by another run (PID {holder.pid}); wait for "
            "it to finish, or give another --out")
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert (out / f"{LOCK}.pid").exists()  # the killed holder left its lock behind
    start = time.perf_counter()
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset_path),
                                       "--out", str(out), "--quiet", "--only", "collapse"])
    assert result.exit_code == 0, result.output
    assert f"took over the lock of PID {holder.pid}, no longer running" in result.output
    assert len(list((out / "collapse").glob("*.json"))) == 1
    assert not (out / f"{LOCK}.pid").exists()
    assert time.perf_counter() - start < 60


def test_unreachable_scheduler_is_one_line(preset_path, tmp_path, monkeypatch):
    monkeypatch.setattr("malleability.repro.cluster.CONNECT_TIMEOUT", 1)
    with pytest.raises(ValueError, match=r"^cluster: expected a scheduler address"):
        with connect("not an address"):
            pass
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset_path), "--out",
                                       str(tmp_path / "run"), "--cluster", "tcp://127.0.0.1:9"])
    assert result.exit_code == 1
    assert result.output.startswith("Error: cluster: no Dask scheduler answered at")
    assert result.output.count("\n") == 1
    assert not (tmp_path / "run").exists()
    result = CliRunner().invoke(main, ["reproduce", "--preset", str(preset_path), "--out",
                                       str(tmp_path / "run"), "--jobs", "2", "--cluster",
                                       "tcp://127.0.0.1:9"])
    assert result.output == ("Error: jobs: --jobs runs a local cluster; give either --jobs "
                             "or --cluster\n")
