"""Dotted overrides of a spec from the command line: ``train.epochs=3 seeds=[0] resources.gpus=0.5``.

Each override is ``KEY=VALUE``: ``KEY`` a dotted path into the spec's mapping (a number indexes
a list, e.g. ``methods.1.rule=energy:0.8``), ``VALUE`` read as YAML (``3`` an int, ``[0, 1]`` a
list, ``{name: cifar10, root: /data}`` a mapping, ``true`` a bool, anything else a string).
Overrides apply, in order, to the spec as read, before it is validated: the effective spec is
what is checked, hashed into trial ids and stored in rows, and a bad value gets the same
one-line error as in the YAML file. A string where a mapping is descended into (``data:
digits`` with ``data.root=...``) is the ``name`` of that mapping, as in the YAML shorthand.
"""
from __future__ import annotations

import copy
from typing import Any, Callable, Sequence

from rankbench.bench.checks import bad, quote

ACCEPTED = "KEY=VALUE, KEY a dotted path into the spec (e.g. train.epochs=3, seeds=[0], methods.0.rule=energy:0.8)"


def split_override(item: str) -> tuple[list[str], str]:
    """``"a.b=v"`` -> (["a", "b"], "v"); a one-line error for anything else."""
    key, eq, value = item.partition("=")
    parts = key.strip().split(".")
    if not eq or not all(p.strip() for p in parts):
        raise bad("override", item, ACCEPTED)
    return [p.strip() for p in parts], value


def is_override(arg: str) -> bool:
    """Whether a command-line word is an override (``KEY=VALUE``) rather than a spec name or path."""
    key = arg.partition("=")[0]
    return "=" in arg and bool(key) and "/" not in key and not key.endswith(".yaml")


def apply_overrides(raw: Any, overrides: Sequence[str], load_value: Callable[[str, str, str], Any]) -> Any:
    """A copy of the spec ``raw`` (as read from YAML) with ``overrides`` applied in order.
    ``load_value(text, source, field)`` reads a value (the spec's own YAML loader; ``field``, the
    dotted key, is what an error about the value itself names, e.g. an integer of too many digits)."""
    if not overrides:
        return raw
    out = copy.deepcopy(raw) if raw is not None else {}
    if not isinstance(out, dict):
        return out     # not a mapping: the spec's own check says so
    for item in overrides:
        path, text = split_override(item)
        value = load_value(text, f"override {item}", ".".join(path)) if text.strip() else ""
        node: Any = out
        for depth, key in enumerate(path[:-1]):
            node = _step(node, key, path[: depth + 1], item)
        _set(node, path[-1], value, path, item)
    return out


def _index(node: list, key: str, where: list[str], item: str) -> int:
    # ASCII digits only ("²" is a digit to str.isdigit, not to int), and no more of them than an
    # index has (int() refuses 4300 and more)
    digits = key.lstrip("0") or "0"
    if not (key.isascii() and key.isdigit()) or len(digits) > len(str(len(node))) or int(digits) >= len(node):
        raise bad(".".join(where), key, f"a list index 0..{len(node) - 1}", f"in override {quote(item)}")
    return int(digits)


def _step(node: Any, key: str, where: list[str], item: str) -> Any:
    """The child ``key`` of ``node``, made a mapping (or read as one) so the path can go on."""
    if isinstance(node, list):
        i = _index(node, key, where, item)
        if isinstance(node[i], str):
            node[i] = {"name": node[i]}
        child = node[i]
    elif isinstance(node, dict):
        child = node.get(key)
        if child is None:
            child = node[key] = {}
        elif isinstance(child, str):
            child = node[key] = {"name": child}     # `data: digits` is `data: {name: digits}`
    else:
        raise bad(".".join(where[:-1]), node, "a mapping or a list to set keys in", f"in override {quote(item)}")
    if not isinstance(child, (dict, list)):
        raise bad(".".join(where), child, "a mapping or a list to set keys in", f"in override {quote(item)}")
    return child


def _set(node: Any, key: str, value: Any, where: list[str], item: str) -> None:
    if isinstance(node, list):
        node[_index(node, key, where, item)] = value
    else:
        node[key] = value
