"""The report builds from a stored run (tests/data/report_run: tests/data/tiny.toml with
--seeds 3, sklearn digits), shows every section with the paper's numbers beside ours and
intervals over seeds, and says "not run" for missing parts."""

from __future__ import annotations

import html
import json
import math
import re
import shutil
from pathlib import Path

import pytest

from malleability.jsonsafe import loads_strict
from malleability.repro import figures
from malleability.repro.blocks import fmt
from malleability.repro.experiments import EXPERIMENTS, interventions
from malleability.repro.experiments.base import paper_task, task_title, trend
from malleability.repro.report import write_report
from malleability.repro.seeds import merge_seeds
from malleability.repro.store import cell_name, settings_key, write_cell

RUN = Path(__file__).parent / "data" / "report_run"


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("report") / "run"
    shutil.copytree(RUN, out)
    assert write_report(out) == out / "report.md"
    return out


def _section(markdown: str, title: str) -> str:
    start = markdown.index(f"{title}\n")  # the heading, not its line in the contents
    end = markdown.find("\n## ", start)
    return markdown[start:] if end < 0 else markdown[start:end]


def test_report_has_every_section_table_and_paper_values(built: Path) -> None:
    markdown = (built / "report.md").read_text(encoding="utf-8")
    page = (built / "report.html").read_text(encoding="utf-8")
    for module in EXPERIMENTS.values():
        assert module.TITLE in markdown
        assert html.escape(module.TITLE) in page
        body = _section(markdown, module.TITLE)
        assert "not run" not in body.lower()
        assert "\n| " in body and "![" in body  # a table and a figure per section
    assert "Run summary" in markdown and "Run summary" in page
    for value in ("45.1", "246.2", "28.9", "41.0", "14.8", "43.4", "38.6", "1.2·10³", "8.7·10³"):
        assert value in markdown and value in page
    assert page.count("<table>") == markdown.count("\n|---")


def test_every_figure_exists_and_is_png(built: Path) -> None:
    markdown = (built / "report.md").read_text(encoding="utf-8")
    page = (built / "report.html").read_text(encoding="utf-8")
    paths = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", markdown)
    assert len(paths) >= 10
    assert set(paths) == set(re.findall(r'<img src="([^"]+)"', page))
    for path in paths:
        assert (built / path).read_bytes().startswith(b"\x89PNG"), path
        assert b"<svg" in (built / path).with_suffix(".svg").read_bytes()[:2000], path


