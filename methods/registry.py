"""Method registry: ``@register("name")`` for in-tree and test-defined methods, plus
discovery of third-party plugins through the entry-point group ``rankbench.methods``.

Like timm's model registry: a name maps to a class, lookups fail with the list of known names.
The built-in methods are imported by the ``methods`` package (``methods/__init__.py``), whose
method modules import this one: nothing here imports a method back. Entry points are for
third-party plugins only.

Names: the registry key is the class's ``name``. A class that declares ``name`` itself must
declare the key it is registered under (a mismatch is an error naming both); one that declares
none gets the key as its ``name`` when registered.
"""
from __future__ import annotations

import inspect
from importlib import metadata
from typing import Any, Callable, TypeVar

from bench.checks import unknown
from methods.base import Method

ENTRY_POINT_GROUP = "rankbench.methods"
_REGISTRY: dict[str, type[Method]] = {}
_entry_points_loaded = False

M = TypeVar("M", bound=type[Method])


def register(name: str) -> Callable[[M], M]:
    """Class decorator: ``@register("trp") class TRP(Method): ...``."""

    def deco(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) needs a subclass of methods.base.Method, got {cls!r}")
        declared = cls.__dict__.get("name")
        if declared is not None and declared != name:
            raise ValueError(f"@register({name!r}): {cls.__module__}.{cls.__qualname__} declares name = "
                             f"{declared!r}; the registry key and the class's name must agree")
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise ValueError(f"method name {name!r} is already registered by {old.__module__}.{old.__qualname__}")
        if declared is None:
            cls.name = name   # a class without a name of its own is named by its key (documented above)
        _REGISTRY[name] = cls
        return cls

    return deco


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        cls = ep.load()  # importing the module usually registers it; the value may be the class
        if isinstance(cls, type) and issubclass(cls, Method) and ep.name not in _REGISTRY:
            register(ep.name)(cls)


def available() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    names = available()
    if name not in _REGISTRY:
        # a KeyError (a lookup), in the one-line format of bench.checks
        raise KeyError(str(unknown("method", name, names, "unknown method")))
    return _REGISTRY[name]


def parameters(name: str) -> dict[str, inspect.Parameter]:
    """The method's parameters: its constructor's keyword arguments."""
    sig = inspect.signature(get_method(name).__init__)
    return {k: p for k, p in sig.parameters.items() if k != "self" and p.kind is p.KEYWORD_ONLY or
            (k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)}


def build(name: str, params: dict[str, Any]) -> Method:
    """Instantiate a method, rejecting unknown parameters with a 'did you mean'."""
    known = parameters(name)
    for key in params:
        if key not in known:
            raise unknown(f"methods.{name}", key, known, "unknown parameter")
    return get_method(name)(**params)
