"""The settings layer: types, ranges and relations checked at construction, one line naming
the key; nested tables from plain values; seeds offset at any depth."""

import pytest

from malleability import AttackSettings, DataSettings, InfluenceSettings, ModelSettings
from malleability.settings import reseeded
from malleability.training import TrainSettings


@pytest.mark.parametrize(("cls", "kwargs", "message"), [
    (AttackSettings, {"eps": 1.5}, "eps: expected a number in [0, 1]"),
    (AttackSettings, {"eps": float("nan")}, "eps: expected a non-negative number"),
    (AttackSettings, {"eps": "big"}, "eps: expected a number, got 'big'"),
    (AttackSettings, {"steps": 0}, "steps: expected a positive integer"),
    (AttackSettings, {"alpha": -1}, "alpha: expected a positive number"),
    (AttackSettings, {"seed": 1.7}, "seed: expected an integer, got 1.7"),
    (AttackSettings, {"attack": "cw"}, "attack: expected one of fgsm, pgd, mim"),
    (ModelSettings, {"width": "wide"}, "width: expected an integer"),
    (ModelSettings, {"width": 0}, "width: expected a positive integer"),
    (ModelSettings, {"dtype": "float16"}, "dtype: expected one of float32, float64"),
    (TrainSettings, {"epochs": True}, "epochs: expected an integer, got True"),
    (TrainSettings, {"l2_convention": "max"}, "l2_convention: expected one of sum, mean"),
    (TrainSettings, {"progress": "no"}, "progress: expected true or false"),
    (InfluenceSettings, {"fraction": 0.0}, "fraction: expected a number in (0, 1]"),
    (InfluenceSettings, {"ridge": -1e-3}, "ridge: expected a non-negative number"),
    (DataSettings, {"dataset": "imagenet"}, "dataset: expected one of"),
    (DataSettings, {"n_train": 10, "n_influence": 20}, "n_influence: expected at most n_train"),
])
def test_bad_values_raise_one_line_naming_the_key(cls, kwargs, message):
    with pytest.raises(ValueError) as info:
        cls(**kwargs)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_from_dict_names_the_nested_key():
    with pytest.raises(ValueError, match=r"^run\.n_influence: expected at most n_train"):
        DataSettings.from_dict({"n_train": 5, "n_influence": 6}, "run")
    with pytest.raises(ValueError, match=r"^t: unknown settings \['width'\]"):
        DataSettings.from_dict({"width": 5}, "t")
    data = DataSettings.from_dict({"n_train": "full", "classes": "3,8"})
    assert data.n_train is None and data.n_influence is None and data.label == "digits 3,8"


def test_round_trip_and_reseed():
    attack = AttackSettings("fgsm", eps=0.1, seed=3)
    assert AttackSettings.from_dict(attack.to_dict()) == attack
    assert reseeded(attack, 0) is attack
    moved = reseeded((attack, DataSettings(seed=1)), 10)
    assert moved[0].seed == 13 and moved[1].seed == 11 and moved[0].eps == 0.1
