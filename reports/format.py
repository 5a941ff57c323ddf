"""How a result is shown: number formats, missing values, Markdown and LaTeX cells, row order.

One home for the conventions every report shares (``tables``, ``paper``, ``plots``): numbers
follow paper style (``90.50 ± 0.21``, ``2.17x``, ``40.6M``), a missing number is a dash, and
rows come dense baseline first, then by method, scheme and speed-up. This module imports
nothing from the project.
"""
from __future__ import annotations

import math
import re

import pandas as pd

from rankbench.bench.trial import BASELINE

DASH = "-"
# Parameters that have their own column (or are the rank rule under another name), so they are
# left out of a method's label and of a plot's series name.
COLUMN_PARAMS = frozenset({"scheme", "rule", "export"})


# ---------------------------------------------------------------------------- numbers

def is_missing(v: object) -> bool:
    """``None`` or a float NaN: a number the row does not have."""
    return v is None or (isinstance(v, float) and math.isnan(v))


def fmt_pm(mean: float | None, ci: float | None, digits: int = 2) -> str:
    """``90.50 ± 0.21``; just ``90.50`` when there is no CI (a single seed)."""
    if is_missing(mean):
        return DASH
    if is_missing(ci):
        return f"{mean:.{digits}f}"
    return f"{mean:.{digits}f} ± {ci:.{digits}f}"


# A 95% interval that reaches past what the metric can take (a percentage above 100, a speed-up
# below 0; with 2 seeds the t interval is 12.7 standard errors wide) is printed clipped, as
# ``[lo, hi]``, with this mark; a note under the table explains it.
CLIPPED = "†"
def clip_interval(mean: float, ci: float, bounds: tuple[float | None, float | None]) -> tuple[float, float, bool]:
    """``(lo, hi, clipped)``: mean ± ci cut to ``bounds``; ``clipped`` when either end was cut."""
    lo, hi = mean - ci, mean + ci
    b_lo, b_hi = bounds
    clipped = (b_lo is not None and lo < b_lo) or (b_hi is not None and hi > b_hi)
    if b_lo is not None:
        lo = max(lo, b_lo)
    if b_hi is not None:
        hi = min(hi, b_hi)
    return lo, hi, clipped


def fmt_ci(mean: float | None, ci: float | None, bounds: tuple[float | None, float | None] = (None, None),
           digits: int = 2, suffix: str = "") -> str:
    """``90.50 ± 0.21``; when the interval crosses a bound, the clipped interval instead:
    ``71.53 [9.76, 100.00]†`` (``CLIPPED`` marks it). Just ``90.50`` without a CI (one seed)."""
    if is_missing(mean):
        return DASH
    if is_missing(ci):
        return f"{mean:.{digits}f}{suffix}"
    lo, hi, clipped = clip_interval(float(mean), float(ci), bounds)
    if clipped:
        return f"{mean:.{digits}f}{suffix} [{lo:.{digits}f}, {hi:.{digits}f}]{CLIPPED}"
    return f"{mean:.{digits}f}{suffix} ± {ci:.{digits}f}"


def fmt_x(mean: float | None, ci: float | None = None) -> str:
    """``2.17x``; ``2.17x ± 0.04`` when the seeds disagree visibly at two decimals."""
    if is_missing(mean):
        return DASH
    if not is_missing(ci) and round(ci, 2) > 0:
        return fmt_ci(mean, ci, (0.0, None), suffix="x")
    return f"{mean:.2f}x"


_SI = ((1e12, "T"), (1e9, "G"), (1e6, "M"), (1e3, "K"))


def fmt_si(v: float | None) -> str:
    """Three significant digits with an SI suffix: ``40.6M``, ``4.09G``, ``272K``, ``950``."""
    if is_missing(v):
        return DASH
    v = float(v)
    for i, (div, suf) in enumerate(_SI):
        if abs(v) >= div:
            x = v / div
            break
    else:
        return f"{v:.0f}"
    if abs(x) >= 999.5 and i > 0:  # 999.7K rounds to 1000K: print 1.00M instead
        div, suf = _SI[i - 1]
        return f"{v / div:.2f}{suf}"
    digits = 0 if abs(x) >= 99.95 else 1 if abs(x) >= 9.995 else 2
    return f"{x:.{digits}f}{suf}"


def fmt_duration(seconds: float | None) -> str:
    """Wall time the way a person reads it: ``42 s``, ``3.1 min``, ``2.4 h``."""
    if is_missing(seconds):
        return DASH
    if seconds < 60:
        return f"{seconds:.0f} s"
    if seconds < 3600:
        return f"{seconds / 60:.1f} min"
    return f"{seconds / 3600:.1f} h"


# ---------------------------------------------------------------------------- cells

# every character str.splitlines() breaks a line at, with the blanks around it
_LINE_BREAK = re.compile(r"[ \t]*[\n\r\v\f\x1c\x1d\x1e\x85\u2028\u2029]+[ \t]*")


def one_line(text: str) -> str:
    """``text`` with each line break (and the blanks around it) turned into one space: a label
    or value written with a newline stays on its table row, its list item, its LaTeX line."""
    return _LINE_BREAK.sub(" ", text)


def markdown_cell(text: str) -> str:
    """``text`` safe inside a Markdown table row: on one line, and a ``|`` escaped (it would start
    a new cell), a backslash doubled first (``\\|`` would escape the backslash, not the pipe)."""
    return one_line(text).replace("\\", "\\\\").replace("|", "\\|")


_LATEX_SPECIAL = {
    "\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_",
    "{": r"\{", "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}",
}


def latex_escape(text: str) -> str:
    """``text`` with LaTeX's special characters escaped, to be typeset as written, on one line
    (a blank line would end the paragraph, inside a tabular an error)."""
    return "".join(_LATEX_SPECIAL.get(ch, ch) for ch in one_line(text))


def latex_cell(text: str) -> str:
    """A display string (as ``fmt_*`` write them) as LaTeX: escaped, ``±`` and ``2.17x`` in math."""
    t = latex_escape(text)
    t = t.replace(" ± ", r" $\pm$ ").replace("±", r"$\pm$")
    t = t.replace(CLIPPED, r"$^{\dagger}$")
    # "2.17x" -> "2.17$\times$" (only a number directly followed by x)
    return re.sub(r"(\d)x(?![A-Za-z])", r"\1$\\times$", t)


# ---------------------------------------------------------------------------- row order

def sort_rows(summary: pd.DataFrame) -> pd.DataFrame:
    """``collate.summarize`` rows in reading order: per dataset and model, the dense baseline
    first, then by method, scheme and MAC speed-up (ascending; rows without one last)."""
    s = summary.copy()
    s["_dense_first"] = (s["method"] != BASELINE).astype(int)
    s["_scheme"] = s["scheme"].fillna("").astype(str) if "scheme" in s else ""
    by = ["dataset", "model", "_dense_first", "method", "_scheme", "macs_speedup_mean"]
    s = s.sort_values(by, kind="stable", na_position="last")
    return s.drop(columns=["_dense_first", "_scheme"]).reset_index(drop=True)


# ---------------------------------------------------------------------------- names

def display_name(row: "pd.Series | dict") -> str:
    """What tables and plots call a row's method: the spec's ``label:`` (e.g. "TRP+Nu") when it
    has one, else the method's registry name."""
    label = row.get("label")
    return str(label) if isinstance(label, str) and label.strip() else str(row.get("method"))


def fix_counts(text: str) -> str:
    """Singular after a count of one ("1 threads" -> "1 thread"), for settings written by older rows."""
    return re.sub(r"\b1 (thread|core|seed|GPU)s\b", r"1 \1", text)
