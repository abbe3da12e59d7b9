"""Issue 9, classes 3 and 4: no silent wrong numbers, clear refusals of bad input files and
of networks that cannot fit in memory. Each error is one line naming the input."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

import malleability as M
from malleability import memory
from malleability._validation import NonFiniteError, as_tensor, check_finite
from malleability.cli import main
from malleability.data.features import read_feature_file
from malleability.diagnostic import max_input_magnitude
from malleability.jsonsafe import dumps_strict, from_strict_json, loads_strict, to_strict_json
from malleability.spectral import linear_attention_features

FAST = settings(max_examples=40, deadline=None)


def one_line(err: pytest.ExceptionInfo) -> str:
    text = str(err.value)
    assert "\n" not in text
    return text


@pytest.fixture
def x8() -> torch.Tensor:
    return torch.rand(6, 8, dtype=torch.float64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def net8() -> M.TwoLayerNet:
    return M.TwoLayerNet(8, 16, 1)


# --- class 3: numbers that are silently wrong -------------------------------------------------

def test_empirical_ntk_overflow_raises_naming_stage_and_input(net8, x8):
    with pytest.raises(NonFiniteError, match=r"^x1: the empirical NTK .* is not finite") as err:
        M.empirical_ntk(net8, x8 * 1e200)
    assert "largest |x1| is 9." in one_line(err)
    with pytest.raises(NonFiniteError, match=r"^x1, x2: the empirical NTK"):
        M.empirical_ntk(net8, x8 * 1e200, x8 * 1e200)


def test_infinite_and_autograd_ntk_overflow_raise(net8, x8):
    with pytest.raises(NonFiniteError, match=r"^z1: the infinite-width NTK"):
        M.infinite_ntk(x8 * 1e200)
    with pytest.raises(NonFiniteError, match=r"^x1: the autograd NTK"):
        M.autograd_ntk(net8, x8 * 1e200)


def test_kernel_ridge_and_influence_overflow_raise():
    eye = torch.eye(4, dtype=torch.float64)
    y = torch.ones(4, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"^y_train: the ridge coefficients"):
        M.fit_kernel_ridge(1e-300 * eye, 1e10 * y, 0.0)
    with pytest.raises(NonFiniteError, match=r"^k_test_train: the leave-one-out influence"):
        M.ntk_influence(eye, torch.full((2, 4), 1e200, dtype=torch.float64), y,
                        torch.ones(2, dtype=torch.float64), 1.0)
    with pytest.raises(NonFiniteError, match=r"^k_test_train: the leave-one-out influence"):
        M.loo_influence(eye, torch.full((2, 4), 1e200, dtype=torch.float64), y,
                        torch.ones(2, dtype=torch.float64), 1.0)


class _Map(nn.Module):
    """A preprocessing module x → fn(x), standing in for a broken user preprocessing."""

    def __init__(self, fn) -> None:
        super().__init__()
        self.fn = fn

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fn(x)


def test_training_loss_nonfinite_raises(x8):
    net = M.TwoLayerNet(8, 16, 1, seed=0, preprocessing=_Map(lambda t: t * 1e200))
    y = torch.ones(6, 1, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"^x: the training loss at epoch 1 is not finite"):
        M.train(net, x8, y, M.TrainSettings(epochs=2, progress=False))


def test_malleability_nonfinite_inputs_raise(x8):
    net = M.TwoLayerNet(8, 16, 1, seed=0, preprocessing=_Map(lambda t: t / 0.0 - t / 0.0))
    y = torch.ones(6, 1, dtype=torch.float64)
    with pytest.raises(NonFiniteError, match=r"^x_train: model\.inputs\(x_train\) is not finite"):
        M.measure(net, x8, y, x8, y, M.make_estimator("ntk-loo"), M.make_attack("fgsm", eps=0.1))


@pytest.mark.parametrize("make", [
    lambda x: x.to(torch.complex128),
    lambda x: x.numpy().astype(np.complex64),
    lambda x: (x + 1j).tolist(),
], ids=["torch", "numpy", "list"])
def test_complex_input_refused(make, net8, x8):
    with pytest.raises(ValueError, match=r"^x1: expected real numbers, got complex"):
        M.empirical_ntk(net8, make(x8))
    with pytest.raises(ValueError, match=r"^x: expected real numbers, got complex"):
        M.diagnose(make(x8))
    with pytest.raises(ValueError, match=r"^x: expected real numbers, got complex"):
        M.fgsm(lambda a, b: a.sum(1), make(x8), torch.zeros(6), 0.1)


def test_meta_and_lazy_networks_refused(net8, x8):
    with pytest.raises(ValueError, match=r"^model: weight is on the meta device") as err:
        M.empirical_ntk(net8.to("meta"), x8)
    assert "to_empty" in one_line(err)
    with pytest.raises(ValueError, match=r"^model: weight is on the meta device"):
        M.autograd_ntk(nn.Linear(8, 1).to("meta"), x8)
    with pytest.raises(ValueError, match=r"^model: weight is on the meta device or uninit"):
        M.autograd_ntk(nn.LazyLinear(1), x8)


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "mim"])
def test_attack_nan_loss_raises(attack):
    x, y = torch.rand(4, 8), torch.zeros(4)
    with pytest.raises(NonFiniteError, match=rf"^loss_fn: the loss at {attack}( step 1)? is "):
        M.run_attack(attack, lambda a, b: a.sum(1) * math.nan, x, y, 0.1, steps=3)


@pytest.mark.parametrize("attack", ["fgsm", "pgd", "mim"])
def test_attack_nonfinite_gradient_raises(attack):
    x, y = torch.rand(4, 8, dtype=torch.float64), torch.zeros(4)

    def loss_fn(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:  # √0: finite, ∞ slope
        return torch.sqrt(a - a.detach()).sum(1)

    with pytest.raises(NonFiniteError, match=rf"^loss_fn: the input gradient at {attack}"):
        M.run_attack(attack, loss_fn, x, y, 0.1, steps=3)


def test_json_is_strict_with_flagged_nulls():
    obj = {"kappa": math.inf, "rho": math.nan, "grid": [1.0, -math.inf], "n": 3,
           "t": (np.float64(math.inf), torch.tensor([0.5, math.nan]))}
    text = dumps_strict(obj)
    assert "Infinity" not in text and "NaN" not in text
    strict = json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert strict["kappa"] == {"value": None, "nonfinite": "inf"}
    assert strict["grid"][1] == {"value": None, "nonfinite": "-inf"}
    back = loads_strict(text)
    assert back["kappa"] == math.inf and math.isnan(back["rho"]) and back["n"] == 3
    assert back["t"][0] == math.inf and back["t"][1][0] == 0.5 and math.isnan(back["t"][1][1])
    with pytest.raises(ValueError, match=r"^JSON: Infinity is not strict JSON"):
        loads_strict('{"a": Infinity}')
    with pytest.raises(ValueError, match=r"^\$\.a: a dict with exactly the keys"):
        to_strict_json({"a": {"value": None, "nonfinite": "nan"}})
    with pytest.raises(TypeError, match=r"^\$\.b\[1\]: expected a JSON value"):
        to_strict_json({"b": [1, object()]})


def test_cli_diagnose_json_is_strict(tmp_path):
    x = np.random.default_rng(0).standard_normal((30, 4))
    x[:, 3] = 0.0  # rank-deficient: κ_d is infinite
    path = tmp_path / "deficient.npy"
    np.save(path, x)
    result = CliRunner().invoke(main, ["diagnose", "--features", str(path), "--json"])
    assert result.exit_code == 0, result.output
    out = json.loads(result.stdout, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert out["inputs"]["kappa"] == {"value": None, "nonfinite": "inf"}


# --- class 4: input files, wrong modules, networks too large for memory ------------------------

def _string_npy(path):
    np.save(path, np.array([["a", "b"], ["c", "d"]]))


def _dict_pt(path):
    torch.save({"x": torch.ones(3, 2)}, path)


def _text_npy(path):
    path.write_text("1,2\n3,4\n")


def _huge_npy(path):
    np.save(path, np.random.default_rng(0).random((5, 3)) * 1e200)


@pytest.mark.parametrize(("name", "write", "expected"), [
    ("strings.npy", _string_npy, "expected an array of numbers, got a NumPy array of strings"),
    ("dict.pt", _dict_pt, "expected a tensor saved with torch.save, got a dict"),
    ("text.npy", _text_npy, "unreadable .npy file (no NumPy .npy header"),
    ("huge.npy", _huge_npy, "overflow float64 in the diagnostic"),
])
def test_bad_feature_files_one_line_naming_the_file(tmp_path, name, write, expected):
    path = tmp_path / name
    write(path)
    with pytest.raises(ValueError, match=rf"^features \(.*{name}\): ") as err:
        read_feature_file(path)
    assert expected in one_line(err)
    result = CliRunner().invoke(main, ["diagnose", "--features", str(path)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and name in lines[0] and expected in lines[0]


def test_empirical_ntk_of_any_module_is_its_jacobian_gram(x8):
    """Any module other than TwoLayerNet gets the generic NTK; for nn.Linear(8, 1) the
    Jacobian of x ↦ w·x + b is [x, 1], so Θ(x, x') = x·x' + 1."""
    lin = nn.Linear(8, 1).to(torch.float64)
    torch.testing.assert_close(M.empirical_ntk(lin, x8), x8 @ x8.T + 1, rtol=1e-12, atol=0)


@pytest.mark.parametrize("width", [10**12, int(1e10)])
def test_network_too_large_refused_before_allocating(width):
    with pytest.raises(ValueError, match=rf"^width: TwoLayerNet\(8, {width}, 1\) .* needs at "
                       r"least .* of memory on cpu") as err:
        M.TwoLayerNet(8, width, 1)
    one_line(err)


def test_flip_rate_cli_refuses_huge_width():
    result = CliRunner().invoke(main, ["flip-rate", "--n", "20", "--n-test", "10", "--epochs",
                                       "1", "--model", "relu", "--attack", "fgsm",
                                       "--width", str(10**10)])
    assert result.exit_code == 1
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "width: TwoLayerNet" in lines[0], result.output


def test_ntk_and_training_working_sets_refused(monkeypatch, net8, x8):
    monkeypatch.setattr(memory, "memory_limit", lambda device=None: 10**6)
    big = torch.rand(400, 8, dtype=torch.float64)
    with pytest.raises(ValueError, match=r"^x1: the empirical NTK of 400×400 points at width "
                       r"16 needs at least 1\.\d MiB, more than the 976\.6 KiB"):
        M.empirical_ntk(net8, big)
    wide = M.TwoLayerNet(8, 4096, 1)
    with pytest.raises(ValueError, match=r"^width: training at width 4096 needs at least"):
        M.train(wide, x8, torch.ones(6, 1), M.TrainSettings(epochs=1, progress=False))


def test_memory_limit_is_the_machine_total():
    limit = memory.memory_limit("cpu")
    assert limit is not None and limit > 2**28
    assert memory.memory_limit("meta") is None


def test_network_bytes_counts_every_stage():
    p = 10 * (8 + 2) * 8
    assert memory.network_bytes(8, 10, 2) == 2 * p
    assert memory.network_bytes(8, 10, 2, train_batch=4) == p + (4 * 10 * 8 + 3 * 4 * 10) * 8
    assert memory.network_bytes(8, 10, 2, ntk_rows=(5, 0)) == p + (2 * 5 * 10 + 25) * 8
    assert memory.ntk_bytes(10, 5, 3) == (2 * 8 * 10 + 15) * 8


# --- property-based tests of the validators ---------------------------------------------------

real_floats = st.floats(allow_nan=False, allow_infinity=False, width=64)


@FAST
@given(arrays(np.float64, st.tuples(st.integers(1, 5), st.integers(1, 5)), elements=real_floats))
def test_as_tensor_keeps_finite_real_arrays(a):
    t = as_tensor(a, "a", ndim=2)
    assert t.dtype == torch.float64 and np.array_equal(t.numpy(), a)


@FAST
@given(arrays(np.complex128, st.integers(1, 6)))
def test_as_tensor_refuses_every_complex_array(a):
    with pytest.raises(ValueError, match=r"^a: expected real numbers, got complex"):
        as_tensor(a, "a")


@FAST
@given(arrays(np.float64, st.integers(1, 8), elements=st.floats(width=64)))
def test_as_tensor_and_check_finite_agree_with_numpy(a):
    finite = bool(np.isfinite(a).all())
    try:
        as_tensor(a, "a")
        accepted = True
    except ValueError as err:
        assert str(err) == "a: contains NaN or infinite values"
        accepted = False
    assert accepted == finite
    t = torch.from_numpy(a)
    if finite:
        assert check_finite(t, "a", "stage") is t
    else:
        with pytest.raises(NonFiniteError, match=r"^a: stage is not finite \(\d+ of"):
            check_finite(t, "a", "stage")


@FAST
@given(arrays(st.sampled_from([np.dtype("U3"), np.dtype("S3"), np.dtype("M8[D]")]),
              st.integers(1, 4)))
def test_as_tensor_refuses_non_numeric_arrays(a):
    with pytest.raises(ValueError, match=r"^a: expected an array of numbers, got a NumPy array"):
        as_tensor(a, "a")


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4)
    | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20)


def _same(a, b) -> bool:
    if isinstance(a, float) and isinstance(b, float):
        return (math.isnan(a) and math.isnan(b)) or a == b
    if isinstance(a, list) and isinstance(b, list):
        return len(a) == len(b) and all(_same(u, v) for u, v in zip(a, b, strict=True))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_same(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


@FAST
@given(json_values)
def test_strict_json_round_trip(obj):
    try:
        text = dumps_strict(obj)
    except ValueError as err:  # only the reserved marker shape is refused
        assert "reserved for non-finite numbers" in str(err)
        return
    json.loads(text, parse_constant=lambda c: pytest.fail(f"bare {c}"))
    assert _same(loads_strict(text), obj)
    assert _same(from_strict_json(to_strict_json(obj)), obj)


@FAST
@given(st.integers(2, 12), st.integers(1, 6), st.floats(0.05, 0.99))
def test_inputs_below_the_diagnostic_limit_stay_finite(n, d, frac):
    x = torch.rand(n, d, dtype=torch.float64, generator=torch.Generator().manual_seed(n * d))
    x = x / x.abs().max() * max_input_magnitude(n, d) * frac
    raw = x @ x.T @ x  # the largest products the diagnostic forms, before row normalisation
    assert bool(torch.isfinite(raw.norm(dim=1)).all())
    assert bool(torch.isfinite(linear_attention_features(x)).all())


@FAST
@given(st.integers(0, 2**62), st.integers(1, 2**62))
def test_check_memory_refuses_exactly_above_the_limit(n_bytes, limit):
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(memory, "memory_limit", lambda device=None: limit)
        if n_bytes > limit:
            with pytest.raises(ValueError, match=r"^width: it needs at least"):
                memory.check_memory(n_bytes, "width", "it")
        else:
            memory.check_memory(n_bytes, "width", "it")
