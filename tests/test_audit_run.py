"""audit --out: the run folder resumes, recomputes a damaged cell, refuses other settings and a
held lock before writing, its cells equal the in-process audit's, and its report opens with
the answer."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from torch import nn

from malleability.audit_folder import audit_folder
from malleability.audit_report import fmt_estimate
from malleability.audit_run import checkpoint_labels
from malleability.auditing import audit
from malleability.intervals import Estimate
from malleability.repro.store import run_lock

OPTIONS = {"attack": "fgsm", "eps": 0.2, "seeds": (0, 1, 2)}


@pytest.fixture(scope="module")
def folder(small_classifier, tmp_path_factory):
    model, data = small_classifier
    out = tmp_path_factory.mktemp("audit") / "run"
    state = model.state_dict()
    path = audit_folder(out, model, *data, estimators=("tracin", "trak"),
                        checkpoints=[state, state], **OPTIONS)
    return out, path, model, data


def _cells(out: Path) -> list[Path]:
    return sorted(p for p in out.rglob("*.json") if p.parent != out)


def test_layout_and_report_open_with_the_answer(folder):
    out, path, *_ = folder
    assert path == out / "report.md" and (out / "report.html").exists()
    # spectrum + 2 estimators × (model, ckpt0, ckpt1, ensemble) × 3 seeds
    assert checkpoint_labels(2) == ["model", "ckpt0", "ckpt1", "ensemble"]
    assert len(_cells(out)) == 1 + 2 * 4 * 3
    text = path.read_text()
    assert text.index("## Answer") < text.index("## Contents") < text.index("## 1.")
    for name in ("audit_controls", "audit_scores", "audit_spectrum", "audit_agreement_trak"):
        assert (out / "figures" / f"{name}.png").exists()
        assert (out / "figures" / f"{name}.svg").exists()
    assert "single checkpoint" not in text  # two checkpoints given


def test_cells_equal_the_in_process_audit(folder):
    out, _, model, data = folder
    r = audit(model, *data, estimator="trak", **OPTIONS)
    for i, seed in enumerate(OPTIONS["seeds"]):
        cell = json.loads((out / "trak" / f"checkpoint=model__seed={seed}.json").read_text())
        assert cell["result"]["adversarial"]["flip_rate"] == r.flip_rate.values[i]
        assert cell["result"]["random"]["flip_rate"] == r.controls["random"]["flip_rate"].values[i]
        assert cell["result"]["noise"]["spearman"] == r.diagnostics["rank_stability"].values[i]


def test_resume_skips_valid_cells_and_recomputes_a_damaged_one(folder):
    out, _, model, data = folder
    state = model.state_dict()
    victim = out / "tracin" / "checkpoint=ckpt1__seed=2.json"
    before = {p: p.read_bytes() for p in _cells(out)}
    victim.write_bytes(before[victim][: len(before[victim]) // 2])  # a truncated write
    computed = []
    audit_folder(out, model, *data, estimators=("tracin", "trak"), checkpoints=[state, state],
                 progress=computed.append, **OPTIONS)
    assert computed == ["tracin checkpoint=ckpt1__seed=2"]
    # recomputed to the same result (its timing differs)
    assert json.loads(victim.read_text())["result"] == json.loads(before[victim])["result"]
    assert list((out / ".corrupt").rglob("*seed=2.json.*"))
    # another estimator joins the folder; the others' cells stay
    computed.clear()
    audit_folder(out, model, *data, estimators=("tracin", "trak", "ntk-loo"),
                 checkpoints=[state, state], progress=computed.append, **OPTIONS)
    assert computed and all(c.startswith("ntk-loo") for c in computed)


def test_other_settings_and_a_held_lock_are_refused_before_writing(folder, tmp_path):
    out, _, model, data = folder
    state = model.state_dict()
    files = sorted(p.relative_to(out) for p in out.rglob("*"))
    with pytest.raises(ValueError, match=r"^out: .* holds a run of other settings"):
        audit_folder(out, model, *data, estimators=("tracin",), checkpoints=[state, state],
                     **{**OPTIONS, "eps": 0.1})
    with run_lock(out), pytest.raises(ValueError, match=r"^out: .* is in use by another run"):
        audit_folder(out, model, *data, estimators=("tracin",), checkpoints=[state, state],
                     **OPTIONS)
    assert sorted(p.relative_to(out) for p in out.rglob("*")) == files
    with pytest.raises(ValueError, match="estimators"):
        audit_folder(tmp_path / "new", model, *data, estimators=())
    assert not (tmp_path / "new").exists()


class Tokens(nn.Module):
    """Token ids → embedding → mean over tokens → linear head."""

    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 3)

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        return self.head(self.emb(ids).mean(1))


def test_out_with_perturb_records_the_submodule_and_equals_the_audit(tmp_path):
    g = torch.Generator().manual_seed(0)
    ids, labels = torch.randint(0, 10, (16, 5), generator=g), torch.randint(0, 3, (16,),
                                                                            generator=g)
    options = {"attack": "pgd", "steps": 3, "eps": 0.1, "seeds": (0, 1)}
    out = tmp_path / "run"
    path = audit_folder(out, Tokens(), ids, labels, ids, labels, estimators=("tracin",),
                        perturb="emb", **options)
    settings = json.loads((out / "settings.json").read_text())["settings"]
    assert settings["tracin"]["perturb"] == "emb" and settings["spectrum"]["perturb"] == "emb"
    cell = json.loads((out / "tracin" / "checkpoint=model__seed=1.json").read_text())
    assert cell["settings"]["perturb"] == "emb"
    assert "Gram of the output of emb (perturbed)" in (out / "figures" /
                                                         "audit_spectrum.svg").read_text()
    report = audit(Tokens(), ids, labels, ids, labels, estimator="tracin", perturb="emb",
                   **options)
    assert cell["result"]["adversarial"]["flip_rate"] == report.flip_rate.values[1]
    assert path.exists()
    # without perturb, the token ids are refused before the folder is touched
    with pytest.raises(ValueError, match=r"^x_train: torch.int64 inputs \(token ids\)"):
        audit_folder(out, Tokens(), ids, labels, ids, labels, estimators=("tracin",), **options)


def test_cli_out_takes_perturb(tmp_path):
    from click.testing import CliRunner

    from malleability.cli import main

    g = torch.Generator().manual_seed(0)
    data = {"x": torch.randint(0, 10, (16, 5), generator=g),
            "y": torch.randint(0, 3, (16,), generator=g)}
    torch.save(data, tmp_path / "d.pt")
    (tmp_path / "net.py").write_text(
        "import torch\nfrom torch import nn\n\n\nclass Net(nn.Module):\n"
        "    def __init__(self):\n        super().__init__()\n        torch.manual_seed(0)\n"
        "        self.emb, self.head = nn.Embedding(10, 4), nn.Linear(4, 3)\n\n"
        "    def forward(self, ids):\n        return self.head(self.emb(ids).mean(1))\n")
    result = CliRunner().invoke(main, [
        "audit", "--model", f"{tmp_path / 'net.py'}:Net", "--train", str(tmp_path / "d.pt"),
        "--test", str(tmp_path / "d.pt"), "--perturb", "emb", "--eps", "0.1", "--steps", "2",
        "--estimator", "tracin", "--out", str(tmp_path / "run")])
    assert result.exit_code == 0, result.output
    cell = json.loads((tmp_path / "run" / "tracin" / "checkpoint=model__seed=0.json"
                       ).read_text())
    assert cell["settings"]["perturb"] == "emb"


def test_estimate_rounding_to_zero_reads_0_00_not_minus():
    """A tiny negative excess (round-off of equal scores) shows as 0.00, never −0.00."""
    shown = fmt_estimate(Estimate([-1e-12, -2e-12, -1.5e-12], [0, 1, 2]))
    assert shown == "0.00 [0.00, 0.00]"
    assert fmt_estimate(Estimate([-0.5, -0.4, -0.6], [0, 1, 2])).startswith("-0.50 [")
