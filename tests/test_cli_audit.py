"""`malleability audit`: the three ways to load a model, data files, and one-line errors."""

import json

import numpy as np
import pytest
import torch
from click.testing import CliRunner

from malleability.cli import main

BUILDER = '''
import torch
from torch import nn

def build():
    torch.manual_seed(0)
    return nn.Sequential(nn.Flatten(), nn.Linear(16, 6), nn.Tanh(), nn.Linear(6, 3))
'''


@pytest.fixture()
def files(tmp_path):
    rng = np.random.default_rng(0)
    for name, n in (("train", 24), ("test", 8)):
        np.savez(tmp_path / f"{name}.npz", x=rng.random((n, 1, 4, 4), dtype=np.float32),
                 y=np.arange(n) % 3)
    (tmp_path / "net.py").write_text(BUILDER)
    return tmp_path


def _run(args):
    result = CliRunner().invoke(main, ["audit", *args])
    return result


def _data(path):
    return ["--train", str(path / "train.npz"), "--test", str(path / "test.npz")]


def test_module_callable_with_checkpoints_json(files):
    import importlib.util
    spec = importlib.util.spec_from_file_location("net", files / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    torch.save(mod.build().state_dict(), files / "ckpt.pt")
    result = _run(["--model", f"{files / 'net.py'}:build", *_data(files), "--eps", "0",
                   "--estimator", "ntk-loo", "--estimator", "tracin", "--seeds", "0,1",
                   "--checkpoint", str(files / "ckpt.pt"), "--checkpoint",
                   str(files / "ckpt.pt"), "--json"])
    assert result.exit_code == 0, result.output
    reports = json.loads(result.stdout)
    assert [r["estimator"] for r in reports] == ["ntk-loo", "tracin"]
    assert all(r["flip_rate"]["mean"] == 0.0 for r in reports)
    rho = reports[0]["checkpoint_agreement"]["spearman"]
    assert rho == [[pytest.approx(1.0, abs=1e-12)] * 2] * 2  # identical checkpoints


def test_state_dict_with_builder_and_export_file_agree(files):
    import importlib.util
    spec = importlib.util.spec_from_file_location("net", files / "net.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    net = mod.build()
    torch.save(net.state_dict(), files / "w.pt")
    x = torch.rand(4, 1, 4, 4)
    exported = torch.export.export(net, (x,), dynamic_shapes={"input": {0: torch.export.Dim(
        "n", min=1)}})
    torch.export.save(exported, files / "net.pt2")
    outs = []
    for model in (["--model", str(files / "w.pt"), "--builder", f"{files / 'net.py'}:build"],
                  ["--model", str(files / "net.pt2")]):
        result = _run([*model, *_data(files), "--attack", "fgsm", "--eps", "0.1", "--json"])
        assert result.exit_code == 0, result.output
        outs.append(json.loads(result.stdout)[0])
    assert outs[0]["flip_rate"] == outs[1]["flip_rate"] and outs[0]["kappa"] == outs[1]["kappa"]
    summary = _run(["--model", str(files / "net.pt2"), *_data(files), "--eps", "0.1"])
    assert summary.exit_code == 0 and "per_example" in summary.output


def test_one_line_errors(files):
    torch.jit.save(torch.jit.script(torch.nn.Linear(2, 2)), files / "ts.pt")
    cases = [
        (["--model", str(files / "ts.pt")], "model: ts.pt is TorchScript"),
        (["--model", "no_such_module_xyz:f"], "model: cannot import no_such_module_xyz"),
        (["--model", f"{files / 'net.py'}:build", "--layer", "9"], "layer: no submodule"),
        (["--model", f"{files / 'net.py'}:build", "--bounds", "0,0.5"],
         "x_train: expected values in bounds"),
    ]
    for args, message in cases:
        result = _run([*args, *_data(files)])
        assert result.exit_code != 0 and f"Error: {message}" in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1


def test_out_writes_a_report_folder_and_refuses_bad_input_in_one_line(files):
    model = ["--model", f"{files / 'net.py'}:build", *_data(files)]
    out = files / "audit"
    result = _run([*model, "--attack", "fgsm", "--eps", "0.1", "--seeds", "0,1,2",
                   "--estimator", "tracin", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == f"report: {out / 'report.md'}"
    report = (out / "report.md").read_text()
    assert report.startswith("# Influence audit: ") and "## Answer" in report
    assert len(list((out / "tracin").glob("*.json"))) == 3
    (files / "a_file").write_text("x")
    for args, message in ((["--out", str(out), "--json"], "json: --out writes a report folder"),
                          (["--out", str(files / "a_file")], "out: expected a folder"),
                          (["--out", str(out), "--eps", "0.2"], "holds a run of other settings"),
                          (["--margin", "-1"], "margin: expected a non-negative number")):
        result = _run([*model, "--attack", "fgsm", "--eps", "0.1", "--seeds", "0,1,2",
                       "--estimator", "tracin", *args])
        assert result.exit_code != 0 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output


def test_help_names_the_new_options():
    text = CliRunner().invoke(main, ["audit", "--help"]).output
    assert "--out PATH" in text and "Run folder" in text
    assert "--margin" in text and "not malleable" in text


def test_meaningless_statistics_and_ignored_options_are_refused_before_any_work(files):
    """Issue 29: duplicate seeds, too few points, unused parameters, --n beside --train: one
    line each, non-zero exit, no result printed."""
    model = ["--model", f"{files / 'net.py'}:build"]
    rng = np.random.default_rng(1)
    np.savez(files / "one.npz", x=rng.random((1, 1, 4, 4), dtype=np.float32), y=np.zeros(1))
    cases = [
        (["--seeds", "0,0,0", *_data(files)], "seeds: expected distinct seeds"),
        (["--seeds", "a,b", *_data(files)], "seeds: expected comma-separated integers"),
        (["--bounds", "0,inf", *_data(files)], "bounds: expected two finite numbers"),
        (["--n", "10", *_data(files)], "classes: --classes, --n and --n-test select from"),
        (["--train", str(files / "one.npz"), "--test", str(files / "test.npz")],
         "x_train: 1 training point(s) is too few"),
    ]
    for args, message in cases:
        result = _run([*model, *args])
        assert result.exit_code != 0 and message in result.output, result.output
        assert result.output.startswith("Error: ")
        assert len(result.output.strip().splitlines()) == 1


def test_parameters_the_forward_pass_does_not_use_are_named(small_classifier):
    import copy

    from malleability.auditing import audit

    model, (x, y, xt, yt) = small_classifier
    model = copy.deepcopy(model)  # the fixture is shared by the session: leave it as it is
    model.unused = torch.nn.Linear(2, 2)
    with pytest.raises(ValueError, match="^parameters: unused do not affect the model's output"):
        audit(model, x, y, xt, yt, parameters=("unused",))


def test_python_api_refuses_types_it_used_to_coerce(small_classifier):
    from malleability.auditing import AuditSettings

    for options, message in ((dict(seeds=[0.5, 1.9]), "seeds[0]: expected an integer"),
                             (dict(seeds=(True,)), "seeds[0]: expected an integer"),
                             (dict(eps=True), "eps: expected a number"),
                             (dict(bounds=(0, float("inf"))), "alpha: expected a step size")):
        with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
            AuditSettings(**options)
    assert AuditSettings(parameters="head").parameters == ("head",)  # one name, not letters


def test_a_failing_second_estimator_keeps_the_first_result(files, monkeypatch):
    import malleability.auditing as auditing

    real = auditing.audit

    def fail_on_trak(*args, estimator, **kwargs):
        if estimator == "trak":
            raise ValueError("estimator: trak failed inside dattri (test)")
        return real(*args, estimator=estimator, **kwargs)

    monkeypatch.setattr(auditing, "audit", fail_on_trak)
    result = _run(["--model", f"{files / 'net.py'}:build", *_data(files), "--steps", "2",
                   "--estimator", "ntk-loo", "--estimator", "trak"])
    assert result.exit_code != 0
    assert "ntk-loo" in result.output and "Error: estimator: trak failed" in result.output


def test_estimator_settings_in_brackets_reach_the_estimator_and_its_run_folder(files):
    """``--estimator 'NAME[key=value,...]'``: the settings of docs/audit.md's "Settings that
    fit" from the command line; recorded in settings.json, so a rerun with other settings is
    refused; a misspelt setting, a bad value or two specs of one estimator is one line."""
    model = ["--model", f"{files / 'net.py'}:build", *_data(files), "--attack", "fgsm",
             "--eps", "0.1", "--seeds", "0,1"]
    out = files / "audit"
    spec = "if-arnoldi[proj_dim=4,iterations=10,hessian_points=12]"
    result = _run([*model, "--estimator", spec, "--estimator", "trak[proj_dim=8]",
                   "--out", str(out)])
    assert result.exit_code == 0, result.output
    recorded = json.loads((out / "settings.json").read_text())
    assert json.dumps(recorded).count('"hessian_points": 12') >= 1
    assert json.dumps(recorded).count('"proj_dim": 8') >= 1
    assert len(list((out / "if-arnoldi").glob("*.json"))) == 2
    rerun = _run([*model, "--estimator", "if-arnoldi[proj_dim=4,iterations=10]",
                  "--out", str(out)])
    assert rerun.exit_code != 0 and "holds a run of other settings" in rerun.output
    for specs, message in (
            (["if-arnoldi[hessian_point=12]"], "estimators[0]: expected key=value with key "
             "one of chunk, damping, hessian_points, iterations, proj_dim (if-arnoldi's"),
            (["tracin", "trak[proj_dim=eight]"], "estimators[1]: proj_dim of trak expects an "
             "integer, got 'eight'"),
            (["trak[proj_dim=8"], "estimators[0]: expected NAME or NAME[key=value,...]"),
            (["trak", "trak[proj_dim=8]"], "estimators: trak given more than once")):
        args = [a for s in specs for a in ("--estimator", s)]
        result = _run([*model, *args, "--out", str(files / "other")])
        assert result.exit_code != 0 and message in result.output, result.output
        assert len(result.output.strip().splitlines()) == 1, result.output
        assert not (files / "other").exists()
