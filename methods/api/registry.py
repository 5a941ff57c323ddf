"""Method registry: ``@register("name")`` for in-tree and test-defined methods, plus
discovery of third-party plugins through the entry-point group ``rankbench.methods``.

Like timm's model registry: a name maps to a class, lookups fail with the list of known names.
The built-in methods are imported by the ``methods`` package (``methods/__init__.py``), whose
method modules import this one: nothing here imports a method back. Entry points are for
third-party plugins only.

Plugins: one bad package never stops the others. An entry point whose module fails to import,
whose target is not a :class:`~rankbench.methods.api.base.Method` subclass, or whose name is taken
(by a built-in or an earlier plugin, which keeps it) is skipped with one warning line on stderr
naming the entry point, its package and the problem; whatever its import registered is dropped,
and the built-ins and every other plugin still work. ``skipped()`` lists them, and a spec or
lookup asking for a skipped name is refused with that problem (a clashing name gets the method
that kept it). In-tree and test-defined methods registering a taken name are an error
(:class:`PluginError`, a ``UserError``) naming both.

Choice parameters: a parameter annotated ``Literal[...]`` or listed in the class's ``choices``
(``{"solver": ("auto", "svd")}``) accepts only those values: :func:`build` refuses any other
(after the method's own checks, whose message may say more) and ``rankbench methods`` lists them
(:func:`choices`).

Names: the registry key is the class's ``name``. A class that declares ``name`` itself must
declare the key it is registered under (a mismatch is an error naming both); one that declares
none gets the key as its ``name`` when registered.
"""
from __future__ import annotations

import inspect
import sys
import typing
from importlib import metadata
from typing import Any, Callable, Literal, TypeVar

from rankbench.bench.checks import UserError, bad, unknown
from rankbench.methods.api.base import Method

ENTRY_POINT_GROUP = "rankbench.methods"
_REGISTRY: dict[str, type[Method]] = {}
_entry_points_loaded = False
_SKIPPED: dict[str, str] = {}   # entry-point name -> why it was skipped ("plugin 'x' (package p) ...")

M = TypeVar("M", bound=type[Method])


class PluginError(UserError):
    """A method that cannot be registered under a name: the name is taken, or the class declares
    another (a ``ValueError``, as ``UserError`` is)."""


def register(name: str) -> Callable[[M], M]:
    """Class decorator: ``@register("trp") class TRP(Method): ...``."""

    def deco(cls: M) -> M:
        if not (isinstance(cls, type) and issubclass(cls, Method)):
            raise TypeError(f"@register({name!r}) needs a subclass of rankbench.methods.api.base.Method, got {cls!r}")
        declared = cls.__dict__.get("name")
        if declared is not None and declared != name:
            raise PluginError(f"@register({name!r}): {cls.__module__}.{cls.__qualname__} declares name = "
                             f"{declared!r}; the registry key and the class's name must agree")
        old = _REGISTRY.get(name)
        if old is not None and old.__qualname__ != cls.__qualname__:
            raise PluginError(f"method name {name!r}: {cls.__module__}.{cls.__qualname__} cannot take it: already "
                              f"registered by {old.__module__}.{old.__qualname__}; accepted: another name")
        if declared is None:
            cls.name = name   # a class without a name of its own is named by its key (documented above)
        _REGISTRY[name] = cls
        return cls

    return deco


def _qualname(obj: Any) -> str:
    return f"{getattr(obj, '__module__', '?')}.{getattr(obj, '__qualname__', type(obj).__name__)}"


def _load_entry_points() -> None:
    global _entry_points_loaded
    if _entry_points_loaded:
        return
    _entry_points_loaded = True   # first: a plugin's import may look a method up
    for ep in metadata.entry_points(group=ENTRY_POINT_GROUP):
        kept = dict(_REGISTRY)
        problem = _load_plugin(ep) or _replaced(kept)
        if problem is None:
            continue
        _REGISTRY.clear()                     # a skipped plugin adds nothing, whatever its import registered
        _REGISTRY.update(kept)
        if ep.name in _SKIPPED:               # the same entry point seen twice: one warning
            continue
        pkg = _package(ep)
        _SKIPPED[ep.name] = f"plugin {ep.name!r} (package {pkg}) {problem}"
        print(f"warning: method plugin {ep.name!r} ({ep.value}, package {pkg}) skipped: it {problem}", file=sys.stderr)


def _package(ep: metadata.EntryPoint) -> str:
    """The distribution an entry point comes from (else its module's top-level name)."""
    dist = getattr(ep, "dist", None)
    name = getattr(dist, "name", None) if dist is not None else None
    return str(name) if name else ep.value.split(":")[0].split(".")[0]


