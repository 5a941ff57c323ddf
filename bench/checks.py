"""The one error format for bad input, and the small type checks every validator shares.

Every refusal of user input (spec, command line, method parameter, dataset layout) is one line::

    <field>: <value>: <problem>; accepted: <what is accepted>
    <field>: <value>; accepted: <what is accepted>          (no separate problem to name)

The CLI prints it after ``error:`` and exits 2. The value is quoted with ``repr`` and capped, so
a megabyte of bad YAML does not become a megabyte of error message.

This module imports nothing from the project: ``methods`` (the bottom layer) may use it too.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Iterable

MAX_QUOTE = 80   # characters of a bad value quoted in a message
PATH_QUOTE = 4096   # a path is quoted whole: the user needs all of it to find the file


class UserError(ValueError):
    """Bad input. ``str(e)`` is the one line the CLI prints after ``error:`` (exit status 2)."""


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length named."""
    text = repr(value)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def bad(field: str, value: Any, accepted: str, problem: str | None = None, limit: int = MAX_QUOTE) -> UserError:
    """The error for ``field`` holding ``value``; raise what this returns. ``limit``: characters
    of ``value`` quoted (``PATH_QUOTE`` for a path)."""
    middle = f": {problem}" if problem else ""
    return UserError(f"{field}: {quote(value, limit)}{middle}; accepted: {accepted}")


def missing(field: str, accepted: str) -> UserError:
    """The error for a required ``field`` that is absent."""
    return UserError(f"{field}: missing; accepted: {accepted}")


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""``."""
    close = difflib.get_close_matches(str(word), list(choices), n=1)
    return f" (did you mean {close[0]!r}?)" if close else ""


def unknown(field: str, value: Any, choices: Iterable[str], what: str = "unknown") -> UserError:
    """The error for a name that is not among ``choices`` (with a 'did you mean')."""
    choices = list(choices)
    return bad(field, value, ", ".join(choices) or "none", what + did_you_mean(value, choices))


def is_int(v: Any) -> bool:
    """An integer and not a bool (``True`` is an int to Python, never to a spec); numpy ints count."""
    if isinstance(v, bool):
        return False
    if isinstance(v, int):
        return True
    return type(v).__module__ == "numpy" and hasattr(v, "dtype") and v.dtype.kind in "iu"


def is_number(v: Any) -> bool:
    """A finite int or float, not a bool, not NaN or inf."""
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return is_int(v)
    return math.isfinite(v)


def check(field: str, value: Any, ok: bool, accepted: str, problem: str | None = None) -> None:
    """Raise ``bad(field, value, accepted, problem)`` unless ``ok``."""
    if not ok:
        raise bad(field, value, accepted, problem)


# --- the spec's value checks: each returns the value as the spec keeps it, or raises bad() ---

def check_keys(where: str, d: dict, accepted: Iterable[str]) -> None:
    accepted = list(accepted)
    for key in d:
        if key not in accepted:
            raise bad(f"{where}.{key}", d[key], ", ".join(accepted), "unknown key" + did_you_mean(key, accepted))


def need_mapping(where: str, v: Any) -> dict:
    if not isinstance(v, dict):
        raise bad(where, v, "a mapping (key: value)")
    return v


def need_int(where: str, v: Any, lo: int) -> int:
    if not is_int(v) or v < lo:
        raise bad(where, v, f"an integer >= {lo}")
    return int(v)


def need_float(where: str, v: Any, lo: float, hi: float | None = None, lo_open: bool = False,
               hi_open: bool = False) -> float:
    ok = is_number(v)
    if ok:
        ok = (v > lo if lo_open else v >= lo) and (hi is None or (v < hi if hi_open else v <= hi))
    if not ok:
        lb = "(" if lo_open else "["
        hb = ")" if hi_open else "]"
        rng = f"{lb}{lo}, {'inf)' if hi is None else str(hi) + hb}"
        raise bad(where, v, f"a number in {rng}")
    return float(v)  # 1 and 1.0 must hash alike


def need_bool(where: str, v: Any) -> bool:
    if not isinstance(v, bool):
        raise bad(where, v, "true or false")
    return v


def need_choice(where: str, v: Any, choices: Iterable[str]) -> str:
    choices = list(choices)
    if v not in choices:
        raise unknown(where, v, choices)
    return v
