"""A killed training resumes from its last saved state, bitwise as if it had not stopped, and
only a training with the same inputs resumes; a killed reproduction cell resumes its
trainings and counts its earlier attempt's time."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from malleability import AttackSettings, ModelSettings, TwoLayerNet
from malleability.interventions import RampedAdversary
from malleability.repro import jobs as jobs_module
from malleability.repro.cache import PARTIAL, CellCheckpoints
from malleability.repro.problem import RunContext
from malleability.repro.runner import load_preset, plan
from malleability.resume import resumable, training_key
from malleability.training import TrainSettings, train

SETTINGS = TrainSettings(epochs=6, lr=1e-2, seed=3, checkpoints=(0, 2, 6), progress=False)
ADVERSARY = RampedAdversary(AttackSettings("pgd", eps=0.1, alpha=0.025, steps=3), 2)


class Killed(Exception):
    """The machine taken back."""


class Store:
    """States in memory, saved as a file would hold them (on the CPU, cloned); ``kill_after``:
    raise :class:`Killed` once the state of that epoch is saved."""

    def __init__(self, kill_after: int | None = None) -> None:
        self.states: dict[str, dict] = {}
        self.kill_after, self.loaded, self.saved = kill_after, [], []

    def load(self, key: str) -> dict | None:
        self.loaded.append(key)
        return self.states.get(key)

    def save(self, key: str, state: dict) -> None:
        self.states[key] = {k: v.clone() if isinstance(v, torch.Tensor) else v
                            for k, v in state.items()}
        self.saved.append(state["epoch"])
        if state["epoch"] == self.kill_after:
            raise Killed


def _fit(ds, test, attention, adversary=None) -> tuple[torch.Tensor, object]:
    net = TwoLayerNet.for_data(ds, ModelSettings(width=32, seed=1), attention)
    history = train(net, ds.pixels, ds.targets(), SETTINGS, test.pixels, test.targets(),
                    adversary=adversary)
    return net.weight.detach().clone(), history


@pytest.mark.parametrize(("attention", "adversary"), [(None, None), ("linear", ADVERSARY)])
def test_a_killed_training_resumes_bitwise(digits, attention, adversary):
    tr, te = digits
    weight, history = _fit(tr, te, attention, adversary)  # never stopped
    store = Store(kill_after=3)
    with resumable(store, every=0), pytest.raises(Killed):
        _fit(tr, te, attention, adversary)
    store.kill_after = None
    with resumable(store, every=0):
        resumed_weight, resumed = _fit(tr, te, attention, adversary)
    assert len(store.loaded) == 2 and store.loaded[0] == store.loaded[1]  # the same training
    assert store.saved == [1, 2, 3, 4, 5, 6]  # the rerun went on from epoch 4
    assert torch.equal(resumed_weight, weight)
    assert resumed.to_dict() == history.to_dict()
    assert set(resumed.checkpoints) == {0, 2, 6}
    assert all(torch.equal(resumed.checkpoints[e], history.checkpoints[e]) for e in (0, 2, 6))
    assert next(iter(store.states.values()))["epoch"] == 6  # the last epoch is always saved


def test_other_inputs_do_not_resume(digits):
    """Another seed, data or adversary is another training; a closure adversary (its repr
    names only its address) is never saved."""
    tr, te = digits
    store = Store()
    with resumable(store, every=0):
        _fit(tr, te, None)
        _fit(tr, te, None, ADVERSARY)
        _fit(tr, te, None, RampedAdversary(ADVERSARY.attack.replace(eps=0.2), 2))
        net = TwoLayerNet.for_data(tr, ModelSettings(width=32, seed=2))
        train(net, tr.pixels, tr.targets(), SETTINGS)
        train(TwoLayerNet.for_data(tr, ModelSettings(width=32, seed=1)), tr.pixels[:-1],
              tr.targets()[:-1], SETTINGS)
        before = len(store.states)
        train(TwoLayerNet.for_data(tr, ModelSettings(width=32, seed=1)), tr.pixels,
              tr.targets(), SETTINGS, adversary=lambda loss, xb, yb, epoch: xb)
    assert before == 5 and len(store.states) == 5
    assert len(set(store.loaded)) == 5  # no two trainings shared a key


def test_training_key_reads_dtype_shape_bytes_and_description():
    a = torch.arange(6.0).reshape(2, 3)
    key = training_key([a, None], {"lr": 1e-3})
    assert key == training_key([a.clone(), None], {"lr": 1e-3})
    for other in ([a.reshape(3, 2), None], [a.double(), None], [a + 1e-7, None], [a, a]):
        assert training_key(other, {"lr": 1e-3}) != key
    assert training_key([a, None], {"lr": 1e-2}) != key


def test_a_killed_cell_resumes_and_counts_both_attempts(tmp_path: Path, monkeypatch):
    """A tiny `adversarial_training` cell killed after two epochs of its adversarial training:
    its states stay under cache/partial/; the rerun continues them, gives the uninterrupted
    record's result, counts the first attempt's seconds and removes the states."""
    preset = load_preset(str(Path(__file__).parent / "data" / "tiny.toml"))
    job = next(j for j in plan(preset, tmp_path / "a", ("adversarial_training",))
               if j.cell["model"] == "relu")
    job = dataclasses.replace(job, settings=job.settings.replace(epochs=3))
    whole = jobs_module.compute_cell(job, RunContext(tmp_path / "a", progress=False))
    ctx = RunContext(tmp_path / "b", progress=False)
    keys: list[str] = []
    real_save = CellCheckpoints.save

    def killing_save(self, key, state):
        real_save(self, key, state)
        keys.append(key)
        if key != keys[0] and state["epoch"] == 2:  # the adversarial training, mid-way
            raise Killed

    monkeypatch.setattr(jobs_module, "CHECKPOINT_SECONDS", 0.0)
    monkeypatch.setattr(CellCheckpoints, "save", killing_save)
    with pytest.raises(Killed):
        jobs_module.compute_cell(job, ctx)
    (cell_folder,) = (ctx.cache / PARTIAL / job.experiment).iterdir()
    assert len(list(cell_folder.glob("*.pt"))) == 2 and (cell_folder / "seconds.json").exists()
    monkeypatch.setattr(CellCheckpoints, "save", real_save)
    resumed = []
    real_load = CellCheckpoints.load

    def noting_load(self, key):
        state = real_load(self, key)
        resumed.append(None if state is None else state["epoch"])
        return state

    monkeypatch.setattr(CellCheckpoints, "load", noting_load)
    again = jobs_module.compute_cell(job, ctx)
    assert resumed == [2]  # the standard network comes from the model cache
    assert again["result"] == whole["result"]
    assert whole["timing"]["earlier_seconds"] == 0
    assert 0 < again["timing"]["earlier_seconds"] < again["timing"]["seconds"]
    assert not cell_folder.exists()


def test_a_corrupt_state_is_not_resumed_from(tmp_path: Path, caplog):
    store = CellCheckpoints(tmp_path / "cell")
    state = {"epoch": 1, "weight": torch.ones(2), "step": torch.tensor(1.0),
             "exp_avg": torch.zeros(2), "exp_avg_sq": torch.zeros(2),
             "generator": torch.Generator().get_state(), "history": {"train_loss": [0.5]},
             "kept_epochs": [], "kept": torch.empty(0)}
    store.save("k", state)
    assert store.load("k")["epoch"] == 1 and store.load("other") is None
    path = tmp_path / "cell" / "k.pt"
    path.write_bytes(path.read_bytes()[:-9])
    assert store.load("k") is None and "starts over" in caplog.text
    assert CellCheckpoints(tmp_path / "cell").earlier_seconds == pytest.approx(
        store.seconds(), abs=1.0)
    store.clear()
    assert not (tmp_path / "cell").exists()
    assert CellCheckpoints(tmp_path / "cell").earlier_seconds == 0
