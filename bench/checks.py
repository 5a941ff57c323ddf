"""The one error format for bad input, and the small type checks every validator shares.

Every refusal of user input (spec, command line, method parameter, dataset layout) is one line::

    <field>: <value>: <problem>; accepted: <what is accepted>
    <field>: <value>; accepted: <what is accepted>          (no separate problem to name)

The CLI prints it after ``error:`` and exits 2. The value is quoted with ``repr`` and capped, so
a megabyte of bad YAML does not become a megabyte of error message; so is every other piece of
the line (the field, which may hold a key the user wrote, the problem and what is accepted), and
a whole line past ``MAX_LINE``. A value is rendered piece by piece and given up past
``RENDER_BUDGET`` characters, so a YAML alias bomb (a list of a billion items built from a
few anchors) costs no more to quote than a list of 100,000 characters.

This module imports nothing from the project: ``methods`` (the bottom layer) may use it too.
"""
from __future__ import annotations

import difflib
import math
from typing import Any, Iterable, Iterator

MAX_QUOTE = 80   # characters of a bad value quoted in a message
PATH_QUOTE = 4096   # a path is quoted whole: the user needs all of it to find the file
MAX_FIELD = 200     # characters of a field name (or a trial's label) in a message
MAX_TEXT = 1000     # characters of a message's problem, and of what it accepts
MAX_LINE = 8 * 1024   # characters of a whole message, however it was built
RENDER_BUDGET = 100_000   # characters of a value rendered before its rendering is given up


class UserError(ValueError):
    """Bad input. ``str(e)`` is the one line the CLI prints after ``error:`` (exit status 2);
    a message past ``MAX_LINE`` characters is cut there (with its length named)."""

    def __init__(self, *args: Any) -> None:
        if len(args) == 1 and isinstance(args[0], str) and len(args[0]) > MAX_LINE:
            args = (clip(args[0], MAX_LINE),)
        super().__init__(*args)


def clip(text: str, limit: int = MAX_FIELD) -> str:
    """``text`` (a field name, a label, a problem), cut to ``limit`` characters with its full
    length named: what :func:`quote` does to a value."""
    text = str(text)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def quote(value: Any, limit: int = MAX_QUOTE) -> str:
    """``repr(value)``, cut to ``limit`` characters with the full length named (or, past
    ``RENDER_BUDGET`` characters, a lower bound of it)."""
    return _capped(value, limit, label=False)


def shown(value: Any, limit: int = MAX_FIELD) -> str:
    """``value`` as a trial's variant shows it (``rankbench.bench.trial.format_value``: floats by
    repr, lists as ``[a,b]``, anything else by ``str``), capped like :func:`quote`."""
    return _capped(value, limit, label=True)


def _capped(value: Any, limit: int, label: bool) -> str:
    pieces: list[str] = []
    size = 0
    try:
        for piece in _pieces(value, label, set()):
            pieces.append(piece)
            size += len(piece)
            if size > RENDER_BUDGET:
                return f"{''.join(pieces)[:limit]}... (over {RENDER_BUDGET} characters)"
    except RecursionError:
        return f"{''.join(pieces)[:limit]}... (nested too deeply to show)"
    text = "".join(pieces)
    if len(text) <= limit:
        return text
    return f"{text[:limit]}... ({len(text)} characters)"


def _pieces(v: Any, label: bool, open_ids: set[int]) -> Iterator[str]:
    """``repr(v)`` (``label``: the variant's form) in pieces, so that the caller can stop early.
    Lists, tuples and dicts are walked (a recursive one shows ``[...]`` where repr does)."""
    kind = type(v)
    if kind not in (list, tuple, dict):
        yield _leaf(v, label)
        return
    if id(v) in open_ids:
        yield "{...}" if kind is dict else "[...]" if kind is list or label else "(...)"
        return
    open_ids.add(id(v))
    if kind is dict:      # str(dict) is its repr: keys and values by repr in either form
        yield "{"
        for i, (k, x) in enumerate(v.items()):
            yield ", " if i else ""
            yield from _pieces(k, False, open_ids)
            yield ": "
            yield from _pieces(x, False, open_ids)
        yield "}"
    else:
        brackets = "[]" if kind is list or label else "()"
        yield brackets[0]
        for i, x in enumerate(v):
            yield ("," if label else ", ") if i else ""
            yield from _pieces(x, label, open_ids)
        yield ("," if kind is tuple and len(v) == 1 and not label else "") + brackets[1]
    open_ids.discard(id(v))


def _leaf(v: Any, label: bool) -> str:
    if isinstance(v, str) and len(v) > RENDER_BUDGET:
        v = v[: RENDER_BUDGET + 1]               # past the budget anyway: not all of it
    try:
        return repr(v) if not label or isinstance(v, float) else str(v)
    except ValueError:                           # an int past Python's int-to-str digit limit
        if isinstance(v, int):
            return f"<an integer of {int_digits(v)} digits>"
        raise


def int_digits(v: int) -> int:
    """Decimal digits of ``v`` (the number Python refuses to print past 4300), without printing it:
    exact up to 60,000 digits, past them maybe one too many (the exact count would take seconds)."""
    n = abs(int(v))
    if n.bit_length() <= 64:
        return len(str(n))
    digits = int(n.bit_length() * 0.30102999566398120) + 1     # log10(2): exact, or one too many
    return digits - 1 if n.bit_length() <= 200_000 and n < 10 ** (digits - 1) else digits


def bad(field: str, value: Any, accepted: str, problem: str | None = None, limit: int = MAX_QUOTE) -> UserError:
    """The error for ``field`` holding ``value``; raise what this returns. ``limit``: characters
    of ``value`` quoted (``PATH_QUOTE`` for a path). Each piece is capped (the field at
    ``MAX_FIELD``, the problem and ``accepted`` at ``MAX_TEXT`` characters)."""
    middle = f": {clip(problem, MAX_TEXT)}" if problem else ""
    return UserError(f"{clip(field)}: {quote(value, limit)}{middle}; accepted: {clip(accepted, MAX_TEXT)}")


def missing(field: str, accepted: str) -> UserError:
    """The error for a required ``field`` that is absent."""
    return UserError(f"{clip(field)}: missing; accepted: {clip(accepted, MAX_TEXT)}")


def did_you_mean(word: Any, choices: Iterable[str]) -> str:
    """`` (did you mean 'x'?)`` for the closest choice, or ``""`` (also for a word past
    ``MAX_FIELD`` characters: no typo is that long, and matching it would take seconds)."""
    word = quote(word, MAX_FIELD) if isinstance(word, (list, tuple, dict)) else str(word)   # a bomb too
    if len(word) > MAX_FIELD:
        return ""
    close = difflib.get_close_matches(word, list(choices), n=1)
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
