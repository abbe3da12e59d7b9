"""Issue 29, class 5: the Python API validates types instead of coercing them (``seeds="12"``
used to become (1, 2), ``seeds=[0.5, 1.9]`` (0, 1), ``eps=True`` 1.0 and ``parameters="head"``
the letters h, e, a, d), and command-line values are parsed with errors naming the option."""

from __future__ import annotations

import numpy as np
import pytest

from malleability._validation import (
    check_bounds,
    check_fraction,
    check_names,
    check_nonnegative,
    check_positive,
    check_real,
    check_seeds,
    parse_bounds,
    parse_seeds,
)


@pytest.mark.parametrize("value, expected", [
    ("12", "seeds: expected a sequence of integer seeds, got '12'"),
    ([0.5, 1.9], "seeds[0]: expected a non-negative integer, got 0.5"),
    ([True, 2], "seeds[0]: expected a non-negative integer, got True"),
    ([0, 0, 0], "seeds: expected distinct seeds, got [0, 0, 0] (0 repeated)"),
    ([], "seeds: expected at least one seed, got []"),
    (3, "seeds: expected a sequence of integer seeds, got 3"),
    ([-1], "seeds[0]: expected a non-negative integer, got -1"),
])
def test_check_seeds_refuses(value: object, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        check_seeds(value, "seeds")
    assert str(info.value) == expected


def test_check_seeds_accepts_integer_sequences() -> None:
    assert check_seeds([2, 0, 1]) == (2, 0, 1)
    assert check_seeds(range(3)) == (0, 1, 2)
    assert check_seeds(np.arange(2)) == (0, 1)
    assert all(type(s) is int for s in check_seeds(np.arange(2)))


@pytest.mark.parametrize("text, expected", [
    ("a,b", "seeds: expected comma-separated integers, got 'a,b'"),
    ("0,0", "seeds: expected distinct seeds, got [0, 0] (0 repeated)"),
    ("1.5", "seeds: expected comma-separated integers, got '1.5'"),
])
def test_parse_seeds_names_the_option(text: str, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_seeds(text)
    assert str(info.value) == expected
    assert parse_seeds("3,1") == (3, 1)


@pytest.mark.parametrize("value, expected", [
    ("head", "parameters: expected a list of names, got 'head'"),
    (["head", 3], "parameters[1]: expected a non-empty name, got 3"),
    (["head", ""], "parameters[1]: expected a non-empty name, got ''"),
    (["head", "head"], "parameters: expected distinct names, got head twice"),
])
def test_check_names_refuses(value: object, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        check_names(value, "parameters")
    assert str(info.value) == expected
    assert check_names(["head", "body.0"], "parameters") == ("head", "body.0")


@pytest.mark.parametrize("check", [check_positive, check_nonnegative, check_fraction,
                                   check_real])
def test_a_bool_is_not_a_number(check) -> None:
    with pytest.raises(ValueError, match="eps: expected .*got True"):
        check(True, "eps")


def test_check_real() -> None:
    assert check_real(np.float32(0.5), "eps") == 0.5
    for bad in ("0.3", None, float("nan"), float("inf")):
        with pytest.raises(ValueError, match="^eps: expected a"):
            check_real(bad, "eps")


@pytest.mark.parametrize("text, expected", [
    ("0,inf", "bounds: expected two finite numbers low,high, got '0,inf'"),
    ("0", "bounds: expected two finite numbers low,high, got '0'"),
    ("a,1", "bounds: expected two finite numbers low,high, got 'a,1'"),
    ("1,0", "bounds: expected low < high, got (1, 0)"),
])
def test_parse_bounds_names_the_option(text: str, expected: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_bounds(text)
    assert str(info.value) == expected
    assert parse_bounds("-1,1") == (-1.0, 1.0)


def test_check_bounds() -> None:
    assert check_bounds((0, 1)) == (0.0, 1.0)
    assert check_bounds((-float("inf"), float("inf"))) == (-float("inf"), float("inf"))
    for bad in ("01", (0,), (0, True), (0, float("nan")), (float("inf"), 0), (1, 1)):
        with pytest.raises(ValueError, match="^bounds"):
            check_bounds(bad)