def test_missing_experiments_say_not_run(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(RUN / "settings.json", out)
    shutil.copytree(RUN / "collapse", out / "collapse")
    markdown = write_report(out).read_text(encoding="utf-8")
    for name, module in EXPERIMENTS.items():
        body = _section(markdown, module.TITLE)
        assert ("not run" in body.lower()) == (name != "collapse"), name
    assert "not run" in (out / "report.html").read_text(encoding="utf-8").lower()


def test_only_the_presets_experiments_get_sections(tmp_path: Path) -> None:
    """A preset of two experiments (like ``sensitivity``) reports those two, numbered 2 and 3,
    not "not run" sections for experiments it never had."""
    out = tmp_path / "run"
    out.mkdir()
    meta = loads_strict((RUN / "settings.json").read_text())
    kept = ["collapse", "flip_rates"]
    assert set(kept) < set(meta["settings"])
    dropped = [name for name in EXPERIMENTS if name not in kept]
    meta["settings"] = {k: v for k, v in meta["settings"].items() if k not in dropped}
    (out / "settings.json").write_text(json.dumps(meta))
    shutil.copytree(RUN / "collapse", out / "collapse")
    markdown = write_report(out).read_text(encoding="utf-8")
    assert f"## 2. {EXPERIMENTS['collapse'].TITLE}" in markdown
    assert f"## 3. {EXPERIMENTS['flip_rates'].TITLE}" in markdown
    assert "## 4." not in markdown
    for name in dropped:
        assert EXPERIMENTS[name].TITLE not in markdown, name
    assert "Not run: no results under flip_rates/" in markdown


def test_paper_values_sit_beside_matching_tasks(tmp_path: Path,
                                                monkeypatch: pytest.MonkeyPatch) -> None:
    """Relabel the stored digits tasks as MNIST 10-class and CIFAR-10 binary (tables only:
    the figures are checked above)."""
    for name in ("line_panels", "bar_panels"):
        monkeypatch.setattr(figures, name, lambda path, *args, **kwargs: path)
    out, relabel = tmp_path / "run", {"digits": "mnist", "digits 3,8": "cifar10 1,0"}
    for name in ("spectrum", "ntk_distance", "flip_rates", "adversarial_training"):
        (out / name).mkdir(parents=True)
        for path in (RUN / name).glob("*.json"):
            record = loads_strict(path.read_text())
            record["cell"]["task"] = relabel[record["cell"]["task"]]
            for task in record["settings"].get("tasks", ()):  # the settings name them too
                old = task["dataset"] if task["classes"] is None else \
                    f"{task['dataset']} {task['classes']}"
                dataset, _, classes = relabel[old].partition(" ")
                task["dataset"], task["classes"] = dataset, classes or None
            record["settings_hash"] = settings_key(record["settings"])
            del record["checksum"]
            write_cell(out / name / f"{cell_name(record['cell'])}.json", record)  # named anew
    lines = write_report(out).read_text(encoding="utf-8").splitlines()

    def row(*parts: str) -> str:
        return next(line for line in lines if all(part in line for part in parts))

    # verdicts from the stored 3-seed t intervals: decided ones agree or disagree, the rest
    # (here every width trend: the steps' intervals straddle 0) are inconclusive
    assert row("| mnist | 2L-ReLU |", "45.1 / 39.9 / 39.2").endswith(
        "| undecided (means decreasing) | decreasing | inconclusive |")
    assert row("| mnist | MLP-Attn |", "10.3 / 33.3 / 43.4").endswith(
        "| undecided (means decreasing) | non-monotonic | inconclusive |")
    assert row("| cifar10 1,0 | 2L-ReLU |", "15.2 / 15.5 / 15.3")
    assert row("| cifar10 1,0 | FGSM |").endswith(
        "| 0 [-248, 248] | 1 | 0.941 | no (≈ equal) | inconclusive |")
    # the gap is −25 in every seed: a zero-width interval, which never decides a verdict
    assert row("| cifar10 1,0 | PGD |").endswith("| -25 [-25, -25] | 0.5 | 0.903 | no (≈ equal) "
                                                 "| no spread over seeds |")
    assert row("| mnist | FGSM |").endswith("| 44.4 [-41.7, 131] | 9 | 8.44 | yes | inconclusive |")
    # 3 seeds, two of them tied: the interval decides (it contains 0)
    assert row("| mnist | PGD |").endswith("| 22.2 [-73.4, 118] | 3 | 8.76 | yes | inconclusive |")
    assert row("| mnist | MLP-Attn |", "28.9 → 42.2")
    assert row("| mnist | 40 |").endswith("| 1.2e3 |")


@pytest.mark.parametrize(("value", "text"), [
    (None, "—"), (math.nan, "—"), (math.inf, "∞"), (-math.inf, "−∞"), (3, "3"),
    (45.0, "45"), (246.2, "246"), (0.012345, "0.0123"), (6.98e5, "6.98e5"), (1.2e-7, "1.2e-7"),
])
def test_fmt(value: float | None, text: str) -> None:
    assert fmt(value) == text


def test_paper_task_and_trend() -> None:
    assert paper_task("mnist") == "MNIST 10-class"
    assert paper_task("mnist 3,8") == "MNIST binary"
    assert paper_task("cifar10 automobile,airplane") == "CIFAR-10 binary"
    assert paper_task("cifar10 1,0") == "CIFAR-10 binary"
    assert paper_task("digits") is None and paper_task("fashion-mnist") is None
    assert trend([3.0, 2.0, 1.0]) == "decreasing"
    assert trend([1.0, 2.0]) == "increasing"
    assert trend([1.0, 3.0, 2.0]) == "non-monotonic"
    assert trend([1.0]) == "—"


def test_table5_claims_are_paired_by_seed_and_read_the_papers_differences() -> None:
    """Per seed: Transformed beats Curated by 2, 2.5, 3 points (a paired CI above 0 although the
    two accuracies' ranges overlap); MLP-Attn trails 2L-ReLU by 10, 11, 12 points; its flip
    rate is higher by 20, 0, 40 points (its CI straddles 0: inconclusive)."""
    def result(acc: float, flip: float, rho: float) -> dict:
        return {"accuracy_by_epoch": {"1": acc, "10": acc, "100": acc}, "flip_rate": flip,
                "spearman": rho}

    raw = []
    for seed, (base, flip) in enumerate([(0.90, 0.2), (0.80, 0.0), (0.85, 0.4)]):
        step = 0.01 * seed
        for model, shift, extra_flip, rho in (("relu", 0.0, 0.0, 0.9),
                                              ("attn", -0.1 - step, flip, 0.3 + step)):
            for name, gain in (("curated", 0.0), ("transformed", (seed + 4) / 200)):
                raw.append({"cell": {"task": "mnist", "model": model, "intervention": name,
                                     "seed": seed},
                            "result": result(base + shift + gain, 0.05 + extra_flip, rho)})
    rows = {row[2]: row for row in interventions.claims(merge_seeds(raw))}
    assert rows["2L-ReLU: T − C @ 1"][3:] == ["2.5 [1.26, 3.74]", "2.6", "agrees"]
    assert rows["MLP-Attn: T − C @ 100"][3:] == ["2.5 [1.26, 3.74]", "0.6", "agrees"]
    # −11 ± t(0.975, 2)·1/√3 = [−13.5, −8.52]
    assert rows["curated: MLP-Attn − 2L-ReLU @ 10"][3:] == ["-11 [-13.5, -8.52]", "1.5",
                                                            "disagrees"]
    assert rows["transformed: MLP-Attn − 2L-ReLU"][3:] == ["20 [-29.7, 69.7]", "25.6",
                                                          "inconclusive"]
    assert rows["curated: Spearman ρ, 2L-ReLU − MLP-Attn"][3:] == ["0.59 [0.565, 0.615]", "—",
                                                                   "agrees"]
    assert len(rows) == 6 + 6 + 1 + 2


def test_bar_figures_carry_the_interval_over_seeds(tmp_path: Path,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """The stored digits MLP-Attn strong evaluation has seeds 0–2: its bars are the seeds'
    worst-case accuracies in %, with their interval (drawn as error bars)."""
    drawn: dict = {}
    monkeypatch.setattr(figures, "bar_panels",
                        lambda path, bars, *args, **kwargs: drawn.update(bars) or path)
    raw = [loads_strict(p.read_text()) for p in (RUN / "robust_evaluation").glob("*.json")]
    EXPERIMENTS["robust_evaluation"].section(merge_seeds(raw), tmp_path)
    attn = [r for r in raw if r["cell"]["task"] == "digits" and r["cell"]["model"] == "attn"]
    values = sorted(100 * r["result"]["adversarial"]["worst_accuracy"] for r in attn)
    shown = drawn[task_title("digits")]["MLP-Attn ε=0.3"]["adversarial"]
    assert len(values) == 3 and sorted(shown.values) == pytest.approx(values)
    assert shown.interval is not None
