"""constraints-vision.txt (`make test-vision`) pins what constraints.txt pins, but torch, and adds
the vision extra; pyproject's torch range admits both torches."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).parents[1]


def _pins(name: str) -> dict[str, str]:
    lines = (ROOT / name).read_text(encoding="utf-8").splitlines()
    pins = [line.split("==") for line in lines if line and not line.startswith("#")]
    assert all(len(p) == 2 for p in pins), name
    return dict(pins)


def test_the_vision_constraints_differ_only_in_torch_and_the_vision_extra():
    main, vision = _pins("constraints.txt"), _pins("constraints-vision.txt")
    assert {k: v for k, v in vision.items() if k in main and k != "torch"} == {
        k: v for k, v in main.items() if k != "torch"}
    assert set(vision) - set(main) == {"torchvision", "timm"}
    assert (main["torch"], vision["torch"], vision["torchvision"]) == ("2.13.0", "2.14.1",
                                                                       "0.29.1")
    pyproject = (ROOT / "pyproject.toml").read_text(encoding="utf-8")
    low, high = re.search(r'"torch>=([\d.]+),<([\d.]+)"', pyproject).groups()
    for pin in (main["torch"], vision["torch"]):
        version = tuple(map(int, pin.split(".")))
        assert tuple(map(int, low.split("."))) <= version < tuple(map(int, high.split(".")))
