"""The command line: diagnose, datasets, flip-rate, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from malleability.cli import main


@pytest.fixture()
def runner():
    return CliRunner()


def test_diagnose_digits_summary_and_json(runner):
    result = runner.invoke(main, ["diagnose", "--dataset", "digits", "--n", "300"])
    assert result.exit_code == 0, result.output
    for text in ("κ_d(G)", "κ⁶·n log n", "κ²·n log n", "Verdict:", "n = 300, d = 64"):
        assert text in result.output
    result = runner.invoke(main, ["diagnose", "--dataset", "digits", "--n", "300", "--json"])
    payload = json.loads(result.stdout)
    assert payload["inputs"]["n"] == 300 and payload["inputs"]["r"] == 64
    assert payload["threshold_attention"] > payload["threshold_relu"]


@pytest.mark.parametrize("suffix", [".npy", ".csv", ".pt"])
def test_diagnose_feature_files(runner, tmp_path, suffix):
    x = np.random.default_rng(0).standard_normal((40, 12))
    path = tmp_path / f"features{suffix}"
    if suffix == ".npy":
        np.save(path, x)
    elif suffix == ".csv":
        np.savetxt(path, x, delimiter=",")
    else:
        torch.save(torch.from_numpy(x), path)
    result = runner.invoke(main, ["diagnose", "--features", str(path), "--json"])
    assert result.exit_code == 0, result.output
    eig = np.linalg.eigvalsh(x.T @ x)
    assert json.loads(result.stdout)["inputs"]["kappa"] == pytest.approx(eig[-1] / eig[0])


def test_diagnose_errors_are_one_line(runner, tmp_path):
    result = runner.invoke(main, ["diagnose", "--dataset", "imagenet"])
    assert result.exit_code != 0
    assert "name:" in result.output or "dataset" in result.output
    assert len(result.output.strip().splitlines()) == 1
    bad = tmp_path / "bad.npy"
    np.save(bad, np.ones(5))
    result = runner.invoke(main, ["diagnose", "--features", str(bad)])
    assert result.exit_code != 0 and "bad.npy): expected a 2-d array" in result.output
    nan = tmp_path / "nan.npy"
    np.save(nan, np.full((3, 2), np.nan))
    result = runner.invoke(main, ["diagnose", "--features", str(nan)])
    assert result.exit_code != 0 and "nan.npy): contains NaN" in result.output


def test_datasets_lists_every_dataset(runner, tmp_path):
    result = runner.invoke(main, ["datasets", "--data-root", str(tmp_path)])
    assert result.exit_code == 0
    for name in ("digits", "mnist", "fashion-mnist", "cifar10"):
        assert name in result.output
    assert "not downloaded" in result.output


def test_flip_rate_table_and_json(runner):
    args = ["flip-rate", "--dataset", "digits", "--n", "80", "--n-test", "40", "--width", "16",
            "--epochs", "2", "--steps", "2", "--alpha", "0.1", "--attack", "pgd"]
    result = runner.invoke(main, [*args, "--json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)["rows"]
    assert [(r["model"], r["attack"]) for r in rows] == [("relu", "pgd"), ("attn", "pgd")]
    assert all(0 <= r["flip_rate"] <= 1 for r in rows)
    result = runner.invoke(main, args)
    assert "flip %" in result.output and "attn" in result.output
    result = runner.invoke(main, [*args, "--eps", "-1"])
    assert result.exit_code != 0 and "eps: expected a non-negative number" in result.output


def test_reproduce_seeds_overrides_the_preset(runner, tmp_path):
    preset = tmp_path / "p.toml"
    preset.write_text('seeds = [5]\n[experiments.collapse]\nseeds = [7]\n'
                      'tasks = [{ dataset = "digits", n_train = 40, n_test = 10 }]\n')
    out = tmp_path / "run"
    result = runner.invoke(main, ["reproduce", "--preset", str(preset), "--out", str(out),
                                  "--seeds", "3", "--quiet"])
    assert result.exit_code == 0, result.output
    assert sorted(p.name for p in (out / "collapse").glob("*.json")) == [
        f"task=digits__seed={s}.json" for s in range(3)]
    assert "[" in (out / "report.md").read_text(encoding="utf-8")  # intervals shown
    result = runner.invoke(main, ["reproduce", "--preset", str(preset), "--out", str(out),
                                  "--seeds", "0"])
    assert result.exit_code != 0 and "seeds: expected a positive number" in result.output
