"""Typed settings: frozen dataclasses whose fields state their default, help text and range once.

Each owner defines its settings beside its code (``DataSettings`` in data, ``ModelSettings`` in
models, ``TrainSettings`` in training, ``InfluenceSettings`` in influence, ``AttackSettings`` in
attacks; an experiment nests them). Construction checks every field against its annotation and
its ``check``, then the relations between fields, and raises a one-line ``ValueError`` naming
the key (``attack.eps: expected a non-negative number, got -1``). The preset loader
(:meth:`Settings.from_dict`) and the CLI options are derived from the same fields.
"""

from __future__ import annotations

import dataclasses
import re
import types
import typing
from collections.abc import Callable, Mapping
from enum import Enum
from typing import Any, Literal

import numpy as np

from ._validation import parse_enum

Check = Callable[[Any, str], Any]


def setting(default: Any, help: str, check: Check | None = None, *, cli: bool = True,
            flag: str | None = None, parse: Callable[[Any], Any] | None = None) -> Any:
    """A settings field: its ``default``, its ``help`` text (shown by the CLI), an optional
    ``check(value, name)`` returning the cleaned value, and how the CLI shows it (``cli``:
    offered at all; ``flag``: an extra option name). ``parse`` maps a raw value (e.g. the
    string "full") before the type check."""
    return dataclasses.field(default=default, metadata={
        "help": help, "check": check, "cli": cli, "flag": flag, "parse": parse})


def _prefixed(prefix: str, err: ValueError) -> ValueError:
    """``err`` with ``prefix`` joined to the key it names (``attack`` + ``eps: …``)."""
    msg = str(err)
    if re.match(r"^[\w\[\]\.]+: ", msg):
        return ValueError(f"{prefix}.{msg}")
    return ValueError(f"{prefix}: {msg}")


class Settings:
    """Mixin for frozen settings dataclasses: validation at construction, dict round trips."""

    def __post_init__(self) -> None:
        hints = typing.get_type_hints(type(self))
        for f in dataclasses.fields(self):  # type: ignore[arg-type]
            value = getattr(self, f.name)
            parse = f.metadata.get("parse")
            if parse is not None:
                value = parse(value)
            value = coerce(hints[f.name], value, f.name)
            check = f.metadata.get("check")
            if check is not None and value is not None:
                value = check(value, f.name)
            object.__setattr__(self, f.name, value)
        self.check_relations()

    def check_relations(self) -> None:
        """Checks between fields; override to add them."""

    @classmethod
    def from_dict(cls, values: Mapping[str, Any], where: str = "") -> Any:
        """Build from plain (TOML/JSON) values; unknown keys and bad values raise one line
        naming ``where`` and the key."""
        try:
            if not isinstance(values, Mapping):
                raise ValueError(f"expected a table of settings, got {values!r}")
            names = [f.name for f in dataclasses.fields(cls)]  # type: ignore[arg-type]
            unknown = sorted(set(values) - set(names))
            if unknown:
                raise ValueError(f"unknown settings {unknown}; expected some of "
                                 f"{', '.join(names)}")
            return cls(**values)
        except ValueError as err:
            raise (_prefixed(where, err) if where else err) from None

    def replace(self, **changes: Any) -> Any:
        """A validated copy with ``changes``."""
        return dataclasses.replace(self, **changes)  # type: ignore[type-var]

    def to_dict(self) -> dict[str, Any]:
        """Plain values: enums by value, tuples as lists, nested settings as dicts."""
        return {f.name: _plain(getattr(self, f.name))
                for f in dataclasses.fields(self)}  # type: ignore[arg-type]


def _plain(value: Any) -> Any:
    if isinstance(value, Settings):
        return value.to_dict()
    if isinstance(value, (tuple, list)):
        return [_plain(v) for v in value]
    if isinstance(value, Enum):
        return value.value
    return value


def _describe(hint: Any) -> str:
    if hint is bool:
        return "true or false"
    if hint is int:
        return "an integer"
    if hint is float:
        return "a number"
    if hint is str:
        return "a string"
    return getattr(hint, "__name__", str(hint))


def coerce(hint: Any, value: Any, name: str) -> Any:
    """``value`` as the annotated type ``hint`` (strict: no bool for int, no float for int,
    no string for a number), or a ``ValueError`` naming ``name``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        if value is None and type(None) in args:
            return None
        options = [a for a in args if a is not type(None)]
        errors = []
        for option in options:
            try:
                return coerce(option, value, name)
            except ValueError as err:
                errors.append(err)
        if len(options) == 1:
            raise errors[0]
        raise ValueError(f"{name}: expected {' or '.join(map(_describe, options))}"
                         f"{' or none' if type(None) in args else ''}, got {value!r}")
    if origin is Literal:
        if value not in args:
            raise ValueError(f"{name}: expected one of {', '.join(map(str, args))}, "
                             f"got {value!r}")
        return value
    if origin is tuple:
        if not isinstance(value, (list, tuple)):
            raise ValueError(f"{name}: expected a list, got {value!r}")
        item = args[0]
        return tuple(coerce(item, v, f"{name}[{i}]") for i, v in enumerate(value))
    if isinstance(hint, type) and issubclass(hint, Settings):
        if isinstance(value, hint):
            return value
        return hint.from_dict(value, name)
    if isinstance(hint, type) and issubclass(hint, Enum):
        return parse_enum(value, hint, name)
    if hint is bool:
        if not isinstance(value, (bool, np.bool_)):
            raise ValueError(f"{name}: expected true or false, got {value!r}")
        return bool(value)
    if hint is int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, (int, np.integer)):
            raise ValueError(f"{name}: expected an integer, got {value!r}")
        return int(value)
    if hint is float:
        if isinstance(value, (bool, np.bool_)) or not isinstance(
                value, (int, float, np.integer, np.floating)):
            raise ValueError(f"{name}: expected a number, got {value!r}")
        return float(value)
    if hint is str:
        if not isinstance(value, str):
            raise ValueError(f"{name}: expected a string, got {value!r}")
        return value
    return value


def reseeded(settings: Any, offset: int) -> Any:
    """A copy of ``settings`` with ``offset`` added to every field named ``seed``, at any
    depth (nested settings and tuples of them); ``offset`` 0 returns ``settings`` itself."""
    if offset == 0:
        return settings
    if isinstance(settings, tuple):
        return tuple(reseeded(s, offset) for s in settings)
    if not isinstance(settings, Settings):
        return settings
    changes = {}
    for f in dataclasses.fields(settings):  # type: ignore[arg-type]
        value = getattr(settings, f.name)
        if f.name == "seed" and isinstance(value, int):
            changes[f.name] = value + offset
        elif isinstance(value, (Settings, tuple)):
            changes[f.name] = reseeded(value, offset)
    return settings.replace(**changes)
