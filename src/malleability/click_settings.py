"""Click options from settings dataclasses: each leaf setting becomes ``--NAME`` with the default
and help text of its field, so a command states no default twice (:func:`settings_options`)."""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Callable
from enum import Enum
from typing import Any

import click

from .settings import Settings


def _leaves(cls: type, path: tuple[str, ...] = ()) -> list[tuple[tuple[str, ...], Any, Any]]:
    """(path, field, type hint) of every CLI-visible leaf setting of ``cls``; a tuple of
    settings (``tasks``) is offered as one entry under ``data``."""
    hints = typing.get_type_hints(cls)
    out = []
    for f in dataclasses.fields(cls):
        hint = hints[f.name]
        args = typing.get_args(hint)
        if f.name == "tasks":
            out += _leaves(args[0], (*path, "data"))
        elif isinstance(hint, type) and issubclass(hint, Settings):
            out += _leaves(hint, (*path, f.name))
        elif f.metadata.get("cli", True):
            out.append(((*path, f.name), f, hint))
    return out


class _IntOrFull(click.ParamType):
    name = "INTEGER|full"

    def convert(self, value: Any, param: Any, ctx: Any) -> Any:
        if value in (None, "full") or isinstance(value, int):
            return value
        try:
            return int(value)
        except ValueError:
            self.fail(f"expected an integer or 'full', got {value!r}", param, ctx)


def _click_type(hint: Any) -> Any:
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is tuple:
        return _click_type(args[0])
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        return _IntOrFull() if options == [int] else _click_type(options[0])
    if origin is typing.Literal:
        return click.Choice([str(a) for a in args])
    if isinstance(hint, type) and issubclass(hint, Enum):
        return click.Choice([m.value for m in hint])
    return {int: click.INT, float: click.FLOAT, bool: click.BOOL}.get(hint, click.STRING)


def settings_options(cls: type, skip: tuple[str, ...] = ()
                     ) -> tuple[Callable, Callable[[dict], dict]]:
    """Click options for every leaf setting of ``cls`` but those in ``skip`` (dotted paths,
    e.g. ``data.n_influence``; they keep their defaults), with defaults and help text from its
    fields (``--NAME``, or ``--GROUP-NAME`` where a name recurs), and a function from the
    parsed options back to nested settings values. A list setting is a repeatable option, or
    one comma-separated text when its field has a ``parse`` function."""
    leaves = [leaf for leaf in _leaves(cls) if ".".join(leaf[0]) not in skip]
    counts: dict[str, int] = {}
    for path, _, _ in leaves:
        counts[path[-1]] = counts.get(path[-1], 0) + 1
    names = {path: "-".join(path[-2:] if counts[path[-1]] > 1 else path[-1:]).replace("_", "-")
             for path, _, _ in leaves}

    def as_text(f: dataclasses.Field, hint: Any) -> bool:  # a list given as "a,b,c"
        return typing.get_origin(hint) is tuple and f.metadata["parse"] is not None

    def decorate(command: Callable) -> Callable:
        for path, f, hint in reversed(leaves):
            default = f.default
            multiple = typing.get_origin(hint) is tuple and not as_text(f, hint)
            if isinstance(default, Enum):
                default = default.value
            elif as_text(f, hint):
                default, hint = ",".join(map(str, default)), str
            elif multiple:
                default = [getattr(d, "value", d) for d in default]
            decls = [f"--{names[path]}", *([f.metadata["flag"]] if f.metadata["flag"] else []),
                     "_".join(path)]
            command = click.option(*decls, type=_click_type(hint), default=default,
                                   multiple=multiple, show_default=True,
                                   help=f.metadata["help"])(command)
        return command

    def values(options: dict) -> dict:
        nested: dict = {}
        for path, f, hint in leaves:
            value = options.pop("_".join(path))
            if typing.get_origin(hint) is tuple and not as_text(f, hint):
                value = list(value)
            node = nested
            for key in path[:-1]:
                node = node.setdefault(key, {})
            node[path[-1]] = value
        data = nested.pop("data", None)
        return nested if data is None else {**nested, "tasks": [data]}

    return decorate, values