def _load_plugin(ep: metadata.EntryPoint) -> str | None:
    """Load and register one entry point; None when it is registered, else what is wrong with
    it ("failed to import: ...", "is not a Method: ...", "cannot take its name: ...")."""
    before = _REGISTRY.get(ep.name)
    try:
        target = ep.load()  # importing the module usually registers it; the value may be the class
    except PluginError as e:  # its own @register took a name in use, or disagrees with its class's name
        return f"cannot take its name: {_first_line(e)}"
    except Exception as e:   # noqa: BLE001  (any import failure of a third-party module)
        return f"failed to import: {_import_failure(e)}"
    if isinstance(target, type) and issubclass(target, Method):
        if before is not None and before is not target:
            return (f"cannot take its name: {ep.name!r} is {_qualname(before)}, which keeps it (a plugin "
                    "names a method no built-in or other plugin uses)")
        if _REGISTRY.get(ep.name) is not target:
            try:
                register(ep.name)(target)
            except PluginError as e:
                return f"cannot take its name: {_first_line(e)}"
        return None
    if _REGISTRY.get(ep.name) is None or _REGISTRY.get(ep.name) is before:
        return (f"is not a Method: {_qualname(target)} is not a subclass of rankbench.methods.api.base.Method (an "
                "entry point names a Method subclass, or a module whose import registers one under its name)")
    return None


def _replaced(kept: dict[str, type[Method]]) -> str | None:
    """What a plugin's import took over of the methods registered before it (a class of the
    same qualified name re-registered under a built-in's name), or None."""
    for name, cls in kept.items():
        if _REGISTRY.get(name) is not cls:
            return f"cannot take its name: its import registered {name!r}, which is {_qualname(cls)}, which keeps it"
    return None


def _first_line(e: BaseException) -> str:
    """An error's first line, without the "; accepted: ..." a lookup of the name adds again."""
    return (str(e).strip().splitlines() or [type(e).__name__])[0].split("; accepted:")[0]


# the import names of the three folders before rankbench was one namespace (rankbench.bench, ...)
OLD_IMPORT_NAMES = ("bench", "methods", "reports")


def _import_failure(e: Exception) -> str:
    """Why a plugin's import failed, in one line; a plugin written against the old import
    names is told the new ones."""
    missing_name = getattr(e, "name", None) or "" if isinstance(e, ModuleNotFoundError) else ""
    if missing_name.split(".")[0] in OLD_IMPORT_NAMES:
        return (f"it imports {missing_name!r}, a name rankbench no longer installs: its modules are under "
                "'rankbench.' now (rankbench.bench, rankbench.methods, rankbench.reports); a plugin imports "
                "Method, register and lowrank from 'rankbench.methods'")
    return (f"{type(e).__name__}: {e}".splitlines() or [type(e).__name__])[0]


def skipped() -> dict[str, str]:
    """Method plugins skipped: entry-point name -> why, one line ("plugin 'x' (package p) failed
    to import: ...", "... is not a Method: ...", "... cannot take its name: ...")."""
    _load_entry_points()
    return dict(_SKIPPED)


def available() -> list[str]:
    _load_entry_points()
    return sorted(_REGISTRY)


def get_method(name: str) -> type[Method]:
    names = available()
    if name in _SKIPPED and name not in _REGISTRY:
        raise KeyError(f"method: {name!r}: {_SKIPPED[name]}; accepted: a method whose plugin loads "
                       "(fix or reinstall that package)")
    if name not in _REGISTRY:
        # a KeyError (a lookup), in the one-line format of rankbench.bench.checks
        raise KeyError(str(unknown("method", name, names, "unknown method")))
    return _REGISTRY[name]


def needs_baseline(name: str) -> bool:
    """Whether a trial of method ``name`` starts from the trained baseline of its data, model
    and seed (so it waits for that baseline's trial)."""
    cls = get_method(name)
    return bool(cls.starts_from_baseline) and not cls.is_baseline


def parameters(name: str) -> dict[str, inspect.Parameter]:
    """The method's parameters: its constructor's keyword arguments."""
    sig = inspect.signature(get_method(name).__init__)
    return {k: p for k, p in sig.parameters.items() if k != "self" and p.kind is p.KEYWORD_ONLY or
            (k != "self" and p.kind is p.POSITIONAL_OR_KEYWORD)}


def choices(name: str) -> dict[str, tuple[Any, ...]]:
    """The accepted values of the method's choice parameters: those annotated ``Literal[...]``
    and those its class lists in ``choices``."""
    cls = get_method(name)
    out: dict[str, tuple[Any, ...]] = {}
    try:
        hints = typing.get_type_hints(cls.__init__)
    except Exception:  # noqa: BLE001  (an annotation that does not evaluate: no Literal to read)
        hints = {}
    for k in parameters(name):
        if typing.get_origin(hints.get(k)) is Literal:
            out[k] = tuple(typing.get_args(hints[k]))
    for k, values in (getattr(cls, "choices", None) or {}).items():
        out[k] = tuple(values)
    return out


def _is_choice(value: Any, accepted: tuple[Any, ...]) -> bool:
    # True == 1 to Python, not to a spec: the type must match too
    return any(value == a and type(value) is type(a) for a in accepted)


def build(name: str, params: dict[str, Any]) -> Method:
    """Instantiate a method, rejecting unknown parameters with a 'did you mean' and values of
    choice parameters outside their choices."""
    known = parameters(name)
    for key in params:
        if key not in known:
            raise unknown(f"methods.{name}", key, known, "unknown parameter")
    method = get_method(name)(**params)   # the method's own checks first: their words may say more
    for key, accepted in choices(name).items():
        if key in params and not _is_choice(params[key], accepted):
            raise bad(key, params[key], "|".join(str(a) for a in accepted))
    return method
