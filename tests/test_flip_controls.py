"""flip_controls: the random-perturbation control of Table 2 runs on flip_rates' cached networks,
and its section sets paper, adversarial and control side by side with the excess (hand-computed
cases)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from malleability.repro.experiments import flip_controls
from malleability.repro.problem import RunContext
from malleability.repro.report import to_markdown
from malleability.repro.runner import load_preset, reproduce
from malleability.repro.seeds import Estimate

TINY = Path(__file__).parent / "data" / "tiny.toml"
SEEDS = (0, 1, 2)


def _record(experiment: str, cell: dict, flip: tuple[float, ...]) -> dict:
    return {"experiment": experiment, "cell": cell, "seeds": list(SEEDS),
            "result": {"flip_rate": Estimate(flip, SEEDS)}}


def test_section_excess_is_attack_minus_control_by_seed(tmp_path: Path) -> None:
    records = [_record("flip_controls", {"task": "mnist", "model": m}, c)
               for m, c in (("relu", (0.1, 0.1, 0.1)), ("attn", (0.5, 0.45, 0.55)))]
    for model, pgd in (("relu", (0.29, 0.3, 0.31)), ("attn", (0.5, 0.5, 0.5))):
        for attack in ("fgsm", "pgd", "mim"):
            records.append(_record("flip_rates", {"task": "mnist", "model": model,
                                                  "attack": attack}, pgd))
    markdown = to_markdown(flip_controls.section(records, tmp_path))
    lines = markdown.splitlines()
    # paper, adversarial and control side by side: MNIST 10-class 2L-ReLU in Table 2
    assert any(line.startswith("| mnist | 2L-ReLU | 4.1 | 3.3 | 3.4 | 30") and
               line.endswith("| 10 [10, 10] |") for line in lines)
    # 2L-ReLU: (29, 30, 31) − 10 = (19, 20, 21) points → 20 ± 4.303/√3 = [17.5, 22.5] > 0
    assert "| mnist | 2L-ReLU | PGD | 20 [17.5, 22.5] | malleable |" in lines
    # MLP-Attn: 50 − (50, 45, 55) = (0, 5, −5) points → contains 0 and exceeds 5 points
    attn = next(line for line in lines if line.startswith("| mnist | MLP-Attn | PGD |"))
    assert "[-12.4, 12.4] | not distinguishable from noise |" in attn
    # the paper's comparison on the excess: (0, 5, −5) − (19, 20, 21) = (−19, −15, −26)
    # points: −20 ± t(0.975, 2)·5.568/√3 = [−33.8, −6.17], below 0 where the paper says above
    gap = next(line for line in lines if line.startswith("| mnist | -20 [-33.8, -6.17]"))
    assert gap.endswith("| yes | disagrees |")
    (claim,) = flip_controls.paper_claims(records)  # the claims table's row says the same
    assert claim.verdict == "disagrees" and claim.measured.startswith("gap of the excesses -20")
    assert (tmp_path / "flip_controls.png").exists() and (tmp_path / "flip_controls.svg").exists()


def test_control_section_without_adversarial_cells_shows_the_control(tmp_path: Path) -> None:
    records = [_record("flip_controls", {"task": "digits", "model": "relu"}, (0.1, 0.2, 0.3))]
    markdown = to_markdown(flip_controls.section(records, tmp_path))
    assert "| digits | 2L-ReLU | — | — | — | — | — | — | 20 [" in markdown
    assert "excess over control" not in markdown


def test_control_cells_reuse_the_flip_rate_networks(tmp_path: Path) -> None:
    preset = load_preset(str(TINY)).with_seeds(1)
    ctx = RunContext(out=tmp_path, device="cpu", progress=False)
    reproduce(preset, ctx, only=("flip_rates",))
    networks = sorted((tmp_path / "cache" / "models").glob("*.pt"))
    reproduce(preset, ctx, only=("flip_controls",))
    assert sorted((tmp_path / "cache" / "models").glob("*.pt")) == networks  # none trained
    settings = preset.experiments["flip_controls"]
    for cell in flip_controls.cells(settings):
        name = f"task={cell['task']}__model={cell['model']}".replace(" ", "-").replace(",", "-")
        control = json.loads((tmp_path / "flip_controls" / f"{name}__seed=0.json").read_text())
        attack = json.loads((tmp_path / "flip_rates" / f"{name}__attack=pgd__seed=0.json")
                            .read_text())
        for key in ("test_accuracy", "n_selected", "n_influence"):
            assert control["result"][key] == attack["result"][key]
        assert control["result"]["settings"]["attack"]["attack"] == "random-sign"
        assert control["result"]["max_perturbation"] == pytest.approx(settings.attack.eps)
